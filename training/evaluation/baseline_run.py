"""`tuneserve baseline`: evaluate an untuned base model as a classifier, on the data a fine-tuned artifact is evaluated on.

A causal-LM base runs `zero-shot` and `few-shot` prompting (label options scored by likelihood,
`training.evaluation.prompt_baseline.LabelLikelihood`); an encoder base runs `centroid` and
`knn` over its sentence embeddings. Few-shot examples and the embedding index come from the
training split (`train_data`, or the `train` split of a prepared `data` directory). Each mode
is evaluated with `runner.evaluate` (same rows, metrics, report format, so `tuneserve evaluate
--compare` and `tuneserve compare --report` read the results), into `out/<mode>/`;
`out/baseline_summary.{json,md}` lists them with accuracy, its Wilson interval and latency.

    tuneserve baseline base=smollm2-135m data=../shared/data/banking77/test.csv task=classification \
        train_data=../shared/data/banking77/train.csv columns.label=category limit=200 out=evals/b77-smollm2
    tuneserve baseline base=all-minilm-l6-v2 data=data/prepared/banking77 out=evals/b77-minilm
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from training.artifact.config import StrictModel
from training.artifact.errors import ConfigError
from training.evaluation.datasets import DATASET_META, load_eval_data
from training.evaluation.render import md_table, write_json, write_text
from training.evaluation.runner import EvalConfig, evaluate

ENV_PREFIX = "TUNESERVE_BASELINE__"
LM_MODES = ("zero-shot", "few-shot")
ENCODER_MODES = ("centroid", "knn")
SUMMARY_NAME = "baseline_summary"


class BaselineConfig(StrictModel):
    base: str = Field(..., description="base model: a name (smollm2-135m, all-minilm-l6-v2) or a model directory")
    data: str | None = Field(None, description="evaluation rows: prepared dir or JSONL/JSON/CSV (as for evaluate)")
    train_data: str | None = Field(None, description="labelled training rows (default: a prepared data dir's train split)")
    task: Literal["classification"] = "classification"
    split: str = "test"
    columns: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    modes: list[str] | None = Field(None, description="LM: zero-shot, few-shot; encoder: centroid, knn (default: all)")
    shots: int = Field(5, ge=1, le=64)
    selection: Literal["random", "nearest"] = "nearest"
    embedder: str = Field("all-minilm-l6-v2", description="encoder for nearest few-shot selection")
    scores: list[Literal["calibrated", "mean", "sum"]] = Field(
        default_factory=lambda: ["calibrated", "mean", "sum"], min_length=1,
        description="label scores for LM modes; each is its own result (the forward passes are shared)")
    label_style: Literal["words", "raw"] = "words"
    share_prefix: bool = True
    knn_k: int = Field(10, ge=1)
    threads: int = Field(2, ge=1)
    out: str | None = None
    eval: EvalConfig = Field(default_factory=EvalConfig)


def base_kind(base: str) -> str:
    """`causal-lm` when the base's config names a *ForCausalLM architecture, else `encoder`."""
    from training.artifact.paths import resolve_base_dir

    config_file = Path(resolve_base_dir(base)) / "config.json"
    try:
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config of base {base!r} ({exc})", "pass a model directory with config.json")
    return "causal-lm" if any(a.endswith("ForCausalLM") for a in architectures) else "encoder"


def train_rows(cfg: BaselineConfig) -> list[dict[str, Any]]:
    source = cfg.train_data
    if source is None:
        if cfg.data and (Path(cfg.data) / DATASET_META).is_file():
            source = cfg.data
        else:
            raise ConfigError("no training rows for the baseline", "pass train_data=FILE (labelled rows) or a prepared data dir")
    return load_eval_data(source, cfg.task, "train", cfg.columns).rows


def _modes(cfg: BaselineConfig, kind: str) -> list[str]:
    allowed = LM_MODES if kind == "causal-lm" else ENCODER_MODES
    modes = cfg.modes or list(allowed)
    bad = [m for m in modes if m not in allowed]
    if bad:
        raise ConfigError(f"modes {bad} do not apply to {kind} base {cfg.base!r}", f"choose from {list(allowed)}")
    return modes


