"""The parts of one training run, shared by a single-process run and each Ray Train worker.

`prepare(cfg, device)` loads data, tokenizer and base and makes the base trainable with the
method (a `Prepared`); after the loop, `write_outputs` builds the reference profile and the
manifest and writes the artifact (and `<output>-merged`). `training.train.run.train` strings
them together in one process; `training.train.ray_backend` does the same on every worker,
with rank 0 writing.

    prep = prepare(cfg, pick_device(cfg)); cfg = prep.cfg      # `auto` values resolved from the data
    loop = TrainLoop(cfg, prep.model, prep.train_ex, prep.val_ex, prep.collate, device, prep.weights, prep.identity,
                     objective=prep.objective)
    manifest, artifact, merged = write_outputs(cfg, prep, loop.run(), wall, device)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.artifact import BaseRef, DataRef, Manifest, fingerprint_model_dir, resolve_base_dir
from training.artifact.errors import ConfigError, TrainingError
from training.artifact.golden import DEFAULT_PROMPTS, GoldenSet, build_golden_set
from training.artifact.loading import load_tokenizer, require_safetensors
from training.artifact.profile import build_reference_profile
from training.train.checkpoint import latest_checkpoint
from training.train.config import TrainConfig
from training.train.data import Splits, load_splits
from training.train.output_format import check_outputs, manifest_defaults
from training.train.loop import LoopResult, TrainLoop
from training.train.methods import Method, get_method
from training.train.packing import check_packable, collate_packed, pack_examples, packing_report
from training.train.recipes import data_shape, pick_recipe
from training.train.output import (
    hyperparameters,
    merge_adapter,
    save_model,
    tokenizer_info,
    write_artifact,
)
from training.train.templates import (
    PromptTemplate,
    encode_classification,
    pad_causal,
    pad_classification,
)

DROPOUT_KEYS = ("attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                "resid_pdrop", "embd_pdrop", "classifier_dropout")


@dataclass
class TrainOutcome:
    artifact: Path
    merged: Path | None
    model: Any
    tokenizer: Any
    result: LoopResult
    manifest: Manifest
    examples: list[dict]
    collate: Any


def pick_device(cfg: TrainConfig):
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available", "use device=auto or device=cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_training_model(cfg: TrainConfig, method: Method, model_dir: Path, labels: list[str] | None, device: Any):
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        BitsAndBytesConfig,
    )

    require_safetensors(model_dir)
    model_config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    method.validate(cfg, model_config)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False, "dtype": torch.float32}
    if cfg.dropout is not None:
        kwargs.update({key: cfg.dropout for key in DROPOUT_KEYS if hasattr(model_config, key)})
    if method.quantized_base:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.qlora.quant_type, bnb_4bit_use_double_quant=cfg.qlora.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    if cfg.task == "classification":
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    return model if method.quantized_base else model.to(device)


def encoder(cfg: TrainConfig, splits: Splits, tokenizer: Any) -> tuple[Any, Any, PromptTemplate | None]:
    """(rows -> examples, examples -> padded batch, template) for the task (and preference objective)."""
    pad_id = tokenizer.pad_token_id
    if cfg.objective != "sft":
        from training.train.preference import PreferenceObjective

        objective = PreferenceObjective(cfg, tokenizer, PromptTemplate.for_tokenizer(tokenizer))
        return objective.encode, objective.collate, objective.template
    if cfg.task == "classification":
        label_ids = {label: i for i, label in enumerate(splits.labels)}
        enc = lambda rows: encode_classification(rows, tokenizer, label_ids, cfg.data.max_length)
        return enc, lambda b: pad_classification(b, pad_id), None
    template = PromptTemplate.for_tokenizer(tokenizer)
    enc = lambda rows: [template.encode(r, tokenizer, cfg.data.max_length) for r in rows]
    if cfg.packing:
        return enc, lambda b: collate_packed(b, pad_id), template
    return enc, lambda b: pad_causal(b, pad_id), template


def test_metrics(cfg: TrainConfig, loop: TrainLoop, splits: Splits, enc: Callable[[list], list]) -> dict[str, float]:
    if not (cfg.evaluate_test and splits.test):
        return {}
    loop.validation = enc(splits.test)
    metrics = loop.evaluate(limit=False)
    loop.model.eval()
    return {f"test_{k.removeprefix('val_')}": v for k, v in metrics.items()}


def prompt_texts(rows: list[dict], tokenizer: Any, template: PromptTemplate | None) -> list[str]:
    """What the model reads of each row: the text (classifier) or the rendered prompt without the answer."""
    if template is None:
        return [r["text"] for r in rows]
    if rows and "prompt" in rows[0]:  # preference rows
        return [template.render_prompt(tokenizer, r["prompt"]) for r in rows]
    return [template.render_chat_prompt(tokenizer, r["messages"]) if "messages" in r
            else template.render_prompt(tokenizer, r["instruction"], r["input"]) for r in rows]


def profile_inputs(cfg: TrainConfig, splits: Splits, tokenizer: Any, template: PromptTemplate | None) -> list[str]:
    return prompt_texts(splits.train[: cfg.profile.sample * 4], tokenizer, template)


def golden_set(cfg: TrainConfig, prep: "Prepared") -> GoldenSet:
    """The trained model's outputs on the first validation prompts (training prompts when there is no validation split)."""
    rows = (prep.splits.validation or prep.splits.train)[:DEFAULT_PROMPTS]
    texts = prompt_texts(rows, prep.tokenizer, prep.template)
    return build_golden_set(prep.model, prep.tokenizer, texts, cfg.task, prep.splits.labels)


