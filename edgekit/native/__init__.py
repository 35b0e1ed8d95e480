"""libedgekit, the C library built from native/, reached through ctypes (no Python headers involved):
`lib()` loads it, `kernels` and `quantize` declare and wrap its functions."""

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
        # The build installs the library into the package's folder (in an editable install, the package has
        # two: the source tree and the build's install folder).
        package = sys.modules[__name__.partition(".")[0]]
        name = _NAMES.get(sys.platform, "libedgekit.so")
        candidates = [Path(p) / name for p in package.__path__]
    for path in candidates:
        if path.exists():
            return ctypes.CDLL(str(path))
    raise OSError(f"libedgekit not found (looked for {', '.join(map(str, candidates))}); reinstall edgekit")
