"""Outputs: checked before any expensive work starts, written so that they appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
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


def check_output_dir(out: Path) -> None:
    """A new or empty directory whose parent exists and is writable."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgekitError(f"{out}: already exists and is not an empty directory (choose a new output directory)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"{out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EdgekitError(f"{out}: directory {parent} is not writable")


def temp_path(final: Path, *, directory: bool = False) -> Path:
    """Where to write `final` before renaming it into place: `.NAME.PID.tmp` beside it (same file system, so
    the rename is atomic; hidden, so nothing mistakes it for the output). Leftovers of killed runs (a PID that
    no longer runs) are removed on the way. directory=True creates it as a directory."""
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    for old in parent.glob(f".{glob_escape(final.name)}.*.tmp"):
        pid = old.name[len(final.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    tmp = parent / f".{final.name}.{os.getpid()}.tmp"
    if directory:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    return tmp


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def atomic_dir(output_dir: Path) -> Iterator[Path]:
    """A temp dir beside output_dir, renamed to it when the block succeeds and removed when it fails, so a
    failure never leaves a half-written model. output_dir must have passed check_output_dir."""
    tmp = temp_path(output_dir, directory=True)
    try:
        yield tmp
        if output_dir.exists():
            output_dir.rmdir()  # checked empty before the work started
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
