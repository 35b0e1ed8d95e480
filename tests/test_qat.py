"""Quantization-aware training (torchao prepare -> fine-tune -> convert) on the .pte path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import prompt_tokens

from edgekit.converters.pte.qat import QatConfig
from edgekit.errors import EdgekitError

CONTEXT = 64


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """Calibration text: a few standard-library modules (real code, as the tiny tokenizers were trained on)."""
    import textwrap

    root = tmp_path_factory.mktemp("calib")
    for name in ("textwrap", "json/decoder"):
        src = Path(textwrap.__file__).parent / f"{name}.py"
        (root / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    return root


def _qat(calib: Path, **kw) -> QatConfig:
    return QatConfig(data=[calib], **{"steps": 24, "lr": 1e-4, "seq_len": 64, "batch_size": 4,
                                      "heldout_windows": 4, **kw})


def test_kl_matches_hand_computation():
    import torch

    from edgekit.converters.compress.training import kl_divergence

    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))
    pt = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    ps = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    want = np.mean([sum(pt[b, i, v] * math.log(pt[b, i, v] / ps[b, i, v]) for v in range(7))
                    for b in range(2) for i in range(3)])
    got = kl_divergence(torch.log_softmax(torch.tensor(t), -1), torch.log_softmax(torch.tensor(s), -1))
    assert float(got) == pytest.approx(want, rel=1e-12)
    assert float(kl_divergence(torch.log_softmax(torch.tensor(t), -1), torch.log_softmax(torch.tensor(t), -1))) == 0


@pytest.mark.slow
def test_qat_recovers_and_exports(tiny_models, calib, tmp_path):
    """The fine-tune lowers the KL to the float model; the converted model exports, and the .pte computes
    what the eager converted model does."""
    import torch

    from edgekit.converters.pte.export import prepare_model
    from edgekit.runtime.backends.executorch import EtModel

    src = tiny_models["llama"]
    prepared = prepare_model(src, "8da4w", 32, None, CONTEXT, qat=_qat(calib), progress=False)
    r = prepared.qat
    assert r is not None and r.steps == len(r.losses) == 24
    # A random model's perplexity is near the vocabulary size and says little; the KL to the float model
    # (what the fine-tune minimises) must fall, in training and on the held-out windows.
    assert np.mean(r.losses[-4:]) < 0.9 * np.mean(r.losses[:4]), r.losses
    assert r.kl_after < 0.9 * r.kl_before, r.summary()
    # Converted for real: every Linear holds torchao int4 weights again, none is left fake-quantized.
    from torchao.quantization.qat import FakeQuantizedLinear

    linears = [m for m in prepared.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and not any(isinstance(m, FakeQuantizedLinear) for m in linears)
    assert all(hasattr(m.weight, "scale") for m in linears)

    out = tmp_path / "m" / "m.pte"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "edgekit", "convert", str(src), "-o", str(out), "--quant", "8da4w",
           "--max-seq-len", str(CONTEXT), "--qat", "--qat-data", str(calib), "--qat-steps", "24",
           "--qat-lr", "1e-4", "-q"]
    # The CLI keeps the default window length and held-out count: a different (still seeded) run.
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "QAT: 24 steps" in res.stdout and "int4 before" in res.stdout
    man = json.loads(out.with_name("m.manifest.json").read_text())
    q = man["quantization"]["qat"]
    assert q["steps"] == 24 and q["data"] == [str(calib)] and q["ppl_after"] > 0
    # The .pte against the eager model it was converted from (same QAT settings, seeded): same tokens.
    cli_model = prepare_model(src, "8da4w", 32, None, CONTEXT, progress=False,
                              qat=QatConfig(data=[calib], steps=24, lr=1e-4)).model
    tokens = prompt_tokens(src)[:20]
    with torch.no_grad():
        ref = cli_model(torch.tensor([tokens])).logits[0, -1].numpy()
    got = EtModel(out).prefill(tokens)
    assert np.abs(got - ref).max() < 3e-2 * np.abs(ref).max()


def test_qat_bad_input(tiny_models, calib, tmp_path):
    from edgekit.converters.pte.export import prepare_model

    src = tiny_models["llama"]
    with pytest.raises(EdgekitError, match="too little text for QAT"):
        prepare_model(src, "8da4w", 32, qat=_qat(calib, seq_len=64, heldout_windows=100_000), progress=False)
    with pytest.raises(EdgekitError, match="--quant fp32 has none"):
        prepare_model(src, "fp32", qat=_qat(calib))
    with pytest.raises(EdgekitError, match="steps must be at least 1"):
        prepare_model(src, "8da4w", qat=_qat(calib, steps=0))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgekit", "convert", str(src), *args], capture_output=True,
                              text=True, timeout=300)

    for args, msg in [(["-o", str(tmp_path / "m.gguf"), "--qat"], "--qat: only for .pte output"),
                      (["-o", str(tmp_path / "m.pte"), "--qat-steps", "5"], "--qat-steps: only with --qat"),
                      (["-o", str(tmp_path / "m.pte"), "--qat"], "--qat needs calibration text"),
                      (["-o", str(tmp_path / "m.pte"), "--qat", "--qat-data", str(tmp_path / "none.txt")],
                       "none.txt: data not found")]:
        res = cli(*args)
        assert res.returncode == 1 and msg in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
