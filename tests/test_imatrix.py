"""Importance matrix: collection, llama.cpp's file formats, and imatrix-weighted quantization."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgekit.converters.gguf import imatrix
from edgekit.errors import EdgekitError
from edgekit.runtime.backends.llamacpp import quantize as llama_quantize

# Code and prose: enough tokens for several 32-token chunks with the tiny tokenizers.
CALIB = (Path(__file__).read_text() + "\nThe quick brown fox jumps over the lazy dog. 12345 çà 日本\n") * 2


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from edgekit.testing.models import build_tiny_model

    root = tmp_path_factory.mktemp("imx")
    # qwen2: tied embeddings, every row length a multiple of 256 (Q4_K/Q6_K everywhere in q4_k_m).
    # mistral: untied lm_head. llama: a tokenizer that adds BOS.
    return {"qwen2": build_tiny_model(root / "qwen2", "qwen2", hidden=256, ffn=512),
            "mistral": build_tiny_model(root / "mistral", "mistral", hidden=64, ffn=128),
            "llama": build_tiny_model(root / "llama", "llama", hidden=64, ffn=128)}


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True)


def _tensors(path: Path) -> dict[str, tuple[gguf.GGMLQuantizationType, bytes]]:
    return {t.name: (t.tensor_type, bytes(t.data.tobytes())) for t in gguf.GGUFReader(path).tensors}


# ---------------------------------------------------------------------------------------------
# Collection


def test_collect_equals_hand_computation(models):
    """Sums of x^2 equal the inputs of q_proj / lm_head recomputed from hidden states, without hooks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, ctx = models["qwen2"], 32
    stats = imatrix.collect(src, CALIB, ctx=ctx, max_chunks=3, progress=False)

    ids = AutoTokenizer.from_pretrained(src)(CALIB, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 3 * ctx  # qwen2 adds no BOS: chunks are plain slices
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    q_in = [torch.zeros(256, dtype=torch.float64) for _ in range(2)]
    out_in = torch.zeros(256, dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            hs = model(torch.tensor([ids[i * ctx:(i + 1) * ctx]]), output_hidden_states=True).hidden_states
            for layer in range(2):  # q_proj sees the layer's input after its input_layernorm
                x = model.model.layers[layer].input_layernorm(hs[layer])[0].double()
                q_in[layer] += (x * x).sum(0)
            out_in += (hs[-1][0].double() ** 2).sum(0)  # the last hidden state is already normed
    for layer in range(2):
        s, n = stats[f"blk.{layer}.attn_q.weight"]
        assert n == 3 * ctx
        np.testing.assert_allclose(s, q_in[layer].numpy(), rtol=1e-5)
    s, n = stats["token_embd.weight"]  # tied embeddings: lm_head's input belongs to token_embd
    np.testing.assert_allclose(s, out_in.numpy(), rtol=1e-5)
    assert "output.weight" not in stats


def test_keys_are_the_matmul_weights(models):
    from edgekit.converters.gguf.mix import is_quantizable

    for arch, embd in (("qwen2", "token_embd.weight"), ("mistral", "output.weight")):
        stats = imatrix.collect(models[arch], CALIB, ctx=16, max_chunks=1, progress=False)
        f32 = {t.name: t.shape for t in gguf.GGUFReader(_f32(models[arch])).tensors}
        matmuls = {n for n, s in f32.items() if is_quantizable(n, s) and n != "token_embd.weight"}
        assert set(stats) == matmuls | {embd}, arch
        for name, (s, n) in stats.items():
            assert s.dtype == np.float32 and s.shape == (int(f32[name][0]),) and n == 16


def test_bos_prefix_and_short_text(models):
    """A text shorter than one chunk gives one partial chunk; BOS is counted as a token."""
    from transformers import AutoTokenizer

    from edgekit.io.hf import special_prefix

    tok = AutoTokenizer.from_pretrained(models["llama"])
    assert special_prefix(tok) == [tok.bos_token_id]
    text = "def f(x):\n    return x\n"
    n_ids = len(tok(text, add_special_tokens=False)["input_ids"])
    stats = imatrix.collect(models["llama"], text, ctx=512, progress=False)
    assert {n for _, n in stats.values()} == {n_ids + 1}
    stats = imatrix.collect(models["llama"], CALIB, ctx=64, max_chunks=2, progress=False)
    assert {n for _, n in stats.values()} == {128}


@pytest.mark.parametrize("text,msg", [("", "empty"), (" \n\t", "empty")])
def test_collect_rejects_empty_text(models, text, msg):
    with pytest.raises(EdgekitError, match=msg):
        imatrix.collect(models["qwen2"], text, progress=False)


# ---------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    stats = {"blk.0.attn_q.weight": (rng.random(256, dtype=np.float32) * 100, 1536),
             "blk.0.ffn_down.weight": (rng.random(512, dtype=np.float32), 1536),
             "output.weight": (rng.random(256, dtype=np.float32), 1200)}
    path = imatrix.save(tmp_path / "im.gguf", stats, dataset="calib.txt", chunks=3, ctx=512)
    assert not list(tmp_path.glob(".*.tmp"))
    back = imatrix.load(path)
    assert (back.datasets, back.chunk_count, back.chunk_size, back.legacy) == (["calib.txt"], 3, 512, False)
    assert back.stats.keys() == stats.keys()
    for name, (s, n) in stats.items():
        assert back.stats[name][1] == n
        np.testing.assert_array_equal(back.stats[name][0], s)
    imp = back.importance()
    np.testing.assert_array_equal(imp["output.weight"], stats["output.weight"][0] / np.float32(1200))

    # The layout llama.cpp's loader expects: metadata keys, F32 <name>.in_sum2 / <name>.counts pairs.
    r = gguf.GGUFReader(path)
    assert r.get_field("general.type").contents() == "imatrix"
    assert r.get_field("general.architecture") is None
    assert r.get_field("imatrix.chunk_size").types == [gguf.GGUFValueType.UINT32]
    names = [t.name for t in r.tensors]
    assert names == [f"{n}.{k}" for n in sorted(stats) for k in ("in_sum2", "counts")]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    counts = {t.name: t for t in r.tensors}["output.weight.counts"]
    assert counts.data.tolist() == [1200.0]

    # chunks defaults to what the counts imply
    imatrix.save(tmp_path / "im2.gguf", stats, dataset="d", ctx=512)
    assert imatrix.load(tmp_path / "im2.gguf").chunk_count == 3
    assert imatrix.summary(path, stats, 512) == f"wrote {path}: 3 tensors, 1536 tokens (3 chunks of 512)"
    with pytest.raises(EdgekitError, match="cannot write imatrix"):
        imatrix.save(tmp_path / "nodir" / "im.gguf", stats, dataset="d", ctx=512)
    with pytest.raises(EdgekitError, match="no imatrix data"):
        imatrix.save(tmp_path / "empty.gguf", {}, dataset="d", ctx=512)


def _write_dat(path: Path, entries: dict[str, tuple[np.ndarray, int]], trailer: tuple[int, str] | None) -> Path:
    """llama.cpp's legacy imatrix layout, written from its description (see converters/gguf/imatrix.py)."""
    out = struct.pack("<i", len(entries))
    for name, (mean, ncall) in entries.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, mean.size)
        out += (mean * np.float32(ncall)).astype("<f4").tobytes()
    if trailer:
        out += struct.pack("<i", trailer[0]) + struct.pack("<i", len(trailer[1])) + trailer[1].encode()
    path.write_bytes(out)
    return path


