"""The typed configuration of one training run (`tuneserve train [CONFIG.yaml] [key=value ...]`).

Every knob of a run lives here with its default; YAML files in `training/configs/` and
`key=value` overrides fill it (see `training.artifact.config.load_config`). Method-specific options
live in the sub-config of the same name (`lora.r=16`, `prompt.num_virtual_tokens=20`);
which one is used is chosen by the single `method:` key (see `training.train.methods`).
Where the run happens is `distributed:` (this process, or Ray Train workers: `distributed.backend=ray
distributed.workers=4`); the same config trains on a laptop and on a Ray cluster.

    cfg = load_config(TrainConfig, "training/configs/lora-tiny.yaml", ["optim.lr=1e-3"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from training.artifact.config import StrictModel
from training.tracking import TrackingConfig

ENV_PREFIX = "TUNESERVE_TRAIN__"
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


class DataConfig(StrictModel):
    """Where the rows come from: a prepared dataset dir, or a raw JSON/JSONL/CSV file."""

    path: str = "../shared/data/alpaca_en_demo/alpaca_en_demo.json"
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of a raw file (prepared dirs have splits)")
    max_rows: int | None = Field(None, gt=0, description="use only the first N training rows")
    max_length: int = Field(256, gt=8, description="tokens per example; longer ones are truncated")
    text_field: str | None = Field(None, description="classification text column (default: text)")
    label_field: str | None = Field(None, description="classification label column (default: label/category/intent)")
    output_format: Literal["text", "json", "tool_calls"] = Field(
        "text", description="the assistant turn's format (instruction data): json outputs are checked (against "
        "output_schema when given) and the schema becomes the adapter's served default; tool_calls (hermes "
        "<tool_call> tags) records tool_call_format=hermes")
    output_schema: dict[str, Any] | str | None = Field(None, description="JSON schema (inline or a .json path) every "
                                                       "output follows, with output_format=json")


class LoraOptions(StrictModel):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="linear module names; default: the attention projections")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha/sqrt(r) instead of alpha/r (helps at r >= 32)")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="adapter initialisation: default (Kaiming A, zero B), gaussian, pissa (principal "
        "singular vectors of the base weight), olora (QR of the base weight); pissa/olora start from the base's output")
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+: B matrices train at lr x this (16 is typical)")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune: uniform noise of scale alpha/sqrt(L*d) on the "
                                        "input embeddings while training (5 is typical)")


class QloraOptions(StrictModel):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    blocksize: int = Field(64, gt=0, description="4-bit quantization block; linear weights must be a multiple of it")


class VirtualTokenOptions(StrictModel):
    num_virtual_tokens: int = Field(16, gt=0)
    encoder_hidden_size: int = Field(64, gt=0, description="p-tuning prompt encoder width")
    init_text: str | None = Field(None, description="prompt tuning: initialise virtual tokens from this text")


class Ia3Options(StrictModel):
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None


class AdversaryOptions(StrictModel):
    """`debias: adversarial`: a gradient-reversal adversary predicting a protected attribute (training.train.debias)."""

    attribute: str | None = Field(None, description="the protected attribute: a slice of the prepared data "
                                  "(a bias.slices column such as `group`, or `keywords:<name>`)")
    weight: float = Field(1.0, ge=0.0, description="lambda: scale of the reversed gradient into the encoder")
    schedule: Literal["constant", "linear", "dann"] = Field(
        "dann", description="lambda over training progress p: constant, linear (p), dann (2/(1+exp(-10p))-1)")
    hidden: int = Field(64, ge=0, description="adversary MLP width (0: a linear adversary)")
    lr: float = Field(1e-3, gt=0, description="the adversary's own AdamW learning rate")


class OptimConfig(StrictModel):
    lr: float | Literal["auto"] = Field(2e-4, description="peak learning rate (auto: picked from method and task, "
                                        "see training.train.recipes)")
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | Literal["auto"] = Field(
        0.05, description="auto: about 30 warm-up steps (training.train.recipes)")
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio")
    weight_decay: float = Field(0.0, ge=0.0)
    l1: float = Field(0.0, ge=0.0, description="L1 penalty on trainable weights (sum |w| times this)")
    grad_clip: float | None = Field(1.0, description="max grad norm; null disables clipping")
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: float | str) -> float | str:
        if value != "auto" and value <= 0:
            raise ValueError(f"learning rate must be > 0 (try 2e-4 for LoRA, 2e-5 for full fine-tuning), got {value}")
        return value


class PreferenceOptions(StrictModel):
    """Options of the preference objectives (`objective: dpo | orpo | kto`, see `training.train.preference`)."""

    beta: float = Field(0.1, gt=0, description="DPO/KTO: strength of the pull towards the reference; also the "
                        "scale of the implicit reward beta*(logp_policy - logp_reference)")
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO: weight of the odds-ratio term next to the chosen NLL")
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO: loss weight of desirable completions")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="KTO: loss weight of undesirable completions")
    reference: Literal["auto", "adapter-disabled", "precomputed"] = Field(
        "auto", description="the reference policy: adapter-disabled (PEFT methods: the base under the adapter, no "
        "second copy), precomputed (the starting weights' logprobs, computed once before training); auto: "
        "adapter-disabled for a fresh PEFT adapter, precomputed for full fine-tuning and init_adapter runs")


class EarlyStopping(StrictModel):
    """Model selection by validation: `metric` picks the best evaluation (every `eval_every` steps and
    at the end); `restore_best` writes that one's weights, not the last; `enabled` stops after
    `patience` evaluations without an improvement of more than `min_delta`."""

    enabled: bool = False
    metric: str = Field("val_loss", description="val_loss, or val_accuracy for classification, or "
                        "val_reward_accuracy / val_reward_margin for preference objectives")
    patience: int = Field(3, gt=0, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = Field(True, description="keep the best-scoring evaluation's weights (needs eval_every)")


class ProfileOptions(StrictModel):
    enabled: bool = True
    embed: bool = Field(True, description="store a MiniLM embedding sample for drift (costs a few seconds)")
    sample: int = Field(256, gt=0)


class DistributedConfig(StrictModel):
    """Where the run happens: `local` (this process) or `ray` (Ray Train workers, see `training.train.ray_backend`).

    `batch_size` stays the global batch: each of the N workers takes batch_size/N rows of every batch.
    """

    backend: Literal["local", "ray"] = "local"
    workers: int = Field(1, gt=0, description="Ray Train workers (one process each, one GPU each with use_gpu)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL between them (gloo on CPU)")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: a full replica per worker; fsdp (GPU): "
                                             "weights, gradients and optimizer state sharded across workers")
    address: str | None = Field(None, description="ray://head:10001 or auto (an existing cluster); "
                                "default: start a local Ray instance")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local Ray instance (default: all)")
    cpus_per_worker: float = Field(1.0, gt=0)
    storage: str | None = Field(None, description="Ray Train checkpoints: a directory or s3://bucket/prefix "
                                "(default: <output>.ray; on a multi-node cluster use shared or S3 storage)")
    max_failures: int = Field(1, ge=-1, description="worker-group restarts from the last checkpoint (-1: unlimited)")

    @model_validator(mode="after")
    def _ray_only(self) -> DistributedConfig:
        if self.backend == "local" and (self.workers > 1 or self.use_gpu):
            raise ValueError("distributed.workers > 1 and distributed.use_gpu need distributed.backend=ray "
                             "(on one machine use device=cuda for a GPU)")
        if self.strategy == "fsdp" and not self.use_gpu:
            raise ValueError("distributed.strategy=fsdp shards over GPUs (Ray Train's FSDP needs use_gpu=true); "
                             "on CPU workers use strategy=ddp")
        return self


class TrainTracking(TrackingConfig):
    """Tracking of a training run: off unless `tracking.enabled=true` (then every step's loss and lr,
    and each evaluation, go to MLflow/TensorBoard; a Ray run logs the workers' averaged values)."""

    enabled: bool = False
    experiment: str = "train"


class TrainConfig(StrictModel):
    """One training run: base, task, data, method, optimisation, outputs."""

    base: str = "tiny-llama"
    task: Literal["causal-lm", "classification"] = "causal-lm"
    method: str = "lora"
    objective: Literal["sft", "dpo", "orpo", "kto"] = Field(
        "sft", description="sft: next-token loss on instruction rows; dpo/orpo: {prompt, chosen, rejected} pairs; "
        "kto: {prompt, completion, label} rows (or pairs, split into a desirable and an undesirable row)")
    preference: PreferenceOptions = Field(default_factory=PreferenceOptions)
    init_adapter: str | None = Field(None, description="start from this adapter artifact (e.g. an SFT adapter: "
                                     "the two-stage SFT -> DPO flow); it is trained further and becomes the reference")
    output: str = "artifacts/adapter"
    name: str | None = Field(None, description="artifact name (default: output directory name)")
    overwrite: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    qlora: QloraOptions = Field(default_factory=QloraOptions)
    prompt: VirtualTokenOptions = Field(default_factory=VirtualTokenOptions)
    ia3: Ia3Options = Field(default_factory=Ia3Options)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        1.0, description="auto: from rows, labels and lengths (training.train.recipes)")
    class_weighting: Literal["balanced", "none", "auto"] = Field(
        "balanced", description="classification loss weights: balanced (rare classes weigh more), none, or auto "
        "(balanced when the data is imbalanced)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    group_by_length: bool = Field(False, description="batch examples of similar length (less padding, faster on "
                                  "short texts); order stays random across batches and a function of order_seed and epoch")
    packing: bool = Field(False, description="SFT: pack several examples into each row of up to packing_max_length "
                          "tokens (first-fit-decreasing), positions restarting and attention kept within each example "
                          "(block-diagonal mask); batch_size then counts packed rows (training.train.packing)")
    packing_max_length: int | None = Field(None, gt=8, description="tokens per packed row (default: data.max_length)")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="override the model's own dropout probabilities")
    seed: int = Field(42, description="sets the initialisation, the validation hold-out, and (unless order_seed) "
                      "the batch order and dropout")
    order_seed: int | None = Field(None, description="seed of the batch order and dropout only (default: seed); "
                                   "auto mode's weight soup varies it, keeping the initialisation and the split")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0, description="torch CPU threads")
    eval_every: int | None = Field(None, gt=0, description="validate every N steps (default: at the end only)")
    eval_batches: int | None = Field(None, gt=0, description="limit validation to N batches")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    refit: bool | Literal["auto"] = Field(
        False, description="after selecting the best step on validation, retrain a fresh model on train + validation "
        "for that many steps and write it; auto: only when the validation split made too few errors to select with "
        "(classification, training.train.recipes.refit_decision; benchmarks/results/recipes.md)")
    checkpoint_every: int | None = Field(None, gt=0, description="write a resumable checkpoint every N steps")
    checkpoint_dir: str | None = Field(None, description="default: <output>.checkpoints")
    keep_checkpoints: int = Field(2, gt=0)
    resume: bool = False
    evaluate_test: bool = Field(True, description="report test_* metrics when the data has a test split")
    merge: bool = Field(False, description="also write a merged full model (LoRA-family methods)")
    profile: ProfileOptions = Field(default_factory=ProfileOptions)
    debias: Literal["none", "adversarial"] = Field(
        "none", description="adversarial: train against an adversary predicting adversary.attribute from the "
        "pooled representation (classification; the adversary is not saved)")
    adversary: AdversaryOptions = Field(default_factory=AdversaryOptions)
    progress: bool = True
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tracking: TrainTracking = Field(default_factory=TrainTracking)

    def batch_order_seed(self) -> int:
        return self.seed if self.order_seed is None else self.order_seed

    @model_validator(mode="after")
    def _early_stopping_needs_eval(self) -> TrainConfig:
        if self.early_stopping.enabled and self.eval_every is None:
            raise ValueError("early_stopping.enabled needs eval_every (validate every N steps)")
        if self.refit is True and self.distributed.backend == "ray":
            raise ValueError("refit=true runs in one process for now; use distributed.backend=local (refit=auto "
                             "does not refit on Ray)")
        if self.data.output_format != "text" and self.task != "causal-lm":
            raise ValueError(f"data.output_format={self.data.output_format} applies to instruction data "
                             f"(task=causal-lm), not task={self.task}; leave it at text")
        if self.data.output_format != "text" and self.objective != "sft":
            raise ValueError(f"data.output_format={self.data.output_format} checks SFT outputs; train the format "
                             f"with objective=sft first, then objective={self.objective} with init_adapter")
        if self.objective != "sft" and self.task != "causal-lm":
            raise ValueError(f"objective={self.objective} trains a causal LM; use task=causal-lm")
        if self.init_adapter and self.method == "full":
            raise ValueError("init_adapter continues a PEFT adapter; for full fine-tuning point base= at the model")
        if self.preference.reference == "adapter-disabled" and self.method == "full":
            raise ValueError("preference.reference=adapter-disabled needs a PEFT method (full fine-tuning has no "
                             "adapter to disable); use reference=precomputed")
        if self.debias == "adversarial":
            if self.task != "classification":
                raise ValueError("debias=adversarial needs task=classification (it reads the classifier's pooled input)")
            if not self.adversary.attribute:
                raise ValueError("debias=adversarial needs adversary.attribute (a slice of the prepared data, e.g. group)")
            if self.distributed.backend == "ray":
                raise ValueError("debias=adversarial runs in one process for now; use distributed.backend=local")
        if self.packing and self.task != "causal-lm":
            raise ValueError("packing=true is for causal-lm (SFT) runs; set packing=false for classification")
        if self.packing and self.group_by_length:
            raise ValueError("packing=true already fills rows; drop group_by_length (it only applies to unpacked batches)")
        if self.packing and self.objective != "sft":
            raise ValueError(f"packing=true packs SFT examples; objective={self.objective} compares whole "
                             "sequences: set packing=false")
        workers = self.distributed.workers
        if self.batch_size % workers:
            raise ValueError(f"batch_size {self.batch_size} is the global batch and must be a multiple of "
                             f"distributed.workers ({workers}); try batch_size={workers * max(1, self.batch_size // workers)}")
        return self

    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(f"{self.output}.checkpoints")

    def artifact_name(self) -> str:
        return self.name or Path(self.output).name
