"""`edgekit eval`: perplexity against a hand-written transformers computation, KL/top-1 against a
reference (zero for identical models, non-zero for Q4_K_M), windowing, data handling and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.eval import EvalConfig, evaluate
from edgekit.eval.metrics import plan_windows

# Python source from the standard library: a fixed text of a few thousand tiny-tokenizer tokens.
TEXT = (Path(json.__file__).parent / "encoder.py").read_text(encoding="utf-8")
CTX = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evaldata") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

    root = tmp_path_factory.mktemp("evalgguf")
    out = {}
    for name, quant in (("f32", "f32"), ("q4km", "q4_k_m")):
        out[name] = write_gguf(tiny_models["llama"], root / f"llama-{name}.gguf", GGUFConfig(quant=quant),
                               progress=False).output
    return out


def direct_ppl(model_dir: Path, text: str, ctx: int, stride: int | None, max_windows: int) -> tuple[float, int]:
    """Perplexity the way HF's guide computes it, written out: each window is BOS (if the tokenizer adds one)
    plus the next text tokens; labels outside the scored tail are -100; the model's own loss does the rest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prefix = [tok.bos_token_id] if tok("x")["input_ids"][0] == tok.bos_token_id else []
    n_text = ctx - len(prefix)
    stride = stride or n_text
    total, count = 0.0, 0
    for k, begin in enumerate(range(0, len(ids) - n_text + 1, stride)):
        if k == max_windows:
            break
        window = torch.tensor([prefix + ids[begin:begin + n_text]])
        n_new = ctx - 1 if k == 0 else min(stride, n_text - 1)
        labels = window.clone()
        labels[0, :ctx - n_new] = -100
        with torch.no_grad():
            loss = model(input_ids=window, labels=labels).loss.item()
        total += loss * n_new
        count += n_new
    return math.exp(total / count), count


# -- perplexity and windows ----------------------------------------------------------------------


@pytest.mark.parametrize("arch,stride", [("llama", None), ("qwen2", None), ("llama", 24)])
def test_ppl_matches_transformers(tiny_models, data, arch, stride):
    """llama's tokenizer adds BOS (every window starts with it), qwen2's does not; stride 24 < ctx overlaps."""
    res = evaluate(tiny_models[arch], EvalConfig(data=data, ctx=CTX, stride=stride, max_windows=4), progress=False)
    want, count = direct_ppl(tiny_models[arch], TEXT, CTX, stride, 4)
    assert res.windows == 4 and res.tokens == count
    assert res.ppl == pytest.approx(want, rel=1e-5)
    assert res.ref is None and res.kl_mean is None and res.ln_ppl_se > 0


def test_stride_scores_the_right_tokens(tiny_models, data):
    # (e) first window: ctx - 1 tokens; later windows: the last `stride` tokens.
    res = evaluate(tiny_models["qwen2"], EvalConfig(data=data, ctx=CTX, stride=16, max_windows=5), progress=False)
    assert res.stride == 16 and res.windows == 5 and res.tokens == (CTX - 1) + 4 * 16
    full = evaluate(tiny_models["qwen2"], EvalConfig(data=data, ctx=CTX, max_windows=2), progress=False)
    assert full.stride == CTX and full.tokens == 2 * (CTX - 1)  # no BOS: the window's first token is context


@pytest.mark.parametrize("n_prefix", [0, 1])
@pytest.mark.parametrize("stride", [1, 7, 31, 62, 63])
def test_windows_score_each_token_once(n_prefix, stride):
    ctx, n = 64, 1000
    text = ctx - n_prefix
    windows = plan_windows(n, ctx, stride, n_prefix)
    assert len(windows) == 1 + (n - text) // stride
    scored = []
    for w in windows:
        # logits row r predicts window token r + 1, i.e. stream token start + r + 1 - n_prefix
        scored += [w.start + r + 1 - n_prefix for r in range(w.first_row, ctx - 1)]
    if stride < text:  # overlapping windows tile the stream: every token after the first, exactly once
        assert scored == list(range(1 - n_prefix, scored[-1] + 1))
    assert len(scored) == len(set(scored))
    assert plan_windows(text - 1, ctx, stride, n_prefix) == []
    assert len(plan_windows(n, ctx, stride, n_prefix, max_windows=3)) == 3


