"""Tokenizer conversion: llama.cpp, reading our GGUF metadata, must tokenize exactly like Hugging Face.

Each style's tokenizer is trained offline (edgekit.testing.tokenizers), written into a GGUF with a
"llama" architecture name and the tokenizer only, and loaded by llama.cpp vocabulary-only.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from edgekit.converters.gguf.tokenizer import TokenizerInfo, add_tokenizer
from edgekit.errors import EdgekitError
from edgekit.runtime.backends.llamacpp import Vocab
from edgekit.testing.tokenizers import STYLES, build_tokenizer

VOCAB = 512

# Texts that stress the pre-tokenizer regexes, byte fallback and whitespace handling.
TEXTS = {
    "empty": "",
    "plain": "Hello world, this is a test.",
    "python": (
        "def fib(n: int) -> int:\n"
        '    """Return the n-th Fibonacci number."""\n'
        "    if n < 2:\n"
        "        return n\n"
        "    return fib(n - 1) + fib(n - 2)\n\n\n"
        "class A:\n\tdef f(self):\n\t\tpass  # tab-indented\n"
    ),
    "cjk": "日本語のテキストです。中文文本测试，你好世界！한국어 텍스트",
    "emoji": "🙂🚀 emoji 👍🏽 flags 🇫🇷 family 👨‍👩‍👧 end",
    "whitespace": "  two leading\t\ttabs\n\n\nnewlines   \n \n\t \r\n trailing   ",
    "digits": "1 12 123 1234 12345 3.14159 2024-11-22 0x1F 1,000,000 ٣٤٥",
    "accents": "Déjà vu, naïve façade, Ærøskøbing, Zażółć gęślą jaźń, São Paulo, Ελληνικά",
    "decomposed": "Cafe\u0301 nai\u0308ve a\u030a",  # combining accents (not NFC)
    "contractions": "I'm sure they'll say it's OK; we've DON'T He'S I'D",
    "mixed": "x=1;y=2\r\nprint(f'{x+y:>10}')  # sum\n<div class=\"a\">&amp;</div>",
}

# Special tokens embedded in text, per style (HF splits added tokens out; llama.cpp with special=True).
SPECIAL_TEXTS = {
    "gpt2": "first doc<|endoftext|>second doc <|endoftext|> third",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant",
    "qwen2": "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "spm": "[INST] Hi there! [/INST] Hello.</s>",
    "phi3": "<|user|>\nHi there!<|end|>\n<|assistant|>\nHello.<|end|>",
}

# Where llama.cpp cannot do what transformers does. transformers 5's LlamaTokenizer pre-tokenizes
# with Metaspace(prepend_scheme="first"): no "▁" prefix when the text already starts with a space,
# nor after a special token. llama.cpp's SPM tokenizer, like sentencepiece itself, always prefixes
# the text and every fragment that follows a special token; no GGUF key changes that.
KNOWN_DIFFERENCES = {
    ("spm", "whitespace"): "HF adds no '▁' prefix to text that starts with a space; llama.cpp does",
    ("spm", "special_mid"): "HF adds no '▁' prefix after a special token; llama.cpp does",
    # Qwen2's tokenizer.json NFC-normalizes; llama.cpp applies no normalizer (same for real Qwen2).
    ("qwen2", "decomposed"): "HF composes accents (NFC normalizer); llama.cpp keeps the raw code points",
}


def write_vocab_gguf(path: Path, model_dir: Path, vocab_size: int = VOCAB) -> TokenizerInfo:
    """A GGUF holding only an architecture name and our tokenizer. llama.cpp's vocab_only load
    checks the architecture is one it knows, then skips the hyperparameters and the tensors
    (measured with llama-cpp-python 0.3.36), so neither needs to be present."""
    writer = gguf.GGUFWriter(str(path), "llama")
    # llama.cpp applies some tokenizer rules by model name (Phi-3's rstrip of chat tokens), and a
    # conversion names the model after its directory: do the same here.
    writer.add_name(model_dir.name)
    info = add_tokenizer(writer, model_dir, vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return info


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for style in STYLES:
        build_tokenizer(root / style, style, VOCAB)
        out[style] = root / style
    return out


@pytest.fixture(scope="module")
def pair(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """style -> (HF tokenizer, llama.cpp vocab-only model, TokenizerInfo), loaded once per style."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("gguf")
    loaded = {}

    def get(style: str):
        if style not in loaded:
            path = root / f"{style}.gguf"
            info = write_vocab_gguf(path, built[style])
            llm = Vocab.open(path)
            loaded[style] = (AutoTokenizer.from_pretrained(built[style]), llm, info)
        return loaded[style]

    return get


