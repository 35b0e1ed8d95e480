"""A .gguf file run by edgekit's own C runtime (libedgekit): the same `Model` interface as llama.cpp's
backend, so chat, generate, serve and eval behave the same; only tokenization and the forward pass are
native. The generation loop, sampler and chat template stay the shared Python ones, so a seed gives the
same text on every backend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.io.gguf_reader import read_header
from edgekit.native import runtime as rt
from edgekit.runtime.base import Model
from edgekit.runtime.chat_template import ChatTemplate

DEFAULT_CTX = 4096


class NativeModel(Model):
    """A .gguf run by libedgekit. n_ctx: context length (default: the model's, at most 4096); threads: decode
    and prefill threads (default: the cores, at most 8); kv_f32: an F32 KV cache instead of F16."""

    format = "gguf"
    backend = "native"

    def __init__(self, path: str | Path, *, n_ctx: int | None = None, n_batch: int = 512, threads: int | None = None,
                 kv_f32: bool = False) -> None:
        path = Path(path)
        header = read_header(path)  # the chat template and special-token texts, with the reader's checks
        self._model = rt.Model(path)
        info = self._model.info
        n_ctx = n_ctx or min(info.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)
        n_batch = min(n_batch, n_ctx)
        self.threads = threads or max(1, min(8, os.cpu_count() or 1))
        try:
            self._session = self._model.session(n_ctx=n_ctx, threads=self.threads, n_batch=n_batch, kv_f32=kv_f32)
        except BaseException:
            self._model.close()
            raise
        self.n_vocab = info.n_vocab
        tokens = header.get("tokenizer.ggml.tokens") or []

        def text(i: int) -> str | None:
            return tokens[i] if 0 <= i < len(tokens) else None

        template = ChatTemplate(header.get("tokenizer.chat_template"), bos_token=text(info.bos),
                                eos_token=text(info.eos),
                                extra_tokens={"unk_token": text(header.get("tokenizer.ggml.unknown_token_id", -1)),
                                              "pad_token": text(header.get("tokenizer.ggml.padding_token_id", -1))})
        super().__init__(path, n_ctx=n_ctx, n_batch=n_batch, stop_ids={i for i in (info.eos, info.eot) if i >= 0},
                         add_bos=info.add_bos, template=template, name=str(header.get("general.name") or path.stem))

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return b"".join(self._model.piece(int(t)) for t in ids).decode(errors="replace")

    def token_text(self, token: int) -> str:
        return self._model.piece(token, special=True).decode(errors="replace")

    def is_special(self, token: int) -> bool:
        return self._model.is_special(token)

    def _forward(self, tokens: Sequence[int], start: int) -> np.ndarray:
        return self._session.decode(tokens, pos=start)

    def logits_all(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 [len(tokens), n_vocab] of a fresh sequence: row i is the distribution after tokens[i]."""
        if not 1 <= len(tokens) <= self.n_ctx:
            raise EdgekitError(f"{self.path}: logits of {len(tokens)} tokens need 1..{self.n_ctx}")
        self.cache.clear()  # the KV cache will hold this sequence, not a chat's
        rows = [self._session.decode(tokens[i:i + self.n_batch], pos=i, logits_all=True)
                for i in range(0, len(tokens), self.n_batch)]
        return np.concatenate(rows)

    def native_stats(self) -> dict[str, float | int]:
        """The C runtime's own timings and the process's peak RSS."""
        return self._session.stats()

    def close(self) -> None:
        for part in ("_session", "_model"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()
