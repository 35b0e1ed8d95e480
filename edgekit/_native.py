"""ctypes binding to libedgekit, the C library built from native/ (no Python headers involved)."""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache
from pathlib import Path

_NAMES = {"linux": "libedgekit.so", "darwin": "libedgekit.dylib", "win32": "edgekit.dll"}


@cache
def lib() -> ctypes.CDLL:
    """Load libedgekit once. EDGEKIT_LIB overrides the location (to test another build)."""
    override = os.environ.get("EDGEKIT_LIB")
    if override:
        candidates = [Path(override)]
    else:
        import edgekit  # the package path also holds the build's output in editable installs

        name = _NAMES.get(sys.platform, "libedgekit.so")
        candidates = [Path(p) / name for p in edgekit.__path__]
    for path in candidates:
        if path.exists():
            return ctypes.CDLL(str(path))
    raise OSError(f"libedgekit not found (looked for {', '.join(map(str, candidates))}); reinstall edgekit")
