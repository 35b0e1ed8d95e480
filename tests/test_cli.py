"""The real `edgekit` command as a subprocess: help, inspect, and every kind of bad input."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

EDGEKIT = [sys.executable, "-m", "edgekit"]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKIT, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code != 0, one line on stderr naming the problem, no traceback."""
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("edgekit: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def no_leftovers(d: Path, allowed: set[str]) -> None:
    assert {p.name for p in d.iterdir()} == allowed, "partial output left behind"


@pytest.mark.parametrize("cmd", [[], ["convert"], ["inspect"], ["imatrix"], ["eval"]])
def test_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage: edgekit" in r.stdout


def test_convert_and_inspect(tiny_models, tmp_path):
    out = tmp_path / "m.gguf"
    r = run("convert", tiny_models["qwen3"], "-o", out, "--quant", "q4_k_m")
    assert r.returncode == 0, r.stderr
    # final summary line: size, bits/weight, seconds, peak RSS
    assert "bits/weight" in r.stdout and "peak RSS" in r.stdout and " s, " in r.stdout
    info = json.loads(run("inspect", out, "--json").stdout)
    reader = gguf.GGUFReader(out)
    assert info["architecture"] == "qwen3"
    assert info["file_bytes"] == out.stat().st_size
    assert info["n_tensors"] == len(reader.tensors)
    assert info["types"]["Q6_K"]["tensors"] >= 1 and info["types"]["Q4_K"]["tensors"] >= 1
    assert 4.5 < info["bits_per_weight"] < 6.6
    text = run("inspect", out).stdout
    assert "architecture  qwen3" in text and "Q4_K" in text


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unsupported_architecture(tiny_models, tmp_path):
    m = _copy(tiny_models["llama"], tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (m / "config.json").write_text(json.dumps(cfg))
    r = run("convert", m, "-o", tmp_path / "o.gguf")
    assert_clean_error(r, "GPTNeoXForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM")
    no_leftovers(tmp_path, {"m"})


def test_corrupt_safetensors(tiny_models, tmp_path):
    m = _copy(tiny_models["llama"], tmp_path / "m")
    st = m / "model.safetensors"
    st.write_bytes(st.read_bytes()[:1000])
    r = run("convert", m, "-o", tmp_path / "o.gguf")
    assert_clean_error(r, "model.safetensors")
    no_leftovers(tmp_path, {"m"})


def test_missing_safetensors(tiny_models, tmp_path):
    m = _copy(tiny_models["llama"], tmp_path / "m")
    (m / "model.safetensors").unlink()
    assert_clean_error(run("convert", m, "-o", tmp_path / "o.gguf"), "no *.safetensors")


def test_shape_mismatch(tiny_models, tmp_path):
    m = _copy(tiny_models["mistral"], tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (m / "config.json").write_text(json.dumps(cfg))
    assert_clean_error(run("convert", m, "-o", tmp_path / "o.gguf"), "shape", "mlp")
    no_leftovers(tmp_path, {"m"})


def test_missing_tokenizer(tiny_models, tmp_path):
    m = _copy(tiny_models["qwen2"], tmp_path / "m")
    (m / "tokenizer.json").unlink()
    assert_clean_error(run("convert", m, "-o", tmp_path / "o.gguf"), "tokenizer")
    no_leftovers(tmp_path, {"m"})


def test_output_not_writable(tiny_models, tmp_path):
    assert_clean_error(run("convert", tiny_models["qwen2"], "-o", tmp_path / "nodir" / "o.gguf"), "does not exist")
    (tmp_path / "file").write_text("x")
    assert_clean_error(run("convert", tiny_models["qwen2"], "-o", tmp_path / "file" / "o.gguf"), "o.gguf")


def test_disk_full_leaves_nothing(tiny_models, tmp_path):
    """A write that fails half way (file size limit: the kernel refuses further writes) cleans up."""
    def limit():  # in the child: 1 MiB max file size; EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out"
    out.mkdir()
    r = run("convert", tiny_models["llama"], "-o", out / "o.gguf", "--quant", "f32", preexec_fn=limit)
    assert_clean_error(r, "o.gguf", "disk full")
    no_leftovers(out, set())


def test_truncated_gguf(tiny_models, tmp_path):
    good = tmp_path / "good.gguf"
    assert run("convert", tiny_models["qwen2"], "-o", good, "--quant", "f16").returncode == 0
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_clean_error(run("inspect", bad), "bad.gguf", "truncated")
    assert_clean_error(run("convert", bad, "-o", tmp_path / "o.gguf"), "bad.gguf", "truncated")
    header_only = tmp_path / "tiny.gguf"
    header_only.write_bytes(good.read_bytes()[:100])
    assert_clean_error(run("inspect", header_only), "tiny.gguf")
    no_leftovers(tmp_path, {"good.gguf", "bad.gguf", "tiny.gguf"})


def test_requantize_refuses_quantized_input(tiny_models, tmp_path):
    q = tmp_path / "q.gguf"
    assert run("convert", tiny_models["qwen2"], "-o", q, "--quant", "q8_0").returncode == 0
    assert_clean_error(run("convert", q, "-o", tmp_path / "o.gguf"), "already Q8_0")


@pytest.mark.slow
def test_demo_convert_end_to_end(tmp_path):
    """The README's main job: the packaged demo teacher -> Q4_K_M GGUF -> llama.cpp on held-out text."""
    out = tmp_path / "demo.gguf"
    r = run("convert", "--demo", "-o", out, "--quant", "q4_k_m", "--eval-windows", "8")
    assert r.returncode == 0, r.stderr
    report = r.stdout.splitlines()[-1]
    assert report.startswith("compression report:") and "held-out tokens" in report
    # a trained model: quantization costs little, and the quantized file still mostly agrees
    ppl_ref, ppl_q = (float(x) for x in report.split("PPL ")[1].split(" (")[0].split(" -> "))
    assert ppl_ref < 100 and abs(ppl_q / ppl_ref - 1) < 0.1
    assert float(report.split("top-1 agreement ")[1].split(" %")[0]) > 80
