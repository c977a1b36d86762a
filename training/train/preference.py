"""Preference objectives (DPO, ORPO, KTO) inside tuneserve's own training loop (`objective: dpo|orpo|kto`).

Why not TRL's trainers: TRL 1.16 installs against transformers 5.25 / peft 0.21 (checked with
`pip install --dry-run trl`), but its `DPOTrainer`/`ORPOTrainer`/`KTOTrainer` are `transformers.Trainer`
subclasses with their own loop, data collation (`datasets`), checkpoint format and distributed
launcher. Using them would bypass everything `training.train.loop.TrainLoop` gives every run
(exact resume from checkpoints, best-weights selection on validation, early stopping, the Ray
collective, progress/tracking, the artifact writer with golden set and reference profile). The
losses themselves are a few lines over per-sequence log-probabilities, so they live here and the
loop calls `PreferenceObjective.loss` instead of the next-token loss. Nothing new to install.

Reference policy (`preference.reference`):
- `adapter-disabled` (auto for a fresh PEFT adapter): the reference is the same model with the
  adapter switched off (peft `disable_adapter()`), computed under `no_grad` in each step: no second
  copy of the base in memory. With a zero-initialised LoRA this is exactly the starting policy.
- `precomputed` (auto for full fine-tuning, `init_adapter` runs, PiSSA/OLoRA, FSDP): the starting
  weights' log-probabilities of every train/validation/test sequence are computed once before the
  first step and kept as floats (keyed by token ids); a frozen copy of a full model would double
  its memory for numbers that never change.

Losses (per pair/row, averaged over the batch; logp = summed response-token log-probabilities):
- DPO: -log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))
- ORPO: NLL_c + lambda * -log sigmoid(log odds_c - log odds_r), odds = p / (1 - p) with p the
  per-token mean probability exp(logp / n) (no reference model), NLL_c the chosen per-token mean NLL
- KTO: w_d * (1 - sigmoid(beta * (r - z))) for desirable, w_u * (1 - sigmoid(beta * (z - r))) for
  undesirable rows, r = logp - ref, z = the batch mean of r (detached, >= 0): an estimate of the
  KL term from the batch's own completions (the paper uses mismatched pairs; this saves a forward).

Implicit reward (reported as val_/test_reward_accuracy and reward_margin): beta * (logp - ref);
ORPO, which has no reference, ranks by beta * mean token logp.

    objective = PreferenceObjective(cfg, tokenizer, template, model)
    examples = objective.encode(rows); batch = objective.collate(examples)
    loss, stats = objective.loss(model, batch)
"""

from __future__ import annotations

from typing import Any

from training.artifact.errors import ConfigError, DataError
from training.train.templates import IGNORE_INDEX, PromptTemplate, pad_causal

