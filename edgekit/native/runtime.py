"""The native runtime from Python: load a GGUF into libedgekit, tokenize, open sessions (a KV cache
each), decode token ids and read logits. A thin ctypes layer over ``native/include/edgekit.h``: errors
come back as EdgekitError carrying the C library's one-line message, logits as numpy arrays.

ctypes releases the GIL during each C call, so ``Session.abort()`` works from another thread."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.native import lib

ABI_VERSION = 1  # EK_ABI_VERSION of the header this binding was written against
OK, ABORTED, CONTEXT_FULL = 0, 1, 2
ERR_BUFFER = -6


class Aborted(EdgekitError):
    """Session.abort() stopped a decode; the session keeps the batches that finished."""


class ContextFull(EdgekitError):
    """The tokens asked for do not fit in the session's KV cache."""


class _Info(ctypes.Structure):
    _fields_ = [("arch", ctypes.c_char_p), ("name", ctypes.c_char_p)] + [
        (f, ctypes.c_int32) for f in ("n_vocab", "n_ctx_train", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff")
    ] + [("n_params", ctypes.c_int64), ("file_bytes", ctypes.c_uint64)] + [
        (f, ctypes.c_int32) for f in ("bos", "eos", "eot", "add_bos")]


class _SessionParams(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in ("n_ctx", "n_threads", "n_threads_batch", "n_batch", "kv_f32")]


class _Stats(ctypes.Structure):
    _fields_ = [(f, ctypes.c_double) for f in ("load_ms", "prefill_ms", "decode_ms", "first_token_ms")] + [
        (f, ctypes.c_int64) for f in ("n_prefill", "n_decode", "n_reused", "peak_rss_bytes")]


@cache
def _c() -> ctypes.CDLL:
    c, vp, i32 = lib(), ctypes.c_void_p, ctypes.c_int32
    sig = {
        "ek_abi_version": (ctypes.c_int, []),
        "ek_status_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ek_last_error": (ctypes.c_char_p, []),
        "ek_model_load": (ctypes.c_int, [ctypes.c_char_p, vp, ctypes.POINTER(vp)]),
        "ek_model_free": (None, [vp]),
        "ek_model_get_info": (ctypes.c_int, [vp, ctypes.POINTER(_Info)]),
        "ek_model_meta": (ctypes.c_char_p, [vp, ctypes.c_char_p]),
        "ek_session_new": (ctypes.c_int, [vp, ctypes.POINTER(_SessionParams), ctypes.POINTER(vp)]),
        "ek_session_free": (None, [vp]),
        "ek_decode": (ctypes.c_int, [vp, ctypes.POINTER(i32), i32, i32, ctypes.c_int]),
        "ek_logits": (ctypes.POINTER(ctypes.c_float), [vp, i32]),
        "ek_session_n_past": (i32, [vp]),
        "ek_abort": (None, [vp]),
        "ek_session_stats": (ctypes.c_int, [vp, ctypes.POINTER(_Stats)]),
        "ek_tokenize": (ctypes.c_int, [vp, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                       ctypes.POINTER(i32), i32, ctypes.POINTER(i32)]),
        "ek_token_to_piece": (ctypes.c_int, [vp, i32, ctypes.c_int, ctypes.c_char_p, i32, ctypes.POINTER(i32)]),
        "ek_token_is_special": (ctypes.c_int, [vp, i32]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(c, name)
        fn.restype, fn.argtypes = res, args
    if c.ek_abi_version() != ABI_VERSION:
        raise EdgekitError(f"libedgekit has ABI version {c.ek_abi_version()}, this binding needs {ABI_VERSION}: "
                           "reinstall edgekit")
    return c


def _raise(status: int) -> None:
    if status == OK:
        return
    msg = _c().ek_last_error().decode(errors="replace") or _c().ek_status_name(status).decode()
    err = (Aborted if status == ABORTED else ContextFull if status == CONTEXT_FULL else EdgekitError)(msg)
    err.status = _c().ek_status_name(status).decode()  # "format error", "unsupported", ...
    raise err


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    name: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_params: int
    file_bytes: int
    bos: int
    eos: int
    eot: int
    add_bos: bool


class Model:
    """A GGUF mapped by libedgekit (weights are not copied). Close it, or use it as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._h = ctypes.c_void_p()
        _raise(_c().ek_model_load(str(self.path).encode(), None, ctypes.byref(self._h)))
        raw = _Info()
        _raise(_c().ek_model_get_info(self._h, ctypes.byref(raw)))
        vals = {f: getattr(raw, f) for f, _ in _Info._fields_}
        vals["arch"], vals["name"] = raw.arch.decode(), raw.name.decode(errors="replace")
        vals["add_bos"] = bool(raw.add_bos)
        self.info = ModelInfo(**vals)

    def meta(self, key: str) -> str | None:
        """A metadata value as text (arrays as "[n items]"); None if absent."""
        v = _c().ek_model_meta(self._handle(), key.encode())
        return None if v is None else v.decode(errors="replace")

    def tokenize(self, text: str | bytes, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids, as llama.cpp tokenizes; parse_special: special-token text becomes the special token."""
        data = text.encode() if isinstance(text, str) else text
        n = ctypes.c_int32()
        for cap in (len(data) + 8, None):  # a token covers at least one byte, bar bos/eos: one try nearly always
            buf = (ctypes.c_int32 * (cap or n.value))()
            st = _c().ek_tokenize(self._handle(), data, len(data), int(add_special), int(parse_special), buf,
                                  len(buf), ctypes.byref(n))
            if st != ERR_BUFFER:
                _raise(st)
                return list(buf[:n.value])
        raise EdgekitError(f"{self.path}: the tokenizer asked for a buffer twice")

    def piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes (maybe part of a UTF-8 character); a control token gives its text only if special."""
        n, buf = ctypes.c_int32(), ctypes.create_string_buffer(256)
        st = _c().ek_token_to_piece(self._handle(), token, int(special), buf, len(buf), ctypes.byref(n))
        if st == ERR_BUFFER:
            buf = ctypes.create_string_buffer(n.value)
            st = _c().ek_token_to_piece(self._h, token, int(special), buf, len(buf), ctypes.byref(n))
        _raise(st)
        return buf.raw[:n.value]

    def is_special(self, token: int) -> bool:
        """Whether a token is a control token (not text)."""
        return bool(_c().ek_token_is_special(self._handle(), token))

    def session(self, *, n_ctx: int = 0, threads: int = 0, threads_batch: int = 0, n_batch: int = 0,
                kv_f32: bool = False) -> Session:
        """A KV cache and scratch for one sequence; 0 takes the library's default for each."""
        return Session(self, _SessionParams(n_ctx, threads, threads_batch, n_batch, int(kv_f32)))

    def _handle(self) -> ctypes.c_void_p:
        if not self._h:
            raise EdgekitError(f"{self.path}: the model is closed")
        return self._h

    def close(self) -> None:
        if self._h:
            _c().ek_model_free(self._h)
            self._h = ctypes.c_void_p()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class Session:
    """One sequence's KV cache. Its model must stay open while it is used."""

    def __init__(self, model: Model, params: _SessionParams) -> None:
        self.model = model  # keeps the model alive
        self._h = ctypes.c_void_p()
        _raise(_c().ek_session_new(model._handle(), ctypes.byref(params), ctypes.byref(self._h)))
        self.n_vocab = model.info.n_vocab

    def decode(self, tokens: Sequence[int] | np.ndarray, pos: int | None = None,
               logits_all: bool = False) -> np.ndarray:
        """Run tokens at positions pos.. (default: after the cached ones, forgetting any cached at or after pos).
        Returns a copy of the logits: (n_vocab,) for the last token, or (len(tokens), n_vocab) with logits_all."""
        ids = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n = int(ids.size)
        start = self.n_past if pos is None else int(pos)
        _raise(_c().ek_decode(self._handle(), ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), n, start,
                              int(logits_all)))
        if n == 0:
            return np.empty((0, self.n_vocab), np.float32)
        rows = n if logits_all else 1
        ptr = _c().ek_logits(self._h, -1 if not logits_all else 0)
        out = np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab)).copy()
        return out if logits_all else out[0]

    @property
    def n_past(self) -> int:
        return int(_c().ek_session_n_past(self._handle()))

    def abort(self) -> None:
        """Ask a running decode (on another thread) to stop at the next layer or batch."""
        if self._h:
            _c().ek_abort(self._h)

    def stats(self) -> dict[str, float | int]:
        """load/prefill/decode milliseconds, token counts and the process's peak RSS, as the C library measured."""
        raw = _Stats()
        _raise(_c().ek_session_stats(self._handle(), ctypes.byref(raw)))
        return {f: getattr(raw, f) for f, _ in _Stats._fields_}

    def _handle(self) -> ctypes.c_void_p:
        if not self._h:
            raise EdgekitError("the session is closed")
        return self._h

    def close(self) -> None:
        if self._h:
            _c().ek_session_free(self._h)
            self._h = ctypes.c_void_p()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
