"""`tuneserve plan`: memory estimates for full / lora / qlora / prompt tuning, and a recommendation.

Given a model (a size like `7b`/`350m`, or a reference/path whose config and safetensors
headers are read), the task, the data size and the memory available, each method gets an
estimate of weights + gradients + optimizer states + activations:

- weights: P x bytes (2 for bf16 on GPU, 4 for fp32 on CPU); QLoRA: the block linears at 4 bit
  (0.5 B + ~6% scales), embeddings and heads at full width
- trainable T: full = P; LoRA = r x (in + out) per targeted linear (from the safetensors shapes when
  `lora_target_modules` names them, else q and v of width hidden); prompt tuning = virtual tokens x hidden
- gradients: T x 4; AdamW states: T x 8 (two fp32 moments); mixed precision adds a 4 B master copy
- activations (no recomputation), per token and layer, in values of the compute width:
  10 h + 4 i (norms, projections, SwiGLU/GELU MLP) + 4 heads x s when attention dropout is on (the
  probabilities, their dropout and mask are kept); LoRA-family methods add in + out per targeted
  linear (+ in / 4 for the dropout mask when lora_dropout > 0); a causal LM adds 5 x vocab per token
  for the logits and the loss (shifted copy, log-softmax, their gradients).

The activation terms were counted from the saved tensors of a Llama and a BERT layer and checked
against measured peaks: `python benchmarks/memory.py` (P9: each estimate within 0.75-1.25 of the
peak RSS of full, LoRA and QLoRA training of the tiny Llama and MiniLM on CPU).

    result = plan(PlanRequest(model="7b", gpu_memory_gb=24, rows=20000, batch_size=1))
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from training.artifact.config import StrictModel
from training.artifact.errors import ConfigError

ENV_PREFIX = "TUNESERVE_PLAN__"
GB = 1024 ** 3
SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmbt]?)\s*$", re.IGNORECASE)
SCALE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
FOUR_BIT_OVERHEAD = 1.06
HEADROOM = 0.9  # plan to use at most 90% of the memory given
PREFERENCE = ("full", "lora", "qlora", "prompt")
HEAD_NAMES = ("lm_head", "score", "classifier")  # kept at full width by the 4-bit loader
EMBEDDING_NAMES = ("embed", "wte", "wpe", "position", "token_type", "shared")


class PlanRequest(StrictModel):
    model: str = Field("tiny-llama", description="a size (7b, 350m, 1.3e9) or a model reference/path")
    task: Literal["causal-lm", "classification"] = "causal-lm"
    rows: int = Field(1000, gt=0, description="training rows")
    seq_len: int = Field(512, gt=0)
    batch_size: int = Field(4, gt=0)
    gpu_memory_gb: float | None = Field(None, gt=0)
    cpu_memory_gb: float | None = Field(None, gt=0)
    lora_r: int = Field(8, gt=0)
    lora_targets_per_layer: int = Field(2, gt=0, description="projections LoRA targets per layer (q, v); "
                                        "used when lora_target_modules is not given or the model is only a size")
    lora_target_modules: list[str] | None = Field(None, description="LoRA targets by module name (as in the "
                                                   "training config); sized from the model's safetensors shapes")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    virtual_tokens: int = Field(20, gt=0)
    vocab_size: int | None = Field(None, gt=0, description="default: from the model config, else 32000")
    full_min_rows: int = Field(50_000, gt=0, description="below this, full fine-tuning is not worth it over LoRA")

    @model_validator(mode="after")
    def _memory_given(self) -> PlanRequest:
        if self.gpu_memory_gb is None and self.cpu_memory_gb is None:
            raise ValueError("give gpu_memory_gb or cpu_memory_gb (the memory training may use)")
        return self


@dataclass
class ModelShape:
    params: int
    hidden: int
    layers: int
    heads: int
    vocab: int
    source: str
    intermediate: int = 0  # MLP width (0: 8/3 x hidden, a SwiGLU Llama's)
    attention_dropout: bool = False
    block_linear_params: int | None = None  # what QLoRA quantizes (None: all but the embeddings)
    linears: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # leaf name -> (in, out) of each

    @property
    def mlp(self) -> int:
        return self.intermediate or round(8 * self.hidden / 3)


@dataclass
class Candidate:
    method: str
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    fits: bool

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def parse_size(text: str) -> int | None:
    match = SIZE_RE.match(text)
    if not match:
        try:
            return int(float(text))
        except ValueError:
            return None
    return int(float(match.group(1)) * SCALE[match.group(2).lower()])


def shape_from_size(params: int, vocab: int | None) -> ModelShape:
    """Llama-like proportions: P ~ 12 L h^2 with h / L ~ 128."""
    hidden = max(64, int(round((params * 128 / 12) ** (1 / 3))))
    layers = max(1, round(hidden / 128))
    return ModelShape(params, hidden, layers, max(1, hidden // 128), vocab or 32000, "size (Llama-like shape assumed)")


def safetensors_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Every tensor's shape, read from the safetensors headers (no weights loaded)."""
    shapes: dict[str, list[int]] = {}
    for path in model_dir.glob("*.safetensors"):
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(size))
        shapes.update({name: meta["shape"] for name, meta in header.items() if name != "__metadata__"})
    return shapes


