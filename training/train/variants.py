"""LoRA variants that act outside PEFT's config: NEFTune noise, LoRA+ learning rates, PiSSA/OLoRA saving.

rsLoRA and the PiSSA/OLoRA initialisation are PEFT `LoraConfig` fields (set in
`training.train.methods`); what they need beyond that lives here:

- NEFTune (`lora.neftune_alpha`): a forward hook on the input embedding adds uniform noise of
  magnitude alpha / sqrt(L * d) (L tokens, d width) in training mode only; eval is untouched.
- LoRA+ (`lora.loraplus_lr_ratio`): the B matrices form their own optimizer group whose lr is the
  scheduled lr times the ratio (`param_groups` gives each group an `lr_scale`).
- PiSSA/OLoRA move the base weights: the adapter as trained only fits that residual base. The initial
  adapter is kept in a temp dir at wrap time and PEFT converts the trained adapter at save time into a
  plain LoRA adapter (rank 2r) for the original base, which is what serving loads.

    add_neftune(model, alpha=5.0)
    groups = param_groups(model.named_parameters(), ratio=16.0)   # [{params, lr_scale}, ...]
    remember_initial_adapter(peft_model); save_adapter(peft_model, path)
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

MUTATING_INITS = ("pissa", "olora")
INITIAL_ADAPTER_ATTR = "_tuneserve_initial_adapter"
B_MARKERS = ("lora_B", "lora_embedding_B")


def peft_init(init: str) -> Any:
    """`lora.init` as PEFT's `init_lora_weights`."""
    return True if init == "default" else init


def add_neftune(model: Any, alpha: float):
    """Add NEFTune noise to the input embeddings of `model` while it trains; returns the hook handle."""
    import torch

    def noisy(module, inputs, output):
        if not module.training:
            return output
        magnitude = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.empty_like(output).uniform_(-magnitude, magnitude)

    return model.get_input_embeddings().register_forward_hook(noisy)


def param_groups(named: Any, ratio: float | None) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups: one with lr_scale 1, plus LoRA+'s B group at `ratio`."""
    trainable = [(name, p) for name, p in named if p.requires_grad]
    if not ratio:
        return [{"params": [p for _, p in trainable], "lr_scale": 1.0}]
    b_side = [p for name, p in trainable if any(marker in name for marker in B_MARKERS)]
    rest = [p for name, p in trainable if not any(marker in name for marker in B_MARKERS)]
    groups = [{"params": rest, "lr_scale": 1.0}] if rest else []
    return groups + ([{"params": b_side, "lr_scale": float(ratio)}] if b_side else [])


def remember_initial_adapter(model: Any, adapter: str = "default") -> None:
    """Save the freshly initialised PiSSA/OLoRA adapter so `save_adapter` can convert the trained one."""
    config = model.peft_config[adapter]
    directory = Path(tempfile.mkdtemp(prefix="tuneserve-init-")) / "initial"
    chosen, config.init_lora_weights = config.init_lora_weights, True  # PEFT's required form of the initial copy
    try:
        model.save_pretrained(str(directory), safe_serialization=True)
    finally:
        config.init_lora_weights = chosen
    setattr(model, INITIAL_ADAPTER_ATTR, directory)
    weakref.finalize(model, shutil.rmtree, directory.parent, ignore_errors=True)


def save_adapter(model: Any, path: Path) -> None:
    """`save_pretrained`, converting a PiSSA/OLoRA adapter into one for the unmodified base."""
    initial = getattr(model, INITIAL_ADAPTER_ATTR, None)
    if initial is None:
        model.save_pretrained(str(path), safe_serialization=True)
        return
    with warnings.catch_warnings():  # PEFT warns about the very conversion it is doing here
        warnings.filterwarnings("ignore", message=".*changes the base weights of the model.*")
        model.save_pretrained(str(path), safe_serialization=True, path_initial_model_for_weight_conversion=str(initial))
