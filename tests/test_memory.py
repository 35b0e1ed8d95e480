"""Converting streams tensors: peak memory tracks the largest tensor, not the model size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_CHILD = """
import json, resource, sys
from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
r = write_gguf(sys.argv[1], sys.argv[2], GGUFConfig(quant=sys.argv[3]), progress=False)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "reported": r.peak_rss}))
"""


def _peak(src, out, quant) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), quant], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_is_not_model_size(tiny_models, tmp_path):
    from edgekit.testing.models import build_tiny_model

    big = build_tiny_model(tmp_path / "big", "mistral", layers=6, hidden=1024, ffn=4096, heads=8, kv_heads=4)
    model_bytes = sum(f.stat().st_size for f in big.glob("*.safetensors"))
    largest = 4096 * 1024 * 4  # one FFN matrix in float32
    assert model_bytes > 300 << 20
    for quant in ("q8_0", "f32"):
        small = _peak(tiny_models["mistral"], tmp_path / "small.gguf", quant)
        large = _peak(big, tmp_path / "big.gguf", quant)
        growth = large["peak"] - small["peak"]
        # the same imports and code paths; the difference is what the model's size costs
        assert growth < 4 * largest + (16 << 20), f"{quant}: peak grew {growth >> 20} MiB for a " \
                                                   f"{model_bytes >> 20} MiB model"
        assert large["reported"] == large["peak"]
