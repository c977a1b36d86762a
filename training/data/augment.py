"""Augmentation of the train split: EDA word ops, character noise, paraphrase, back-translation.

Ops are a registry of word-list functions (`synonym`, `swap`, `delete`, `insert`,
`char_noise`) plus two batch ops that go through a pluggable backend (`paraphrase`,
`back_translation`, see `training.data.backends`). Everything is seeded. Augmented rows are
new rows tagged `augmented=True`; they are made only from train rows, after splitting, so
they never reach validation or test. Copies identical to their source are discarded.

    new_rows, info = augment_rows(splits["train"], cfg.augmentation, spec)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from training.artifact.errors import ConfigError
from training.data.backends import make_backend
from training.data.config import AugmentConfig
from training.data.registry import registrar
from training.data.tasks import Row, TaskSpec
from training.data.thesaurus import load_synonyms

WordOp = Callable[[list[str], float, random.Random, dict[str, list[str]]], list[str]]
WORD_OPS: dict[str, WordOp] = {}
BATCH_OPS = ("paraphrase", "back_translation")
word_op = registrar(WORD_OPS)


def _n_changes(words: list[str], alpha: float) -> int:
    return max(1, round(alpha * len(words)))


def _strip(word: str) -> tuple[str, str, str]:
    """Leading punctuation, core word, trailing punctuation."""
    start, end = 0, len(word)
    while start < end and not word[start].isalnum():
        start += 1
    while end > start and not word[end - 1].isalnum():
        end -= 1
    return word[:start], word[start:end], word[end:]


def _synonyms_of(word: str, synonyms: dict[str, list[str]]) -> list[str]:
    return synonyms.get(_strip(word)[1].lower(), [])


@word_op("synonym")
def synonym_replace(words: list[str], alpha: float, rng: random.Random, synonyms: dict[str, list[str]]) -> list[str]:
    out = list(words)
    candidates = [i for i, w in enumerate(words) if _synonyms_of(w, synonyms)]
    rng.shuffle(candidates)
    for i in candidates[: _n_changes(words, alpha)]:
        pre, core, post = _strip(out[i])
        new = rng.choice(_synonyms_of(out[i], synonyms))
        out[i] = pre + (new.capitalize() if core[:1].isupper() else new) + post
    return out


@word_op("swap")
def random_swap(words: list[str], alpha: float, rng: random.Random, synonyms: dict[str, list[str]]) -> list[str]:
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_n_changes(words, alpha)):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


@word_op("delete")
def random_delete(words: list[str], alpha: float, rng: random.Random, synonyms: dict[str, list[str]]) -> list[str]:
    if len(words) < 2:
        return list(words)
    out = [w for w in words if rng.random() > alpha]
    if len(out) == len(words):
        out.pop(rng.randrange(len(out)))
    return out or [rng.choice(words)]


@word_op("insert")
def random_insert(words: list[str], alpha: float, rng: random.Random, synonyms: dict[str, list[str]]) -> list[str]:
    out = list(words)
    pool = [s for w in words for s in _synonyms_of(w, synonyms)]
    if not pool:
        return out
    for _ in range(_n_changes(words, alpha)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(pool))
    return out


_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"


def _noisy(word: str, rng: random.Random) -> str:
    if len(word) < 3:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    pos = _KEYBOARD.find(word[i].lower())
    near = _KEYBOARD[(pos + rng.choice((-1, 1))) % len(_KEYBOARD)] if pos >= 0 else word[i]
    return word[:i] + near + word[i + 1:]


@word_op("char_noise")
def char_noise(words: list[str], alpha: float, rng: random.Random, synonyms: dict[str, list[str]]) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), min(len(out), _n_changes(words, alpha))):
        out[i] = _noisy(out[i], rng)
    return out


def _fields(cfg: AugmentConfig, spec: TaskSpec) -> list[str]:
    fields = cfg.fields or list(spec.augment_fields)
    bad = [f for f in fields if f not in spec.string_fields()]
    if bad:
        raise ConfigError(f"augmentation.fields {bad} are not text fields of task {spec.name}",
                          f"choose from {spec.string_fields()}")
    return fields


def _run_batch_op(op: str, texts: list[str], backend: Any, pivot: str) -> list[str]:
    if op == "paraphrase":
        return backend.paraphrase(texts)
    return backend.translate(backend.translate(texts, "en", pivot), pivot, "en")


def augment_rows(train: list[Row], cfg: AugmentConfig, spec: TaskSpec) -> tuple[list[Row], dict[str, Any]]:
    fields = _fields(cfg, spec)
    rng = random.Random(cfg.seed)
    synonyms = load_synonyms(cfg.synonyms_file)
    chosen = [r for r in train if not r.augmented and rng.random() < cfg.fraction]
    plans = [(row, rng.choice(cfg.ops)) for row in chosen for _ in range(cfg.copies)]
    new_rows: list[Row] = []
    pending: dict[str, list[tuple[Row, str]]] = {op: [] for op in BATCH_OPS}
    for row, op in plans:
        data = dict(row.data)
        for name in fields:
            if op in WORD_OPS and isinstance(data.get(name), str):
                data[name] = " ".join(WORD_OPS[op](data[name].split(), cfg.alpha, rng, synonyms))
        if op in BATCH_OPS:
            pending[op].append((row, op))
            continue
        new_rows.append(Row(data, f"{row.origin}+{op}", dict(row.extra), augmented=True))
    if any(pending.values()):
        backend = make_backend(cfg.backend, synonyms)
        for op, items in pending.items():
            done = {id(r): dict(r.data) for r, _ in items}
            for name in fields:
                texts = [r.data[name] for r, _ in items if isinstance(r.data.get(name), str)]
                outs = iter(_run_batch_op(op, texts, backend, cfg.backend.pivot_language) if texts else [])
                for r, _ in items:
                    if isinstance(r.data.get(name), str):
                        done[id(r)][name] = next(outs)
            new_rows.extend(Row(done[id(r)], f"{r.origin}+{op}", dict(r.extra), augmented=True) for r, _ in items)
    kept = [r for r, (src, _) in zip(new_rows, _sources(new_rows, plans)) if r.data != src.data]
    ops = Counter(r.origin.rsplit("+", 1)[1] for r in kept)
    return kept, {"source_rows": len(chosen), "added": len(kept), "unchanged_discarded": len(new_rows) - len(kept),
                  "by_op": dict(ops), "fields": fields}


def _sources(new_rows: list[Row], plans: list[tuple[Row, str]]) -> list[tuple[Row, str]]:
    by_origin = {f"{row.origin}+{op}": (row, op) for row, op in plans}
    return [by_origin[r.origin] for r in new_rows]
