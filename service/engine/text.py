"""Incremental detokenization with stop strings, for streaming.

`TextTracker.push(token_id)` returns the text that is safe to emit: bytes of a multi-byte
character that are not complete yet, and any suffix that could still become a stop string,
are held back until the next token decides. `push(token, check_stop=False)` (before a row's
min_tokens) emits without looking for stop strings; later searches start after that text.
With `include_stop` the stop string stays in the text.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextTracker:
    def __init__(self, tokenizer, stop: tuple[str, ...] = (), include_stop: bool = False) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.include_stop = include_stop
        self.ids: list[int] = []
        self.emitted = 0
        self.searched_from = 0  # stop strings are looked for from here (text before min_tokens is final)
        self.text = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int, check_stop: bool = True) -> tuple[str, bool]:
        """Add a token; return (new safe text, whether a stop string was reached)."""
        self.ids.append(token_id)
        full = self._decode()
        self.text = full
        if check_stop and self.stop:
            hits = [(i, i + len(s) if self.include_stop else i)
                    for i, s in ((full.find(s, self.searched_from), s) for s in self.stop) if i >= 0]
            if hits:
                end = min(hits)[1]
                self.text = full[:end]
                return self._advance(full, end), True
        if full.endswith(REPLACEMENT):
            return "", False
        if not check_stop:
            delta = self._advance(full, len(full))
            self.searched_from = self.emitted
            return delta, False
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
