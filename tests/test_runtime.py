"""edgekit.load and the Model interface on both backends, against transformers and against themselves."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PROMPT, PTE_CONTEXT, RUNTIME_ARCHS, prompt_tokens

import edgekit
from edgekit.errors import EdgekitError
from edgekit.runtime import GREEDY, SamplingParams

N_NEW = 24


def _eager_greedy(model_dir, tokens: list[int], n: int, stops: set[int]) -> list[int]:
    """transformers' greedy continuation by full recomputation, cut before the first stop token."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seq = list(tokens)
    with torch.no_grad():
        for _ in range(n):
            t = int(hf(torch.tensor([seq])).logits[0, -1].argmax())
            if t in stops:
                break
            seq.append(t)
    return seq[len(tokens):]


@pytest.fixture(scope="module")
def models(f32_ggufs, llama_pte):
    """One loaded model per backend (llama), F32 KV cache on llama.cpp and the native runtime."""
    ms = {"gguf": edgekit.load(f32_ggufs["llama"], kv_f32=True, threads=1), "pte": edgekit.load(llama_pte),
          "native": edgekit.load(f32_ggufs["llama"], backend="native", kv_f32=True, threads=1)}
    yield ms
    for m in ms.values():
        m.close()


@pytest.mark.parametrize("backend", ["llamacpp", "native"])
@pytest.mark.parametrize("arch", RUNTIME_ARCHS)
def test_gguf_greedy_equals_transformers(arch, backend, f32_ggufs, tiny_models):
    ids = prompt_tokens(tiny_models[arch])
    with edgekit.load(f32_ggufs[arch], backend=backend, kv_f32=True, threads=1) as m:
        assert m.tokenize(PROMPT, add_special=True) == ids  # llama.cpp tokenizes as HF does
        got = list(m.generate_tokens(ids, SamplingParams(temperature=0, max_tokens=N_NEW)))
        ref = _eager_greedy(tiny_models[arch], ids, N_NEW, m.stop_ids)
    assert len(ref) >= 8, "the reference stopped too early to compare much"
    assert got == ref


def test_pte_greedy_equals_transformers(models, tiny_models):
    ids = prompt_tokens(tiny_models["llama"])
    m = models["pte"]
    assert m.tokenize(PROMPT, add_special=True) == ids
    got = list(m.generate_tokens(ids, SamplingParams(temperature=0, max_tokens=N_NEW)))
    assert got == _eager_greedy(tiny_models["llama"], ids, N_NEW, m.stop_ids)


@pytest.mark.parametrize("backend", ["gguf", "native", "pte"])
def test_prefix_reuse_gives_the_logits_of_a_fresh_run(backend, models, tiny_models):
    m = models[backend]
    base = prompt_tokens(tiny_models["llama"])[:40]
    a, b = base[:30] + base[10:20], base[:10] + base[25:40] + base[:15]  # share 30 and 10 leading tokens
    m.reset()
    fresh = m.prefill(a)
    m.prefill(base)                        # 40 tokens: positions 30..39 now hold base's tokens
    m.prefill(b)                           # back to position 10, then 30 more: stale entries beyond must not leak
    assert m.stats.reused_tokens == 10
    reused = m.prefill(a)
    assert m.stats.reused_tokens == 10     # a and b share their first 10 tokens
    np.testing.assert_allclose(reused, fresh, atol=1e-4, rtol=0)
    m.prefill(a[:35])
    assert m.stats.reused_tokens == 34     # everything but the last token (whose logits are needed)


