"""Writes the small synthetic demo data sets in this folder (deterministic, no downloads).

    python training/demo/make_demo_data.py

- `demo_instructions.jsonl`: ~200 simple instruction/response pairs (arithmetic, upper-casing,
  reversing words, colour facts, counting words) that a tiny LM can learn; the Foundation demo
  trains a LoRA on it.
- `demo_tickets.csv`: ~120 short support tickets with a `category` label and a `channel`
  column, including a few rows for the cleaning rules to act on (HTML, PII, duplicates,
  an empty text, a row with a missing field).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
           "a tomato": "red", "an orange": "orange", "a plum": "purple", "chocolate": "brown", "ash": "grey"}
WORDS = ["apple", "river", "stone", "cloud", "music", "tiger", "garden", "window", "pencil", "candle",
         "forest", "bridge", "silver", "rocket", "planet", "butter", "yellow", "winter", "summer", "ocean"]


def instructions(rng: random.Random) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for _ in range(60):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        if rng.random() < 0.5:
            rows.append({"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)})
        else:
            a, b = max(a, b), min(a, b)
            rows.append({"instruction": f"What is {a} minus {b}?", "input": "", "output": str(a - b)})
    for _ in range(45):
        words = rng.sample(WORDS, rng.randint(2, 4))
        rows.append({"instruction": "Write the input in capital letters.", "input": " ".join(words),
                     "output": " ".join(words).upper()})
    for _ in range(45):
        words = rng.sample(WORDS, rng.randint(3, 5))
        rows.append({"instruction": "Reverse the order of the words.", "input": " ".join(words),
                     "output": " ".join(reversed(words))})
    for thing, colour in COLOURS.items():
        rows.append({"instruction": f"What colour is {thing}?", "input": "", "output": f"{thing.capitalize()} is {colour}."})
        rows.append({"instruction": "Name the colour of the thing.", "input": thing, "output": colour})
    for _ in range(30):
        words = rng.sample(WORDS, rng.randint(1, 6))
        rows.append({"instruction": "How many words are in the input?", "input": " ".join(words), "output": str(len(words))})
    rng.shuffle(rows)
    return rows


TICKETS = {
    "billing": ["I was charged twice for my {x} subscription", "Why is there an extra fee on my {x} invoice",
                "Please refund the {x} payment I did not make", "My {x} bill is higher than last month"],
    "shipping": ["My {x} order has not arrived yet", "Where is the parcel with my {x}",
                 "The {x} delivery is late by a week", "Can I change the delivery address for my {x}"],
    "account": ["I cannot log in to my account on the {x}", "How do I reset my password on the {x}",
                "Please close my account, I no longer use the {x}", "My profile on the {x} shows the wrong name"],
}
ITEMS = ["phone", "laptop", "tablet", "camera", "printer", "headset", "watch", "router", "monitor", "speaker"]


def tickets(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for category, templates in TICKETS.items():
        for template in templates:
            for item in ITEMS:
                if rng.random() < 0.7 or category == "billing":
                    rows.append({"text": template.format(x=item), "category": category,
                                 "channel": rng.choice(["email", "chat", "phone"])})
    rng.shuffle(rows)
    rows[:0] = [
        {"text": "<p>My <b>router</b> order has not arrived &amp; nobody answers</p>", "category": "shipping", "channel": "email"},
        {"text": "Contact me at jane.doe@example.com or +44 20 7946 0958 about my bill", "category": "billing", "channel": "email"},
        {"text": "My card 4111 1111 1111 1111 was charged twice", "category": "billing", "channel": "chat"},
        {"text": "   ", "category": "account", "channel": "chat"},
        {"text": "I was charged twice for my phone subscription", "category": "billing", "channel": "chat"},
        {"text": "I was charged twice for my phone subscription!", "category": "billing", "channel": "phone"},
        {"text": "Where is my parcel", "category": "", "channel": "chat"},
    ]
    return rows


def main() -> None:
    rng = random.Random(2024)
    with (HERE / "demo_instructions.jsonl").open("w", encoding="utf-8") as fh:
        for row in instructions(rng):
            fh.write(json.dumps(row) + "\n")
    with (HERE / "demo_tickets.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "category", "channel"])
        writer.writeheader()
        writer.writerows(tickets(rng))


if __name__ == "__main__":
    main()
