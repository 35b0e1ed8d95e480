"""GPTQ into ggml blocks (converters/gguf/gptq.py) and `--method gptq` conversions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from edgekit.converters.gguf import gptq
from edgekit.native import quantize as qn

TYPES = sorted(gptq.GPTQ_TYPES, key=lambda t: t.value)
CALIB = Path(__file__).read_text()[:6000]  # a few windows of 512 tokens: enough for 2-layer models


def _matrix(seed: int = 0, rows: int = 48, cols: int = 512, tokens: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Weights and inputs shaped like a real linear layer's: correlated input channels, a few of them large."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) / np.sqrt(cols) + np.eye(cols)
    x = rng.standard_normal((tokens, cols)) @ mix * np.exp(rng.normal(0, 0.7, cols))
    w = rng.standard_normal((rows, cols)) * 0.05
    return w.astype(np.float32), x.astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_levels_and_grid_decode_like_ggml(qtype: QT) -> None:
    """grid()/levels() read ggml's own bytes: their product is gguf-py's dequantization, and writing the
    levels back gives the same bytes."""
    w, x = _matrix(1, rows=8)
    data = qn.quantize(w, qtype, (x * x).mean(0))
    np.testing.assert_array_equal(gptq.with_levels(data, qtype, gptq.levels(data, qtype)), data)
    ref = gguf.quants.dequantize(data, qtype).reshape(w.shape)
    np.testing.assert_allclose(gptq.dequantize(data, qtype), ref, rtol=1e-6, atol=1e-9)
    q = gptq.levels(data, qtype)
    g = gptq.grid(data, qtype)
    assert q.min() >= g.lo and q.max() <= g.hi


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_gptq_reduces_output_error_against_rtn(qtype: QT) -> None:
    """||(W - Ŵ) X|| on the calibration inputs: GPTQ against round-to-nearest with the same format and the
    same (Hessian-diagonal-weighted) scale search."""
    w, x = _matrix(2)
    h = x.astype(np.float64).T @ x
    e_rtn = gptq.output_error(w, gptq.rtn(w, h, qtype), qtype, h)
    data = gptq.gptq(w, h, qtype)
    e_gptq = gptq.output_error(w, data, qtype, h)
    direct = np.linalg.norm((w - gptq.dequantize(data, qtype)) @ x.T)  # the Hessian form is the real error
    assert abs(direct - e_gptq) < 1e-3 * e_gptq
    ratio = e_gptq / e_rtn
    print(f"{qtype.name}: ||(W-Ŵ)X|| GPTQ / RTN = {ratio:.3f}")
    assert ratio < 0.85
    assert data.shape == (w.shape[0], qn.row_size(qtype, w.shape[1]))


def test_gptq_dead_inputs_and_bad_types() -> None:
    w, x = _matrix(3, rows=4, cols=256)
    x[:, :32] = 0.0  # inputs that never fire
    h = x.astype(np.float64).T @ x
    data = gptq.gptq(w, h, QT.Q4_K)
    assert np.isfinite(gptq.dequantize(data, QT.Q4_K)).all()
    with pytest.raises(ValueError, match="does not support F16"):
        gptq.gptq(w, h, QT.F16)
    with pytest.raises(ValueError, match="whole blocks"):
        gptq.gptq(w[:, :100], h[:100, :100], QT.Q8_0)


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch,method", [("llama", "gptq"), ("qwen2", "awq+gptq")])
def test_calibrated_gguf_loads_and_matches_transformers(tiny_models, tmp_path, arch, method):
    """The GGUF llama.cpp loads computes what transformers computes on its dequantized weights (within the error
    of llama.cpp's 8-bit activations: the bounds of test_convert's Q4_K_M check), and differs from plain
    rounding (the method did something)."""
    pytest.importorskip("llama_cpp")
    from conftest import hf_logits, llama_logits, prompt_tokens

    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    from edgekit.testing.gguf_weights import load_hf_with_gguf_weights

    src = tiny_models[arch]
    (tmp_path / "calib.txt").write_text(CALIB)
    out = write_gguf(src, tmp_path / "m.gguf", GGUFConfig(quant="q4_k_m", method=method, calib=tmp_path / "calib.txt"),
                     progress=False).output
    plain = write_gguf(src, tmp_path / "plain.gguf", GGUFConfig(quant="q4_k_m"), progress=False).output
    ours = {t.name: (t.tensor_type, bytes(t.data.tobytes())) for t in gguf.GGUFReader(out).tensors}
    ref = {t.name: (t.tensor_type, bytes(t.data.tobytes())) for t in gguf.GGUFReader(plain).tensors}
    assert {n: t for n, (t, _) in ours.items()} == {n: t for n, (t, _) in ref.items()}
    assert ours["blk.1.attn_q.weight"][1] != ref["blk.1.attn_q.weight"][1]
    from edgekit.io.hf import load_model

    tokens = prompt_tokens(src)
    deq = hf_logits(load_hf_with_gguf_weights(out, src), tokens)
    got = llama_logits(out, tokens)
    orig = hf_logits(load_model(src), tokens)

    def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - ref) ** 2) / np.mean(ref**2)))

    assert rel_rms(got, deq) < 6e-2
    assert (got.argmax(-1) == deq.argmax(-1)).mean() >= 0.85
    assert rel_rms(got, orig) > 4 * rel_rms(got, deq)  # the reference is the dequantized model, not the original


def test_cli_method_errors(tiny_models, tmp_path):
    src = tiny_models["llama"]
    r = _cli("convert", src, "-o", tmp_path / "x.gguf", "--method", "gptq", "-q")
    assert r.returncode == 1 and "needs calibration text" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "c.txt").write_text("hello")
    r = _cli("convert", src, "-o", tmp_path / "x.gguf", "--calib", tmp_path / "c.txt", "-q")
    assert r.returncode == 1 and "--calib is for --method" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