PAIR_OBJECTIVES = ("dpo", "orpo")


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair DPO loss and the implicit rewards (chosen, rejected)."""
    import torch.nn.functional as F

    chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def log_odds(sum_logp, tokens):
    """log(p / (1 - p)) of the per-token mean probability p = exp(sum_logp / tokens)."""
    import torch

    mean = sum_logp / tokens.clamp(min=1)
    return mean - torch.log1p(-torch.exp(mean).clamp(max=1 - 1e-6))


def orpo_loss(chosen_sum, chosen_tokens, rejected_sum, rejected_tokens, lam: float, beta: float):
    """Per-pair ORPO loss (chosen NLL per token + lambda * odds-ratio loss) and rewards beta * mean logp."""
    import torch.nn.functional as F

    nll = -chosen_sum / chosen_tokens.clamp(min=1)
    ratio = F.logsigmoid(log_odds(chosen_sum, chosen_tokens) - log_odds(rejected_sum, rejected_tokens))
    rewards = (beta * chosen_sum / chosen_tokens.clamp(min=1), beta * rejected_sum / rejected_tokens.clamp(min=1))
    return nll - lam * ratio, rewards[0].detach(), rewards[1].detach()


def kto_loss(policy, reference, desirable, beta: float, kl, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """Per-row KTO loss and the implicit rewards beta * (logp - ref); `kl` is the reference point z."""
    import torch

    ratio = policy - reference
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable.bool(), good, bad), (beta * ratio).detach()


def sequence_logprobs(model: Any, batch: dict[str, Any]):
    """(summed log-probability of the labelled tokens, their count) per row of a padded causal batch."""
    ids, labels = batch["input_ids"], batch["labels"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -ids.shape[1]:-1].float()  # prompt-learning methods prepend virtual tokens
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (picked * mask).sum(-1), mask.sum(-1)


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)  # DDP keeps the PeftModel as .module


def pick_reference(cfg: Any) -> str:
    """`preference.reference` with `auto` resolved (see the module docstring)."""
    from training.train.variants import MUTATING_INITS

    chosen = cfg.preference.reference
    if cfg.objective == "orpo":
        return "none"
    fresh_peft = cfg.method != "full" and not cfg.init_adapter and cfg.lora.init not in MUTATING_INITS
    if chosen == "auto":
        return "adapter-disabled" if fresh_peft and cfg.distributed.strategy != "fsdp" else "precomputed"
    if chosen == "adapter-disabled" and cfg.distributed.strategy == "fsdp":
        raise ConfigError("preference.reference=adapter-disabled cannot run on FSDP-sharded weights",
                          "use preference.reference=precomputed")
    return chosen


def validate_rows(rows: list[dict[str, Any]], objective: str, where: str) -> list[dict[str, Any]]:
    """Rows in the objective's shape with clear errors: pairs for dpo/orpo, pairs or labelled rows for kto."""
    out = []
    for i, row in enumerate(rows):
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{where} row {i} has no prompt (has {keys})",
                            "preference rows are {prompt, chosen, rejected} (KTO: {prompt, completion, label}); "
                            "prepare them with `tuneserve data prepare` task=preference (or task=kto)")
        if "chosen" in row or "rejected" in row:
            chosen, rejected = row.get("chosen"), row.get("rejected")
            if not (isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() and rejected.strip()):
                raise DataError(f"{where} row {i} needs non-empty text in both chosen and rejected",
                                "drop incomplete pairs (tuneserve data prepare task=preference does it)")
            if chosen.strip() == rejected.strip():
                raise DataError(f"{where} row {i}: chosen and rejected are the same text",
                                "a pair must prefer one answer over a different one")
            pair = {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}
            out += pair_to_kto(pair) if objective == "kto" else [pair]
        elif objective == "kto" and "completion" in row and isinstance(row.get("label"), bool):
            out.append({"prompt": row["prompt"], "completion": str(row["completion"]), "label": row["label"]})
        else:
            need = ("{prompt, chosen, rejected} or {prompt, completion, label: true|false}" if objective == "kto"
                    else "{prompt, chosen, rejected}")
            raise DataError(f"{where} row {i} is not a preference row for objective {objective} (has {keys})",
                            f"objective {objective} reads {need} rows; prepare them with "
                            "`tuneserve data prepare` task=preference (or task=kto)")
    return out


def pair_to_kto(pair: dict[str, str]) -> list[dict[str, Any]]:
    return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]


