"""Per-row token choice from a batch of logits: greedy, temperature, top-p, seeded generators, logprobs."""

from __future__ import annotations

import torch

from service.engine.types import SamplingParams


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return generator


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (1-D logits)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(0, order, sorted_logits)


def choose_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> torch.Tensor:
    """One token id per row of `logits` (B, V)."""
    tokens = logits.argmax(dim=-1)
    for i, p in enumerate(params):
        if p.temperature > 0.0:
            row = top_p_filter(logits[i] / p.temperature, p.top_p)
            probs = torch.softmax(row, dim=-1)
            tokens[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return tokens


def token_logprobs(logprobs: torch.Tensor, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """Logprob of the chosen token and the k most likely alternatives (ids, logprobs) for one row."""
    chosen = float(logprobs[token])
    if k <= 0:
        return chosen, []
    values, ids = torch.topk(logprobs, k)
    return chosen, [(int(t), float(v)) for t, v in zip(ids, values)]
