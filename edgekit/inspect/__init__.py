"""`edgekit inspect`: what is inside a file edgekit wrote, a GGUF (`gguf`) or an ExecuTorch program (`pte`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError


def inspect_file(path: str | Path, *, tensors: bool = False) -> dict[str, Any]:
    """A summary of a .gguf or .pte file as a plain dict (what --json prints); tensors: list every tensor (GGUF
    only: a .pte keeps its weights inside delegate blobs)."""
    path = Path(path)
    if path.suffix == ".pte":
        from edgekit.inspect.pte import inspect_pte

        if tensors:
            raise EdgekitError("--tensors: only for .gguf files (a .pte keeps its weights inside delegate blobs)")
        return inspect_pte(path)
    from edgekit.inspect.gguf import inspect_gguf

    info = inspect_gguf(path)
    if not tensors:
        info.pop("tensors")
    return info


def format_report(info: dict[str, Any]) -> str:
    """inspect_file's summary as text."""
    if info.get("format") == "pte":
        from edgekit.inspect.pte import format_report as pte_report

        return pte_report(info)
    from edgekit.inspect.gguf import format_report as gguf_report

    return gguf_report(info, show_tensors="tensors" in info)
