"""The golden set: a few prompts with the training-time model's outputs, stored in the artifact.

Every writer of a servable artifact (`train`, its `-merged` copy, `merge`, `quantize`, `export`) stores
`golden_set.json` (listed in the manifest with its sha256 like every file, summarised under
`manifest.golden`). For a causal LM each prompt holds its token ids, the reference model's
greedy continuation and, teacher-forced at every generated position, the logprob of the
greedy token and the top-k logprobs; for a classifier the reference label and the
probability of every label. `training.artifact.replay` runs a served form of the artifact on
it and measures how far that form drifted. Artifacts written before golden sets existed hold
none: `read_golden` returns None and nothing is gated.

    golden = build_golden_set(model, tokenizer, ["Hello"], "causal-lm")
    with ArtifactWriter(dest, manifest) as writer:
        ...; save_golden(writer, golden)
    golden = read_golden(load_artifact(dest))        # GoldenSet | None
"""

from __future__ import annotations

import json
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.artifact.errors import ArtifactInvalid

GOLDEN_NAME = "golden_set.json"
GOLDEN_FORMAT = "tuneserve-golden-v1"
DEFAULT_PROMPTS = 4
DEFAULT_NEW_TOKENS = 8
DEFAULT_TOP_K = 8
MAX_PROMPT_TOKENS = 96  # prompts are cut from the left: the end of a prompt decides what comes next
DIGITS = 6

Forward = Callable[[Any, Any], Any]  # (input_ids [1, t], attention_mask [1, t]) -> logits [1, t, vocab] / [1, labels]


class GoldenPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    input_ids: list[int]
    tokens: list[int] = Field(default_factory=list, description="causal LM: the reference greedy continuation")
    logprobs: list[float] = Field(default_factory=list, description="causal LM: reference logprob of each token")
    top_ids: list[list[int]] = Field(default_factory=list, description="causal LM: top-k token ids per position")
    top_logprobs: list[list[float]] = Field(default_factory=list)
    label: str | None = Field(None, description="classifier: the reference label")
    probs: list[float] = Field(default_factory=list, description="classifier: reference probability of each label")


class GoldenSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = GOLDEN_FORMAT
    task: str
    labels: list[str] | None = None
    new_tokens: int = 0
    top_k: int = 0
    prompts: list[GoldenPrompt]

    def summary(self) -> dict[str, Any]:
        return {"file": GOLDEN_NAME, "task": self.task, "prompts": len(self.prompts), "new_tokens": self.new_tokens,
                "top_k": self.top_k}


def model_forward(model) -> Forward:
    """A `Forward` over a torch model (or an ONNX wrapper): inputs go to the model's device, logits come back float on CPU."""
    import torch

    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        device = torch.device("cpu")

    def forward(input_ids, attention_mask):
        with torch.inference_mode():
            out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        return out.logits.float().cpu()

    return forward


def teacher_forced_logprobs(forward: Forward, pairs: list[tuple[list[int], list[int]]]) -> list[Any]:
    """For each (input_ids, tokens): log-softmax at the positions predicting each token, [len(tokens), vocab].

    One forward pass for all pairs, right-padded: in a causal model no real position sees the padding."""
    import torch

    sequences = [ids + tokens[:-1] for ids, tokens in pairs]
    width = max(len(s) for s in sequences)
    input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
    logits = forward(input_ids, mask)
    return [logits[row, len(ids) - 1:len(ids) - 1 + len(tokens)].log_softmax(-1)
            for row, (ids, tokens) in enumerate(pairs)]


def label_probs(forward: Forward, input_ids: list[int]):
    import torch

    ids = torch.tensor([input_ids], dtype=torch.long)
    return forward(ids, torch.ones_like(ids))[0].softmax(-1)


def _greedy(forward: Forward, input_ids: list[int], new_tokens: int) -> list[int]:
    import torch

    sequence = list(input_ids)
    for _ in range(new_tokens):
        ids = torch.tensor([sequence], dtype=torch.long)
        sequence.append(int(forward(ids, torch.ones_like(ids))[0, -1].argmax()))
    return sequence[len(input_ids):]


def _rounded(values) -> list[float]:
    return [round(float(v), DIGITS) for v in values]


def encode_prompt(tokenizer, text: str, task: str) -> list[int]:
    if task == "classification":
        return tokenizer(text, truncation=True, max_length=MAX_PROMPT_TOKENS)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos) and not getattr(tokenizer, "chat_template", None):
        ids = [bos] + ids  # what training's plain template does
    return ids[-MAX_PROMPT_TOKENS:]


def build_golden_set(model, tokenizer, texts: list[str], task: str, labels: list[str] | None = None,
                     new_tokens: int = DEFAULT_NEW_TOKENS, top_k: int = DEFAULT_TOP_K,
                     limit: int = DEFAULT_PROMPTS) -> GoldenSet:
    """Run the reference `model` on the first `limit` non-empty `texts` and record its outputs."""
    forward = model_forward(model)
    encoded = [(text, encode_prompt(tokenizer, text, task)) for text in [t for t in texts if t and t.strip()][:limit]]
    encoded = [(text, ids) for text, ids in encoded if ids]
    prompts = []
    if task == "classification":
        for text, input_ids in encoded:
            probs = label_probs(forward, input_ids)
            names = labels or [str(i) for i in range(len(probs))]
            prompts.append(GoldenPrompt(text=text, input_ids=input_ids, label=names[int(probs.argmax())],
                                        probs=_rounded(probs)))
    else:
        pairs = [(ids, _greedy(forward, ids, new_tokens)) for _, ids in encoded]
        for (text, input_ids), (_, tokens), logprobs in zip(encoded, pairs, teacher_forced_logprobs(forward, pairs)):
            top = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
            prompts.append(GoldenPrompt(
                text=text, input_ids=input_ids, tokens=tokens,
                logprobs=_rounded(logprobs.gather(-1, logprobs.new_tensor(tokens).long()[:, None])[:, 0]),
                top_ids=top.indices.tolist(), top_logprobs=[_rounded(row) for row in top.values]))
    return GoldenSet(task=task, labels=labels, new_tokens=new_tokens if task != "classification" else 0,
                     top_k=top_k if task != "classification" else 0, prompts=prompts)


def save_golden(writer, golden: GoldenSet | None) -> None:
    """Write `golden` into an open `ArtifactWriter` and summarise it in the manifest (no-op for None)."""
    if golden is None or not golden.prompts:
        return
    (writer.path / GOLDEN_NAME).write_text(golden.model_dump_json(), encoding="utf-8")
    writer.update(golden=golden.summary())


def parse_golden(raw: str, where: str) -> GoldenSet:
    try:
        golden = GoldenSet.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ArtifactInvalid(f"{where}: {GOLDEN_NAME} is malformed ({str(exc).splitlines()[0]})",
                              "rebuild the artifact") from None
    if golden.format != GOLDEN_FORMAT:
        raise ArtifactInvalid(f"{where}: {GOLDEN_NAME} has unknown format {golden.format!r}",
                              f"upgrade tuneserve or rebuild the artifact (this build reads {GOLDEN_FORMAT})")
    return golden


def read_golden(artifact) -> GoldenSet | None:
    """The golden set of a verified `Artifact`, or None when it has none (artifacts older than golden sets)."""
    if GOLDEN_NAME not in artifact.manifest.files:
        return None
    return parse_golden(artifact.file(GOLDEN_NAME).read_text(encoding="utf-8"), str(artifact.path))
