"""`EndpointPredictor`: evaluate a running OpenAI-compatible server exactly as users call it.

Generation goes one prompt per request (latency is what a user sees), greedy, over
`route="chat"` (`POST /v1/chat/completions`; the server renders the model's own chat
template, as for real users) or `route="completions"` (`POST /v1/completions` with the plain
`### Instruction` template; perplexity through `echo=true, logprobs=0, max_tokens=0` when the
server supports it). Classification uses `POST /v1/classify`: `{"model", "input": [...]}` ->
`{"data": [{"index", "label", "score", "scores": [{"label", "score"}, ...]}]}` (a `{label: p}`
mapping is accepted too). The API key goes in `Authorization: Bearer`. Server errors become
the matching tuneserve error with the server's message.

    p = EndpointPredictor("http://localhost:8000", model="banking77", api_key="sk-...")
    p.classify(["where is my card"])
"""

from __future__ import annotations

import time
from typing import Any

from training.artifact.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    TuneserveError,
    Unauthenticated,
    Unavailable,
)
from training.evaluation.predictions import ClassPrediction, Generation, ScoringUnsupported
from training.evaluation.prompts import render_instruction, user_message

ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
STATUS_ERRORS: dict[int, type[TuneserveError]] = {
    400: InvalidRequest, 401: Unauthenticated, 403: PermissionDenied, 404: NotFound, 422: InvalidRequest,
    429: RateLimited, 503: Unavailable,
}


class EndpointPredictor:
    """A model behind an OpenAI-compatible HTTP API; see the module docstring."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = 60.0,
                 client: Any = None, route: str = "chat") -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        if client is not None and api_key:
            self.client.headers.update(headers)
        if route not in ROUTES:
            raise InvalidRequest(f"unknown endpoint route {route!r}", f"use one of {sorted(ROUTES)}")
        self.route = route
        self.model = model or self._first_model()
        self.name = self.model
        self.info = {"transport": "http", "url": self.base_url, "model": self.model, "route": route}

    def _request(self, method: str, route: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            response = self.client.request(method, route, json=payload)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach {self.base_url}{route} ({exc.__class__.__name__}: {exc})",
                              "check that the server is running and the URL is right (tuneserve serve)") from None
        if response.status_code >= 400:
            raise self._error(route, response)
        try:
            return response.json()
        except ValueError:
            raise Unavailable(f"{self.base_url}{route} answered with non-JSON ({response.text[:80]!r})",
                              "is this an OpenAI-compatible server?") from None

    def _error(self, route: str, response: Any) -> TuneserveError:
        try:
            message = response.json().get("error", {}).get("message") or response.text
        except (ValueError, AttributeError):
            message = response.text
        cls = STATUS_ERRORS.get(response.status_code, Unavailable if response.status_code >= 500 else InvalidRequest)
        hints = {Unauthenticated: "pass a valid key with --api-key (or TUNESERVE_API_KEY)",
                 NotFound: "list the served models with GET /v1/models and pick one with URL#model"}
        return cls(f"{route} returned HTTP {response.status_code}: {message[:300]}",
                   hints.get(cls, "see the server log for details"))

    def _first_model(self) -> str:
        data = self._request("GET", "/v1/models").get("data") or []
        if not data:
            raise NotFound(f"{self.base_url} serves no models", "load a model or adapter on the server first")
        return data[0]["id"]

    def render_instruction(self, instruction: str, input_text: str = "") -> str:
        if self.route == "chat":
            return user_message(instruction, input_text)  # the server applies the model's chat template
        return render_instruction(None, instruction, input_text)

    def classify(self, texts: list[str]) -> list[ClassPrediction]:
        body = self._request("POST", "/v1/classify", {"model": self.model, "input": list(texts)})
        data = body.get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise Unavailable(f"/v1/classify returned {len(data) if isinstance(data, list) else 'no'} results "
                              f"for {len(texts)} inputs", "the server does not follow the classify contract")
        data = sorted(data, key=lambda item: item.get("index", 0))
        out = []
        for item in data:
            raw = item.get("scores") or {}
            pairs = raw.items() if isinstance(raw, dict) else ((s["label"], s["score"]) for s in raw)
            scores = {str(k): float(v) for k, v in pairs}
            if not scores and "score" in item:
                scores = {str(item["label"]): float(item["score"])}
            out.append(ClassPrediction(label=str(item["label"]), scores=scores))
        return out

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Generation]:
        out = []
        chat = self.route == "chat"
        for prompt in prompts:
            payload = {"model": self.model, "max_tokens": max_new_tokens, "temperature": 0.0,
                       **({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})}
            started = time.perf_counter()
            body = self._request("POST", ROUTES[self.route], payload)
            latency = time.perf_counter() - started
            choice = body["choices"][0]
            text = (choice.get("message") or {}).get("content", "") if chat else choice.get("text", "")
            tokens = (body.get("usage") or {}).get("completion_tokens")
            out.append(Generation(text=text, latency_s=latency, tokens=tokens))
        return out

    def score(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        """Prompt log-probs via echo; only tokens starting at or after the continuation's offset count."""
        if self.route == "chat":
            raise ScoringUnsupported("token log-probabilities of a reference need route=completions (echo + logprobs)")
        out = []
        for prompt, cont in zip(prompts, continuations):
            try:
                body = self._request("POST", "/v1/completions", {"model": self.model, "prompt": prompt + cont,
                                                                 "max_tokens": 0, "echo": True, "logprobs": 0})
            except InvalidRequest as exc:
                raise ScoringUnsupported(f"server refused echo/logprobs scoring: {exc.message}") from None
            logprobs = body["choices"][0].get("logprobs") or {}
            values, offsets = logprobs.get("token_logprobs"), logprobs.get("text_offset")
            if not values or not offsets:
                raise ScoringUnsupported("server returned no prompt log-probabilities (echo + logprobs unsupported)")
            picked = [v for v, o in zip(values, offsets) if o >= len(prompt) and v is not None]
            out.append((-float(sum(picked)), len(picked)))
        return out

    def close(self) -> None:
        self.client.close()
