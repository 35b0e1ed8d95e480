"""Tiny random Hugging Face checkpoints of every supported architecture, built offline.

Weights are random but not degenerate: a larger init scale than transformers' default and
randomised norms/biases, so a wrong tensor mapping shows up as a large logit difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.io.hf import load_tokenizer
from edgekit.testing.tokenizers import build_tokenizer

# Which tokenizer style each tiny model uses (covers every tokenizer kind across the suite).
DEFAULT_TOKENIZER = {"llama": "llama3", "mistral": "spm", "qwen2": "qwen2", "qwen3": "qwen2", "phi3": "phi3"}


def build_tiny_model(
    out_dir: Path,
    arch: str,
    *,
    tokenizer: str | None = None,
    layers: int = 2,
    hidden: int = 256,
    ffn: int = 512,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int = 512,
    model_vocab: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    max_shard_size: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a random `arch` checkpoint (config, safetensors, tokenizer) into out_dir.

    vocab_size is the tokenizer's size; model_vocab (default: the same) the embedding rows, which
    real checkpoints often pad beyond the tokenizer (e.g. Qwen2.5: 151936 rows, 151665 tokens)."""
    import torch
    import transformers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir, tokenizer or DEFAULT_TOKENIZER[arch], vocab_size)
    tok = load_tokenizer(out_dir)
    common = dict(
        vocab_size=model_vocab or len(tok),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.08,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    per_arch: dict[str, tuple[str, dict[str, Any]]] = {
        # Llama 3 style: GQA, tied embeddings, llama3 RoPE scaling (small original context so the
        # scaling touches many frequencies even at test sequence lengths).
        "llama": (
            "LlamaConfig",
            dict(
                tie_word_embeddings=True,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            ),
        ),
        "mistral": (
            "MistralConfig",
            dict(
                sliding_window=None,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            ),
        ),
        "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, use_sliding_window=False)),
        # head_dim != hidden/heads, as in real Qwen3 models.
        "qwen3": (
            "Qwen3Config",
            dict(head_dim=hidden // heads * 2, tie_word_embeddings=False, use_sliding_window=False),
        ),
        "phi3": (
            "Phi3Config",
            dict(
                sliding_window=None,
                tie_word_embeddings=False,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attention_dropout=0.0,
            ),
        ),
    }
    cls_name, extra = per_arch[arch]
    config = getattr(transformers, cls_name)(**{**common, **extra, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms around 1, biases around 0: both must be mapped right to match
                base = 1.0 if "norm" in name else 0.0
                p.copy_(base + 0.2 * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    return out_dir
