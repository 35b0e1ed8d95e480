"""One entry point to turn a float32 tensor into the bytes of a GGML type.

K-quants, Q8_0 and the Q5_0/Q5_1 fallbacks run in libedgekit (C, multithreaded, imatrix-aware like
ggml); BF16 uses gguf-py, which rounds exactly like ggml.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

T = GGMLQuantizationType
NATIVE = {T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q6_K}
IMATRIX_AWARE = {T.Q5_0, T.Q5_1, T.Q4_K, T.Q6_K}


def quantize_tensor(x: np.ndarray, qtype: GGMLQuantizationType, imatrix: np.ndarray | None = None,
                    nthreads: int = 0) -> np.ndarray:
    """float32 array (row length last) -> array ready to write (float32, float16 or raw uint8 blocks)."""
    if qtype == T.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if qtype == T.F16:
        return x.astype(np.float16)
    if qtype in NATIVE:
        from edgekit.native.quantize import quantize

        rows = x.reshape(-1, x.shape[-1])
        im = imatrix if qtype in IMATRIX_AWARE else None
        return quantize(np.ascontiguousarray(rows, dtype=np.float32), qtype, im, nthreads)
    return gguf_quants.quantize(x, qtype)