def _predictors(cfg: BaselineConfig, kind: str, rows: list[dict[str, Any]], labels: list[str]):
    """(mode, predictor) pairs, built lazily so one model is loaded at a time."""
    from training.evaluation import prompt_baseline as pb

    if kind == "encoder":
        embed = pb.encoder_embedder(cfg.base)
        matrix = embed([r["text"] for r in rows])  # one index for every mode
        for mode in _modes(cfg, kind):
            yield mode, pb.EmbeddingClassifier(rows, embed, mode, cfg.knn_k, labels, name=f"{cfg.base}-{mode}",
                                               info={"base": cfg.base}, matrix=matrix)
        return
    from training.artifact.loading import load_base

    loaded = load_base(cfg.base)
    for mode in _modes(cfg, kind):
        picker = None
        if mode == "few-shot":
            embed = pb.encoder_embedder(cfg.embedder) if cfg.selection == "nearest" else None
            picker = pb.FewShotPicker(rows, cfg.shots, cfg.selection, embed, cfg.seed)
        scorer = pb.LabelLikelihood(loaded, labels, picker, cfg.scores[0], cfg.label_style, cfg.share_prefix,
                                    name=f"{cfg.base}-{mode}" + (f"-{cfg.shots}-{cfg.selection}" if picker else ""))
        for score in cfg.scores:
            yield f"{mode}-{score}", scorer.with_score(score)


def run_baselines(cfg: BaselineConfig, progress: bool = True) -> dict[str, Any]:
    from training.evaluation.prompt_baseline import mean_ci

    if cfg.data is None:
        raise ConfigError("no evaluation data given", "pass data=PREPARED_DIR or a JSONL/JSON/CSV file with task=")
    import torch

    torch.set_num_threads(cfg.threads)
    kind = base_kind(cfg.base)
    _modes(cfg, kind)  # a wrong mode fails before anything is loaded
    rows = train_rows(cfg)
    labels = sorted({r["label"] for r in rows})
    out = Path(cfg.out or Path("evals") / f"baseline-{Path(cfg.base).name}")
    eval_cfg = cfg.eval.model_copy(update={"data": cfg.data, "task": cfg.task, "split": cfg.split, "columns": cfg.columns,
                                           "limit": cfg.limit, "seed": cfg.seed, "perplexity": False,
                                           "threads": cfg.threads, "model": None})
    results = []
    for mode, predictor in _predictors(cfg, kind, rows, labels):
        result, where = evaluate(eval_cfg, predictor=predictor, progress=progress, out=out / mode)
        correct = result.per_sample.get("accuracy", [])
        acc, low, high = mean_ci(correct)
        results.append({"mode": mode, "name": result.name, "report": str(where), "rows": len(correct),
                        "accuracy": acc, "ci95": [low, high], "macro_f1": result.metrics.get("macro_f1"),
                        "latency_per_example_s": result.model.get("seconds_per_example",
                                                                  result.wall_time_s / max(len(correct), 1)),
                        "train_rows": len(rows), "settings": result.model})
    summary = {"base": cfg.base, "kind": kind, "data": cfg.data, "limit": cfg.limit, "seed": cfg.seed,
               "labels": len(labels), "results": results, "config": cfg.model_dump(exclude={"eval"})}
    write_summary(summary, out)
    return summary


def write_summary(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [[r["mode"], r["name"], r["rows"], r["accuracy"], f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
             r["macro_f1"], r["latency_per_example_s"]] for r in summary["results"]]
    md = [f"# Baselines of {summary['base']} ({summary['kind']})", "",
          md_table(["mode", "name", "rows", "accuracy", "95% CI (Wilson)", "macro F1", "s / example"], rows), "",
          "Each mode's full report (same format as `tuneserve evaluate`) is in its own folder."]
    return {"json": write_json(out / f"{SUMMARY_NAME}.json", summary),
            "md": write_text(out / f"{SUMMARY_NAME}.md", "\n".join(md) + "\n")}
