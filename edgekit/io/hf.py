"""Hugging Face model directories, loaded one way: config, model and tokenizer through transformers, with
one mapping from whatever transformers raises to a one-line error naming the directory.

(Reading tensors one at a time, without transformers, is `edgekit.io.checkpoint`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.io.checkpoint import read_json
from edgekit.quiet import quiet_transformers


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 300 characters."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def check_model_dir(path: Path) -> None:
    """A directory with a config.json, before anything is loaded from it."""
    if not path.exists():
        raise EdgekitError(f"{path}: model not found")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise EdgekitError(f"{path}: not a Hugging Face model directory (no config.json)")


def _fail(path: Path, what: str, e: Exception) -> EdgekitError:
    return EdgekitError(f"{path}: transformers cannot load the {what} ({first_line(e)})")


def load_config(path: Path) -> Any:
    """transformers' config object of a model directory."""
    from transformers import AutoConfig

    check_model_dir(path)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:  # transformers raises many types for one user mistake: a bad config.json
        raise _fail(path, "config", e) from None


def load_model(path: Path, *, dtype: Any = None, config: Any = None, attention: str | None = None) -> Any:
    """The causal LM of a model directory in eval mode, float32 unless dtype says otherwise. config: a
    (modified) config to use instead of the directory's; attention: transformers' attn_implementation
    ("eager" when attention weights are wanted, "sdpa" for export)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    kw: dict[str, Any] = {"dtype": dtype or torch.float32}
    if config is not None:
        kw["config"] = config
    if attention is not None:
        kw["attn_implementation"] = attention
    try:
        with quiet_transformers():  # no weight-loading bar: the caller shows its own progress
            model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except Exception as e:  # missing or corrupt weights, an unknown architecture, shapes that do not match
        raise _fail(path, "model", e) from None
    return model.eval()


def load_tokenizer(path: Path) -> Any:
    """transformers' tokenizer of a model directory."""
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise EdgekitError(f"{path}: not a Hugging Face directory (a tokenizer needs tokenizer.json or "
                           "tokenizer.model)")
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a missing, malformed or mistyped tokenizer file
        raise _fail(path, "tokenizer", e) from None


def special_prefix(tok: Any) -> list[int]:
    """Token ids the tokenizer puts before any text (BOS), found by encoding a probe with and without them."""
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def storage_dtype(path: Path) -> Any:
    """The torch dtype a checkpoint is stored in when it is half precision (float16/bfloat16), else None."""
    import torch

    raw = read_json(path / "config.json")
    name = raw.get("dtype") or raw.get("torch_dtype")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name)
