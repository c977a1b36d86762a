"""Resumable checkpoints without pickle: trainable weights, optimizer state and RNG in safetensors.

A checkpoint is `<checkpoint_dir>/step-<N>/` holding `trainable.safetensors` (the weights
that train), `optimizer.safetensors` (every tensor of the optimizer state, keyed
`<param index>.<name>`), `rng.safetensors` (torch CPU/CUDA generator states),
`best.safetensors` (the trainable weights of the best evaluation so far, when there is one) and
`state.json` (step, optimizer param groups and scalar state, Python RNG state, loss
history, early-stopping counters, and the run identity checked on resume). It is written
to a temp dir and renamed, so a kill leaves the previous checkpoint intact.

    save_checkpoint(dir, step, model, optimizer, extra)
    ckpt = latest_checkpoint(dir); state = restore_checkpoint(ckpt, model, optimizer)
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from training.artifact.errors import TrainingError

PREFIX = "step-"
BEST_FILE = "best.safetensors"


def trainable_state(model: Any) -> dict[str, Any]:
    return {name: p.detach().cpu().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, Any]:
    import torch

    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = st
    return out


def save_checkpoint(directory: Path, step: int, model: Any, optimizer: Any, extra: dict[str, Any], keep: int) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step}"
    tmp = directory / f".tmp-{PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    tensors, opt_json = _optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
    extra = dict(extra)
    best = extra.pop("best_weights", None)
    if best is not None:
        save_file(best, str(tmp / BEST_FILE))
    state = {"step": step, "optimizer": opt_json, "python_random": _jsonable(random.getstate()), **extra}
    (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def restore_checkpoint(path: Path, model: Any, optimizer: Any, identity: dict[str, Any]) -> dict[str, Any]:
    """Load weights, optimizer and RNG from a checkpoint into the live objects; return its state.json."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    saved = state.get("identity", {})
    changed = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
    if changed:
        raise TrainingError(f"checkpoint {path} belongs to a different run: {changed}",
                            "resume with the same base, method, data and batch settings, or remove the checkpoint dir")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(weights) ^ {n for n, p in params.items() if p.requires_grad})
    if missing:
        raise TrainingError(f"checkpoint {path} does not match the model's trainable weights ({missing[:3]})",
                            "resume with the same method and options")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt = state["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(opt["scalars"].items()):
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": opt["param_groups"]})
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tupled(state["python_random"]))
    if (path / BEST_FILE).is_file():
        state["best_weights"] = load_file(str(path / BEST_FILE))
    return state
