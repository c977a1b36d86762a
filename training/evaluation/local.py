"""`LocalPredictor`: evaluate an artifact (adapter, merged, quantized, onnx) or an HF model directory in-process.

Artifacts are verified with `training.artifact.load_artifact` before use. An adapter is
attached to the base named in its manifest (`manifest.base.id`), and the base's fingerprint
must match `manifest.base.sha256`. Plain HF directories (no manifest.json) are loaded as
bases. Greedy decoding, batched with left padding; latency per sample is the batch's wall
time divided by its size.

    p = LocalPredictor("artifacts/banking77-lora", task="classification")
    p.classify(["my card has not arrived"])[0].label
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from training.artifact import MANIFEST_NAME, load_artifact, sha256_file
from training.artifact.errors import ConfigError
from training.evaluation.predictions import ClassPrediction, Generation
from training.evaluation.prompts import render_instruction


def model_task(eval_task: str) -> str:
    return "classification" if eval_task == "classification" else "causal-lm"


def load_for_eval(ref: str, task: str, dtype: str = "float32"):
    """A LoadedModel for an artifact directory or an HF model directory, plus facts for the report."""
    from training.artifact.loading import attach_adapter, load_base, load_model_artifact

    path = Path(ref)
    if not (path / MANIFEST_NAME).is_file():
        loaded = load_base(ref, dtype=dtype, task=model_task(task))
        if loaded.labels is None and task == "classification":
            id2label = getattr(loaded.model.config, "id2label", None) or {}
            loaded.labels = [id2label[i] for i in sorted(id2label)]
        return loaded, {"source": "model-dir", "path": str(loaded.path), "base": ref}
    artifact = load_artifact(path)
    manifest = artifact.manifest
    if model_task(task) != manifest.task:
        raise ConfigError(f"artifact {path} is a {manifest.task} model but the evaluation task is {task!r}",
                          "evaluate classification artifacts on classification data, language models on the others")
    info = {"source": "artifact", "path": str(artifact.path), "name": manifest.name, "kind": manifest.kind,
            "base": manifest.base.id, "base_sha256": manifest.base.sha256, "method": manifest.method,
            "manifest_sha256": sha256_file(artifact.path / MANIFEST_NAME), "created_at": manifest.created_at}
    if artifact.kind != "adapter":
        return load_model_artifact(artifact, dtype=dtype), info
    base = load_base(manifest.base.id, dtype=dtype, task=manifest.task, labels=manifest.labels)
    artifact = load_artifact(path, expect_base_sha256=base.sha256, expect_kind="adapter")
    base.model = attach_adapter(base.model, artifact, manifest.name)
    base.labels = manifest.labels
    return base, info


class LocalPredictor:
    """A model loaded in this process; see the module docstring."""

    def __init__(self, ref: str, task: str, batch_size: int = 8, dtype: str = "float32", max_length: int = 512,
                 loaded: Any = None, info: dict[str, Any] | None = None) -> None:
        import torch

        if loaded is None:
            loaded, info = load_for_eval(ref, task, dtype)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.labels = loaded.labels
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = (info or {}).get("name") or Path(ref).name
        self.info = {"transport": "local", **(info or {})}
        self._torch = torch

    def render_instruction(self, instruction: str, input_text: str = "") -> str:
        return render_instruction(self.tokenizer, instruction, input_text)

    def _encode(self, texts: list[str], **kwargs: Any):
        return self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                              max_length=self.max_length, **kwargs)

    def classify(self, texts: list[str]) -> list[ClassPrediction]:
        if not self.labels:
            raise ConfigError(f"model {self.name} has no label names", "evaluate a classification artifact")
        with self._torch.inference_mode():
            logits = self.model(**self._encode(texts)).logits
        probs = logits.float().softmax(-1).tolist()
        out = []
        for row in probs:
            scores = {label: float(p) for label, p in zip(self.labels, row)}
            out.append(ClassPrediction(label=max(scores, key=scores.get), scores=scores))
        return out

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Generation]:
        self.tokenizer.padding_side = "left"
        batch = self._encode(prompts, add_special_tokens=True)
        started = time.perf_counter()
        with self._torch.inference_mode():
            output = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
        per_sample = (time.perf_counter() - started) / len(prompts)
        new = output[:, batch["input_ids"].shape[1]:]
        results = []
        for ids in new.tolist():
            kept = _until_eos(ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
            results.append(Generation(self.tokenizer.decode(kept, skip_special_tokens=True), per_sample, len(kept)))
        return results

    def score(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        """Summed NLL of each continuation (+ EOS, as in training) given its prompt, and the tokens scored."""
        torch = self._torch
        tok = self.tokenizer
        rows = []
        for prompt, cont in zip(prompts, continuations):
            prompt_ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + \
                tok(prompt, add_special_tokens=False)["input_ids"]
            cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
            if tok.eos_token_id is not None:
                cont_ids = cont_ids + [tok.eos_token_id]
            room = max(self.max_length - len(cont_ids), 1)
            rows.append((prompt_ids[-room:], cont_ids[: self.max_length - 1]))
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for i, (p, c) in enumerate(rows):
            seq = p + c
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            target[i, len(p): len(seq)] = True
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        scored = target[:, 1:]
        nll = -(logprobs * scored).sum(-1)
        return [(float(n), int(k)) for n, k in zip(nll.tolist(), scored.sum(-1).tolist())]

    def close(self) -> None:
        self.model = None


def _until_eos(ids: list[int], eos: int | None, pad: int | None) -> list[int]:
    for i, token in enumerate(ids):
        if token == eos or (token == pad and pad != eos and pad is not None):
            return ids[:i]
    return ids
