"""The demo corpus: the Python standard library's .py sources, present wherever Python is.

The split is fixed and documented, so held-out perplexities are reproducible:
  * files: every ``*.py`` under the stdlib directory, skipping test suites, bundled third-party
    code, demos and generated data (EXCLUDED below);
  * held out: a file whose path relative to the stdlib directory (POSIX form) has
    ``zlib.crc32(path) % HELDOUT_MOD == 0`` (about 5% of files). A hash, not a position in a list,
    so a Python release that adds or drops a module moves no other file across the split.
"""

from __future__ import annotations

import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

HELDOUT_MOD = 20
EXCLUDED = {"test", "tests", "idle_test", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip",
            "pydoc_data", "__pycache__", "config-3.11-x86_64-linux-gnu"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def files() -> list[Path]:
    root = stdlib_dir()
    return sorted(p for p in root.rglob("*.py") if not EXCLUDED.intersection(p.relative_to(root).parts))


def is_heldout(path: Path) -> bool:
    return zlib.crc32(path.relative_to(stdlib_dir()).as_posix().encode()) % HELDOUT_MOD == 0


def split() -> tuple[list[Path], list[Path]]:
    """(training files, held-out files), both sorted."""
    all_files = files()
    return [p for p in all_files if not is_heldout(p)], [p for p in all_files if is_heldout(p)]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def lines(paths: list[Path], limit_bytes: int | None = None) -> Iterator[str]:
    """The files' lines in order, stopping after about limit_bytes."""
    total = 0
    for p in paths:
        for line in read(p).splitlines(keepends=True):
            yield line
            total += len(line)
            if limit_bytes is not None and total >= limit_bytes:
                return
