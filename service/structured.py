"""Structured outputs: a request's output constraint (JSON schema, JSON object, regex, choice, grammar)
compiled into a token-level grammar, cached, and matched row by row in the decode batch.

    constraint = constraint_of(request)                         # None, or Constraint(kind, spec, param)
    compiled = await asyncio.to_thread(grammars.compile, loaded, constraint)   # InvalidRequest(param) when bad
    matcher = new_matcher(compiled)                             # one per row, in the engine thread
    masker = Masker(vocab); masker.apply(logits, [(i, matcher), ...]); matcher.accept_token(token)

The request fields: OpenAI's `response_format` (`json_object`; `json_schema` with `schema` and `strict`)
and vLLM's `structured_outputs` (`json`: a schema, `regex`, `choice`: a list of strings, `grammar`:
EBNF in xgrammar's GBNF dialect when it holds `::=`, else Lark). An adapter's manifest may declare a
default `response_schema`; the request's own options win. Tool calls (service/tools.py) reuse this.

Engine: xgrammar (0.2.9), chosen over llguidance (1.9.1) by measurement on this project's tokenizers
(`benchmarks/structured.py`, table in benchmarks/results/structured.md): the median per-step mask fill
was under half of llguidance's on both the tiny base (4k vocabulary) and SmolLM2 (49k) in every run
(recorded: 5.0 vs 12.0 µs and 8.2 vs 18.4 µs, worst step 113 vs 2068 µs; a first ad-hoc run gave 2 vs
61 µs and 8 vs 193 µs), and its vocabulary table builds 2-3x faster. Its cost is a compile per schema
(recorded 1.9 ms and 9.3 ms; up to 37 ms on a loaded host), paid once per
distinct constraint thanks to the LRU here; llguidance needs none. The decode loop fills a mask for
every constrained row on every step, so the per-step cost is the one that bears on throughput (P10);
xgrammar also applies all rows' masks to the batch's logits in one call.
JSON is generated compactly (no free whitespace), so a model cannot spend its tokens on blanks.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from training.artifact.errors import InvalidRequest

from service.errors import with_param

MAX_SPEC_CHARS = 65_536  # a schema, regex or grammar longer than this is refused (compile time grows with it)
TOKENIZER_INFOS = 4  # tokenizers whose vocabulary tables are kept (one per served model, usually one)


@dataclass(frozen=True)
class Constraint:
    """What the output must match: kind is json_schema | json_object | regex | choice | grammar; spec the
    schema (canonical JSON), regex, choices (JSON list) or grammar text; param the request field it came from."""

    kind: str
    spec: str
    param: str = "response_format"


def invalid(message: str, param: str) -> InvalidRequest:
    return with_param(InvalidRequest(message, "fix the constraint (see docs/api.md, structured outputs) and "
                                     "send the request again"), param)


def schema_constraint(schema: Any, param: str, strict: bool = True) -> Constraint:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise invalid(f"{param} is not valid JSON: {exc}", param) from None
    if not isinstance(schema, dict):
        raise invalid(f"{param} must be a JSON schema object", param)
    check_schema(schema, param)
    return Constraint("json_schema" if strict else "json_schema_loose", json.dumps(schema, sort_keys=True), param)


def check_schema(schema: dict, param: str) -> None:
    """A clear 400 for schemas that are not valid JSON Schema (the grammar compiler's errors are terse)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise invalid(f"{param} is not a valid JSON schema: {exc.message}", param) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a "$schema" that is not a string: the request's fault
        raise invalid(f"{param} is not a valid JSON schema ({type(exc).__name__})", param) from None


def constraint_of(request: Any, default_schema: dict | None = None) -> Constraint | None:
    """The request's output constraint (structured_outputs, then response_format), else the model's
    declared default schema (only when the request asked for no format of its own)."""
    options = getattr(request, "structured_outputs", None)
    if options is not None:
        return options.constraint()
    fmt = getattr(request, "response_format", None)
    if fmt is not None:
        return fmt.constraint()
    if default_schema is not None:
        return schema_constraint(default_schema, "model")
    return None


def choice_grammar(choices: list[str]) -> str:
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


class Grammars:
    """Compiles constraints for a model's tokenizer; compiled grammars in a bounded LRU (`size` entries)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.compiled: OrderedDict[tuple, Any] = OrderedDict()
        self.compilers: OrderedDict[int, tuple[Any, Any]] = OrderedDict()  # id(tokenizer) -> (tokenizer, compiler)
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def compile(self, loaded: Any, constraint: Constraint) -> Any:
        """The compiled grammar of `constraint` for `loaded`'s tokenizer; InvalidRequest naming the field when
        the schema, regex or grammar is not valid. Blocking: call it off the event loop."""
        if len(constraint.spec) > MAX_SPEC_CHARS:
            raise invalid(f"the constraint has {len(constraint.spec)} characters; the limit is {MAX_SPEC_CHARS}",
                          constraint.param)
        compiler = self._compiler(loaded)
        key = (id(compiler), constraint.kind, constraint.spec)
        with self.lock:
            hit = self.compiled.get(key)
            if hit is not None:
                self.compiled.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        try:
            grammar = _compile(compiler, constraint)
        except Exception as exc:  # noqa: BLE001 - the engine's errors (RuntimeError, ...) are the request's fault
            reason = str(exc).strip().splitlines()
            detail = reason[-1] if reason else type(exc).__name__
            raise invalid(f"{constraint.param}: the {constraint.kind.replace('_', ' ')} cannot be compiled: "
                          f"{detail[:300]}", constraint.param) from None
        with self.lock:
            self.compiled[key] = grammar
            while len(self.compiled) > self.size:
                self.compiled.popitem(last=False)
        return grammar

    def _compiler(self, loaded: Any) -> Any:
        tokenizer = loaded.tokenizer
        with self.lock:
            held = self.compilers.get(id(tokenizer))
            if held is not None and held[0] is tokenizer:
                self.compilers.move_to_end(id(tokenizer))
                return held[1]
        import xgrammar

        config = getattr(loaded.model, "config", None)
        vocab = grammar_vocab(tokenizer, loaded.model)
        eos = getattr(config, "eos_token_id", None)
        stops = sorted({e for e in [*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id] if e is not None})
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=stops or None)
        compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        with self.lock:
            self.compilers[id(tokenizer)] = (tokenizer, compiler)
            while len(self.compilers) > TOKENIZER_INFOS:  # its grammars go too (their key holds its id)
                gone = id(self.compilers.popitem(last=False)[1][1])
                for key in [k for k in self.compiled if k[0] == gone]:
                    del self.compiled[key]
        return compiler


def _compile(compiler: Any, constraint: Constraint) -> Any:
    kind, spec = constraint.kind, constraint.spec
    if kind in ("json_schema", "json_schema_loose"):
        return compiler.compile_json_schema(spec, any_whitespace=False, strict_mode=kind == "json_schema")
    if kind == "json_object":
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
    if kind == "regex":
        return compiler.compile_regex(spec)
    if kind == "choice":
        return compiler.compile_grammar(choice_grammar(json.loads(spec)))
    if kind == "grammar":
        return compiler.compile_grammar(spec) if "::=" in spec else compiler.compile_lark(spec)
    raise ValueError(f"unknown constraint kind {kind!r}")


def new_matcher(compiled: Any) -> Any:
    import xgrammar

    return xgrammar.GrammarMatcher(compiled)


class Masker:
    """Applies the grammar masks of a batch's constrained rows to its logits in one call; `vocab` is the
    grammar's vocabulary size (`grammar_vocab(loaded)`), which may exceed the logits' width."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.bitmask = None

    def apply(self, logits: Any, rows: list[tuple[int, Any]]) -> dict[int, Exception]:
        """`rows`: (batch position, matcher); masks `logits` (batch, V) in place. Returns the rows whose
        matcher failed (each fails alone; its logits stay unmasked and its token is not used)."""
        import xgrammar

        if self.bitmask is None or self.bitmask.shape[0] < logits.shape[0]:
            self.bitmask = xgrammar.allocate_token_bitmask(max(logits.shape[0], 16), self.vocab)
        failed: dict[int, Exception] = {}
        for i, matcher in rows:
            try:
                matcher.fill_next_token_bitmask(self.bitmask, i)
            except Exception as exc:  # noqa: BLE001 - fails this row only
                failed[i] = exc
        masked = [i for i, _ in rows if i not in failed]
        if masked:
            xgrammar.apply_token_bitmask_inplace(logits, self.bitmask[:logits.shape[0]],
                                                 vocab_size=min(logits.shape[-1], self.vocab), indices=masked)
        return failed


def grammar_vocab(tokenizer: Any, model: Any) -> int:
    """The vocabulary grammars are compiled for: the model's logits and the tokenizer's ids alike."""
    return max(getattr(getattr(model, "config", None), "vocab_size", 0) or 0, len(tokenizer))
