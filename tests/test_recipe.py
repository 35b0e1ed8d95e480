"""Recipes and `edgekit convert --prune/--sparsify/--distill`: the whole pipeline through the real CLI, its
outputs in llama.cpp, the recipe stored with them, resume of an interrupted pipeline, and bad recipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import llama_logits, prompt_tokens

DATA = str(Path(os.__file__))
EDGEKIT = [sys.executable, "-m", "edgekit"]
TINY_DISTILL = "steps=4,batch_size=2,seq_len=32,heldout_windows=2"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*EDGEKIT, *args], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _recipe_kv(gguf_path: Path) -> dict:
    import gguf

    field = gguf.GGUFReader(gguf_path).fields["edgekit.recipe"]
    return json.loads(bytes(field.parts[-1]).decode())


@pytest.mark.slow
def test_prune_distill_to_gguf_matches_the_student_in_llamacpp(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "s.gguf"
    r = _run("convert", str(tiny_models["llama"]), "-o", str(out), "--quant", "f32", "--prune",
             "ffn=0.5,max_tokens=512", "--distill", TINY_DISTILL, "--data", DATA, "--threads", "1", "-q")
    student = tmp_path / "s-student"
    assert "pruned" in r.stdout and "distilled" in r.stdout and f"HF student: {student}" in r.stdout
    assert not (tmp_path / "s.work").exists()  # the work directory goes once everything succeeded
    c = json.loads((student / "config.json").read_text())
    assert c["intermediate_size"] == 256
    assert {"edgekit_prune.json", "edgekit_distill.json", "edgekit_recipe.json"} <= {p.name for p in student.iterdir()}

    m = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    tokens = prompt_tokens(student)
    with torch.no_grad():
        want = m(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(llama_logits(out, tokens) - want).max() < 1e-4

    recipe = _recipe_kv(out)
    assert recipe == json.loads((student / "edgekit_recipe.json").read_text())
    kinds = [next(iter(s)) for s in recipe["steps"]]
    assert kinds == ["prune", "distill", "export"]
    assert recipe["steps"][1]["distill"]["steps"] == 4 and recipe["steps"][1]["distill"]["alpha"] == 0.5  # default
    assert recipe["steps"][2]["export"] == {"quant": "f32"}
    shown = _run("inspect", str(out)).stdout
    assert "prune ffn=0.5 -> distill 4 steps (alpha 0.5, T 2.0) -> export f32" in shown


@pytest.mark.slow
def test_fresh_student_distilled_to_pte_runs_in_executorch(tiny_models, tmp_path):
    """A student from config overrides (half the layers), exported to .pte straight away."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.runtime.backends.executorch import EtModel

    out = tmp_path / "s.pte"
    _run("convert", str(tiny_models["llama"]), "-o", str(out), "--quant", "fp32", "--distill", TINY_DISTILL,
         "--student", "num_hidden_layers=1", "--data", DATA, "--max-seq-len", "64", "--threads", "1", "-q")
    student = tmp_path / "s-student"
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 1
    m = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    tokens = prompt_tokens(student)[:16]
    with torch.no_grad():
        want = m(torch.tensor([tokens])).logits[0, -1].numpy()
    got = EtModel(out).prefill(tokens)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    manifest = json.loads((tmp_path / "s.manifest.json").read_text())
    assert manifest["recipe"]["steps"][0]["distill"]["student"] == {"num_hidden_layers": 1}


@pytest.mark.slow
def test_recipe_file_gives_the_same_student_as_the_flags(tiny_models, tmp_path):
    _run("convert", str(tiny_models["llama"]), "-o", str(tmp_path / "a"), "--prune", "ffn=0.5,importance=weight",
         "--distill", TINY_DISTILL, "--data", DATA, "--save-recipe", str(tmp_path / "plan.yaml"), "--threads", "1",
         "-q")
    assert (tmp_path / "a" / "model.safetensors").is_file()  # a directory output: the HF student itself
    _run("convert", "--recipe", str(tmp_path / "plan.yaml"), "-o", str(tmp_path / "b"), "--threads", "1", "-q")
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    # The saved recipe is relative to its own folder, so the folder can move with its data.
    text = (tmp_path / "plan.yaml").read_text()
    assert str(tmp_path) not in text and "format: edgekit-recipe" in text


@pytest.mark.slow
def test_the_pipeline_under_torchrun_equals_one_process(tiny_models, tmp_path):
    """`torchrun -m edgekit convert`: rank 0 prunes and writes, both ranks train (DDP, half the batch each)."""
    flags = ["--prune", "ffn=0.5,importance=weight", "--distill", TINY_DISTILL, "--data", DATA, "--threads", "1", "-q"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                        "edgekit", "convert", str(tiny_models["llama"]), "-o", str(tmp_path / "two"), *flags],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("pruned") == 1 and "on 2 processes" in r.stdout
    _run("convert", str(tiny_models["llama"]), "-o", str(tmp_path / "one"), *flags)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-5


