"""The encoder part of an adapter trained on an encoder base, to serve that encoder for embeddings.

    config, state = encoder_part(peft_config, adapter_state, bare_encoder)   # attach_adapter(..., encoder_only=True)

A classification adapter on an encoder (LoRA on MiniLM, `task: classification`) adapts the encoder
layers and trains a head. Served for embeddings, the base is the bare encoder (`AutoModel`, as
sentence-transformers loads it), so the adapter's weights are renamed from the classifier's layout
(`base_model.model.<prefix>.encoder...`, e.g. prefix `bert`) to the bare encoder's
(`base_model.model.encoder...`) and the head (PEFT's `modules_to_save`) is dropped: the embedding is
the fine-tuned encoder's mean-pooled hidden states. Adapters saved on a bare encoder pass unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from training.artifact.errors import ArtifactInvalid

PEFT_ROOT = "base_model.model."


def encoder_part(config: Any, state: dict[str, Any], model: Any) -> tuple[Any, dict[str, Any]]:
    """(a feature-extraction copy of `config`, the encoder's weights of `state`) for the bare encoder `model`."""
    bare = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = f"{PEFT_ROOT}{bare.base_model_prefix}."
    modules = {name for name, _ in bare.named_modules()}
    kept: dict[str, Any] = {}
    for key, value in state.items():
        name = PEFT_ROOT + key[len(prefix):] if key.startswith(prefix) else key
        owner = name[len(PEFT_ROOT):].rsplit(".", 2)[0] if name.startswith(PEFT_ROOT) else ""
        if "modules_to_save" not in name and owner in modules:  # a layer of the encoder, not the head
            kept[name] = value
    if not kept:
        raise ArtifactInvalid("the adapter holds no weights for the encoder's layers",
                              "serve LoRA-style adapters trained on this encoder for embeddings")
    config = copy.deepcopy(config)
    config.task_type = "FEATURE_EXTRACTION"
    config.modules_to_save = None
    return config, kept