def classifier_outputs(model: Any, examples: list[dict], collate: Any, labels: list[str], device: Any,
                       batch_size: int) -> tuple[list[str], list[float]]:
    import torch

    preds, confs = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size])
            batch.pop("labels")
            probs = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().softmax(-1)
            conf, idx = probs.max(-1)
            preds += [labels[j] for j in idx.tolist()]
            confs += conf.tolist()
    return preds, confs


def build_profile(cfg, splits, tokenizer, template, model, val_examples, collate, device) -> dict | None:
    if not cfg.profile.enabled:
        return None
    labels = confidences = None
    if cfg.task == "classification" and val_examples:
        labels, confidences = classifier_outputs(model, val_examples, collate, splits.labels, device, cfg.batch_size * 2)
    texts = profile_inputs(cfg, splits, tokenizer, template)
    return build_reference_profile(texts, tokenizer, labels=labels, confidences=confidences,
                                   embed=cfg.profile.embed, sample=cfg.profile.sample, seed=cfg.seed)


@dataclass
class Prepared:
    """Everything a run trains with, built the same way in one process and in each Ray worker
    (`cfg` is the run's config with every `auto` resolved by `training.train.recipes`)."""

    cfg: TrainConfig
    method: Method
    base_sha: str
    splits: Splits
    tokenizer: Any
    model: Any
    enc: Callable[[list], list]
    collate: Any
    template: PromptTemplate | None
    train_ex: list[dict]
    val_ex: list[dict]
    identity: dict[str, Any]
    weights: list[float] | None
    trainable: int
    objective: Any = None  # a PreferenceObjective (objective dpo/orpo/kto), else None
    adversary: Any = None  # training.train.debias.Adversary with debias=adversarial (never saved)
    packing: dict[str, Any] | None = None  # the packing report with packing=true


