"""llama.cpp as the reference that edgekit is checked and benchmarked against (llama-cpp-python)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

# llama.cpp's file types for the schemes edgekit offers; "pure" = one type for every weight.
FTYPES = {"f16": (1, False), "bf16": (32, False), "q8_0": (7, False), "q6_k": (18, False),
          "q4_k": (14, True), "q4_k_m": (15, False)}


def quantize(src: str | Path, dst: str | Path, scheme: str, *, importance: dict[str, np.ndarray] | None = None,
             threads: int = 2) -> Path:
    """What `llama-quantize [--pure] [--imatrix]` does, in process: requantize a float GGUF.

    importance maps GGUF tensor names to per-column weights (an imatrix, already divided by counts).
    """
    import llama_cpp

    ftype, pure = FTYPES[scheme]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = pure
    params.nthread = threads
    if importance:  # a C array of {name, data, size} entries, ended by one with a NULL name
        names = sorted(importance)
        arrays = [np.ascontiguousarray(importance[n], dtype=np.float32) for n in names]
        entries = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
        for i, (name, a) in enumerate(zip(names, arrays, strict=True)):  # the last entry stays NULL
            e = entries[i]
            e.name, e.data, e.size = name.encode(), a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), a.size
        params.imatrix = entries  # entries and arrays stay alive (locals) until this function returns
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {scheme}) failed with {rc}")
    return Path(dst)
