"""One llama.cpp install runs on older x86 CPUs too: the GGUF core (load, logits, greedy generation) under
qemu-x86_64 emulating CPUs without AVX-512 (Haswell) and without AVX2 (Sandy Bridge), against the same run
on this machine's own CPU.

llama-cpp-python is built with one CPU backend per feature level (.ci/setup: GGML_BACKEND_DL +
GGML_CPU_ALL_VARIANTS) and edgekit's binding loads the best one the CPU runs. An SSE4.2-only CPU (Nehalem)
has a backend too, but numpy 2.4, which the test needs, does not run there, so it is not emulated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit import GGUFConfig, convert
from edgekit.runtime.backends.llamacpp import cpu_backend, lib_dir, llama_cpp

pytestmark = pytest.mark.slow

PROMPT = "def fib(n):\n    return"
CORE = """
import json, sys
import numpy as np
from edgekit.runtime.backends.llamacpp import LlamaCppModel, cpu_backend
path, out = sys.argv[1], sys.argv[2]
with LlamaCppModel(path, n_ctx=64, kv_f32=True, flash_attn=False, threads=1) as m:
    ids = m.tokenize(sys.argv[3], add_special=True)
    np.save(out + ".npy", m.logits_all(ids))
    text = m.generate(sys.argv[3], max_tokens=12, temperature=0, ignore_eos=True)
json.dump({"backend": cpu_backend(), "ids": ids, "text": text}, open(out + ".json", "w"))
"""


def _portable() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("qemu-x86_64") is None:
        return "qemu-x86_64 is not installed (apt-get install qemu-user)"
    if not any(lib_dir(llama_cpp()).glob("libggml-cpu-*")):
        return "llama-cpp-python is not the portable build (run .ci/setup)"
    return None


@pytest.fixture(scope="module")
def model(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("portable") / "llama-q8.gguf"
    convert(tiny_models["llama"], out, GGUFConfig(quant="q8_0"), progress=False)
    return out


def _run(model: Path, out: Path, qemu_cpu: str | None) -> tuple[dict, np.ndarray]:
    cmd = [sys.executable, "-c", CORE, str(model), str(out), PROMPT]
    if qemu_cpu:
        cmd = ["qemu-x86_64", "-cpu", qemu_cpu, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.with_suffix(".json").read_text()), np.load(out.with_suffix(".npy"))


@pytest.mark.parametrize("qemu_cpu,variant", [("Haswell-v4", "haswell"), ("SandyBridge", "sandybridge")])
def test_gguf_core_on_older_cpus(model: Path, tmp_path: Path, qemu_cpu: str, variant: str) -> None:
    why = _portable()
    if why:
        pytest.skip(why)
    here, here_logits = _run(model, tmp_path / "native", None)
    there, there_logits = _run(model, tmp_path / qemu_cpu, qemu_cpu)
    assert there["backend"] == f"libggml-cpu-{variant}.so", there["backend"]
    assert here["backend"] != there["backend"]  # the host runs another variant: the choice happened at run time
    assert there["ids"] == here["ids"]
    # Other SIMD widths sum in another order: float noise only, and the same greedy text.
    scale = np.abs(here_logits).max()
    assert np.abs(there_logits - here_logits).max() <= 1e-4 * scale, np.abs(there_logits - here_logits).max()
    assert there["text"] == here["text"] and there["text"]


def test_this_machine_runs_its_best_variant() -> None:
    """On the host itself, the binding loaded one CPU backend, and the one for this CPU's level."""
    if _portable():
        pytest.skip(_portable())
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    loaded = cpu_backend()
    assert "," not in loaded and loaded.startswith("libggml-cpu-"), loaded
    if "avx512f" in flags:
        assert loaded.removeprefix("libggml-cpu-").removesuffix(".so") in {
            "skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4"}, loaded
    elif "avx2" in flags:
        assert loaded in {"libggml-cpu-haswell.so", "libggml-cpu-alderlake.so"}, loaded
