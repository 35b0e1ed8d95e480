"""Supported architectures, the one table: how a Hugging Face checkpoint maps onto llama.cpp's GGUF names,
and what every step (export, pruning, sparsity, distillation) needs to know about its layout.

Everything architecture-specific is data in this file. Adding an architecture means adding a
tensor-name table (HF pattern -> GGUF pattern, ``{bid}`` is the block index) and one `Arch` entry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

_LLAMA_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{bid}.input_layernorm.weight": "blk.{bid}.attn_norm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight": "blk.{bid}.attn_q.weight",
    "model.layers.{bid}.self_attn.k_proj.weight": "blk.{bid}.attn_k.weight",
    "model.layers.{bid}.self_attn.v_proj.weight": "blk.{bid}.attn_v.weight",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.post_attention_layernorm.weight": "blk.{bid}.ffn_norm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight": "blk.{bid}.ffn_gate.weight",
    "model.layers.{bid}.mlp.up_proj.weight": "blk.{bid}.ffn_up.weight",
    "model.layers.{bid}.mlp.down_proj.weight": "blk.{bid}.ffn_down.weight",
}

# Qwen2: biases on q/k/v.
_QKV_BIAS = {
    "model.layers.{bid}.self_attn.q_proj.bias": "blk.{bid}.attn_q.bias",
    "model.layers.{bid}.self_attn.k_proj.bias": "blk.{bid}.attn_k.bias",
    "model.layers.{bid}.self_attn.v_proj.bias": "blk.{bid}.attn_v.bias",
}

# Qwen3: RMSNorm over each head of q and k.
_QK_NORM = {
    "model.layers.{bid}.self_attn.q_norm.weight": "blk.{bid}.attn_q_norm.weight",
    "model.layers.{bid}.self_attn.k_norm.weight": "blk.{bid}.attn_k_norm.weight",
}

# Phi-3: fused qkv, and gate+up fused into one matrix (gate rows first, as llama.cpp's swiglu expects).
_PHI3_TENSORS = {
    **{k: v for k, v in _LLAMA_TENSORS.items() if "_proj" not in k},
    "model.layers.{bid}.self_attn.qkv_proj.weight": "blk.{bid}.attn_qkv.weight",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.mlp.gate_up_proj.weight": "blk.{bid}.ffn_up.weight",
    "model.layers.{bid}.mlp.down_proj.weight": "blk.{bid}.ffn_down.weight",
}

# Buffers some checkpoints carry that GGUF recomputes.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class Arch:
    """How one HF architecture becomes one llama.cpp architecture."""

    gguf_arch: str
    tensors: dict[str, str]
    label: str                    # the family's name in messages
    # llama.cpp's "llama" graph applies RoPE to interleaved pairs; HF rotates halves. The q/k
    # rows must be permuted for it (the NEOX-style archs qwen2/qwen3/phi3 use HF's layout as is).
    permute_qk: bool = False
    # Write attention.key_length/value_length (head_dim not equal to hidden/heads is allowed).
    explicit_head_dim: bool = False
    sliding_window: bool = False
    # q/k/v in one matrix and gate/up in another (Phi-3): pruning slices them in parts.
    fused: bool = False
    # llama.cpp's graph sizes the q/o projections from hidden_size, so heads x head_dim must equal it: a model
    # with fewer heads would load in transformers but not in llama.cpp.
    fixed_heads: bool = False

    @cached_property
    def patterns(self) -> list[tuple[re.Pattern[str], str]]:
        return [(_pattern(hf), gg) for hf, gg in self.tensors.items()]

    @cached_property
    def inverse_patterns(self) -> list[tuple[re.Pattern[str], str]]:
        return [(_pattern(gg), hf) for hf, gg in self.tensors.items()]

    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name for a HF tensor name; None for buffers GGUF does not store."""
        if _IGNORED.search(hf_name):
            return None
        return _lookup(self.patterns, hf_name)

    def hf_name(self, gguf_name: str) -> str:
        """The inverse map (used to load GGUF weights back into transformers)."""
        return _lookup(self.inverse_patterns, gguf_name)


def _pattern(template: str) -> re.Pattern[str]:
    """A name template ("model.layers.{bid}.mlp...") as a regex capturing the block index."""
    return re.compile("^" + re.escape(template).replace(r"\{bid\}", r"(\d+)") + "$")


def _lookup(patterns: list[tuple[re.Pattern[str], str]], name: str) -> str:
    for pattern, target in patterns:
        m = pattern.match(name)
        if m:
            return target.format(bid=m.group(1)) if m.groups() else target
    raise KeyError(name)


ARCHITECTURES: dict[str, Arch] = {
    "LlamaForCausalLM": Arch("llama", _LLAMA_TENSORS, "Llama", permute_qk=True),
    "MistralForCausalLM": Arch("llama", _LLAMA_TENSORS, "Mistral", permute_qk=True),
    "Qwen2ForCausalLM": Arch("qwen2", {**_LLAMA_TENSORS, **_QKV_BIAS}, "Qwen2", fixed_heads=True),
    "Qwen3ForCausalLM": Arch("qwen3", {**_LLAMA_TENSORS, **_QK_NORM}, "Qwen3", explicit_head_dim=True),
    "Phi3ForCausalLM": Arch("phi3", _PHI3_TENSORS, "Phi-3", sliding_window=True, fused=True, fixed_heads=True),
}