def test_q4_k_m_on_the_native_runtime_equals_llama_cpp(ggufs, data):
    # The same quantized file scored by both runtimes: both quantize activations as ggml does, so their
    # perplexities agree far inside the Q4_K_M noise the test below measures.
    ours, ref = (evaluate(ggufs["q4km"], EvalConfig(data=data, ctx=CTX, max_windows=4, backend=b), progress=False)
                 for b in ("native", "llamacpp"))
    assert ours.ppl == pytest.approx(ref.ppl, rel=2e-3)
    assert ours.tokens == ref.tokens
    assert ours.tokenizer.endswith("(edgekit native)") and ref.tokenizer.endswith("(llama.cpp)")


# -- against a reference ---------------------------------------------------------------------------


def test_model_against_itself(tiny_models, data):
    res = evaluate(tiny_models["qwen2"], EvalConfig(data=data, ref=tiny_models["qwen2"], ctx=CTX, max_windows=3),
                   progress=False)
    assert res.kl_max < 1e-9 and res.kl_mean < 1e-9
    assert res.top1 == 1.0
    assert res.delta_ppl == 0.0 and res.ppl == res.ref_ppl


@pytest.mark.parametrize("backend", ["llamacpp", "native"])
def test_gguf_f32_matches_hf(tiny_models, ggufs, data, backend):
    res = evaluate(ggufs["f32"], EvalConfig(data=data, ref=tiny_models["llama"], ctx=CTX, max_windows=4,
                                            backend=backend), progress=False)
    assert res.ppl == pytest.approx(res.ref_ppl, rel=1e-3)
    assert res.kl_mean < 1e-6 and res.kl_max < 1e-4
    assert res.top1 > 0.99
    assert res.tokenizer == str(tiny_models["llama"])  # the reference's HF tokenizer


def test_gguf_q4_k_m_differs(tiny_models, ggufs, data):
    # (d) the metrics can fail: Q4_K_M noise moves the distribution and flips some argmaxes.
    res = evaluate(ggufs["q4km"], EvalConfig(data=data, ref=tiny_models["llama"], ctx=CTX, max_windows=4),
                   progress=False)
    assert res.kl_mean > 1e-3 and res.kl_se > 0
    assert 0 <= res.kl_median <= res.kl_p90 <= res.kl_p99 <= res.kl_max
    assert res.top1 < 1.0 and res.top1_se > 0
    assert res.delta_ppl != 0.0
    assert res.delta_ppl_pct == pytest.approx(100 * res.delta_ppl / res.ref_ppl)
    assert res.ln_ppl_ratio == pytest.approx(math.log(res.ppl / res.ref_ppl), rel=1e-9, abs=1e-12)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["kl_p99"] == res.kl_p99 and d["ref"] == str(tiny_models["llama"])
    report = res.report()
    for needle in ("perplexity", "reference", "ΔPPL", "KL(ref||model)", "median", "p99", "top-1 agreement"):
        assert needle in report


def test_gguf_without_tokenizer_uses_llama_cpp(tiny_models, ggufs, data):
    own = evaluate(ggufs["f32"], EvalConfig(data=data, ctx=CTX, max_windows=2), progress=False)
    hf = evaluate(ggufs["f32"], EvalConfig(data=data, ctx=CTX, max_windows=2, tokenizer=tiny_models["llama"]),
                  progress=False)
    assert own.tokenizer.endswith("(llama.cpp)") and hf.tokenizer == str(tiny_models["llama"])
    assert own.data_tokens == hf.data_tokens and own.ppl == pytest.approx(hf.ppl, rel=1e-9)


# -- data --------------------------------------------------------------------------------------------


