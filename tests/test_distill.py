"""Distillation: the loss terms against hand computations, training that moves the student towards the teacher,
resume after a killed run, torchrun DDP against one process, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError

DATA = [Path(os.__file__)]  # the standard library's os.py: real text, on every machine
EDGEKIT = [sys.executable, "-m", "edgekit"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
SMALL = "num_hidden_layers=1,intermediate_size=128"  # a fresh student half the tiny teacher's depth


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kd_loss_matches_hand_computation():
    import torch

    from edgekit.converters.compress.distill import kd_loss

    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 5, 7)) * 3, rng.normal(size=(2, 5, 7)) * 3
    ids = rng.integers(0, 7, size=(2, 5))
    alpha, temp = 0.3, 2.5
    # CE: position p predicts token p+1; KL at every position, on temperature-softened distributions, times T^2.
    ls = _log_softmax(s)
    ce = -np.mean([ls[b, p, ids[b, p + 1]] for b in range(2) for p in range(4)])
    pt, lst, lss = np.exp(_log_softmax(t / temp)), _log_softmax(t / temp), _log_softmax(s / temp)
    kl = np.mean((pt * (lst - lss)).sum(-1)) * temp ** 2
    loss, got_ce, got_kl = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(ids), alpha, temp)
    assert float(got_ce) == pytest.approx(ce, rel=1e-6)
    assert float(got_kl) == pytest.approx(kl, rel=1e-6)
    assert float(loss) == pytest.approx((1 - alpha) * ce + alpha * kl, rel=1e-6)
    # alpha = 0 is plain language-model training: the teacher does not enter.
    assert float(kd_loss(torch.tensor(s), None, torch.tensor(ids), 0.0, temp)[0]) == pytest.approx(ce, rel=1e-6)


def test_representation_and_attention_losses_match_hand_computation():
    import torch

    from edgekit.converters.compress.distill import attention_loss, representation_loss

    rng = np.random.default_rng(1)
    hs, ht, w = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 6)), rng.normal(size=(6, 4))
    proj = torch.nn.Linear(4, 6, bias=False).double()
    with torch.no_grad():
        proj.weight.copy_(torch.tensor(w))
    want = np.mean([np.mean((hs[b] @ w.T - ht[b]) ** 2) / np.mean(ht[b] ** 2) for b in range(2)])  # per sequence
    got = representation_loss(torch.tensor(hs), torch.tensor(ht), proj).detach()
    assert float(got) == pytest.approx(want, rel=1e-6)

    def attn(heads):
        a = np.exp(rng.normal(size=(1, heads, 3, 3)))
        return a / a.sum(-1, keepdims=True)

    a_s, a_t = attn(2), attn(2)
    want = np.mean((a_t * (np.log(a_t) - np.log(a_s))).sum(-1))
    assert float(attention_loss(torch.tensor(a_s), torch.tensor(a_t))) == pytest.approx(want, rel=1e-6)
    a_t4 = attn(4)  # different head counts: compare the head-averaged maps
    ms, mt = a_s.mean(1), a_t4.mean(1)
    want = np.mean((mt * (np.log(mt) - np.log(ms))).sum(-1))
    assert float(attention_loss(torch.tensor(a_s), torch.tensor(a_t4))) == pytest.approx(want, rel=1e-6)


def test_uniform_layer_map():
    from edgekit.converters.compress.distill import uniform_layer_map

    assert uniform_layer_map(4, 6) == [(0, 1), (1, 2), (2, 4), (3, 5)]
    assert uniform_layer_map(2, 2) == [(0, 0), (1, 1)]
    assert uniform_layer_map(1, 6) == [(0, 5)]


@pytest.mark.slow
def test_distillation_moves_a_student_towards_the_teacher(tiny_models, tmp_path):
    """Every loss term on, a fresh student with a narrower FFN: the KL to the teacher on held-out text falls,
    and the output is an HF model of the student's shape with a record of how it was made."""
    import json

    from edgekit.converters.compress.distill import DistillConfig, distill

    cfg = DistillConfig(data=DATA, steps=30, seq_len=64, batch_size=4, heldout_windows=4, lr=3e-3, beta=1.0,
                        gamma=1.0, alpha=1.0)  # a random teacher: only the KD terms pull towards it
    r = distill(tiny_models["llama"], tmp_path / "student", replace(cfg, student={"intermediate_size": 256}),
                progress=False)
    assert r.kl_after < 0.7 * r.kl_before, r.summary()
    assert r.params_student < r.params_teacher and len(r.losses) == 30
    c = json.loads((tmp_path / "student" / "config.json").read_text())
    assert c["intermediate_size"] == 256 and c["num_hidden_layers"] == 2
    assert (tmp_path / "student" / "tokenizer.json").is_file()
    record = json.loads((tmp_path / "student" / "edgekit_distill.json").read_text())
    assert record["config"]["gamma"] == 1.0 and record["report"]["steps"] == 30


