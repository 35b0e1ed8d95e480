"""Checks on an output path, made before any expensive work starts."""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import EdgekitError


def check_output_path(out: Path, suffix: str) -> None:
    """One clear line if `out` (a `suffix` file) cannot be written: wrong extension, a directory,
    a missing or read-only parent directory."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.suffix != suffix:
        raise EdgekitError(f"{out}: the output needs the {suffix} extension")
    if out.is_dir():
        raise EdgekitError(f"{out}: is a directory (give a {suffix} file name)")
    if not parent.is_dir():
        raise EdgekitError(f"{out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EdgekitError(f"{out}: directory {parent} is not writable")
