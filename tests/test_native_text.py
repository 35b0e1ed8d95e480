"""libedgekit's text side against its references: the tokenizer against llama.cpp's own (llama-cpp-python, on
vocabularies edgekit converts), the sampler against edgekit's Python sampler, chat templates against their
Jinja rendering (edgekit.runtime.chat_template). The C functions are reached through the vocabulary's
test entry points (ek_vocab_new from the arrays of a GGUF header, read here with edgekit.io.gguf_reader)."""

from __future__ import annotations

import ctypes
import random
from ctypes import POINTER, c_char_p, c_float, c_int, c_int32, c_size_t, c_uint32, c_uint64, c_void_p
from pathlib import Path

import numpy as np
import pytest

from edgekit.io.gguf_reader import read_header
from edgekit.native import lib
from edgekit.runtime.chat_template import ChatTemplate
from edgekit.runtime.sampling import Sampler, SamplingParams
from edgekit.testing.tokenizers import STYLES, build_tokenizer

EK_OK, EK_ERR_INVALID, EK_ERR_FORMAT, EK_ERR_UNSUPPORTED, EK_ERR_BUFFER = 0, -1, -3, -4, -6
VOCAB = 512
TEMPLATES = Path(__file__).parent / "chat_templates"


class VocabParams(ctypes.Structure):
    _fields_ = [("n_tokens", c_int32), ("tokens", POINTER(c_char_p)), ("token_lens", POINTER(c_uint32)),
                ("scores", POINTER(c_float)), ("types", POINTER(c_int32)), ("n_merges", c_int32),
                ("merges", POINTER(c_char_p)), ("merge_lens", POINTER(c_uint32)), ("model", c_char_p),
                ("pre", c_char_p), ("name", c_char_p), ("chat_template", c_char_p), ("bos", c_int32),
                ("eos", c_int32), ("eot", c_int32), ("unk", c_int32), ("add_bos", c_int32), ("add_eos", c_int32),
                ("add_space_prefix", c_int32)]


class Sampling(ctypes.Structure):
    _fields_ = [("temperature", c_float), ("top_k", c_int32), ("top_p", c_float), ("min_p", c_float),
                ("repeat_penalty", c_float), ("repeat_last_n", c_int32), ("seed", c_uint64),
                ("max_tokens", c_int32), ("ignore_eos", c_int32)]


