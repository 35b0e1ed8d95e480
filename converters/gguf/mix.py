"""Quantization schemes (`--quant`) and the choice of a GGML type for each tensor.

The Q4_K_M mix follows llama.cpp's `llama-quantize` rules so that a file we write has the
same tensor types as one llama.cpp would make from the same weights:
  * output.weight (or token_embd.weight when the embeddings are tied) -> Q6_K
  * attn_v / attn_qkv and ffn_down in the "more bits" layers -> Q6_K
    (layer i of n: i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2)
  * every other 2-D weight -> Q4_K
  * a row length not divisible by the block size falls back (Q4_K->Q5_0, Q6_K->Q8_0, ...->F16).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

T = GGMLQuantizationType


@dataclass(frozen=True)
class Scheme:
    name: str
    default: GGMLQuantizationType
    file_type: LlamaFileType
    mixed: bool = False  # True: llama.cpp's per-tensor "more bits" rules apply
    help: str = ""


SCHEMES: dict[str, Scheme] = {s.name: s for s in [
    Scheme("f32", T.F32, LlamaFileType.ALL_F32, help="no quantization (exact)"),
    Scheme("f16", T.F16, LlamaFileType.MOSTLY_F16, help="16-bit floats"),
    Scheme("bf16", T.BF16, LlamaFileType.MOSTLY_BF16, help="bfloat16"),
    Scheme("q8_0", T.Q8_0, LlamaFileType.MOSTLY_Q8_0, help="8.5 bits/weight, near lossless"),
    Scheme("q6_k", T.Q6_K, LlamaFileType.MOSTLY_Q6_K, help="6.56 bits/weight, every weight Q6_K"),
    Scheme("q4_k", T.Q4_K, LlamaFileType.MOSTLY_Q4_K_S, help="4.5 bits/weight, every weight Q4_K"),
    Scheme("q4_k_m", T.Q4_K, LlamaFileType.MOSTLY_Q4_K_M, mixed=True,
           help="Q4_K with Q6_K for output, attn_v and ffn_down in sensitive layers (llama.cpp's Q4_K_M)"),
]}

# Where a type cannot hold a row length, llama.cpp falls back to these.
_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.Q8_0: T.F16}

_BLOCK = re.compile(r"^blk\.(\d+)\.")


def is_quantizable(name: str, shape: Sequence[int]) -> bool:
    """2-D weight matrices are quantized; norms, biases and 1-D tensors stay F32."""
    return len(shape) >= 2 and name.endswith(".weight") and "_norm.weight" not in name


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def block_size(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def choose_types(tensors: dict[str, tuple[int, ...]], scheme: Scheme,
                 n_layer: int) -> dict[str, GGMLQuantizationType]:
    """GGML type for every tensor (name -> numpy shape, row length last)."""
    tied = "output.weight" not in tensors
    n_attn_v = sum(1 for n in tensors if ".attn_v.weight" in n or ".attn_qkv.weight" in n)
    out: dict[str, GGMLQuantizationType] = {}
    for name, shape in tensors.items():
        if not is_quantizable(name, shape):
            out[name] = T.F32
            continue
        t = scheme.default
        ncols = shape[-1]
        if scheme.mixed:
            m = _BLOCK.match(name)
            layer = int(m.group(1)) if m else -1
            if name == "output.weight" or (tied and name == "token_embd.weight"):
                t = T.Q8_0 if ncols % block_size(t) else T.Q6_K
            elif ".attn_v.weight" in name or ".attn_qkv.weight" in name:
                t = T.Q6_K if _more_bits(layer, n_attn_v) else t
            elif ".ffn_down" in name:
                t = T.Q6_K if _more_bits(layer, n_layer) else t
        while ncols % block_size(t):
            t = _FALLBACK.get(t, T.F16)
            if t == T.F16:
                break
        out[name] = t
    return out
