"""ONNX Runtime sequence classifier: one InferenceSession with the call shape of a transformers classifier.

`training.artifact.quantized` loads `onnx-*` classification artifacts as `OnnxSequenceClassifier`:
`model(input_ids=, attention_mask=, token_type_ids=)` (torch tensors or arrays, as a tokenizer
returns them) gives an output with `.logits` (a torch tensor), and `model.config` is the
artifact's transformers config (labels included). Inputs the graph takes but the caller left
out (`token_type_ids` of a single-text batch) are zeros, as in transformers.

    clf = OnnxSequenceClassifier(Path("artifacts/minilm-int8"))
    clf(**tokenizer(["my card has not arrived"], return_tensors="pt")).logits
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.artifact.errors import ArtifactInvalid
from training.artifact.onnx_lm import ONNX_FILE, _numpy, ort_session


class OnnxSequenceClassifier:
    """An encoder classifier in ONNX Runtime; returns logits like `AutoModelForSequenceClassification`."""

    main_input_name = "input_ids"

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        from transformers import AutoConfig

        self.config = AutoConfig.from_pretrained(str(model_dir))
        self.session = ort_session(Path(model_dir) / ONNX_FILE, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        if "input_ids" not in self.input_names or "logits" not in {o.name for o in self.session.get_outputs()}:
            raise ArtifactInvalid(f"{model_dir / ONNX_FILE} is not a sequence classifier (input_ids -> logits)",
                                  "re-export it with `tuneserve export --task classification`")

    def eval(self) -> "OnnxSequenceClassifier":
        return self

    def __call__(self, input_ids=None, attention_mask=None, **inputs: Any):
        import numpy as np
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutput

        ids = _numpy(input_ids, "int64")
        given = {"input_ids": ids, "attention_mask": np.ones_like(ids) if attention_mask is None
                 else _numpy(attention_mask, "int64"), **{k: _numpy(v, "int64") for k, v in inputs.items()
                                                          if v is not None and k in self.input_names}}
        feed = {name: given.get(name, np.zeros_like(ids)) for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))

    forward = __call__
