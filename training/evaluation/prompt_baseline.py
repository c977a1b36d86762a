"""Prompt-engineering baselines: classify with an untuned causal LM by label likelihood, or with embeddings.

`LabelLikelihood` (a `Predictor`) asks a base causal LM to classify a text with a zero- or
few-shot prompt and picks the label whose tokens are most likely after the prompt (`score=`:
mean or summed log-probability of the label's tokens, or `calibrated`: the sum minus the same
label's sum after a content-free message, which removes the model's prior for long or common
labels, as in "Calibrate Before Use", Zhao et al. 2021). The prompt is `header + body`: the
header (instruction, label list, fixed few-shot examples) is the same for every row, so its KV
cache is computed once; each row's body extends a copy of it, and that row's KV is shared by
all label options: the labels' tokens form a trie run as one sequence with a 4D mask (each
token sees the prompt and its own label's earlier tokens), so no KV is copied per label. `share_prefix=False` runs every
(prompt, label) pair whole instead; both give the same scores (tests/test_prompt_baseline.py).

`EmbeddingClassifier` (a `Predictor`) is the encoder baseline: nearest centroid or kNN over
sentence embeddings of the training split. `FewShotPicker` chooses few-shot examples from the
training split: `random` (one seeded set for all rows) or `nearest` (the rows closest to each
query by embedding).

    scorer = LabelLikelihood(load_base("smollm2-135m"), labels, picker=FewShotPicker(train, 5, "nearest", embed))
    scorer.classify(["my card has not arrived"])[0].label
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any, Callable, Literal, Sequence

import numpy as np

from training.artifact.errors import ConfigError
from training.evaluation.predictions import ClassPrediction, Generation, ScoringUnsupported

Embed = Callable[[list[str]], np.ndarray]
INSTRUCTION = "Classify the message into exactly one of these categories: {labels}."
EXAMPLE = "Message: {text}\nCategory: {label}"
QUERY = "Message: {text}\nCategory:"
SENTINEL = "\x00PROMPT\x00"


def label_text(label: str, style: str = "words") -> str:
    """`card_arrival` -> `card arrival` (`words`), or the label as it is (`raw`)."""
    return label.replace("_", " ").strip() if style == "words" else label


class FewShotPicker:
    """Few-shot examples from training rows ({text, label}): seeded random, or nearest by embedding."""

    def __init__(self, rows: list[dict[str, Any]], shots: int, mode: Literal["random", "nearest"] = "random",
                 embed: Embed | None = None, seed: int = 0) -> None:
        if shots < 1 or not rows:
            raise ConfigError("few-shot prompting needs shots >= 1 and training rows", "set shots= and train_data=")
        if mode == "nearest" and embed is None:
            raise ConfigError("nearest few-shot selection needs an embedding model", "use selection=random")
        self.rows, self.shots, self.mode, self.embed = rows, min(shots, len(rows)), mode, embed
        self.fixed = random.Random(seed).sample(rows, self.shots) if mode == "random" else None
        self.matrix = embed([r["text"] for r in rows]) if mode == "nearest" else None

    def pick(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        if self.fixed is not None:
            return [self.fixed for _ in texts]
        sims = self.embed(texts) @ self.matrix.T
        # most similar last: the closest example sits right before the query
        return [[self.rows[i] for i in np.argsort(-row)[: self.shots][::-1]] for row in sims]


class LabelLikelihood:
    """A base causal LM as a classifier: argmax over label options of the label tokens' log-probability."""

    def __init__(self, loaded: Any, labels: Sequence[str], picker: FewShotPicker | None = None,
                 score: Literal["mean", "sum", "calibrated"] = "calibrated", label_style: str = "words", share_prefix: bool = True,
                 name: str | None = None, info: dict[str, Any] | None = None) -> None:
        import torch

        if not labels:
            raise ConfigError("label-likelihood classification needs the label names", "give training rows with labels")
        self._torch = torch
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.labels = list(labels)
        self.picker, self.score_mode, self.label_style, self.share_prefix = picker, score, label_style, share_prefix
        shots = f"{picker.shots}-shot-{picker.mode}" if picker else "zero-shot"
        self.name = name or f"{getattr(loaded, 'base_id', 'base')}-{shots}"
        self.info = {"transport": "baseline", "baseline": "label-likelihood", "base": getattr(loaded, "base_id", None),
                     "prompting": shots, "score": score, "share_prefix": share_prefix,
                     "trainable_parameters": 0, **(info or {})}
        self._chat = self._chat_frame()
        fixed = picker.fixed if picker is not None else None
        self.header_text = self._chat[0] + self._header(fixed)
        self.header_ids = self._ids(self.header_text, bos=True)
        self.label_ids = [self._ids(" " + label_text(lab, label_style)) for lab in self.labels]
        self._header_cache: Any = None
        self._cache_kwarg: str | None = None
        self._memo: dict[str, np.ndarray] = {}
        self._stats = {"rows": 0, "seconds": 0.0}  # shared with with_score() copies, like the memo
        self._prior: np.ndarray | None = None
        self._lengths = np.array([float(len(ids)) for ids in self.label_ids])
        if any(not ids for ids in self.label_ids):
            raise ConfigError("a label renders to no tokens", "give every label a non-empty name")
        self._build_trie()

    def _chat_frame(self) -> tuple[str, str]:
        """Text before and after the user message in the model's chat template ('' and '' without one)."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return "", ""
        rendered = tok.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                           add_generation_prompt=True)
        before, _, after = rendered.partition(SENTINEL)
        return before, after

    def _header(self, examples: list[dict[str, Any]] | None) -> str:
        names = ", ".join(label_text(lab, self.label_style) for lab in self.labels)
        parts = [INSTRUCTION.format(labels=names)]
        parts += [self._example(r) for r in examples or []]
        return "\n\n".join(parts) + "\n\n"

    def _example(self, row: dict[str, Any]) -> str:
        return EXAMPLE.format(text=row["text"].strip(), label=label_text(row["label"], self.label_style))

    def _body(self, text: str, examples: list[dict[str, Any]] | None) -> str:
        shots = "".join(self._example(r) + "\n\n" for r in examples or [])
        return shots + QUERY.format(text=text.strip()) + self._chat[1]

    def _ids(self, text: str, bos: bool = False) -> list[int]:
        tok = self.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if bos and not self._chat[0] and tok.bos_token_id is not None:
            ids = [tok.bos_token_id] + ids
        return ids

    def prompts(self, texts: list[str]) -> list[str]:
        """The full prompt each text is scored with (header + body), for reports and debugging."""
        per_row = self.picker.pick(texts) if self.picker and self.picker.mode == "nearest" else [None] * len(texts)
        return [self.header_text + self._body(t, ex) for t, ex in zip(texts, per_row)]

    def label_logprobs(self, texts: list[str]) -> np.ndarray:
        """(rows, labels) score of each label option after each row's prompt: the label tokens' mean or summed
        log-probability, or (`calibrated`) the sum minus the same label's sum after a content-free message."""
        sums = self._raw(texts)
        if self.score_mode == "sum":
            return sums
        if self.score_mode == "mean":
            return sums / self._lengths
        if self._prior is None:
            self._prior = self._raw_uncached(["N/A"], use_picker=False)[0]
        return sums - self._prior

    def _raw(self, texts: list[str]) -> np.ndarray:
        """Summed label log-probabilities, memoised per text (other score modes on the same rows are free)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            import time

            started = time.perf_counter()
            for text, row in zip(missing, self._raw_uncached(missing)):
                self._memo[text] = row
            self._stats["rows"] += len(missing)
            self._stats["seconds"] += time.perf_counter() - started
        return np.stack([self._memo[t] for t in texts])

    def _raw_uncached(self, texts: list[str], use_picker: bool = True) -> np.ndarray:
        nearest = use_picker and self.picker is not None and self.picker.mode == "nearest"
        per_row = self.picker.pick(texts) if nearest else [None] * len(texts)
        out = np.empty((len(texts), len(self.labels)))
        with self._torch.inference_mode():
            for i, (text, examples) in enumerate(zip(texts, per_row)):
                body = self._ids(self._body(text, examples))
                out[i] = self._shared(body) if self.share_prefix else self._whole(body)
        return out

    def with_score(self, score: str) -> "LabelLikelihood":
        """The same model, prompts and memoised scores, classifying by another score mode."""
        other = copy.copy(self)
        other.score_mode = score
        other.name = self.name.rsplit("@", 1)[0] + f"@{score}"
        other.info = {**self.info, "score": score}
        return other

    def _reduce(self, token_logprobs: Any) -> np.ndarray:
        return token_logprobs.sum(-1).double().numpy()

    def _label_batch(self):
        torch = self._torch
        width = max(len(ids) for ids in self.label_ids)
        ids = torch.full((len(self.label_ids), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for j, label in enumerate(self.label_ids):
            ids[j, : len(label)] = torch.tensor(label)
            mask[j, : len(label)] = True
        return ids, mask

    def _forward(self, ids: Any, cache: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        """(logits, cache) under either transformers spelling of the KV-cache argument."""
        if self._cache_kwarg is None:
            import inspect

            params = inspect.signature(self.model.forward).parameters
            self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_kwarg: cache}, **kwargs)
        return out.logits, getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    def _shared(self, body: list[int]) -> np.ndarray:
        """Header KV once per predictor, body KV once per row, then every label option in ONE sequence of
        batch 1: the label-token trie (labels sharing leading tokens share those positions), each node attending
        to the prompt and its own ancestors only (a 4D mask), so no KV is copied per label."""
        torch = self._torch
        if self._header_cache is None:
            _, self._header_cache = self._forward(torch.tensor([self.header_ids]))
        logits, cache = self._forward(torch.tensor([body]), copy.deepcopy(self._header_cache))
        first = logits[0, -1].float().log_softmax(-1)
        tokens, parents, depth, paths = self._trie
        prefix, n = len(self.header_ids) + len(body), len(tokens)
        allowed = torch.zeros((n, prefix + n), dtype=torch.bool)
        allowed[:, :prefix] = True
        allowed[:, prefix:] = self._ancestry
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
        positions = torch.tensor([[prefix + d for d in depth]])
        node_logits, _ = self._forward(torch.tensor([tokens]), cache, attention_mask=mask, position_ids=positions,
                                       cache_position=torch.arange(prefix, prefix + n))
        node_logprobs = node_logits[0].float().log_softmax(-1)
        token_ids = torch.tensor(tokens)
        parent_idx = torch.tensor([max(p, 0) for p in parents])
        from_parent = node_logprobs[parent_idx, token_ids]
        per_node = torch.where(torch.tensor(parents) < 0, first[token_ids], from_parent)
        return torch.stack([per_node[path].sum() for path in paths]).double().numpy()

    def _build_trie(self) -> None:
        """Nodes (token, parent index or -1, depth), each label's node path, and the ancestor-or-self matrix."""
        torch = self._torch
        tokens: list[int] = []
        parents: list[int] = []
        depth: list[int] = []
        children: dict[tuple[int, int], int] = {}
        paths = []
        for label in self.label_ids:
            node, path = -1, []
            for d, token in enumerate(label):
                key = (node, token)
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(token)
                    parents.append(node)
                    depth.append(d)
                node = children[key]
                path.append(node)
            paths.append(path)
        ancestry = torch.zeros((len(tokens), len(tokens)), dtype=torch.bool)
        for i in range(len(tokens)):
            node = i
            while node >= 0:
                ancestry[i, node] = True
                node = parents[node]
        self._trie, self._ancestry = (tokens, parents, depth, paths), ancestry

    def _whole(self, body: list[int]) -> np.ndarray:
        """Every (prompt, label) sequence run whole: the reference the shared path must match."""
        torch = self._torch
        prompt = self.header_ids + body
        ids, mask = self._label_batch()
        full = torch.cat([torch.tensor([prompt]).expand(ids.shape[0], -1), ids], dim=1)
        logits = self.model(input_ids=full).logits.float()
        start = len(prompt) - 1
        picked = logits[:, start:start + ids.shape[1]].log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return self._reduce(picked * mask)

    def classify(self, texts: list[str]) -> list[ClassPrediction]:
        out = predictions_from_scores(self.label_logprobs(list(texts)), self.labels)
        # compute time per row, also for a score mode that re-used memoised forward passes
        self.info["seconds_per_example"] = self._stats["seconds"] / max(self._stats["rows"], 1)
        return out

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Generation]:
        raise ConfigError(f"baseline {self.name} only classifies", "use it with classification data")

    def score(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        raise ScoringUnsupported(f"baseline {self.name} scores label options only")

    def render_instruction(self, instruction: str, input_text: str = "") -> str:
        return instruction

    def close(self) -> None:
        self.model = None
        self._header_cache = None


def predictions_from_scores(scores: np.ndarray, labels: Sequence[str], temperature: float = 1.0) -> list[ClassPrediction]:
    """Rows of per-label scores -> predictions with softmax-normalized scores (argmax label)."""
    z = scores / temperature
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = []
    for row in probs:
        ranked = {label: float(p) for label, p in zip(labels, row)}
        out.append(ClassPrediction(label=labels[int(row.argmax())], scores=ranked))
    return out


class EmbeddingClassifier:
    """Nearest centroid or cosine kNN over sentence embeddings of the training rows; no training."""

    def __init__(self, rows: list[dict[str, Any]], embed: Embed, method: Literal["centroid", "knn"] = "centroid",
                 k: int = 10, labels: Sequence[str] | None = None, name: str | None = None,
                 info: dict[str, Any] | None = None, matrix: np.ndarray | None = None) -> None:
        if not rows:
            raise ConfigError("the embedding baseline needs training rows", "set train_data= to labelled rows")
        if method not in ("centroid", "knn"):
            raise ConfigError(f"unknown embedding baseline {method!r}", "use centroid or knn")
        self.embed, self.method, self.k = embed, method, max(1, min(k, len(rows)))
        self.labels = list(labels or sorted({r["label"] for r in rows}))
        index = {label: i for i, label in enumerate(self.labels)}
        self.train_labels = np.array([index[r["label"]] for r in rows])
        self.matrix = _normalize(embed([r["text"] for r in rows]) if matrix is None else matrix)
        present = np.array([np.any(self.train_labels == i) for i in range(len(self.labels))])
        centroids = np.zeros((len(self.labels), self.matrix.shape[1]))
        for i in np.flatnonzero(present):
            centroids[i] = self.matrix[self.train_labels == i].mean(axis=0)
        self.centroids, self.present = _normalize(centroids), present
        self.name = name or f"embedding-{method}"
        self.info = {"transport": "baseline", "baseline": f"embedding-{method}", "k": self.k if method == "knn" else None,
                     "trainable_parameters": 0, **(info or {})}

    def label_scores(self, texts: list[str]) -> np.ndarray:
        query = _normalize(self.embed(list(texts)))
        if self.method == "centroid":
            sims = query @ self.centroids.T
            return np.where(self.present, sims, -np.inf)
        sims = query @ self.matrix.T
        votes = np.zeros((len(texts), len(self.labels)))
        for row, neighbours in enumerate(np.argsort(-sims, axis=1)[:, : self.k]):
            np.add.at(votes[row], self.train_labels[neighbours], np.maximum(sims[row, neighbours], 0) + 1e-6)
        return votes / votes.sum(axis=1, keepdims=True)

    def classify(self, texts: list[str]) -> list[ClassPrediction]:
        scores = self.label_scores(texts)
        if self.method == "knn":
            return [ClassPrediction(self.labels[int(r.argmax())], dict(zip(self.labels, map(float, r)))) for r in scores]
        return predictions_from_scores(scores, self.labels, temperature=0.05)  # cosine gaps are small

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Generation]:
        raise ConfigError(f"baseline {self.name} only classifies", "use it with classification data")

    def score(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        raise ScoringUnsupported(f"baseline {self.name} has no token probabilities")

    def render_instruction(self, instruction: str, input_text: str = "") -> str:
        return instruction

    def close(self) -> None:
        pass


def _normalize(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def encoder_embedder(base: str, batch_size: int = 64, max_length: int = 128) -> Embed:
    """Mean-pooled, L2-normalised sentence embeddings from an encoder base (MiniLM: the profile encoder)."""
    from training.artifact.paths import MINILM

    if base == MINILM:
        from training.artifact.profile import embed_texts

        return lambda texts: embed_texts(texts, batch_size=batch_size, max_length=max_length)
    from training.artifact.loading import load_base

    loaded = load_base(base, task="embedding")

    def embed(texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = loaded.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                                       return_tensors="pt")
                hidden = loaded.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).float().numpy())
        return _normalize(np.concatenate(out)) if out else np.zeros((0, 1))

    return embed


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Wilson interval of a proportion (per-example 0/1 correctness)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    p = float(np.mean(values))
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half
