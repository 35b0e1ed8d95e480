"""Lazy reading of a Hugging Face checkpoint directory.

Tensors are read one at a time through the safetensors library (which mmaps the file); each
read opens the shard, copies one tensor out as float32 and closes it again, so pages of the
model never accumulate in this process: peak memory stays near the size of one tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

# The safetensors dtype names we can turn into float32.
_FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


@dataclass
class TensorRef:
    """Where one tensor lives, and what it looks like, without reading its data."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes_f32(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * 4


@dataclass
class Checkpoint:
    """A local HF model directory: config plus an index of every tensor in its shards."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorRef] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise EdgekitError(f"{self.path / 'config.json'}: 'architectures' must be a list of class names, "
                               f"not {archs!r}")
        return archs[0]

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Read one tensor, or rows [start, stop) of it, as a float32 numpy array.

        The result is a private copy and the file is closed again, so no mapped pages stay behind."""
        import torch
        from safetensors import safe_open

        ref = self.tensors[name]
        try:
            with safe_open(str(ref.file), framework="pt") as f:
                t = f.get_tensor(name) if start is None else f.get_slice(name)[start:stop]
        except Exception as e:  # safetensors raises its own error types for corrupt data
            raise EdgekitError(f"{ref.file}: cannot read tensor {name!r}: {e}") from None
        return t.to(torch.float32).numpy()


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Index a HF checkpoint directory: config.json and one or many *.safetensors shards."""
    path = Path(path)
    if not path.is_dir():
        raise EdgekitError(f"{path}: not a directory (expected a Hugging Face model directory or a .gguf)")
    config = read_json(path / "config.json")
    ckpt = Checkpoint(path=path, config=config)
    for shard in _shard_files(path):
        for ref in _index_shard(shard):
            if ref.name in ckpt.tensors:
                raise EdgekitError(f"{shard}: tensor {ref.name!r} also appears in {ckpt.tensors[ref.name].file}")
            ckpt.tensors[ref.name] = ref
    return ckpt


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object from a file; one line naming the file if it is missing, unreadable or not an object."""
    if not file.exists():
        raise EdgekitError(f"{file}: missing")
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekitError(f"{file}: not valid JSON ({e})") from None
    except OSError as e:
        raise EdgekitError(f"{file}: cannot read ({e.strerror or e})") from None
    if not isinstance(value, dict):
        raise EdgekitError(f"{file}: expected a JSON object, found {type(value).__name__}")
    return value


def _shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise EdgekitError(f"{index}: no 'weight_map'")
        files = sorted({path / f for f in weight_map.values()})
        for f in files:
            if not f.exists():
                raise EdgekitError(f"{f}: listed in {index.name} but missing")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        bins = sorted(path.glob("*.bin"))
        hint = " (found PyTorch .bin files; re-save the model with safetensors)" if bins else ""
        raise EdgekitError(f"{path}: no *.safetensors files{hint}")
    return files


def _index_shard(file: Path) -> list[TensorRef]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            refs = []
            for name in f.keys():
                sl = f.get_slice(name)
                dtype = sl.get_dtype()
                if dtype not in _FLOAT_DTYPES:
                    raise EdgekitError(f"{file}: tensor {name!r} has unsupported dtype {dtype}")
                refs.append(TensorRef(name, file, tuple(sl.get_shape()), dtype))
            return refs
    except EdgekitError:
        raise
    except Exception as e:
        raise EdgekitError(f"{file}: corrupt safetensors file ({e})") from None
