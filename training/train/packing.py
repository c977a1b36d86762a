"""Sequence packing for SFT: several examples in one row, no attention across them (`packing=true`).

Tokenized examples (`{"input_ids", "labels"}` from `training.train.templates`) are put into bins
of at most `max_length` tokens by first-fit-decreasing (longest first, each into the first bin
with room). A packed row keeps every example's labels (loss stays on response / assistant tokens
only), restarts `position_ids` at 0 for each example, and records the example lengths
(`seq_lens`). `collate_packed` turns packed rows into a batch with an explicit 4D boolean
block-diagonal causal mask `[batch, 1, L, L]`: a token sees only earlier tokens of its own
example. An explicit mask is used rather than transformers' detection of packed sequences from
`position_ids` (which it only does when no 2D mask and no KV cache are passed) so the isolation
does not depend on those conditions (the Llama forward makes a cache whenever `use_cache` is on).
It needs the default `sdpa` attention (CPU and GPU); eager attention would add a boolean mask.

The loop shuffles the packed rows with its usual seeded per-epoch order, so `batch_size` counts
packed rows. Validation stays unpacked (padded), so `val_loss` means the same with or without
packing.

    rows = pack_examples(examples, max_length=256)          # fewer, fuller rows
    batch = collate_packed(rows[:8], pad_id)                 # input_ids, labels, position_ids, attention_mask
    packing_report(examples, rows, batch_size=8)   # rows and padding share before / after
"""

from __future__ import annotations

from typing import Any

from training.artifact.errors import ConfigError
from training.train.templates import IGNORE_INDEX, pad_causal

# Methods whose virtual tokens change the sequence the mask must cover (prefix / prompt tuning).
UNPACKABLE_METHODS = ("prefix", "prompt", "p-tuning")


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= capacity (longest first, first bin that fits)."""
    if capacity <= 0:
        raise ValueError("capacity must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        size = min(lengths[i], capacity)
        for b, left in enumerate(room):
            if size <= left:
                bins[b].append(i)
                room[b] -= size
                break
        else:
            bins.append([i])
            room.append(capacity - size)
    return bins


def pack_examples(examples: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Packed rows: input_ids, labels (each example's first label masked), position_ids, seq_lens."""
    clipped = [{"input_ids": e["input_ids"][:max_length], "labels": e["labels"][:max_length]}
               for e in examples if e["input_ids"]]
    rows = []
    for members in first_fit_decreasing([len(e["input_ids"]) for e in clipped], max_length):
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        lens: list[int] = []
        for i in members:
            e = clipped[i]
            n = len(e["input_ids"])
            ids += e["input_ids"]
            # The first token of an example is never a target on its own (nothing precedes it);
            # masking it keeps the previous example's last token from being trained to predict it.
            labels += [IGNORE_INDEX] + e["labels"][1:]
            positions += list(range(n))
            lens.append(n)
        rows.append({"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lens": lens})
    return rows


def block_causal_mask(seq_lens: list[list[int]], width: int):
    """Boolean [batch, 1, width, width]: True where query i may attend key j (same example, j <= i).
    The padded tail of a row is one more block, so no row of the mask is empty."""
    import torch

    mask = torch.zeros((len(seq_lens), 1, width, width), dtype=torch.bool)
    for b, lens in enumerate(seq_lens):
        start = 0
        for n in list(lens) + ([width - sum(lens)] if sum(lens) < width else []):
            mask[b, 0, start:start + n, start:start + n] = True
            start += n
    return mask & torch.ones((width, width), dtype=torch.bool).tril()


def collate_packed(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """A batch of packed rows (right-padded), or of plain examples (validation) via `pad_causal`."""
    import torch

    if not any("seq_lens" in r for r in rows):
        return pad_causal(rows, pad_id)
    rows = [r if "seq_lens" in r else {**r, "position_ids": list(range(len(r["input_ids"]))),
                                       "seq_lens": [len(r["input_ids"])]} for r in rows]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[b, :n] = torch.tensor(r["input_ids"])
        labels[b, :n] = torch.tensor(r["labels"])
        positions[b, :n] = torch.tensor(r["position_ids"])
        positions[b, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions,
            "attention_mask": block_causal_mask([r["seq_lens"] for r in rows], width)}


def _pad_fraction(lengths: list[list[int]]) -> float:
    """Padding share of batches: each batch is as wide as its longest row."""
    real = sum(sum(batch) for batch in lengths)
    total = sum(max(batch) * len(batch) for batch in lengths if batch)
    return 1.0 - real / total if total else 0.0


def padding_fraction(examples: list[dict[str, Any]], batch_size: int) -> float:
    """Padding share of unpacked batches of `batch_size` examples in the given order."""
    lens = [len(e["input_ids"]) for e in examples]
    return _pad_fraction([lens[i:i + batch_size] for i in range(0, len(lens), batch_size)])


def packing_report(examples: list[dict[str, Any]], rows: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Rows before and after packing and the padding share of batches of each (examples in data order)."""
    return {"examples": len(examples), "packed_rows": len(rows),
            "padding_fraction_unpacked": round(padding_fraction(examples, batch_size), 4),
            "padding_fraction_packed": round(padding_fraction(rows, batch_size), 4)}


def check_packable(method: str, task: str, attn_implementation: str | None) -> None:
    """Refuse setups the block mask cannot describe, with a hint."""
    if task != "causal-lm":
        raise ConfigError("packing=true is for causal-lm (SFT) runs", "set packing=false for classification")
    if method in UNPACKABLE_METHODS:
        raise ConfigError(f"packing=true does not work with method={method} (its virtual tokens are outside the "
                          "packed mask)", "use a LoRA-family method, ia3 or full, or packing=false")
    if attn_implementation not in (None, "sdpa"):
        raise ConfigError(f"packing=true needs sdpa attention (a boolean 4D mask), the model uses {attn_implementation}",
                          "load the base with sdpa attention, or set packing=false")
