"""Adversarial debiasing (`debias: adversarial`): a gradient-reversal adversary on the pooled representation.

The adversary is a small MLP that reads the representation the classification head reads (the
head's input, pooled at the last real token for decoder models) and predicts a protected attribute:
one declared slice of the prepared dataset (`adversary.attribute`, e.g. `group` for the
`column:group` slice, see `training.data.slices`). Between the representation and the adversary
sits a gradient-reversal layer (Ganin & Lempitsky, 2015): identity forward, gradient times `-lambda`
backward. The adversary learns to predict the attribute; the encoder (LoRA or full weights) learns
to make that impossible while the task loss keeps it useful. `lambda` is `adversary.weight` times
the schedule at training progress p: `constant` (1), `linear` (p) or `dann` (2 / (1 + e^(-10 p)) - 1).

The adversary lives beside the model, with its own optimizer, and is never saved: the artifact is
the same kind of adapter/model as without debiasing. Its accuracy (on the last training batches and
on the validation split, against the majority-group share) goes into the run's metrics/manifest.
Single-process runs only; its state is not in checkpoints (a resumed run starts a fresh adversary).

    adversary = Adversary(model, ["a", "b"], cfg.adversary, hidden_size=256, device=device)
    loss = task_loss + adversary.loss(batch["attention_mask"], protected_ids, progress=step / total)
    ...; adversary.step(); adversary.metrics(model, val_examples, collate); adversary.close()
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch

from training.artifact.errors import ConfigError, DataError

IGNORE = -100
HEAD_NAMES = ("score", "classifier")
RECENT_STEPS = 20


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times -lambda backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    return GradientReversal.apply(x, lam)


def schedule_factor(kind: str, progress: float) -> float:
    p = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return p
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


def find_head(model: Any) -> torch.nn.Module:
    """The classification head (under PEFT: its modules-to-save wrapper), the shallowest `score`/`classifier`."""
    found = [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in HEAD_NAMES]
    if not found:
        raise ConfigError("debias=adversarial found no classification head (score/classifier) in the model",
                          "adversarial debiasing needs task=classification")
    return min(found, key=lambda item: item[0].count("."))[1]


def pool(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The head's input as one vector per row: as is (encoders pool themselves) or at the last real token."""
    if features.dim() == 2:
        return features
    if mask is None:
        return features[:, -1]
    mask = mask.to(features.device)
    offset = features.shape[1] - mask.shape[1]  # virtual tokens a prompt-learning method put in front
    last = offset + mask.sum(dim=1).clamp(min=1) - 1
    return features[torch.arange(features.shape[0], device=features.device), last]


def group_ids(rows: list[dict], key: str, groups: list[str] | None = None) -> tuple[list[int], list[str]]:
    """The protected attribute of each row as an index into `groups` (from these rows when not given)."""
    values = [(row.get("slices") or {}).get(key) for row in rows]
    if groups is None:
        groups = sorted({v for v in values if v is not None})
        if len(groups) < 2:
            raise DataError(f"debias: the protected attribute {key!r} has {len(groups)} group(s) in the train split",
                            "the adversary needs at least two groups; check the slice column of the data config")
    index = {g: i for i, g in enumerate(groups)}
    return [index.get(v, IGNORE) if v is not None else IGNORE for v in values], groups


