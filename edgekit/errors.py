"""The errors edgekit's code raises on purpose, and the one way an optional dependency is asked for."""

from __future__ import annotations

import importlib
from types import ModuleType


class EdgekitError(Exception):
    """A user-facing error: printed as one line by the CLI, never as a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (as Ctrl-C would be), so every cleanup path that removes a
    half-written output runs for it too."""


# optional module -> (the extra that installs it, what it is for)
EXTRAS = {"executorch": ("pte", "ExecuTorch .pte programs"), "torchao": ("pte", "ExecuTorch .pte programs"),
          "llama_cpp": ("llama", "running a .gguf with llama.cpp"),
          "matplotlib": ("profile", "the profiler's PNG plots")}


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import an optional dependency, or one line saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra, what = EXTRAS.get(top, ("", top))
        hint = f" (pip install 'edgekit[{extra}]')" if extra else ""
        raise EdgekitError(f"{purpose or what} needs {top}, which is not installed{hint}") from None
