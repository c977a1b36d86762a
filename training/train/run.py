"""One training run end to end: data, base model, method, loop, artifacts (`tuneserve train`).

`train(cfg)` validates everything it can before touching weights (method, options, data,
target modules, 4-bit dims), trains with `TrainLoop`, and writes the artifact at
`cfg.output` (an adapter for PEFT methods, a full model for `full`), plus
`<output>-merged` when `merge=true`. With `refit=true` (or `refit=auto` when
`training.train.recipes.refit_decision` says so) the selected number of steps is trained again on
train + validation from a fresh base, and that model is written. Returns a `TrainOutcome` holding the in-memory model
so tests can compare it with the reloaded artifact. The pieces live in `training.train.parts`;
`distributed.backend=ray` hands the run to `training.train.ray_backend`.

    outcome = train(load_config(TrainConfig, "training/configs/lora-tiny.yaml", ["max_steps=20"]))
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from training.artifact import fingerprint_model_dir, resolve_base_dir
from training.artifact.errors import ArtifactInvalid, ConfigError
from training.artifact.paths import MINILM
from training.artifact.loading import load_tokenizer
from training.train.config import TrainConfig
from training.train.loop import LoopResult, TrainLoop, validated_rows
from training.train.methods import get_method
from training.train.parts import (
    TrainOutcome,
    encoder,
    load_training_model,
    pick_device,
    prepare,
    resume_point,
    test_metrics,
    write_outputs,
)
from training.train.recipes import AUTO, refit_decision
from training.train.reporting import RunReporter

__all__ = ["TrainOutcome", "encoder", "load_trained", "load_training_model", "pick_device", "train"]

def train(cfg: TrainConfig, on_eval: Callable[[int, dict[str, float]], bool | None] | None = None,
          refit_steps: int | None = None, selected: dict[str, float] | None = None) -> TrainOutcome:
    """Run `cfg` end to end; `on_eval(step, metrics)` is called after each mid-run evaluation (True ends the
    run there, as early stopping would).

    `refit_steps` skips selection: a fresh model trains on train + validation for that many steps
    (auto mode's winner, whose steps and `selected` validation metrics its search trial measured).
    With `distributed.backend=ray` the run happens on Ray Train workers (`training.train.ray_backend`)
    and the outcome holds no in-memory model (`model`, `tokenizer`, `collate` are None)."""
    if cfg.distributed.backend == "ray":
        from training.train.ray_backend import train_on_ray

        return train_on_ray(cfg, on_eval)
    resume_from = None if refit_steps else resume_point(cfg)
    require_profile_encoder(cfg)
    device = pick_device(cfg)
    prep = None if refit_steps else prepare(cfg, device)
    cfg = prep.cfg if prep else cfg
    started = time.perf_counter()
    with RunReporter(cfg) as reporter:
        if prep is None:
            reporter.begin(refit_steps)
            prep, loop, result = refit(cfg, LoopResult(refit_steps, {**(selected or {}), "best_step": refit_steps}), device)
        else:
            loop = TrainLoop(cfg, prep.model, prep.train_ex, prep.val_ex, prep.collate, device, prep.weights,
                             prep.identity, objective=prep.objective, adversary=prep.adversary)
            reporter.begin(loop.total_steps)
            result = loop.run(resume_from=resume_from, on_eval=on_eval, on_record=reporter.record)
            do_refit, why = refit_decision(cfg, result.metrics, validated_rows(cfg, len(prep.val_ex)))
            if cfg.refit == AUTO and cfg.progress:
                print(why, file=sys.stderr)
            cfg = cfg.model_copy(update={"refit": do_refit})
            if cfg.refit:
                prep, loop, result = refit(cfg, result, device)
        wall = time.perf_counter() - started
        result.metrics.update(test_metrics(cfg, loop, prep.splits, prep.enc))
        reporter.finish(result.metrics, result.steps)
    manifest, artifact, merged = write_outputs(cfg, prep, result, wall, device)
    return TrainOutcome(artifact=artifact, merged=merged, model=prep.model, tokenizer=prep.tokenizer, result=result,
                        manifest=manifest, examples=prep.val_ex or prep.train_ex, collate=prep.collate)


def require_profile_encoder(cfg: TrainConfig) -> None:
    """The drift profile embeds a sample with MiniLM after training: a missing encoder fails before any step."""
    if not (cfg.profile.enabled and cfg.profile.embed):
        return
    try:
        resolve_base_dir(MINILM)
    except ArtifactInvalid as exc:
        raise ConfigError(f"the artifact's drift profile embeds with {MINILM!r}: {exc.message}",
                          f"{exc.hint}, or train with profile.embed=false (no embedding drift for this artifact)") from None


def refit(cfg: TrainConfig, selected: LoopResult, device) -> tuple:
    """Retrain a fresh model on train + validation for the selected number of steps (the best
    evaluation's step, else the steps run); returns (prepared, loop, result) of the refit, whose
    metrics keep the selection run's validation numbers (the refit model has seen the validation rows)."""
    steps = int(selected.metrics.get("best_step", selected.steps))
    refit_cfg = cfg.model_copy(update={"refit": True, "max_steps": steps, "eval_every": None, "checkpoint_every": None,
                                       "early_stopping": cfg.early_stopping.model_copy(update={"enabled": False})})
    fresh = prepare(refit_cfg, device)
    loop = TrainLoop(refit_cfg, fresh.model, fresh.train_ex + fresh.val_ex, [], fresh.collate, device, fresh.weights,
                     fresh.identity, objective=fresh.objective, adversary=fresh.adversary)
    result = loop.run()
    result.metrics = {**selected.metrics, "train_loss": result.metrics["train_loss"], "refit_steps": result.steps}
    return fresh, loop, result


def load_trained(artifact_path: str | Path, device: str = "cpu"):
    """Load an artifact the way it was trained (a qlora adapter onto a 4-bit base) for evaluation.

    Returns (model, tokenizer, manifest).
    """
    import torch

    from training.artifact import load_artifact, read_manifest
    from training.artifact.loading import attach_adapter, load_model_artifact

    manifest = read_manifest(artifact_path)
    if manifest.kind != "adapter":
        artifact = load_artifact(artifact_path)
        loaded = load_model_artifact(artifact)
        return loaded.model.to(device), loaded.tokenizer, manifest
    options = manifest.hyperparameters.get("method_options", {})
    cfg = TrainConfig(base=manifest.base.id, task=manifest.task, method=manifest.method or "lora",
                      **{k: v for k, v in options.items() if k == "qlora"})
    method = get_method(cfg.method)
    model_dir = resolve_base_dir(cfg.base)
    artifact = load_artifact(artifact_path, expect_base_sha256=fingerprint_model_dir(model_dir))
    model = load_training_model(cfg, method, model_dir, manifest.labels, torch.device(device))
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return attach_adapter(model, artifact, "default"), tokenizer, manifest
