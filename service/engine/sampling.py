"""Per-row token choice from a batch of logits: greedy, temperature, top-p, seeded generators, logprobs.

    generator = make_generator(seed)                       # any int64 seed; None: random
    token = choose_token(logits[i], params, generator)     # one row; raises only for that row

Numerically safe for any accepted value: a temperature below `MIN_TEMPERATURE` is greedy (dividing
by 1e-300 overflows to inf and softmax to NaN), top-p keeps at least the most likely token however
small top_p is, and a row whose probabilities are still not finite (NaN logits) raises
`SamplingError` for that row alone.
"""

from __future__ import annotations

import torch

from service.engine.types import SamplingParams

MIN_TEMPERATURE = 1e-5  # below: greedy. logits / 1e-5 stay finite in float32 for any logit below ~3e33
SEED_SPACE = 2**64  # torch generators take 0 .. 2**64 - 1; int64 seeds map onto it


class SamplingError(RuntimeError):
    """One row's logits cannot be sampled from (e.g. NaN); fails that row only."""


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed % SEED_SPACE if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return generator


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (1-D logits); the most
    likely token always stays (a top_p that rounds to 0 in float32 must not drop every token)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(-1) - probs >= top_p
    drop[0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(0, order, sorted_logits)


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token id from one row of logits (V,)."""
    if params.temperature < MIN_TEMPERATURE:
        return int(logits.argmax())
    probs = torch.softmax(top_p_filter(logits / params.temperature, params.top_p), dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise SamplingError("the model produced logits that cannot be sampled from (not finite)")
    return int(torch.multinomial(probs, 1, generator=generator)[0])


def token_logprobs(logprobs: torch.Tensor, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """Logprob of the chosen token and the k most likely alternatives (ids, logprobs) for one row."""
    chosen = float(logprobs[token])
    if k <= 0:
        return chosen, []
    values, ids = torch.topk(logprobs, k)
    return chosen, [(int(t), float(v)) for t, v in zip(ids, values)]
