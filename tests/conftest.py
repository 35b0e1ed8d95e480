"""Shared fixtures: tiny random models of every architecture, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3"]

# A prompt with code, prose, digits and non-ASCII text.
PROMPT = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 42 çà 日本"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from edgekit.testing.models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {a: build_tiny_model(root / a, a) for a in ARCHS}


def prompt_tokens(model_dir: Path, text: str = PROMPT) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=True)


def hf_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def llama_logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    """All-position logits from llama.cpp, with an F32 KV cache so the comparison is exact."""
    from edgekit.runtime.backends.llamacpp import LlamaCppModel

    with LlamaCppModel(gguf_path, n_ctx=128, n_batch=128, kv_f32=True, flash_attn=False,
                       threads=min(2, os.cpu_count() or 1)) as llm:
        return llm.logits_all(tokens)


# -- runtime (chat / generate / serve) --------------------------------------------------------------------

RUNTIME_ARCHS = ["llama", "mistral", "qwen2", "phi3"]  # byte-level BPE, SentencePiece, ChatML, Phi-3 tokens
PTE_CONTEXT, PTE_PREFILL = 128, 32


@pytest.fixture(scope="session")
def f32_ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """F32 GGUFs of the tiny models: with an F32 KV cache llama.cpp computes what transformers computes."""
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

    root = tmp_path_factory.mktemp("gguf_f32")
    out = {}
    for a in RUNTIME_ARCHS:
        out[a] = root / f"{a}.gguf"
        write_gguf(tiny_models[a], out[a], GGUFConfig(quant="f32"), progress=False)
    return out


@pytest.fixture(scope="session")
def llama_pte(tiny_models, tmp_path_factory) -> Path:
    """An fp32 .pte of the tiny Llama with a small KV cache (128) and prefill chunks of 32."""
    from edgekit.converters.pte.export import PteConfig, export_pte

    out = tmp_path_factory.mktemp("pte_runtime") / "llama.pte"
    export_pte(tiny_models["llama"], out, PteConfig(quant="fp32", max_seq_len=PTE_CONTEXT, max_prefill=PTE_PREFILL))
    return out


def stop_gracefully(p) -> str:
    """SIGTERM a server subprocess (`edgekit serve`): it must exit 0 within 30 s; its stderr, as text."""
    import signal
    import subprocess

    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    err = p.stderr.read()
    err = err.decode() if isinstance(err, bytes) else err
    assert rc == 0, err
    return err


def pytest_sessionfinish(session, exitstatus) -> None:
    """EDGEKIT_MODULE_REPORT=1: list edgekit's modules that no test of this run imported (the fast tier must
    leave none out)."""
    import os
    import sys

    if os.environ.get("EDGEKIT_MODULE_REPORT") != "1":
        return
    from test_layers import modules

    missing = sorted(m for m in modules() if m not in sys.modules)
    print(f"\nmodules imported by this run's tests: {len(modules()) - len(missing)} of {len(modules())}"
          + (f"; never imported: {', '.join(missing)}" if missing else ""))