@pytest.mark.parametrize("trailer", [(10, "wiki.train.raw"), None])
def test_legacy_dat(tmp_path, trailer):
    rng = np.random.default_rng(1)
    means = {"blk.0.attn_k.weight": (rng.random(64, dtype=np.float32), 10),
             "blk.1.ffn_down.weight": (rng.random(128, dtype=np.float32), 7)}
    path = _write_dat(tmp_path / "im.dat", means, trailer)
    im = imatrix.load(path)
    assert im.legacy and im.stats.keys() == means.keys()
    assert (im.chunk_count, im.datasets) == ((10, ["wiki.train.raw"]) if trailer else (0, []))
    for name, v in imatrix.for_conversion(path, None, 1, False).items():
        np.testing.assert_allclose(v, means[name][0], rtol=1e-6)
    # save() turns it into a GGUF imatrix that gives the same importance
    imatrix.save(tmp_path / "im.gguf", im.stats, dataset="x", chunks=im.chunk_count, ctx=512)
    again = imatrix.load(tmp_path / "im.gguf").importance()
    for name, v in im.importance().items():
        np.testing.assert_array_equal(again[name], v)


def test_file_errors(tmp_path, models):
    stats = {"blk.0.attn_q.weight": (np.ones(256, dtype=np.float32), 10)}
    good = imatrix.save(tmp_path / "im.gguf", stats, dataset="d", chunks=1, ctx=10)
    cases = {
        "missing.gguf": "not found",
        "trunc.gguf": "truncated or corrupt",
        "trunc.dat": "truncated",
        "text.dat": "not an imatrix",
        "model.gguf": "not an imatrix",
    }
    (tmp_path / "trunc.gguf").write_bytes(good.read_bytes()[:-300])
    _write_dat(tmp_path / "full.dat", {"a.weight": (np.ones(64, dtype=np.float32), 1)}, None)
    (tmp_path / "trunc.dat").write_bytes((tmp_path / "full.dat").read_bytes()[:-10])
    (tmp_path / "text.dat").write_text("hello world, this is not binary\n")
    shutil.copyfile(_f32(models["mistral"]), tmp_path / "model.gguf")
    for name, msg in cases.items():
        with pytest.raises(EdgekitError, match=msg) as e:
            imatrix.for_conversion(tmp_path / name, models["qwen2"], 1, False)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)

    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(EdgekitError, match="not UTF-8"):
        imatrix.for_conversion(tmp_path / "latin1.txt", models["qwen2"], 1, False)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EdgekitError, match=r"empty\.txt: calibration text is empty"):
        imatrix.for_conversion(tmp_path / "empty.txt", models["qwen2"], 1, False)
    (tmp_path / "calib.txt").write_text(CALIB)
    with pytest.raises(EdgekitError, match="source is a GGUF; pass an imatrix file"):
        imatrix.for_conversion(tmp_path / "calib.txt", None, 1, False)
    with pytest.raises(EdgekitError, match="not a Hugging Face model directory"):
        imatrix.collect_file(tmp_path / "model.gguf", tmp_path / "calib.txt", progress=False)

    imp = imatrix.for_conversion(good, None, 1, False)
    assert imp.for_tensor("blk.0.attn_q.weight", 256).shape == (256,)
    assert imp.for_tensor("blk.0.attn_k.weight", 256) is None
    with pytest.raises(EdgekitError, match="has 256 columns but the tensor has 512"):
        imp.for_tensor("blk.0.attn_q.weight", 512)


