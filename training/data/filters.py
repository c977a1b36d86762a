"""Filter and dedup cleaning rules: length (chars, tokens), language, exact and near duplicates.

Registered into `training.data.rules.CLEANING_RULES` on import (`training.data.cleaning` imports it).
Token lengths use the tokenizer at `length.tokenizer` when given (a local directory), else
whitespace tokens. The language filter is offline (`langdetect`, seeded so it is
deterministic) and keeps rows too short to judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError
from training.data.dedup import UnionFind, near_duplicate_pairs, normalize_key
from training.data.rules import RuleResult, drop_where, rule
from training.data.tasks import Row, TaskSpec


def count_tokens(texts: list[str], tokenizer: str | None) -> list[int]:
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    fast_file = Path(tokenizer) / "tokenizer.json"
    if fast_file.is_file():  # the `tokenizers` library alone loads in milliseconds
        from tokenizers import Tokenizer

        return [len(enc.ids) for enc in Tokenizer.from_file(str(fast_file)).encode_batch(texts, add_special_tokens=False)]
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load tokenizer {tokenizer!r}: {exc}",
                          "set cleaning.length.tokenizer to a local tokenizer directory, or unset it") from None
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


@rule("length")
def length_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    texts = [spec.text(r.data) for r in rows]
    need_tokens = opts.min_tokens is not None or opts.max_tokens is not None
    tokens = count_tokens(texts, opts.tokenizer) if need_tokens else [0] * len(rows)
    lengths = {id(r): (len(t), n) for r, t, n in zip(rows, texts, tokens)}

    def reason(row: Row) -> str | None:
        chars, toks = lengths[id(row)]
        if chars < opts.min_chars:
            return "too_few_chars"
        if opts.max_chars is not None and chars > opts.max_chars:
            return "too_many_chars"
        if opts.min_tokens is not None and toks < opts.min_tokens:
            return "too_few_tokens"
        if opts.max_tokens is not None and toks > opts.max_tokens:
            return "too_many_tokens"
        return None
    return drop_where(rows, reason)


def detect_language(text: str) -> str:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return "unknown"


@rule("language")
def language_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    allowed = set(opts.allowed)
    short = 0

    def reason(row: Row) -> str | None:
        nonlocal short
        text = spec.text(row.data)
        if len(text) < opts.min_chars:
            short += 1
            return None
        lang = detect_language(text[:1000])
        return None if lang in allowed else f"lang_{lang}"
    kept, result = drop_where(rows, reason)
    result.details["kept_too_short_to_judge"] = short
    return kept, result


@rule("exact_dedup")
def exact_dedup_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    first: dict[str, Row] = {}
    conflicts = 0

    def reason(row: Row) -> str | None:
        nonlocal conflicts
        key = normalize_key(spec.dedup_text(row.data))
        kept = first.setdefault(key, row)
        if kept is row:
            return None
        if spec.label_field and kept.data.get(spec.label_field) != row.data.get(spec.label_field):
            conflicts += 1
        return "duplicate"
    kept, result = drop_where(rows, reason)
    if spec.label_field:
        result.details["conflicting_labels"] = conflicts
    return kept, result


def _preview(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@rule("near_dedup")
def near_dedup_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    texts = [spec.dedup_text(r.data) for r in rows]
    pairs = near_duplicate_pairs(texts, opts.threshold, opts.num_perm, opts.shingle)
    uf = UnionFind(len(rows))
    for a, b, _ in pairs:
        uf.union(a, b)
    keep = [uf.find(i) == i for i in range(len(rows))]
    kept = [r for r, k in zip(rows, keep) if k]
    result = RuleResult(rows_in=len(rows), dropped=len(rows) - len(kept))
    result.details["pairs"] = len(pairs)
    result.details["examples"] = [
        {"kept": _preview(texts[a]), "dropped": _preview(texts[b]), "jaccard": round(sim, 3)} for a, b, sim in pairs[:5]]
    return kept, result
