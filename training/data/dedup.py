"""Exact and near-duplicate detection, shared by cleaning (dedup) and splitting (leakage check).

Exact duplicates compare a normalized key (case-folded, whitespace collapsed). Near duplicates
use MinHash LSH (datasketch) over character shingles to find candidates, then confirm each
candidate pair with the true Jaccard similarity of the shingle sets, so the MinHash estimate
never decides alone. `duplicate_clusters` joins both kinds into clusters (union-find).

    key = normalize_key("Hello  World")            # "hello world"
    clusters = duplicate_clusters(texts, threshold=0.85)   # cluster id per text
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

_SPACES = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalize_key(text: str) -> str:
    return _SPACES.sub(" ", text.casefold()).strip()


def shingles(text: str, k: int = 5) -> set[str]:
    norm = _normalize_for_shingles(text)
    if len(norm) <= k:
        return {norm}
    return {norm[i:i + k] for i in range(len(norm) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _normalize_for_shingles(text: str) -> str:
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.casefold())).strip()


def shingle_hashes(texts: list[str], k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every character k-gram of every text, computed for all texts at once.

    Returns (hashes, offsets): the k-grams of text i are hashes[offsets[i]:offsets[i+1]].
    A polynomial hash of the code points, finished with the murmur3 mixer, in numpy.
    """
    import numpy as np

    norms = [_normalize_for_shingles(t).ljust(k) for t in texts]
    lengths = np.array([len(n) for n in norms], dtype=np.int64)
    codes = np.frombuffer("".join(norms).encode("utf-32-le"), dtype=np.uint32)
    windows = len(codes) - k + 1
    h = np.zeros(max(windows, 0), dtype=np.uint32)
    for j in range(k):
        h = h * np.uint32(1000003) + codes[j:j + windows]
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    counts = lengths - k + 1
    take = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return h[take], np.concatenate([[0], np.cumsum(counts)])


def minhash_signatures(texts: list[str], num_perm: int = 64, k: int = 5, seed: int = 1) -> np.ndarray:
    """MinHash signatures (texts x num_perm, uint32): odd affine maps mod 2^32, min per text."""
    import numpy as np

    rng = np.random.RandomState(seed)
    a = (rng.randint(0, 1 << 31, num_perm, dtype=np.uint64) * 2 + 1).astype(np.uint32)
    b = rng.randint(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    hashes, offsets = shingle_hashes(texts, k)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    step = max(1, len(texts) * 100_000 // max(1, len(hashes)))
    for start in range(0, len(texts), step):
        stop = min(len(texts), start + step)
        part = hashes[offsets[start]:offsets[stop]]
        permuted = part[:, None] * a[None, :] + b[None, :]
        out[start:stop] = np.minimum.reduceat(permuted, offsets[start:stop] - offsets[start], axis=0)
    return out


def near_duplicate_pairs(texts: list[str], threshold: float = 0.85, num_perm: int = 64,
                         k: int = 5) -> list[tuple[int, int, float]]:
    """Pairs (earlier, later, jaccard) whose shingle Jaccard similarity is >= threshold."""
    if len(texts) < 2:
        return []
    from datasketch import LeanMinHash, MinHashLSH

    signatures = minhash_signatures(texts, num_perm, k)
    sets: dict[int, set[str]] = {}

    def shingle_set(i: int) -> set[str]:
        if i not in sets:
            sets[i] = shingles(texts[i], k)
        return sets[i]
    # Candidates are confirmed by exact Jaccard, so the bands are tuned for recall: a lower
    # LSH threshold and false negatives weighted 9x, trading some extra candidate checks.
    lsh = MinHashLSH(threshold=max(0.3, threshold - 0.15), num_perm=num_perm, weights=(0.1, 0.9))
    pairs: list[tuple[int, int, float]] = []
    for i, sig in enumerate(signatures):
        mh = LeanMinHash(seed=1, hashvalues=sig, scheme="affine32")
        for j in lsh.query(mh):
            sim = jaccard(shingle_set(i), shingle_set(j))
            if sim >= threshold:
                pairs.append((j, i, sim))
        lsh.insert(i, mh, check_duplication=False)
    return sorted(pairs)


def exact_groups(texts: Iterable[str]) -> list[int]:
    """Index of the first text with the same normalized key, for every text."""
    first: dict[str, int] = {}
    return [first.setdefault(normalize_key(t), i) for i, t in enumerate(texts)]


def duplicate_clusters(texts: list[str], threshold: float | None = 0.85, num_perm: int = 64,
                       k: int = 5) -> list[int]:
    """Cluster id (the smallest member index) per text, joining exact and near duplicates."""
    uf = UnionFind(len(texts))
    firsts = exact_groups(texts)
    for i, first in enumerate(firsts):
        uf.union(i, first)
    if threshold is not None:
        unique = sorted(set(firsts))
        for a, b, _ in near_duplicate_pairs([texts[i] for i in unique], threshold, num_perm, k):
            uf.union(unique[a], unique[b])
    return [uf.find(i) for i in range(len(texts))]
