"""Reference profile of an artifact's training inputs, the baseline for drift detection.

`build_reference_profile` records what the model saw in training: input length
distributions (characters and tokens: histogram edges, counts, quantiles), vocabulary
statistics (top tokens, unknown and rare token fractions), optionally a sample of
MiniLM sentence embeddings, and for classifiers the label and confidence distributions.
The JSON goes to `reference_profile.json`; the embedding sample to
`reference_embeddings.safetensors` beside it. The service compares live traffic to it.

    profile = build_reference_profile(texts, tokenizer, labels=preds, confidences=conf)
    write_reference_profile(artifact_tmp_dir, profile)   # the array in profile["embedding_sample"] goes to safetensors
    profile, emb = read_reference_profile(load_artifact(path))
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from training.artifact.manifest import PROFILE_NAME

EMBEDDINGS_NAME = "reference_embeddings.safetensors"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
TOP_TOKENS = 50
RARE_COUNT = 1
_ENCODER: dict[str, Any] = {}


def distribution(values: list[float], bins: int = 20) -> dict[str, Any]:
    """Histogram (edges + counts), quantiles, mean and std of a list of numbers."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"count": 0, "edges": [], "counts": [], "quantiles": {}, "mean": None, "std": None}
    counts, edges = np.histogram(arr, bins=bins)
    return {"count": int(arr.size), "edges": edges.tolist(), "counts": counts.tolist(),
            "quantiles": {str(q): float(np.quantile(arr, q)) for q in QUANTILES},
            "mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())}


def _minilm():
    if "model" not in _ENCODER:
        from transformers import AutoModel, AutoTokenizer

        from training.artifact.paths import MINILM, resolve_base_dir

        model_dir = resolve_base_dir(MINILM)
        _ENCODER["tokenizer"] = AutoTokenizer.from_pretrained(str(model_dir))
        _ENCODER["model"] = AutoModel.from_pretrained(str(model_dir), use_safetensors=True).eval()
    return _ENCODER["tokenizer"], _ENCODER["model"]


def embed_texts(texts: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 sentence embeddings, shape (n, 384)."""
    import torch

    tokenizer, model = _minilm()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    dim = model.config.hidden_size
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), dtype=np.float32)


def vocabulary_stats(token_ids: list[list[int]], tokenizer: Any) -> dict[str, Any]:
    counts = Counter(t for ids in token_ids for t in ids)
    total = sum(counts.values())
    unk = getattr(tokenizer, "unk_token_id", None)
    rare = sum(c for c in counts.values() if c <= RARE_COUNT)
    top = counts.most_common(TOP_TOKENS)
    return {"total_tokens": total, "distinct_tokens": len(counts), "vocab_size": len(tokenizer),
            "unknown_fraction": (counts.get(unk, 0) / total) if total and unk is not None else 0.0,
            "rare_fraction": rare / total if total else 0.0,
            "top_tokens": [{"id": int(t), "token": tokenizer.convert_ids_to_tokens(int(t)), "fraction": c / total}
                           for t, c in top]}


def build_reference_profile(texts: list[str], tokenizer: Any, labels: list[str] | None = None,
                            confidences: list[float] | None = None, embed: bool = True, sample: int = 256,
                            seed: int = 0) -> dict[str, Any]:
    """Profile of `texts` (the model inputs). With `embed`, `profile["embedding_sample"]` holds the
    (n, 384) float32 sample; `write_reference_profile` stores it as safetensors, not JSON."""
    token_ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    profile: dict[str, Any] = {
        "schema_version": 1,
        "rows": len(texts),
        "chars": distribution([len(t) for t in texts]),
        "tokens": distribution([len(ids) for ids in token_ids]),
        "vocabulary": vocabulary_stats(token_ids, tokenizer),
    }
    if labels is not None:
        counts = Counter(labels)
        profile["labels"] = {str(k): v / len(labels) for k, v in sorted(counts.items())}
    if confidences is not None:
        profile["confidence"] = distribution(list(confidences))
    if embed and texts:
        chosen = sorted(random.Random(seed).sample(range(len(texts)), min(sample, len(texts))))
        embeddings = embed_texts([texts[i] for i in chosen])
        profile["embeddings"] = {"file": EMBEDDINGS_NAME, "model": "all-minilm-l6-v2", "count": len(chosen),
                                 "dim": int(embeddings.shape[1]), "pooling": "mean", "normalized": True}
        profile["embedding_sample"] = embeddings
    return profile


def write_reference_profile(directory: str | Path, profile: dict[str, Any], embeddings: np.ndarray | None = None) -> None:
    from safetensors.numpy import save_file

    directory = Path(directory)
    profile = dict(profile)
    sample = profile.pop("embedding_sample", None)
    embeddings = sample if embeddings is None else embeddings
    (directory / PROFILE_NAME).write_text(json.dumps(profile, indent=2), encoding="utf-8")
    if embeddings is not None:
        save_file({"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}, str(directory / EMBEDDINGS_NAME))


def read_reference_profile(artifact: Any) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """(profile, embeddings) of a verified `Artifact`; (None, None) when it has no profile."""
    from safetensors.numpy import load_file

    if PROFILE_NAME not in artifact.manifest.files:
        return None, None
    profile = json.loads(artifact.file(PROFILE_NAME).read_text(encoding="utf-8"))
    embeddings = None
    if EMBEDDINGS_NAME in artifact.manifest.files:
        embeddings = load_file(str(artifact.file(EMBEDDINGS_NAME)))["embeddings"]
    return profile, embeddings
