"""The artifact contract: round trip, each corruption refused with its own message, atomic writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from training.artifact import (
    MANIFEST_NAME,
    ArtifactInvalid,
    ArtifactWriter,
    BaseModelMismatch,
    fingerprint_model_dir,
    load_artifact,
    read_manifest,
)

FIELDS = {"name": "demo", "kind": "adapter", "base": {"id": "tiny-llama", "sha256": "ab" * 32},
          "method": "lora", "hyperparameters": {"r": 8}}


def write_demo(dest: Path, **overrides) -> Path:
    with ArtifactWriter(dest, {**FIELDS, **overrides}) as writer:
        (writer.path / "adapter_model.safetensors").write_bytes(b"weights-" * 100)
        (writer.path / "adapter_config.json").write_text(json.dumps({"r": 8}))
        (writer.path / "sub").mkdir()
        (writer.path / "sub" / "tokenizer.json").write_text("{}")
    return dest


def test_round_trip(tmp_path):
    dest = write_demo(tmp_path / "a")
    art = load_artifact(dest, expect_base_sha256="ab" * 32, expect_kind="adapter")
    assert art.manifest.name == "demo"
    assert set(art.manifest.files) == {"adapter_model.safetensors", "adapter_config.json", "sub/tokenizer.json"}
    assert art.file("adapter_config.json").read_text() == '{"r": 8}'
    assert art.manifest.hyperparameters == {"r": 8}
    assert art.manifest.schema_version == 1 and art.manifest.created_at
    assert not list(tmp_path.glob("*.tmp-*")), "temp dir left behind"


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: (d / "adapter_model.safetensors").unlink(), "is missing"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"tampered"), "checksum mismatch"),
        (lambda d: (d / "sub" / "tokenizer.json").write_text('{"x": 1}'), "checksum mismatch for sub/tokenizer.json"),
        (lambda d: (d / "extra.safetensors").write_bytes(b"x"), "not listed in the manifest"),
        (lambda d: (d / MANIFEST_NAME).unlink(), "has no manifest.json"),
        (lambda d: (d / MANIFEST_NAME).write_text("{not json"), "not valid JSON"),
        (lambda d: _edit_manifest(d, schema_version=99), "unknown schema_version 99"),
        (lambda d: _edit_manifest(d, kind="banana"), "malformed manifest"),
        (lambda d: _edit_manifest(d, files={"../../etc/passwd": "0" * 64}), "escapes the artifact directory"),
        (lambda d: _edit_manifest(d, files={"pytorch_model.bin": "0" * 64}), "pickle-based"),
        (lambda d: (d / ".hidden.safetensors").write_bytes(b"x"), "not listed in the manifest"),
        (lambda d: (d / "sub" / ".cache").write_text("x"), "not listed in the manifest"),
        (lambda d: _swap_for_link(d / "sub" / "tokenizer.json"), "symbolic links"),
        (lambda d: (d / "outside").symlink_to(d.parent), "symbolic links"),
    ],
)
def test_corruption_refused(tmp_path, corrupt, message):
    dest = write_demo(tmp_path / "a")
    corrupt(dest)
    with pytest.raises(ArtifactInvalid, match=message) as info:
        load_artifact(dest)
    assert info.value.hint, "every refusal tells the user what to do"


def _edit_manifest(dest: Path, **changes) -> None:
    data = json.loads((dest / MANIFEST_NAME).read_text())
    data.update(changes)
    (dest / MANIFEST_NAME).write_text(json.dumps(data))


def test_base_mismatch_and_kind(tmp_path):
    dest = write_demo(tmp_path / "a")
    with pytest.raises(BaseModelMismatch, match="was built on base tiny-llama"):
        load_artifact(dest, expect_base_sha256="cd" * 32)
    with pytest.raises(ArtifactInvalid, match="is a adapter, expected quantized-model"):
        load_artifact(dest, expect_kind="quantized-model")


def test_missing_dir_and_existing_dest(tmp_path):
    with pytest.raises(ArtifactInvalid, match="does not exist"):
        load_artifact(tmp_path / "nope")
    write_demo(tmp_path / "a")
    with pytest.raises(ArtifactInvalid, match="already exists"):
        write_demo(tmp_path / "a")


def test_overwrite_replaces_atomically(tmp_path):
    write_demo(tmp_path / "a")
    with ArtifactWriter(tmp_path / "a", {**FIELDS, "name": "v2"}, overwrite=True) as writer:
        (writer.path / "adapter_model.safetensors").write_bytes(b"v2")
    assert load_artifact(tmp_path / "a").manifest.name == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_refuses_to_write_pickles(tmp_path):
    with pytest.raises(ArtifactInvalid, match="pickle-based"):
        with ArtifactWriter(tmp_path / "a", FIELDS) as writer:
            (writer.path / "model.bin").write_bytes(b"x")
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())


def test_exception_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "a", FIELDS) as writer:
            (writer.path / "adapter_model.safetensors").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _slow_writer(dest: str) -> None:
    with ArtifactWriter(dest, FIELDS) as writer:
        (writer.path / "adapter_model.safetensors").write_bytes(b"partial")
        Path(dest + ".started").write_text("1")
        time.sleep(60)


def test_crash_mid_write_leaves_no_manifest(tmp_path):
    """A process killed mid-write (SIGKILL, no cleanup) leaves no artifact and no manifest."""
    dest = str(tmp_path / "a")
    proc = multiprocessing.get_context("fork").Process(target=_slow_writer, args=(dest,))
    proc.start()
    deadline = time.time() + 20
    while not Path(dest + ".started").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert not Path(dest).exists()
    assert not list(tmp_path.rglob(MANIFEST_NAME))
    with pytest.raises(ArtifactInvalid, match="does not exist"):
        load_artifact(dest)


def test_read_manifest_is_cheap_listing(tmp_path):
    dest = write_demo(tmp_path / "a")
    (dest / "adapter_model.safetensors").write_bytes(b"changed")
    assert read_manifest(dest).name == "demo"  # no hashing on listing
    with pytest.raises(ArtifactInvalid):
        load_artifact(dest)


def test_fingerprint_model_dir_stable_and_sensitive(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "model.safetensors").write_bytes(b"w" * 1000)
    (model / "README.md").write_text("docs do not change identity")
    first = fingerprint_model_dir(model)
    assert fingerprint_model_dir(model) == first
    (model / "README.md").write_text("edited")
    assert fingerprint_model_dir(model) == first
    time.sleep(0.01)
    (model / "model.safetensors").write_bytes(b"v" * 1000)
    assert fingerprint_model_dir(model) != first


def _swap_for_link(path: Path) -> None:
    """Replace a listed file by a link to an identical copy outside the artifact (checksums still match)."""
    outside = path.parents[2] / "elsewhere.json"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)


def test_only_the_base_fingerprint_cache_may_be_added(tmp_path):
    dest = write_demo(tmp_path / "a")
    fingerprint_model_dir(dest)  # a merged model used as a training base gets this cache file
    assert (dest / ".tuneserve_fingerprint.json").is_file()
    load_artifact(dest)


def test_the_writer_refuses_symbolic_links(tmp_path):
    (tmp_path / "real.json").write_text("{}")
    with pytest.raises(ArtifactInvalid, match="symbolic links"):
        with ArtifactWriter(tmp_path / "a", FIELDS) as writer:
            (writer.path / "adapter_config.json").symlink_to(tmp_path / "real.json")
    assert not (tmp_path / "a").exists()


def test_wrapping_a_model_with_peft_raises_no_deprecation_warning_of_peft(tiny_base_dir):
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` on every wrap; train and serve wrap
    through `peft_model`, which hides that one FutureWarning (a user can do nothing about it) and no other."""
    import warnings

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from training.artifact.loading import peft_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
        warnings.warn("a FutureWarning of our own", FutureWarning)
    assert model.peft_config["default"].r == 2
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert [w for w in caught if "of our own" in str(w.message)]
