"""Hugging Face model directories that the compression steps (prune, sparsify, distill) read and write: the
source check against the converter's architecture table, a new directory saved like its source, and the
step's record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgekit.converters.archs import ARCHITECTURES
from edgekit.errors import EdgekitError
from edgekit.io.hf import read_json, storage_dtype
from edgekit.quiet import quiet_transformers

# Files that a new model replaces rather than copies from its source.
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".pte"}
REPLACED = {"config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


def check_source(source_dir: Path, what: str) -> str:
    """The model's architecture (a key of archs.ARCHITECTURES), after checking that the directory holds a
    supported HF model: every architecture the exporters take."""
    cfg_file = source_dir / "config.json"
    if not cfg_file.is_file():
        raise EdgekitError(f"{source_dir}: not a Hugging Face model directory (no config.json)")
    archs = read_json(cfg_file).get("architectures") or []
    name = archs[0] if archs and isinstance(archs, list) else "(none)"
    if name not in ARCHITECTURES:
        raise EdgekitError(f"{source_dir}: {what} does not support architecture {name!r} "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    return name


def save_like_source(model: Any, source_dir: Path, out: Path) -> None:
    """save_pretrained in the source's storage precision (bf16 stays bf16), with the source's side files
    (tokenizer, chat template, earlier edgekit_*.json records) copied through."""
    dtype = storage_dtype(source_dir)
    if dtype is not None:
        model = model.to(dtype)
    for f in source_dir.iterdir():
        if f.is_file() and f.suffix not in WEIGHT_SUFFIXES and f.name not in REPLACED:
            shutil.copy2(f, out / f.name)
    with quiet_transformers():  # no shard-writing bar: the summary line is the output
        model.save_pretrained(out)


def write_record(path: Path, d: dict[str, Any]) -> None:
    """What was done, for the record: one key per line, each value on one line."""
    path.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()) + "\n}\n")