class Message(ctypes.Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


def own_lib() -> ctypes.CDLL:
    """libedgekit through a CDLL object of this test's own: the argtypes set here must not leak into the one
    edgekit.native shares with the package's bindings (which declare their own Structure types)."""
    return ctypes.CDLL(lib()._name)


def _c() -> ctypes.CDLL:
    c = own_lib()
    c.ek_vocab_new.argtypes = [POINTER(VocabParams), POINTER(c_void_p)]
    c.ek_vocab_free.argtypes = [c_void_p]
    c.ek_vocab_tokenize.argtypes = [c_void_p, c_char_p, c_size_t, c_int, c_int, POINTER(c_int32), c_int32,
                                    POINTER(c_int32)]
    c.ek_vocab_token_to_piece.argtypes = [c_void_p, c_int32, c_int, c_char_p, c_int32, POINTER(c_int32)]
    c.ek_vocab_is_special.argtypes = [c_void_p, c_int32]
    c.ek_vocab_is_eog.argtypes = [c_void_p, c_int32]
    c.ek_vocab_chat_format.argtypes = [c_void_p, POINTER(Message), c_size_t, c_int, c_char_p, c_size_t,
                                       POINTER(c_size_t)]
    c.ek_last_error.restype = c_char_p
    c.ek_sampler_new.argtypes = [POINTER(Sampling), POINTER(c_void_p)]
    c.ek_sampler_free.argtypes = [c_void_p]
    c.ek_sampler_sample.argtypes = [c_void_p, POINTER(c_float), c_int32, POINTER(c_int32), c_int32]
    c.ek_sampler_sample.restype = c_int32
    c.ek_sampling_default.restype = Sampling
    return c


class NativeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class NativeVocab:
    """An ek_vocab built from arrays (as the loader builds it from a GGUF)."""

    def __init__(self, tokens: list[bytes], *, model: str = "gpt2", pre: str | None = "gpt-2",
                 types: list[int] | None = None, scores: list[float] | None = None, merges: list[bytes] = (),
                 name: str = "", template: str | None = None, bos: int = -1, eos: int = -1, eot: int = -1,
                 unk: int = -1, add_bos: int = -1, add_eos: int = -1, add_space_prefix: int = -1) -> None:
        self.c = _c()
        n, m = len(tokens), len(merges)
        p = VocabParams(n, (c_char_p * n)(*tokens), (c_uint32 * n)(*map(len, tokens)),
                        (c_float * n)(*scores) if scores is not None else None,
                        (c_int32 * n)(*types) if types is not None else None, m, (c_char_p * m)(*merges),
                        (c_uint32 * m)(*map(len, merges)), model.encode(), pre.encode() if pre else None,
                        name.encode(), template.encode() if template is not None else None, bos, eos, eot, unk,
                        add_bos, add_eos, add_space_prefix)
        self.handle = c_void_p()
        self._check(self.c.ek_vocab_new(ctypes.byref(p), ctypes.byref(self.handle)))

    def _check(self, rc: int) -> None:
        if rc != EK_OK:
            raise NativeError(rc, self.c.ek_last_error().decode())

    @classmethod
    def from_gguf(cls, path: Path) -> NativeVocab:
        h = read_header(path)
        g = h.get

        def flag(key: str) -> int:
            v = g(key)
            return -1 if v is None else int(bool(v))

        return cls([t.encode() for t in g("tokenizer.ggml.tokens")], model=g("tokenizer.ggml.model"),
                   pre=g("tokenizer.ggml.pre"), types=g("tokenizer.ggml.token_type"),
                   scores=g("tokenizer.ggml.scores"), merges=[x.encode() for x in g("tokenizer.ggml.merges", [])],
                   name=g("general.name", ""), template=g("tokenizer.chat_template"),
                   bos=g("tokenizer.ggml.bos_token_id", -1), eos=g("tokenizer.ggml.eos_token_id", -1),
                   eot=g("tokenizer.ggml.eot_token_id", -1), unk=g("tokenizer.ggml.unknown_token_id", -1),
                   add_bos=flag("tokenizer.ggml.add_bos_token"), add_eos=flag("tokenizer.ggml.add_eos_token"),
                   add_space_prefix=flag("tokenizer.ggml.add_space_prefix"))

    def tokenize(self, text: bytes, add_special: bool = True, parse_special: bool = True) -> list[int]:
        n = c_int32(len(text) + 4)
        for _ in range(2):  # the second time with the size the first call asked for
            cap = n.value
            out = (c_int32 * cap)()
            rc = self.c.ek_vocab_tokenize(self.handle, text, len(text), add_special, parse_special, out, cap,
                                          ctypes.byref(n))
            if rc != EK_ERR_BUFFER:
                break
        self._check(rc)
        return list(out[:n.value])

    def piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(512)
        n = c_int32()
        self._check(self.c.ek_vocab_token_to_piece(self.handle, token, special, buf, len(buf), ctypes.byref(n)))
        return buf.raw[:n.value]

    def is_special(self, token: int) -> bool:
        return bool(self.c.ek_vocab_is_special(self.handle, token))

    def is_eog(self, token: int) -> bool:
        return bool(self.c.ek_vocab_is_eog(self.handle, token))

    def chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        msgs = (Message * max(1, len(messages)))(*[Message(m["role"].encode(), m["content"].encode())
                                                   for m in messages])
        n = c_size_t()
        buf = ctypes.create_string_buffer(4096)
        self._check(self.c.ek_vocab_chat_format(self.handle, msgs, len(messages), add_generation_prompt, buf,
                                                len(buf), ctypes.byref(n)))
        return buf.raw[:n.value].decode()

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.c.ek_vocab_free(self.handle)


class LlamaVocab:
    """llama.cpp's tokenizer on raw bytes (invalid UTF-8 included), from its C API in llama-cpp-python."""

    def __init__(self, path: Path) -> None:
        from edgekit.runtime.backends.llamacpp import Vocab, llama_cpp

        Vocab.open(path).close()  # one clear error if llama.cpp cannot read the file
        ll = self.ll = llama_cpp()
        mp = ll.llama_model_default_params()
        mp.vocab_only = True
        self.model = ll.llama_model_load_from_file(str(path).encode(), mp)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: bytes, add_special: bool = True, parse_special: bool = True) -> list[int]:
        cap = 4 * len(text) + 8
        buf = (self.ll.llama_token * cap)()
        n = self.ll.llama_tokenize(self.vocab, text, len(text), buf, cap, add_special, parse_special)
        assert n >= 0
        return list(buf[:n])

    def piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(512)
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:max(n, 0)]

    def is_control(self, token: int) -> bool:
        return bool(self.ll.llama_vocab_is_control(self.vocab, token))

    def is_eog(self, token: int) -> bool:
        return bool(self.ll.llama_vocab_is_eog(self.vocab, token))

    def __del__(self) -> None:
        if getattr(self, "model", None):
            self.ll.llama_model_free(self.model)


