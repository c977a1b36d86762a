"""The shipped pretraining corpus for the embedded tiny base: the project's own synthetic English.

Deterministic (seeded) documents built from templates and the word lists in
`training.base.words`: facts about animals, colors, countries, weather, cooking, tools,
professions and programming; written-out arithmetic; question/answer pairs; lists; short
stories; small code snippets; and instruction/response pairs in the same
`### Instruction:` / `### Response:` format the tokenizer's chat template renders.
Documents are separated by two blank lines (`DOC_SEPARATOR`). Regenerate the shipped file with

    python -m training.base.corpus            # writes training/base/corpus.txt
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from training.base import words as W

CORPUS_PATH = Path(__file__).with_name("corpus.txt")
TARGET_BYTES = 340_000
DOC_SEPARATOR = "\n\n\n"
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly and correctly.", "You are a patient teacher.",
                  "Reply in one short sentence."]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
YOU_SOUND = ("uk", "uni", "use")
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 10000 ("three hundred and forty-two")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return f"{ONES[n // 100]} hundred" + (f" and {number_words(rest)}" if rest else "")
    rest = n % 1000
    joiner = " and " if 0 < rest < 100 else " "
    return f"{ONES[n // 1000]} thousand" + (joiner + number_words(rest) if rest else "")


def article(word: str) -> str:
    """The word with "a"/"an" in front; proper nouns (capitalised) get none."""
    if word[0].isupper():
        return word
    vowel_sound = word[0] in "aeiou" and not word.startswith(YOU_SOUND)
    return ("an " if vowel_sound else "a ") + word


def cap(text: str) -> str:
    """Upper-case the first letter only (str.capitalize would lower-case "API")."""
    return text[:1].upper() + text[1:]


def plural_category(category: str) -> str:
    return category.replace("piece of", "pieces of") if category.startswith("piece of") else category + "s"


def made_up_name(rng: random.Random) -> str:
    return "".join(rng.choice(W.SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


@dataclass(frozen=True)
class Fact:
    """One piece of knowledge as a statement (None for pure tasks) and as a question with its answer."""

    statement: str | None
    question: str
    answer: str


def _animal(rng: random.Random) -> Fact:
    name = rng.choice(list(W.ANIMALS))
    sound, home, food, _size, legs, young = W.ANIMALS[name]
    kind = rng.randrange(5)
    if kind == 0 and sound:
        return Fact(f"The {name} {sound}.", f"What sound does {article(name)} make?", f"{cap(article(name))} {sound}.")
    if kind == 1:
        return Fact(f"{cap(article(name))} lives in {home}.", f"Where does {article(name)} live?",
                    f"{cap(article(name))} lives in {home}.")
    if kind == 2:
        return Fact(f"{cap(article(name))} eats {food}.", f"What does {article(name)} eat?",
                    f"{cap(article(name))} eats {food}.")
    if kind == 3:
        return Fact(f"{cap(article(name))} has {number_words(legs)} legs.",
                    f"How many legs does {article(name)} have?", f"{cap(article(name))} has {legs} legs.")
    return Fact(f"A young {name} is called {article(young)}.", f"What is a young {name} called?",
                f"A young {name} is called {article(young)}.")


def _compare(rng: random.Random) -> Fact:
    a, b = rng.sample([n for n in W.ANIMALS], 2)
    if W.ANIMALS[a][3] == W.ANIMALS[b][3]:
        return Fact(f"{cap(article(a))} and {article(b)} are about the same size.",
                    f"Which is bigger, {article(a)} or {article(b)}?", "They are about the same size.")
    big, small = (a, b) if W.ANIMALS[a][3] > W.ANIMALS[b][3] else (b, a)
    return Fact(f"{cap(article(big))} is bigger than {article(small)}.",
                f"Which is bigger, {article(a)} or {article(b)}?", f"{cap(article(big))} is bigger than {article(small)}.")


def _country(rng: random.Random) -> Fact:
    country = rng.choice(list(W.COUNTRIES))
    capital, continent, language = W.COUNTRIES[country]
    kind = rng.randrange(3)
    if kind == 0:
        return Fact(f"The capital of {country} is {capital}.", f"What is the capital of {country}?",
                    f"The capital of {country} is {capital}.")
    if kind == 1:
        return Fact(f"{country} is in {continent}.", f"Which continent is {country} in?", f"{country} is in {continent}.")
    return Fact(f"People in {country} speak {language}.", f"What language do people speak in {country}?",
                f"People in {country} speak {language}.")


def _category(rng: random.Random) -> Fact:
    category = rng.choice(list(W.CATEGORIES))
    item = rng.choice(W.CATEGORIES[category])
    return Fact(f"{cap(article(item))} is {article(category)}.", f"What is {article(item)}?",
                f"{cap(article(item))} is {article(category)}.")


def _arithmetic(rng: random.Random) -> Fact:
    a, b = rng.randrange(0, 100), rng.randrange(0, 100)
    kind = rng.randrange(3)
    if kind == 0:
        return Fact(f"{cap(number_words(a))} plus {number_words(b)} is {number_words(a + b)}.",
                    f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return Fact(f"{a} minus {b} equals {a - b}.", f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.")
    a, b = a % 13, b % 13
    return Fact(f"{cap(number_words(a))} times {number_words(b)} is {number_words(a * b)}.",
                f"What is {a} times {b}?", f"{a} times {b} is {a * b}.")


def _calendar(rng: random.Random) -> Fact:
    if rng.random() < 0.5:
        i = rng.randrange(7)
        return Fact(f"The day after {W.DAYS[i]} is {W.DAYS[(i + 1) % 7]}.", f"What day comes after {W.DAYS[i]}?",
                    f"{W.DAYS[(i + 1) % 7]} comes after {W.DAYS[i]}.")
    i = rng.randrange(12)
    return Fact(f"{W.MONTHS[i]} is month number {i + 1} of the year.", f"Which month comes after {W.MONTHS[i]}?",
                f"{W.MONTHS[(i + 1) % 12]} comes after {W.MONTHS[i]}.")


def lookup_fact(table: dict[str, str], statement: str, question: str, answer: str) -> Callable[[random.Random], Fact]:
    """A fact maker over key -> value `table`; templates use {k} key, {K} capitalised key,
    {a} key with article, {A} the same capitalised, and {v} the value."""

    def make(rng: random.Random) -> Fact:
        key = rng.choice(list(table))
        fields = {"k": key, "K": cap(key), "a": article(key), "A": cap(article(key)), "v": table[key]}
        return Fact(statement.format(**fields), question.format(**fields), answer.format(**fields))

    return make


def one_of(*makers: Callable[[random.Random], Fact]) -> Callable[[random.Random], Fact]:
    return lambda rng: makers[rng.randrange(len(makers))](rng)


_color = lookup_fact(W.THINGS, "The color of the {k} is {v}.", "What color is the {k}?", "The {k} is {v}.")
_profession = lookup_fact(W.PROFESSIONS, "{A} {v}.", "What does {a} do?", "{A} {v}.")
_tool = lookup_fact(W.TOOLS, "You use {a} to {v}.", "What is {a} for?", "{A} is used to {v}.")
_code_term = lookup_fact(W.CODE_TERMS, "In programming, {k} {v}.", "In programming, what does {k} do?", "{K} {v}.")
_word = one_of(
    lookup_fact(W.OPPOSITES, "The opposite of {k} is {v}.", "What is the opposite of {k}?", "The opposite of {k} is {v}."),
    lookup_fact(W.PLURALS, "The plural of {k} is {v}.", "What is the plural of {k}?", "The plural of {k} is {v}."),
    lookup_fact(W.PAST, "The past tense of {k} is {v}.", "What is the past tense of {k}?",
                "The past tense of {k} is {v}."),
)


def _text_task(rng: random.Random) -> Fact:
    kind = rng.randrange(6)
    picked = rng.sample([w for ws in W.CATEGORIES.values() for w in ws], 4)
    if kind == 0:
        return Fact(None, f"Reverse the words: {' '.join(picked)}", " ".join(reversed(picked)))
    if kind == 1:
        numbers = rng.sample(range(1, 200), 5)
        return Fact(None, f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}",
                    ", ".join(map(str, sorted(numbers))))
    if kind == 2:
        return Fact(None, f"Write this word in capital letters: {picked[0]}", picked[0].upper())
    if kind == 3:
        return Fact(None, f"How many letters are in the word {picked[0]}?",
                    f"The word {picked[0]} has {len(picked[0])} letters.")
    if kind == 4:
        n = rng.randrange(0, 10000)
        return Fact(None, f"Write the number {n} in words.", cap(number_words(n)) + ".")
    category = rng.choice(list(W.CATEGORIES))
    count = rng.randint(2, 4)
    items = rng.sample(W.CATEGORIES[category], count)
    return Fact(None, f"Name {number_words(count)} examples of {plural_category(category)}.",
                ", ".join(items[:-1]) + f" and {items[-1]}.")


FACTS: list[Callable[[random.Random], Fact]] = [_animal, _compare, _color, _country, _category, _profession, _tool,
                                                _code_term, _arithmetic, _calendar, _word]
TASKS: list[Callable[[random.Random], Fact]] = [*FACTS, _text_task, _text_task]


def _statement(rng: random.Random) -> str:
    fact = rng.choice(FACTS)(rng)
    return fact.statement or fact.answer


def doc_facts(rng: random.Random) -> str:
    return " ".join(_statement(rng) for _ in range(rng.randint(3, 7)))


def doc_qa(rng: random.Random) -> str:
    return "\n\n".join(f"Question: {f.question}\nAnswer: {f.answer}"
                       for f in (rng.choice(TASKS)(rng) for _ in range(rng.randint(1, 3))))


def doc_instruction(rng: random.Random) -> str:
    fact = rng.choice(TASKS)(rng)
    system = f"### System:\n{rng.choice(SYSTEM_PROMPTS)}\n\n" if rng.random() < 0.25 else ""
    return f"{system}### Instruction:\n{fact.question}\n\n### Response:\n{fact.answer}"


def doc_list(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        category = rng.choice(list(W.CATEGORIES))
        items = rng.sample(W.CATEGORIES[category], rng.randint(3, 6))
        return f"Some examples of {plural_category(category)}:\n" + "\n".join(f"- {item}" for item in items)
    if kind == 1:
        items = rng.sample(W.INGREDIENTS, rng.randint(3, 6))
        return f"Shopping list for {rng.choice(W.NAMES)}:\n" + "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
    food = rng.choice(W.FOODS)
    steps = rng.sample(W.COOKING_STEPS, rng.randint(3, 5))
    ingredients = rng.sample(W.INGREDIENTS, 3)
    return (f"How to make {food}\nYou need {', '.join(ingredients[:2])} and {ingredients[2]}.\n"
            + "\n".join(f"Step {i}: {cap(s)}." for i, s in enumerate(steps, 1)))


def doc_arithmetic(rng: random.Random) -> str:
    n = rng.randint(2, 12)
    if rng.random() < 0.5:
        return f"The {number_words(n)} times table:\n" + "\n".join(f"{k} x {n} = {k * n}" for k in range(1, 11))
    start, step = rng.randrange(0, 50), rng.randint(1, 10)
    seq = [start + step * i for i in range(8)]
    return (f"Counting up by {number_words(step)} from {start}: {', '.join(map(str, seq))}. "
            f"In words, the last number is {number_words(seq[-1])}.")


def doc_story(rng: random.Random) -> str:
    name, town = rng.choice(W.NAMES), made_up_name(rng)
    animal = rng.choice(list(W.ANIMALS))
    adjective, other = rng.sample(W.ADJECTIVES, 2)
    day, weather, month = rng.choice(W.DAYS), rng.choice(W.WEATHER), rng.choice(W.MONTHS)
    season = rng.choice(list(W.SEASONS))
    job = rng.choice(list(W.PROFESSIONS))
    return (f"Once upon a time, in the town of {town}, there lived {article(adjective)} {animal} called {made_up_name(rng)}. "
            f"One {weather} {day} in {month}, {name} the {job} {rng.choice(W.ACTIONS)} {rng.choice(W.PLACES)} "
            f"and met the {animal}. The {animal} was {other} but {adjective}. "
            f"They became friends, and every {season}, a time of {W.SEASONS[season]}, they {rng.choice(W.ACTIONS)} "
            f"{rng.choice(W.PLACES)} together. The end.")


def doc_code(rng: random.Random) -> str:
    verb, noun = rng.choice(W.CODE_VERBS), rng.choice(W.CODE_NOUNS)
    fn, arg = f"{verb}_{noun}s", f"{noun}s"
    limit = rng.randint(1, 20)
    return (f"Here is a small Python function that uses {article(verb)} step on each {noun}.\n\n"
            f"def {fn}({arg}, limit={limit}):\n"
            f"    \"\"\"{cap(verb)} up to {limit} {noun}s and return the result.\"\"\"\n"
            f"    result = []\n    for {noun} in {arg}[:limit]:\n        result.append({verb}({noun}))\n"
            f"    return result\n\nCalling {fn}([]) returns an empty list, because there is nothing to {verb}.")


def doc_weather(rng: random.Random) -> str:
    town = made_up_name(rng)
    lines = [f"Weather report for {town}:"]
    for day in rng.sample(W.DAYS, 3):
        low = rng.randint(-5, 20)
        lines.append(f"{day}: {rng.choice(W.WEATHER)}, between {low} and {low + rng.randint(2, 12)} degrees.")
    return "\n".join(lines)


DOCUMENTS: dict[str, tuple[Callable[[random.Random], str], int]] = {
    "facts": (doc_facts, 5), "qa": (doc_qa, 3), "instruction": (doc_instruction, 6), "list": (doc_list, 2),
    "arithmetic": (doc_arithmetic, 1), "story": (doc_story, 2), "code": (doc_code, 1), "weather": (doc_weather, 1),
}


def generate(seed: int = 0, target_bytes: int = TARGET_BYTES) -> str:
    """The corpus text: documents drawn from `DOCUMENTS` by weight until `target_bytes` is reached."""
    rng = random.Random(seed)
    makers = [maker for maker, _ in DOCUMENTS.values()]
    weights = [weight for _, weight in DOCUMENTS.values()]
    docs: list[str] = []
    size = 0
    while size < target_bytes:
        doc = rng.choices(makers, weights)[0](rng)
        docs.append(doc)
        size += len(doc.encode("utf-8")) + len(DOC_SEPARATOR)
    return DOC_SEPARATOR.join(docs) + "\n"


def split_documents(text: str) -> list[str]:
    return [doc.strip("\n") for doc in text.split(DOC_SEPARATOR) if doc.strip()]


if __name__ == "__main__":
    corpus = generate()
    CORPUS_PATH.write_text(corpus, encoding="utf-8")
    print(f"wrote {CORPUS_PATH} ({len(corpus.encode()):,} bytes, {len(split_documents(corpus)):,} documents)")