def start_from_adapter(cfg: TrainConfig, model: Any, base_sha: str):
    """The base with `cfg.init_adapter` attached and trainable (the second stage of SFT -> DPO)."""
    from training.artifact import load_artifact
    from training.artifact.loading import attach_adapter

    artifact = load_artifact(cfg.init_adapter, expect_base_sha256=base_sha, expect_kind="adapter")
    if artifact.manifest.method and artifact.manifest.method != cfg.method:
        raise ConfigError(f"init_adapter {cfg.init_adapter} was trained with method {artifact.manifest.method}, "
                          f"this run uses method {cfg.method}", f"pass method={artifact.manifest.method}")
    peft_model = attach_adapter(model, artifact, "default")
    peft_model.peft_config["default"].inference_mode = False
    for name, param in peft_model.named_parameters():
        param.requires_grad_(".default" in name or "default." in name)
    peft_model.train()
    return peft_model


def resume_point(cfg: TrainConfig) -> Path | None:
    """Refuse an existing output; the checkpoint to resume from (cfg.resume) or None."""
    if Path(cfg.output).exists() and not cfg.overwrite:
        raise ConfigError(f"output {cfg.output} already exists", "choose another output= or pass overwrite=true")
    if not cfg.resume:
        return None
    found = latest_checkpoint(cfg.checkpoint_path())
    if found is None:
        raise TrainingError(f"resume=true but no checkpoint in {cfg.checkpoint_path()}",
                            "start without --resume, or point checkpoint_dir at the killed run's checkpoints")
    return found


