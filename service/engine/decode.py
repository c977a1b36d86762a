"""A running decode batch over one model: prefill, step-wise decode, join and leave at any step.

`DecodeBatch` is continuous batching at the token level: `admit(rows)` prefills new rows
(identical prompts on the same adapter are prefilled once and their KV cache copied — prefix
reuse for n > 1 and repeated prompts) and merges their KV cache into the running one
(left-padded); `step()` decodes one token for every active row, writing its KV column into spare room
(kv.py) rather than copying the cache. Finished, cancelled and failed rows leave after each step, and
cache columns no row needs are trimmed. With a `PrefixCache`
(prefix_cache.py), a row's prefill continues from the KV of its longest cached prompt prefix (per
target, adapter slot and API key) and only the rest of its prompt runs; each prefill's prompt KV is
stored for later requests.

Each row brings its own options (`SamplingParams`): min_tokens masks end-of-sequence and stop ids
until reached, ignore_eos, stop_token_ids, stop strings kept or cut, and echo with logprobs, whose
prompt logprobs come from the prefill's logits (all positions, only in a prefill holding such a row).

A row with a grammar (structured output, service/structured.py) has its own matcher: its logits are
masked to the tokens the grammar allows (all constrained rows of a step in one call), the matcher
advances with each accepted token, and the row finishes with "stop" when the grammar terminates;
end-of-sequence is then the grammar's to allow (min_tokens and ignore_eos do not hold it back).

Rows may use different adapters: the registry's `Target.forward` runs them through batched
multi-LoRA (`multilora.py`) or PEFT's `adapter_names=[...]`. Everything here runs in the engine thread; the model lock
is held only around each forward pass so adapters can be loaded between steps.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from service import metrics
from service.engine.kv import growable
from service.engine.prefix_cache import PrefixCache, past_for_rows, row_layers
from service.engine.sampling import SamplingError, choose_token, make_generator, token_logprobs
from service.engine.text import TextTracker
from service.engine.types import Event, GenRow, TokenLogprob
from service.structured import Masker, grammar_vocab, new_matcher

log = logging.getLogger("tuneserve.service.decode")


@dataclass
class ActiveRow:
    row: GenRow
    tracker: TextTracker
    generator: torch.Generator
    produced: int = 0
    buffered: list[TokenLogprob] = field(default_factory=list)
    matcher: Any = None  # the row's grammar matcher (structured output), None when unconstrained


class DecodeBatch:
    def __init__(self, target: Callable[[], Any], tokenizer: Any, lock: threading.Lock,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.target = target  # () -> registry Target: asked at every step, its adapters may change
        self.prefix_cache = prefix_cache  # shared by the engine's batches (keys name the target)
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
        self.masker: Masker | None = None

    def __len__(self) -> int:
        return len(self.active)

    def _forward(self, input_ids, attn, cache, adapters: list[str | None], every_position: bool = False):
        """The next-token logits (batch, V), or with `every_position` those of every position (batch, T, V)."""
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        target = self.target()
        mask = full_attention_mask(attn, input_ids.shape[1], target.model)
        with self.lock, torch.inference_mode():
            out = target.forward(adapters, input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                 cache=cache, use_cache=True, logits_to_keep=0 if every_position else 1)
        return out.logits.float() if every_position else out.logits[:, -1, :].float()

    def admit(self, rows: list[GenRow]) -> None:
        """Prefill `rows`, emit their first token and join them to the running batch. A prefill that
        fails is retried in halves, so only rows that fail on their own get the error, never their
        neighbours (the running batch is untouched until the merge)."""
        started = time.monotonic()
        try:
            new, cache, attn, tokens, failed = self._prefill(rows)
        except Exception as exc:  # noqa: BLE001 - isolate the rows that cause it
            if len({(tuple(r.prompt_ids), r.adapter) for r in rows}) == 1:
                log.warning("prefill failed for %d row(s): %s: %s", len(rows), type(exc).__name__, exc)
                self._fail_rows(rows, exc)
                return
            half = len(rows) // 2
            self.admit(rows[:half])
            self.admit(rows[half:])
            return
        ended = time.monotonic()
        for row in rows:  # where a request's latency goes: queue wait (scheduler), prefill, decode
            row.decoding_since = ended
            metrics.prefill_done(row.model, ended - started)
        keep = self._finish_rows(new, tokens, failed)
        if not keep:
            return
        if len(keep) != len(new):
            index = torch.tensor(keep, dtype=torch.long)
            cache.batch_select_indices(index)
            new, attn, tokens = [new[i] for i in keep], attn[index], tokens[index]
        self._merge(new, cache, attn, tokens)

    def _prefill(self, rows: list[GenRow]):
        """The prompt forward pass of `rows` (identical prompts on one adapter once) and their first tokens."""
        keys: dict[tuple, int] = {}
        unique: list[GenRow] = []
        expand = []
        for row in rows:  # rows wanting prompt logprobs (echo) share a prefill only with rows wanting the same
            key = (tuple(row.prompt_ids), row.adapter, row.params.logprobs if row.params.prompt_logprobs else None)
            if key not in keys:
                keys[key] = len(unique)
                unique.append(row)
            expand.append(keys[key])
        hits = self._cached_prefixes(unique)
        rest = [r.prompt_ids[h[0]:] if h else r.prompt_ids for r, h in zip(unique, hits)]
        width = max(len(ids) for ids in rest)
        ids = torch.full((len(unique), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(unique), width), dtype=torch.long)
        for i, row_ids in enumerate(rest):
            ids[i, width - len(row_ids):] = torch.tensor(row_ids, dtype=torch.long)
            attn[i, width - len(row_ids):] = 1
        cache, past = past_for_rows(hits)  # [cached prefix][remaining tokens], each part left-padded
        attn = torch.cat([past, attn], dim=1)
        echo = any(r.params.prompt_logprobs for r in unique)
        logits = self._forward(ids, attn, cache, [r.adapter for r in unique], every_position=echo)
        self._keep_prefixes(unique, hits, cache, attn)
        prompt = [self._prompt_logprobs(r, logits[i]) if r.params.prompt_logprobs else [] for i, r in enumerate(unique)]
        logits = logits[:, -1, :] if echo else logits
        if len(unique) != len(rows):
            index = torch.tensor(expand, dtype=torch.long)
            cache.batch_select_indices(index)
            logits, attn = logits[index], attn[index]
        new = [ActiveRow(r, TextTracker(self.tokenizer, r.params.stop, r.params.include_stop_str),
                         make_generator(_row_seed(r)), buffered=list(prompt[expand[i]]),
                         matcher=new_matcher(r.grammar) if r.grammar is not None else None) for i, r in enumerate(rows)]
        tokens, failed = self._choose(new, logits)
        return new, cache, attn, tokens, failed

    def _cached_prefixes(self, rows: list[GenRow]) -> list:
        """Each row's longest cached prompt prefix on its adapter (None: none, or a row wanting prompt
        logprobs, whose every position must run)."""
        if self.prefix_cache is None:
            return [None] * len(rows)
        key, hits = self.target().key, []
        for row in rows:
            hit = None if row.params.prompt_logprobs else self.prefix_cache.lookup((key, row.adapter, row.scope),
                                                                                          row.prompt_ids)
            if not row.params.prompt_logprobs:
                metrics.prefix_cache_lookup(row.model, hit[0] if hit else 0)
            hits.append(hit)
        return hits

    def _keep_prefixes(self, rows: list[GenRow], hits: list, cache, attn: torch.Tensor) -> None:
        """Store each row's prompt KV (its whole blocks) unless its hit already covered them."""
        if self.prefix_cache is None:
            return
        key, block = self.target().key, self.prefix_cache.block_tokens
        for i, (row, hit) in enumerate(zip(rows, hits)):
            length = len(row.prompt_ids) // block * block
            if length and (hit is None or hit[0] < length):
                try:
                    self.prefix_cache.store((key, row.adapter, row.scope), row.prompt_ids,
                                            row_layers(cache, attn, i, length))
                except Exception as exc:  # noqa: BLE001 - a prefix not kept never fails the request
                    log.warning("prefix cache store failed: %s: %s", type(exc).__name__, exc)
        metrics.prefix_cache_size(self.prefix_cache.bytes)

    def _prompt_logprobs(self, row: GenRow, logits: torch.Tensor) -> list[TokenLogprob]:
        """The logprob of each prompt token given the ones before it (the first: None), with the
        row's top alternatives; `logits` (T, V) are the row's left-padded prefill logits."""
        ids = row.prompt_ids
        k = row.params.logprobs or 0
        logprobs = torch.log_softmax(logits[logits.shape[0] - len(ids):-1], dim=-1)
        out = [TokenLogprob(self._piece(ids[0]), None)]
        for position, token in enumerate(ids[1:]):
            chosen, top = token_logprobs(logprobs[position], token, k)
            out.append(TokenLogprob(self._piece(token), chosen, [(self._piece(t), v) for t, v in top]))
        return out

    def step(self) -> None:
        """Decode one token for every active row. When the batched forward pass fails, rows are
        tried one by one: those that fail alone get the error and leave, the rest decode on."""
        assert self.attn is not None and self.pending is not None
        attn = torch.cat([self.attn, torch.ones((len(self.active), 1), dtype=torch.long)], dim=1)
        try:
            logits = self._forward(self.pending[:, None], attn, self.cache, [a.row.adapter for a in self.active])
        except Exception as exc:
            truncate_cache(self.cache, self.attn.shape[1])  # layers that ran before the failure appended a column
            self._drop_culprits(exc)
            return
        self.attn = attn
        tokens, failed = self._choose(self.active, logits)
        keep = self._finish_rows(self.active, tokens, failed)
        if len(keep) != len(self.active):
            self._select(keep)
        self.pending = tokens[keep] if keep else None

    def _drop_culprits(self, exc: Exception) -> None:
        """Fail the rows whose next step fails on its own (each on a copy of its cache); re-raise when
        none does (the failure is the batch's, e.g. out of memory: every row fails)."""
        culprits = []
        for i, active in enumerate(self.active):
            index = torch.tensor([i], dtype=torch.long)
            alone = DynamicCache([(layer.keys[index], layer.values[index]) for layer in self.cache.layers])
            attn = torch.cat([self.attn[index], torch.ones((1, 1), dtype=torch.long)], dim=1)
            try:
                self._forward(self.pending[index][:, None], attn, alone, [active.row.adapter])
            except Exception as own:  # noqa: BLE001
                culprits.append((i, own))
        if not culprits:
            raise exc
        log.warning("decode step failed for %d of %d rows: %s: %s", len(culprits), len(self.active),
                    type(exc).__name__, exc)
        for i, own in culprits:
            self._fail_rows([self.active[i].row], own)
        failed = {i for i, _ in culprits}
        keep = [i for i in range(len(self.active)) if i not in failed]
        self._select(keep)
        self.pending = self.pending[keep] if keep else None

    def fail(self, exc: BaseException) -> None:
        self._fail_rows([a.row for a in self.active], exc)
        self.active, self.cache, self.attn, self.pending = [], None, None, None

    @staticmethod
    def _fail_rows(rows: list[GenRow], exc: BaseException) -> None:
        for row in rows:
            row.release()
            row.stream.put(Event(index=row.index, error=exc))

    def _choose(self, rows: list[ActiveRow], logits: torch.Tensor) -> tuple[torch.Tensor, dict[int, Exception]]:
        """Each row's next token (and logprobs); a row whose sampling fails is reported, not raised."""
        waiting = [i for i, a in enumerate(rows) if a.produced < a.row.params.min_tokens and a.matcher is None]
        constrained = [(i, a.matcher) for i, a in enumerate(rows) if a.matcher is not None]
        if logits.device.type != "cpu":  # a GPU: greedy rows need only the argmax back, anything else the logits
            per_row = waiting or constrained or any(a.row.params.temperature > 0.0 or a.row.params.logprobs is not None
                                                    for a in rows)
            if not per_row:
                return logits.argmax(dim=-1).cpu(), {}
            logits = logits.cpu()
        if waiting or constrained:  # a copy: the logits are inference tensors
            logits = logits.clone()
            for i in waiting:  # end-of-sequence and stop ids wait for min_tokens
                logits[i, self._stop_ids(rows[i].row.params, logits.shape[-1])] = float("-inf")
        failed: dict[int, Exception] = {}
        if constrained:
            if self.masker is None:
                self.masker = Masker(grammar_vocab(self.tokenizer, self.target().model))
            failed.update(self.masker.apply(logits, constrained))
        tokens = logits.argmax(dim=-1)
        logprobs = torch.log_softmax(logits, dim=-1) if any(a.row.params.logprobs is not None for a in rows) else None
        for i, a in enumerate(rows):
            params = a.row.params
            if params.max_tokens == 0 or i in failed:  # echo alone: the prompt's logprobs, no token
                continue
            try:
                if params.temperature > 0.0:
                    tokens[i] = choose_token(logits[i], params, a.generator)
                if logprobs is not None and params.logprobs is not None:
                    chosen, top = token_logprobs(logprobs[i], int(tokens[i]), params.logprobs)
                    a.buffered.append(TokenLogprob(self._piece(int(tokens[i])), chosen,
                                                   [(self._piece(t), v) for t, v in top]))
            except Exception as exc:  # noqa: BLE001 - fails this row only
                log.warning("sampling failed for one row: %s: %s", type(exc).__name__, exc)
                failed[i] = exc
        return tokens, failed

    def _stop_ids(self, params, vocab: int) -> list[int]:
        return [t for t in {*self.eos_ids, *params.stop_token_ids} if 0 <= t < vocab]

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _merge(self, rows: list[ActiveRow], cache: DynamicCache, attn: torch.Tensor, tokens: torch.Tensor) -> None:
        if self.cache is None or not self.active:
            self.active, self.cache, self.attn, self.pending = list(rows), growable(cache), attn, tokens
            return
        width = max(self.attn.shape[1], attn.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], dim=0)
        self.attn = torch.cat([F.pad(self.attn, (width - self.attn.shape[1], 0)), F.pad(attn, (width - attn.shape[1], 0))])
        self.pending = torch.cat([self.pending, tokens])
        self.active.extend(rows)

    def _finish_rows(self, rows: list[ActiveRow], tokens: torch.Tensor, failed: dict[int, Exception]) -> list[int]:
        """Emit each row's new token (or its own error); return the positions of rows that go on."""
        keep = []
        for i, active in enumerate(rows):
            row = active.row
            if i in failed:
                self._fail_rows([row], failed[i])
                continue
            if row.stream.cancelled.is_set():
                row.release()
                continue
            try:
                text, reason = self._advance(active, int(tokens[i]))
            except SamplingError as exc:  # fails this row only
                self._fail_rows([row], exc)
                continue
            if reason is None:
                keep.append(i)
            else:  # before the last event: the request's adapter slot is free once its reply is complete
                row.release()
                if row.decoding_since:
                    metrics.decode_finished(row.model, time.monotonic() - row.decoding_since)
            if text or reason or active.buffered:
                row.stream.put(Event(index=row.index, text=text, logprobs=active.buffered, finish_reason=reason,
                                     completion_tokens=active.produced))
                active.buffered = []
        return keep

    def _advance(self, active: ActiveRow, token: int) -> tuple[str, str | None]:
        """Add a row's new token: (text to emit, finish reason or None)."""
        params, tracker = active.row.params, active.tracker
        if params.max_tokens == 0:
            return tracker.flush(), "length"
        active.produced += 1
        if active.matcher is not None:
            if not active.matcher.accept_token(token):
                raise SamplingError(f"token {token} does not continue the row's grammar")
            if active.matcher.is_terminated():  # the grammar's end (its end-of-sequence token)
                return active.tracker.flush(), "stop"
        if token in params.stop_token_ids:  # its text only with include_stop_str_in_output
            text = tracker.push(token, check_stop=False)[0] if params.include_stop_str else ""
            return text + tracker.flush(), "stop"
        if token in self.eos_ids and not params.ignore_eos:
            return tracker.flush(), "stop"
        text, stopped = tracker.push(token, check_stop=active.produced >= params.min_tokens)
        if stopped:
            return text, "stop"
        if active.produced >= params.max_tokens:
            return text + tracker.flush(), "length"
        return text, None

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


def truncate_cache(cache, length: int) -> None:
    """Cut every layer of a KV cache back to `length` positions. Layers may differ (those that ran
    before a failure appended a column, the rest did not), so each is cut to the absolute length:
    transformers 5's `crop` only removes a relative count from all layers alike."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4:
            layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
