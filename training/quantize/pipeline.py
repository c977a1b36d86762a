"""Quantize or export a model into an artifact: resolve the source, build, reload, measure, commit.

The artifact is reloaded through the same loader the service uses before the manifest
is written, so a manifest with parity numbers proves the artifact loads. The golden set
(`training.artifact.golden`) is the source artifact's own (the training-time model's outputs),
or, for a source without one (a base model, an older artifact), the float source's outputs on
the calibration texts; its replay through the reloaded artifact is `metrics.golden_parity`.

    manifest = quantize("artifacts/my-adapter", QuantizeConfig(scheme="torch-int8", merge=True), "artifacts/my-int8")
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from training.artifact import Artifact, ArtifactWriter, Manifest
from training.artifact.checksums import hash_files, list_files
from training.artifact.errors import ConfigError
from training.artifact.golden import build_golden_set, model_forward, save_golden
from training.artifact.loading import LoadedModel, load_model_artifact
from training.artifact.replay import headline, replay
from training.quantize.calibration import DEFAULT_PROMPTS, Calibration, load_calibration
from training.quantize.config import QuantizeConfig
from training.quantize.parity import compare, judge, weights_size
from training.quantize.schemes import Scheme, get_scheme
from training.quantize.source import SourceModel, resolve_source


def save_support_files(source: SourceModel, out_dir: Path) -> None:
    """config.json, generation config and tokenizer files next to the weights."""
    source.model.config.save_pretrained(out_dir)
    generation = getattr(source.model, "generation_config", None)
    if generation is not None and source.task == "causal-lm":
        generation.save_pretrained(out_dir)
    source.tokenizer.save_pretrained(out_dir)


def reload(path: Path, fields: dict[str, Any]) -> LoadedModel:
    """Load a not-yet-committed artifact directory through the service's loader."""
    files = [p for p in list_files(path) if p != "manifest.json"]
    manifest = Manifest.model_validate({**fields, "files": hash_files(path, files)})
    return load_model_artifact(Artifact(path=path, manifest=manifest))


def _texts(calibration: Calibration | None) -> list[str]:
    return calibration.texts if calibration is not None else list(DEFAULT_PROMPTS)


def _calibration(config: QuantizeConfig, scheme: Scheme) -> Calibration | None:
    if config.calibration is None and not scheme.needs_calibration:
        return None
    return load_calibration(config.calibration, config.calibration_split, config.calibration_samples)


def quantize(source: str | Path, config: QuantizeConfig, out: str | Path, overwrite: bool = False,
             kinds: tuple[str, ...] | None = None, status=None) -> Manifest:
    """Build a quantized-model / onnx-model artifact at `out` from `source`; returns its manifest."""
    say = status or (lambda message: None)
    scheme = get_scheme(config.scheme, kinds)
    calibration = _calibration(config, scheme)
    random.seed(config.seed)
    say(f"loading {source}")
    src = resolve_source(source, config)
    if src.task not in scheme.tasks:
        raise ConfigError(f"scheme {scheme.name} does not support {src.task} models",
                          f"it supports: {', '.join(scheme.tasks)}")
    if scheme.check is not None:
        scheme.check(src, config)
    fields: dict[str, Any] = {
        "name": Path(out).name, "kind": scheme.kind, "task": src.task, "base": src.base,
        "method": f"{'export' if scheme.kind == 'onnx-model' else 'quantize'}:{scheme.name}",
        "hyperparameters": config.model_dump(mode="json", exclude={"parity"}), "labels": src.labels,
        "data": calibration.manifest_fields() if calibration else src.data, "source": src.lineage,
        "quantization": {"scheme": scheme.name, "bits": scheme.bits},
    }
    with ArtifactWriter(out, fields, overwrite=overwrite) as writer:
        save_support_files(src, writer.path)
        say(f"building {scheme.name}")
        details = scheme.build(src, config, writer.path, calibration) or {}
        fields["quantization"].update(details)
        say("reloading and measuring parity")
        loaded = reload(writer.path, fields)
        texts = _texts(calibration)
        golden = src.golden or build_golden_set(src.model, src.tokenizer, texts, src.task, src.labels)
        save_golden(writer, golden)
        parity = config.parity
        report = judge(compare(src.model, loaded.model, src.tokenizer, texts, src.task, parity),
                       parity.max_logit_diff or scheme.max_logit_diff,
                       parity.min_agreement if parity.min_agreement is not None else scheme.min_agreement,
                       parity.max_kl or scheme.max_kl)
        size, fp32_size = weights_size(writer.path), src.float_bytes()
        fields["quantization"].update(
            calibration=calibration.manifest_fields() if calibration else None, accepts_adapters=scheme.accepts_adapters,
            size_bytes=size, fp32_size_bytes=fp32_size, size_ratio=size / fp32_size,
            latency_ratio=report.get("latency_ratio"), memory_bytes=loaded.info.get("memory_bytes"),
            quality_delta={k: report[k] for k in ("perplexity_delta_ratio", "token_agreement", "mean_kl", "label_agreement")
                           if k in report})
        writer.update(quantization=fields["quantization"],
                      metrics={"parity": report, "golden_parity": headline(replay(golden, model_forward(loaded.model)))})
    return writer.manifest