# ---------------------------------------------------------------------------------------------
# Conversion


def _f32(src: Path) -> Path:
    """An F32 GGUF of a tiny model, converted once per session (copy it before changing it)."""
    out = src.parent / f"{src.name}-f32.gguf"
    if not out.exists():
        from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

        write_gguf(src, out, GGUFConfig(quant="f32"), progress=False)
    return out


@pytest.mark.slow
def test_cli_convert_with_calibration_text(models, tmp_path):
    src = models["qwen2"]
    (tmp_path / "calib.txt").write_text(CALIB)
    r = _cli("convert", src, "-o", tmp_path / "im.gguf", "--quant", "q4_k_m", "--imatrix", tmp_path / "calib.txt", "-q")
    assert r.returncode == 0, r.stderr
    r = _cli("convert", src, "-o", tmp_path / "plain.gguf", "--quant", "q4_k_m", "-q")
    assert r.returncode == 0, r.stderr
    with_im, plain = _tensors(tmp_path / "im.gguf"), _tensors(tmp_path / "plain.gguf")
    assert {n: t for n, (t, _) in with_im.items()} == {n: t for n, (t, _) in plain.items()}
    changed = {n for n in plain if plain[n][1] != with_im[n][1]}
    assert "blk.0.attn_q.weight" in changed and "token_embd.weight" in changed  # Q4_K and Q6_K both steered

    from edgekit.runtime.backends.llamacpp import LlamaCppModel

    LlamaCppModel(tmp_path / "im.gguf", n_ctx=64).close()  # llama.cpp loads it

    # A text imatrix needs the HF model: a GGUF source is refused with a one-line error.
    r = _cli("convert", _f32(src), "-o", tmp_path / "x.gguf", "--imatrix", tmp_path / "calib.txt", "-q")
    assert r.returncode == 1 and "pass an imatrix file" in r.stderr and "Traceback" not in r.stderr
    r = _cli("convert", src, "-o", tmp_path / "x.gguf", "--imatrix", tmp_path / "nope.dat", "-q")
    assert r.returncode == 1 and "nope.dat: imatrix file not found" in r.stderr
    assert not (tmp_path / "x.gguf").exists()