def write_vocab_gguf(path: Path, model_dir: Path, vocab_size: int) -> None:
    """A GGUF with our converter's tokenizer metadata only (llama.cpp loads it vocabulary-only)."""
    import gguf

    from edgekit.converters.gguf.tokenizer import add_tokenizer

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(model_dir.name)  # llama.cpp applies Phi-3's rules by name, as a conversion names it
    add_tokenizer(writer, model_dir, vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def smollm_dir(src: Path, dst: Path) -> Path:
    """SmolLM's layout: Digits(individual_digits) before GPT-2's byte-level regex."""
    import json

    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    data = json.loads((dst / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]]}
    (dst / "tokenizer.json").write_text(json.dumps(data))
    return dst


TOKENIZER_STYLES = (*STYLES, "smollm")


def make_pair(root: Path, style: str, vocab_size: int) -> tuple[NativeVocab, LlamaVocab]:
    d = root / style
    if style == "smollm":
        build_tokenizer(root / "gpt2-src", "gpt2", vocab_size)
        smollm_dir(root / "gpt2-src", d)
    else:
        build_tokenizer(d, style, vocab_size)
    path = root / f"{style}.gguf"
    write_vocab_gguf(path, d, vocab_size)
    return NativeVocab.from_gguf(path), LlamaVocab(path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("llama_cpp")
    root = tmp_path_factory.mktemp("native-text")
    cache: dict[str, tuple[NativeVocab, LlamaVocab]] = {}

    def get(style: str) -> tuple[NativeVocab, LlamaVocab]:
        if style not in cache:
            cache[style] = make_pair(root, style, VOCAB)
        return cache[style]

    return get


# -- tokenizer ----------------------------------------------------------------------------------

TEXTS = [
    "", " ", "  ", "\n", "Hello world, this is a test.", " leading space", "trailing   ",
    "def fib(n: int) -> int:\n    \"\"\"Fib.\"\"\"\n    if n < 2:\n        return n\n\n\n\tx = {'a': [1, 2]}\r\n",
    "日本語のテキストです。中文文本测试，你好世界！한국어 텍스트",
    "🙂🚀 emoji 👍🏽 flags 🇫🇷 family 👨‍👩‍👧 end",
    "  two leading\t\ttabs\n\n\nnewlines   \n \n\t \r\n trailing   ",
    "1 12 123 1234 12345 3.14159 2024-11-22 0x1F 1,000,000 ٣٤٥ ½ Ⅻ",
    "Déjà vu, naïve façade, Ærøskøbing, Zażółć gęślą jaźń, Ελληνικά, Русский",
    "Cafe\u0301 nai\u0308ve",
    "I'm sure they'll say it's OK; we've DON'T He'S I'D 'tis '",
    "x=1;y=2\r\nprint(f'{x+y:>10}')  # sum\n<div class=\"a\">&amp;</div>",
    "\u00a0nbsp\u2003em\u3000ideographic\u2028line\x1cfs\x85nel",
    "a\u200db\ufeffc\u00adz",
]
INVALID = [b"\xff", b"abc\x80def", b"\xe6\x97", b"\xe6\x97\xa5\xe6", b"ok \xc3( \xf0\x9f\x99 end", b"\xed\xa0\x80",
           b"\xc0\xaf \xf8\x88\x80\x80\x80", b"\x00nul\x00"]
SPECIALS = {
    "gpt2": "first doc<|endoftext|>second doc <|endoftext|> third<|endoftext|>",
    "smollm": "doc 12<|endoftext|>34",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant",
    "qwen2": "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n<|im_end|><|im_end|>",
    "spm": "<s>[INST] Hi there! [/INST] Hello.</s> after</s>",
    "phi3": "<|user|>\nHi there!<|end|>\n  <|assistant|>\n\n Hello.<|end|> \t<|endoftext|> x<s> y",
}


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_tokenize_like_llama_cpp(pairs, style: str) -> None:
    ours, ref = pairs(style)
    texts = [t.encode() for t in TEXTS] + INVALID + [SPECIALS[style].encode(), SPECIALS[style].encode() + b" more"]
    checked = 0
    for text in texts:
        for add_special in (True, False):
            for parse_special in (True, False):
                assert ours.tokenize(text, add_special, parse_special) == ref.tokenize(text, add_special,
                                                                                       parse_special), text
                checked += 1
    assert checked == 4 * len(texts)


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_pieces_like_llama_cpp(pairs, style: str) -> None:
    ours, ref = pairs(style)
    for t in range(ref.n_vocab):
        assert ours.piece(t, True) == ref.piece(t, True), t
        assert ours.piece(t, False) == ref.piece(t, False), t
        assert ours.is_special(t) == ref.is_control(t), t
        assert ours.is_eog(t) == ref.is_eog(t), t  # where generation stops


@pytest.mark.slow
@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_random_texts_like_llama_cpp(style: str, tmp_path: Path) -> None:
    """A 2048-token vocabulary (many more merges apply) over seeded random stdlib lines and character soup."""
    pytest.importorskip("llama_cpp")
    from edgekit.testing.tokenizers import training_files

    rng = random.Random(99)
    lines = [ln for f in training_files()[120:130] for ln in f.read_text().splitlines(keepends=True)]
    soup = list("".join(TEXTS[8:14])) + list(" \t\n\r") * 6
    texts = ["".join(rng.choice(lines) for _ in range(rng.randint(1, 6))) for _ in range(150)]
    texts += ["".join(rng.choice(soup) for _ in range(rng.randint(1, 40))) for _ in range(150)]
    ours, ref = make_pair(tmp_path, style, 2048)
    bad = [t for t in texts if ours.tokenize(t.encode()) != ref.tokenize(t.encode())]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[0]!r}"


