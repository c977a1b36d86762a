"""Scheme `qat-int8`: quantization-aware fine-tuning with torch.ao fake-quant, then int8.

Every Linear becomes a `torch.ao.nn.qat.Linear` with per-channel symmetric int8 weight
fake-quant and per-tensor uint8 activation fake-quant (what dynamic int8 does at run
time); the model is fine-tuned briefly on the calibration/training texts (LM loss, or
cross-entropy on labels for classifiers), then the learned weights are packed with the
observers' own scales into the same int8 safetensors format as `torch-int8`.

    tuneserve quantize artifacts/my-merged --scheme qat-int8 --calibration data/prepared qat.steps=100
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.artifact.quantized import set_submodule
from training.quantize.schemes import Scheme, register_scheme
from training.quantize.torch_int8 import save_int8


def qat_qconfig():
    import torch
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver, QConfig

    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    return QConfig(activation=activation, weight=weight)


def prepare_qat(model) -> list[str]:
    """Swap every Linear for a fake-quant QAT Linear in place; returns their names."""
    import torch
    from torch.ao.nn.qat import Linear as QATLinear

    names = [name for name, module in model.named_modules() if type(module) is torch.nn.Linear]
    qconfig = qat_qconfig()
    for name in names:
        module = model.get_submodule(name)
        module.qconfig = qconfig
        set_submodule(model, name, QATLinear.from_float(module))
    return names


def convert_qat(model, names: list[str]) -> dict[str, Any]:
    """Back to float Linear holding the trained weights; returns the observers' per-row scales."""
    import torch

    scales = {}
    for name in names:
        module = model.get_submodule(name)
        scale, _zero_point = module.weight_fake_quant.calculate_qparams()
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear.weight, linear.bias = module.weight, module.bias
        set_submodule(model, name, linear)
        scales[name] = scale.float()
    return scales


def _batches(source, calibration, settings):
    texts = calibration.texts
    labels = source.labels or []
    if source.task == "classification" and any(label not in labels for label in calibration.labels):
        raise DataError("QAT of a classifier needs labelled calibration rows whose labels the model knows",
                        f"give a prepared classification dataset with labels from {labels[:5]}…")
    rng = random.Random(0)
    while True:
        picks = [rng.randrange(len(texts)) for _ in range(settings.batch_size)]
        batch = source.tokenizer([texts[i] for i in picks], return_tensors="pt", padding=True, truncation=True,
                                 max_length=settings.max_length)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if source.task == "classification":
            import torch

            inputs["labels"] = torch.tensor([labels.index(calibration.labels[i]) for i in picks])
        else:
            inputs["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        yield inputs


def train_qat(source, calibration, settings) -> tuple[Any, dict[str, Any], dict[str, float]]:
    import torch

    from training.progress import progress_bar

    model = copy.deepcopy(source.model).train()
    names = prepare_qat(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    losses = []
    batches = _batches(source, calibration, settings)
    with progress_bar("QAT fine-tune", settings.steps) as advance:
        for _ in range(settings.steps):
            loss = model(**next(batches)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            advance(loss=losses[-1])
    model.eval()
    scales = convert_qat(model, names)
    window = max(1, len(losses) // 10)
    return model, scales, {"loss_first": sum(losses[:window]) / window, "loss_last": sum(losses[-window:]) / window}


@register_scheme(Scheme("qat-int8", "quantized-model", 8, "QAT fine-tune (torch.ao fake-quant), then int8",
                        needs_calibration=True, max_logit_diff=8.0, min_agreement=0.25))
def build_qat(source, config, out_dir: Path, calibration) -> dict[str, Any]:
    model, scales, losses = train_qat(source, calibration, config.qat)
    details = save_int8(model, out_dir, config.quantize_embeddings, scales, activations="per-tensor")
    return {**details, "qat": {**config.qat.model_dump(), **losses, "observers": "per-channel weight, per-tensor act"}}
