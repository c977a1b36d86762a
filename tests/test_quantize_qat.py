"""Quantization-aware training: fake-quant fine-tune → int8 artifact, measured against PTQ on the same texts."""

from __future__ import annotations

import json

import pytest
import torch
from quantize_support import PROMPTS

from training.artifact import load_artifact
from training.artifact.errors import DataError
from training.artifact.loading import load_model_artifact
from training.quantize import ParityConfig, QATConfig, QuantizeConfig, quantize
from training.quantize.parity import encode, logits_of, perplexity

FAST = ParityConfig(samples=2, new_tokens=4, latency_repeats=0)
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def task_texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("qat") / "task.jsonl"
    rows = [{"text": f"{p} the duke of york and the queen of france"} for p in PROMPTS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _task_perplexity(artifact_dir, texts) -> float:
    loaded = load_model_artifact(load_artifact(artifact_dir))
    batch = encode(loaded.tokenizer, texts, 64)
    return perplexity(logits_of(loaded.model, batch), batch)


def test_qat_int8_beats_ptq_on_its_task(tiny_base_dir, task_texts, tmp_path):
    qat_cfg = QuantizeConfig(scheme="qat-int8", calibration=task_texts, parity=FAST,
                             qat=QATConfig(steps=8, batch_size=4, max_length=32, learning_rate=2e-3))
    qat = quantize(str(tiny_base_dir), qat_cfg, tmp_path / "qat")
    ptq = quantize(str(tiny_base_dir), QuantizeConfig(scheme="torch-int8", calibration=task_texts, parity=FAST),
                   tmp_path / "ptq")
    details = qat.quantization
    assert details["qat"]["steps"] == 8 and details["qat"]["loss_last"] < details["qat"]["loss_first"]
    assert details["size_ratio"] == pytest.approx(ptq.quantization["size_ratio"], rel=0.01)
    loaded = load_model_artifact(load_artifact(tmp_path / "qat"))
    assert any("dynamic" in type(m).__module__ for m in loaded.model.modules())
    texts = [json.loads(line)["text"] for line in task_texts.read_text().splitlines()]
    assert _task_perplexity(tmp_path / "qat", texts) < _task_perplexity(tmp_path / "ptq", texts)


def test_qat_needs_training_data(tiny_base_dir, tmp_path):
    with pytest.raises(DataError, match="needs calibration data"):
        quantize(str(tiny_base_dir), QuantizeConfig(scheme="qat-int8"), tmp_path / "x")