class Adversary:
    """The adversary head, its optimizer and the forward hook that hands it the pooled representation."""

    def __init__(self, model: Any, groups: list[str], options: Any, hidden_size: int, device: Any,
                 key: str = "") -> None:
        self.options, self.groups, self.key = options, list(groups), key
        n_groups = len(groups)
        self.device = device
        hidden = options.hidden
        # a parameter-free LayerNorm first: hidden states of different bases differ widely in scale
        layers: list[torch.nn.Module] = [torch.nn.LayerNorm(hidden_size, elementwise_affine=False)]
        layers += ([torch.nn.Linear(hidden_size, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_groups)] if hidden
                   else [torch.nn.Linear(hidden_size, n_groups)])
        self.net = torch.nn.Sequential(*layers).to(device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=options.lr)
        self.features: torch.Tensor | None = None
        self.handle = find_head(model).register_forward_hook(self._capture)
        self.recent: deque[tuple[int, int]] = deque(maxlen=RECENT_STEPS)
        self.lam = 0.0

    def _capture(self, module: Any, args: tuple, output: Any) -> None:
        self.features = args[0] if args else None

    def logits(self, mask: torch.Tensor | None, lam: float) -> torch.Tensor:
        if self.features is None:
            raise ConfigError("debias: the classification head was not called", "use task=classification")
        pooled = pool(self.features.float(), mask)
        self.features = None
        return self.net(reverse_gradient(pooled, lam))

    def loss(self, mask: torch.Tensor | None, protected: list[int], progress: float) -> torch.Tensor:
        """The adversary's cross-entropy on the batch just forwarded (gradient reversed into the encoder)."""
        self.lam = self.options.weight * schedule_factor(self.options.schedule, progress)
        logits = self.logits(mask, self.lam)
        target = torch.tensor(protected, dtype=torch.long, device=logits.device)
        known = target != IGNORE
        self.recent.append((int((logits.argmax(-1) == target)[known].sum()), int(known.sum())))
        if not bool(known.any()):
            return logits.sum() * 0.0
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def accuracy(self, model: Any, examples: list[dict], collate: Any, batch_size: int) -> tuple[float, float]:
        """(adversary accuracy, majority-group share) on `examples` with the model in eval mode."""
        was_training = model.training
        model.eval()
        correct = seen = 0
        counts: dict[int, int] = {}
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                chunk = examples[i:i + batch_size]
                batch = collate(chunk)
                batch.pop("labels", None)
                model(**{k: v.to(self.device) for k, v in batch.items()})
                predicted = self.logits(batch.get("attention_mask"), 0.0).argmax(-1).tolist()
                for guess, ex in zip(predicted, chunk):
                    if ex["protected"] != IGNORE:
                        correct += int(guess == ex["protected"])
                        seen += 1
                        counts[ex["protected"]] = counts.get(ex["protected"], 0) + 1
        model.train(was_training)
        return correct / max(seen, 1), max(counts.values(), default=0) / max(seen, 1)

    def metrics(self, model: Any, examples: list[dict], collate: Any, batch_size: int) -> dict[str, float]:
        correct = sum(c for c, _ in self.recent)
        seen = sum(n for _, n in self.recent)
        out = {"adversary_train_accuracy": correct / max(seen, 1), "adversary_lambda": self.lam}
        if examples:
            out["adversary_accuracy"], out["adversary_majority"] = self.accuracy(model, examples, collate, batch_size)
        return out

    def close(self) -> None:
        self.handle.remove()


def attach_protected(examples: list[dict], ids: list[int]) -> list[dict]:
    for example, value in zip(examples, ids):
        example["protected"] = value
    return examples


def protected_key(cfg: Any, splits: Any) -> str:
    """The slice key the adversary predicts (checked against the data before any weights load)."""
    from training.data.slices import resolve_slice_key

    keys = sorted({k for row in splits.train for k in (row.get("slices") or {})})
    key = resolve_slice_key(cfg.adversary.attribute, keys)
    group_ids(splits.train, key)  # at least two groups
    return key


def build_adversary(cfg: Any, model: Any, splits: Any, train_ex: list[dict], val_ex: list[dict],
                    device: Any) -> Adversary | None:
    """The run's adversary (None without `debias: adversarial`); tags the examples with their group index."""
    if cfg.debias != "adversarial":
        return None
    key = protected_key(cfg, splits)
    train_ids, groups = group_ids(splits.train, key)
    attach_protected(train_ex, train_ids)
    attach_protected(val_ex, group_ids(splits.validation, key, groups)[0])
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden_size is None:
        raise ConfigError("debias: cannot tell the model's hidden size", "use a transformers classification base")
    return Adversary(model, groups, cfg.adversary, hidden_size, device, key)
