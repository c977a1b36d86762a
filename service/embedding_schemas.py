"""The request and response models of embeddings (`POST /v1/embeddings`, gRPC `Embed`), shaped like
OpenAI's. Pure data (no torch): the transports and `service.backend` import them; the serving
logic is `service.embeddings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.schemas import Request, TokenIds, texts_or_ids


class EmbeddingRequest(Request):
    model: str
    input: str | list[str] | TokenIds | list[TokenIds]  # OpenAI accepts all four
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        """Each input: a text or a list of token ids."""
        return texts_or_ids(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32 bytes


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
