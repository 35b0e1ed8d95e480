"""Run edgekit's models: one interface (`Model`), a backend per format.

    import edgekit
    m = edgekit.load("demo.gguf")          # .gguf -> llama.cpp, .pte -> ExecuTorch, a bundle directory
    print(m.generate("def fib(n):", max_tokens=32, temperature=0))
    for piece in m.chat([{"role": "user", "content": "hi"}], stream=True):
        print(piece, end="")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.runtime.base import Model, Stats
from edgekit.runtime.sampling import GREEDY, Sampler, SamplingParams

__all__ = ["GREEDY", "Model", "Sampler", "SamplingParams", "Stats", "load", "model_file"]

FORMATS = {".gguf": "gguf", ".pte": "pte"}


def model_file(path: str | Path, verify: bool = True) -> Path:
    """The model file a path stands for: the file itself, or the model of a bundle directory (its checksums
    verified unless verify=False). One clear error for anything else."""
    from edgekit.runtime import bundle

    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / bundle.MANIFEST).is_file():
            return bundle.verify(path, checksums=verify)
        found = [p for p in sorted(path.iterdir()) if p.suffix in FORMATS]
        if len(found) != 1:
            raise EdgekitError(f"{path}: not an edgekit bundle (no {bundle.MANIFEST}) and not a directory with "
                               "exactly one .gguf or .pte file")
        return found[0]
    return path


GGUF_BACKENDS = ("llamacpp", "native")  # who runs a .gguf: llama.cpp (llama-cpp-python) or edgekit's C runtime


def load(path: str | Path, *, n_ctx: int | None = None, verify: bool = True, backend: str | None = None,
         **options: Any) -> Model:
    """Load a model for inference; the backend follows the file's format (the suffix, else its first bytes).
    A bundle directory's files are checked against its manifest's sha256 first (verify=False skips the hashing,
    e.g. for a big model an app has already checked once).

    n_ctx: context length (GGUF: default the model's, at most 4096; .pte: at most the program's cache).
    backend: for a .gguf, "llamacpp" (the default) or "native" (edgekit's own C runtime, libedgekit).
    GGUF options: threads, n_batch, kv_f32 (F32 KV cache, for exact comparisons)."""
    if backend not in (None, *GGUF_BACKENDS):
        raise EdgekitError(f"unknown backend {backend!r} (choose from {', '.join(GGUF_BACKENDS)})")
    f = model_file(path, verify)
    fmt = FORMATS.get(f.suffix.lower())
    if fmt is None:
        with open(f, "rb") as fh:
            fmt = "gguf" if fh.read(4) == b"GGUF" else None
    if fmt == "gguf":
        if backend == "native":
            from edgekit.runtime.backends.native import NativeModel

            return NativeModel(f, n_ctx=n_ctx, **options)
        from edgekit.runtime.backends.llamacpp import LlamaCppModel

        return LlamaCppModel(f, n_ctx=n_ctx, **options)
    if fmt == "pte":
        if backend is not None:
            raise EdgekitError(f"{f}: a .pte runs on ExecuTorch only (--backend is for .gguf models)")
        if options:
            raise EdgekitError(f"{f}: options {', '.join(options)} are for .gguf models only")
        from edgekit.runtime.backends.executorch import PteModel

        return PteModel(f, n_ctx=n_ctx)
    raise EdgekitError(f"{f}: unsupported model file (expected a .gguf, a .pte or an edgekit bundle directory)")
