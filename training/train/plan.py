"""`tuneserve plan`: memory estimates for full / lora / qlora / prompt tuning, and a recommendation.

Given a model (a size like `7b`/`350m`, or a reference/path whose config and safetensors
headers are read), the task, the data size and the memory available, each method gets an
estimate of weights + gradients + optimizer states + activations:

- weights: P x bytes (2 for bf16 on GPU, 4 for fp32 on CPU; 4-bit base = 0.5 B + ~6% scales)
- trainable T: full = P; LoRA = r x (in + out) per targeted projection (q, v by default);
  prompt tuning = virtual tokens x hidden
- gradients: T x 4; AdamW states: T x 8 (two fp32 moments); mixed precision adds a 4 B master copy
- activations (no recomputation): L x b x s x h x 34 x bytes/2 + L x 5 x heads x s^2 x b x bytes/2, plus logits b x s x V x 4

    result = plan(PlanRequest(model="7b", gpu_memory_gb=24, rows=20000, batch_size=1))
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass
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


class PlanRequest(StrictModel):
    model: str = Field("tiny-llama", description="a size (7b, 350m, 1.3e9) or a model reference/path")
    task: Literal["causal-lm", "classification"] = "causal-lm"
    rows: int = Field(1000, gt=0, description="training rows")
    seq_len: int = Field(512, gt=0)
    batch_size: int = Field(4, gt=0)
    gpu_memory_gb: float | None = Field(None, gt=0)
    cpu_memory_gb: float | None = Field(None, gt=0)
    lora_r: int = Field(8, gt=0)
    lora_targets_per_layer: int = Field(2, gt=0, description="projections LoRA targets per layer (q, v)")
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


def safetensors_params(model_dir: Path) -> int:
    total = 0
    for path in model_dir.glob("*.safetensors"):
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for dim in meta["shape"]:
                    count *= dim
                total += count
    return total


def shape_from_dir(model_dir: Path, vocab: int | None) -> ModelShape:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    hidden = config.get("hidden_size") or config.get("d_model") or config.get("n_embd")
    layers = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers")
    heads = config.get("num_attention_heads") or config.get("n_head") or max(1, hidden // 64)
    return ModelShape(safetensors_params(model_dir), hidden, layers, heads, vocab or config.get("vocab_size", 32000),
                      str(model_dir))


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


def estimate(req: PlanRequest, shape: ModelShape, method: str, on_gpu: bool, budget: float) -> Candidate:
    wbytes = 2 if on_gpu else 4
    master = 4 if on_gpu else 0
    p, h, layers = shape.params, shape.hidden, shape.layers
    trainable = {"full": p, "lora": req.lora_r * 2 * h * req.lora_targets_per_layer * layers,
                 "prompt": req.virtual_tokens * h}
    trainable["qlora"] = trainable["lora"]
    t = trainable[method]
    weights = p * 0.5 * FOUR_BIT_OVERHEAD if method == "qlora" else p * wbytes
    if method == "full":
        weights += p * master
    else:
        weights += t * (wbytes + master)
    b, s = req.batch_size, req.seq_len
    activations = layers * b * s * h * 34 * wbytes / 2 + layers * 5 * shape.heads * s * s * b * wbytes / 2
    if req.task == "causal-lm":
        activations += b * s * shape.vocab * 4
    cand = Candidate(method, t, weights, t * 4, t * 8, activations, False)
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


def plan(req: PlanRequest) -> dict[str, Any]:
    shape = model_shape(req)
    on_gpu = req.gpu_memory_gb is not None
    budget = (req.gpu_memory_gb if on_gpu else req.cpu_memory_gb) * GB
    device = "GPU" if on_gpu else "CPU"
    cands = {m: estimate(req, shape, m, on_gpu, budget) for m in PREFERENCE}
    choice, reason = recommend(req, cands, device)
    return {"request": req.model_dump(), "model": asdict(shape), "device": device, "budget_bytes": budget,
            "candidates": [{**asdict(c), "total": c.total} for c in cands.values()],
            "recommendation": choice, "reason": reason}


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