def get_arch(name: str, where: str) -> Arch:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        supported = ", ".join(ARCHITECTURES)
        raise EdgekitError(f"{where}: unsupported architecture {name!r} (supported: {supported})") from None


_OPTIONAL = {"sliding_window"}  # keys that may be absent or null


@dataclass(frozen=True)
class HParams:
    """The hyperparameters llama.cpp needs, read from a transformers config.json."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    rope: dict[str, Any]
    sliding_window: int | None

    @staticmethod
    def from_config(cfg: dict[str, Any], where: str) -> HParams:
        """Every value checked for its type and range: a config.json is user input."""
        def num(key: str, kind: type, default: Any = None, low: float = 1) -> Any:
            v = cfg.get(key)
            if v is None:  # absent or null: the default, if the key has one
                if default is None and key not in _OPTIONAL:
                    raise EdgekitError(f"{where}: config.json lacks {key!r}")
                return default
            ok = isinstance(v, int | float) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
            high = 2**31 - 1 if kind is int else 1e30  # GGUF stores these counts as 32-bit integers
            if not ok or not math.isfinite(v) or not low <= v <= high:
                want = f"an integer in {low}..{high}" if kind is int else f"a number >= {low}"
                raise EdgekitError(f"{where}: config.json {key!r} must be {want}, not {v!r}")
            return kind(v)

        n_embd, n_head = num("hidden_size", int), num("num_attention_heads", int)
        # transformers 5 keeps rope settings in rope_parameters; older configs use rope_theta/rope_scaling.
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise EdgekitError(f"{where}: config.json rope_parameters must be an object, not {rope!r}")
        rope = dict(rope)
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        if not isinstance(theta, int | float) or isinstance(theta, bool) or not theta > 0:
            raise EdgekitError(f"{where}: config.json rope_theta must be a positive number, not {theta!r}")
        tie = cfg.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise EdgekitError(f"{where}: config.json tie_word_embeddings must be true or false, not {tie!r}")
        return HParams(
            n_vocab=num("vocab_size", int),
            n_embd=n_embd,
            n_layer=num("num_hidden_layers", int),
            n_head=n_head,
            n_head_kv=num("num_key_value_heads", int, n_head),
            head_dim=num("head_dim", int, n_embd // n_head),
            n_ff=num("intermediate_size", int),
            n_ctx=num("max_position_embeddings", int, 4096),
            rope_theta=float(theta),
            rms_eps=num("rms_norm_eps", float, 1e-6, low=0),
            tie_embeddings=tie,
            rope=rope,
            sliding_window=num("sliding_window", int),
        )

    @property
    def rope_type(self) -> str:
        return str(self.rope.get("rope_type", self.rope.get("type", "default")))


def write_hparams(writer: Any, arch: Arch, hp: HParams, where: str) -> None:
    """Write the architecture's hyperparameter keys into a gguf.GGUFWriter."""
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_vocab_size(hp.n_vocab)
    if arch.explicit_head_dim or hp.head_dim != hp.n_embd // hp.n_head:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    if arch.sliding_window and hp.sliding_window:
        writer.add_sliding_window(int(hp.sliding_window))
    if hp.rope_type == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
    check_rope(hp, where)


# RoPE variants both exporters handle (static frequencies; longrope/yarn/dynamic switch at run time).
ROPE_TYPES = ("default", "llama3", "linear")


def check_rope(hp: HParams, where: str) -> None:
    if hp.rope_type not in ROPE_TYPES:
        raise EdgekitError(f"{where}: RoPE scaling type {hp.rope_type!r} is not supported yet "
                           f"(supported: {', '.join(ROPE_TYPES)})")


def llama3_rope_factors(hp: HParams) -> np.ndarray:
    """Per-frequency divisors for Llama 3 RoPE scaling (llama.cpp reads them as rope_freqs.weight)."""
    r = hp.rope
    factor, low, high = float(r["factor"]), float(r["low_freq_factor"]), float(r["high_freq_factor"])
    old_ctx = float(r["original_max_position_embeddings"])
    dim = hp.head_dim
    freqs = 1.0 / (hp.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:  # high frequencies: untouched
            out.append(1.0)
        elif wavelen > old_ctx / low:  # low frequencies: stretched by the full factor
            out.append(factor)
        else:  # in between: smooth interpolation
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved pairs, per head (weights and biases)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of permute_rope_rows."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_shape(arch: Arch, gguf_name: str, hp: HParams) -> tuple[int, ...]:
    """The numpy shape a tensor must have, from the config (catches mismatched checkpoints)."""
    q, kv, e = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_embd
    ff_up = 2 * hp.n_ff if arch.gguf_arch == "phi3" else hp.n_ff  # phi3 fuses gate and up
    shapes = {
        "token_embd.weight": (hp.n_vocab, e), "output.weight": (hp.n_vocab, e),
        "output_norm.weight": (e,), "attn_norm.weight": (e,), "ffn_norm.weight": (e,),
        "attn_q.weight": (q, e), "attn_k.weight": (kv, e), "attn_v.weight": (kv, e),
        "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,),
        "attn_qkv.weight": (q + 2 * kv, e), "attn_output.weight": (e, q),
        "attn_q_norm.weight": (hp.head_dim,), "attn_k_norm.weight": (hp.head_dim,),
        "ffn_gate.weight": (hp.n_ff, e), "ffn_up.weight": (ff_up, e), "ffn_down.weight": (e, hp.n_ff),
    }
    return shapes[re.sub(r"^blk\.\d+\.", "", gguf_name)]
