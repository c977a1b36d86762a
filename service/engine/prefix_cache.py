"""Cross-request prefix cache: the KV cache of prompt prefixes, reused by later prompts that share them.

    cache = PrefixCache(max_bytes=256 << 20, block_tokens=16)
    scope = (target_key, slot, api_key_id)
    hit = cache.lookup(scope, prompt_ids)       # (length, [(keys, values) per layer]) or None
    cache.store(scope, prompt_ids, layers)      # layers: per layer (keys, values) of [H, T, D]

Keys are (scope, token prefix), the scope naming the model target, the adapter slot and the API key:
a LoRA adapter changes K and V, so each adapter slot (a new slot per loaded version; slots are never
reused) and the bare base (slot None) have their own entries, and a full-model artifact (another
target) its own; entries are per API key like the response cache's (engine/cache.py), so no tenant
learns from its time to first token which prefixes another tenant sent. Prefixes are matched in blocks of
`block_tokens`: every block boundary of a stored prompt is indexed by a chained hash of the token ids
up to it (hash of the previous boundary's hash and the block), so a lookup walks the new prompt's
boundaries once (O(prompt length)) and takes the longest one some entry holds, slicing that entry's
KV. Block alignment keeps the index small (one hash per block) and lets one stored prompt serve every
shorter prompt sharing a block-aligned start (a system prompt followed by different user turns).
A lookup never covers the whole prompt: at least its last token is prefilled (its logits pick the
first token). Hash collisions are ruled out by comparing the entry's token ids before use.

Bounded by bytes (the KV tensors' size): least recently used entries go first; an entry larger than
the whole budget is not kept. Runs in the engine thread only (no lock).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [heads, tokens, head_dim]


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    layers: Layers
    nbytes: int
    boundaries: list[int]  # the hashes of its block boundaries (index keys)


class PrefixCache:
    def __init__(self, max_bytes: int = 256 << 20, block_tokens: int = 16) -> None:
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        self.entries: OrderedDict[int, _Entry] = OrderedDict()  # id -> entry, least recently used first
        self.index: dict[int, dict[int, None]] = {}  # boundary hash -> ids of entries holding that prefix
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._next_id = 0

    def _boundaries(self, scope: tuple, tokens: list[int] | tuple[int, ...], blocks: int) -> list[int]:
        """Chained hashes of the first 1..blocks blocks of `tokens` within `scope`."""
        out, current, size = [], hash(scope), self.block_tokens
        for b in range(blocks):
            current = hash((current, tuple(tokens[b * size:(b + 1) * size])))
            out.append(current)
        return out

    def lookup(self, scope: tuple, prompt_ids: list[int]) -> tuple[int, Layers] | None:
        """The longest cached block-aligned prefix of `prompt_ids` (shorter than the prompt) within
        `scope`: (its length, its KV per layer, sliced), or None."""
        blocks = (len(prompt_ids) - 1) // self.block_tokens
        if self.max_bytes <= 0 or blocks <= 0 or not self.entries:
            self.misses += 1
            return None
        boundaries = self._boundaries(scope, prompt_ids, blocks)
        for b in range(blocks, 0, -1):
            length = b * self.block_tokens
            for entry_id in self.index.get(boundaries[b - 1], {}):
                entry = self.entries[entry_id]
                if entry.tokens[:length] == tuple(prompt_ids[:length]):
                    self.entries.move_to_end(entry_id)
                    self.hits += 1
                    return length, [(k[:, :length], v[:, :length]) for k, v in entry.layers]
        self.misses += 1
        return None

    def store(self, scope: tuple, prompt_ids: list[int], layers: Layers) -> bool:
        """Keep the KV of `prompt_ids`' whole blocks (`layers` may hold more positions: they are cut).
        Skipped when an entry already holds that whole prefix or it exceeds the budget; True when kept."""
        blocks = len(prompt_ids) // self.block_tokens
        if self.max_bytes <= 0 or blocks <= 0:
            return False
        length = blocks * self.block_tokens
        boundaries = self._boundaries(scope, prompt_ids, blocks)
        tokens = tuple(prompt_ids[:length])
        for entry_id in self.index.get(boundaries[-1], {}):
            if self.entries[entry_id].tokens[:length] == tokens:
                self.entries.move_to_end(entry_id)
                return False
        kept = [(k[:, :length].clone(), v[:, :length].clone()) for k, v in layers]
        nbytes = sum(k.nbytes + v.nbytes for k, v in kept)
        if nbytes > self.max_bytes:
            return False
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self.entries[entry_id] = _Entry(tokens, kept, nbytes, boundaries)
        for boundary in boundaries:
            self.index.setdefault(boundary, {})[entry_id] = None
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))
        return True

    def _drop(self, entry_id: int) -> None:
        entry = self.entries.pop(entry_id)
        self.bytes -= entry.nbytes
        for boundary in entry.boundaries:
            holders = self.index.get(boundary)
            if holders is not None:
                holders.pop(entry_id, None)
                if not holders:
                    del self.index[boundary]

    def clear(self) -> None:
        self.entries.clear()
        self.index.clear()
        self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "bytes": self.bytes, "hits": self.hits, "misses": self.misses}


def past_for_rows(hits: list[tuple[int, Layers] | None]) -> tuple[object, torch.Tensor]:
    """A batch KV cache holding each row's cached prefix, left-padded to the longest, and its
    attention mask (rows, longest): what a prefill of the rows' remaining tokens continues from.
    No hit at all: an empty cache and a (rows, 0) mask."""
    from transformers import DynamicCache

    width = max((h[0] for h in hits if h is not None), default=0)
    attn = torch.zeros((len(hits), width), dtype=torch.long)
    if width == 0:
        return DynamicCache(), attn
    like = next(h[1] for h in hits if h is not None)
    layers = []
    for layer, (k0, v0) in enumerate(like):
        keys = k0.new_zeros((len(hits), k0.shape[0], width, k0.shape[2]))
        values = v0.new_zeros((len(hits), v0.shape[0], width, v0.shape[2]))
        for row, hit in enumerate(hits):
            if hit is not None:
                length, kv = hit
                keys[row, :, width - length:] = kv[layer][0]
                values[row, :, width - length:] = kv[layer][1]
        layers.append((keys, values))
    for row, hit in enumerate(hits):
        if hit is not None:
            attn[row, width - hit[0]:] = 1
    return DynamicCache(layers), attn


def row_layers(cache, attn: torch.Tensor, row: int, length: int) -> Layers:
    """Row `row`'s KV at its first `length` real (unmasked) positions of a batch cache."""
    real = attn[row].nonzero()[:length, 0]
    return [(layer.keys[row][:, real], layer.values[row][:, real]) for layer in cache.layers]
