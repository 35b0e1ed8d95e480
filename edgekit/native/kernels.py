"""Matmul kernels of libedgekit from Python: numpy in, numpy out.

Weights are raw ggml rows (what a GGUF tensor holds, or what ``edgekit.native.quantize.quantize``
returns) of F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_K or Q6_K; activations are float32. ``matmul`` computes
``x @ W.T`` the way ggml does: activations are first quantized to Q8_0 (for Q8_0 / Q5_0 weights), Q8_1
(Q5_1), Q8_K (Q4_K / Q6_K) or BF16 (BF16), then integer dot products run in the best SIMD level this CPU has.

Buffers go to C as pointers, without copies when they are already C-contiguous.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from functools import cache

import numpy as np
from gguf import GGMLQuantizationType as QT

from edgekit.native import lib

#: weight types with kernels, and the block size their rows are made of
KERNEL_TYPES: dict[QT, int] = {QT.F32: 1, QT.F16: 1, QT.BF16: 1, QT.Q8_0: 32, QT.Q5_0: 32, QT.Q5_1: 32, QT.Q4_K: 256,
                               QT.Q6_K: 256}
#: every level the library knows, lowest first per architecture
LEVELS = ("scalar", "avx2", "avxvnni", "avx512vnni", "neon", "dotprod", "i8mm")

_F32_P = ctypes.POINTER(ctypes.c_float)


@cache
def _c() -> ctypes.CDLL:
    c = lib()
    sig = {
        "ek_cpu_features": (ctypes.c_uint32, []),
        "ek_cpu_feature_name": (ctypes.c_char_p, [ctypes.c_uint32]),
        "ek_kernel_level": (ctypes.c_int, []),
        "ek_level_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ek_level_from_name": (ctypes.c_int, [ctypes.c_char_p]),
        "ek_level_available": (ctypes.c_int, [ctypes.c_int]),
        "ek_set_kernel_level": (ctypes.c_int, [ctypes.c_int]),
        "ek_kernel_impl": (ctypes.c_char_p, [ctypes.c_int]),
        "ek_vec_type": (ctypes.c_int, [ctypes.c_int]),
        "ek_row_size": (ctypes.c_size_t, [ctypes.c_int, ctypes.c_int64]),
        "ek_last_error": (ctypes.c_char_p, []),
        "ek_quantize_activations": (
            ctypes.c_size_t, [ctypes.c_int, _F32_P, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]),
        "ek_matmul": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, _F32_P,
                                     ctypes.c_int64, _F32_P, ctypes.c_int]),
        "ek_matmul_q": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                       ctypes.c_void_p, ctypes.c_int64, _F32_P, ctypes.c_int]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(c, name)
        fn.restype, fn.argtypes = res, args
    return c


def _error(what: str) -> ValueError:
    return ValueError(f"{what}: {_c().ek_last_error().decode()}")


def features() -> list[str]:
    """CPU features libedgekit found (e.g. ``['sse3', ..., 'avx2', 'fma', 'f16c', 'avx512vnni']``)."""
    bits = _c().ek_cpu_features()
    names = []
    for i in range(32):
        if bits & (1 << i):
            name = _c().ek_cpu_feature_name(1 << i)
            names.append(name.decode() if name else f"bit{i}")
    return names


def level() -> str:
    """Kernel level in use: the best this CPU runs, unless EDGEKIT_CPU_LEVEL or set_level chose a lower one."""
    return _c().ek_level_name(_c().ek_kernel_level()).decode()


def available_levels() -> list[str]:
    """Levels this build has and this CPU can run, lowest first."""
    c = _c()
    return [n for n in LEVELS if c.ek_level_available(c.ek_level_from_name(n.encode()))]


def set_level(name: str) -> None:
    """Switch the kernel level for the whole process (tests, benchmarks). ValueError if unavailable."""
    c = _c()
    lv = c.ek_level_from_name(name.encode())
    if lv < 0:
        raise ValueError(f"unknown kernel level {name!r} (known: {', '.join(LEVELS)})")
    if c.ek_set_kernel_level(lv) != 0:
        raise _error(f"cannot use level {name!r}")


@contextlib.contextmanager
def using_level(name: str) -> Iterator[None]:
    """Run a block with another kernel level, then restore the previous one."""
    before = level()
    set_level(name)
    try:
        yield
    finally:
        set_level(before)


def _check_type(qtype: QT | int) -> QT:
    try:
        qt = QT(qtype)
    except ValueError:
        raise ValueError(f"unknown ggml type id {qtype!r}") from None
    if qt not in KERNEL_TYPES:
        raise ValueError(f"no matmul kernels for {qt.name} (supported: {', '.join(t.name for t in KERNEL_TYPES)})")
    return qt


def impl(qtype: QT | int) -> str:
    """Which level's code runs weights of qtype right now (F32 at avxvnni runs the avx2 code, for instance)."""
    return _c().ek_kernel_impl(int(_check_type(qtype))).decode()