@pytest.mark.slow
def test_a_bf16_teacher_gives_nearly_the_fp32_targets(tiny_models, tmp_path):
    """--teacher-dtype bfloat16 halves the teacher's memory; its held-out perplexity stays within 1 %."""
    from edgekit.converters.compress.distill import DistillConfig, distill

    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = DistillConfig(data=DATA, steps=2, seq_len=64, batch_size=2, heldout_windows=4, teacher_dtype=dtype)
        runs[dtype] = distill(tiny_models["llama"], tmp_path / dtype, replace(cfg, student={"num_hidden_layers": 1}),
                              progress=False)
    assert runs["bfloat16"].ppl_teacher == pytest.approx(runs["float32"].ppl_teacher, rel=1e-2)
    assert runs["bfloat16"].ppl_teacher != runs["float32"].ppl_teacher  # it did run in bf16
    assert np.isfinite(runs["bfloat16"].losses).all()


def _distill_cmd(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [*EDGEKIT, "distill", str(teacher), "--student", SMALL, "-o", str(out), "--data", str(DATA[0]),
            "--seq-len", "32", "--heldout-windows", "2", "--threads", "1", *extra]


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(d / "model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_resume_after_a_killed_run_continues_at_the_right_step(tiny_models, tmp_path):
    """SIGKILL mid-training, --resume: it picks up after the newest checkpoint and ends where an
    uninterrupted run ends (the batch order depends only on seed and step)."""
    teacher = tiny_models["llama"]
    steps = ["--steps", "400", "--batch-size", "2", "--checkpoint-every", "5"]
    ck = tmp_path / "ck"
    run = subprocess.Popen(_distill_cmd(teacher, tmp_path / "a", *steps, "--checkpoint-dir", str(ck)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(ck.glob("step-*.pt")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    done = sorted(ck.glob("step-*.pt"))
    assert done and not (tmp_path / "a").exists(), "killed before the first checkpoint, or after the end"
    last = int(done[-1].stem.split("-")[1])
    assert last < 400

    again = subprocess.run(_distill_cmd(teacher, tmp_path / "a", *steps, "--checkpoint-dir", str(ck)),
                           capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr  # no silent restart over old checkpoints
    resumed = subprocess.run(_distill_cmd(teacher, tmp_path / "a", *steps, "--checkpoint-dir", str(ck), "--resume"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {last + 1} of 400" in resumed.stderr
    assert f"resumed at step {last + 1}" in resumed.stdout
    whole = subprocess.run(_distill_cmd(teacher, tmp_path / "b", *steps), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    assert _max_diff(_weights(tmp_path / "a"), _weights(tmp_path / "b")) < 1e-6


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_options(tiny_models, tmp_path):
    ck = tmp_path / "ck"
    first = subprocess.run(_distill_cmd(tiny_models["llama"], tmp_path / "a", "--steps", "2", "--checkpoint-dir",
                                        str(ck)), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    other = subprocess.run(_distill_cmd(tiny_models["llama"], tmp_path / "b", "--steps", "2", "--lr", "0.01",
                                        "--checkpoint-dir", str(ck), "--resume"), capture_output=True, text=True)
    assert other.returncode == 1 and "different lr" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tiny_models, tmp_path):
    """DDP and FSDP over gloo, 2 processes x 2 sequences = 1 process x 4 sequences (and 4 micro-batches of 1):
    the same updates up to float rounding; a different global batch is far off (the test can fail)."""
    teacher = tiny_models["llama"]
    common = ["--steps", "5", "--batch-size", "4", "--beta", "1", "--gamma", "1"]  # every loss term
    ddp = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "edgekit", "distill",
                          *_distill_cmd(teacher, tmp_path / "ddp", *common)[4:]], capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "on 2 processes" in ddp.stdout and ddp.stdout.count("distilled") == 1  # rank 0 alone reports
    fsdp = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "edgekit", "distill",
                           *_distill_cmd(teacher, tmp_path / "fsdp", *common, "--fsdp")[4:]],
                          capture_output=True, text=True)
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    one = subprocess.run(_distill_cmd(teacher, tmp_path / "one", *common), capture_output=True, text=True)
    accum = subprocess.run(_distill_cmd(teacher, tmp_path / "accum", *common, "--micro-batch", "1"),
                           capture_output=True, text=True)
    other = subprocess.run(_distill_cmd(teacher, tmp_path / "other", "--steps", "5", "--batch-size", "2"),
                           capture_output=True, text=True)
    assert one.returncode == accum.returncode == other.returncode == 0, one.stderr + accum.stderr + other.stderr
    w = _weights(tmp_path / "one")
    assert _max_diff(w, _weights(tmp_path / "ddp")) < 2e-5
    assert _max_diff(w, _weights(tmp_path / "fsdp")) < 2e-5  # sharded parameters, gradients and optimizer state
    assert _max_diff(w, _weights(tmp_path / "accum")) < 2e-5
    assert _max_diff(w, _weights(tmp_path / "other")) > 1e-3


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["--layer-map", "0-1"], "expected pairs like"),
    (["--layer-map", "0:7"], "out of range"),
    (["--batch-size", "4", "--micro-batch", "3"], "split evenly"),
    (["--steps", "0"], "steps must be at least 1"),
])
@pytest.mark.slow
def test_bad_options_fail_in_one_line(tiny_models, tmp_path, extra, message):
    r = subprocess.run(_distill_cmd(tiny_models["llama"], tmp_path / "s", *extra, "--beta", "1"),
                       capture_output=True, text=True)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


def test_bad_students_fail_in_one_line(tiny_models, tmp_path):
    from edgekit.converters.compress.distill import DistillConfig, distill

    cfg = DistillConfig(data=DATA, steps=1, seq_len=32, batch_size=1, heldout_windows=1)
    with pytest.raises(EdgekitError, match="has no option 'num_layerz'"):
        distill(tiny_models["llama"], tmp_path / "s", replace(cfg, student={"num_layerz": 1}))
    with pytest.raises(EdgekitError, match="vocabulary"):
        distill(tiny_models["llama"], tmp_path / "s", replace(cfg, student={"vocab_size": 300}))
    from transformers import AutoConfig, AutoModelForCausalLM

    c = AutoConfig.from_pretrained(tiny_models["llama"])
    c.vocab_size = 300
    AutoModelForCausalLM.from_config(c).save_pretrained(tmp_path / "other-vocab")
    with pytest.raises(EdgekitError, match="other-vocab: the student's vocabulary"):
        distill(tiny_models["llama"], tmp_path / "s", replace(cfg, student=tmp_path / "other-vocab"))
    with pytest.raises(EdgekitError, match="no config.json"):
        distill(tiny_models["llama"], tmp_path / "s", replace(cfg, student=tmp_path))
    assert not (tmp_path / "s").exists()
