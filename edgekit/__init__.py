"""edgekit: put language models on the devices people own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from edgekit.runtime import Model


def load(path: str | Path, **options: Any) -> Model:
    """Load a .gguf (llama.cpp), a .pte (ExecuTorch) or a bundle directory for chat and generation;
    see `edgekit.runtime.load`. Imported lazily: `import edgekit` stays cheap."""
    from edgekit.runtime import load as _load

    return _load(path, **options)
