"""llama.cpp, through llama-cpp-python's low-level C API: the one place edgekit calls it.

- `Vocab`: a GGUF's tokenizer as llama.cpp runs it (a vocabulary-only load is cheap).
- `LlamaCppModel`: a GGUF loaded for inference (model, context, batch, KV memory). llama.cpp only runs
  forward passes and tokenizes; edgekit's shared loop (runtime.base) samples, stops and streams.
  `logits_all` gives every position's logits of a fresh sequence (evaluation, conformance tests).
- `quantize`: what `llama-quantize` does, in process: the reference edgekit's own quantizers are checked
  and benchmarked against.

llama.cpp logs every load step to stderr; while it works, its messages are kept (the last one explains a
failure) instead of printed.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, require
from edgekit.io.gguf_reader import read_header
from edgekit.runtime.base import Model
from edgekit.runtime.chat_template import ChatTemplate

GGML_TYPE_F32 = 0
DEFAULT_CTX = 4096
# llama.cpp's file types for the schemes edgekit offers, and whether the scheme is "pure" (one type for
# every weight, no per-tensor rules).
FTYPES = {"f16": (1, False), "bf16": (32, False), "q8_0": (7, False), "q6_k": (18, False),
          "q4_k": (14, True), "q4_k_m": (15, False), "q5_0": (8, False), "q5_1": (9, False)}
_log_lines: collections.deque[str] = collections.deque(maxlen=40)


def _import() -> Any:
    return require("llama_cpp")


def llama_cpp() -> Any:
    """The llama_cpp module with a CPU backend loaded, or one clear line if the extra is not installed."""
    ll = _import()
    _load_backends(ll)
    return ll


@functools.cache
def _ggml(lib_dir: Path) -> ctypes.CDLL:
    """ggml's own library, the very file libllama loaded: a wheel stores libggml.so and libggml.so.0 as two
    copies (no symlinks in wheels), and the other copy would be a second ggml with its own empty registry."""
    try:  # Linux: the one already mapped into this process
        maps = Path("/proc/self/maps").read_text().split()
        mapped = sorted({m for m in maps if m.startswith(str(lib_dir)) and Path(m).name.startswith("libggml.so")})
    except OSError:
        mapped = []
    names = [Path(m).name for m in mapped] or ["libggml.so", "libggml.dylib", "ggml.dll"]
    for name in names:
        if (lib_dir / name).exists():
            g = ctypes.CDLL(str(lib_dir / name))
            g.ggml_backend_reg_count.restype = ctypes.c_size_t
            g.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
            return g
    raise EdgekitError(f"{lib_dir}: llama-cpp-python has no ggml library there (reinstall it)")


def lib_dir(ll: Any) -> Path:
    """Where llama-cpp-python's shared libraries are (LLAMA_CPP_LIB_PATH overrides, as llama_cpp reads it)."""
    return Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(ll.__file__).parent / "lib")


def _load_backends(ll: Any) -> None:
    """A portable build (GGML_BACKEND_DL with GGML_CPU_ALL_VARIANTS, as .ci/setup makes it) ships one CPU
    backend per x86 feature level, as separate libraries, and registers none by itself: load the best one
    this CPU runs. A build with one built-in CPU backend has it registered already."""
    g = _ggml(lib_dir(ll))
    if g.ggml_backend_reg_count() == 0:
        with _CapturedLog():  # ("load_backend: loaded CPU backend from ...")
            g.ggml_backend_load_all_from_path(str(lib_dir(ll)).encode())
        if g.ggml_backend_reg_count() == 0:
            raise EdgekitError(f"{lib_dir(ll)}: llama.cpp found no CPU backend this CPU can run")


def cpu_backend() -> str:
    """Which of llama.cpp's CPU backend libraries this process runs ("libggml-cpu-haswell.so"), or
    "built in" for a build with a single CPU backend (for `edgekit doctor`)."""
    llama_cpp()
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    found = sorted({Path(line.split()[-1]).name for line in maps.splitlines() if "libggml-cpu-" in line})
    return ", ".join(found) or "built in"