@pytest.mark.parametrize("backend", ["gguf", "native", "pte"])
def test_seed_gives_the_same_text_and_stream_equals_whole(backend, models):
    m = models[backend]
    kw = dict(max_tokens=30, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    one = m.generate("def fib(n):", seed=11, **kw)
    assert m.generate("def fib(n):", seed=11, **kw) == one
    assert "".join(m.generate("def fib(n):", seed=11, stream=True, **kw)) == one
    assert m.generate("def fib(n):", seed=12, **kw) != one
    assert one


@pytest.mark.parametrize("backend", ["gguf", "native", "pte"])
def test_chat_prompt_equals_transformers_tokens(backend, models, tiny_models):
    from transformers import AutoTokenizer

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Größe von 日本?"}]
    ref = AutoTokenizer.from_pretrained(tiny_models["llama"]).apply_chat_template(
        msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert models[backend].chat_prompt(msgs) == list(ref)
    assert models[backend].stop_strings == ["<|eot_id|>"]
    eot = AutoTokenizer.from_pretrained(tiny_models["llama"]).convert_tokens_to_ids("<|eot_id|>")
    assert eot in models[backend].stop_ids


def test_chat_multi_turn_reuses_the_cache(models):
    m = models["gguf"]
    msgs = [{"role": "user", "content": "hello"}]
    answer = m.chat(msgs, seed=1, max_tokens=12, ignore_eos=True)
    assert m.stats.generated_tokens == 12 and m.stats.finish_reason == "length"
    first_prompt = m.stats.prompt_tokens
    m.chat([*msgs, {"role": "assistant", "content": answer}, {"role": "user", "content": "more"}], seed=1,
           max_tokens=4)
    assert m.stats.reused_tokens >= first_prompt  # the first turn was not recomputed


def test_stop_token_ends_generation(models):
    m = models["gguf"]
    first = next(m.generate_tokens(m.tokenize("x = 1", add_special=True), GREEDY))
    saved = set(m.stop_ids)
    try:
        m.stop_ids.add(first)
        assert m.generate("x = 1", temperature=0) == ""
        assert m.stats.finish_reason == "stop" and m.stats.generated_tokens == 1
        other = m.generate("x = 1", temperature=0, max_tokens=5, ignore_eos=True)  # the stop token is banned
        assert other and m.stats.generated_tokens == 5
    finally:
        m.stop_ids.clear()
        m.stop_ids.update(saved)


def test_context_limit_is_respected(models):
    m = models["pte"]
    ids = list(range(10, 10 + PTE_CONTEXT - 5))
    toks = list(m.generate_tokens(ids, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)))
    assert len(toks) == 6 and m.stats.finish_reason == "length"  # 5 free positions + the last, never fed back
    with pytest.raises(EdgekitError, match="does not fit"):
        m.prefill(list(range(PTE_CONTEXT + 1)))


def test_load_errors_name_the_file(tmp_path, f32_ggufs):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    (tmp_path / "empty").mkdir()
    for path, needle in ((bad, "not a GGUF file"), (tmp_path / "none.gguf", "no such file"),
                         (tmp_path / "empty", "not an edgekit bundle")):
        with pytest.raises(EdgekitError, match=needle) as e:
            edgekit.load(path)
        assert str(path) in str(e.value)
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(f32_ggufs["llama"].read_bytes())
    with edgekit.load(renamed, threads=1) as m:  # no suffix: the magic bytes decide
        assert m.format == "gguf"
    with pytest.raises(EdgekitError, match="not a GGUF file") as e:  # the native loader's checks come first too
        edgekit.load(bad, backend="native")
    with pytest.raises(EdgekitError, match="unknown backend 'mlc'"):
        edgekit.load(f32_ggufs["llama"], backend="mlc")


@pytest.mark.parametrize("backend", ["gguf", "native", "pte"])
def test_streamed_text_never_splits_a_character(backend, models):
    from edgekit.runtime.detokenize import TextStream

    m = models[backend]
    text = "Größe 日本語のテキスト 🙂🚀🇫🇷 façade"
    ids = m.tokenize(text)
    assert len(ids) > len(text) // 3  # multi-byte characters are split over several tokens here
    s = TextStream(m.detokenize)
    pieces = [s.push(t) for t in ids] + [s.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_base_model_without_template_gets_the_plain_transcript(tiny_models, tmp_path):
    import json
    import shutil

    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

    src = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], src)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    (src / "chat_template.jinja").unlink(missing_ok=True)
    out = tmp_path / "base.gguf"
    write_gguf(src, out, GGUFConfig(quant="f32"), progress=False)
    with edgekit.load(out, threads=1) as m:
        assert m.template.is_plain and m.stop_strings == ["\nUser:"] and m.info()["chat_template"] is None
        ids = m.chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        assert ids == m.tokenize("Be brief.\n\nUser: hi\nAssistant:", add_special=True)
        assert ids[0] == m.tokenize("", add_special=True)[0]  # BOS, which a plain transcript does not write itself
        assert isinstance(m.chat([{"role": "user", "content": "hi"}], max_tokens=8, seed=0), str)
