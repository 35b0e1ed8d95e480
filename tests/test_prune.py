"""Structured pruning: shapes, exact slicing, importance ranking, GGUF round trip, and bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ARCHS, llama_logits, prompt_tokens

from edgekit.errors import EdgekitError

CALIB = [Path(os.__file__)]  # the standard library's os.py: real text, on every machine


def _cfg(**kw):
    from edgekit.converters.compress.prune import PruneConfig

    return PruneConfig(data=CALIB, max_tokens=512, ctx=128, **kw)


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens]), use_cache=False).logits[0].numpy()


def _heads_frac(arch: str) -> float:
    return 0.0 if arch in ("qwen2", "phi3") else 0.5  # llama.cpp's graphs for these need heads x head_dim = hidden


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_model_loads_and_matches_llamacpp(arch, tiny_models, tmp_path):
    from edgekit.converters.compress.prune import prune
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

    layers = 1 if arch == "llama" else 0
    r = prune(tiny_models[arch], tmp_path / "p", _cfg(ffn=0.5, heads=_heads_frac(arch), layers=layers))
    c = json.loads((tmp_path / "p" / "config.json").read_text())
    heads, kv = (4, 2) if _heads_frac(arch) == 0 else (2, 1)
    assert (c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]) == (256, heads, kv)
    assert c["num_hidden_layers"] == 2 - layers == len(r.kept_layers)
    assert r.params_after < r.params_before and r.ffn == (512, 256)
    assert (tmp_path / "p" / "tokenizer.json").is_file()
    record = json.loads((tmp_path / "p" / "edgekit_prune.json").read_text())
    assert record["params_after"] == r.params_after and record["kept_ffn"]["0"] == r.kept_ffn[r.kept_layers[0]]
    m = _load(tmp_path / "p")
    hd = 128 if arch == "qwen3" else 64  # head_dim never changes
    assert m.model.layers[0].mlp.down_proj.weight.shape == (256, 256)
    assert m.model.layers[0].self_attn.o_proj.weight.shape == (256, heads * hd)
    tokens = prompt_tokens(tmp_path / "p")
    want = _logits(m, tokens)
    assert np.isfinite(want).all()
    gguf = tmp_path / "p.gguf"
    write_gguf(tmp_path / "p", gguf, GGUFConfig(quant="f32"), progress=False)
    assert np.abs(llama_logits(gguf, tokens) - want).max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_keeping_everything_is_identity(arch, tiny_models, tmp_path):
    from edgekit.converters.compress.prune import PruneConfig, prune

    r = prune(tiny_models[arch], tmp_path / "p", PruneConfig())  # no data needed when nothing is removed
    assert r.params_after == r.params_before
    tokens = prompt_tokens(tiny_models[arch])
    np.testing.assert_array_equal(_logits(_load(tmp_path / "p"), tokens), _logits(_load(tiny_models[arch]), tokens))


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_equals_source_with_removed_parts_zeroed(arch, tiny_models, tmp_path):
    """Zeroing, in the source, exactly what the report says was removed must give the pruned model's logits."""
    import torch

    from edgekit.converters.compress.prune import prune

    layers = 1 if arch == "llama" else 0
    r = prune(tiny_models[arch], tmp_path / "p", _cfg(ffn=0.5, heads=_heads_frac(arch), layers=layers))
    src = _load(tiny_models[arch])
    c = src.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    group = c.num_attention_heads // c.num_key_value_heads
    with torch.no_grad():
        for i in r.kept_layers:
            layer = src.model.layers[i]
            gone = sorted(set(range(c.intermediate_size)) - set(r.kept_ffn[i]))
            assert len(gone) == 256
            layer.mlp.down_proj.weight[:, gone] = 0  # a channel that writes nothing is a channel that is gone
            for g in set(range(c.num_key_value_heads)) - set(r.kept_groups[i]):
                layer.self_attn.o_proj.weight[:, g * group * hd:(g + 1) * group * hd] = 0
        src.model.layers = torch.nn.ModuleList([src.model.layers[i] for i in r.kept_layers])
    tokens = prompt_tokens(tiny_models[arch])
    assert np.abs(_logits(_load(tmp_path / "p"), tokens) - _logits(src, tokens)).max() < 1e-4


def _doctored_llama(root: Path, layers: int = 2) -> Path:
    """A tiny Llama where FFN channel 7 of layer 0 is dominant, channel 9 negligible, KV group 0 nearly silent,
    and (with 3 layers) layer 0 nearly the identity."""
    import torch

    from edgekit.testing.models import build_tiny_model

    d = build_tiny_model(root / "src", "llama", layers=layers, seed=1)
    m = _load(d)
    with torch.no_grad():
        mlp, att = m.model.layers[0].mlp, m.model.layers[0].self_attn
        mlp.gate_proj.weight[7] *= 8
        mlp.up_proj.weight[7] *= 8
        mlp.up_proj.weight[9] *= 1e-3
        mlp.down_proj.weight[:, 9] *= 1e-3
        att.v_proj.weight[:64] *= 1e-2  # KV head 0 (head_dim 64): its group's attention output is tiny
        att.o_proj.weight[:, :128] *= 1e-2  # and so is what o_proj reads from its two query heads
        if layers == 3:
            for layer in m.model.layers[1:]:
                layer.self_attn.o_proj.weight[:, 128:] *= 1e-2  # keep group 1 from looking negligible there
            m.model.layers[0].self_attn.o_proj.weight *= 1e-3
            m.model.layers[0].mlp.down_proj.weight *= 1e-3
    m.save_pretrained(d)
    return d


