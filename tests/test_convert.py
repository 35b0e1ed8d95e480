"""End to end: HF checkpoint -> GGUF -> llama.cpp, compared against transformers."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import ARCHS, hf_logits, llama_logits, prompt_tokens

from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
from edgekit.runtime.backends.llamacpp import quantize as llama_quantize


def _convert(src: Path, out: Path, quant: str) -> Path:
    write_gguf(src, out, GGUFConfig(quant=quant), progress=False)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_logits_match_transformers(arch, tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_models[arch]
    out = _convert(src, tmp_path / "m.gguf", "f32")
    tokens = prompt_tokens(src)
    ref = hf_logits(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), tokens)
    got = llama_logits(out, tokens)
    assert ref.std() > 0.5, "random model too flat for a meaningful comparison"
    assert np.abs(got - ref).max() < 1e-4


# Quantized files are compared with transformers running the same (dequantized) weights.
# llama.cpp also quantizes activations for its dot products (to F16 / 8 bits), which alone gives
# ~0.1% (F16) and ~3% (Q8_0, Q4_K) relative RMS logit error on these random models; measured:
# F16 0.09%, Q8_0 2.2-2.7%, Q4_K_M 3.2-4.0%, while Q4_K_M against the *original* weights is
# 31-38%. So the bounds below catch a wrong tensor or a wrong dequantization.
BOUNDS = {"f16": 3e-3, "q8_0": 5e-2, "q4_k_m": 6e-2}


def _rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2) / np.mean(ref**2)))


@pytest.mark.parametrize("quant", list(BOUNDS))
@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_logits_match_dequantized_transformers(arch, quant, tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.testing.gguf_weights import load_hf_with_gguf_weights

    src = tiny_models[arch]
    out = _convert(src, tmp_path / "m.gguf", quant)
    tokens = prompt_tokens(src)
    got = llama_logits(out, tokens)
    deq = hf_logits(load_hf_with_gguf_weights(out, src), tokens)
    assert _rel_rms(got, deq) < BOUNDS[quant]
    assert (got.argmax(-1) == deq.argmax(-1)).mean() >= 0.85
    if quant == "q4_k_m":  # the reference must be the dequantized model, not the original
        orig = hf_logits(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), tokens)
        assert _rel_rms(got, orig) > 4 * _rel_rms(got, deq)


def _tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(t.data.tobytes())) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("quant", ["q4_k_m", "q8_0", "q6_k", "q4_k"])
@pytest.mark.parametrize("arch", ARCHS)
def test_identical_to_llama_quantize(arch, quant, tiny_models, tmp_path):
    """Our file == llama.cpp's quantization of our F32 file: same type and bytes for every tensor."""
    src = tiny_models[arch]
    ours = _tensors(_convert(src, tmp_path / "ours.gguf", quant))
    f32 = _convert(src, tmp_path / "f32.gguf", "f32")
    theirs = _tensors(llama_quantize(f32, tmp_path / "theirs.gguf", quant))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name][0] == theirs[name][0], f"{name}: type {ours[name][0]} vs llama.cpp {theirs[name][0]}"
        assert ours[name][1] == theirs[name][1], f"{name}: {ours[name][0]} bytes differ from llama.cpp"


def test_requantize_gguf_input_equals_direct(tiny_models, tmp_path):
    src = tiny_models["qwen2"]
    f32 = _convert(src, tmp_path / "f32.gguf", "f32")
    direct = _tensors(_convert(src, tmp_path / "direct.gguf", "q4_k_m"))
    requant = _tensors(_convert(f32, tmp_path / "requant.gguf", "q4_k_m"))
    assert direct == requant
    md_direct = gguf.GGUFReader(tmp_path / "direct.gguf").fields
    md_requant = gguf.GGUFReader(tmp_path / "requant.gguf").fields
    assert md_direct.keys() == md_requant.keys()


def test_bf16_sharded_checkpoint(tmp_path):
    """bf16 weights spread over several shards with an index, as real checkpoints ship."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.testing.models import build_tiny_model

    src = build_tiny_model(tmp_path / "m", "llama", dtype="bfloat16", max_shard_size="1MB")
    assert (src / "model.safetensors.index.json").exists()
    assert len(list(src.glob("*.safetensors"))) > 1
    out = _convert(src, tmp_path / "m.gguf", "bf16")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    tokens = prompt_tokens(src)
    ref = hf_logits(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), tokens)
    got = llama_logits(_convert(src, tmp_path / "f32.gguf", "f32"), tokens)
    assert np.abs(got - ref).max() < 1e-4


def test_row_length_fallbacks_match_llama_quantize(tmp_path):
    """Rows not divisible by 256 (like Qwen2.5-0.5B's 896) fall back to Q5_0 / Q8_0 as llama.cpp does."""
    from edgekit.testing.models import build_tiny_model

    src = build_tiny_model(tmp_path / "m", "qwen2", hidden=384, heads=6, kv_heads=2, ffn=1024)
    ours = _tensors(_convert(src, tmp_path / "ours.gguf", "q4_k_m"))
    f32 = _convert(src, tmp_path / "f32.gguf", "f32")
    theirs = _tensors(llama_quantize(f32, tmp_path / "theirs.gguf", "q4_k_m"))
    assert {t for t, _ in ours.values()} >= {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}
    assert ours == theirs


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_streaming_gives_identical_files(arch, tiny_models, tmp_path, monkeypatch):
    """Big tensors are converted in row chunks; chunk boundaries (incl. per-head RoPE permutation of
    q/k, and GGUF input) must not change a byte."""
    from edgekit.converters.gguf import writer

    src = tiny_models[arch]
    whole = _convert(src, tmp_path / "whole.gguf", "q4_k_m").read_bytes()
    f32 = _convert(src, tmp_path / "f32.gguf", "f32")
    monkeypatch.setattr(writer, "CHUNK_BYTES", 4096)  # a few rows per chunk
    assert _convert(src, tmp_path / "chunked.gguf", "q4_k_m").read_bytes() == whole
    assert _convert(f32, tmp_path / "f32-chunked.gguf", "f32").read_bytes() == f32.read_bytes()
