"""Benchmark P10: structured outputs in a mixed batch.

A 16-row batch (one request per row, all submitted at once to an in-process ServingCore, rows spread
over 4 LoRA adapters and the base), half of the rows constrained by a JSON schema (response_format
json_schema, strict), greedy:
  P10a tokens/s of that batch / tokens/s of the same batch unconstrained        >= 0.85
  P10b constrained outputs that parse and validate against the schema (%)       == 100
Fair baseline: the unconstrained batch generates exactly the tokens each row produced constrained
(max_tokens = that count, ignore_eos), so the two differ only by the grammar work
(masks filled and applied every step, matchers advanced). Phases are interleaved over `--reps`
repetitions; P10a is the median of the per-repetition ratios (this host's speed drifts).
Also records the grammar engine comparison (xgrammar vs llguidance) that chose the engine.

    python benchmarks/structured.py [--base tiny-llama] [--reps 15]
Writes benchmarks/results/structured.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import arguments, command, goals_table, machine, versions, write_results  # noqa: E402

ROWS = 16
SCHEMA = {"type": "array", "minItems": 4, "maxItems": 4, "items": {
    "type": "object", "additionalProperties": False, "required": ["id", "tag", "ok"],
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                   "tag": {"type": "string", "enum": ["alpha", "beta", "gamma", "delta"]},
                   "ok": {"type": "boolean"}}}}
PROMPTS = ["To be, or not to be, that is the question", "Now is the winter of our discontent",
           "Friends, Romans, countrymen, lend me your ears", "All the world's a stage"]
ENGINE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "ok"],
                 "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                                "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}},
                                "ok": {"type": "boolean"}}}


def compare_engines(tokenizer_dirs: list[Path], steps: int = 60, reps: int = 5) -> list[dict]:
    """Per tokenizer: one-off costs (vocabulary table, compile / matcher creation) and the per-step mask fill
    time of xgrammar and llguidance, walking random-logit paths through ENGINE_SCHEMA."""
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt
    import torch
    import xgrammar as xgr
    from transformers import AutoTokenizer

    out = []
    for path in tokenizer_dirs:
        tok = AutoTokenizer.from_pretrained(str(path))
        vocab = len(tok)
        started = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        x_info = time.perf_counter() - started
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        started = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(ENGINE_SCHEMA), any_whitespace=False)
        x_compile = time.perf_counter() - started
        started = time.perf_counter()
        ll_tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
        l_info = time.perf_counter() - started
        grammar = llguidance.LLMatcher.grammar_from_json_schema(ENGINE_SCHEMA, defaults={"whitespace_flexible": False})
        started = time.perf_counter()
        llguidance.LLMatcher(ll_tok, grammar)
        l_create = time.perf_counter() - started
        x_masks, l_masks = [], []
        for rep in range(reps):
            gen = torch.Generator().manual_seed(rep)
            xm, xb = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, info.vocab_size)
            lm, lb = llguidance.LLMatcher(ll_tok, grammar), lt.allocate_token_bitmask(1, vocab)
            for _ in range(steps):
                if xm.is_terminated():
                    break
                t0 = time.perf_counter()
                xm.fill_next_token_bitmask(xb, 0)
                x_masks.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                lt.fill_next_token_bitmask(lm, lb, 0)
                l_masks.append(time.perf_counter() - t0)
                logits = torch.randn(1, vocab, generator=gen)
                xgr.apply_token_bitmask_inplace(logits, xb)
                token = int(logits.argmax())
                xm.accept_token(token)
                lm.consume_token(token)
        out.append({"tokenizer": path.name, "vocab": vocab,
                    "xgrammar": {"tokenizer_info_ms": round(x_info * 1e3, 1), "compile_ms": round(x_compile * 1e3, 2),
                                 "mask_median_us": round(statistics.median(x_masks) * 1e6, 1),
                                 "mask_max_us": round(max(x_masks) * 1e6, 1)},
                    "llguidance": {"tokenizer_info_ms": round(l_info * 1e3, 1), "matcher_create_ms": round(l_create * 1e3, 2),
                                   "mask_median_us": round(statistics.median(l_masks) * 1e6, 1),
                                   "mask_max_us": round(max(l_masks) * 1e6, 1)},
                    "mask_steps": len(x_masks)})
    return out


def requests_for(models: list[str], constrained: bool, lengths: list[int] | None, max_tokens: int) -> list:
    from service.schemas import CompletionRequest

    out = []
    for i in range(ROWS):
        common = {"model": models[i % len(models)], "prompt": PROMPTS[i % len(PROMPTS)], "temperature": 0}
        if i % 2 == 0 and constrained:
            out.append(CompletionRequest(**common, max_tokens=max_tokens, response_format={
                "type": "json_schema", "json_schema": {"name": "rows", "schema": SCHEMA, "strict": True}}))
        else:
            n = lengths[i] if lengths else max_tokens
            out.append(CompletionRequest(**common, max_tokens=n, ignore_eos=True))
    return out


def run_batch(core, requests) -> tuple[float, float, list]:
    """Wall seconds, this process's CPU seconds (engine thread included) and the replies of one batch."""
    async def together():
        return await asyncio.gather(*(core.complete(r, None) for r in requests))

    started, cpu = time.perf_counter(), time.process_time()
    replies = asyncio.run(together())
    return time.perf_counter() - started, time.process_time() - cpu, replies


