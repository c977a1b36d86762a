"""Replaying an artifact's golden set through a served form, and the parity gate on the result.

A causal LM is replayed teacher-forced: the served form reads every prompt followed by its
reference greedy tokens in one right-padded forward pass, and at every generated position
- `token_agreement`: its top-1 token equals the reference token (share over all positions),
- `kl`: KL(reference || served) over the reference's top-k tokens plus one bucket for all
  other tokens (a lower bound of the full KL; the golden set stores only the top k),
- `logprob_diff`: |served - reference| logprob of the reference token (`max_logprob_diff`).
A classifier is replayed once per prompt: `label_agreement` (its label equals the reference
label), `mean_kl` over the label distribution and `max_prob_diff`. The `worst` prompt is the
one with the largest KL. `ParityGate` says which numbers refuse an artifact:

    report = replay(golden, model_forward(served_model))
    problems = ParityGate(max_kl=0.3).violations(report)   # [] when the served form behaves like training
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from training.artifact.config import StrictModel
from training.artifact.golden import Forward, GoldenPrompt, GoldenSet, label_probs, teacher_forced_logprobs

PROB_FLOOR = 1e-12
MISMATCH_KL = 1e6  # a served classifier with another number of labels (finite: reports are JSON)


class ParityGate(StrictModel):
    """Tolerances of a served form against its golden set (agreement means label agreement for classifiers)."""

    enabled: bool = Field(True, description="replay the golden set when an artifact loads, and refuse one that drifted")
    max_kl: float = Field(0.25, ge=0.0, description="mean KL(reference || served) per position (or per prompt)")
    min_token_agreement: float = Field(0.75, ge=0.0, le=1.0, description="share of teacher-forced top-1 tokens "
                                       "(labels for classifiers) equal to the reference")

    def violations(self, report: dict[str, Any]) -> list[str]:
        """What is over the tolerance, in words (empty when the report passes)."""
        problems = []
        agreement = report.get("token_agreement", report.get("label_agreement"))
        if agreement is not None and agreement < self.min_token_agreement:
            problems.append(f"{'token' if 'token_agreement' in report else 'label'} agreement {agreement:.3f} "
                            f"< {self.min_token_agreement}")
        if report["mean_kl"] > self.max_kl:
            problems.append(f"mean KL {report['mean_kl']:.4f} > {self.max_kl}")
        return problems

    def refusal(self, name: str, report: dict[str, Any]) -> str | None:
        """The message refusing `name`, naming its worst prompt; None when it passes."""
        problems = self.violations(report)
        if not problems:
            return None
        worst = report["worst"]
        return (f"{name} does not behave like the model it was trained as: {'; '.join(problems)} on its golden set "
                f"({report['prompts']} prompts); worst prompt #{worst['index']} {worst['text']!r} "
                f"(KL {worst['kl']:.4f}, agreement {worst['agreement']:.2f})")


def coarse_kl(ref_top: list[float], cand_top: list[float]) -> float:
    """KL(p || q) over the given logprobs plus one bucket holding the rest of each distribution's mass."""
    p = [math.exp(v) for v in ref_top]
    q = [math.exp(v) for v in cand_top]
    p_rest, q_rest = max(1.0 - sum(p), 0.0), max(1.0 - sum(q), 0.0)
    total = sum(pi * (lp - math.log(max(qi, PROB_FLOOR))) for pi, lp, qi in zip(p, ref_top, q) if pi > 0)
    if p_rest > PROB_FLOOR:
        total += p_rest * (math.log(p_rest) - math.log(max(q_rest, PROB_FLOOR)))
    return max(total, 0.0)


def _replay_tokens(prompt: GoldenPrompt, logprobs) -> dict[str, Any]:
    chosen = logprobs.argmax(-1).tolist()
    kls, diffs = [], []
    for pos, token in enumerate(prompt.tokens):
        row = logprobs[pos]
        kls.append(coarse_kl(prompt.top_logprobs[pos], [float(row[i]) for i in prompt.top_ids[pos]]))
        diffs.append(abs(float(row[token]) - prompt.logprobs[pos]))
    agree = [int(c == t) for c, t in zip(chosen, prompt.tokens)]
    return {"positions": len(agree), "agreed": sum(agree), "kl_sum": sum(kls), "max_diff": max(diffs, default=0.0)}


