"""The shipped pretraining corpus for the embedded tiny base: the project's own synthetic English.

Deterministic (seeded) sentences from templates and word lists: facts about animals, colours,
places, weather, cooking, tools and programming; written-out arithmetic; short question and
answer pairs; lists; and instruction/response pairs. Regenerate the shipped file with

    python -m training.base.corpus            # writes training/base/corpus.txt
"""

from __future__ import annotations

import random
from pathlib import Path

CORPUS_PATH = Path(__file__).with_name("corpus.txt")
TARGET_BYTES = 320_000

ANIMALS = ["cat", "dog", "horse", "rabbit", "fox", "owl", "whale", "tiger", "sheep", "goat", "mouse", "eagle",
           "frog", "bee", "duck", "bear", "wolf", "deer", "otter", "crow"]
SOUNDS = {"cat": "meows", "dog": "barks", "horse": "neighs", "sheep": "bleats", "goat": "bleats", "owl": "hoots",
          "duck": "quacks", "wolf": "howls", "bee": "buzzes", "frog": "croaks", "crow": "caws", "mouse": "squeaks"}
HOMES = {"bee": "a hive", "fox": "a den", "owl": "a tree", "whale": "the sea", "rabbit": "a burrow", "bear": "a cave",
         "duck": "a pond", "frog": "a pond", "eagle": "a nest", "otter": "a river"}
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "white", "black", "brown", "grey", "pink"]
THINGS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "banana": "yellow", "tomato": "red",
          "orange": "orange", "plum": "purple", "cloud": "white", "leaf": "green", "sun": "yellow", "soil": "brown"}
COUNTRIES = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
             "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
             "Greece": "Athens", "India": "New Delhi", "Brazil": "Brasilia", "Poland": "Warsaw"}
WEATHER = ["sunny", "rainy", "windy", "cloudy", "foggy", "snowy", "warm", "cold", "stormy", "calm"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FOODS = ["bread", "soup", "rice", "pasta", "salad", "cake", "stew", "porridge", "pancakes", "curry"]
STEPS = ["wash the vegetables", "boil the water", "chop the onions", "stir the pot", "add a pinch of salt",
         "heat the pan", "mix the flour and milk", "let it rest for ten minutes", "serve it warm", "taste and season"]
TOOLS = {"hammer": "drive nails", "saw": "cut wood", "spoon": "stir soup", "brush": "paint walls",
         "key": "open doors", "pen": "write notes", "ladder": "reach high shelves", "needle": "sew cloth",
         "shovel": "dig holes", "map": "find the way"}
CODE = {"a list": "holds items in order", "a loop": "repeats a block of code", "a function": "groups steps under a name",
        "a variable": "stores a value", "a test": "checks that code works", "a server": "answers requests",
        "a cache": "keeps recent results close", "a queue": "holds work in arrival order",
        "a model": "turns inputs into predictions", "an adapter": "changes a model with few new weights"}
NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jill", "Kai", "Lea", "Milo", "Nora"]
PLACES = ["the market", "the park", "the library", "the river", "the station", "the garden", "the school", "the harbour"]
ACTIONS = ["walked to", "ran to", "cycled to", "drove to", "looked at", "painted", "cleaned", "visited"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


def _facts(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        animal = rng.choice(list(SOUNDS))
        return f"The {animal} {SOUNDS[animal]}. A young {animal} learns this from its mother."
    if kind == 1:
        animal = rng.choice(list(HOMES))
        return f"A {animal} lives in {HOMES[animal]}."
    if kind == 2:
        thing = rng.choice(list(THINGS))
        return f"The colour of the {thing} is {THINGS[thing]}."
    if kind == 3:
        country = rng.choice(list(COUNTRIES))
        return f"The capital of {country} is {COUNTRIES[country]}."
    if kind == 4:
        day, weather = rng.choice(DAYS), rng.choice(WEATHER)
        return f"On {day} the weather was {weather}, so {rng.choice(NAMES)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}."
    if kind == 5:
        tool = rng.choice(list(TOOLS))
        return f"You use a {tool} to {TOOLS[tool]}."
    if kind == 6:
        term = rng.choice(list(CODE))
        return f"In programming, {term} {CODE[term]}."
    if kind == 7:
        food = rng.choice(FOODS)
        steps = rng.sample(STEPS, 3)
        return f"To make {food}, first {steps[0]}, then {steps[1]}, and finally {steps[2]}."
    a, b = rng.randrange(0, 11), rng.randrange(0, 10)
    return f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}. {a} + {b} = {a + b}."


def _qa(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        country = rng.choice(list(COUNTRIES))
        return f"What is the capital of {country}?", f"The capital of {country} is {COUNTRIES[country]}."
    if kind == 1:
        thing = rng.choice(list(THINGS))
        return f"What colour is the {thing}?", f"The {thing} is {THINGS[thing]}."
    if kind == 2:
        a, b = rng.randrange(0, 50), rng.randrange(0, 50)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 3:
        animal = rng.choice(list(SOUNDS))
        return f"What sound does a {animal} make?", f"A {animal} {SOUNDS[animal]}."
    if kind == 4:
        tool = rng.choice(list(TOOLS))
        return f"What is a {tool} for?", f"A {tool} is used to {TOOLS[tool]}."
    words = rng.sample(ANIMALS + COLOURS, 3)
    return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))


def _paragraph(rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return " ".join(_facts(rng) for _ in range(rng.randrange(3, 7)))
    if style == 1:
        question, answer = _qa(rng)
        return f"Question: {question}\nAnswer: {answer}"
    if style == 2:
        question, answer = _qa(rng)
        return f"### Instruction:\n{question}\n\n### Response:\n{answer}"
    items = rng.sample(ANIMALS + FOODS + list(TOOLS), 4)
    return "A short list:\n" + "\n".join(f"- {item}" for item in items)


def generate(seed: int = 0, target_bytes: int = TARGET_BYTES) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < target_bytes:
        paragraph = _paragraph(rng)
        parts.append(paragraph)
        size += len(paragraph.encode("utf-8")) + 2
    return "\n\n".join(parts) + "\n"


def read_corpus() -> str:
    return CORPUS_PATH.read_text(encoding="utf-8")


if __name__ == "__main__":
    text = generate()
    CORPUS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {CORPUS_PATH} ({len(text.encode()):,} bytes)")
