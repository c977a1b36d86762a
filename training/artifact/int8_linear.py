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


def int8_linear(q, scale, bias):
    """A torch dynamic-int8 Linear from per-row int8 weights (per-output-channel scales)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    out_features, in_features = q.shape
    module = DynamicLinear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
    qweight = torch._make_per_channel_quantized_tensor(q.contiguous(), scale.double(),
                                                       torch.zeros(out_features, dtype=torch.long), 0)
    module.set_weight_bias(qweight, None if bias is None else bias.float())
    return module



class PerTokenInt8Linear(torch.nn.Module):
    def __init__(self, q_weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
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