def _replay_label(prompt: GoldenPrompt, forward: Forward, labels: list[str]) -> dict[str, Any]:
    probs = label_probs(forward, prompt.input_ids).tolist()
    if len(probs) != len(prompt.probs):
        return {"positions": 1, "agreed": 0, "kl_sum": MISMATCH_KL, "max_diff": 1.0}
    names = labels or [str(i) for i in range(len(probs))]
    label = names[max(range(len(probs)), key=probs.__getitem__)]
    kl = sum(p * (math.log(p) - math.log(max(q, PROB_FLOOR))) for p, q in zip(prompt.probs, probs) if p > 0)
    return {"positions": 1, "agreed": int(label == prompt.label), "kl_sum": max(kl, 0.0),
            "max_diff": max(abs(p - q) for p, q in zip(prompt.probs, probs))}


def replay(golden: GoldenSet, forward: Forward) -> dict[str, Any]:
    """Run every golden prompt through `forward` and compare with the reference outputs."""
    classifier = golden.task == "classification"
    if classifier:
        rows = [_replay_label(p, forward, golden.labels) for p in golden.prompts]
    else:
        served = teacher_forced_logprobs(forward, [(p.input_ids, p.tokens) for p in golden.prompts])
        rows = [_replay_tokens(p, logprobs) for p, logprobs in zip(golden.prompts, served)]
    positions = sum(r["positions"] for r in rows)
    per_prompt = [{"index": i, "text": p.text[:120], "kl": r["kl_sum"] / max(r["positions"], 1),
                   "agreement": r["agreed"] / max(r["positions"], 1), "max_diff": r["max_diff"]}
                  for i, (p, r) in enumerate(zip(golden.prompts, rows))]
    worst = max(per_prompt, key=lambda r: (r["kl"], -r["agreement"]), default=None)
    report: dict[str, Any] = {"task": golden.task, "prompts": len(rows), "positions": positions,
                              "mean_kl": sum(r["kl_sum"] for r in rows) / max(positions, 1), "worst": worst,
                              "per_prompt": per_prompt}
    agreement = sum(r["agreed"] for r in rows) / max(positions, 1)
    max_diff = max((r["max_diff"] for r in rows), default=0.0)
    if classifier:
        report.update(label_agreement=agreement, max_prob_diff=max_diff)
    else:
        report.update(token_agreement=agreement, max_logprob_diff=max_diff)
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth showing or exporting (no per-prompt rows)."""
    keys = ("prompts", "token_agreement", "label_agreement", "mean_kl", "max_logprob_diff", "max_prob_diff")
    out = {k: report[k] for k in keys if k in report}
    if report.get("worst"):
        out["worst_prompt"] = report["worst"]["text"]
    return out


def load_served(path, trust_remote_code: bool = False) -> tuple[Any, Forward]:
    """(Artifact, Forward) of the artifact at `path` as a plain loader serves it: an adapter attached to its base
    through PEFT, a full model through `load_model_artifact` (the service replays through its own served form)."""
    from training.artifact.errors import BaseModelMismatch
    from training.artifact.golden import model_forward
    from training.artifact.loading import attach_adapter, load_base, load_model_artifact
    from training.artifact.store import load_artifact

    artifact = load_artifact(path)
    manifest = artifact.manifest
    if manifest.kind != "adapter":
        return artifact, model_forward(load_model_artifact(artifact, trust_remote_code=trust_remote_code).model)
    base = load_base(manifest.base.id, task=manifest.task, labels=manifest.labels, trust_remote_code=trust_remote_code)
    if base.sha256 != manifest.base.sha256:
        raise BaseModelMismatch(f"adapter {artifact.path} was built on {manifest.base.id} ({manifest.base.sha256[:12]}), "
                                f"which now resolves to another model ({base.sha256[:12]})",
                                "restore the base it was trained on")
    return artifact, model_forward(attach_adapter(base.model, artifact, "parity"))
