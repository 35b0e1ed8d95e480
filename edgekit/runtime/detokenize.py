"""Streaming detokenization: text pieces that never split a character and never show a stop string.

A token can end in the middle of a UTF-8 character (byte-level BPE, SentencePiece byte fallback), and a
token's text can depend on its neighbour (SentencePiece's leading space). So each new piece is the
difference between decoding a short window of recent tokens with and without the newest ones, emitted
only when it does not end in U+FFFD (the decoder's mark for an incomplete character). The same idea as
transformers' TextStreamer and vLLM's incremental detokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """Feed token ids with `push`, get text back; `finish` flushes what is held at the end."""

    def __init__(self, detokenize: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._detok = detokenize
        self._ids: list[int] = []
        self._prefix = 0    # window start: tokens before it are final
        self._read = 0      # tokens up to here have been turned into text
        self._held = ""     # final text not yet given out: it may be the start of a stop string
        self._stop = [s for s in stop if s]
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self._ids.append(token)
        before = self._detok(self._ids[self._prefix:self._read])
        after = self._detok(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character (or nothing visible yet): wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(after[len(before):])

    def finish(self) -> str:
        """The rest, at the end of generation (an incomplete character comes out as U+FFFD)."""
        if self.stopped:
            return ""
        before = self._detok(self._ids[self._prefix:self._read])
        after = self._detok(self._ids[self._prefix:])
        rest = after[len(before):] if after.startswith(before) else ""
        self._prefix = self._read = len(self._ids)
        return self._release(rest, final=True)

    def _release(self, new: str, final: bool = False) -> str:
        text = self._held + new
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return text[:min(hits)]
        keep = 0 if final else _partial_stop(text, self._stop)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of text that is the beginning of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
