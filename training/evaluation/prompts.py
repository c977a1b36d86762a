"""The one place where evaluation rows become prompts, and model output becomes an answer.

Instruction rows use the trainer's template (`training.train.templates.PromptTemplate`), so an
adapter is evaluated on the prompt shape it was trained on; over an endpoint's chat route
only the user message is sent and the server applies the same chat template. QA rows are phrased as an
instruction (the question) with the context as input; the answer is the first non-empty line
of the generation.

    prompt = qa_prompt(predictor, {"context": "...", "question": "Who won?"})
    answer = extract_answer(" Denver Broncos\\n### Instruction: ...")   # "Denver Broncos"
"""

from __future__ import annotations

from typing import Any

from training.train.templates import PromptTemplate, user_message  # noqa: F401  (user_message: chat routes)

QA_INSTRUCTION = "Answer the question with a short span copied from the context.\nQuestion: {question}"
QA_INPUT = "Context: {context}"


def render_instruction(tokenizer: Any | None, instruction: str, input_text: str = "") -> str:
    template = PromptTemplate.for_tokenizer(tokenizer) if tokenizer is not None else PromptTemplate("plain")
    return template.render_prompt(tokenizer, instruction, input_text)


def instruction_prompt(predictor: Any, row: dict[str, Any]) -> str:
    return predictor.render_instruction(row["instruction"], row.get("input", "") or "")


def qa_prompt(predictor: Any, row: dict[str, Any]) -> str:
    return predictor.render_instruction(QA_INSTRUCTION.format(question=row["question"].strip()),
                                        QA_INPUT.format(context=row["context"].strip()))


def extract_answer(generation: str) -> str:
    """First non-empty line, without a leading 'Answer:' the model may echo."""
    for line in generation.strip().splitlines():
        line = line.strip()
        if line.lower().startswith("answer:"):
            line = line[len("answer:"):].strip()
        if line:
            return line
    return ""
