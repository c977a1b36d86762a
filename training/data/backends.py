"""Pluggable paraphrase and translation backends for augmentation.

`Paraphraser.paraphrase(texts)` and `Translator.translate(texts, source, target)` are the two
interfaces. `OpenAICompatibleBackend` implements both by calling `/chat/completions` on any
OpenAI-compatible server (this project's own `tuneserve serve` included); `OfflineBackend`
implements both with the built-in word lists, deterministic and usable in tests.

    backend = make_backend(cfg.augmentation.backend)      # registry: "offline" | "openai"
    back = backend.translate(backend.translate(texts, "en", "de"), "de", "en")
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from training.artifact.errors import DataError
from training.data.config import BackendConfig
from training.data.thesaurus import DE_EN, EN_DE, SYNONYMS


@runtime_checkable
class Paraphraser(Protocol):
    def paraphrase(self, texts: list[str]) -> list[str]: ...


@runtime_checkable
class Translator(Protocol):
    def translate(self, texts: list[str], source: str, target: str) -> list[str]: ...


_WORD = re.compile(r"[A-Za-zÀ-ÿ']+")


def _match_case(template: str, word: str) -> str:
    return word.capitalize() if template[:1].isupper() else word


def _stable_pick(options: list[str], key: str) -> str:
    return options[int(hashlib.blake2b(key.encode(), digest_size=2).hexdigest(), 16) % len(options)]


class OfflineBackend:
    """Deterministic word-level paraphrase (synonyms) and translation (built-in lexicon)."""

    def __init__(self, synonyms: dict[str, list[str]] | None = None) -> None:
        self.synonyms = synonyms or SYNONYMS
        self.lexicons = {("en", "de"): EN_DE, ("de", "en"): DE_EN}

    def paraphrase(self, texts: list[str]) -> list[str]:
        def swap(m: re.Match, text: str) -> str:
            options = self.synonyms.get(m.group(0).lower())
            return _match_case(m.group(0), _stable_pick(options, text + m.group(0))) if options else m.group(0)
        return [_WORD.sub(lambda m, t=t: swap(m, t), t) for t in texts]

    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        lexicon = self.lexicons.get((source, target))
        if lexicon is None:
            raise DataError(f"the offline translator knows only {sorted(self.lexicons)}, not {(source, target)}",
                            "set augmentation.backend.pivot_language=de, or use backend.kind=openai")
        return [_WORD.sub(lambda m: _match_case(m.group(0), lexicon.get(m.group(0).lower(), m.group(0))), t)
                for t in texts]


class OpenAICompatibleBackend:
    """Paraphrase and translate through `/chat/completions` of an OpenAI-compatible server."""

    def __init__(self, cfg: BackendConfig, transport: Any = None) -> None:
        import httpx

        headers = {}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.cfg = cfg
        self.client = httpx.Client(base_url=cfg.base_url.rstrip("/"), timeout=cfg.timeout_s, headers=headers,
                                   transport=transport)

    def _complete(self, instruction: str, text: str) -> str:
        import httpx

        body = {"model": self.cfg.model, "temperature": 0.7, "max_tokens": max(64, 2 * len(text.split()) + 32),
                "messages": [{"role": "system", "content": instruction}, {"role": "user", "content": text}]}
        try:
            resp = self.client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise DataError(f"augmentation backend {self.cfg.base_url} is unreachable: {exc}",
                            "start the server (tuneserve serve) or set augmentation.backend.kind=offline") from None
        if resp.status_code != 200:
            raise DataError(f"augmentation backend answered HTTP {resp.status_code}: {resp.text[:200]}",
                            f"check augmentation.backend.model and the API key in ${self.cfg.api_key_env}")
        try:
            return resp.json()["choices"][0]["message"]["content"].strip()
        except (ValueError, KeyError, IndexError, TypeError):
            raise DataError("augmentation backend returned no chat completion",
                            "point augmentation.backend.base_url at an OpenAI-compatible /v1 endpoint") from None

    def paraphrase(self, texts: list[str]) -> list[str]:
        prompt = "Paraphrase the user's text. Keep its meaning and language. Reply with the paraphrase only."
        return [self._complete(prompt, t) for t in texts]

    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        prompt = f"Translate the user's text from {source} to {target}. Reply with the translation only."
        return [self._complete(prompt, t) for t in texts]


BACKENDS: dict[str, Callable[[BackendConfig, dict[str, list[str]]], Any]] = {
    "offline": lambda cfg, synonyms: OfflineBackend(synonyms),
    "openai": lambda cfg, synonyms: OpenAICompatibleBackend(cfg),
}


def make_backend(cfg: BackendConfig, synonyms: dict[str, list[str]] | None = None) -> Any:
    return BACKENDS[cfg.kind](cfg, synonyms or SYNONYMS)
