"""Evaluation on preference pairs: reward accuracy, mean margin and a win rate against a baseline adapter.

`tuneserve evaluate --model DPO_ADAPTER --data PREPARED_PREFERENCE_DIR [--baseline SFT_ADAPTER]` runs
this when the data's task is `preference` ({prompt, chosen, rejected} rows). Every number comes
from log-probabilities of the answers given the prompt (summed over answer tokens, the training
template), computed locally with the artifact loaded as it was trained:

- implicit reward r(y) = beta * (logp_model(y|x) - logp_reference(y|x)); the reference is the base
  the artifact was trained on (an adapter switched off: no second copy of the base in memory).
  `reward_accuracy` = share of pairs with r(chosen) > r(rejected); `reward_margin` = mean
  r(chosen) - r(rejected). A policy equal to its reference scores 0 on both.
- win rate against `--baseline` (e.g. the SFT-only adapter), by an offline likelihood judge: on
  each pair the model that puts more log-likelihood on the chosen answer relative to the rejected
  one (logp(chosen) - logp(rejected)) wins; equal margins count half. No generations, no API.

    result = evaluate_pairs(model, tokenizer, rows, beta=0.1, baseline=(model_b, tokenizer_b))
    result.metrics["reward_accuracy"], result.metrics["win_rate"]
"""

from __future__ import annotations

from typing import Any

from training.evaluation.tasks import TaskResult


def pair_logprobs(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_length: int = 256,
                  batch_size: int = 8, reference: bool = False) -> tuple[list[float], list[float]]:
    """Summed answer log-probabilities (chosen, rejected) of every pair; `reference`: with the adapter disabled."""
    import contextlib

    import torch

    from training.train.preference import sequence_logprobs
    from training.train.templates import PromptTemplate, pad_causal

    template = PromptTemplate.for_tokenizer(tokenizer)
    device = next(model.parameters()).device

    def encode(prompt: str, answer: str) -> dict[str, list[int]]:
        return template.encode({"instruction": prompt, "input": "", "output": answer}, tokenizer, max_length)

    seqs = [encode(r["prompt"], r["chosen"]) for r in rows] + [encode(r["prompt"], r["rejected"]) for r in rows]
    off = model.disable_adapter() if reference and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    values: list[float] = []
    model.eval()
    with torch.no_grad(), off:
        for i in range(0, len(seqs), batch_size):
            batch = {k: v.to(device) for k, v in pad_causal(seqs[i:i + batch_size], tokenizer.pad_token_id).items()}
            values += sequence_logprobs(model, batch)[0].tolist()
    return values[:len(rows)], values[len(rows):]


def reward_metrics(policy: tuple[list[float], list[float]], reference: tuple[list[float], list[float]],
                   beta: float) -> tuple[dict[str, float], list[float]]:
    """(reward_accuracy, reward_margin, chosen/rejected reward means) and the per-pair margins."""
    chosen = [beta * (p - r) for p, r in zip(policy[0], reference[0])]
    rejected = [beta * (p - r) for p, r in zip(policy[1], reference[1])]
    margins = [c - r for c, r in zip(chosen, rejected)]
    n = max(1, len(margins))
    return {"reward_accuracy": sum(m > 0 for m in margins) / n, "reward_margin": sum(margins) / n,
            "reward_chosen": sum(chosen) / n, "reward_rejected": sum(rejected) / n, "pairs": len(margins)}, margins


def win_rate(model: tuple[list[float], list[float]], baseline: tuple[list[float], list[float]]) -> dict[str, float]:
    """The likelihood judge: per pair, who prefers chosen over rejected by more (ties half)."""
    ours = [c - r for c, r in zip(*model)]
    theirs = [c - r for c, r in zip(*baseline)]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs))
    n = max(1, len(ours))
    return {"win_rate": wins / n, "judge_margin": sum(ours) / n, "baseline_judge_margin": sum(theirs) / n}


def evaluate_pairs(model: Any, tokenizer: Any, rows: list[dict[str, Any]], beta: float = 0.1,
                   baseline: tuple[Any, Any] | None = None, max_length: int = 256, batch_size: int = 8) -> TaskResult:
    """Reward accuracy/margin against the adapter-disabled reference, and the win rate against `baseline`."""
    policy = pair_logprobs(model, tokenizer, rows, max_length, batch_size)
    notes = []
    if hasattr(model, "disable_adapter"):
        reference = pair_logprobs(model, tokenizer, rows, max_length, batch_size, reference=True)
        metrics, margins = reward_metrics(policy, reference, beta)
        notes.append(f"implicit reward beta * (logp_model - logp_base), beta={beta}; reference = the adapter disabled")
    else:
        metrics, margins = {"pairs": len(rows)}, [c - r for c, r in zip(*policy)]
        notes.append("a full model has no adapter to disable: reward metrics need an adapter artifact; "
                     "margins are logp(chosen) - logp(rejected)")
    metrics["preference_accuracy"] = sum(c > r for c, r in zip(*policy)) / max(1, len(rows))
    if baseline is not None:
        metrics.update(win_rate(policy, pair_logprobs(baseline[0], baseline[1], rows, max_length, batch_size)))
        notes.append("win_rate: per pair, the model with the larger logp(chosen) - logp(rejected) wins (ties 1/2)")
    samples = [{"prompt": r["prompt"][:200], "chosen": r["chosen"][:200], "rejected": r["rejected"][:200],
                "margin": round(m, 4)} for r, m in zip(rows[:20], margins)]
    return TaskResult(task="preference", metrics=metrics, per_sample={"margin": margins}, samples=samples,
                      notes=notes)


def run_preference(model_ref: str, rows: list[dict[str, Any]], beta: float, baseline_ref: str | None,
                   device: str = "cpu", batch_size: int = 8) -> TaskResult:
    """`evaluate_pairs` for artifacts on disk (loaded the way they were trained)."""
    from training.artifact.errors import ConfigError
    from training.train.run import load_trained

    if not model_ref:
        raise ConfigError("no model to evaluate", "pass --model ARTIFACT_DIR (an adapter trained with objective=dpo)")
    model, tokenizer, manifest = load_trained(model_ref, device)
    baseline = load_trained(baseline_ref, device)[:2] if baseline_ref else None
    max_length = int(manifest.hyperparameters.get("max_length", 256))
    return evaluate_pairs(model, tokenizer, rows, beta, baseline, max_length, batch_size)
