"""Reference predictors that need no model, so every report can be read against a floor.

`baseline:lead-sentence` answers a QA prompt with the first sentence of its context (or its
first N words: `baseline:lead-sentence-4`), the classic extractive-QA lead baseline.

    tuneserve evaluate --model baseline:lead-sentence --data squad.jsonl --task qa
"""

from __future__ import annotations

import re
import time

from training.artifact.errors import ConfigError
from training.evaluation.predictions import ClassPrediction, Generation, ScoringUnsupported
from training.evaluation.prompts import QA_INPUT, render_instruction

CONTEXT = re.compile(re.escape(QA_INPUT.split("{")[0]) + r"(.*)", re.S)
SENTENCE_END = re.compile(r"(?<=[.!?])\s")


class LeadSentence:
    """First sentence (optionally first `words` words) of the context in a QA prompt."""

    def __init__(self, words: int | None = None) -> None:
        self.words = words
        self.name = f"lead-sentence{f'-{words}' if words else ''}"
        self.info = {"transport": "baseline", "baseline": self.name}

    def render_instruction(self, instruction: str, input_text: str = "") -> str:
        return render_instruction(None, instruction, input_text)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Generation]:
        out = []
        for prompt in prompts:
            started = time.perf_counter()
            found = CONTEXT.search(prompt)
            if found is None:
                raise ConfigError(f"baseline {self.name} answers QA prompts only", "use it with --task qa")
            context = found.group(1).split("\n\n###")[0].strip()
            words = SENTENCE_END.split(context, maxsplit=1)[0].split()[: self.words or None]
            out.append(Generation(" ".join(words), time.perf_counter() - started, len(words)))
        return out

    def classify(self, texts: list[str]) -> list[ClassPrediction]:
        raise ConfigError(f"baseline {self.name} does not classify", "use it with --task qa")

    def score(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        raise ScoringUnsupported(f"baseline {self.name} has no token probabilities")

    def close(self) -> None:
        pass


def open_baseline(name: str) -> LeadSentence:
    match = re.fullmatch(r"lead-sentence(?:-(\d+))?", name)
    if match is None:
        raise ConfigError(f"unknown baseline {name!r}", "known: baseline:lead-sentence, baseline:lead-sentence-N")
    return LeadSentence(int(match.group(1)) if match.group(1) else None)
