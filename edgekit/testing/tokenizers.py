"""Build small, real tokenizers offline, in the formats that Hugging Face checkpoints ship.

Nothing can be downloaded here, so tests that need a GPT-2, Llama 3, Qwen2 or Llama 2 style
tokenizer train one on local text: the Python standard library's own sources (a fixed, sorted
file list, so a given Python install always gives the same vocabulary) plus a short multilingual
paragraph, so that the vocabularies also hold merges of multi-byte characters.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

# Pre-tokenizer regexes exactly as the original tokenizer.json files spell them (the converter's table).
from edgekit.converters.gguf.tokenizer import LLAMA3_REGEX, QWEN2_REGEX

STYLES = ("gpt2", "llama3", "qwen2", "spm", "phi3")


_TRAIN_BYTES = 2_000_000

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

# Repeated a few times in the corpus so that accented Latin, CJK and emoji get merges of their own.
_MULTILINGUAL = (
    "Déjà vu: l'été à Paris, où naïve façades côtoient les cafés. Über Größe und Straße. "
    "¿Qué pasó en España? Ação, coração, São Paulo. Zażółć gęślą jaźń. Ελληνικά κείμενα. "
    "Русский текст для проверки. 日本語のテキストです。東京と京都。中文文本测试，你好世界。"
    "한국어 텍스트입니다. 🙂🚀🎉 emoji 👍🏽 and flags 🇫🇷. Tabs\tand  double  spaces.\n"
)

_CHAT_TEMPLATES = {
    "gpt2": (
        "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "qwen2": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "spm": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'user' %}[INST] {{ message['content'] | trim }} [/INST]"
        "{% elif message['role'] == 'assistant' %} {{ message['content'] | trim }}{{ eos_token }}"
        "{% else %}{{ message['content'] | trim }}\n\n{% endif %}{% endfor %}"
    ),
}


def training_files() -> list[Path]:
    """The standard library's top-level modules, sorted by name: a fixed corpus on any machine."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def training_lines(limit: int = _TRAIN_BYTES) -> Iterator[str]:
    """Lines of the corpus, about `limit` bytes in all (multilingual paragraph first)."""
    total = 0
    for _ in range(20):
        total += len(_MULTILINGUAL.encode())
        yield _MULTILINGUAL
    for path in training_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines(keepends=True):
            total += len(line.encode())
            yield line
            if total >= limit:
                return


def build_tokenizer(out_dir: Path, style: str, vocab_size: int = 512, lines: Iterable[str] | None = None,
                    add_bos: bool = True) -> None:
    """Train a `style` tokenizer of `vocab_size` tokens into `out_dir` (tokenizer.json and
    tokenizer_config.json; plus tokenizer.model for "spm"), loadable by `AutoTokenizer`.

    add_bos=False drops the BOS that the llama3 style otherwise prepends (for a model trained without one)."""
    if style not in STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; expected one of {', '.join(STYLES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Leftovers of an earlier build would be picked up by transformers (and by the GGUF converter).
    for name in _TOKENIZER_FILES:
        (out_dir / name).unlink(missing_ok=True)
    if style == "spm":
        config = _build_spm(out_dir, vocab_size, lines)
    else:
        config = _build_byte_level(out_dir, style, vocab_size, lines, add_bos)
    template = _CHAT_TEMPLATES[style]
    config["chat_template"] = template if config.get("add_bos_token") else template.replace("{{ bos_token }}", "")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _build_byte_level(out_dir: Path, style: str, vocab_size: int, lines: Iterable[str] | None,
                      add_bos: bool = True) -> dict:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = {
        "gpt2": ["<|endoftext|>"],
        "llama3": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|eot_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
        ],
        "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        # Phi-3's special tokens, on a GPT-2 style byte-level BPE. llama.cpp expects <s>, </s>, <unk>
        # and <|endoftext|> in any model named "phi3", and strips whitespace after the chat tokens,
        # as Phi-3's own tokenizer.json does (rstrip) -- mirrored below.
        "phi3": ["<|endoftext|>", "<s>", "</s>", "<unk>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
    }[style]
    no_rstrip = {"<|endoftext|>", "<s>", "<unk>"}

    tok = Tokenizer(models.BPE())
    if style in ("gpt2", "phi3"):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        regex = LLAMA3_REGEX if style == "llama3" else QWEN2_REGEX
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()  # as Qwen2's own tokenizer.json
    tok.decoder = decoders.ByteLevel()

    # Specials are appended after training, like the real checkpoints (ids after the BPE vocab).
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines if lines is not None else training_lines(), trainer=trainer)
    if tok.get_vocab_size() + len(specials) != vocab_size:
        raise ValueError(f"corpus too small for a {vocab_size}-token {style} vocabulary")
    if style == "phi3":
        tok.add_special_tokens([AddedToken(t, special=True, rstrip=t not in no_rstrip) for t in specials])
    else:
        tok.add_special_tokens(specials)

    if style == "llama3" and add_bos:
        bos = specials[0]
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos} $A",
                    pair=f"{bos} $A {bos}:1 $B:1",
                    special_tokens=[(bos, tok.token_to_id(bos))],
                ),
            ]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    data = json.loads(tok.to_str())
    if style == "llama3":
        # Llama 3 looks whole pre-tokens up in the vocab before merging (llama.cpp does the same).
        data["model"]["ignore_merges"] = True
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))

    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if style == "gpt2":
        config.update(bos_token=specials[0], eos_token=specials[0], unk_token=specials[0], add_bos_token=False)
    elif style == "llama3":
        config.update(bos_token=specials[0], eos_token=specials[2], add_bos_token=add_bos)
    elif style == "phi3":
        config.update(bos_token=specials[0], eos_token="<|end|>", pad_token=specials[0], add_bos_token=False)
    else:
        config.update(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", add_bos_token=False)
    config["model_max_length"] = 2048
    return config


def _build_spm(out_dir: Path, vocab_size: int, lines: Iterable[str] | None) -> dict:
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model = io.BytesIO()
    # The settings of Llama 2 / Mistral's tokenizer.model, scaled down.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines if lines is not None else training_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())

    # transformers' own SentencePiece converter produces the matching tokenizer.json.
    hf = LlamaTokenizer.from_pretrained(str(out_dir), legacy=False, add_bos_token=True, add_eos_token=False)
    hf.save_pretrained(str(out_dir))
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        (out_dir / extra).unlink(missing_ok=True)
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
    }