def prepare(cfg: TrainConfig, device: Any) -> Prepared:
    """Data, tokenizer and the base made trainable by the method, on `device`, seeded by cfg.seed;
    `auto` settings are picked from the data (`prep.cfg` holds the resolved config)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    method = get_method(cfg.method)
    model_dir = resolve_base_dir(cfg.base)
    base_sha = fingerprint_model_dir(model_dir)
    splits = load_splits(cfg.data, cfg.task, cfg.seed, cfg.objective)
    check_outputs(cfg.data, cfg.task, splits)
    if cfg.debias != "none":
        from training.train.debias import protected_key

        protected_key(cfg, splits)  # a wrong adversary.attribute fails before the base loads
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    recipe = pick_recipe(cfg, data_shape(cfg, splits, tokenizer))
    cfg = recipe.config
    if cfg.progress and recipe.advice:
        print("recipe (heuristics, training.train.recipes):\n  " + "\n  ".join(recipe.advice), file=sys.stderr)
    torch.manual_seed(cfg.seed)
    model = load_training_model(cfg, method, model_dir, splits.labels, device)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = start_from_adapter(cfg, model, base_sha) if cfg.init_adapter else method.wrap(cfg, model)
    enc, collate, template = encoder(cfg, splits, tokenizer)
    objective = getattr(enc, "__self__", None)
    train_ex, val_ex = enc(splits.train), enc(splits.validation)
    if objective is not None:  # reference logprobs of the starting weights (precomputed mode only)
        tests = [enc(splits.test)] if cfg.evaluate_test else []
        train_ex, val_ex = objective.precompute(model, [train_ex, val_ex, *tests], device, cfg.batch_size * 2,
                                                [splits.train, splits.validation])
    identity = {"base_sha256": base_sha, "method": cfg.method, "data": splits.fingerprint, "batch_size": cfg.batch_size,
                "grad_accum": cfg.grad_accum, "seed": cfg.seed, "order_seed": cfg.order_seed}
    packing = None
    if cfg.packing:
        check_packable(cfg.method, cfg.task, getattr(model.config, "_attn_implementation", None))
        packed = pack_examples(train_ex, cfg.packing_max_length or cfg.data.max_length)
        packing = packing_report(train_ex, packed, cfg.batch_size)
        train_ex, identity["packing"] = packed, cfg.packing_max_length or cfg.data.max_length
        if cfg.progress:
            print(f"packing: {packing['examples']} examples -> {packing['packed_rows']} rows; padding "
                  f"{packing['padding_fraction_unpacked']:.1%} -> {packing['padding_fraction_packed']:.1%}", file=sys.stderr)
    balanced = splits.class_weights and cfg.class_weighting == "balanced"
    weights = [splits.class_weights[label] for label in splits.labels] if balanced else None
    adversary = None
    if cfg.debias != "none":
        from training.train.debias import build_adversary

        adversary = build_adversary(cfg, model, splits, train_ex, val_ex, device)
    return Prepared(cfg=cfg, method=method, base_sha=base_sha, splits=splits, tokenizer=tokenizer, model=model, enc=enc,
                    collate=collate, template=template, train_ex=train_ex, val_ex=val_ex,
                    identity=identity, weights=weights, objective=objective, adversary=adversary, packing=packing,
                    trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))


def debias_info(cfg: TrainConfig, prep: Prepared) -> dict[str, Any]:
    """What the manifest says about debiasing (the adversary itself is not in the artifact)."""
    if prep.adversary is None:
        return {"debias": "none"}
    return {"debias": cfg.debias, "adversary": {**cfg.adversary.model_dump(), "slice": prep.adversary.key,
                                                "groups": prep.adversary.groups}}


def init_lineage(cfg: TrainConfig) -> dict[str, Any] | None:
    """`manifest.lineage` of a run that continued an adapter (`init_adapter`): the artifact it started from."""
    if not cfg.init_adapter:
        return None
    from training.artifact import read_manifest, sha256_file
    from training.artifact.manifest import MANIFEST_NAME

    source = read_manifest(cfg.init_adapter)
    return {"operation": f"train:{cfg.objective}", "sources": [
        {"name": source.name, "version": source.version, "path": str(cfg.init_adapter),
         "sha256": sha256_file(Path(cfg.init_adapter) / MANIFEST_NAME)}]}


def describe(cfg: TrainConfig, prep: Prepared, result: LoopResult, wall: float) -> Manifest:
    splits, tokenizer = prep.splits, prep.tokenizer
    return Manifest(
        name=cfg.artifact_name(), kind="full-model" if prep.method.build is None else "adapter", task=cfg.task,
        base=BaseRef(id=cfg.base, sha256=prep.base_sha), method=cfg.method,
        hyperparameters={**hyperparameters(cfg, prep.method, result.steps), **debias_info(cfg, prep)},
        tokenizer=tokenizer_info(tokenizer, prep.template.describe() if prep.template else {"template": None}),
        data=DataRef(fingerprint=splits.fingerprint, rows=len(splits.train), source=splits.source,
                     splits=splits.info["rows"]),
        metrics={**result.metrics, "steps": result.steps, "samples_per_second": result.samples / max(result.train_seconds, 1e-9),
                 "train_tokens_per_second": result.tokens / max(result.train_seconds, 1e-9),
                 **({"packing": prep.packing} if prep.packing else {}),
                 "stopped_early": result.stopped_early},
        labels=splits.labels, trainable_parameters=prep.trainable, wall_time_seconds=round(wall, 3),
        **manifest_defaults(cfg.data, tokenizer, prep.template, [row.get("output", "") for row in splits.train]),
        lineage=init_lineage(cfg),
    )


def write_outputs(cfg: TrainConfig, prep: Prepared, result: LoopResult, wall: float,
                  device: Any) -> tuple[Manifest, Path, Path | None]:
    """Profile, golden set, manifest and artifact (plus `<output>-merged` with merge=true): (manifest, artifact, merged)."""
    model = prep.model
    model.eval()
    profile = build_profile(cfg, prep.splits, prep.tokenizer, prep.template, model, prep.val_ex, prep.collate, device)
    written = write_artifact(cfg.output, describe(cfg, prep, result, wall),
                             save_model(model, prep.tokenizer if prep.method.build is None else None),
                             profile, cfg.overwrite, golden_set(cfg, prep))
    merged = None
    if cfg.merge:
        merged_manifest = written.manifest.model_copy(update={"name": f"{cfg.artifact_name()}-merged"})
        merged = merge_adapter(written.path, f"{cfg.output}-merged", merged_manifest, profile, cfg.overwrite).path
    return written.manifest, written.path, merged