def test_tokenize_buffer_too_small(pairs) -> None:
    ours, ref = pairs("qwen2")
    c, n = ours.c, c_int32()
    out = (c_int32 * 2)()
    text = b"Hello world, this is a test."
    rc = c.ek_vocab_tokenize(ours.handle, text, len(text), 1, 1, out, 2, ctypes.byref(n))
    assert rc == EK_ERR_BUFFER and n.value == len(ref.tokenize(text))
    assert b"do not fit" in c.ek_last_error()


def test_bad_vocabularies() -> None:
    toks = [b"a", b"b", b"ab"]
    with pytest.raises(NativeError, match="tokenizer.ggml.pre 'default' is not supported"):
        NativeVocab(toks, pre="default")
    with pytest.raises(NativeError, match="tokenizer.ggml.model 'bert' is not supported"):
        NativeVocab(toks, model="bert")
    with pytest.raises(NativeError, match="outside the 3 tokens"):
        NativeVocab(toks, eos=3)
    with pytest.raises(NativeError, match=r"merges\[0\] has no space"):
        NativeVocab(toks, merges=[b"ab"])
    with pytest.raises(NativeError, match=r"token_type\[1\] = 9"):
        NativeVocab(toks, types=[1, 9, 1])
    with pytest.raises(NativeError, match="scores is missing"):
        NativeVocab(toks, model="llama", pre=None)
    with pytest.raises(NativeError, match="add_bos_token is set but there is no bos"):
        NativeVocab(toks, add_bos=1)
    v = NativeVocab(toks, merges=[b"a b"])
    assert v.tokenize(b"abba") == [2, 1, 0]
    with pytest.raises(NativeError, match="outside the vocabulary"):
        v.piece(3)


def test_streamed_text_is_valid_utf8_as_python_decodes() -> None:
    """ek_utf8_sanitize, which ek_generate streams through: ill-formed bytes become U+FFFD exactly as
    bytes.decode(errors="replace") makes them, also when the bytes arrive in two parts."""
    c = own_lib()
    c.ek_utf8_sanitize.restype = c_size_t
    c.ek_utf8_sanitize.argtypes = [c_char_p, c_size_t, c_int, c_char_p, POINTER(c_size_t)]

    def sanitize(b: bytes, flush: bool) -> tuple[int, bytes]:
        out, m = ctypes.create_string_buffer(3 * len(b) + 1), c_size_t()
        k = c.ek_utf8_sanitize(b, len(b), flush, out, ctypes.byref(m))
        return k, out.raw[:m.value]

    rng = random.Random(5)
    alphabet = [0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF1, 0xF4,
                0xF5, 0xFF]
    for _ in range(3000):
        b = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        want = b.decode("utf-8", "replace").encode()
        assert sanitize(b, True) == (len(b), want), b
        cut = rng.randint(0, len(b))
        k, first = sanitize(b[:cut], False)
        assert first + sanitize(b[k:], True)[1] == want, (b, cut)


# -- sampler ------------------------------------------------------------------------------------

SETTINGS = [
    dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3, repeat_last_n=8),
    dict(),  # llama.cpp's defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=1.5, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=0, top_p=0.5, min_p=0.0),
    dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.2),
    dict(temperature=0.9, top_k=50, top_p=0.9, min_p=0.01, repeat_penalty=1.1, repeat_last_n=16),
    dict(temperature=2.0, top_k=1, top_p=1.0, min_p=0.0),
]


