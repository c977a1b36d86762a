"""ONNX export (fp32, ORT int8 dynamic/static) for the causal LM with KV cache and the MiniLM classifier."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from quantize_support import PROMPTS, greedy_tokens, last_logits, teacher_forced_agreement


from training.artifact import load_artifact
from training.artifact.errors import DataError
from training.artifact.loading import load_base, load_model_artifact
from training.quantize import ParityConfig, QuantizeConfig, quantize

FAST = ParityConfig(samples=2, new_tokens=4, latency_repeats=0)
ONNX_FP32_TOLERANCE = 1e-3
INT8_LOGIT_TOLERANCE = 0.5
INT8_MIN_AGREEMENT = 0.75
ALLOWED_SUFFIXES = (".onnx", ".json", ".txt", ".jinja")  # tokenizer files may include a chat template
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def fp32_model(tiny_base_dir):
    return load_base(str(tiny_base_dir))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared text dataset (the shape `tuneserve data prepare` writes) for calibration."""
    root = tmp_path_factory.mktemp("prepared")
    rows = [{"text": f"{p} and then the {w} came home."} for p in PROMPTS for w in ("duke", "queen", "fool", "night")]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "dataset.json").write_text(json.dumps({"task": "text", "fingerprint": "calib-fp-123", "rows": {"train": 16}}))
    return root


def _assert_onnx_only(path):
    artifact = load_artifact(path, expect_kind="onnx-model")
    assert artifact.manifest.files and all(f.endswith(ALLOWED_SUFFIXES) for f in artifact.manifest.files)
    return artifact


@pytest.fixture(scope="module")
def onnx_fp32(tiny_base_dir, tmp_path_factory):
    """torch.onnx's standard-ops export (at opset 17, below the lean builder's minimum)."""
    out = tmp_path_factory.mktemp("onnx-fp32") / "tiny-onnx"
    quantize(str(tiny_base_dir), QuantizeConfig(scheme="onnx-fp32", opset=17, onnx_exporter="torch", parity=FAST),
             out, kinds=("onnx-model",))
    return out


@pytest.fixture(scope="module")
def onnx_lean(tiny_base_dir, tmp_path_factory):
    """tuneserve's lean Llama graph (the default for Llama-family decoders)."""
    out = tmp_path_factory.mktemp("onnx-lean") / "tiny-onnx-lean"
    quantize(str(tiny_base_dir), QuantizeConfig(scheme="onnx-fp32", parity=FAST), out, kinds=("onnx-model",))
    return out


