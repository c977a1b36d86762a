"""Regenerate `training/demo/instructions.jsonl` (deterministic): `python -m training.demo.generate`."""

from __future__ import annotations

import json
import random
from pathlib import Path

from training.base.corpus import ANIMALS, COLOURS, COUNTRIES, SOUNDS, THINGS, TOOLS

OUT = Path(__file__).with_name("instructions.jsonl")


def rows(seed: int = 7, count: int = 240) -> list[dict[str, str]]:
    rng = random.Random(seed)
    makers = [
        lambda: (lambda c: (f"What is the capital of {c}?", "", f"The capital of {c} is {COUNTRIES[c]}."))(
            rng.choice(list(COUNTRIES))),
        lambda: (lambda t: (f"What colour is the {t}?", "", f"The {t} is {THINGS[t]}."))(rng.choice(list(THINGS))),
        lambda: (lambda a, b: ("Add the two numbers.", f"{a} and {b}", f"{a} + {b} = {a + b}"))(
            rng.randrange(50), rng.randrange(50)),
        lambda: (lambda a: (f"What sound does a {a} make?", "", f"A {a} {SOUNDS[a]}."))(rng.choice(list(SOUNDS))),
        lambda: (lambda t: (f"What is a {t} used for?", "", f"A {t} is used to {TOOLS[t]}."))(rng.choice(list(TOOLS))),
        lambda: (lambda w: ("Reverse the order of the words.", " ".join(w), " ".join(reversed(w))))(
            rng.sample(ANIMALS + COLOURS, 3)),
        lambda: (lambda w: ("Write the words in capital letters.", " ".join(w), " ".join(w).upper()))(
            rng.sample(ANIMALS + COLOURS, 2)),
    ]
    out, seen = [], set()
    while len(out) < count:
        instruction, input_text, output = rng.choice(makers)()
        if (instruction, input_text) not in seen:
            seen.add((instruction, input_text))
            out.append({"instruction": instruction, "input": input_text, "output": output})
    return out


if __name__ == "__main__":
    data = rows()
    OUT.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    print(f"wrote {OUT} ({len(data)} rows)")