def _f32(x: float) -> float:
    return float(np.float32(x))


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_sampler_like_python(setting: int) -> None:
    c = _c()
    sp = SamplingParams(**SETTINGS[setting])
    # The C struct holds float32: give Python the same values.
    sp = SamplingParams(**{**sp.to_dict(), **{k: _f32(getattr(sp, k)) for k in
                                              ("temperature", "top_p", "min_p", "repeat_penalty")}})
    rng = np.random.default_rng(setting)
    for seed in (0, 1, 7, 12345, 2**32 + 5, 2**63 - 1):
        n_vocab = int(rng.integers(2, 3000))
        params = Sampling(sp.temperature, sp.top_k, sp.top_p, sp.min_p, sp.repeat_penalty, sp.repeat_last_n,
                          seed, sp.max_tokens, 0)
        handle = c_void_p()
        assert c.ek_sampler_new(ctypes.byref(params), ctypes.byref(handle)) == EK_OK
        py = Sampler(SamplingParams(**{**sp.to_dict(), "seed": seed}))
        history = list(rng.integers(0, n_vocab, 10))
        ours, theirs = [], []
        for _ in range(30):
            logits = (rng.standard_normal(n_vocab) * rng.uniform(0.5, 4)).astype(np.float32)
            if not 0 < sp.top_k <= 3:
                # Ties at the top. Not where top-k cuts through them: sampling.py's argpartition then keeps an
                # arbitrary one of the tied ids, not the lowest its docstring promises (the C code keeps the lowest).
                logits[rng.integers(0, n_vocab, 3)] = logits.max()
            recent = (c_int32 * len(history))(*history)
            got = c.ek_sampler_sample(handle, logits.ctypes.data_as(POINTER(c_float)), n_vocab, recent,
                                      len(history))
            want = py(logits, history)
            ours.append(got)
            theirs.append(want)
            history.append(want)
        c.ek_sampler_free(handle)
        assert ours == theirs, (seed, SETTINGS[setting])


def test_sampler_defaults_and_errors() -> None:
    c = _c()
    d = c.ek_sampling_default()
    ref = SamplingParams()
    assert (d.top_k, d.repeat_last_n, d.max_tokens) == (ref.top_k, ref.repeat_last_n, ref.max_tokens)
    for k in ("temperature", "top_p", "min_p", "repeat_penalty"):
        assert getattr(d, k) == _f32(getattr(ref, k))
    handle = c_void_p()
    for bad in (dict(temperature=-1.0), dict(top_p=1.5), dict(min_p=1.0), dict(top_k=-2)):
        s = c.ek_sampling_default()
        for k, val in bad.items():
            setattr(s, k, val)
        assert c.ek_sampler_new(ctypes.byref(s), ctypes.byref(handle)) == EK_ERR_INVALID
        assert b"invalid sampling setting" in c.ek_last_error()


# -- chat templates -----------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "  What is 2+2?\n"}, {"role": "assistant", "content": " 4 \n"},
     {"role": "user", "content": "And 3+3? 日本語 🙂"}],
    [{"role": "system", "content": "\tBe kind.\n"}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "Tell me a joke."}],
    [{"role": "user", "content": ""}],
]

# Token texts a template's bos_token / eos_token stand for, per fixture family.
FAMILY_TOKENS = {"chatml": ("<|endoftext|>", "<|im_end|>"), "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
                 "inst": ("<s>", "</s>"), "phi3": ("<s>", "<|endoftext|>"), "zephyr": ("<s>", "</s>")}


def _template_vocab(template: str, family: str) -> NativeVocab:
    bos, eos = FAMILY_TOKENS[family]
    return NativeVocab([b"<unk>", bos.encode(), eos.encode(), b"a"], model="llama", pre=None,
                       scores=[0.0] * 4, types=[2, 3, 3, 1], template=template, bos=1, eos=2, unk=0)


