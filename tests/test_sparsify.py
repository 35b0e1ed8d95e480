"""Unstructured / N:M pruning: scores against hand and numpy references, the counts each scope promises, masks
that survive real optimizer steps, a GGUF round trip through llama.cpp, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import hf_logits, llama_logits, prompt_tokens

from edgekit.errors import EdgekitError

CALIB = [Path(os.__file__)]  # the standard library's os.py: real text, on every machine


def _cfg(**kw):
    from edgekit.converters.compress.sparsify import SparsifyConfig

    return SparsifyConfig(**{"data": CALIB, "max_tokens": 256, "ctx": 64} | kw)


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _windows(model_dir: Path) -> list[list[int]]:
    from edgekit.io.text import text_windows

    return text_windows(model_dir, CALIB, 64, 4)


def _linear_weights(model) -> dict[str, np.ndarray]:
    """Every 2-D weight inside the decoder layers, found without the module under test."""
    return {n: p.detach().numpy() for n, p in model.named_parameters()
            if n.startswith("model.layers.") and p.dim() == 2}


# ---------------------------------------------------------------------------------------------
# Scores


def _toy(emb, weight):
    """A model whose only decoder linear reads the token embeddings: its inputs are known exactly."""
    import torch

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.embed = torch.nn.Embedding.from_pretrained(torch.tensor(emb, dtype=torch.float32))
            self.model.layers = torch.nn.ModuleList([torch.nn.Linear(len(emb[0]), len(weight), bias=False)])
            self.lm_head = torch.nn.Linear(len(weight), 3, bias=False)
            with torch.no_grad():
                self.model.layers[0].weight.copy_(torch.tensor(weight, dtype=torch.float32))

        def forward(self, input_ids, use_cache=False):
            return self.lm_head(self.model.layers[0](self.model.embed(input_ids)))

    return Toy()


def test_wanda_by_hand_differs_from_magnitude():
    from edgekit.converters.compress.sparsify import compute_masks

    # One token per window; feature norms over both tokens: sqrt(3^2 + 4^2) = 5, 6, 1, 0. Summed |x| (7 vs 6),
    # or the last window alone (4 vs 0), would rank feature 0 above feature 1 instead.
    model = _toy([[3, 6, 0, 0], [4, 0, 1, 0]], [[1, 1, 0.1, 0.1], [0.2, 0.1, 4, 9]])
    wanda = compute_masks(model, _cfg(sparsity=0.75), [[0], [1]])  # keeps 1 of 4 per row
    assert list(wanda) == ["model.layers.0.weight"]  # lm_head is outside the decoder layers
    # Scores: row 0: 5, 6, 0.1, 0; row 1: 1, 0.6, 4, 0.
    assert wanda["model.layers.0.weight"].tolist() == [[False, True, False, False], [False, False, True, False]]
    mag = compute_masks(model, _cfg(method="magnitude", sparsity=0.75), None)
    # Row 0 is a tie (1, 1): the lower index stays.
    assert mag["model.layers.0.weight"].tolist() == [[True, False, False, False], [False, False, False, True]]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_threshold_ties_keep_the_lower_index(scope):
    from edgekit.converters.compress.sparsify import compute_masks

    # Five weights tie at 1 and four must go: the one at the lowest index stays, whatever the scope.
    model = _toy([[1, 0, 0, 0]], [[1, 1, 1, 1], [3, 1, 2, 2]])
    mask = compute_masks(model, _cfg(method="magnitude", sparsity=0.5, scope=scope), None)["model.layers.0.weight"]
    assert mask.tolist() == [[True, False, False, False], [True, False, True, True]]


def test_wanda_matches_numpy_reference_on_a_real_model(tiny_models):
    import torch

    from edgekit.converters.compress.sparsify import compute_masks

    model = _load(tiny_models["qwen2"])
    windows = _windows(tiny_models["qwen2"])
    layer = model.model.layers[1].mlp.down_proj
    seen = []
    hook = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, 512).numpy().copy()))
    with torch.no_grad():
        for w in windows:
            model(torch.tensor([w]))
    hook.remove()
    x = np.concatenate(seen).astype(np.float64)
    scores = np.abs(layer.weight.detach().numpy().astype(np.float64)) * np.sqrt((x * x).sum(0))
    keep = round(512 * 0.6)  # sparsity 0.4
    want = np.zeros_like(scores, dtype=bool)
    np.put_along_axis(want, np.argsort(-scores, axis=1, kind="stable")[:, :keep], True, axis=1)

    got = compute_masks(model, _cfg(sparsity=0.4), windows)["model.layers.1.mlp.down_proj.weight"].numpy()
    np.testing.assert_array_equal(got, want)
    # And it is not simply magnitude ranking.
    mag = compute_masks(model, _cfg(method="magnitude", sparsity=0.4), None)["model.layers.1.mlp.down_proj.weight"]
    assert (mag.numpy() != want).sum() > 100


# ---------------------------------------------------------------------------------------------
# Scopes and patterns


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_row_scope_prunes_the_same_count_in_every_row(method, tiny_models):
    from edgekit.converters.compress.sparsify import compute_masks

    model = _load(tiny_models["phi3"])  # fused qkv and gate_up: still ordinary rows
    masks = compute_masks(model, _cfg(method=method, sparsity=0.3), _windows(tiny_models["phi3"]))
    weights = _linear_weights(model)
    assert sorted(masks) == sorted(weights)  # every decoder linear, nothing else (no embeddings, no lm_head)
    for name, m in masks.items():
        m, w = m.numpy(), weights[name]
        assert m.shape == w.shape and m.dtype == bool
        assert ((~m).sum(1) == round(0.3 * w.shape[1])).all(), name
        if method == "magnitude":  # in each row, every kept |w| is at least every pruned |w|
            a = np.abs(w)
            assert (np.where(m, a, np.inf).min(1) >= np.where(m, -np.inf, a).max(1)).all(), name


def test_layer_and_global_scopes(tiny_models):
    import torch

    from edgekit.converters.compress.sparsify import compute_masks, sparsity_stats

    model = _load(tiny_models["llama"])
    quiet = "model.layers.0.mlp.down_proj.weight"
    with torch.no_grad():
        model.get_parameter(quiet).mul_(0.1)  # one matrix of small weights: a global threshold takes most of it
    weights = _linear_weights(model)
    layer = compute_masks(model, _cfg(method="magnitude", sparsity=0.3, scope="layer"), None)
    for name, m in layer.items():
        assert int((~m).sum()) == round(0.3 * m.numel()), name
    per_row = (~layer["model.layers.0.self_attn.q_proj.weight"]).sum(1)
    assert per_row.min() < per_row.max()  # one threshold per matrix: rows differ

    glob = compute_masks(model, _cfg(method="magnitude", sparsity=0.3, scope="global"), None)
    total = sum(w.size for w in weights.values())
    stats = sparsity_stats(glob)
    assert stats.pruned == round(0.3 * total) and stats.total == total
    assert abs(stats.overall - 0.3) < 1e-6
    assert stats.per_tensor[quiet] > 0.9 and min(stats.per_tensor.values()) < 0.25
    kept = min(np.abs(weights[n])[m.numpy()].min() for n, m in glob.items())
    pruned = max(np.abs(weights[n])[~m.numpy()].max() for n, m in glob.items())
    assert kept >= pruned  # one threshold over every matrix


def test_2_4_pattern_and_check_n_m(tiny_models):
    from edgekit.converters.compress.sparsify import check_n_m, compute_masks, sparsity_stats

    model = _load(tiny_models["phi3"])
    masks = compute_masks(model, _cfg(pattern="2:4"), _windows(tiny_models["phi3"]))
    for name, m in masks.items():
        groups = m.numpy().reshape(m.shape[0], -1, 4)
        assert (groups.sum(-1) == 2).all(), name
        assert check_n_m(m, 2, 4, exact=True)
    stats = sparsity_stats(masks, "2:4")
    assert stats.pattern_ok is True and stats.overall == 0.5

    m = masks["model.layers.0.mlp.down_proj.weight"].clone()
    m[3, 4:8] = True  # one group keeps 4 of 4
    assert not check_n_m(m, 2, 4)
    assert sparsity_stats({"x": m}, "2:4").pattern_ok is False
    m = masks["model.layers.0.mlp.down_proj.weight"].clone()
    m[3, 4:8] = False  # one group keeps none: still at most 2, but not exactly 2
    assert check_n_m(m, 2, 4) and not check_n_m(m, 2, 4, exact=True)
    assert not check_n_m(m[:, :6], 2, 4)  # a row length that is no multiple of 4


def test_magnitude_2_4_keeps_the_two_largest_of_each_group(tiny_models):
    from edgekit.converters.compress.sparsify import compute_masks

    model = _load(tiny_models["mistral"])
    masks = compute_masks(model, _cfg(method="magnitude", pattern="2:4"), None)
    for name, w in _linear_weights(model).items():
        a = np.abs(w).reshape(w.shape[0], -1, 4)
        want = np.argsort(-a, axis=-1, kind="stable")[..., :2]
        got = masks[name].numpy().reshape(a.shape)
        assert np.take_along_axis(got, want, axis=-1).all() and got.sum() == want.size, name


# ---------------------------------------------------------------------------------------------
# Fine-tuning keeps the zeros


def _adamw_steps(model, masks, steps: int, mask_grads: bool, reapply: bool) -> None:
    import torch

    from edgekit.converters.compress.sparsify import apply_masks, mask_gradients

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=g)
        model(ids, labels=ids).loss.backward()
        if mask_grads:
            mask_gradients(model, masks)
        opt.step()
        opt.zero_grad()
        if reapply:
            apply_masks(model, masks)


@pytest.mark.parametrize("mask_grads, reapply", [(True, True), (True, False), (False, True), (False, False)])
def test_2_4_survives_adamw_only_with_masked_updates(mask_grads, reapply, tiny_models):
    """Either half alone keeps the zeros of a fresh optimizer (masked gradients leave AdamW's moments at zero
    there; decoupled weight decay keeps a zero a zero); with neither, the first step revives them."""
    from edgekit.converters.compress.sparsify import apply_masks, check_n_m, compute_masks

    model = _load(tiny_models["llama"])
    masks = compute_masks(model, _cfg(method="magnitude", pattern="2:4"), None)
    apply_masks(model, masks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _adamw_steps(model, masks, steps=2, mask_grads=mask_grads, reapply=reapply)
    params = dict(model.named_parameters())
    still = [check_n_m(params[n].detach() != 0, 2, 4, exact=True) and not params[n][~m].any() for n, m in masks.items()]
    assert all(still) is (mask_grads or reapply)
    # The kept weights did train, either way.
    assert not (params["model.layers.0.mlp.down_proj.weight"] == before["model.layers.0.mlp.down_proj.weight"]).all()


def test_mask_gradients_zeroes_exactly_the_pruned_gradients(tiny_models):
    import torch

    from edgekit.converters.compress.sparsify import compute_masks, mask_gradients

    model = _load(tiny_models["qwen3"])
    masks = compute_masks(model, _cfg(method="magnitude", sparsity=0.5), None)
    ids = torch.arange(20).reshape(1, 20)
    model(ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    mask_gradients(model, masks)
    for n, p in model.named_parameters():
        keep = masks.get(n, torch.ones_like(p, dtype=torch.bool))
        assert (p.grad[keep] == grads[n][keep]).all() and not p.grad[~keep].any(), n
        assert grads[n][~keep].abs().sum() > 0 or not (~keep).any(), n  # there was something to zero


def test_masks_from_dir_reads_zeros_and_refuses_bad_records(tmp_path):
    from edgekit.converters.compress.sparsify import masks_from_dir

    model = _toy([[1, 0, 0, 0]], [[1, 0, 2, 0], [0, 3, 0, 0]])
    assert masks_from_dir(tmp_path, model) == {}
    record = tmp_path / "edgekit_sparsity.json"
    record.write_text(json.dumps({"masked": ["model.layers.0.weight"]}))
    assert masks_from_dir(tmp_path, model)["model.layers.0.weight"].tolist() == [[True, False, True, False],
                                                                                [False, True, False, False]]
    for bad, msg in (("{", "not an edgekit sparsity record"), ('{"masked": 3}', "not an edgekit sparsity record"),
                     ('{"masked": ["model.layers.7.weight"]}', "which the model does not have")):
        record.write_text(bad)
        with pytest.raises(EdgekitError, match=msg):
            masks_from_dir(tmp_path, model)


def test_masks_must_fit_the_model(tiny_models):
    import torch

    from edgekit.converters.compress.sparsify import apply_masks, compute_masks, mask_gradients

    model = _load(tiny_models["llama"])
    with pytest.raises(EdgekitError, match="no such parameter"):
        apply_masks(model, {"model.layers.9.mlp.down_proj.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(EdgekitError, match="shape"):
        mask_gradients(model, {"model.layers.0.mlp.down_proj.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(EdgekitError, match="wanda needs calibration windows"):
        compute_masks(model, _cfg(), None)
    with pytest.raises(EdgekitError, match="not a multiple of 3"):
        compute_masks(model, _cfg(method="magnitude", pattern="2:3"), None)


# ---------------------------------------------------------------------------------------------
# The verb: checkpoint, record, GGUF


@pytest.mark.parametrize("arch, kw", [("llama", dict(sparsity=0.5)), ("phi3", dict(pattern="2:4")),
                                      ("qwen3", dict(method="magnitude", sparsity=0.6, scope="global"))])
def test_sparsified_model_reloads_and_matches_llamacpp(arch, kw, tiny_models, tmp_path):
    import gguf

    from edgekit.converters.compress.sparsify import check_n_m, masks_from_dir, sparsify, sparsity_stats
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

    src, out = tiny_models[arch], tmp_path / "s"
    r = sparsify(src, out, _cfg(**kw))
    want = 0.5 if "pattern" in kw else kw["sparsity"]
    assert abs(r.stats.overall - want) < 1e-6
    assert r.summary().startswith(f"sparsified {src} -> {out}: {100 * want:.1f} % of the")
    assert (out / "tokenizer.json").is_file()
    record = json.loads((out / "edgekit_sparsity.json").read_text())
    assert record["masked"] == list(record["per_tensor"]) and record["pattern"] == kw.get("pattern")

    m, orig = _load(out), _load(src)
    weights = _linear_weights(m)
    assert sorted(record["masked"]) == sorted(weights)
    zeros = 0
    for name, w in weights.items():
        assert abs((w == 0).mean() - record["per_tensor"][name]) < 1e-6, name
        if "pattern" in kw:
            assert check_n_m(m.get_parameter(name) != 0, 2, 4, exact=True), name
        zeros += int((w == 0).sum())
    # Only the targeted weights changed, and only to zero.
    for (name, p), q in zip(m.named_parameters(), orig.parameters(), strict=True):
        p, q = p.detach(), q.detach()
        assert ((p == q) | ((p == 0) & (name in weights))).all(), name
    masks = masks_from_dir(out, m)
    assert sorted(masks) == sorted(weights) and sparsity_stats(masks).pruned == zeros == r.stats.pruned
    assert masks_from_dir(src, orig) == {}

    tokens = prompt_tokens(out)
    ref = hf_logits(m, tokens)
    assert np.abs(ref - hf_logits(orig, tokens)).max() > 1e-2  # the zeros do change the model
    path = tmp_path / "s.gguf"
    write_gguf(out, path, GGUFConfig(quant="f32"), progress=False)
    layer_zeros = sum(int((t.data == 0).sum()) for t in gguf.GGUFReader(path).tensors if t.name.startswith("blk."))
    assert layer_zeros == zeros
    assert np.abs(llama_logits(path, tokens) - ref).max() < 1e-4


def test_records_and_precision_carry_through(tmp_path):
    from safetensors import safe_open

    from edgekit.converters.compress.prune import PruneConfig, prune
    from edgekit.converters.compress.sparsify import sparsify
    from edgekit.testing.models import build_tiny_model

    src = build_tiny_model(tmp_path / "src", "qwen3", dtype="bfloat16")
    prune(src, tmp_path / "p", PruneConfig(ffn=0.5, importance="weight"))  # prune, then sparsify what is left
    sparsify(tmp_path / "p", tmp_path / "s", _cfg(method="magnitude", pattern="2:4"))
    assert (tmp_path / "s" / "edgekit_prune.json").read_text() == (tmp_path / "p" / "edgekit_prune.json").read_text()
    assert json.loads((tmp_path / "s" / "edgekit_sparsity.json").read_text())["overall"] == 0.5
    with safe_open(str(tmp_path / "s" / "model.safetensors"), framework="pt") as f:
        down = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert str(down.dtype) == "torch.bfloat16" and tuple(down.shape) == (256, 256)
    assert int((down == 0).sum()) == down.numel() // 2


def test_failure_while_writing_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from edgekit.converters.compress.sparsify import sparsify

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        sparsify(tiny_models["llama"], tmp_path / "s", _cfg(method="magnitude"))
    assert list(tmp_path.iterdir()) == []  # no output, no temp directory


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli(tiny_models, tmp_path, capsys):
    from edgekit.cli import main

    out = tmp_path / "s"
    assert main(["sparsify", str(tiny_models["mistral"]), "-o", str(out), "--pattern", " 2 : 4",
                 "--data", str(CALIB[0]), "--max-tokens", "256"]) == 0
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "50.0 % of the" in said and "(wanda, 2:4 pattern)" in said
    record = json.loads((out / "edgekit_sparsity.json").read_text())
    assert (record["method"], record["pattern"], record["overall"]) == ("wanda", "2:4", 0.5)
    assert record["calibration_tokens"] == 256


@pytest.mark.parametrize("args, msg", [
    (["--sparsity", "0.5"], "wanda needs calibration text"),
    (["--pattern", "3:2", "--method", "magnitude"], "--pattern '3:2': want N:M with 0 < N < M"),
    (["--pattern", "two:four", "--method", "magnitude"], "want N:M"),
    (["--sparsity", "1.5", "--method", "magnitude"], "--sparsity must be a fraction in [0, 1)"),
    (["--sparsity", "0.5", "--pattern", "2:4", "--method", "magnitude"], "give --sparsity or --pattern, not both"),
    (["--pattern", "2:4", "--scope", "global", "--method", "magnitude"], "--scope global: an N:M pattern"),
    (["--data", "/nonexistent/calib"], "data not found"),
    (["--missing-source", "--method", "magnitude"], "not a Hugging Face model directory (no config.json)"),
    (["--non-empty-output", "--method", "magnitude"], "already exists and is not an empty directory"),
])
def test_cli_bad_input_is_one_line(args, msg, tiny_models, tmp_path, capsys):
    from edgekit.cli import main

    src, out = tiny_models["llama"], tmp_path / "s"
    if "--missing-source" in args:
        src, args = tmp_path / "nowhere", args[1:]
    if "--non-empty-output" in args:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args = args[1:]
    assert main(["sparsify", str(src), "-o", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgekit: error: ") and msg in err and err.count("\n") == 1, err
    assert [f.name for f in tmp_path.iterdir()] == (["s"] if out.exists() else [])
    assert not out.exists() or [f.name for f in out.iterdir()] == ["keep.txt"]
