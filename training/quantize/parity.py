"""Parity and cost measurements of a quantized model against the float model it came from.

Logits are compared on sample texts (max / mean abs diff over real tokens); a causal LM
is judged teacher-forced: at every real position of the texts both models predict the
next token from the same prefix (`token_agreement` = share of equal top-1 choices,
`mean_kl` = mean KL(reference || candidate) of the next-token distributions). Free-running
greedy generations are reported too (`greedy_token_agreement`), not gated: after one
near-tie flips, every later position compares different prefixes. Also perplexity on the
same texts (causal LM) or label agreement (classifier), and latency at batch 1.

    report = compare(reference_model, candidate_model, tokenizer, texts, "causal-lm", ParityConfig())
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data")


def weights_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def encode(tokenizer, texts: list[str], max_length: int):
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)


def logits_of(model, batch):
    import torch

    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def token_nll(logits, batch) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over real tokens, and how many tokens."""
    import torch

    targets = batch["input_ids"][:, 1:]
    mask = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    return float(losses[mask].sum()), int(mask.sum())


def perplexity(logits, batch) -> float:
    total, count = token_nll(logits, batch)
    return math.exp(total / max(count, 1))


def next_token_agreement(ref_logits, cand_logits, batch) -> tuple[float, float]:
    """Teacher-forced top-1 agreement and mean KL(reference || candidate) over real positions."""
    real = batch["attention_mask"].bool()
    ref_lp, cand_lp = ref_logits.log_softmax(-1)[real], cand_logits.log_softmax(-1)[real]
    agreement = (ref_lp.argmax(-1) == cand_lp.argmax(-1)).float().mean()
    kl = (ref_lp.exp() * (ref_lp - cand_lp)).sum(-1).mean()
    return float(agreement), float(kl)


def greedy(model, tokenizer, batch, new_tokens: int):
    import torch

    with torch.inference_mode():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:]


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up (graph building, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def compare(reference, candidate, tokenizer, texts: list[str], task: str, parity) -> dict[str, Any]:
    """Quality deltas and latency of `candidate` vs `reference` on `texts`."""
    batch = encode(tokenizer, texts[: parity.samples], parity.max_length)
    ref_logits, cand_logits = logits_of(reference, batch), logits_of(candidate, batch)
    if task == "causal-lm":
        real = batch["attention_mask"].bool()
        diff = (ref_logits - cand_logits).abs()[real]
    else:
        diff = (ref_logits - cand_logits).abs()
    report: dict[str, Any] = {"samples": len(batch["input_ids"]), "max_abs_logit_diff": float(diff.max()),
                              "mean_abs_logit_diff": float(diff.mean())}
    if task == "causal-lm":
        report["token_agreement"], report["mean_kl"] = next_token_agreement(ref_logits, cand_logits, batch)
        ref_tokens = greedy(reference, tokenizer, batch, parity.new_tokens)
        cand_tokens = greedy(candidate, tokenizer, batch, parity.new_tokens)
        report["greedy_token_agreement"] = float((ref_tokens == cand_tokens).float().mean())
        report["greedy_exact_match"] = float((ref_tokens == cand_tokens).all(dim=1).float().mean())
        ppl_ref, ppl_cand = perplexity(ref_logits, batch), perplexity(cand_logits, batch)
        report.update(perplexity_fp32=ppl_ref, perplexity=ppl_cand, perplexity_delta_ratio=ppl_cand / ppl_ref - 1)
        one = encode(tokenizer, texts[:1], parity.max_length)
        run = {"reference": lambda: greedy(reference, tokenizer, one, parity.new_tokens),
               "candidate": lambda: greedy(candidate, tokenizer, one, parity.new_tokens)}
    else:
        report["label_agreement"] = float((ref_logits.argmax(-1) == cand_logits.argmax(-1)).float().mean())
        one = encode(tokenizer, texts[:1], parity.max_length)
        run = {"reference": lambda: logits_of(reference, one), "candidate": lambda: logits_of(candidate, one)}
    if parity.latency_repeats:
        latency = {name: statistics.median(timed(fn, parity.latency_repeats)) for name, fn in run.items()}
        report.update(latency_fp32_s=latency["reference"], latency_s=latency["candidate"],
                      latency_ratio=latency["candidate"] / latency["reference"])
    return report


def judge(report: dict[str, Any], max_logit_diff: float | None, min_agreement: float,
          max_kl: float | None = None) -> dict[str, Any]:
    """`passed` when every set tolerance holds (None: reported, not gated)."""
    agreement = report.get("token_agreement", report.get("label_agreement", 1.0))
    passed = agreement >= min_agreement
    if max_logit_diff is not None:
        passed = passed and report["max_abs_logit_diff"] <= max_logit_diff
    if max_kl is not None and "mean_kl" in report:
        passed = passed and report["mean_kl"] <= max_kl
    tolerance = {"max_abs_logit_diff": max_logit_diff, "min_agreement": min_agreement, "max_kl": max_kl}
    return {**report, "tolerance": tolerance, "passed": bool(passed)}
