"""Artifacts written by transformers 4.x load on the current transformers and compute what they did then.

`tests/fixtures/transformers4/` holds a micro Llama base, a LoRA adapter trained on it and a
torch-int8 artifact, all written with transformers 4.57 by `tests/fixtures/make_transformers4.py`,
plus the logits and greedy tokens they produced at writing time (`expected.json`). Artifacts
written by the current major version are covered by every other test that builds one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training.artifact import load_artifact
from training.artifact.loading import attach_adapter, load_base, load_model_artifact

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "transformers4"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """A copy of the fixtures (loading caches a fingerprint beside the base; the repo stays clean)."""
    root = tmp_path_factory.mktemp("transformers4") / "artifacts"
    shutil.copytree(FIXTURES, root)
    return root


def outputs(model, tokenizer) -> tuple[torch.Tensor, list[list[int]]]:
    batch = tokenizer(EXPECTED["prompts"], return_tensors="pt", padding=True)
    new = EXPECTED["new_tokens"]
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -1].float()
        tokens = model.generate(**batch, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                                pad_token_id=tokenizer.pad_token_id)
    return logits, tokens[:, batch["input_ids"].shape[1]:].tolist()


def assert_same(model, tokenizer, key: str) -> None:
    logits, tokens = outputs(model, tokenizer)
    assert (logits - torch.tensor(EXPECTED[key]["last_logits"])).abs().max() <= LOGIT_TOLERANCE
    assert tokens == EXPECTED[key]["greedy_tokens"]


def test_fixtures_were_written_by_transformers_4():
    assert EXPECTED["versions"]["transformers"].startswith("4.")
    config = json.loads((FIXTURES / "micro-llama" / "config.json").read_text(encoding="utf-8"))
    assert config["transformers_version"].startswith("4.")


def test_base_adapter_and_int8_from_transformers_4_compute_as_recorded(artifacts):
    base = load_base(str(artifacts / "micro-llama"))
    assert base.tokenizer(EXPECTED["prompts"][0])["input_ids"][0] == base.tokenizer.bos_token_id
    assert_same(base.model, base.tokenizer, "base")
    quantized = load_model_artifact(load_artifact(artifacts / "micro-int8"))
    assert_same(quantized.model, quantized.tokenizer, "int8")
    adapter = load_artifact(artifacts / "micro-lora", expect_base_sha256=base.sha256, expect_kind="adapter")
    assert_same(attach_adapter(base.model, adapter, "micro"), base.tokenizer, "adapter")


def test_service_serves_transformers_4_artifacts(artifacts, serve_keys):
    import asyncio

    from service.core import ServingCore
    from service.schemas import CompletionRequest
    from service.settings import load_settings
    from tests.service_fixtures import service_args

    base_dir = artifacts / "micro-llama"
    settings = load_settings(service_args(base_dir, artifacts, serve_keys[0], cache={"enabled": False}))
    core = ServingCore(settings)
    core.start()
    try:
        tokenizer = load_base(str(base_dir)).tokenizer
        for model, key in [("micro-lora", "adapter"), ("micro-int8", "int8")]:
            tokens = EXPECTED[key]["greedy_tokens"][0]
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            request = CompletionRequest(model=model, prompt=EXPECTED["prompts"][0], temperature=0,
                                        max_tokens=EXPECTED["new_tokens"])
            answer = asyncio.run(core.complete(request, None))
            assert answer.choices[0].text == tokenizer.decode(tokens, skip_special_tokens=True)
    finally:
        core.stop()