def vec_type(qtype: QT | int) -> QT:
    """Type the activations are quantized to for weights of qtype (Q8_0, Q8_K, or F32: kept as is)."""
    return QT(_c().ek_vec_type(int(_check_type(qtype))))


def row_size(qtype: QT | int, ncols: int) -> int:
    """Bytes per row of ncols values in qtype (weights or activation types); ValueError if not whole blocks."""
    qt = QT(qtype)
    size = int(_c().ek_row_size(int(qt), int(ncols)))
    if size == 0:
        raise ValueError(f"{qt.name} rows must be a positive multiple of its block size, got {ncols} values")
    return size


def _activations(x: np.ndarray, ncols: int) -> tuple[np.ndarray, bool]:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim not in (1, 2) or arr.shape[-1] != ncols:
        raise ValueError(f"x must have shape (ncols,) or (ntokens, ncols) with ncols={ncols}, got {arr.shape}")
    return arr.reshape(-1, ncols), arr.ndim == 1


def _weights(w: np.ndarray | bytes | bytearray | memoryview, qt: QT, shape: tuple[int, int]) -> np.ndarray:
    nrows, ncols = (int(s) for s in shape)
    if nrows < 0:
        raise ValueError(f"shape must be (nrows, ncols) with nrows >= 0, got {shape}")
    buf = np.ascontiguousarray(np.frombuffer(w, dtype=np.uint8) if not isinstance(w, np.ndarray) else w)
    need = nrows * row_size(qt, ncols)
    if buf.nbytes != need:
        raise ValueError(f"{qt.name} weights of shape {shape} take {need} bytes, got {buf.nbytes}")
    return buf


def quantize_activations(x: np.ndarray, qtype: QT | int) -> np.ndarray:
    """Activations (ntokens, ncols) float32 -> rows of vec_type(qtype) blocks, uint8 (ntokens, row bytes)."""
    qt = _check_type(qtype)
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D, got shape {arr.shape}")
    arr = arr.reshape(-1, arr.shape[-1])
    ntok, ncols = arr.shape
    out = np.empty((ntok, row_size(vec_type(qt), ncols)), dtype=np.uint8)
    if ntok and _c().ek_quantize_activations(int(qt), arr.ctypes.data_as(_F32_P), out.ctypes.data, ntok, ncols) == 0:
        raise _error("ek_quantize_activations")
    return out


def matmul(
    w: np.ndarray | bytes | bytearray | memoryview,
    qtype: QT | int,
    shape: tuple[int, int],
    x: np.ndarray,
    nthreads: int = 0,
) -> np.ndarray:
    """``x @ W.T`` for W = nrows x ncols weights stored as ggml rows of qtype (raw bytes).

    x: (ncols,) or (ntokens, ncols). Returns float32 (nrows,) or (ntokens, nrows).
    nthreads <= 0: every online CPU. The result does not depend on the thread count.
    """
    qt = _check_type(qtype)
    nrows, ncols = (int(s) for s in shape)
    buf = _weights(w, qt, (nrows, ncols))
    xs, squeeze = _activations(x, ncols)
    y = np.empty((xs.shape[0], nrows), dtype=np.float32)
    rc = _c().ek_matmul(int(qt), buf.ctypes.data, nrows, ncols, xs.ctypes.data_as(_F32_P), xs.shape[0],
                        y.ctypes.data_as(_F32_P), int(nthreads))
    if rc != 0:
        raise _error("ek_matmul")
    return y[0] if squeeze else y


def matmul_q(
    w: np.ndarray | bytes | bytearray | memoryview,
    qtype: QT | int,
    shape: tuple[int, int],
    xq: np.ndarray,
    nthreads: int = 0,
) -> np.ndarray:
    """``matmul`` from activations already quantized by ``quantize_activations`` (ntokens, row bytes)."""
    qt = _check_type(qtype)
    nrows, ncols = (int(s) for s in shape)
    buf = _weights(w, qt, (nrows, ncols))
    xrow = row_size(vec_type(qt), ncols)
    xb = np.ascontiguousarray(xq).view(np.uint8).reshape(-1)
    if xb.nbytes % xrow:
        raise ValueError(f"quantized activations must be whole rows of {xrow} bytes, got {xb.nbytes} bytes")
    ntok = xb.nbytes // xrow
    y = np.empty((ntok, nrows), dtype=np.float32)
    rc = _c().ek_matmul_q(int(qt), buf.ctypes.data, nrows, ncols, xb.ctypes.data, ntok, y.ctypes.data_as(_F32_P),
                          int(nthreads))
    if rc != 0:
        raise _error("ek_matmul_q")
    return y
