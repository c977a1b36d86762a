"""Where the engine's models run: the `device` setting (cpu, cuda, cuda:N, auto) resolved once per replica.

    device = resolve_device("auto")            # torch.device("cuda") when torch sees a GPU, else cpu
    place(loaded, device)                      # moves a torch model there (ONNX and other runtimes stay put)
    model_device(model)                        # the device a model's weights are on
    on_device(inputs, device)                  # a forward's tensor inputs moved there (caches move themselves)

Bookkeeping (attention masks, row indices, sampling) stays on the CPU: a decode step sends its token ids
and mask to the model's device and brings back only the chosen tokens (service/engine/decode.py), or the
logits when a row samples, wants logprobs or is constrained. A CPU box runs exactly as before.
"""

from __future__ import annotations

from typing import Any

import torch

from training.artifact.errors import ConfigError

CPU = torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """The torch device for a `device` setting; a CUDA device torch cannot see is a ConfigError."""
    if name == "cpu":
        return CPU
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda") if available else CPU
    device = torch.device(name)
    if not available:
        raise ConfigError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA device",
                          "set device=cpu (or auto), or install a CUDA build of torch on a GPU machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)",
                          f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or auto")
    return device


def model_device(model: Any) -> torch.device:
    """The device of a torch model's first parameter; CPU for anything else (ONNX sessions, stubs)."""
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return CPU


def place(loaded: Any, device: torch.device) -> None:
    """Move a loaded model's torch module to `device`; a model of another runtime stays on the CPU."""
    if device != CPU and isinstance(loaded.model, torch.nn.Module):
        loaded.model.to(device)


def on_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The forward's keyword inputs with every tensor on `device` (unchanged on the CPU)."""
    if device == CPU:
        return inputs
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