# qwen2 (hidden 256): Q4_K and Q6_K; mistral (hidden 64): every row falls back, Q4_K -> Q5_0 and Q6_K -> Q8_0,
# where llama.cpp's Q5_0 follows the imatrix (gguf-py's does not).
_STEERED = {"qwen2": ("blk.0.attn_q.weight", "token_embd.weight"),
            "mistral": ("blk.0.attn_q.weight", "blk.1.ffn_up.weight")}
_TYPES = {"qwen2": {gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K},
          "mistral": {gguf.GGMLQuantizationType.Q5_0, gguf.GGMLQuantizationType.Q8_0}}


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_identical_to_llama_quantize_with_imatrix(models, tmp_path, arch):
    """Our q4_k_m + imatrix == llama.cpp's imatrix-weighted Q4_K_M of our F32 file, tensor by tensor."""
    src = models[arch]
    stats = imatrix.collect(src, CALIB, ctx=64, max_chunks=4, progress=False)
    path = imatrix.save(tmp_path / "im.gguf", stats, dataset="calib", ctx=64)
    r = _cli("convert", src, "-o", tmp_path / "ours.gguf", "--quant", "q4_k_m", "--imatrix", path, "-q")
    assert r.returncode == 0, r.stderr
    ours = _tensors(tmp_path / "ours.gguf")
    imp = imatrix.load(path).importance()
    theirs = _tensors(llama_quantize(_f32(src), tmp_path / "theirs.gguf", "q4_k_m", importance=imp))
    # The imatrix must have reached llama.cpp, or the comparison below would prove nothing.
    plain = _tensors(llama_quantize(_f32(src), tmp_path / "plain.gguf", "q4_k_m"))
    for name in _STEERED[arch]:
        assert theirs[name] != plain[name], name
    assert ours.keys() == theirs.keys()
    assert {t for t, _ in ours.values()} >= _TYPES[arch]
    bad = []
    for name, (qtype, data) in ours.items():
        assert qtype == theirs[name][0], name
        if data != theirs[name][1]:
            blk = gguf.GGML_QUANT_SIZES[qtype][1]
            a, b = (np.frombuffer(x, np.uint8).reshape(-1, blk) for x in (data, theirs[name][1]))
            bad.append(f"{name} {qtype.name}: {int((a != b).any(1).sum())}/{len(a)} blocks differ")
    assert not bad, "; ".join(bad)
