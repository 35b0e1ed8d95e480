"""Chat templates rendered by edgekit equal transformers' apply_chat_template; streaming detokenization."""

from __future__ import annotations

import json

import pytest
from conftest import ARCHS, PROMPT

from edgekit.errors import EdgekitError
from edgekit.runtime.chat_template import ChatTemplate
from edgekit.runtime.detokenize import TextStream

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hi there 日本 🙂 "},
    {"role": "assistant", "content": "Hello!\nHow can I help?"},
    {"role": "user", "content": "Write fib(n)."},
]

# Exercises what transformers adds to jinja: raise_exception, tojson without HTML escaping, loop controls,
# namespace, trim_blocks/lstrip_blocks.
FEATURES_TEMPLATE = """
{%- set ns = namespace(n=0) -%}
{% for m in messages %}
    {% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}
    {% if m['content'] == 'skip' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
[{{ ns.n }}] {{ m | tojson }}
{% endfor %}
{% if add_generation_prompt %}{{ bos_token }}>>{% endif %}
"""


def _hf_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _ours(model_dir) -> ChatTemplate:
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    return ChatTemplate(cfg["chat_template"], bos_token=cfg.get("bos_token"), eos_token=cfg.get("eos_token"))


@pytest.mark.parametrize("arch", ARCHS)
def test_render_equals_transformers(arch, tiny_models):
    tok, ours = _hf_tokenizer(tiny_models[arch]), _ours(tiny_models[arch])
    for msgs, gen in ((CONVERSATION, True), (CONVERSATION[1:3], False), (CONVERSATION[:2], True)):
        ref = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert ours.render(msgs, add_generation_prompt=gen) == ref


def test_template_features_equal_transformers(tiny_models):
    tok = _hf_tokenizer(tiny_models["llama"])
    msgs = [{"role": "user", "content": "<b>&'\"日本"}, {"role": "user", "content": "skip"},
            {"role": "assistant", "content": "ok"}]
    ref = tok.apply_chat_template(msgs, chat_template=FEATURES_TEMPLATE, tokenize=False, add_generation_prompt=True)
    got = ChatTemplate(FEATURES_TEMPLATE, bos_token=tok.bos_token).render(msgs)
    assert got == ref
    assert "<b>&" in got and "[2]" in got and "[3]" not in got
    with pytest.raises(EdgekitError, match="no tools here"):
        ChatTemplate(FEATURES_TEMPLATE).render([{"role": "tool", "content": "x"}])


def test_template_is_sandboxed():
    with pytest.raises(EdgekitError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render(CONVERSATION)


def test_stop_strings_from_templates(tiny_models):
    expected = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "phi3": "<|end|>", "mistral": "</s>"}
    for arch, stop in expected.items():
        assert _ours(tiny_models[arch]).stop_strings() == [stop]
    plain = ChatTemplate(None)
    assert plain.is_plain and plain.stop_strings() == ["\nUser:"]
    assert plain.render([{"role": "user", "content": "hi"}]).endswith("User: hi\nAssistant:")


# -- streaming detokenization ------------------------------------------------------------------------------


def _bytes_detok(pieces: dict[int, bytes]):
    return lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_stream_waits_for_whole_characters():
    smile = "🙂".encode()  # 4 bytes, one token each
    pieces = {0: b"a", 1: smile[:1], 2: smile[1:2], 3: smile[2:3], 4: smile[3:], 5: b"b"}
    s = TextStream(_bytes_detok(pieces))
    out = [s.push(t) for t in range(6)]
    assert out == ["a", "", "", "", "🙂", "b"]
    s = TextStream(_bytes_detok(pieces))
    assert [s.push(0), s.push(1), s.finish()] == ["a", "", "\ufffd"]  # cut off: shown as a replacement


def test_stream_holds_back_and_cuts_at_stop_strings():
    pieces = {i: t.encode() for i, t in enumerate(["Hi", " the", "re<|", "im", "_end|>", "more"])}
    s = TextStream(_bytes_detok(pieces), stop=["<|im_end|>"])
    out = [s.push(t) for t in range(6)]
    assert "".join(out) == "Hi there" and out[2] == "re" and s.stopped  # "<|" held until it is a stop
    s = TextStream(_bytes_detok(pieces), stop=["<|x"])
    assert "".join([s.push(t) for t in range(6)]) + s.finish() == "Hi there<|im_end|>more" and not s.stopped


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # byte-level BPE; SentencePiece with byte fallback
def test_stream_of_real_tokens_equals_whole_decode(arch, tiny_models):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_models[arch] / "tokenizer.json"))
    ids = tok.encode(PROMPT + " 🙂🚀 Größe", add_special_tokens=False).ids

    def detok(x):
        return tok.decode(list(x), skip_special_tokens=True)

    s = TextStream(detok)
    out = [s.push(t) for t in ids] + [s.finish()]
    assert "".join(out) == detok(ids)
    assert not any("\ufffd" in p for p in out)
    assert sum(1 for p in out if p) > len(ids) // 3  # it really streams
