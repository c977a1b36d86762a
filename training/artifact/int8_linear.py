"""int8 Linear with per-token dynamic activations: the runtime of `torch-int8` artifacts.

torch's dynamic-int8 Linear quantizes a whole input tensor with one (7-bit) scale, so one
outlier token or channel (Llama-family MLPs reach 100-400x the RMS) erases every other
value of the batch. Here each token (row) is first divided by its own max-abs, so the
same fbgemm kernel then quantizes every row with full relative precision, and the
result is scaled back per row: y = dyn(x / r) * r + b, weights int8 per output channel.

    module = PerTokenInt8Linear(q_weight, weight_scale, bias)   # q_weight int8 [out, in]
"""

from __future__ import annotations

import torch


class PerTokenInt8Linear(torch.nn.Module):
    def __init__(self, q_weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        from training.artifact.quantized import int8_linear

        self.out_features, self.in_features = q_weight.shape
        self.inner = int8_linear(q_weight, weight_scale, None)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.float()
        scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
        out = self.inner(rows / scale) * scale
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activations=per-token int8"
