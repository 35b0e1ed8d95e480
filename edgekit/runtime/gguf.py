"""GGUF models on llama.cpp, through llama-cpp-python's low-level C API (model, context, batch, memory).

The high-level `llama_cpp.Llama` object brings its own sampler, cache and chat formats; here llama.cpp only
runs forward passes and tokenizes, and edgekit's shared loop (runtime.base) does the rest.
"""

from __future__ import annotations

import collections
import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.base import Model
from edgekit.runtime.chat_template import ChatTemplate

GGML_TYPE_F32 = 0
DEFAULT_CTX = 4096
_log_lines: collections.deque[str] = collections.deque(maxlen=20)


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise EdgekitError("running a .gguf needs llama-cpp-python (pip install 'edgekit[llama]')") from None
    return llama_cpp


class _QuietLog:
    """llama.cpp logs every load step to stderr. While loading, its messages are kept (the last one explains
    a failure) instead of printed; llama-cpp-python's own log callback is put back afterwards."""

    def __enter__(self) -> None:
        llama_cpp = _import_llama_cpp()

        @llama_cpp.llama_log_callback
        def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", errors="replace").strip()
            if line:
                _log_lines.append(line)

        self._callback = keep  # must outlive the C side's use of it
        _log_lines.clear()
        llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))

    def __exit__(self, *exc: object) -> None:
        from llama_cpp import _logger

        llama_cpp = _import_llama_cpp()
        _logger.set_verbose(False)  # llama-cpp-python's callback prints errors only
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _why() -> str:
    errors = [ln for ln in _log_lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or list(_log_lines) or ["unknown reason"])[-1]


class GGUFModel(Model):
    """A .gguf file run by llama.cpp. n_ctx: context length (default: the model's, at most 4096);
    kv_f32: an F32 KV cache instead of llama.cpp's F16 (exact comparisons against transformers)."""

    format = "gguf"
    backend = "llama.cpp"

    def __init__(self, path: str | Path, *, n_ctx: int | None = None, n_batch: int = 512, threads: int | None = None,
                 kv_f32: bool = False) -> None:
        from edgekit.gguf_meta import read_header

        path = Path(path)
        header = read_header(path)  # a clear error for a missing, foreign or truncated file, before llama.cpp
        llama_cpp = _import_llama_cpp()
        self._ll = llama_cpp
        self._model = self._ctx = self._batch = None
        arch = header.get("general.architecture", "")
        train_ctx = int(header.get(f"{arch}.context_length", DEFAULT_CTX))
        n_ctx = n_ctx or min(train_ctx, DEFAULT_CTX)
        n_batch = min(n_batch, n_ctx)
        threads = threads or max(1, min(8, os.cpu_count() or 1))
        with _QuietLog():
            llama_cpp.llama_backend_init()
            mp = llama_cpp.llama_model_default_params()
            self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
            if not self._model:
                raise EdgekitError(f"{path}: llama.cpp cannot load the model ({_why()})")
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, 1
            cp.n_threads = cp.n_threads_batch = threads
            if kv_f32:
                cp.type_k = cp.type_v = GGML_TYPE_F32
            self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
            if not self._ctx:
                self.close()
                raise EdgekitError(f"{path}: llama.cpp cannot create a context of {n_ctx} tokens ({_why()})")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.threads = threads
        # A first decode sets up llama.cpp's compute graph and buffers (~1 s here): do it now, as llama-cli
        # does, so the first answer's timings are the model's, not the setup's.
        self._forward([max(int(llama_cpp.llama_vocab_bos(self._vocab)), 0)], 0)

        tokens = header.get("tokenizer.ggml.tokens") or []

        def special(key: str) -> str | None:  # the text of a special token named in the metadata
            i = header.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        template = ChatTemplate(header.get("tokenizer.chat_template"), bos_token=special("bos"),
                                eos_token=special("eos"),
                                extra_tokens={"unk_token": special("unknown"), "pad_token": special("padding")})
        # Every end-of-generation token llama.cpp knows (eos, eot, eom, "<|im_end|>", ...).
        stops = {i for i in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, i)}
        # llama.cpp rounds the context up (to 256); the caller's limit is the one to keep.
        super().__init__(path, n_ctx=min(n_ctx, int(llama_cpp.llama_n_ctx(self._ctx))), n_batch=n_batch,
                         stop_ids=stops,
                         add_bos=bool(llama_cpp.llama_vocab_get_add_bos(self._vocab)), template=template,
                         name=str(header.get("general.name") or path.stem))

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        for _ in range(2):
            buf = (self._ll.llama_token * size)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, True)
            if n >= 0:
                return list(buf[:n])
            size = -n  # too small: llama.cpp says how many it needs
        raise EdgekitError("llama.cpp could not tokenize the text")

    def detokenize(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        arr = (self._ll.llama_token * len(ids))(*ids)
        size = 16 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            # remove_special=False: no stripping of BOS/leading space; unparse_special=False: control tokens
            # render as nothing.
            n = self._ll.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise EdgekitError("llama.cpp could not detokenize the tokens")

    def token_text(self, token: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def is_special(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_control(self._vocab, token) or
                    self._ll.llama_vocab_is_eog(self._vocab, token))

    def _forward(self, tokens: Sequence[int], start: int) -> np.ndarray:
        ll, b, n = self._ll, self._batch, len(tokens)
        ll.llama_memory_seq_rm(self._mem, 0, start, -1)  # positions >= start belong to an older sequence
        b.n_tokens = n
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, start + i, 1, 0
            b.seq_id[i][0] = 0
        b.logits[n - 1] = 1  # logits of the last token only
        rc = ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise EdgekitError(f"{self.path}: llama_decode failed ({rc}) at positions {start}..{start + n - 1}")
        out = ll.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(out, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        ll = getattr(self, "_ll", None)
        if ll is None:
            return
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()