@pytest.mark.slow
def test_a_2_4_mask_stays_2_4_through_distillation(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.converters.compress.sparsify import check_n_m, masks_from_dir

    r = _run("convert", str(tiny_models["phi3"]), "-o", str(tmp_path / "s"), "--sparsify", "method=wanda,pattern=2:4",
             "--distill", TINY_DISTILL + ",lr=0.01", "--data", DATA, "--threads", "1", "-q")
    assert "sparsity 50.0 % (zeros kept)" in r.stdout
    student = tmp_path / "s"
    m = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    masks = masks_from_dir(student, m)
    assert len(masks) == 2 * 4  # phi3: qkv, o, gate_up, down in each of 2 layers
    assert all(check_n_m(mask, 2, 4, exact=True) for mask in masks.values())
    # The kept weights did train (a high LR): distillation changed them, only the zeros stayed.
    src = AutoModelForCausalLM.from_pretrained(tiny_models["phi3"], dtype=torch.float32)
    name = next(iter(masks))
    changed = (m.state_dict()[name] - src.state_dict()[name]).abs()[masks[name]]
    assert float(changed.max()) > 1e-3


@pytest.mark.slow
def test_an_interrupted_pipeline_resumes_from_its_work_dir(tiny_models, tmp_path):
    """Killed during distillation: --resume reuses the finished pruning step and the newest checkpoint."""
    args = ["convert", str(tiny_models["llama"]), "-o", str(tmp_path / "s"), "--prune", "ffn=0.5,importance=weight",
            "--distill", "steps=400,batch_size=2,seq_len=32,heldout_windows=2,checkpoint_every=5", "--data", DATA,
            "--threads", "1", "-q"]
    run = subprocess.Popen([*EDGEKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ck = tmp_path / "s.work" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(ck.glob("step-*.pt")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    assert (tmp_path / "s.work" / "1-prune").is_dir() and list(ck.glob("step-*.pt"))

    again = _run(*args, check=False)
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
    r = _run(*args[:-1], "--resume")  # without -q: the log says what was reused
    assert "reusing" in r.stderr and "1-prune" in r.stderr and "resuming from" in r.stderr
    assert (tmp_path / "s" / "model.safetensors").is_file() and not (tmp_path / "s.work").exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    from edgekit.converters import recipe as rc

    r = rc.load(path)
    steps, record = rc._resolved(r)
    rc._check_steps(steps, rc._source(r))  # every option is known and in range, the data exists
    assert [k for k, _ in steps][-1] == "export" and Path(r.output).suffix == ".gguf"


@pytest.mark.parametrize("text, message", [
    ("source: x\noutput: y\nsteps: [{prune: {ffn: 0.5}}]\nextra: 1\n", "unknown recipe key(s) extra"),
    ("source: x\noutput: y\nsteps: [{distill: {}}, {prune: {}}]\n", "out of order"),
    ("source: x\noutput: y\nsteps: [{prune: {fnn: 0.5}}]\n", "prune: unknown option(s) fnn"),
    ("source: x\noutput: y\nsteps: [{quantize: {}}]\n", "unknown step 'quantize'"),
    ("source: x\nsteps: [{prune: {}}]\n", "`output` is required"),
    ("source: [unclosed\n", "not valid YAML"),
])
def test_bad_recipes_fail_in_one_line(tmp_path, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    r = _run("convert", "--recipe", str(recipe), check=False)
    assert r.returncode == 1 and message in r.stderr and str(recipe) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--recipe", "r.yaml", "--prune", "ffn=0.5"], "either in --recipe or as flags"),
    (["--prune", "ffn"], "expected key=value pairs"),
    (["--prune", "ffn=0.5", "--distill", "alpha=2"], "alpha must be in [0, 1]"),
    (["--distill"], "no student"),
    (["--prune", "ffn=0.5", "--quant", "8da4w"], "not a .gguf scheme"),
    (["--steps", "5"], "only with --prune, --sparsify, --distill or --recipe"),
])
@pytest.mark.slow
def test_bad_pipeline_flags_fail_in_one_line(tiny_models, tmp_path, extra, message):
    r = subprocess.run([*EDGEKIT, "convert", str(tiny_models["llama"]), "-o", str(tmp_path / "s.gguf"),
                        "--data", DATA, *extra], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s.gguf").exists() and not (tmp_path / "s-student").exists()