def test_data_directory(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    (tmp_path / "b.py").write_text(TEXT[:3000])
    (tmp_path / "a.txt").write_text(TEXT[3000:6000])
    (tmp_path / "notes.md").write_text("not data")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    res = evaluate(tiny_models["qwen2"], EvalConfig(data=tmp_path, ctx=CTX, max_windows=1), progress=False)
    assert res.data == [str(tmp_path / "a.txt"), str(tmp_path / "b.py")]
    assert res.skipped_files == [str(tmp_path / "bad.txt")]
    n = len(tok(TEXT[3000:6000], add_special_tokens=False)["input_ids"])
    n += len(tok(TEXT[:3000], add_special_tokens=False)["input_ids"])
    assert res.data_tokens == n + 1  # one EOS between the two documents


# -- errors --------------------------------------------------------------------------------------------


def test_errors(tiny_models, ggufs, data, tmp_path):
    model = tiny_models["llama"]
    (tmp_path / "empty.txt").write_text(" \n\n")
    (tmp_path / "short.txt").write_text("def f(x):\n    return x\n")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "m.bin").write_bytes(b"x")
    cases = [
        ((model, tmp_path / "empty.txt"), {}, "data is empty"),
        ((model, tmp_path / "missing.txt"), {}, "missing.txt: data not found"),
        ((model, tmp_path / "nothing"), {}, "no .txt or .py files"),
        ((model, tmp_path / "short.txt"), {"ctx": CTX}, "shorter than one window of 64 tokens"),
        ((tmp_path / "nope", data), {}, "nope: model not found"),
        ((tmp_path / "m.bin", data), {}, "unsupported model file"),
        ((tmp_path / "x.pte", data), {}, "x.pte: model not found"),
        ((model, data), {"stride": 0}, "--stride"),
        ((model, data), {"ctx": 1}, "--ctx"),
        # different tokenizers (llama3-style vs qwen2-style), same vocabulary size
        ((model, data), {"ref": tiny_models["qwen2"]}, "tokenizer mismatch"),
        ((ggufs["f32"], data), {"ref": tiny_models["qwen2"]}, "tokenizer mismatch"),
    ]
    for args, kw, needle in cases:
        with pytest.raises(EdgekitError) as e:
            evaluate(args[0], EvalConfig(data=args[1], **kw), progress=False)
        msg = str(e.value)
        assert needle in msg and "\n" not in msg, msg
    with pytest.raises(EdgekitError, match=r"the text is \d+ tokens"):
        evaluate(model, EvalConfig(data=tmp_path / "short.txt", ctx=CTX), progress=False)
    with pytest.raises(EdgekitError) as e:
        evaluate(ggufs["f32"], EvalConfig(data=data, ref=tiny_models["qwen2"]), progress=False)
    assert str(ggufs["f32"]) in str(e.value) and str(tiny_models["qwen2"]) in str(e.value)
    (tmp_path / "x.pte").write_bytes(b"x" * 64)  # not a program: the ExecuTorch runtime refuses it
    with pytest.raises(EdgekitError, match="x.pte: ExecuTorch cannot load it"):
        evaluate(tmp_path / "x.pte", EvalConfig(data=data, tokenizer=model), progress=False)


# -- the command line (in-process: the real parser and error handling) ---------------------------------


@pytest.fixture
def cli_main():
    from edgekit.cli import main

    return main


def test_cli_json(cli_main, tiny_models, ggufs, data, capsys):
    rc = cli_main(["eval", str(ggufs["q4km"]), "--ref", str(tiny_models["llama"]), "--data", str(data),
                   "--ctx", str(CTX), "--max-windows", "2", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    assert d["windows"] == 2 and d["kl_mean"] > 0 and 0 < d["top1"] < 1


def test_cli_errors(cli_main, tiny_models, data, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("x = 1\n")
    for argv, needle in [
        ([str(tiny_models["llama"]), "--data", str(tmp_path / "empty.txt")], "data is empty"),
        ([str(tiny_models["llama"]), "--data", str(tmp_path / "short.txt")], "shorter than one window"),
        ([str(tiny_models["llama"]), "--ref", str(tiny_models["qwen2"]), "--data", str(data)], "tokenizer mismatch"),
    ]:
        assert cli_main(["eval", *argv]) == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("edgekit: error:") and needle in err[0], err


@pytest.mark.slow
def test_pte_perplexity_matches_hf(tiny_models, tmp_path):
    """An fp32 .pte run by the ExecuTorch runtime scores like its HF original (and finds its own tokenizer)."""
    from edgekit.converters.pte.export import PteConfig, export_pte

    src = tiny_models["qwen3"]
    pte = tmp_path / "m.pte"
    export_pte(src, pte, PteConfig(quant="fp32", max_seq_len=64))
    data = tmp_path / "d.txt"
    data.write_text(TEXT)
    r = evaluate(pte, EvalConfig(data=data, ref=src, ctx=32, max_windows=3), progress=False)
    assert abs(r.ppl / r.ref_ppl - 1) < 1e-4 and r.kl_mean < 1e-6 and r.top1 == 1.0
    alone = evaluate(pte, EvalConfig(data=data, ctx=32, max_windows=3),
                     progress=False)  # tokenizer.json beside the .pte
    assert abs(alone.ppl - r.ppl) < 1e-6 * r.ppl
