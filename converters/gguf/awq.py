"""Activation-aware scaling (AWQ, Lin et al. 2023), folded exactly into the model.

For a group of linear layers that read the same input x (q/k/v after the attention norm, gate/up after
the FFN norm, o after v, down after up), scaling input channel c of their weights by s_c and dividing
the producer of x by s_c (the RMSNorm weight, or the rows of the preceding linear) leaves the float
model unchanged: W x = (W diag(s)) (diag(1/s) x). Only the rounding changes: channels with large
activations get finer steps. s = mean|x|^α (normalised), with α searched on a grid to minimise the
output error of the real ggml quantization, Σ ||(W - Ŵ) X||², computed from the Hessian XᵀX.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from edgekit.converters.gguf.gptq import GPTQ_TYPES, dequantize, rtn

# (producer of the shared input, the linear layers that read it), by HF module name.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("input_layernorm", ("self_attn.qkv_proj",)),
    ("self_attn.v_proj", ("self_attn.o_proj",)),  # only without GQA: each v row feeds one o column
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("post_attention_layernorm", ("mlp.gate_up_proj",)),
    ("mlp.up_proj", ("mlp.down_proj",)),  # down reads act(gate) * up: linear in up's rows
]


def groups(layer: Any) -> list[tuple[str, tuple[str, ...]]]:
    """The groups present in this decoder layer whose producer's output is exactly the linears' input."""
    from torch import nn

    mods = dict(layer.named_modules())
    out = []
    for prev, names in GROUPS:
        if prev not in mods or not all(n in mods for n in names):
            continue
        p = mods[prev]
        width = p.out_features if isinstance(p, nn.Linear) else p.weight.shape[0]
        if all(mods[n].in_features == width for n in names):
            out.append((prev, names))
    return out


def output_error(w: np.ndarray, h: np.ndarray, qtype: GGMLQuantizationType) -> float:
    """Σ over tokens of ||(W - Ŵ) x||² for round-to-nearest Ŵ (Hessian-diagonal importance)."""
    d = w.astype(np.float64) - dequantize(rtn(w, h, qtype), qtype)
    return float(((d @ h) * d).sum())


def search(weights: list[np.ndarray], qtypes: list[GGMLQuantizationType], h: np.ndarray, abs_mean: np.ndarray,
           n_grid: int = 20) -> np.ndarray:
    """Per-channel scales for linears sharing one input (Hessian h, mean |x| per channel); α = 0 (no
    scaling) is on the grid, so the result is never worse than plain rounding on the calibration data."""
    x = np.maximum(abs_mean, 1e-8)
    best, best_s = np.inf, np.ones_like(x)
    for k in range(n_grid):
        s = x ** (k / n_grid)
        s = s / np.sqrt(s.max() * s.min())
        hs = h / np.outer(s, s)  # the Hessian of the scaled input x / s
        err = sum(output_error((w * s).astype(np.float32), hs, qt)
                  for w, qt in zip(weights, qtypes, strict=True) if qt in GPTQ_TYPES)
        if err < best:
            best, best_s = err, s
    return best_s


def fold(layer: Any, prev: str, names: tuple[str, ...], s: np.ndarray) -> None:
    """Scale the linears' input channels by s and divide the producer's output by s (in place, exact)."""
    import torch
    from torch import nn

    st = torch.from_numpy(s).to(torch.float32)
    with torch.no_grad():
        p = layer.get_submodule(prev)
        if isinstance(p, nn.Linear):
            p.weight.div_(st[:, None])
            if p.bias is not None:
                p.bias.div_(st)
        else:  # RMSNorm: y = weight * x / rms(x)
            p.weight.div_(st)
        for n in names:
            layer.get_submodule(n).weight.mul_(st[None, :])
