"""The training loop: schedule, accumulation, clipping, L1, class weights, eval, early stop, checkpoints.

`TrainLoop.run()` performs optimizer steps on pre-tokenized examples. The data order is a
function of (seed, epoch), so a checkpoint only needs the step number to know the data
position; together with the saved optimizer and RNG state, `--resume` continues exactly
where a killed run stopped. Evaluation reports `val_loss` (and `val_accuracy` for
classification; `val_reward_accuracy` and `val_reward_margin` for a preference objective, whose
loss `objective=` (`training.train.preference.PreferenceObjective`) replaces the next-token
loss). The best evaluation by `early_stopping.metric` is remembered (a tie on another metric,
e.g. equal accuracy on a small validation set, goes to the lower `val_loss`; its trainable
weights kept in memory and in checkpoints); at the end, when the last weights score worse than
it, the best weights are restored (`early_stopping.restore_best`, on by default), so the artifact
is the best validated model, not the last. `metrics` then carry `best_step` and `best_<metric>`.
Early stopping (`early_stopping.enabled`, `patience`) ends the run after that many evaluations
without improvement.

    loop = TrainLoop(cfg, model, train_examples, val_examples, collate, device)   # cfg.task picks the loss
    result = loop.run(resume_from=latest_checkpoint(cfg.checkpoint_path()))

With `debias: adversarial` the loop adds the adversary's loss (its gradient reversed into the
encoder, `training.train.debias`) to every micro-batch and reports its accuracy at the end.

One code path for one process and for N data-parallel workers: the loop trains through a
collective (`training.train.collective`: `Solo` or `TorchCollective`), which gives each rank its slice of every global
batch, syncs gradients once per optimizer step and averages the reported loss and metrics.
Where checkpoints go is a hook (`checkpoint=`): local files by default, Ray Train's storage on Ray.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError
from training.train.checkpoint import (
    restore_checkpoint,
    save_checkpoint,
    trainable_state,
)
from training.train.collective import Solo
from training.train.config import TrainConfig
from training.train.templates import IGNORE_INDEX
from training.train.variants import param_groups

# Test/debug throttle: seconds to sleep after each optimizer step (lets tests kill a run mid-way).
STEP_DELAY_ENV = "TUNESERVE_TRAIN_STEP_DELAY_S"
# group_by_length sorts windows of this many batches (randomness across windows, little padding within).
GROUP_WINDOW = 50


SaveCheckpoint = Callable[[int, Any, Any, dict[str, Any]], None]  # (step, model, optimizer, state) -> None


@dataclass
class LoopResult:
    steps: int
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    samples: int = 0
    tokens: int = 0  # real (non-pad) input tokens trained on
    train_seconds: float = 0.0
    resumed_from: int | None = None


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def validated_rows(cfg: TrainConfig, rows: int) -> int:
    """Validation rows one evaluation scores: all `rows`, or `eval_batches` chunks of 2 x batch_size."""
    return min(rows, cfg.eval_batches * 2 * cfg.batch_size) if cfg.eval_batches else rows


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


class TrainLoop:
    def __init__(self, cfg: TrainConfig, model: Any, train: list[dict], validation: list[dict],
                 collate: Callable[[list[dict]], dict], device: Any,
                 class_weights: list[float] | None = None, identity: dict[str, Any] | None = None,
                 collective: Solo | None = None, checkpoint: SaveCheckpoint | None = None,
                 objective: Any = None, adversary: Any = None) -> None:
        import torch

        self.cfg, self.model, self.train, self.validation = cfg, model, train, validation
        self.collate, self.device = collate, device
        self.identity = identity or {}
        self.objective = objective
        self.collective = collective or Solo()
        self.forward = self.collective.forward_model(model)
        self.save = checkpoint or self._save_local
        self.adversary = adversary  # training.train.debias.Adversary: adds its reversed-gradient loss
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights else None
        self.batches_per_epoch = math.ceil(len(train) / cfg.batch_size)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.batches_per_epoch / cfg.grad_accum))
        warm = cfg.optim.warmup_steps if cfg.optim.warmup_steps is not None else int(cfg.optim.warmup_ratio * self.total_steps)
        self.warmup = min(warm, self.total_steps)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the model has no trainable parameters", "check the method and its target modules")
        groups = param_groups(model.named_parameters(), cfg.lora.loraplus_lr_ratio)  # LoRA+: B matrices at lr x ratio
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                           weight_decay=cfg.optim.weight_decay)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self._precision())
        self._orders: dict[int, list[int]] = {}

    def _precision(self) -> str:
        if self.cfg.precision != "auto":
            return self.cfg.precision
        return "bf16" if self.device.type == "cuda" else "fp32"

    def _order(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(self.cfg.batch_order_seed() + epoch)
            order = torch.randperm(len(self.train), generator=gen).tolist()
            if self.cfg.group_by_length:
                order = self._grouped(order, gen)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def _grouped(self, order: list[int], gen: Any) -> list[int]:
        """Sort windows of GROUP_WINDOW batches by length, cut them into batches, shuffle the full
        batches (a short last batch stays last so every batch starts at a multiple of batch_size)."""
        import torch

        size = self.cfg.batch_size
        window = size * GROUP_WINDOW
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: -len(self.train[i]["input_ids"]))
            batches += [chunk[k:k + size] for k in range(0, len(chunk), size)]
        tail = [b for b in batches if len(b) < size]
        full = [b for b in batches if len(b) == size]
        full = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
        return [i for batch in full + tail for i in batch]

    def global_batch(self, index: int) -> list[dict]:
        """The rows of micro-batch `index` over all ranks (a function of seed, epoch and index)."""
        epoch, pos = divmod(index, self.batches_per_epoch)
        order = self._order(epoch)
        return [self.train[i] for i in order[pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size]]

    def micro_batch(self, index: int) -> list[dict]:
        """This rank's rows of global micro-batch `index` (all of them in one process)."""
        return self.collective.shard(self.global_batch(index))

    def _loss_weight(self, rows: list[dict]) -> float:
        """What the loss of `rows` averages over: predicted tokens (causal LM) or class weights."""
        if self.objective is not None:
            return float(len(rows))
        if self.cfg.task == "classification":
            weights = self.class_weights.tolist() if self.class_weights is not None else None
            return float(sum(weights[r["label"]] if weights else 1.0 for r in rows))
        return float(sum(sum(1 for t in r["labels"][1:] if t != IGNORE_INDEX) for r in rows))

    def _share(self, rows: list[dict], whole: list[dict]) -> float:
        """Scale of this rank's mean loss so that the ranks' average is the mean over the global batch
        (ranks see different numbers of tokens; a plain average of their means would not be)."""
        if self.collective.world == 1:
            return 1.0
        return self.collective.world * self._loss_weight(rows) / max(self._loss_weight(whole), 1e-9)

    def _forward_loss(self, batch: dict[str, Any], model: Any = None):
        import torch

        model = model if model is not None else self.forward
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            if self.objective is not None:
                loss, stats = self.objective.loss(model, batch)
                return loss.float(), stats, None
            if self.cfg.task == "classification":
                labels = batch.pop("labels")
                logits = model(**batch).logits.float()
                return torch.nn.functional.cross_entropy(logits, labels, weight=self.class_weights), logits, labels
            return model(**batch).loss.float(), None, None

    def evaluate(self, limit: bool = True) -> dict[str, float]:
        import torch

        if not self.validation:
            return {}
        self.model.eval()
        size = self.cfg.batch_size * 2
        chunks = [self.validation[i:i + size] for i in range(0, len(self.validation), size)]
        chunks = chunks[: self.cfg.eval_batches] if self.cfg.eval_batches and limit else chunks
        team = self.collective
        # Replicas split the chunks and add up; sharded weights need every rank in every forward.
        mine, model = (chunks, self.forward) if team.sharded else (chunks[team.rank::team.world], self.model)
        total, weight, correct, seen, margin = 0.0, 0, 0, 0, 0.0
        with torch.no_grad():
            for chunk in mine:
                loss, logits, labels = self._forward_loss(self.collate(chunk), model)
                total += float(loss) * len(chunk)
                weight += len(chunk)
                if self.objective is not None:
                    from training.train.preference import reward_sums

                    hits, gap, rows = reward_sums(logits)
                    correct, margin, seen = correct + hits, margin + gap, seen + rows
                elif logits is not None:
                    correct += int((logits.argmax(-1) == labels).sum())
                    seen += len(chunk)
        if not team.sharded:
            total, weight, correct, seen, margin = team.total([total, weight, correct, seen, margin])
        self.model.train()
        metrics = {"val_loss": total / max(1, weight)}
        if seen and self.objective is not None:
            metrics.update(val_reward_accuracy=correct / seen, val_reward_margin=margin / seen)
        elif seen:
            metrics["val_accuracy"] = correct / seen
        return metrics

    def _penalty(self):
        return self.cfg.optim.l1 * sum(p.abs().sum() for p in self.params)

    def _step(self, step: int) -> float:
        factor = lr_factor(step, self.total_steps, self.warmup, self.cfg.optim.scheduler)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.optim.lr * factor * group.get("lr_scale", 1.0)
        accumulated = 0.0
        accum = self.cfg.grad_accum
        self.step_tokens = 0
        for k in range(accum):
            with self.collective.no_sync(last=k == accum - 1):
                whole = self.global_batch(step * accum + k)
                rows = self.collective.shard(whole)
                self.step_tokens += sum(len(r["input_ids"]) for r in whole) if "input_ids" in whole[0] else 0
                batch = self.collate(rows)
                loss, _, _ = self._forward_loss(batch)
                loss = loss * self._share(rows, whole)
                if self.adversary is not None:
                    loss = loss + self.adversary.loss(batch.get("attention_mask"), [r["protected"] for r in rows],
                                                      step / self.total_steps)
                if self.cfg.optim.l1:
                    loss = loss + self._penalty()
                (loss / accum).backward()
            accumulated += float(loss.detach()) / accum
        if self.cfg.optim.grad_clip:
            self.collective.clip(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.adversary is not None:
            self.adversary.step()
        return self.collective.mean([accumulated])[0]

    @property
    def selection_metric(self) -> str:
        return self.cfg.early_stopping.metric

    def _judge(self, state: dict[str, Any], step: int, record: dict[str, float], final_eval: bool = False) -> bool:
        """Track the best evaluation (its weights kept in memory when `early_stopping.restore_best`);
        True when early stopping's patience ran out. A final evaluation returns whether it is the best."""
        es = self.cfg.early_stopping
        value = record.get(es.metric)
        if value is None:
            if not record or not (es.enabled or es.restore_best):
                return False
            raise ConfigError(f"early_stopping.metric {es.metric!r} is not reported",
                              f"use one of {sorted(k for k in record if k.startswith('val_'))}")
        sign = 1 if lower_is_better(es.metric) else -1
        loss = record.get("val_loss", math.inf)
        tie_won = (es.metric != "val_loss" and state["best"] is not None and abs(value - state["best"]) < 1e-12
                   and loss < state["best_loss"])  # accuracy ties on small validation sets: the lower loss wins
        if state["best"] is None or sign * (state["best"] - value) > es.min_delta or tie_won:
            state.update(best=value, best_step=step, best_loss=loss, bad_evals=0)
            self._best_weights = trainable_state(self.model) if es.restore_best and not final_eval else None
            return final_eval
        if final_eval:
            return False
        state["bad_evals"] += 1
        return es.enabled and state["bad_evals"] >= es.patience

    def _save_local(self, step: int, model: Any, optimizer: Any, extra: dict[str, Any]) -> None:
        save_checkpoint(self.cfg.checkpoint_path(), step, model, optimizer, extra, self.cfg.keep_checkpoints)

    def run(self, resume_from: Path | None = None,
            on_eval: Callable[[int, dict[str, float]], bool | None] | None = None,
            on_record: Callable[[dict[str, float]], None] | None = None) -> LoopResult:
        """Train to the end; `on_eval(step, record)` sees each mid-run evaluation (hyper-parameter
        search reports it to its pruner, which may stop the run by raising, or returns True to end it
        like early stopping: the best validated weights are kept); `on_record(record)`
        sees every step's record (loss, lr and any evaluation) for tracking."""
        import torch

        torch.manual_seed(self.cfg.batch_order_seed())
        self.model.train()
        state: dict[str, Any] = {"history": [], "best": None, "best_step": None, "best_loss": math.inf, "bad_evals": 0,
                                 "samples": 0, "tokens": 0, "train_seconds": 0.0}
        start, resumed = 0, None
        self._best_weights = None
        if resume_from is not None:
            saved = restore_checkpoint(resume_from, self.model, self.optimizer, self.identity)
            start = resumed = saved["step"]
            state.update({k: saved[k] for k in state if k in saved})
            self._best_weights = saved.get("best_weights")
        delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
        stopped = False
        step = start
        for step in range(start, self.total_steps):
            began = time.perf_counter()
            loss = self._step(step)
            state["train_seconds"] += time.perf_counter() - began
            state["samples"] += self.cfg.batch_size * self.cfg.grad_accum
            state["tokens"] += self.step_tokens
            record = {"step": step + 1, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"]}
            if self.cfg.eval_every and (step + 1) % self.cfg.eval_every == 0 and step + 1 < self.total_steps:
                record.update(self.evaluate())
                stopped = self._judge(state, step + 1, record)
                if on_eval is not None and on_eval(step + 1, record):
                    stopped = True  # the caller (a search's budget) ends the run as early stopping would
            state["history"].append(record)
            if on_record is not None:
                on_record(record)
            if self.cfg.checkpoint_every and (step + 1) % self.cfg.checkpoint_every == 0 and step + 1 < self.total_steps:
                extra = {**state, "identity": self.identity, "best_weights": self._best_weights}
                self.save(step + 1, self.model, self.optimizer, extra)
            if delay:
                time.sleep(delay)
            if stopped:
                break
        final = self.evaluate()
        last = min(step + 1, self.total_steps)
        final_is_best = state["best"] is None or self._judge(state, last, final, final_eval=True)
        if not final_is_best and self._best_weights is not None:
            self.model.load_state_dict(self._best_weights, strict=False)
            final = self.evaluate()
        tail = [r["loss"] for r in state["history"][-max(1, self.batches_per_epoch // 4):]]
        metrics = {"train_loss": sum(tail) / max(1, len(tail)), **final}
        if state["history"]:
            metrics["train_loss_first"] = state["history"][0]["loss"]
        if state["best_step"] is not None:
            metrics.update({"best_step": state["best_step"], f"best_{self.selection_metric}": state["best"]})
        if self.adversary is not None:
            metrics.update(self.adversary.metrics(self.model, self.validation, self.collate, self.cfg.batch_size * 2))
            self.adversary.close()
        return LoopResult(steps=last, metrics=metrics, history=state["history"],
                          stopped_early=stopped, samples=state["samples"], tokens=state["tokens"], train_seconds=state["train_seconds"],
                          resumed_from=resumed)