class PreferenceObjective:
    """Encoding, collation, reference log-probabilities and the loss of one preference objective."""

    def __init__(self, cfg: Any, tokenizer: Any, template: PromptTemplate) -> None:
        self.cfg, self.tokenizer, self.template = cfg, tokenizer, template
        self.kind = cfg.objective
        self.options = cfg.preference
        self.reference = pick_reference(cfg)
        self.cache: dict[tuple[int, ...], float] = {}  # token ids -> reference logp (precomputed mode)

    # -- rows -> examples -> batches ------------------------------------------------------------
    def _encode_one(self, prompt: str, answer: str) -> dict[str, list[int]]:
        row = {"instruction": prompt, "input": "", "output": answer}
        return self.template.encode(row, self.tokenizer, self.cfg.data.max_length)

    def encode(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            if self.kind == "kto":
                seqs = [self._encode_one(row["prompt"], row["completion"])]
                out.append({"seqs": seqs, "label": bool(row["label"])})
            else:
                seqs = [self._encode_one(row["prompt"], row["chosen"]), self._encode_one(row["prompt"], row["rejected"])]
                out.append({"seqs": seqs})
            out[-1]["input_ids"] = seqs[0]["input_ids"]  # length for group_by_length
            refs = [self.cache.get(tuple(s["input_ids"])) for s in seqs]
            if None not in refs:
                out[-1]["ref"] = refs
        return out

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """One padded causal batch: pairs as [chosen..., rejected...], KTO rows as they come."""
        import torch

        width = len(examples[0]["seqs"])
        seqs = [e["seqs"][k] for k in range(width) for e in examples]
        batch = pad_causal(seqs, self.tokenizer.pad_token_id)
        if "ref" in examples[0]:
            batch["ref"] = torch.tensor([e["ref"][k] for k in range(width) for e in examples], dtype=torch.float32)
        if self.kind == "kto":
            batch["desirable"] = torch.tensor([e["label"] for e in examples], dtype=torch.bool)
        return batch

    # -- reference ------------------------------------------------------------------------------
    def precompute(self, model: Any, example_sets: list[list[dict[str, Any]]], device: Any, batch_size: int,
                   rows_sets: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Fill the reference cache with the current (starting) weights; returns the sets re-encoded with it."""
        import torch

        if self.reference != "precomputed":
            return example_sets[:len(rows_sets)]
        seqs = {tuple(s["input_ids"]): s for examples in example_sets for e in examples for s in e["seqs"]}
        todo = [s for key, s in seqs.items() if key not in self.cache]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                batch = {k: v.to(device) for k, v in pad_causal(chunk, self.tokenizer.pad_token_id).items()}
                logp, _ = sequence_logprobs(model, batch)
                self.cache.update({tuple(s["input_ids"]): float(v) for s, v in zip(chunk, logp.tolist())})
        model.train(was_training)
        return [self.encode(rows) for rows in rows_sets]

    def _reference_logprobs(self, model: Any, batch: dict[str, Any]):
        import torch

        if self.reference == "precomputed":
            if "ref" not in batch:
                raise ConfigError("reference log-probabilities were not precomputed for these rows",
                                  "encode rows after PreferenceObjective.precompute")
            return batch["ref"]
        peft_model = unwrap(model)
        if not hasattr(peft_model, "disable_adapter"):
            raise ConfigError("preference.reference=adapter-disabled needs a PEFT model",
                              "use preference.reference=precomputed for full fine-tuning")
        with torch.no_grad(), peft_model.disable_adapter():
            return sequence_logprobs(peft_model, batch)[0]

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, model: Any, batch: dict[str, Any]):
        """(mean loss, stats) where stats holds per-row tensors: chosen/rejected rewards or reward/desirable."""
        opts = self.options
        logp, tokens = sequence_logprobs(model, batch)
        if self.kind == "kto":
            ref = self._reference_logprobs(model, batch)
            kl = (logp - ref).detach().mean().clamp(min=0)
            losses, reward = kto_loss(logp, ref, batch["desirable"], opts.beta, kl, opts.kto_desirable_weight,
                                      opts.kto_undesirable_weight)
            return losses.mean(), {"reward": reward, "desirable": batch["desirable"]}
        n = logp.shape[0] // 2
        if self.kind == "orpo":
            losses, chosen, rejected = orpo_loss(logp[:n], tokens[:n], logp[n:], tokens[n:], opts.orpo_lambda, opts.beta)
        else:
            ref = self._reference_logprobs(model, batch)
            losses, chosen, rejected = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], opts.beta)
        return losses.mean(), {"chosen": chosen, "rejected": rejected}


def reward_sums(stats: dict[str, Any]) -> list[float]:
    """[correct, margin sum, rows] of one batch's stats (KTO: a reward's sign agreeing with its label)."""
    if "reward" in stats:
        reward, desirable = stats["reward"], stats["desirable"]
        correct = ((reward > 0) == desirable).sum()
        margin = (reward * (desirable.float() * 2 - 1)).sum()
        return [float(correct), float(margin), float(reward.numel())]
    diff = stats["chosen"] - stats["rejected"]
    return [float((diff > 0).sum()), float(diff.sum()), float(diff.numel())]