@pytest.fixture(scope="module")
def onnx_int8(tiny_base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "tiny-onnx-int8"
    quantize(str(tiny_base_dir), QuantizeConfig(scheme="onnx-int8-dynamic", parity=FAST), out)
    return out


@pytest.mark.parametrize("exported, exporter, opset", [("onnx_fp32", "torch", 17), ("onnx_lean", "tuneserve", 18)])
def test_causal_lm_export_with_kv_cache_matches_torch(fp32_model, exported, exporter, opset, request):
    out = request.getfixturevalue(exported)
    artifact = _assert_onnx_only(out)
    assert artifact.manifest.quantization["exporter"] == exporter
    graph = onnx.load(str(out / "model.onnx"))
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    assert any(i.name.startswith("past_key_values") for i in graph.graph.input), "exported without KV cache"
    loaded = load_model_artifact(artifact)
    assert type(loaded.model).__name__ == "OnnxCausalLM"
    diff = (last_logits(loaded.model, loaded.tokenizer) - last_logits(fp32_model.model, fp32_model.tokenizer)).abs().max()
    assert diff <= ONNX_FP32_TOLERANCE
    assert torch.equal(greedy_tokens(loaded.model, loaded.tokenizer), greedy_tokens(fp32_model.model, fp32_model.tokenizer))
    parity = artifact.manifest.metrics["parity"]
    assert parity["max_abs_logit_diff"] <= ONNX_FP32_TOLERANCE and parity["greedy_token_agreement"] == 1.0


@pytest.mark.parametrize("exported", ["onnx_fp32", "onnx_lean"])
def test_onnx_lm_fills_a_dynamic_cache_step_by_step(fp32_model, exported, request):
    from transformers import DynamicCache

    model = load_model_artifact(load_artifact(request.getfixturevalue(exported))).model
    batch = fp32_model.tokenizer([PROMPTS[0]], return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    full = model(input_ids=ids, attention_mask=mask).logits
    with torch.inference_mode():
        expected = fp32_model.model(input_ids=ids, attention_mask=mask).logits
    assert (full - expected).abs().max() <= ONNX_FP32_TOLERANCE
    cache = DynamicCache()
    prefix = model(input_ids=ids[:, :-2], attention_mask=mask[:, :-2], past_key_values=cache, logits_to_keep=1)
    assert prefix.logits.shape[1] == 1 and cache.get_seq_length() == ids.shape[1] - 2
    for k in (2, 1):
        step = model(input_ids=ids[:, -k:ids.shape[1] - k + 1], attention_mask=mask[:, :ids.shape[1] - k + 1],
                     past_key_values=cache, logits_to_keep=1)
        assert (step.logits[:, -1] - full[:, -k]).abs().max() <= 1e-4
    assert cache.get_seq_length() == ids.shape[1]


def test_onnx_lm_generate_sampling_and_refusals(fp32_model, onnx_fp32):
    model = load_model_artifact(load_artifact(onnx_fp32)).model
    batch = fp32_model.tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    greedy = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert greedy.shape == (2, batch["input_ids"].shape[1] + 6)
    assert torch.equal(model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=True, top_k=1), greedy)
    sampled = [model.generate(**batch, max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=s)
               for s in (1, 1, 2)]
    assert torch.equal(sampled[0], sampled[1]) and not torch.equal(sampled[0], sampled[2])
    with pytest.raises(ValueError, match="does not support"):
        model.generate(**batch, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match="repetition_penalty"):
        model.generate(**batch, max_new_tokens=2, repetition_penalty=1.2)


@pytest.mark.parametrize("artifact", ["onnx_fp32", "onnx_lean", "onnx_int8"])
def test_service_serves_onnx_models_with_continuous_batching(tiny_base_dir, serve_keys, artifact, request):
    """The engine's DecodeBatch (prefill, KV merge of late joiners, trims) runs on OnnxCausalLM. fp32 rows
    are batch-invariant, so batched == single; int8 dynamic quantizes activations per batch, so rows may
    differ slightly with batch composition: there the check is that every request completes in full."""
    import asyncio

    from service.core import ServingCore
    from service.schemas import CompletionRequest
    from service.settings import load_settings
    from tests.service_fixtures import service_args

    path = request.getfixturevalue(artifact)
    core = ServingCore(load_settings(service_args(tiny_base_dir, path.parent, serve_keys[0], cache={"enabled": False})))
    core.start()
    try:
        def ask(prompt, tokens=8):
            return core.complete(CompletionRequest(model=path.name, prompt=prompt, temperature=0, max_tokens=tokens), None)

        single = [asyncio.run(ask(p)).choices[0].text for p in PROMPTS]

        async def together():  # a long request runs while the others join its batch step by step
            return await asyncio.gather(ask(PROMPTS[0], 24), *[ask(p) for p in PROMPTS * 2])

        long, *batched = asyncio.run(together())
        assert long.usage.completion_tokens == 24 and all(r.usage.completion_tokens == 8 for r in batched)
        if artifact != "onnx_int8":
            assert [r.choices[0].text for r in batched] == single * 2
            assert long.choices[0].text.startswith(single[0])
        assert all(single)
    finally:
        core.stop()


def test_int8_dynamic_export_is_smaller_and_close(tiny_base_dir, fp32_model, onnx_int8):
    out = onnx_int8
    artifact = _assert_onnx_only(out)
    q = artifact.manifest.quantization
    assert q["bits"] == 8 and q["quantized_embeddings"] >= 1 and q["activations"] == "dynamic"
    initializers = {i.name: i.data_type for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert initializers["model.embed_tokens.weight_int8"] == onnx.TensorProto.INT8
    assert "model.embed_tokens.weight" not in initializers, "the float embedding table is still in the graph"
    loaded = load_model_artifact(artifact)
    diff = (last_logits(loaded.model, loaded.tokenizer) - last_logits(fp32_model.model, fp32_model.tokenizer)).abs().max()
    assert diff <= INT8_LOGIT_TOLERANCE
    # teacher-forced, as the quantize parity gate judges: free-running greedy compares different prefixes
    # after the first near-tie flips (free-running gave 0.73 on a tiny base built here; teacher-forced passes)
    assert teacher_forced_agreement(loaded.model, fp32_model.model, fp32_model.tokenizer) >= INT8_MIN_AGREEMENT


def test_static_int8_needs_calibration_and_records_it(tiny_base_dir, prepared, tmp_path):
    with pytest.raises(DataError, match="needs calibration data"):
        quantize(str(tiny_base_dir), QuantizeConfig(scheme="onnx-int8-static"), tmp_path / "x")
    with pytest.raises(DataError, match="has no train.jsonl"):
        quantize(str(tiny_base_dir), QuantizeConfig(scheme="onnx-int8-static", calibration=tmp_path), tmp_path / "x")
    out = tmp_path / "static"
    manifest = quantize(str(tiny_base_dir), QuantizeConfig(scheme="onnx-int8-static", calibration=prepared, parity=FAST), out)
    assert manifest.quantization["calibration"]["fingerprint"] == "calib-fp-123"
    assert manifest.data.fingerprint == "calib-fp-123" and manifest.data.rows == 16
    loaded = load_model_artifact(_assert_onnx_only(out))
    assert greedy_tokens(loaded.model, loaded.tokenizer).shape == (len(PROMPTS), 12)
    assert manifest.metrics["parity"]["max_abs_logit_diff"] <= manifest.metrics["parity"]["tolerance"]["max_abs_logit_diff"]


@pytest.mark.slow  # exports the 90 MB MiniLM; ~15 s on an idle 2-core machine
def test_minilm_classifier_export_int8(tmp_path):
    labels = ["card_arrival", "card_linking", "exchange_rate"]
    out = tmp_path / "minilm-int8"
    manifest = quantize("all-minilm-l6-v2", QuantizeConfig(scheme="onnx-int8-dynamic", task="classification",
                                                           labels=labels, parity=FAST), out)
    assert manifest.task == "classification" and manifest.labels == labels
    assert manifest.quantization["size_ratio"] <= 0.3
    loaded = load_model_artifact(_assert_onnx_only(out))
    assert type(loaded.model).__name__ == "OnnxSequenceClassifier" and loaded.labels == labels
    batch = loaded.tokenizer(["my card has not arrived"], return_tensors="pt")
    logits = loaded.model(**batch).logits
    assert logits.shape == (1, 3)
    assert manifest.metrics["parity"]["label_agreement"] >= 0.75
