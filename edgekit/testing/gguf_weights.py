"""Load a GGUF's (dequantized) weights back into the transformers model it came from.

This is how quantized files are checked against transformers: the same math on the same
(dequantized) weights must give the same logits as llama.cpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters import archs
from edgekit.io.checkpoint import read_json
from edgekit.io.hf import load_model


def dequantized_state_dict(gguf_path: str | Path, hf_dir: str | Path) -> dict[str, np.ndarray]:
    """HF-named float32 tensors from a GGUF file (q/k rows un-permuted for llama-style archs)."""
    import gguf
    from gguf.quants import dequantize

    config = read_json(Path(hf_dir) / "config.json")
    arch = archs.get_arch(config["architectures"][0], str(hf_dir))
    hp = archs.HParams.from_config(config, str(hf_dir))
    out: dict[str, np.ndarray] = {}
    for t in gguf.GGUFReader(gguf_path).tensors:
        if t.name == "rope_freqs.weight":
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        x = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        kind = t.name.split(".")[-2]
        if arch.permute_qk and kind in ("attn_q", "attn_k"):
            x = archs.unpermute_rope_rows(x, hp.n_head if kind == "attn_q" else hp.n_head_kv)
        out[arch.hf_name(t.name)] = x
    return out


def load_hf_with_gguf_weights(gguf_path: str | Path, hf_dir: str | Path) -> Any:
    """The transformers model of hf_dir, with every weight replaced by the GGUF's dequantized one."""
    import torch

    model = load_model(Path(hf_dir))
    sd = {k: torch.from_numpy(v) for k, v in dequantized_state_dict(gguf_path, hf_dir).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"GGUF weights do not cover the model: missing {missing}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
    return model.eval()