FIXTURES = sorted(TEMPLATES.glob("*.jinja"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_chat_format_like_jinja(path: Path) -> None:
    from edgekit.errors import EdgekitError

    family = path.stem.split("-")[0]
    template = path.read_text()
    bos, eos = FAMILY_TOKENS[family]
    jinja = ChatTemplate(template, bos_token=bos, eos_token=eos)
    ours = _template_vocab(template, family)
    rendered = 0
    for messages in CONVERSATIONS:
        for agp in (True, False):
            try:
                want = jinja.render(messages, add_generation_prompt=agp)
            except EdgekitError:  # the template refuses it (roles must alternate, no system role)
                with pytest.raises(NativeError) as e:
                    ours.chat(messages, agp)
                assert e.value.status == EK_ERR_INVALID
                continue
            assert ours.chat(messages, agp) == want, (messages, agp)
            rendered += 1
    assert rendered >= 4


def test_chat_format_unsupported() -> None:
    for template in ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
                     "<|im_start|>{% for m in messages %}<|im_sep|>{% endfor %}"):
        with pytest.raises(NativeError, match="unsupported chat template") as e:
            _template_vocab(template, "chatml").chat([{"role": "user", "content": "x"}])
        assert e.value.status == EK_ERR_UNSUPPORTED
    with pytest.raises(NativeError, match="no chat template"):
        NativeVocab([b"a"]).chat([{"role": "user", "content": "x"}])


def test_chat_format_buffer_too_small() -> None:
    v = _template_vocab((TEMPLATES / "chatml-plain.jinja").read_text(), "chatml")
    msgs = (Message * 1)(Message(b"user", b"Hello"))
    n, buf = c_size_t(), ctypes.create_string_buffer(8)
    rc = v.c.ek_vocab_chat_format(v.handle, msgs, 1, 1, buf, len(buf), ctypes.byref(n))
    want = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert rc == EK_ERR_BUFFER and n.value == len(want)
    assert v.chat([{"role": "user", "content": "Hello"}]) == want


# -- the C test program, natively and under qemu-user for ARM -----------------------------------

REPO = Path(__file__).resolve().parents[1]


def build_native(build: Path, targets: list[str], toolchain: str | None = None, extra: tuple[str, ...] = ()) -> Path:
    """CMake build of `targets` (with the C tests), cross-compiled where a toolchain file is named."""
    import shutil
    import subprocess
    import sys

    cmake = Path(sys.executable).parent / "cmake"
    cmake = str(cmake) if cmake.exists() else (shutil.which("cmake") or "cmake")
    cfg = [cmake, "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DEDGEKIT_BUILD_TESTS=ON", *extra]
    if toolchain:
        cfg.append(f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'native' / 'cmake' / toolchain}.cmake")
    for cmd in (cfg, [cmake, "--build", str(build), "-j2", "--target", *targets]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return build / "native"


def need_tools(*tools: str) -> None:
    """Cross builds need the cross toolchain and qemu-user (.ci/setup installs them as root); without them the
    test skips and says why (EDGEKIT_REQUIRE_CROSS=1 makes that a failure)."""
    import os
    import shutil

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        why = f"missing {', '.join(missing)} (apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user)"
        if os.environ.get("EDGEKIT_REQUIRE_CROSS") == "1":
            pytest.fail(why)
        pytest.skip(why)


QEMU = {"aarch64-linux-gnu": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
        "arm-linux-gnueabihf": ["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]}




# -- edgekit-run: generate, chat, bench, bandwidth ------------------------------------------------

RUN_PROMPT = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 42 çà 日本"


def edgekit_run() -> Path:
    """The edgekit-run program the build installs beside libedgekit."""
    path = Path(lib()._name).parent / "edgekit-run"
    if not path.exists():
        pytest.skip(f"{path} not built (reinstall edgekit)")
    return path


def run_native(*args: object, input: str | None = None) -> str:
    import subprocess

    r = subprocess.run([str(edgekit_run()), *map(str, args)], capture_output=True, timeout=120,
                       input=input.encode() if input is not None else None)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode("utf-8", errors="replace")


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "phi3"])
def test_edgekit_run_greedy_text_equals_llama_cpp(f32_ggufs, arch: str) -> None:
    """Same tokenizer, forward pass and stop rule: greedy text as llama-cpp-python + edgekit's Python side give."""
    pytest.importorskip("llama_cpp")
    from edgekit.runtime.backends.llamacpp import LlamaCppModel

    with LlamaCppModel(f32_ggufs[arch], n_ctx=256, kv_f32=True, flash_attn=False, threads=2) as llm:
        want = llm.generate(RUN_PROMPT, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=40)
        seeded = llm.generate(RUN_PROMPT, temperature=0.75, seed=3, max_tokens=40)
    args = ("-m", f32_ggufs[arch], "-p", RUN_PROMPT, "-n", 40, "-t", 2, "--ctx", 256, "--kv-f32")
    assert run_native(*args, "--temp", 0) == want
    # the default chain (top-k 40, top-p 0.95, min-p 0.05) and the seeded stream too
    assert run_native(*args, "--temp", 0.75, "--seed", 3) == seeded


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "phi3"])
def test_edgekit_run_chat_equals_python_chat(f32_ggufs, arch: str) -> None:
    """--chat: each stdin line a user turn of one conversation (the template, the cache reuse, the stop tokens)."""
    pytest.importorskip("llama_cpp")
    from edgekit.runtime.backends.llamacpp import LlamaCppModel

    lines = ["Hello there", "And 2+2?"]
    got = run_native("-m", f32_ggufs[arch], "--chat", "-n", 16, "--temp", 0, "-t", 2, "--ctx", 256, "--kv-f32",
                     input="\n".join(lines) + "\n").split("\n")
    with LlamaCppModel(f32_ggufs[arch], n_ctx=256, kv_f32=True, flash_attn=False, threads=2) as llm:
        messages: list[dict] = []
        for i, line in enumerate(lines):
            messages.append({"role": "user", "content": line})
            answer = llm.chat(messages, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=16)
            messages.append({"role": "assistant", "content": answer})
            assert got[i] == answer