@pytest.mark.parametrize("importance", ["activation", "weight"])
def test_importance_keeps_the_dominant_channel_and_group(importance, tmp_path):
    from edgekit.converters.compress.prune import prune

    src = _doctored_llama(tmp_path)
    r = prune(src, tmp_path / "p", _cfg(ffn=0.5, heads=0.5, importance=importance))
    assert 7 in r.kept_ffn[0] and 9 not in r.kept_ffn[0]
    assert r.kept_groups[0] == [1]


def test_block_influence_drops_the_near_identity_layer(tmp_path):
    from edgekit.converters.compress.prune import prune

    src = _doctored_llama(tmp_path, layers=3)
    assert prune(src, tmp_path / "a", _cfg(layers=1)).kept_layers == [1, 2]
    # Without data: the deepest layer but the last goes.
    assert prune(src, tmp_path / "w", _cfg(layers=1, importance="weight")).kept_layers == [0, 2]


@pytest.mark.parametrize("kw, msg", [
    (dict(ffn=1.0), "--ffn must be a fraction in [0, 1)"),
    (dict(heads=-0.1), "--heads must be a fraction in [0, 1)"),
    (dict(layers=2), "only 2 layers"),
    (dict(layers=-1), "--layers must be >= 0"),
    (dict(ffn=0.5, importance="random"), "importance must be one of"),
])
def test_bad_config_is_one_error_and_writes_nothing(kw, msg, tiny_models, tmp_path):
    from edgekit.converters.compress.prune import prune

    with pytest.raises(EdgekitError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        prune(tiny_models["qwen2"], tmp_path / "p", _cfg(**kw))
    assert list(tmp_path.iterdir()) == []


def test_activation_without_data_and_fixed_head_archs_are_refused(tiny_models, tmp_path):
    from edgekit.converters.compress.prune import PruneConfig, prune

    with pytest.raises(EdgekitError, match="needs calibration text"):
        prune(tiny_models["llama"], tmp_path / "p", PruneConfig(ffn=0.5))
    for arch, name in (("phi3", "Phi-3"), ("qwen2", "Qwen2")):
        with pytest.raises(EdgekitError, match=f"{name} cannot lose attention heads"):
            prune(tiny_models[arch], tmp_path / "p", _cfg(heads=0.5))
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture(tiny_models, tmp_path):
    from edgekit.converters.compress.prune import prune

    src = tmp_path / "gpt2"
    shutil.copytree(tiny_models["llama"], src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(EdgekitError, match="does not support architecture 'GPT2LMHeadModel'"):
        prune(src, tmp_path / "p", _cfg(ffn=0.5))
    assert not (tmp_path / "p").exists()


def test_failure_while_writing_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from edgekit.converters.compress.prune import prune

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        prune(tiny_models["llama"], tmp_path / "p", _cfg(ffn=0.5, importance="weight"))
    assert list(tmp_path.iterdir()) == []  # no output, no temp directory


def test_cli(tiny_models, tmp_path, capsys):
    from edgekit.cli import main

    src, out = str(tiny_models["mistral"]), tmp_path / "p"
    assert main(["prune", src, "-o", str(out), "--ffn", "1.0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgekit: error: --ffn must be") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", src, "-o", str(out), "--ffn", "0.5", "--importance", "weight"]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert [f.name for f in out.iterdir()] == ["keep.txt"]

    out2 = tmp_path / "p2"
    assert main(["prune", src, "-o", str(out2), "--ffn", "0.5", "--heads", "0.5", "--layers", "1",
                 "--data", str(CALIB[0]), "--max-tokens", "256"]) == 0
    assert "ffn 512->256, heads 4->2 (kv 2->1), layers 2->1" in capsys.readouterr().out
    c = json.loads((out2 / "config.json").read_text())
    assert (c["intermediate_size"], c["num_attention_heads"], c["num_hidden_layers"], c["head_dim"]) == (256, 2, 1, 64)


def test_bf16_source_stays_bf16(tmp_path):
    from safetensors import safe_open

    from edgekit.converters.compress.prune import prune
    from edgekit.testing.models import build_tiny_model

    src = build_tiny_model(tmp_path / "src", "qwen3", dtype="bfloat16")
    prune(src, tmp_path / "p", _cfg(ffn=0.5, importance="weight"))
    with safe_open(str(tmp_path / "p" / "model.safetensors"), framework="pt") as f:
        down = f.get_slice("model.layers.0.mlp.down_proj.weight")
        assert (down.get_dtype(), down.get_shape()) == ("BF16", [256, 256])


@pytest.mark.parametrize("n, frac, keep", [(512, 0.0, 512), (512, 0.5, 256), (512, 0.3, 352), (500, 0.5, 256),
                                           (512, 0.99, 32), (48, 0.5, 24), (40, 0.99, 1), (96, 0.25, 64)])
def test_ffn_width_rounding(n, frac, keep):
    from edgekit.converters.compress.prune import _keep_ffn

    assert _keep_ffn(n, frac) == keep


@pytest.mark.slow
def test_pruned_model_exports_to_pte(tiny_models, tmp_path):
    """The .pte exporter takes a pruned model too (heads, FFN and a layer gone; Qwen3's head_dim kept)."""
    from edgekit.converters.compress.prune import prune
    from edgekit.converters.pte.export import PteConfig, export_pte
    from edgekit.runtime.backends.executorch import EtModel

    prune(tiny_models["qwen3"], tmp_path / "p", _cfg(ffn=0.5, heads=0.5, layers=1, importance="weight"))
    out = tmp_path / "pte" / "p.pte"
    out.parent.mkdir()
    export_pte(tmp_path / "p", out, PteConfig(quant="fp32", max_seq_len=80, max_prefill=16))
    tokens = prompt_tokens(tmp_path / "p")
    ref = _logits(_load(tmp_path / "p"), tokens)[-1]
    got = EtModel(out).prefill(tokens)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
