"""Incremental detokenization with stop strings, for streaming.

`TextTracker.push(token_id)` returns the text that is safe to emit: bytes of a multi-byte
character that are not complete yet, and any suffix that could still become a stop string,
are held back until the next token decides.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextTracker:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (new safe text, whether a stop string was reached)."""
        self.ids.append(token_id)
        full = self._decode()
        self.text = full
        if self.stop:
            hits = [i for i in (full.find(s) for s in self.stop) if i >= 0]
            if hits:
                end = min(hits)
                self.text = full[:end]
                return self._advance(full, end), True
        if full.endswith(REPLACEMENT):
            return "", False
        return self._advance(full, len(full) - self._held_back(full)), False

    def flush(self) -> str:
        """The rest of the text when generation ends without a stop string."""
        return self._advance(self.text, len(self.text))

    def _held_back(self, full: str) -> int:
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(full)), 0, -1):
                if full.endswith(stop[:n]):
                    longest = max(longest, n)
                    break
        return longest

    def _advance(self, full: str, end: int) -> str:
        end = max(end, self.emitted)
        delta = full[self.emitted:end]
        self.emitted = end
        return delta