def test_edgekit_run_bench_and_bandwidth(f32_ggufs) -> None:
    import json

    r = json.loads(run_native("-m", f32_ggufs["llama"], "--bench", "-p", 32, "-n", 8, "-t", 2, "--json"))
    assert (r["n_prompt"], r["n_gen"]) == (32, 8)
    for key in ("load_ms", "ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes"):
        assert r[key] > 0, key
    bw = json.loads(run_native("--bandwidth", "--mb", 64, "-t", 2, "--json"))
    assert bw["bandwidth_gb_s"] > 0.1 and bw["mib"] == 64


def test_edgekit_run_errors(tmp_path: Path) -> None:
    import subprocess

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 24)
    for args, message in ([("-m", tmp_path / "missing.gguf", "-p", "hi"), "missing.gguf"],
                          [("-m", bad, "-p", "hi"), "x.gguf"], [("--nonsense",), "usage"]):
        r = subprocess.run([str(edgekit_run()), *map(str, args)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr


# qemu CPUs: Pi 3/4 (no sdot), Pi 5 (dotprod), and one with i8mm; 32-bit Pi OS runs the NEON kernels.
STATIC_CPUS = {"aarch64-linux-gnu": ["cortex-a53", "cortex-a76", "max"], "arm-linux-gnueabihf": ["max"]}


@pytest.mark.slow
@pytest.mark.parametrize("toolchain", list(QEMU))
def test_static_edgekit_run_under_qemu(toolchain: str, f32_ggufs, tiny_models, tmp_path: Path) -> None:
    """A fully static edgekit-run for ARM (one file to copy to a Pi) gives the x86 build's text (greedy on F32
    and Q8_0 weights, seeded on F32) at every kernel level qemu offers; the C text test passes there too
    (numpy's stream with 32-bit ARM's emulated 128-bit arithmetic)."""
    import subprocess

    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

    need_tools(f"{toolchain}-gcc", f"{toolchain}-strip", QEMU[toolchain][0])
    out = build_native(tmp_path / "build", ["edgekit-run", "test_text"], toolchain,
                       ("-DEDGEKIT_SHARED=OFF", "-DEDGEKIT_STATIC_RUN=ON"))
    binary = out / "edgekit-run"
    r = subprocess.run([*QEMU[toolchain], str(out / "test_text")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "test_text: ok" in r.stdout, r.stdout + r.stderr
    stripped = tmp_path / "edgekit-run.stripped"
    subprocess.run([f"{toolchain}-strip", "-o", str(stripped), str(binary)], check=True)
    print(f"\n{toolchain}: static edgekit-run {stripped.stat().st_size / 1024:.0f} KiB stripped")
    q8 = tmp_path / "llama-q8_0.gguf"
    write_gguf(tiny_models["llama"], q8, GGUFConfig(quant="q8_0"), progress=False)
    # Seeded runs on F32 weights only: with Q8_0 an activation can round to another int8 on another ISA
    # (float sums in another order), a logit moves by ~1e-3, and a draw near a CDF step may change.
    common = ("-p", RUN_PROMPT, "-n", 24, "-t", 2, "--ctx", 128, "--kv-f32")
    runs = [(f32_ggufs["qwen2"], (*common, "--temp", 0)), (f32_ggufs["qwen2"], (*common, "--temp", 0.8, "--seed", 7)),
            (q8, (*common, "--temp", 0))]
    for model, args in runs:
        want = run_native("-m", model, *args)
        for cpu in STATIC_CPUS[toolchain]:
            # no -L sysroot: a static binary needs none (a dynamic one would not find its loader)
            r = subprocess.run([QEMU[toolchain][0], "-cpu", cpu, str(binary), "-m", str(model), *map(str, args)],
                               capture_output=True, timeout=300)
            assert r.returncode == 0, r.stderr.decode()
            assert r.stdout.decode("utf-8", errors="replace") == want, (cpu, model.name)


class SessionParams(ctypes.Structure):
    _fields_ = [("n_ctx", c_int32), ("n_threads", c_int32), ("n_threads_batch", c_int32), ("n_batch", c_int32),
                ("kv_f32", c_int32)]


class Stats(ctypes.Structure):
    _fields_ = [("load_ms", ctypes.c_double), ("prefill_ms", ctypes.c_double), ("decode_ms", ctypes.c_double),
                ("first_token_ms", ctypes.c_double), ("n_prefill", ctypes.c_int64), ("n_decode", ctypes.c_int64),
                ("n_reused", ctypes.c_int64), ("peak_rss_bytes", ctypes.c_int64)]


PIECE_FN = ctypes.CFUNCTYPE(c_int, ctypes.c_char_p, c_size_t, c_void_p)


def test_generate_api_reuse_stop_and_abort(f32_ggufs) -> None:
    """ek_generate through the C API: the model's vocabulary is the GGUF's, a longer prompt reuses the cached
    prefix, the callback can stop it, ek_abort aborts it and the session stays usable."""
    c = _c()
    c.ek_model_load.argtypes = [c_char_p, c_void_p, POINTER(c_void_p)]
    c.ek_model_free.argtypes = [c_void_p]
    c.ek_session_new.argtypes = [c_void_p, POINTER(SessionParams), POINTER(c_void_p)]
    c.ek_session_free.argtypes = [c_void_p]
    c.ek_session_stats.argtypes = [c_void_p, POINTER(Stats)]
    c.ek_abort.argtypes = [c_void_p]
    c.ek_generate.argtypes = [c_void_p, c_char_p, POINTER(Sampling), PIECE_FN, c_void_p]
    c.ek_tokenize.argtypes = [c_void_p, c_char_p, c_size_t, c_int, c_int, POINTER(c_int32), c_int32, POINTER(c_int32)]
    path = f32_ggufs["qwen2"]
    model, session = c_void_p(), c_void_p()
    assert c.ek_model_load(str(path).encode(), None, ctypes.byref(model)) == EK_OK, c.ek_last_error()
    assert c.ek_session_new(model, ctypes.byref(SessionParams(128, 2, 2, 0, 1)), ctypes.byref(session)) == EK_OK
    try:
        text = RUN_PROMPT.encode()
        ids, n = (c_int32 * 256)(), c_int32()
        assert c.ek_tokenize(model, text, len(text), 1, 1, ids, 256, ctypes.byref(n)) == EK_OK
        assert list(ids[:n.value]) == NativeVocab.from_gguf(path).tokenize(text)

        pieces: list[bytes] = []
        action = {"stop_after": None, "abort_after": None}

        @PIECE_FN
        def on_piece(piece: bytes, length: int, user: int) -> int:
            pieces.append(ctypes.string_at(piece, length))
            if action["abort_after"] == len(pieces):
                c.ek_abort(session)
            return int(action["stop_after"] == len(pieces))

        greedy = Sampling(0.0, 0, 1.0, 0.0, 1.0, 64, 0, 12, 0)

        def generate(prompt: bytes) -> tuple[int, bytes, Stats]:
            pieces.clear()
            rc = c.ek_generate(session, prompt, ctypes.byref(greedy), on_piece, None)
            st = Stats()
            assert c.ek_session_stats(session, ctypes.byref(st)) == EK_OK
            return rc, b"".join(pieces), st

        rc, first, st = generate(text)
        assert rc == EK_OK and first.decode() == run_native("-m", path, "-p", RUN_PROMPT, "-n", 12, "--temp", 0,
                                                             "-t", 2, "--ctx", 128, "--kv-f32")
        assert (st.n_reused, st.n_prefill, st.n_decode) == (0, n.value, 11) and st.first_token_ms > 0
        longer = text + b" and more"
        rc, _, st = generate(longer)
        m = len(NativeVocab.from_gguf(path).tokenize(longer))
        assert rc == EK_OK and st.n_reused >= n.value - 1 and st.n_prefill == m - st.n_reused
        action["stop_after"] = 2
        rc, _, _ = generate(text)
        assert rc == EK_OK and len(pieces) == 2
        action.update(stop_after=None, abort_after=3)
        rc, _, _ = generate(text)
        assert rc == 1 and len(pieces) == 3  # EK_ABORTED
        action["abort_after"] = None
        rc, again, _ = generate(text)
        assert rc == EK_OK and again == first
    finally:
        c.ek_session_free(session)
        c.ek_model_free(model)
