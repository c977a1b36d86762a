"""What requests run on: a `Target` (the base, possibly wrapped by PEFT, or a full-model artifact) and the
`AdapterEntry` of each loaded adapter version. The registry (registry.py) owns both.

    target.forward([slot_or_None, ...], input_ids=..., attention_mask=...)   # row i on adapter slot i
    target.device                                                               # where its weights are
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from training.artifact import Manifest
from training.artifact.loading import LoadedModel

from service.engine.device import model_device, on_device
from service.engine.multilora import MultiLora

# The bare base: its key among the targets, and PEFT's adapter name for "no adapter" in adapter_names.
BASE = "__base__"
BASE_ALIAS = "base"  # requests may always name the base model "base", whatever its id


@dataclass
class AdapterEntry:
    name: str
    slot: str
    path: Path
    manifest: Manifest
    pinned: bool = False
    loaded_at: float = field(default_factory=time.time)
    in_use: int = 0
    retired: bool = False
    parity: dict[str, Any] | None = None  # golden-set replay through the served form at load (None: no golden set)

    def info(self, base: str) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "base": base, "method": self.manifest.method or "",
                "task": self.manifest.task, "pinned": self.pinned, "loaded_at": int(self.loaded_at),
                "version": self.manifest.version, "parity": self.parity}


@dataclass
class Target:
    """A model object rows run on: the base (possibly wrapped by PEFT) or a full-model artifact."""

    key: str
    loaded: LoadedModel
    model: Any
    created: float = field(default_factory=time.time)
    multilora: MultiLora | None = None
    parity: dict[str, Any] | None = None  # a full model's golden-set replay at load

    @property
    def takes_adapters(self) -> bool:
        return hasattr(self.model, "peft_config")

    @cached_property
    def device(self):  # once: forward runs every decode step, and a placed model does not move
        return model_device(self.model)

    def forward(self, adapters: list[str | None], batched_lora: bool = True, **inputs):
        """Run the model with row i on adapter slot adapters[i] (None = bare base), inputs moved to its device."""
        inputs = on_device(inputs, self.device)
        if not self.takes_adapters:
            return self.model(**inputs)
        ml = self.multilora
        if not batched_lora or ml is None:
            return self.model(**inputs, adapter_names=[a or BASE for a in adapters])
        stacked = [a if a in ml.slots else None for a in adapters]
        if stacked == adapters:
            with ml.rows(adapters):
                return self.model(**inputs)
        # adapters PEFT serves (e.g. LoRA with a trained head) through adapter_names; stacked rows through the hooks
        with ml.rows(stacked, peft=True):
            return self.model(**inputs, adapter_names=[BASE if s or not a else a
                                                       for a, s in zip(adapters, stacked)])
