"""One error path for every command: a user mistake is one line and exit code 1, a bug one line and 70
(the traceback only with EDGEKIT_DEBUG=1), SIGTERM 143 and a closed stdout 141, and no output is ever left
half-written. Each case runs the real `edgekit` command in its own process."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgekit import GGUFConfig, convert

EDGEKIT = [sys.executable, "-m", "edgekit"]


def run(*args: object, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """The CLI, or `code` run before it in the same interpreter (to take a dependency away)."""
    argv = [str(a) for a in args]
    cmd = ([sys.executable, "-c", f"{code}\nimport sys\nfrom edgekit.cli import main\nsys.exit(main({argv!r}))"]
           if code else [*EDGEKIT, *argv])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def one_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("edgekit:") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def gguf_f32(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errors") / "llama.gguf"
    convert(tiny_models["llama"], out, GGUFConfig(quant="f32"), progress=False)
    return out


# -- a missing optional dependency --------------------------------------------------------------------------


NO_EXECUTORCH = "import sys\nfor m in ('executorch', 'torchao'):\n    sys.modules[m] = None"


def test_pte_commands_without_the_executorch_extra(tiny_models, tmp_path):
    """sys.modules[name] = None is how Python itself reports an absent package: ImportError on import. (The
    program is never run, so a file with a .pte's identifier stands in for one.)"""
    pte = tmp_path / "programs" / "m.pte"
    pte.parent.mkdir()
    pte.write_bytes(b"\0\0\0\0ET12" + bytes(56))
    out = tmp_path / "out"
    out.mkdir()
    for args in (["convert", tiny_models["llama"], "-o", out / "m.pte"], ["inspect", pte],
                 ["generate", pte, "hi", "-n", "2"]):
        one_line(run(*args, code=NO_EXECUTORCH), 1, "pip install 'edgekit[pte]'")
    assert not any(out.iterdir())


def test_gguf_commands_without_llama_cpp(gguf_f32):
    one_line(run("generate", gguf_f32, "hi", code="import sys\nsys.modules['llama_cpp'] = None"), 1,
             "pip install 'edgekit[llama]'")


# -- corrupt weights --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_corrupt_weights_on_every_command_that_reads_them(tiny_models, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["llama"], bad)
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # a download cut off half way
    data = tmp_path / "text.txt"
    data.write_text((Path(np.__file__).parent / "__init__.py").read_text() * 4)
    cases = [["prune", bad, "-o", tmp_path / "p", "--ffn", "0.5", "--importance", "weight"],
             ["sparsify", bad, "-o", tmp_path / "s", "--method", "magnitude"],
             ["distill", bad, "--student", "num_hidden_layers=1", "-o", tmp_path / "d", "--data", data,
              "--steps", "1"],
             ["eval", bad, "--data", data, "--ctx", "32"],
             ["convert", bad, "-o", tmp_path / "c.gguf"]]
    for args in cases:
        one_line(run(*args), 1, "bad", "model.safetensors" if args[0] == "convert" else "bad")
    assert {p.name for p in tmp_path.iterdir()} == {"bad", "text.txt"}


# -- hostile GGUF metadata --------------------------------------------------------------------------------


def _patched(src: Path, dst: Path, key: str, new_type: int | None = None, value: bytes | None = None) -> Path:
    """src with the stored type (and optionally the value bytes) of one metadata key replaced."""
    raw = bytearray(src.read_bytes())
    k = key.encode()
    at = raw.index(struct.pack("<Q", len(k)) + k) + 8 + len(k)
    if new_type is not None:
        raw[at:at + 4] = struct.pack("<I", new_type)
    if value is not None:
        raw[at + 4:at + 4 + len(value)] = value
    dst.write_bytes(bytes(raw))
    return dst


def test_unknown_value_type_and_zero_alignment(gguf_f32, tmp_path):
    unknown = _patched(gguf_f32, tmp_path / "unknown.gguf", "general.name", new_type=99)
    one_line(run("inspect", unknown), 1, "unknown.gguf", "unknown value type 99")
    w = gguf.GGUFWriter(tmp_path / "align.gguf", "llama")
    w.add_uint32("general.alignment", 0)
    w.add_tensor("x", np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for args in (["inspect", tmp_path / "align.gguf"], ["generate", tmp_path / "align.gguf", "hi"],
                 ["convert", tmp_path / "align.gguf", "-o", tmp_path / "o.gguf"]):
        one_line(run(*args), 1, "align.gguf", "general.alignment 0")
    assert not (tmp_path / "o.gguf").exists()


# -- the process's own ends: a bug, a closed stdout, SIGTERM ------------------------------------------------


def test_an_internal_error_is_one_line_unless_debugging(gguf_f32):
    bug = ("import edgekit.cli.info as c\ndef broken(*a, **k):\n    raise TypeError('planted bug')\n"
           "c.inspect_file = broken")
    line = one_line(run("inspect", gguf_f32, code=bug), 70, "internal error", "TypeError: planted bug",
                    "EDGEKIT_DEBUG=1")
    assert "a bug in edgekit" in line
    r = run("inspect", gguf_f32, code=bug, env={"EDGEKIT_DEBUG": "1"})
    assert r.returncode == 70 and "Traceback" in r.stderr and "planted bug" in r.stderr


def test_a_closed_stdout_stops_generation_quietly(gguf_f32):
    """`edgekit generate ... | head -c 20`: the reader leaves after 20 bytes."""
    p = subprocess.Popen([*EDGEKIT, "generate", str(gguf_f32), "def", "-n", "400", "--ignore-eos", "--temp", "0",
                          "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = p.stdout.read(20)
    p.stdout.close()
    rc = p.wait(timeout=120)
    err = p.stderr.read().decode()
    assert len(got) == 20 and rc == 141, (rc, err)
    assert err.strip().count("\n") == 0 and "output closed" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def bigger_model(tmp_path_factory) -> Path:
    """A model that takes a few seconds to convert, so a signal lands in the middle."""
    from edgekit.testing.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("big") / "m", "llama", layers=8, hidden=768, ffn=3072,
                            heads=12, kv_heads=4, vocab_size=512, model_vocab=32000)


@pytest.mark.slow
def test_sigterm_mid_write_leaves_nothing(bigger_model, tmp_path):
    out = tmp_path / "m.gguf"
    p = subprocess.Popen([*EDGEKIT, "convert", str(bigger_model), "-o", str(out), "--quant", "q4_k_m", "-q",
                          "--threads", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(tmp_path.glob(".m.gguf.*.tmp")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert p.poll() is None, "finished before the signal: make the model bigger"
    time.sleep(0.3)  # well into the tensor data
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    err = p.stderr.read()
    assert rc == 143 and err.strip() == "edgekit: terminated", (rc, err)
    assert list(tmp_path.iterdir()) == [], "half-written output left behind"


def test_stale_temp_files_of_killed_runs_are_removed(gguf_f32, tmp_path):
    """A temp file whose process is gone (a SIGKILLed run) is removed by the next write of the same output;
    one of a process that still runs is left alone."""
    dead = tmp_path / ".m.gguf.999999999.tmp"
    live = tmp_path / f".m.gguf.{os.getpid()}.tmp"
    dead.write_bytes(b"half")
    live.write_bytes(b"busy")
    r = run("convert", gguf_f32, "-o", tmp_path / "m.gguf", "--quant", "q8_0", "-q")
    assert r.returncode == 0, r.stderr
    assert not dead.exists() and live.exists() and (tmp_path / "m.gguf").stat().st_size > 0
