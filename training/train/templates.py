"""The one place where instruction rows become token ids, plus the batch collators.

A row `{instruction, input, output}` becomes a prompt and a response. If the tokenizer has a
chat template the prompt is the user turn rendered with `add_generation_prompt=True` and the
response is the rest of the rendered conversation; otherwise the plain template
`### Instruction / ### Input / ### Response` is used. Loss is taken on response tokens only
(prompt labels are -100). Serving and evaluation render prompts with `render_prompt`.

A multi-turn row `{messages: [{role, content}, ...]}` (roles system / user / assistant) is
rendered turn by turn (`encode_messages`): loss on every assistant turn's content and its end
marker, -100 on system and user turns and the template's scaffolding (`### Response:`, role
headers). `render_chat_prompt` gives the conversation before the last assistant turn.

    template = PromptTemplate.for_tokenizer(tokenizer)
    example = template.encode(row, tokenizer, max_length=256)   # {"input_ids", "labels"}
    batch = pad_causal([example, ...], pad_id)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
PLAIN_INPUT = "### Input:\n{input}\n\n"


def user_message(instruction: str, input_text: str = "") -> str:
    return f"{instruction}\n\n{input_text}" if input_text else instruction


@dataclass(frozen=True)
class PromptTemplate:
    kind: str  # "chat" (the tokenizer's chat template) or "plain"

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PromptTemplate:
        return cls("chat" if getattr(tokenizer, "chat_template", None) else "plain")

    def describe(self) -> dict[str, Any]:
        return {"template": self.kind, "plain_template": PLAIN_PROMPT if self.kind == "plain" else None}

    def render_prompt(self, tokenizer: Any, instruction: str, input_text: str = "") -> str:
        if self.kind == "chat":
            messages = [{"role": "user", "content": user_message(instruction, input_text)}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        input_block = PLAIN_INPUT.format(input=input_text) if input_text else ""
        return PLAIN_PROMPT.format(instruction=instruction, input_block=input_block)

    def render_response(self, tokenizer: Any, row: dict[str, str], prompt: str) -> str:
        if self.kind == "chat":
            messages = [{"role": "user", "content": user_message(row["instruction"], row.get("input", ""))},
                        {"role": "assistant", "content": row["output"]}]
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            if full.startswith(prompt):
                return full[len(prompt):]
        return row["output"]

    def encode(self, row: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
        if "messages" in row:
            return self.encode_messages(row["messages"], tokenizer, max_length)
        prompt = self.render_prompt(tokenizer, row["instruction"], row.get("input", ""))
        response = self.render_response(tokenizer, row, prompt)
        prompt_ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False, verbose=False)["input_ids"]
        if tokenizer.eos_token_id is not None and (not response_ids or response_ids[-1] != tokenizer.eos_token_id):
            response_ids = response_ids + [tokenizer.eos_token_id]
        if tokenizer.bos_token_id is not None and self.kind == "plain":
            prompt_ids = [tokenizer.bos_token_id] + prompt_ids
        # Keep the whole response when possible: truncate the prompt from the left first.
        room = max(max_length - len(response_ids), max_length // 2)
        prompt_ids = prompt_ids[-room:]
        ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
        return {"input_ids": ids, "labels": labels}


    def render_chat_prompt(self, tokenizer: Any, messages: list[dict[str, str]]) -> str:
        """The conversation before its last assistant turn, ending where the model starts answering."""
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        segments = self._segments(tokenizer, messages[:last + 1])
        answer = max(i for i, (_, target) in enumerate(segments) if target)
        return "".join(text for text, _ in segments[:answer])

    def _segments(self, tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """(text, is_target) pieces whose concatenation is the rendered conversation."""
        if self.kind == "plain":
            out: list[tuple[str, bool]] = []
            for m in messages:
                if m["role"] == "assistant":
                    out += [("### Response:\n", False), (m["content"] + (tokenizer.eos_token or ""), True), ("\n\n", False)]
                else:
                    head = "System" if m["role"] == "system" else "Instruction"
                    out.append((f"### {head}:\n{m['content']}\n\n", False))
            return out
        out, rendered = [], ""
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
            if not (prompt.startswith(rendered) and full.startswith(prompt)):
                from training.artifact.errors import DataError

                raise DataError("the tokenizer's chat template does not render conversations turn by turn",
                                "use single-turn instruction rows with this base, or a base whose template is prefix-stable")
            out += [(prompt[len(rendered):], False), (full[len(prompt):], True)]
            rendered = full
        return out

    def encode_messages(self, messages: list[dict[str, str]], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
        """Token ids and labels of a multi-turn chat: only assistant turns are targets; cut at max_length."""
        ids: list[int] = []
        labels: list[int] = []
        if tokenizer.bos_token_id is not None and self.kind == "plain":
            ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
        for text, target in self._segments(tokenizer, messages):
            if not text:
                continue
            piece = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            ids += piece
            labels += piece if target else [IGNORE_INDEX] * len(piece)
        eos = tokenizer.eos_token_id
        if eos is not None and self.kind == "chat" and ids and ids[-1] != eos:
            ids, labels = ids + [eos], labels + [eos]
        return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def encode_classification(rows: list[dict[str, str]], tokenizer: Any, label_ids: dict[str, int],
                          max_length: int) -> list[dict[str, Any]]:
    if not rows:
        return []
    encoded = tokenizer([row["text"] for row in rows], truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": ids, "label": label_ids[row["label"]]} for ids, row in zip(encoded, rows)]


def _pad(sequences: list[list[int]], value: int):
    import torch

    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def pad_causal(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    ids = _pad([e["input_ids"] for e in examples], pad_id)
    mask = _pad([[1] * len(e["input_ids"]) for e in examples], 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": _pad([e["labels"] for e in examples], IGNORE_INDEX)}


def pad_classification(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    ids = _pad([e["input_ids"] for e in examples], pad_id)
    mask = _pad([[1] * len(e["input_ids"]) for e in examples], 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e["label"] for e in examples])}
