"""The request and response models of production feedback (`POST /v1/feedback`, gRPC `Feedback`).
Pure data: the transports and `service.backend` import them; the logic is `service/feedback.py`.

    {"id": "cls-3f…", "index": 0, "label": "refund_request", "comment": "was a refund"}
    {"id": "chatcmpl-9a…", "rating": 2}
    {"id": "cmpl-77…", "correct_answer": "Paris"}

`id` is a served reply's `id` (completion, chat completion or classification; streams: their chunks'
`id`); `index` picks the classified input or the choice (default 0). Exactly one of `label` (the right
class, classifiers only), `correct_answer` (the right text) and `rating` (an integer from RATING_MIN
= 1, bad, to RATING_MAX = 5, good; thumbs down/up map to 1/5) is given; `comment` is optional.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictInt, model_validator

from training.artifact.errors import InvalidRequest

from service.errors import with_param
from service.schema_base import Request

RATING_MIN, RATING_MAX = 1, 5
MAX_LABEL_CHARS = 256
MAX_ANSWER_CHARS = 8192
MAX_COMMENT_CHARS = 1000
VALUE_FIELDS = ("label", "correct_answer", "rating")


class FeedbackRequest(Request):
    id: str = Field(min_length=1, max_length=128, description="the served reply's id")
    index: StrictInt = Field(0, ge=0, le=4096, description="the classified input or the choice the feedback is on")
    label: str | None = Field(None, min_length=1, max_length=MAX_LABEL_CHARS)
    correct_answer: str | None = Field(None, min_length=1, max_length=MAX_ANSWER_CHARS)
    rating: StrictInt | None = Field(None, ge=RATING_MIN, le=RATING_MAX)
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)

    @model_validator(mode="after")
    def _exactly_one_value(self) -> "FeedbackRequest":
        given = [name for name in VALUE_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise with_param(InvalidRequest(
                f"give exactly one of label, correct_answer and rating (got {', '.join(given) or 'none'})",
                f"label: the right class; correct_answer: the right text; rating: {RATING_MIN}..{RATING_MAX}"),
                given[1] if len(given) > 1 else "label")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in VALUE_FIELDS if getattr(self, name) is not None)


class FeedbackResponse(BaseModel):
    id: str = Field(description="the feedback's id")
    object: Literal["feedback"] = "feedback"
    response_id: str
    index: int
    model: str = Field(description="the model (adapter version) that served the response")
    kind: Literal["label", "correct_answer", "rating"]
    created: int
    replaced: bool = Field(False, description="an earlier feedback on the same item was replaced")
