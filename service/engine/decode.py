"""A running decode batch over one model: prefill, step-wise decode, join and leave at any step.

`DecodeBatch` is continuous batching at the token level: `admit(rows)` prefills new rows
(identical prompts on the same adapter are prefilled once and their KV cache copied — prefix
reuse for n > 1 and repeated prompts) and merges their KV cache into the running one
(left-padded); `step()` decodes one token for every active row. Finished, cancelled and
failed rows leave after each step, and cache columns no row needs are trimmed.

Rows may use different adapters: the registry's `Target.forward` runs them through batched
multi-LoRA (`multilora.py`) or PEFT's `adapter_names=[...]`. Everything here runs in the engine thread; the model lock
is held only around each forward pass so adapters can be loaded between steps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from service.engine.sampling import choose_tokens, make_generator, token_logprobs
from service.engine.text import TextTracker
from service.engine.types import Event, GenRow, TokenLogprob


@dataclass
class ActiveRow:
    row: GenRow
    tracker: TextTracker
    generator: torch.Generator
    produced: int = 0
    buffered: list[TokenLogprob] = field(default_factory=list)


class DecodeBatch:
    def __init__(self, target: Callable[[], Any], tokenizer: Any, lock: threading.Lock) -> None:
        self.target = target  # () -> registry Target: asked at every step, its adapters may change
        self.tokenizer = tokenizer
        self.lock = lock
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = getattr(target().model.config, "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {e for e in [*eos, tokenizer.eos_token_id] if e is not None}
        self.active: list[ActiveRow] = []
        self.cache: DynamicCache | None = None
        self.attn: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.active)

    def _forward(self, input_ids, attn, cache, adapters: list[str | None]):
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        target = self.target()
        mask = full_attention_mask(attn, input_ids.shape[1], target.model)
        with self.lock, torch.inference_mode():
            out = target.forward(adapters, input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                 cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def admit(self, rows: list[GenRow]) -> None:
        """Prefill `rows`, emit their first token and join them to the running batch."""
        keys: dict[tuple, int] = {}
        unique: list[GenRow] = []
        expand = []
        for row in rows:
            key = (tuple(row.prompt_ids), row.adapter)
            if key not in keys:
                keys[key] = len(unique)
                unique.append(row)
            expand.append(keys[key])
        width = max(len(r.prompt_ids) for r in unique)
        ids = torch.full((len(unique), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(unique), width), dtype=torch.long)
        for i, row in enumerate(unique):
            n = len(row.prompt_ids)
            ids[i, width - n:] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attn[i, width - n:] = 1
        cache = DynamicCache()
        logits = self._forward(ids, attn, cache, [r.adapter for r in unique])
        if len(unique) != len(rows):
            index = torch.tensor(expand, dtype=torch.long)
            cache.batch_select_indices(index)
            logits, attn = logits[index], attn[index]
        new = [ActiveRow(r, TextTracker(self.tokenizer, r.params.stop), make_generator(_row_seed(r))) for r in rows]
        tokens = self._choose(new, logits)
        keep = self._finish_rows(new, tokens)
        if not keep:
            return
        if len(keep) != len(new):
            index = torch.tensor(keep, dtype=torch.long)
            cache.batch_select_indices(index)
            new, attn, tokens = [new[i] for i in keep], attn[index], tokens[index]
        self._merge(new, cache, attn, tokens)

    def step(self) -> None:
        """Decode one token for every active row."""
        assert self.attn is not None and self.pending is not None
        self.attn = torch.cat([self.attn, torch.ones((len(self.active), 1), dtype=torch.long)], dim=1)
        logits = self._forward(self.pending[:, None], self.attn, self.cache, [a.row.adapter for a in self.active])
        tokens = self._choose(self.active, logits)
        keep = self._finish_rows(self.active, tokens)
        if len(keep) != len(self.active):
            self._select(keep)
        self.pending = tokens[keep] if keep else None

    def fail(self, exc: BaseException) -> None:
        for active in self.active:
            active.row.stream.put(Event(index=active.row.index, error=exc))
            active.row.release()
        self.active, self.cache, self.attn, self.pending = [], None, None, None

    def _choose(self, rows: list[ActiveRow], logits: torch.Tensor) -> torch.Tensor:
        params = [a.row.params for a in rows]
        tokens = choose_tokens(logits, params, [a.generator for a in rows])
        if any(p.logprobs is not None for p in params):
            logprobs = torch.log_softmax(logits, dim=-1)
            for i, a in enumerate(rows):
                k = a.row.params.logprobs
                if k is not None:
                    chosen, top = token_logprobs(logprobs[i], int(tokens[i]), k)
                    a.buffered.append(TokenLogprob(self._piece(int(tokens[i])), chosen,
                                                   [(self._piece(t), v) for t, v in top]))
        return tokens

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _merge(self, rows: list[ActiveRow], cache: DynamicCache, attn: torch.Tensor, tokens: torch.Tensor) -> None:
        if self.cache is None or not self.active:
            self.active, self.cache, self.attn, self.pending = list(rows), cache, attn, tokens
            return
        width = max(self.attn.shape[1], attn.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], dim=0)
        self.attn = torch.cat([F.pad(self.attn, (width - self.attn.shape[1], 0)), F.pad(attn, (width - attn.shape[1], 0))])
        self.pending = torch.cat([self.pending, tokens])
        self.active.extend(rows)

    def _finish_rows(self, rows: list[ActiveRow], tokens: torch.Tensor) -> list[int]:
        """Emit each row's new token; return the positions of rows that go on."""
        keep = []
        for i, active in enumerate(rows):
            row = active.row
            if row.stream.cancelled.is_set():
                row.release()
                continue
            token = int(tokens[i])
            active.produced += 1
            reason = None
            if token in self.eos_ids:
                text, reason = active.tracker.flush(), "stop"
            else:
                text, stopped = active.tracker.push(token)
                if stopped:
                    reason = "stop"
                elif active.produced >= row.params.max_tokens:
                    text, reason = text + active.tracker.flush(), "length"
            if text or reason or active.buffered:
                row.stream.put(Event(index=row.index, text=text, logprobs=active.buffered, finish_reason=reason,
                                     completion_tokens=active.produced))
                active.buffered = []
            if reason is None:
                keep.append(i)
            else:
                row.release()
        return keep

    def _select(self, keep: list[int]) -> None:
        self.active = [self.active[i] for i in keep]
        if not keep:
            self.cache, self.attn = None, None
            return
        index = torch.tensor(keep, dtype=torch.long)
        self.cache.batch_select_indices(index)
        self.attn = self.attn[index]
        used = self.attn.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0:
            self.attn = self.attn[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]


def full_attention_mask(attn: torch.Tensor, q_len: int, model: Any) -> torch.Tensor:
    """The (batch, 1, q_len, kv_len) causal + padding mask for a torch model's sdpa/eager attention, or
    the 2D padding mask for anything else. Building it here is cheap; transformers' generic builder
    (vmap over mask functions) took about a third of every decode step on the tiny base."""
    kind = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if kind not in ("sdpa", "eager") or not isinstance(model, torch.nn.Module):
        return attn
    kv_len = attn.shape[1]
    allowed = attn[:, None, None, :].bool()
    if q_len > 1:
        query = torch.arange(kv_len - q_len, kv_len)[:, None]
        keys = torch.arange(kv_len)[None, :]
        # a left-pad query row sees itself, so no row is fully masked (softmax over nothing is NaN)
        allowed = (allowed & (keys <= query)) | (keys == query)
    if kind == "sdpa":
        return allowed
    dtype = getattr(model, "dtype", torch.float32)
    dtype = dtype if dtype.is_floating_point else torch.float32
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, 0, width - t.shape[2], 0))


def _row_seed(row: GenRow) -> int | None:
    seed = row.params.seed
    return None if seed is None else seed + row.index