# -- builder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_build_loads_in_transformers(built: dict[str, Path], style: str) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    d = built[style]
    config = json.loads((d / "tokenizer_config.json").read_text())
    assert config["chat_template"]
    hf = AutoTokenizer.from_pretrained(d)
    assert len(hf) == VOCAB
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in TEXTS.values():
        assert hf.encode(text, add_special_tokens=True) == raw.encode(text).ids
    if style == "spm":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
        for text in TEXTS.values():
            # transformers' Metaspace skips the dummy prefix when the text already starts with a
            # space; sentencepiece (and llama.cpp) always add it.
            if not text[:1].isspace():
                assert hf.encode(text, add_special_tokens=False) == sp.encode(text), text
    rendered = hf.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "Hi" in rendered


def test_build_is_deterministic(tmp_path: Path) -> None:
    build_tokenizer(tmp_path / "a", "qwen2", 300)
    build_tokenizer(tmp_path / "b", "qwen2", 300)
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()


# -- llama.cpp == HF -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", [*TEXTS, "special", "special_mid"])
def test_llama_cpp_tokenizes_like_hf(pair, request: pytest.FixtureRequest, style: str, name: str) -> None:
    if (style, name) in KNOWN_DIFFERENCES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_DIFFERENCES[style, name], strict=True))
    hf, llm, info = pair(style)
    if name == "special":
        text = SPECIAL_TEXTS[style]
    elif name == "special_mid":
        text = f"{SPECIAL_TEXTS[style]} and more text after it"
    else:
        text = TEXTS[name]
    expected = hf.encode(text, add_special_tokens=True)
    # add_special=True asks for the model's own special tokens (llama.cpp adds BOS only if add_bos_token).
    got = llm.tokenize(text, add_special=True)
    assert got == expected


@pytest.mark.parametrize("style", STYLES)
def test_detokenize_round_trip(pair, style: str) -> None:
    hf, llm, info = pair(style)
    checked = 0
    for name, text in TEXTS.items():
        # Text tokens only: llama.cpp then strips SentencePiece's "▁" prefix, as HF's decoder does.
        ids = hf.encode(text, add_special_tokens=False)
        if hf.decode(ids, skip_special_tokens=True) != text:
            continue  # HF itself is lossy here: nothing to compare against
        assert llm.detokenize(ids) == text, name
        checked += 1
    assert checked >= len(TEXTS) - 2


@pytest.mark.parametrize("style", STYLES)
def test_metadata(pair, style: str) -> None:
    hf, llm, info = pair(style)
    assert llm.n_vocab == VOCAB
    assert info.add_bos == (style in ("llama3", "spm"))
    assert info.model == ("llama" if style == "spm" else "gpt2")
    assert info.pre == {"gpt2": "gpt-2", "llama3": "llama-bpe", "qwen2": "qwen2", "spm": None, "phi3": "gpt-2"}[style]
    assert info.has_chat_template
    if info.bos_id is not None:
        assert info.bos_id == hf.convert_tokens_to_ids(hf.bos_token)
    assert info.eos_id == hf.convert_tokens_to_ids(hf.eos_token)
    assert llm.eos == info.eos_id
    if info.add_bos:
        assert llm.bos == info.bos_id


@pytest.mark.parametrize("style", STYLES)
def test_random_texts_match_hf(style: str, tmp_path: Path) -> None:
    """Seeded random stdlib lines and character soup against a larger (2048-token) vocabulary,
    where many more merges apply. Texts avoid the known differences (no leading space for the
    SentencePiece style, no combining marks)."""
    import random

    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from edgekit.testing.tokenizers import training_files

    rng = random.Random(1234)
    lines = [ln for f in training_files()[100:110] for ln in f.read_text().splitlines(keepends=True)]
    soup = list(TEXTS["cjk"] + TEXTS["emoji"] + TEXTS["accents"] + TEXTS["digits"]) + list(" \t\n\r") * 6
    texts = ["".join(rng.choice(lines) for _ in range(rng.randint(1, 5))) for _ in range(150)]
    texts += ["".join(rng.choice(soup) for _ in range(rng.randint(1, 40))) for _ in range(150)]
    if style == "spm":
        texts = [t.lstrip() for t in texts]

    build_tokenizer(tmp_path / "tok", style, 2048)
    path = tmp_path / "tok.gguf"
    write_vocab_gguf(path, tmp_path / "tok", 2048)
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    llm = Vocab.open(path)
    bad = [t for t in texts if llm.tokenize(t, add_special=True) != hf.encode(t)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[0]!r}"


# -- padding and errors --------------------------------------------------------------------------


