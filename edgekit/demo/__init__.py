"""The built-in demo teacher: a small Llama trained on the Python standard library's own sources.

It ships with the package (fp16 safetensors + tokenizer), so `edgekit convert --demo` and the
README's main command work offline. `python -m edgekit.demo.train` rebuilds it from scratch.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError

MODEL_DIR = Path(__file__).parent / "model"


def model_dir() -> Path:
    """The packaged demo model directory (a regular Hugging Face checkpoint)."""
    if not (MODEL_DIR / "model.safetensors").exists():
        raise EdgekitError(f"{MODEL_DIR}: demo model missing; rebuild it with `python -m edgekit.demo.train`")
    return MODEL_DIR
