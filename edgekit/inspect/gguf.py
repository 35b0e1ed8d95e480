"""What is inside a GGUF file: architecture, size, bits/weight, tensor types, metadata (and the recipe)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.io.gguf_reader import read_header
from edgekit.progress import human_bytes


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Summary of a GGUF file: architecture, size, bits/weight, tensor types, metadata."""
    import gguf

    header = read_header(path)
    metadata: dict[str, Any] = {}
    for key, f in header.fields.items():
        value = f.value
        if isinstance(value, list) and len(value) > 8:  # token lists etc.: say how long, not what
            value = f"[{len(value)} items]"
        metadata[key] = value

    by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "params": 0, "bytes": 0})
    tensors = []
    n_params = n_bytes = 0
    for t in header.tensors:
        n = int(np.prod(t.shape))
        entry = by_type[t.type.name]
        entry["tensors"] += 1
        entry["params"] += n
        entry["bytes"] += t.nbytes
        n_params += n
        n_bytes += t.nbytes
        tensors.append({"name": t.name, "type": t.type.name, "shape": list(t.shape), "bytes": t.nbytes})
    ftype = metadata.get("general.file_type")
    return {
        "format": "gguf",
        "file": str(header.path),
        "architecture": metadata.get("general.architecture", "?"),
        "name": metadata.get("general.name"),
        "file_type": gguf.LlamaFileType(ftype).name if ftype is not None else None,
        "file_bytes": header.file_size,
        "n_tensors": len(tensors),
        "n_params": n_params,
        "bits_per_weight": 8 * n_bytes / max(n_params, 1),
        "types": dict(by_type),
        "metadata": metadata,
        "tensors": tensors,
    }


def format_report(info: dict[str, Any], show_tensors: bool = False) -> str:
    md = info["metadata"]
    arch = info["architecture"]
    lines = [
        f"file          {info['file']}",
        f"architecture  {arch}" + (f"   name: {info['name']}" if info["name"] else ""),
        f"file type     {info['file_type']}",
        f"size          {human_bytes(info['file_bytes'])}  ({info['n_params'] / 1e6:.2f} M params, "
        f"{info['bits_per_weight']:.2f} bits/weight, {info['n_tensors']} tensors)",
    ]
    hp = {k.removeprefix(f"{arch}."): v for k, v in md.items() if k.startswith(f"{arch}.")}
    if hp:
        lines.append("hparams       " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    tok = {k.removeprefix("tokenizer.ggml."): v for k, v in md.items() if k.startswith("tokenizer.ggml.")}
    if tok:
        lines.append("tokenizer     " + ", ".join(f"{k}={v}" for k, v in tok.items()))
    if "tokenizer.chat_template" in md:
        lines.append(f"chat template {len(md['tokenizer.chat_template'])} chars")
    if "edgekit.recipe" in md:
        lines.append(f"recipe        {_recipe_line(md['edgekit.recipe'])}")
    lines.append("types")
    for name, e in sorted(info["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"  {name:<6} {e['tensors']:>5} tensors  {e['params'] / 1e6:>9.2f} M params  "
                     f"{human_bytes(e['bytes']):>11}")
    if show_tensors:
        lines.append("tensors")
        for t in info["tensors"]:
            lines.append(f"  {t['name']:<40} {t['type']:<6} {str(t['shape']):<20} {human_bytes(t['bytes'])}")
    return "\n".join(lines)


def _recipe_line(text: str) -> str:
    import json

    from edgekit.converters.recipe import describe

    try:
        return describe(json.loads(text))
    except (ValueError, AttributeError, TypeError):
        return f"(unreadable: {len(text)} chars)"
