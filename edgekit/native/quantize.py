"""Fast quantization to ggml block formats through libedgekit (C, multithreaded).

Output is byte-identical to ggml's quantizers (and to the numpy twin in
``edgekit/testing/quants_ref.py``), so tensors written with it load in llama.cpp exactly as if
``llama-quantize`` had made them. Buffers go to C as raw pointers; no copy is made when the
input is already C-contiguous float32.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
from gguf import GGMLQuantizationType

from edgekit.native import lib

# Types the C library quantizes; values are ggml's type ids (and the C enum's).
NATIVE_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1, GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_K,
     GGMLQuantizationType.Q6_K}
)

_F32_P = ctypes.POINTER(ctypes.c_float)


@cache
def _c() -> ctypes.CDLL:
    """The library with its signatures declared (ctypes would otherwise assume int everywhere)."""
    c = lib()
    c.ek_version.restype = ctypes.c_char_p
    c.ek_version.argtypes = []
    c.ek_row_size.restype = ctypes.c_size_t
    c.ek_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    c.ek_quantize.restype = ctypes.c_size_t
    c.ek_quantize.argtypes = [
        ctypes.c_int,
        _F32_P,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        _F32_P,
        ctypes.c_int,
    ]
    return c


def version() -> str:
    """libedgekit's version string."""
    return _c().ek_version().decode()


def _check_type(qtype: GGMLQuantizationType | int) -> GGMLQuantizationType:
    try:
        qt = GGMLQuantizationType(qtype)
    except ValueError:
        raise ValueError(f"unknown ggml type id {qtype!r}") from None
    if qt not in NATIVE_TYPES:
        names = ", ".join(sorted(t.name for t in NATIVE_TYPES))
        raise ValueError(f"native quantizer does not support {qt.name} (supported: {names})")
    return qt


def row_size(qtype: GGMLQuantizationType | int, n: int) -> int:
    """Bytes that one row of n values takes in qtype. ValueError if n is not a whole number of blocks."""
    from edgekit.native.kernels import row_size as native_row_size

    return native_row_size(int(_check_type(qtype)), n)


def quantize(
    x: np.ndarray,
    qtype: GGMLQuantizationType | int,
    imatrix: np.ndarray | None = None,
    nthreads: int = 0,
) -> np.ndarray:
    """Quantize rows of float32 values into ggml blocks.

    x: (rows, n_per_row) array (1-D is one row; more dims are flattened into rows). Anything that
    is not C-contiguous float32 is converted first (a copy).
    imatrix: optional importance weights, one non-negative finite value per column (n_per_row),
    as llama.cpp's imatrix gives them; steers the scale search of every type but Q8_0 (ignored).
    nthreads: worker threads; <= 0 uses every online CPU. The result does not depend on it.

    Returns uint8 of shape (rows, row_size(qtype, n_per_row)).
    """
    qt = _check_type(qtype)
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim == 0:
        raise ValueError("cannot quantize a scalar")
    n_per_row = arr.shape[-1]
    rows = int(np.prod(arr.shape[:-1], dtype=np.int64)) if arr.ndim > 1 else 1
    rsize = row_size(qt, n_per_row)

    im_ptr = None
    if imatrix is not None:
        im = np.ascontiguousarray(imatrix, dtype=np.float32)
        if im.shape != (n_per_row,):
            raise ValueError(f"imatrix must have shape ({n_per_row},) to match n_per_row, got {im.shape}")
        if not np.isfinite(im).all() or (im < 0).any():
            raise ValueError("imatrix values must be finite and non-negative")
        im_ptr = im.ctypes.data_as(_F32_P)

    out = np.empty((rows, rsize), dtype=np.uint8)
    if rows == 0:
        return out
    written = _c().ek_quantize(
        int(qt), arr.ctypes.data_as(_F32_P), out.ctypes.data, rows, n_per_row, im_ptr, int(nthreads)
    )
    if written != rows * rsize:
        raise RuntimeError(f"ek_quantize wrote {written} bytes, expected {rows * rsize}")
    return out
