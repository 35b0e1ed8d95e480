"""A Hugging Face model directory in and out: the checks, loading and atomic writing that prune, sparsify
and distill share."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

# Architectures whose layers edgekit knows how to slice, sparsify and train (the GGUF/.pte exporters take them all).
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM")
# Files that a new model replaces rather than copies from its source.
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".pte"}
REPLACED = {"config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


def check_source(source_dir: Path, what: str) -> str:
    """The model's architecture, after checking that the directory holds a supported HF model."""
    cfg_file = source_dir / "config.json"
    if not cfg_file.is_file():
        raise EdgekitError(f"{source_dir}: not a Hugging Face model directory (no config.json)")
    try:
        archs = json.loads(cfg_file.read_text(encoding="utf-8")).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekitError(f"{cfg_file}: not valid JSON ({e})") from None
    arch = archs[0] if archs else "(none)"
    if arch not in ARCHITECTURES:
        raise EdgekitError(f"{source_dir}: {what} does not support architecture {arch!r} "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    return arch


def check_output_dir(out: Path) -> None:
    """A new or empty directory whose parent exists and is writable."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgekitError(f"{out}: already exists and is not an empty directory (choose a new output directory)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"{out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EdgekitError(f"{out}: directory {parent} is not writable")


def load_config(source_dir: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source_dir)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(f"{source_dir}: transformers cannot read config.json ({first})") from None


def load_model(source_dir: Path, dtype: Any = None, eager: bool = False):
    """The model in eval mode, float32 unless dtype says otherwise; eager attention when attention weights
    are wanted (the fused kernels do not return them)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.converters.imatrix import _quiet_transformers

    kw = {"attn_implementation": "eager"} if eager else {}
    try:
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=dtype or torch.float32, **kw)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(f"{source_dir}: transformers cannot load the model ({first})") from None
    return model.eval()


@contextlib.contextmanager
def atomic_dir(output_dir: Path) -> Iterator[Path]:
    """A temp dir beside output_dir, renamed to it when the block succeeds and removed when it fails, so a
    failure never leaves a half-written model. output_dir must have passed check_output_dir."""
    parent = output_dir.parent if str(output_dir.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        if output_dir.exists():
            output_dir.rmdir()  # checked empty before the work started
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_like_source(model, source_dir: Path, out: Path) -> None:
    """save_pretrained in the source's storage precision (bf16 stays bf16), with the source's side files
    (tokenizer, chat template, earlier edgekit_*.json records) copied through."""
    from edgekit.converters.imatrix import _quiet_transformers

    dtype = source_dtype(source_dir)
    if dtype is not None:
        model = model.to(dtype)
    for f in source_dir.iterdir():
        if f.is_file() and f.suffix not in WEIGHT_SUFFIXES and f.name not in REPLACED:
            shutil.copy2(f, out / f.name)
    with _quiet_transformers():  # no shard-writing bar: the summary line is the output
        model.save_pretrained(out)


def write_record(path: Path, d: dict[str, Any]) -> None:
    """What was done, for the record: one key per line, each value on one line."""
    path.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()) + "\n}\n")


def source_dtype(source_dir: Path):
    import torch

    raw = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
    name = raw.get("dtype") or raw.get("torch_dtype")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name)
