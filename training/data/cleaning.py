"""Text cleaning rules, and `run_cleaning`, which runs every enabled rule and reports what each did.

Text rules here (unicode, whitespace/control characters, HTML, PII masking) rewrite every text
field of the task; filter and dedup rules live in `training.data.filters`; both register into
`training.data.rules.CLEANING_RULES`. Rules run in the order of the fields of
`CleaningConfig`; each is skipped when its `enabled` is false.

    rows, results = run_cleaning(rows, cfg.cleaning, TASKS["classification"])
    results["pii"].details   # {"email": 3, "phone": 1, ...}
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import training.data.filters  # noqa: F401  (registers the length, language and dedup rules)
from training.data.rules import CLEANING_RULES, RuleResult, rule
from training.data.tasks import Row, TaskSpec


def map_text(rows: list[Row], spec: TaskSpec, fn: Callable[[str], str]) -> RuleResult:
    """Apply `fn` to every text field of every row in place; count rows that changed."""
    result = RuleResult(rows_in=len(rows))
    fields = spec.string_fields()
    for row in rows:
        changed = False
        for name in fields:
            value = row.data.get(name)
            if isinstance(value, str):
                new: Any = fn(value)
            elif isinstance(value, list):
                new = [fn(v) for v in value]
            else:
                continue
            if new != value:
                row.data[name] = new
                changed = True
        result.changed += changed
    return result


@rule("unicode")
def unicode_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    return rows, map_text(rows, spec, lambda s: unicodedata.normalize(opts.form, s))


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t\u00a0]{2,}")
_TRAILING = re.compile(r"[ \t\u00a0]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_whitespace(text: str, collapse_spaces: bool = True) -> str:
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TRAILING.sub("", text)
    if collapse_spaces:
        text = _INNER_SPACES.sub(" ", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


@rule("whitespace")
def whitespace_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    return rows, map_text(rows, spec, lambda s: clean_whitespace(s, opts.collapse_spaces))


_TAG = re.compile(r"<(?:[a-zA-Z][a-zA-Z0-9-]*(?:\s[^<>]*)?/?|/[a-zA-Z][a-zA-Z0-9-]*\s*|!--.*?--)>", re.DOTALL)
_ENTITY = re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{1,6}|#x[0-9a-fA-F]{1,6});")
_BLOCK_TAGS = {"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Text content of HTML; text without tags only gets its entities unescaped."""
    if not _TAG.search(text):
        return html.unescape(text) if _ENTITY.search(text) else text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    out = "".join(parser.parts)
    return _BLANK_LINES.sub("\n\n", re.sub(r"[ \t]*\n[ \t]*", "\n", out)).strip()


_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]+`", re.DOTALL)


def strip_html_outside_code(text: str) -> str:
    """`strip_html` on the prose only: fenced and inline code stay as written."""
    def prose(piece: str) -> str:
        core = piece.strip()
        return piece[: len(piece) - len(piece.lstrip())] + strip_html(core) + piece[len(piece.rstrip()):] if core else piece
    parts, last = [], 0
    for m in _CODE.finditer(text):
        parts += [prose(text[last:m.start()]), m.group(0)]
        last = m.end()
    if not parts:
        return strip_html(text)
    parts.append(prose(text[last:]))
    return "".join(parts)


@rule("html")
def html_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    return rows, map_text(rows, spec, strip_html_outside_code if opts.protect_code else strip_html)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _valid_ip(match: str) -> bool:
    return all(int(part) <= 255 for part in match.split("."))


def _valid_card(match: str) -> bool:
    digits = _digits(match)
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


_DATE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}$|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}$")


def _valid_phone(match: str) -> bool:
    return 7 <= len(_digits(match)) <= 15 and not _DATE.match(match.strip())


@dataclass(frozen=True)
class PiiPattern:
    regex: re.Pattern
    token: str
    valid: Callable[[str], bool] = lambda _: True


# Order matters: cards and IPs before phones, whose pattern would also match them.
PII_PATTERNS: dict[str, PiiPattern] = {
    "email": PiiPattern(re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
    "card": PiiPattern(re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), "[CARD]", _valid_card),
    "ip": PiiPattern(re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"), "[IP]", _valid_ip),
    "phone": PiiPattern(re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,4}(?![\w])"),
                        "[PHONE]", _valid_phone),
}


def mask_pii(text: str, kinds: list[str], counts: dict[str, int] | None = None) -> str:
    """Replace emails, card numbers (Luhn-checked), IPv4 addresses and phone numbers by tokens."""
    for kind, pattern in PII_PATTERNS.items():
        if kind not in kinds:
            continue

        def repl(m: re.Match, pattern: PiiPattern = pattern, kind: str = kind) -> str:
            if not pattern.valid(m.group(0)):
                return m.group(0)
            if counts is not None:
                counts[kind] = counts.get(kind, 0) + 1
            return pattern.token
        text = pattern.regex.sub(repl, text)
    return text


@rule("pii")
def pii_rule(rows: list[Row], opts: Any, spec: TaskSpec) -> tuple[list[Row], RuleResult]:
    counts: dict[str, int] = {kind: 0 for kind in opts.kinds}
    result = map_text(rows, spec, lambda s: mask_pii(s, opts.kinds, counts))
    result.details["masked"] = counts
    return rows, result


def run_cleaning(rows: list[Row], cleaning: Any, spec: TaskSpec,
                 on_rule: Callable[[str, int], None] | None = None) -> tuple[list[Row], dict[str, RuleResult]]:
    """Run every enabled rule in `CleaningConfig` field order; returns rows and per-rule results."""
    results: dict[str, RuleResult] = {}
    for name in type(cleaning).model_fields:
        opts = getattr(cleaning, name)
        if not opts.enabled:
            continue
        rows, results[name] = CLEANING_RULES[name](rows, opts, spec)
        if on_rule:
            on_rule(name, len(rows))
    if spec.check is not None:  # cleaning may make a pair's answers equal (e.g. they differed in spaces only)
        kept = [r for r in rows if spec.validate_clean(r.data) is None]
        results["row_check"] = RuleResult(rows_in=len(rows), dropped=len(rows) - len(kept))
        rows = kept
    return rows, results
