"""Adapter merging (`tuneserve merge`): several LoRA adapters of one base become one new adapter artifact.

The sources are verified artifacts on the same base (same fingerprint, task and labels). They are
attached to one copy of the base and combined by PEFT's `add_weighted_adapter`: `linear` (weighted sum
of A and B; exact only for one source or a 0/1 weighting), `cat` (exact weighted sum of the updates, rank
= sum of ranks), `svd` (the exact sum truncated to a rank), `ties`, `dare_linear`, `dare_ties`,
`magnitude_prune` (task-arithmetic merges that keep `density` of each update). The result is written
through `ArtifactWriter` with a manifest whose `lineage` names every source (name, version, sha256 of its
manifest) and a golden set built from the merged model itself on the sources' golden prompts.
Fully trained modules (`modules_to_save`: a classifier head) are averaged with the weights normalised to
sum 1, which PEFT's `add_weighted_adapter` refuses to do: so classification adapters merge too, and
`cat` of a run and its continuations is a uniform weight soup (auto mode's, `training.search.soup`).

    cfg = load_config(MergeConfig, None, ["sources=[a,b]", "combination=ties", "output=artifacts/ab"])
    artifact = merge_adapters(cfg)          # an Artifact of kind adapter
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from training.artifact import Artifact, ArtifactWriter, BaseRef, ConfigError, Manifest, load_artifact
from training.artifact.config import StrictModel
from training.artifact.golden import build_golden_set, read_golden, save_golden
from training.artifact.manifest import MANIFEST_NAME

ENV_PREFIX = "TUNESERVE_MERGE__"
MERGED = "default"  # PEFT saves the adapter named "default" at the top of the directory
DENSITY_COMBINATIONS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
SAME_RANK_COMBINATIONS = ("linear", *DENSITY_COMBINATIONS)
FALLBACK_PROMPTS = ("Hello", "The quick brown fox", "Write a short answer:", "Question: what is 2 + 2?")

Combination = Literal["linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune"]


class MergeConfig(StrictModel):
    """What to merge, how, and where the new adapter goes."""

    sources: list[str] = Field(default_factory=list, description="adapter artifact directories (two or more)")
    output: str = "artifacts/merged-adapter"
    name: str | None = Field(None, description="artifact name (default: output directory name)")
    version: str = "1"
    combination: Combination = "linear"
    weights: list[float] | None = Field(None, description="one per source; default 1/n for linear, cat and svd, "
                                        "1.0 for ties/dare/magnitude_prune")
    density: float = Field(0.5, gt=0.0, le=1.0, description="fraction of each update kept (ties, dare, magnitude_prune)")
    svd_rank: int | None = Field(None, gt=0, description="svd: rank of the result (default: the largest source rank)")
    seed: int = Field(0, description="DARE drops weights at random")
    overwrite: bool = False

    @model_validator(mode="after")
    def _sources_and_weights(self) -> MergeConfig:
        if len(self.sources) < 2:
            raise ValueError(f"merge needs two or more source adapters, got {len(self.sources)} "
                             "(e.g. sources=[artifacts/a,artifacts/b])")
        if self.weights is not None and len(self.weights) != len(self.sources):
            raise ValueError(f"weights has {len(self.weights)} values for {len(self.sources)} sources; give one per source")
        return self

    def source_weights(self) -> list[float]:
        if self.weights is not None:
            return list(self.weights)
        share = 1.0 / len(self.sources) if self.combination in ("linear", "cat", "svd") else 1.0
        return [share] * len(self.sources)

    def artifact_name(self) -> str:
        from pathlib import Path

        return self.name or Path(self.output).name


def load_sources(paths: list[str]) -> list[Artifact]:
    """Verify every source and check that they can be merged: LoRA adapters of one base, task and label set."""
    from training.artifact.loading import read_adapter_config

    sources = [load_artifact(path, expect_kind="adapter") for path in paths]
    first = sources[0].manifest
    for artifact in sources:
        m = artifact.manifest
        if m.base.sha256 != first.base.sha256:
            raise ConfigError(f"adapters were trained on different bases: {first.name} on {first.base.id} "
                              f"(sha256 {first.base.sha256[:12]}), {m.name} on {m.base.id} (sha256 {m.base.sha256[:12]})",
                              "merge only adapters of the same base model")
        if (m.task, m.labels) != (first.task, first.labels):
            raise ConfigError(f"adapters {first.name} and {m.name} solve different tasks ({first.task} {first.labels} "
                              f"vs {m.task} {m.labels})", "merge only adapters of the same task and label set")
        config = read_adapter_config(artifact)
        if str(config.peft_type.value) != "LORA" or getattr(config, "use_dora", False):
            kind = "DoRA" if getattr(config, "use_dora", False) else config.peft_type.value
            raise ConfigError(f"adapter {m.name} is a {kind} adapter; merging combines plain LoRA adapters",
                              "merge LoRA adapters (method lora or qlora)")
    return sources


def lineage(cfg: MergeConfig, sources: list[Artifact]) -> dict[str, Any]:
    from training.artifact import sha256_file

    return {"operation": "merge", "combination": cfg.combination, "weights": cfg.source_weights(),
            "density": cfg.density if cfg.combination in DENSITY_COMBINATIONS else None,
            "sources": [{"name": a.manifest.name, "version": a.manifest.version, "path": str(a.path),
                         "sha256": sha256_file(a.path / MANIFEST_NAME)} for a in sources]}


def combine(cfg: MergeConfig, sources: list[Artifact]):
    """The base with the sources attached and combined into the active adapter `MERGED` (sources removed)."""
    import torch

    from training.artifact.loading import attach_adapter, load_base

    first = sources[0].manifest
    base = load_base(first.base.id, task=first.task, labels=first.labels)
    if base.sha256 != first.base.sha256:
        raise ConfigError(f"base {first.base.id} on this machine (sha256 {base.sha256[:12]}) is not the base the "
                          f"adapters were trained on ({first.base.sha256[:12]})", "point the base reference at that model")
    model = base.model
    names = [f"source{i}" for i in range(len(sources))]
    for name, artifact in zip(names, sources):
        model = attach_adapter(model, artifact, name)
    torch.manual_seed(cfg.seed)
    average_heads(model, names, cfg.source_weights())
    density = cfg.density if cfg.combination in DENSITY_COMBINATIONS else None
    try:
        model.add_weighted_adapter(names, cfg.source_weights(), MERGED, combination_type=cfg.combination,
                                   svd_rank=cfg.svd_rank, density=density)
    except ValueError as exc:
        hint = ("use combination=cat or svd for adapters of different ranks"
                if cfg.combination in SAME_RANK_COMBINATIONS else "check the sources' adapter configs")
        raise ConfigError(f"PEFT cannot merge these adapters with {cfg.combination}: {exc}", hint) from None
    model.set_adapter(MERGED)
    for name in names:
        model.delete_adapter(name)
    model.eval()
    return model, base.tokenizer


def average_heads(model, names: list[str], weights: list[float]) -> None:
    """Give every `modules_to_save` wrapper a `MERGED` copy holding the weighted mean of the sources'
    copies (weights normalised to sum 1) and drop the sources' copies, so PEFT merges only the LoRA layers."""
    import torch
    from peft.utils import ModulesToSaveWrapper

    total = sum(weights)
    for wrapper in [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]:
        present = [(name, w / total if total > 0 else 0.0) for name, w in zip(names, weights)
                   if name in wrapper.modules_to_save]
        if not present:
            continue
        if total <= 0:
            raise ConfigError(f"weights {weights} sum to {total}; the adapters' trained heads need a positive total "
                              "to be averaged", "give weights with a positive sum")
        states = [wrapper.modules_to_save[name].state_dict() for name, _ in present]
        wrapper.update(MERGED)
        with torch.no_grad():
            wrapper.modules_to_save[MERGED].load_state_dict(
                {key: sum(w * state[key].float() for (_, w), state in zip(present, states)).to(states[0][key].dtype)
                 for key in states[0]})
        wrapper.set_adapter(MERGED, inference_mode=True)
        for name, _ in present:
            wrapper.delete_adapter(name, new_active_adapters=[MERGED])