def test_padding_to_embedding_rows(built: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "padded.gguf"
    info = write_vocab_gguf(path, built["qwen2"], VOCAB + 8)
    assert (info.n_vocab, info.n_tokens) == (VOCAB, VOCAB + 8)
    reader = gguf.GGUFReader(str(path))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    types = reader.fields["tokenizer.ggml.token_type"]
    texts = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    kinds = [int(types.parts[i][0]) for i in types.data]
    assert len(texts) == VOCAB + 8
    assert texts[VOCAB:] == [f"[PAD{i}]" for i in range(VOCAB, VOCAB + 8)]
    assert set(kinds[VOCAB:]) == {gguf.TokenType.UNUSED}
    assert kinds[VOCAB - 1] == gguf.TokenType.CONTROL  # <|im_end|>
    pytest.importorskip("llama_cpp")
    llm = Vocab.open(path)
    assert llm.n_vocab == VOCAB + 8


def test_vocab_larger_than_embedding(built: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgekitError, match="512 tokens but the model's embedding has only 500 rows"):
        write_vocab_gguf(tmp_path / "x.gguf", built["gpt2"], 500)


def test_missing_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EdgekitError, match="no tokenizer.json or tokenizer.model"):
        write_vocab_gguf(tmp_path / "x.gguf", tmp_path)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_unknown_pre_tokenizer_regex(built: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(built["llama3"], tmp_path / "tok")
    data = json.loads((d / "tokenizer.json").read_text())
    split = data["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = split["pattern"]["Regex"].replace(r"\p{N}{1,3}", r"\p{N}{1,4}")
    (d / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match=r"tokenizer\.json: unknown pre-tokenizer regex"):
        write_vocab_gguf(tmp_path / "x.gguf", d)


def test_invalid_json(built: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(built["gpt2"], tmp_path / "tok")
    (d / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(EdgekitError, match=r"tokenizer\.json: invalid JSON"):
        write_vocab_gguf(tmp_path / "x.gguf", d)


def test_unsupported_model_type(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(EdgekitError, match="unsupported tokenizer model type 'WordPiece'"):
        write_vocab_gguf(tmp_path / "x.gguf", tmp_path, 2)


def test_spm_from_tokenizer_json_only(built: dict[str, Path], tmp_path: Path, pair) -> None:
    """Without tokenizer.model the SentencePiece vocab is rebuilt from tokenizer.json's merges."""
    d = _copy(built["spm"], tmp_path / "tok")
    (d / "tokenizer.model").unlink()
    hf, _, _ = pair("spm")

    path = tmp_path / "json-only.gguf"
    info = write_vocab_gguf(path, d)
    assert (info.model, info.add_bos, info.bos_id) == ("llama", True, 1)
    llm = Vocab.open(path)
    for name, text in TEXTS.items():
        if ("spm", name) not in KNOWN_DIFFERENCES:
            assert llm.tokenize(text, add_special=True) == hf.encode(text), text


def test_digits_then_byte_level_is_smollm(built: dict[str, Path], tmp_path: Path) -> None:
    """SmolLM/StarCoder layout: Digits(individual_digits) before a regex-splitting ByteLevel."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    d = _copy(built["gpt2"], tmp_path / "tok")
    data = json.loads((d / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            data["pre_tokenizer"],
        ],
    }
    (d / "tokenizer.json").write_text(json.dumps(data))
    path = tmp_path / "smollm.gguf"
    assert write_vocab_gguf(path, d).pre == "smollm"
    hf = AutoTokenizer.from_pretrained(d)
    llm = Vocab.open(path)
    for text in TEXTS.values():
        assert llm.tokenize(text, add_special=True) == hf.encode(text), text


def test_add_prefix_space_rejected(built: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(built["gpt2"], tmp_path / "tok")
    data = json.loads((d / "tokenizer.json").read_text())
    data["pre_tokenizer"]["add_prefix_space"] = True
    (d / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match="add_prefix_space=true is not supported"):
        write_vocab_gguf(tmp_path / "x.gguf", d)


def test_unigram_sentencepiece_rejected(tmp_path: Path) -> None:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    words = [f"word{i} token{i % 7} text{i % 13}" for i in range(2000)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words), model_writer=model, model_type="unigram", vocab_size=60, minloglevel=2
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    with pytest.raises(EdgekitError, match=r"tokenizer\.model: unsupported SentencePiece model type UNIGRAM"):
        write_vocab_gguf(tmp_path / "x.gguf", tmp_path, 60)


def test_chat_template_file_and_config_ids(built: dict[str, Path], tmp_path: Path) -> None:
    """chat_template.jinja wins over tokenizer_config.json (as in transformers); config.json's
    bos_token_id fills in a BOS the tokenizer config leaves out (real Qwen2 checkpoints)."""
    d = _copy(built["qwen2"], tmp_path / "tok")
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    (d / "config.json").write_text(json.dumps({"bos_token_id": VOCAB - 3, "eos_token_id": VOCAB - 3}))
    path = tmp_path / "x.gguf"
    info = write_vocab_gguf(path, d)
    assert (info.bos_id, info.eos_id, info.add_bos) == (VOCAB - 3, VOCAB - 1, False)
    field = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == "{{ messages[0]['content'] }}"