def safetensors_params(model_dir: Path) -> int:
    return sum(math.prod(shape) for shape in safetensors_shapes(model_dir).values())


def shape_from_dir(model_dir: Path, vocab: int | None) -> ModelShape:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    hidden = config.get("hidden_size") or config.get("d_model") or config.get("n_embd")
    layers = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers")
    heads = config.get("num_attention_heads") or config.get("n_head") or max(1, hidden // 64)
    shapes = safetensors_shapes(model_dir)
    linears: dict[str, list[tuple[int, int]]] = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        if len(shape) == 2 and parts[-1] == "weight" and not any(k in name for k in EMBEDDING_NAMES):
            linears.setdefault(parts[-2], []).append((shape[1], shape[0]))
    dropout = config.get("attention_probs_dropout_prob", config.get("attention_dropout", 0.0)) or 0.0
    return ModelShape(sum(math.prod(s) for s in shapes.values()), hidden, layers, heads,
                      vocab or config.get("vocab_size", 32000), str(model_dir),
                      intermediate=config.get("intermediate_size") or config.get("n_inner") or 0,
                      attention_dropout=dropout > 0,
                      block_linear_params=sum(i * o for name, pairs in linears.items() for i, o in pairs
                                              if name not in HEAD_NAMES),
                      linears=linears)


def model_shape(req: PlanRequest) -> ModelShape:
    params = parse_size(req.model)
    if params:
        return shape_from_size(params, req.vocab_size)
    from training.artifact import resolve_base_dir

    try:
        return shape_from_dir(resolve_base_dir(req.model), req.vocab_size)
    except Exception as exc:  # noqa: BLE001 - any failure is "we could not size this model"
        raise ConfigError(f"cannot size model {req.model!r} ({exc})",
                          "pass a size like model=7b or a local model directory") from None


def lora_linears(req: PlanRequest, shape: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of every linear LoRA targets: by name from the model's shapes, else q and v of width h."""
    if req.lora_target_modules and shape.linears:
        found = [pair for name in req.lora_target_modules for pair in shape.linears.get(name, [])]
        if found:
            return found
    return [(shape.hidden, shape.hidden)] * (req.lora_targets_per_layer * shape.layers)


def activation_values(req: PlanRequest, shape: ModelShape, method: str) -> float:
    """Values kept for the backward pass of one batch (see the module docstring)."""
    b, s, h, layers = req.batch_size, req.seq_len, shape.hidden, shape.layers
    per_token = layers * (10 * h + 4 * shape.mlp + (4 * shape.heads * s if shape.attention_dropout else 0))
    if method in ("lora", "qlora"):
        targets = lora_linears(req, shape)
        per_token += sum(i + o for i, o in targets)
        if req.lora_dropout > 0:
            per_token += sum(i for i, _ in targets) / 4
    if req.task == "causal-lm":
        per_token += 5 * shape.vocab
    return b * s * per_token


def estimate(req: PlanRequest, shape: ModelShape, method: str, on_gpu: bool, budget: float) -> Candidate:
    wbytes = 2 if on_gpu else 4
    master = 4 if on_gpu else 0
    p, h = shape.params, shape.hidden
    lora = sum(req.lora_r * (i + o) for i, o in lora_linears(req, shape))
    trainable = {"full": p, "lora": lora, "qlora": lora, "prompt": req.virtual_tokens * h}
    t = trainable[method]
    if method == "qlora":
        quantized = shape.block_linear_params if shape.block_linear_params is not None else p - shape.vocab * h
        weights = quantized * 0.5 * FOUR_BIT_OVERHEAD + (p - quantized) * wbytes
    else:
        weights = p * wbytes
    if method == "full":
        weights += p * master
    else:
        weights += t * (wbytes + master)
    cand = Candidate(method, t, weights, t * 4, t * 8, activation_values(req, shape, method) * wbytes, False)
    cand.fits = cand.total <= budget * HEADROOM
    return cand


def recommend(req: PlanRequest, cands: dict[str, Candidate], device: str) -> tuple[str | None, str]:
    fitting = [m for m in PREFERENCE if cands[m].fits]
    if not fitting:
        return None, (f"nothing fits in the {device} memory given; lower batch_size or seq_len, "
                      "use gradient checkpointing, or a smaller model")
    if "full" in fitting and req.rows >= req.full_min_rows:
        return "full", f"full fine-tuning fits and {req.rows} rows are enough to use its capacity"
    for method in ("lora", "qlora", "prompt"):
        if method in fitting:
            why = {"lora": "fits with room to spare; near full-fine-tuning quality with a small adapter",
                   "qlora": "full-precision LoRA does not fit; the 4-bit base does",
                   "prompt": "only prompt tuning fits; expect lower quality than LoRA"}[method]
            if method == "lora" and "full" in fitting:
                why += f" (full fits too, but {req.rows} rows < {req.full_min_rows} rarely justify it)"
            return method, why
    return "full", "only full fine-tuning fits"


def lora_advice(req: PlanRequest) -> dict[str, str]:
    """One line per LoRA variant (the `lora.*` options of the training config), fitted to the request."""
    r = req.lora_r
    rank = "recommended" if r >= 32 else f"little effect at r={r}; worth it from r >= 32"
    small = req.rows < 10_000
    return {
        "rslora": f"lora.use_rslora=true scales updates by alpha/sqrt(r) so high ranks keep learning ({rank})",
        "loraplus": "lora.loraplus_lr_ratio=16 trains the B matrices 16x faster: often faster convergence at "
                    "the same cost; lower the ratio if the loss spikes",
        "neftune": ("lora.neftune_alpha=5 adds embedding noise while training: helps instruction tuning"
                    + (f" on small datasets like yours ({req.rows} rows)" if small else " most on small datasets")
                    if req.task == "causal-lm" else "lora.neftune_alpha: meant for instruction tuning, skip it for classification"),
        "init": "lora.init=pissa (or olora) starts from the base's principal directions: faster convergence; "
                "saved as a rank-2r adapter for the original base; full-precision base only (not qlora)",
    }


def packing_advice(req: PlanRequest) -> str:
    """One line on sequence packing (the `packing` option of the training config) for causal-LM runs."""
    return (f"packing=true fills each {req.seq_len}-token row with several examples (attention kept within each): "
            "fewer padded tokens, so more real tokens/s when lengths vary (alpaca_en_demo at 512 tokens, batches of 8: "
            "44% of batch tokens are padding, <1% packed); batch_size then counts packed rows")


def recipe_advice(req: PlanRequest) -> str:
    """What `epochs=auto optim.lr=auto optim.warmup_ratio=auto` would pick for this request (training.train.recipes)."""
    from training.train.config import TrainConfig
    from training.train.recipes import IMBALANCE_FOR_WEIGHTS, REFIT_MAX_VAL_ERRORS, DataShape, pick_recipe

    cfg = TrainConfig(task=req.task, batch_size=req.batch_size, epochs="auto", optim={"lr": "auto", "warmup_ratio": "auto"})
    got = pick_recipe(cfg, DataShape(rows=req.rows, mean_tokens=req.seq_len / 2)).config
    line = (f"epochs=auto optim.lr=auto optim.warmup_ratio=auto pick {got.epochs:g} epochs, lr {got.optim.lr:g} (LoRA), "
            f"warm-up {got.optim.warmup_ratio:g} for {req.rows} rows")
    if req.task == "classification":
        line += (f" (more epochs with many labels); class_weighting=auto turns on balanced weights at a "
                 f"largest/smallest class ratio >= {IMBALANCE_FOR_WEIGHTS:g}; refit stays off (measured no "
                 f"better); refit=auto retrains on train + validation when validation made fewer than "
                 f"{REFIT_MAX_VAL_ERRORS} errors")
    return line + "; measured against a plain loop in benchmarks/results/recipes.md"


def plan(req: PlanRequest) -> dict[str, Any]:
    shape = model_shape(req)
    on_gpu = req.gpu_memory_gb is not None
    budget = (req.gpu_memory_gb if on_gpu else req.cpu_memory_gb) * GB
    device = "GPU" if on_gpu else "CPU"
    cands = {m: estimate(req, shape, m, on_gpu, budget) for m in PREFERENCE}
    choice, reason = recommend(req, cands, device)
    return {"request": req.model_dump(), "model": asdict(shape), "device": device, "budget_bytes": budget,
            "candidates": [{**asdict(c), "total": c.total} for c in cands.values()],
            "recommendation": choice, "reason": reason,
            "advice": {**({**lora_advice(req), "recipe": recipe_advice(req)} if choice in ("lora", "qlora") else {}),
                       **({"packing": packing_advice(req)} if req.task == "causal-lm" else {})}}


def render_plan(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    shape = result["model"]
    table = Table(title=f"{shape['params'] / 1e6:,.1f}M params on {result['device']} "
                        f"({result['budget_bytes'] / GB:.1f} GiB)")
    for col in ("method", "trainable", "weights", "grads", "optimizer", "activations", "total", "fits"):
        table.add_column(col, justify="right" if col not in ("method", "fits") else "left")
    for c in result["candidates"]:
        gib = [f"{c[k] / GB:.2f} GiB" for k in ("weights", "gradients", "optimizer", "activations", "total")]
        table.add_row(c["method"], f"{c['trainable']:,}", *gib, "yes" if c["fits"] else "[red]no[/]")
    console.print(table)
    console.print(f"[bold]recommendation:[/] {result['recommendation'] or 'none'} — {result['reason']}")
    for line in result.get("advice", {}).values():
        console.print(f"  [dim]tip:[/] {line}")