def golden_texts(sources: list[Artifact]) -> list[str]:
    texts: list[str] = []
    for artifact in sources:
        golden = read_golden(artifact)
        texts += [p.text for p in golden.prompts if p.text not in texts] if golden else []
    return texts or list(FALLBACK_PROMPTS)


def merge_adapters(cfg: MergeConfig, like: Manifest | None = None) -> Artifact:
    """Merge `cfg.sources` into a new adapter artifact at `cfg.output`. `like`: a source's manifest whose
    training record (hyperparameters, data, tokenizer) the result keeps, its validation metrics dropped
    (auto mode's weight soup of runs of one recipe)."""
    from training.train.output import save_model

    sources = load_sources(cfg.sources)
    model, tokenizer = combine(cfg, sources)
    first = sources[0].manifest
    golden = build_golden_set(model, tokenizer, golden_texts(sources), first.task, first.labels)
    merge = cfg.model_dump(exclude={"overwrite"})
    if like is None:
        manifest = Manifest(name=cfg.artifact_name(), version=cfg.version, kind="adapter", task=first.task,
                            base=BaseRef(id=first.base.id, sha256=first.base.sha256), method="lora",
                            labels=first.labels, tokenizer=first.tokenizer, hyperparameters={"merge": merge},
                            lineage=lineage(cfg, sources))
    else:
        kept = like.model_dump(exclude={"name", "hyperparameters", "metrics", "lineage", "golden", "files", "created_at"})
        manifest = Manifest(**kept, name=cfg.artifact_name(), hyperparameters={**like.hyperparameters, "merge": merge},
                            metrics={k: v for k, v in like.metrics.items() if not k.startswith(("val_", "best_"))},
                            lineage=lineage(cfg, sources))
    with ArtifactWriter(cfg.output, manifest, overwrite=cfg.overwrite) as writer:
        save_model(model)(writer.path)
        save_golden(writer, golden)
    return Artifact(path=writer.dest, manifest=writer.manifest)
