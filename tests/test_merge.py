"""`tuneserve merge`: adapters of one base combine into a new adapter artifact with lineage and a golden
set; a [1, 0] linear merge is the first adapter; TIES/DARE results load in the service registry; sources
on different bases are refused with a clear error."""

from __future__ import annotations

import json

import pytest
import torch
from service_fixtures import make_adapter

from training.artifact import ConfigError, load_artifact, sha256_file
from training.artifact.config import load_config
from training.artifact.golden import read_golden
from training.train.merge import MergeConfig, merge_adapters

torch.set_num_threads(2)
PROMPT = [[1, 15, 27, 99, 4, 63, 8, 12]]


@pytest.fixture(scope="module")
def sources(tiny_base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return [make_adapter(tiny_base_dir, root / name, name, seed=seed) for seed, name in enumerate(("alpha", "beta"))]


def _logits(tiny_base_dir, adapter_dir):
    from transformers import AutoModelForCausalLM

    from training.artifact.loading import attach_adapter

    base = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir))
    model = attach_adapter(base, load_artifact(adapter_dir), "probe")
    with torch.no_grad():
        return model(input_ids=torch.tensor(PROMPT)).logits


def _merge(sources, out, *overrides):
    cfg = load_config(MergeConfig, None, [f"sources={json.dumps([str(s) for s in sources])}", f"output={out}",
                                          *overrides])
    return merge_adapters(cfg)


def test_linear_merge_with_weights_one_zero_is_the_first_adapter(tiny_base_dir, sources, tmp_path):
    merged = _merge(sources, tmp_path / "first", "weights=[1,0]")
    expected, got = _logits(tiny_base_dir, sources[0]), _logits(tiny_base_dir, merged.path)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert not torch.allclose(got, _logits(tiny_base_dir, sources[1]), atol=1e-3)
    manifest = load_artifact(merged.path).manifest
    assert manifest.kind == "adapter" and manifest.name == "first"
    lineage = manifest.lineage
    assert lineage["combination"] == "linear" and lineage["weights"] == [1.0, 0.0]
    assert [(s["name"], s["version"]) for s in lineage["sources"]] == [("alpha", "1"), ("beta", "1")]
    assert [s["sha256"] for s in lineage["sources"]] == [sha256_file(s / "manifest.json") for s in sources]
    golden = read_golden(load_artifact(merged.path))
    assert golden is not None and golden.prompts and manifest.golden["prompts"] == len(golden.prompts)


@pytest.mark.parametrize("combination", ["ties", "dare_ties"])
def test_ties_and_dare_merges_load_in_the_service_registry(tiny_base_dir, sources, tmp_path, combination):
    from service.engine.registry import ModelRegistry
    from service.engine.settings import ModelSettings

    merged = _merge(sources, tmp_path / combination, f"combination={combination}", "density=0.5")
    assert load_artifact(merged.path).manifest.lineage["density"] == 0.5
    assert not torch.allclose(_logits(tiny_base_dir, merged.path), _logits(tiny_base_dir, sources[0]), atol=1e-3)
    registry = ModelRegistry(ModelSettings(base_model=str(tiny_base_dir)))
    registry.start()
    info = registry.load_adapter("merged", merged.path)
    assert info["parity"]["token_agreement"] == 1.0  # the golden set replays through the served form


def test_sources_on_different_bases_are_refused(tiny_base_dir, sources, tmp_path):
    other = make_adapter(tiny_base_dir, tmp_path / "other", "other", base={"id": "other-base", "sha256": "0" * 64})
    with pytest.raises(ConfigError, match="different bases") as info:
        _merge([sources[0], other], tmp_path / "bad")
    assert "same base" in info.value.hint
    assert not (tmp_path / "bad").exists()


def test_merge_config_needs_two_sources_and_one_weight_each(tmp_path):
    with pytest.raises(ConfigError, match="two or more"):
        load_config(MergeConfig, None, ["sources=[a]"])
    with pytest.raises(ConfigError, match="one per source"):
        load_config(MergeConfig, None, ["sources=[a,b]", "weights=[1]"])


def test_merge_command(tiny_base_dir, sources, tmp_path):
    from typer.testing import CliRunner

    from tuneserve.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["merge", *map(str, sources), "--out", str(out), "combination=cat"])
    assert result.exit_code == 0, result.output
    manifest = load_artifact(out).manifest
    assert manifest.lineage["combination"] == "cat" and manifest.lineage["weights"] == [0.5, 0.5]