def main() -> None:
    parser = arguments(__doc__, threads=True, note="2-core dev box shared with other jobs (load average recorded)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=200, help="cap of the constrained rows (they end earlier)")
    args = parser.parse_args()
    import jsonschema

    from benchmarks.serving import make_adapters
    from service.core import ServingCore
    from service.settings import load_settings
    from training.artifact import resolve_base_dir

    base_dir = resolve_base_dir(args.base)
    work = Path(tempfile.mkdtemp(prefix="ts-bench-structured-"))
    names = make_adapters(base_dir, work / "artifacts", 4, "s")
    settings = load_settings({"base_model": str(base_dir), "artifacts_dir": str(work / "artifacts"), "auth_enabled": False,
                              "api_keys_env": None, "num_threads": args.threads, "cache": {"enabled": False},
                              "limits": {"max_tokens": max(args.max_tokens, 256)},
                              "fleet": {"state_file": str(work / "state.json")}})
    core = ServingCore(settings)
    core.start()
    models = [*names, "base"]
    try:
        run_batch(core, requests_for(models, True, None, args.max_tokens))  # warm-up: loads adapters, compiles
        replies = run_batch(core, requests_for(models, True, None, args.max_tokens))[2]
        lengths = [r.usage.completion_tokens for r in replies]
        ratios, cpu_ratios, runs, valid, total = [], [], {"constrained": [], "unconstrained": []}, 0, 0
        for _ in range(args.reps):
            seconds, cpu, replies = run_batch(core, requests_for(models, True, None, args.max_tokens))
            tokens = sum(r.usage.completion_tokens for r in replies)
            constrained_tps, constrained_cpu = tokens / seconds, cpu / tokens
            for i in range(0, ROWS, 2):
                total += 1
                try:
                    jsonschema.validate(json.loads(replies[i].choices[0].text), SCHEMA)
                    valid += 1
                except (ValueError, jsonschema.ValidationError):
                    pass
            seconds, cpu, free = run_batch(core, requests_for(models, False, lengths, args.max_tokens))
            free_tps = sum(r.usage.completion_tokens for r in free) / seconds
            cpu_ratios.append(cpu / sum(r.usage.completion_tokens for r in free) / constrained_cpu)
            runs["constrained"].append(round(constrained_tps, 1))
            runs["unconstrained"].append(round(free_tps, 1))
            ratios.append(constrained_tps / free_tps)
    finally:
        core.stop()
    tokenizers = [base_dir] + [p for p in [resolve_base_dir_or_none("smollm2-135m")] if p and p != base_dir]
    try:
        engines = compare_engines(tokenizers)
    except ImportError as exc:  # llguidance is not a project dependency; `pip install llguidance` to compare
        print(f"grammar engine comparison skipped: {exc}")
        engines = []
    ratio = statistics.median(ratios)
    percent = 100.0 * valid / total
    result = {
        "benchmark": "structured outputs in a mixed batch (P10)",
        "goals": [
            {"id": "P10a", "measure": "tokens/s, 16-row mixed batch with 8 rows JSON-schema constrained / same batch "
             "unconstrained (median of interleaved reps)", "value": round(ratio, 3), "goal": ">= 0.85", "met": ratio >= 0.85},
            {"id": "P10b", "measure": "constrained outputs that parse and validate (%)", "value": round(percent, 1),
             "goal": "== 100", "met": percent == 100.0},
        ],
        "results": {"rows": ROWS, "constrained_rows": ROWS // 2, "models": models, "reps": args.reps,
                    "per_row_completion_tokens": lengths, "tokens_per_s": runs,
                    "ratios": [round(r, 3) for r in ratios], "validated": f"{valid}/{total}",
                    "cpu_time_ratio_median": round(statistics.median(cpu_ratios), 3),
                    "cpu_time_ratios": [round(r, 3) for r in cpu_ratios],
                    "grammar_engines": engines},
        "machine": machine(torch_threads=args.threads, note=args.note),
        "versions": versions("torch", "transformers", "xgrammar", "llguidance"),
        "command": command(),
    }
    write_results("structured", result, markdown(result))
    print(markdown(result))


def resolve_base_dir_or_none(name: str) -> Path | None:
    from training.artifact import resolve_base_dir

    try:
        return resolve_base_dir(name)
    except Exception:  # noqa: BLE001 - the second tokenizer is optional (not built on this machine)
        return None


def markdown(result: dict) -> str:
    lines = [f"# {result['benchmark']}", "", f"`{result['command']}`", "", *goals_table(result["goals"])]
    res = result["results"]
    lines += ["", f"Rows: {res['rows']} ({res['constrained_rows']} constrained) on {', '.join(res['models'])}; "
              f"per-rep tokens/s constrained {res['tokens_per_s']['constrained']}, unconstrained "
              f"{res['tokens_per_s']['unconstrained']}; ratios {res['ratios']}; validated {res['validated']}.", "",
              "Process CPU seconds per token, unconstrained / constrained (the same ratio measured on CPU time, "
              f"less exposed to other jobs on a shared host): median {res['cpu_time_ratio_median']}, per rep "
              f"{res['cpu_time_ratios']}.", "",
              "## Grammar engine (why xgrammar)", "", "| tokenizer | vocab | engine | one-off setup (ms) | "
              "compile / matcher (ms) | mask fill median (µs) | mask fill max (µs) |", "|---|---|---|---|---|---|---|"]
    for e in res["grammar_engines"]:
        x, ll = e["xgrammar"], e["llguidance"]
        lines.append(f"| {e['tokenizer']} | {e['vocab']} | xgrammar | {x['tokenizer_info_ms']} | {x['compile_ms']} | "
                     f"{x['mask_median_us']} | {x['mask_max_us']} |")
        lines.append(f"| {e['tokenizer']} | {e['vocab']} | llguidance | {ll['tokenizer_info_ms']} | "
                     f"{ll['matcher_create_ms']} | {ll['mask_median_us']} | {ll['mask_max_us']} |")
    m = result["machine"]
    lines += ["", f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, load average "
              f"at start {m['load_average_at_start']} ({m['note']}). Versions: {result['versions']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
