"""oneDNN-packed Linear weights for CPU serving: the decode step's skinny matrix products, ~2x faster.

    count = prepack_linears(model)       # every plain nn.Linear on the CPU, float32 or bfloat16
    model(input_ids=...)                 # same outputs (to ~1e-6), each Linear through its packed weight

Why not `F.linear` (a measured reason, this box: 2-core AMD EPYC Zen 4, torch 2.13 CPU wheel): a decode
step multiplies 16 rows by every weight matrix. Through MKL's sgemm those 16 x 576 x 1 536 products of
SmolLM2-135M ran at ~33 GFLOP/s per thread, a third of the box's square-GEMM peak; oneDNN with each
weight reordered once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what
torch.compile's CPU freezing does) ran the same products at ~80 GFLOP/s, identical to 1e-6. A whole
batch-16 decode step of SmolLM2-135M went from ~190 ms to ~113 ms on one thread
(benchmarks/results/serving-smollm2-135m.md has the served numbers). Batch 1 and batch 64
gain as well (37 vs 47 ms and 193 vs 281 ms for all of the model's products).

What it costs and how it stays right:
- The packed copy sits beside the original weight (PEFT, DoRA and parity checks read `weight`):
  one more copy of the Linear weights in memory, ~0.43 GB for the 135M base in float32.
- A weight changed in place (`load_state_dict`, `copy_`) or replaced (`.data = ...`) is repacked at its
  next call: the pack remembers the weight's version counter and storage.
- Anything else runs `F.linear` as before: autograd (training), another device, an input dtype
  other than the weight's, a torch build without oneDNN, or a dtype this CPU's oneDNN cannot pack
  (bfloat16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT; `packs(dtype)` tries it once). A deep copy
  of a packed layer (PEFT's `modules_to_save`) starts with an empty pack, so it packs its own weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_DTYPES = (torch.float32, torch.bfloat16)
BATCH_HINT = 16  # the decode batch the packed layout is tuned for; other row counts run correctly too


def available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_PACKS: dict[torch.dtype, bool] = {}


def packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs and multiplies `dtype` weights on this CPU (tried once per dtype, on 8 x 8)."""
    if dtype not in _PACKS:
        try:
            with torch.no_grad():
                weight = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=dtype), BATCH_HINT)
                torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8, dtype=dtype), weight, None, "none", [], "")
            _PACKS[dtype] = True
        except RuntimeError:  # e.g. "bf16 path needs the cpu support avx_ne_convert or avx512bw, ..."
            _PACKS[dtype] = False
    return _PACKS[dtype]


class _Pack:
    """A weight's packed copy and which version of the weight it was made from; copies start empty."""

    __slots__ = ("tensor", "version", "pointer")

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self.version = -1
        self.pointer = 0

    def __deepcopy__(self, memo: dict) -> "_Pack":
        return _Pack()

    def __reduce__(self):
        return (_Pack, ())


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place version counter; 0 for an inference tensor, which has none (and which only
    inference-mode code, never the engine's, could change in place)."""
    try:
        return tensor._version
    except RuntimeError:
        return 0


class PackedLinear(torch.nn.Linear):
    """An nn.Linear whose inference forward runs oneDNN on a packed copy of its weight (made on first use)."""

    _pack: _Pack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (x.dtype != weight.dtype or x.device.type != "cpu" or weight.device.type != "cpu"
                or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
            return F.linear(x, weight, self.bias)
        pack, version = self._pack, _version(weight)
        if pack.tensor is None or pack.version != version or pack.pointer != weight.data_ptr():
            with torch.no_grad():
                pack.tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)
            pack.version, pack.pointer = version, weight.data_ptr()
        return torch.ops.mkldnn._linear_pointwise(x if x.is_contiguous() else x.contiguous(), pack.tensor,
                                                  self.bias, "none", [], "")


def prepack_linears(model: torch.nn.Module) -> int:
    """Switch every plain nn.Linear of `model` on the CPU with float32/bfloat16 weights to PackedLinear;
    returns how many were switched (0 on a torch build without oneDNN, none of a dtype this CPU's oneDNN
    cannot pack). Subclasses of nn.Linear
    (quantized, PEFT's own layers) are left alone; the Linear layers PEFT wraps are switched."""
    if not available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.device.type == "cpu" \
                and module.weight.dtype in PACKED_DTYPES and packs(module.weight.dtype):
            module.__class__ = PackedLinear
            module._pack = _Pack()
            count += 1
    return count