class _CapturedLog:
    """llama.cpp's log goes to `_log_lines` inside the block; llama-cpp-python's own callback (errors only)
    is put back afterwards."""

    def __enter__(self) -> None:
        ll = _import()

        @ll.llama_log_callback
        def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", errors="replace").strip()
            if line:
                _log_lines.append(line)

        self._callback = keep  # must outlive the C side's use of it
        _log_lines.clear()
        ll.llama_log_set(keep, ctypes.c_void_p(0))

    def __exit__(self, *exc: object) -> None:
        from llama_cpp import _logger

        _logger.set_verbose(False)
        _import().llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _why() -> str:
    """The log line that explains the last failure."""
    errors = [ln for ln in _log_lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or list(_log_lines) or ["unknown reason"])[-1]


def _load(path: Path, vocab_only: bool) -> Any:
    ll = llama_cpp()
    with _CapturedLog():
        ll.llama_backend_init()
        mp = ll.llama_model_default_params()
        mp.vocab_only = vocab_only
        model = ll.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise EdgekitError(f"{path}: llama.cpp cannot load the model ({_why()})")
    return model


class Vocab:
    """The tokenizer of a loaded llama.cpp model. `Vocab.open(path)` loads a GGUF's vocabulary alone."""

    def __init__(self, model: Any, owner: bool = False) -> None:
        self._ll = llama_cpp()
        self._model = model if owner else None  # freed by close() only when this object loaded it
        self._vocab = self._ll.llama_model_get_vocab(model)
        self.n_vocab = int(self._ll.llama_vocab_n_tokens(self._vocab))

    @classmethod
    def open(cls, path: str | Path) -> Vocab:
        return cls(_load(Path(path), vocab_only=True), owner=True)

    @property
    def bos(self) -> int:
        return int(self._ll.llama_vocab_bos(self._vocab))

    @property
    def eos(self) -> int:
        return int(self._ll.llama_vocab_eos(self._vocab))

    @property
    def add_bos(self) -> bool:
        return bool(self._ll.llama_vocab_get_add_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    def is_control(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_control(self._vocab, token))

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids; parse_special: special-token text ("<|im_end|>") becomes the special token."""
        data = text.encode("utf-8")
        size = len(data) + 8
        for _ in range(2):
            buf = (self._ll.llama_token * size)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, parse_special)
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

    def piece(self, token: int) -> str:
        """A token's own text, special tokens included."""
        buf = ctypes.create_string_buffer(256)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._model:
            self._ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Vocab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LlamaCppModel(Model):
    """A .gguf file run by llama.cpp. n_ctx: context length (default: the model's, at most 4096);
    kv_f32: an F32 KV cache instead of llama.cpp's F16 (exact comparisons against transformers);
    flash_attn: llama.cpp's fused attention on or off (default: llama.cpp's choice; off computes attention
    as transformers does, for comparisons)."""

    format = "gguf"
    backend = "llama.cpp"

    def __init__(self, path: str | Path, *, n_ctx: int | None = None, n_batch: int = 512, threads: int | None = None,
                 kv_f32: bool = False, flash_attn: bool | None = None) -> None:
        path = Path(path)
        header = read_header(path)  # a clear error for a missing, foreign or truncated file, before llama.cpp
        ll = self._ll = llama_cpp()
        self._model = self._ctx = self._batch = None
        arch = header.get("general.architecture", "")
        train_ctx = int(header.get(f"{arch}.context_length", DEFAULT_CTX))
        n_ctx = n_ctx or min(train_ctx, DEFAULT_CTX)
        n_batch = min(n_batch, n_ctx)
        threads = threads or max(1, min(8, os.cpu_count() or 1))
        self._model = _load(path, vocab_only=False)
        with _CapturedLog():
            cp = ll.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, 1
            cp.n_threads = cp.n_threads_batch = threads
            cp.no_perf = False  # llama.cpp's own timings (`perf()`), the profiler's reference
            if kv_f32:
                cp.type_k = cp.type_v = GGML_TYPE_F32
            if flash_attn is not None:
                cp.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                      else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            self._ctx = ll.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise EdgekitError(f"{path}: llama.cpp cannot create a context of {n_ctx} tokens ({_why()})")
        self.vocab = Vocab(self._model)
        self._mem = ll.llama_get_memory(self._ctx)
        self.n_vocab = self.vocab.n_vocab
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self.threads = threads
        # A first decode sets up llama.cpp's compute graph and buffers (~1 s here): do it now, as llama-cli
        # does, so the first answer's timings are the model's, not the setup's.
        self._forward([max(self.vocab.bos, 0)], 0)

        tokens = header.get("tokenizer.ggml.tokens") or []

        def special(key: str) -> str | None:  # the text of a special token named in the metadata
            i = header.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        template = ChatTemplate(header.get("tokenizer.chat_template"), bos_token=special("bos"),
                                eos_token=special("eos"),
                                extra_tokens={"unk_token": special("unknown"), "pad_token": special("padding")})
        # Every end-of-generation token llama.cpp knows (eos, eot, eom, "<|im_end|>", ...).
        stops = {i for i in range(self.n_vocab) if self.vocab.is_eog(i)}
        # llama.cpp rounds the context up (to 256); the caller's limit is the one to keep.
        super().__init__(path, n_ctx=min(n_ctx, int(ll.llama_n_ctx(self._ctx))), n_batch=n_batch,
                         stop_ids=stops, add_bos=self.vocab.add_bos, template=template,
                         name=str(header.get("general.name") or path.stem))

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, add_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.vocab.detokenize(ids)

    def token_text(self, token: int) -> str:
        return self.vocab.piece(token)

    def is_special(self, token: int) -> bool:
        return self.vocab.is_control(token) or self.vocab.is_eog(token)

    def _decode(self, tokens: Sequence[int], start: int, all_logits: bool) -> None:
        ll, b, n = self._ll, self._batch, len(tokens)
        ll.llama_memory_seq_rm(self._mem, 0, start, -1)  # positions >= start belong to an older sequence
        b.n_tokens = n
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, start + i, 1, int(all_logits)
            b.seq_id[i][0] = 0
        b.logits[n - 1] = 1
        rc = ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise EdgekitError(f"{self.path}: llama_decode failed ({rc}) at positions {start}..{start + n - 1}")

    def _forward(self, tokens: Sequence[int], start: int) -> np.ndarray:
        self._decode(tokens, start, all_logits=False)
        out = self._ll.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(out, shape=(self.n_vocab,)).copy()

    def logits_all(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 [len(tokens), n_vocab] of a fresh sequence: row i is the distribution after tokens[i]."""
        if not 1 <= len(tokens) <= self.n_ctx:
            raise EdgekitError(f"{self.path}: logits of {len(tokens)} tokens need 1..{self.n_ctx}")
        self.cache.clear()
        rows = []
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            self._decode(chunk, i, all_logits=True)
            out = self._ll.llama_get_logits(self._ctx)
            rows.append(np.ctypeslib.as_array(out, shape=(len(chunk), self.n_vocab)).copy())
        return np.concatenate(rows)

    def perf(self, reset: bool = False) -> dict[str, float]:
        """llama.cpp's own timings since the last reset (llama_perf_context): t_p_eval_ms / n_p_eval for
        batches of several tokens, t_eval_ms / n_eval for single-token decodes. reset=True starts again."""
        d = self._ll.llama_perf_context(self._ctx)
        out = {k: float(getattr(d, k)) for k in ("t_load_ms", "t_p_eval_ms", "t_eval_ms", "n_p_eval", "n_eval")}
        if reset:
            self._ll.llama_perf_context_reset(self._ctx)
        return out

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


def quantize(src: str | Path, dst: str | Path, scheme: str, *, pure: bool | None = None,
             importance: dict[str, np.ndarray] | None = None, threads: int = 2) -> Path:
    """Requantize a float GGUF as `llama-quantize [--pure] [--imatrix]` would. scheme: a key of FTYPES; pure:
    one type for every weight (default: the scheme's own). importance maps GGUF tensor names to per-column
    weights (an imatrix, already divided by counts)."""
    ll = llama_cpp()
    ftype, scheme_pure = FTYPES[scheme]
    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = scheme_pure if pure is None else pure
    params.nthread = threads
    if importance:  # a C array of {name, data, size} entries, ended by one with a NULL name
        names = sorted(importance)
        arrays = [np.ascontiguousarray(importance[n], dtype=np.float32) for n in names]
        entries = (ll.llama_model_imatrix_data * (len(names) + 1))()
        for i, (name, a) in enumerate(zip(names, arrays, strict=True)):  # the last entry stays NULL
            e = entries[i]
            e.name, e.data, e.size = name.encode(), a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), a.size
        params.imatrix = entries  # entries and arrays stay alive (locals) until this function returns
    with _CapturedLog():
        rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise EdgekitError(f"{src}: llama.cpp cannot quantize it to {scheme} ({_why()})")
    return Path(dst)
