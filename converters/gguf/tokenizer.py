"""Hugging Face tokenizer files -> llama.cpp's GGUF tokenizer metadata.

Two families are supported, the ones llama.cpp reproduces exactly:

* byte-level BPE (GPT-2, Llama 3, Qwen2, ...): ``tokenizer.ggml.model = "gpt2"``. llama.cpp does not
  read the pre-tokenizer regex from the file; it picks a hard-coded one by name
  (``tokenizer.ggml.pre``), so we recognise the regex in tokenizer.json from a table of known ones
  and refuse anything else rather than write a GGUF that silently tokenizes differently.
* SentencePiece BPE with byte fallback (Llama 2, Mistral, ...): ``tokenizer.ggml.model = "llama"``,
  read from tokenizer.model with the ``sentencepiece`` library when present, else from tokenizer.json.

Special-token ids, the add-BOS/EOS flags and the chat template are taken from what transformers
actually does with the files (e.g. transformers 5 ignores ``add_bos_token`` in tokenizer_config.json
when a tokenizer.json exists: its post-processor decides).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from edgekit.errors import EdgekitError

# Pre-tokenizer regexes as tokenizer.json spells them -> llama.cpp's name for the same split
# (see llama_vocab::impl::load in src/llama-vocab.cpp: each name selects a hard-coded regex).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Digits(individual_digits=True): each digit is its own pre-token, like the regex \p{N}.
DIGITS_ONE_BY_ONE = r"\p{N}"

# The splits a tokenizer.json applies, in order (ByteLevel(use_regex=True) counts as the GPT-2
# regex) -> the llama.cpp pre-tokenizer that applies the same splits.
KNOWN_PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    (GPT2_REGEX,): "gpt-2",
    (LLAMA3_REGEX,): "llama-bpe",
    (QWEN2_REGEX,): "qwen2",
    (DIGITS_ONE_BY_ONE, GPT2_REGEX): "smollm",  # SmolLM, StarCoder
}

# Normalizers that leave already-composed text unchanged; llama.cpp applies none.
_HARMLESS_NORMALIZERS = {"NFC"}

# Turn-ending tokens of common chat formats: llama.cpp stops generation on the eot id.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")

_SPM_BPE = 2  # sentencepiece TrainerSpec.ModelType.BPE


@dataclass(frozen=True)
class TokenizerInfo:
    """What add_tokenizer wrote: handy for `inspect` output and tests."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None  # tokenizer.ggml.pre (byte-level BPE only)
    n_tokens: int  # entries written, padding included (== the model's vocab_size)
    n_vocab: int  # entries the tokenizer itself defines
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    eot_id: int | None
    add_bos: bool
    add_eos: bool
    has_chat_template: bool


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> TokenizerInfo:
    """Write the tokenizer of the checkpoint in `model_dir` into `writer`, padded to `vocab_size`
    (the model's embedding rows). Raises EdgekitError on anything llama.cpp would get wrong."""
    try:
        return _add_tokenizer(writer, Path(model_dir), vocab_size)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
        # The tokenizer files are user input read as nested JSON: a value of the wrong type or shape surfaces
        # as one of these somewhere below; it is the files' problem, said as such.
        raise EdgekitError(f"{model_dir}: malformed tokenizer files (tokenizer.json / tokenizer_config.json: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unexpected value'})") from None


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> TokenizerInfo:
    tok_json_path = model_dir / "tokenizer.json"
    spm_path = model_dir / "tokenizer.model"
    tok_json = _read_json(tok_json_path) if tok_json_path.is_file() else None
    # Older checkpoints name their special tokens in special_tokens_map.json only.
    config = dict(_read_json(model_dir / "special_tokens_map.json") or {})
    config.update(_read_json(model_dir / "tokenizer_config.json") or {})
    if tok_json is None and not spm_path.is_file():
        raise EdgekitError(f"{model_dir}: no tokenizer.json or tokenizer.model: cannot convert the tokenizer")

    pre: str | None = None
    remove_extra_ws = False
    if tok_json is not None:
        kind = _json_kind(tok_json, tok_json_path, has_spm=spm_path.is_file())
    else:
        kind = "llama"
    if kind == "gpt2":
        assert tok_json is not None
        pre = _pre_tokenizer_name(tok_json, tok_json_path)
        vocab = _byte_level_vocab(tok_json, tok_json_path)
        add_space_prefix = False
    elif spm_path.is_file():
        vocab, add_space_prefix, remove_extra_ws = _spm_vocab(spm_path, tok_json, config)
    else:
        assert tok_json is not None
        vocab, add_space_prefix = _spm_vocab_from_json(tok_json, tok_json_path)
    n_vocab = len(vocab.tokens)

    if n_vocab > vocab_size:
        raise EdgekitError(
            f"{model_dir}: the tokenizer has {n_vocab} tokens but the model's embedding has only {vocab_size} rows"
        )
    # Real checkpoints (Qwen2, ...) round the embedding up: the extra rows get unused placeholders.
    for i in range(n_vocab, vocab_size):
        _append(vocab, f"[PAD{i}]", gguf.TokenType.UNUSED, -1000.0)
    _check_unique(vocab.tokens, model_dir)

    token_ids = {t: i for i, t in enumerate(vocab.tokens)}
    specials = _special_ids(model_dir, config, token_ids)
    if tok_json is not None:
        add_bos, add_eos, template_bos, template_eos = _post_processor_flags(tok_json, tok_json_path, token_ids)
        # HF prepends the template's own token: make llama.cpp prepend the same one.
        if template_bos is not None:
            specials["bos"] = template_bos
        if template_eos is not None and template_eos != specials.get("eos"):
            raise EdgekitError(
                f"{tok_json_path}: the post-processor appends token {template_eos}, which is not the eos "
                "token; llama.cpp cannot reproduce that"
            )
    else:
        add_bos = bool(config.get("add_bos_token", True))  # LlamaTokenizer's defaults
        add_eos = bool(config.get("add_eos_token", False))
    if add_bos and specials.get("bos") is None:
        raise EdgekitError(f"{model_dir}: the tokenizer adds a BOS token but none is defined")
    chat_template = _chat_template(model_dir, config)

    writer.add_tokenizer_model(kind)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if kind == "llama":
        writer.add_add_space_prefix(add_space_prefix)
        if remove_extra_ws:
            writer.add_remove_extra_whitespaces(True)
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
        "eot": writer.add_eot_token_id,
    }
    for name, setter in setters.items():
        if specials.get(name) is not None:
            setter(specials[name])
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if chat_template:
        writer.add_chat_template(chat_template)

    return TokenizerInfo(
        model=kind,
        pre=pre,
        n_tokens=len(vocab.tokens),
        n_vocab=n_vocab,
        bos_id=specials.get("bos"),
        eos_id=specials.get("eos"),
        unk_id=specials.get("unk"),
        pad_id=specials.get("pad"),
        eot_id=specials.get("eot"),
        add_bos=add_bos,
        add_eos=add_eos,
        has_chat_template=bool(chat_template),
    )


# -- reading files -------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    """The parsed file (a JSON object), None when absent; EdgekitError when unreadable or invalid."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise EdgekitError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise EdgekitError(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise EdgekitError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _components(node: dict | None, key: str) -> list[dict]:
    """A pre-tokenizer/normalizer/decoder/post-processor as a flat list (Sequence unrolled)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [c for child in node.get(key, []) for c in _components(child, key)]
    return [node]


def _json_kind(tok_json: dict, path: Path, has_spm: bool) -> str:
    """The GGUF tokenizer model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE)."""
    model = tok_json.get("model")
    if not isinstance(model, dict):
        raise EdgekitError(f"{path}: no 'model' section: not a tokenizers tokenizer.json")
    mtype = model.get("type")
    if mtype != "BPE":
        raise EdgekitError(f"{path}: unsupported tokenizer model type {mtype!r} (only BPE tokenizers convert exactly)")
    pre = _components(tok_json.get("pre_tokenizer"), "pretokenizers")
    dec = _components(tok_json.get("decoder"), "decoders")
    if any(c.get("type") == "ByteLevel" for c in pre + dec):
        return "gpt2"
    norm = _components(tok_json.get("normalizer"), "normalizers")
    spm_like = (
        model.get("byte_fallback")
        or any(c.get("type") == "Metaspace" for c in pre)
        or any(c.get("type") in ("Prepend", "Replace") and "▁" in json.dumps(c, ensure_ascii=False) for c in norm)
    )
    if spm_like or has_spm:
        return "llama"
    raise EdgekitError(f"{path}: BPE tokenizer is neither byte-level nor SentencePiece-style: unsupported")


# -- byte-level BPE ------------------------------------------------------------------------------


def _pre_tokenizer_name(tok_json: dict, path: Path) -> str:
    """llama.cpp's pre-tokenizer name for this tokenizer.json, or EdgekitError."""
    norm = _components(tok_json.get("normalizer"), "normalizers")
    bad_norm = [c.get("type") for c in norm if c.get("type") not in _HARMLESS_NORMALIZERS]
    if bad_norm:
        raise EdgekitError(f"{path}: normalizer {bad_norm[0]!r} is not supported by llama.cpp's BPE tokenizer")

    steps = _components(tok_json.get("pre_tokenizer"), "pretokenizers")
    byte_levels = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(byte_levels) != 1 or steps[-1] is not byte_levels[0]:
        raise EdgekitError(f"{path}: unsupported pre-tokenizer layout {_describe(steps)}")
    byte_level = byte_levels[0]
    if byte_level.get("add_prefix_space"):
        # llama.cpp never adds a leading space in BPE mode: every text would start differently.
        raise EdgekitError(f"{path}: ByteLevel add_prefix_space=true is not supported by llama.cpp")

    # The splits in the order HF applies them: the Split/Digits steps, then ByteLevel's own regex.
    splits = []
    for step in steps[:-1]:
        pattern = step.get("pattern") or {}
        if step.get("type") == "Digits" and step.get("individual_digits"):
            splits.append(DIGITS_ONE_BY_ONE)
        elif (
            step.get("type") == "Split"
            and "Regex" in pattern
            and step.get("behavior") == "Isolated"
            and not step.get("invert")
        ):
            splits.append(pattern["Regex"])
        else:
            raise EdgekitError(f"{path}: unsupported pre-tokenizer layout {_describe(steps)}")
    if byte_level.get("use_regex", True):
        splits.append(GPT2_REGEX)
    name = KNOWN_PRE_TOKENIZERS.get(tuple(splits))
    if name is None:
        shown = " then ".join(splits) or "(none)"
        shown = shown if len(shown) <= 100 else shown[:97] + "..."
        raise EdgekitError(f"{path}: unknown pre-tokenizer regex {shown!r}: llama.cpp would split text differently")
    return name


def _describe(steps: list[dict]) -> str:
    return "[" + ", ".join(str(s.get("type")) for s in steps) + "]"


def _vocab_and_added(tok_json: dict) -> tuple[dict[int, str], dict[int, dict]]:
    model = tok_json["model"]
    vocab = model.get("vocab") or {}
    by_id: dict[int, str] = {int(i): t for t, i in vocab.items()}
    added = {int(a["id"]): a for a in tok_json.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = a["content"]
    return by_id, added


def _byte_level_vocab(tok_json: dict, path: Path) -> _Vocab:
    by_id, added = _vocab_and_added(tok_json)
    vocab = _Vocab(tokens=[], types=[])
    for i in range(max(by_id, default=-1) + 1):
        if i not in by_id:
            _append(vocab, f"[PAD{i}]", gguf.TokenType.UNUSED)  # hole in the id range
        elif i in added:
            # llama.cpp splits CONTROL tokens out only with parse_special, USER_DEFINED always (as HF).
            special = added[i].get("special", False)
            _append(vocab, by_id[i], gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            _append(vocab, by_id[i], gguf.TokenType.NORMAL)
    vocab.merges = _merges(tok_json, path)
    return vocab


def _merges(tok_json: dict, path: Path) -> list[str]:
    merges = []
    for m in tok_json["model"].get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, list) and len(m) == 2:
            if " " in m[0] or " " in m[1]:
                # llama.cpp stores merges as "left right": a space inside a part cannot round-trip.
                raise EdgekitError(f"{path}: merge {m!r} contains a space, which GGUF merges cannot hold")
            merges.append(f"{m[0]} {m[1]}")
        else:
            raise EdgekitError(f"{path}: malformed merge entry {m!r}")
    return merges


# -- SentencePiece -------------------------------------------------------------------------------


def _spm_vocab(spm_path: Path, tok_json: dict | None, config: dict) -> tuple[_Vocab, bool, bool]:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    data = spm_path.read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
        sp = spm.SentencePieceProcessor(model_proto=data)
    except Exception as e:  # protobuf and sentencepiece raise assorted types
        raise EdgekitError(f"{spm_path}: not a valid SentencePiece model: {e}") from None
    if proto.trainer_spec.model_type != _SPM_BPE:
        name = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise EdgekitError(
            f"{spm_path}: unsupported SentencePiece model type {name} (llama.cpp reproduces BPE models only)"
        )
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise EdgekitError(f"{spm_path}: treat_whitespace_as_suffix is not supported by llama.cpp")

    vocab = _Vocab(tokens=[], types=[], scores=[])
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            ttype = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            ttype = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            ttype = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            ttype = gguf.TokenType.BYTE
        else:
            ttype = gguf.TokenType.NORMAL
        _append(vocab, sp.id_to_piece(i), ttype, sp.get_score(i))

    # Tokens added on top of tokenizer.model (tokenizer.json's added_tokens, tokenizer_config's
    # added_tokens_decoder): appended past the model's pieces, or re-typed where they overlap.
    added: dict[int, dict] = {}
    for i, a in (config.get("added_tokens_decoder") or {}).items():
        added[int(i)] = a
    for a in (tok_json or {}).get("added_tokens") or []:
        added[int(a["id"])] = a
    for i in sorted(added):
        a = added[i]
        ttype = gguf.TokenType.CONTROL if a.get("special", False) else gguf.TokenType.USER_DEFINED
        while len(vocab.tokens) < i:
            _append(vocab, f"[PAD{len(vocab.tokens)}]", gguf.TokenType.UNUSED, -1000.0)
        if i == len(vocab.tokens):
            _append(vocab, a["content"], ttype, -1000.0)
        elif vocab.tokens[i] == a["content"]:
            if vocab.types[i] == gguf.TokenType.NORMAL:
                vocab.types[i] = ttype
        else:
            # The HF tokenizer shows a different text for this id (e.g. a renamed unused piece).
            vocab.tokens[i] = a["content"]
            vocab.types[i] = ttype
    norm = proto.normalizer_spec
    return vocab, norm.add_dummy_prefix, norm.remove_extra_whitespaces


def _spm_vocab_from_json(tok_json: dict, path: Path) -> tuple[_Vocab, bool]:
    """A SentencePiece-style vocabulary from tokenizer.json alone (no tokenizer.model shipped).

    llama.cpp's SPM tokenizer merges the adjacent pair whose result has the highest score; HF's BPE
    merges the pair of lowest merge rank. Scoring each token by minus the rank of the first merge
    that makes it gives the same order."""
    by_id, added = _vocab_and_added(tok_json)
    merges = _merges(tok_json, path)
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        left, right = m.split(" ", 1)
        rank.setdefault(left + right, r)
    unk = tok_json["model"].get("unk_token")
    n_merges = len(merges)
    vocab = _Vocab(tokens=[], types=[], scores=[])
    for i in range(max(by_id, default=-1) + 1):
        text = by_id.get(i)
        if text is None:
            _append(vocab, f"[PAD{i}]", gguf.TokenType.UNUSED, -1000.0)
            continue
        if i in added:
            ttype = gguf.TokenType.CONTROL if added[i].get("special", False) else gguf.TokenType.USER_DEFINED
            if text == unk:
                ttype = gguf.TokenType.UNKNOWN
        elif text == unk:
            ttype = gguf.TokenType.UNKNOWN
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            ttype = gguf.TokenType.BYTE
        else:
            ttype = gguf.TokenType.NORMAL
        score = -float(rank[text]) if text in rank else -float(n_merges + i)
        _append(vocab, text, ttype, score)

    pre = _components(tok_json.get("pre_tokenizer"), "pretokenizers")
    norm = _components(tok_json.get("normalizer"), "normalizers")
    add_space_prefix = any(
        c.get("type") == "Metaspace" and c.get("prepend_scheme", "always") != "never" for c in pre
    ) or any(c.get("type") == "Prepend" for c in norm)
    return vocab, add_space_prefix


# -- special tokens, flags, chat template --------------------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _special_ids(model_dir: Path, config: dict, token_ids: dict[str, int]) -> dict[str, int | None]:
    ids: dict[str, int | None] = {}
    for name in ("bos", "eos", "unk", "pad"):
        text = _token_text(config.get(f"{name}_token"))
        if text is not None:
            if text not in token_ids:
                raise EdgekitError(
                    f"{model_dir / 'tokenizer_config.json'}: {name}_token {text!r} is not in the vocabulary"
                )
            ids[name] = token_ids[text]
    # Fall back to the ids the generation and model configs give (some checkpoints only set them there).
    for fname in ("generation_config.json", "config.json"):
        cfg = _read_json(model_dir / fname) or {}
        for name in ("bos", "eos", "pad"):
            value = cfg.get(f"{name}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if ids.get(name) is None and isinstance(value, int) and 0 <= value < len(token_ids):
                ids[name] = value
    for text in _EOT_TEXTS:
        if text in token_ids:
            ids["eot"] = token_ids[text]
            break
    return ids


def _post_processor_flags(
    tok_json: dict, path: Path, token_ids: dict[str, int]
) -> tuple[bool, bool, int | None, int | None]:
    """(add_bos, add_eos, id HF prepends, id HF appends) from the post-processor of tokenizer.json."""
    templates = [
        p for p in _components(tok_json.get("post_processor"), "processors") if p.get("type") == "TemplateProcessing"
    ]
    others = [
        p.get("type")
        for p in _components(tok_json.get("post_processor"), "processors")
        if p.get("type") not in ("TemplateProcessing", "ByteLevel")
    ]
    if others:
        raise EdgekitError(f"{path}: unsupported post-processor {others[0]!r}")
    if not templates:
        return False, False, None, None
    single = templates[-1].get("single") or []
    pieces = [p for p in single if "SpecialToken" in p or "Sequence" in p]
    seq_at = [i for i, p in enumerate(pieces) if "Sequence" in p]
    if len(seq_at) != 1 or seq_at[0] > 1 or len(pieces) - seq_at[0] > 2:
        raise EdgekitError(f"{path}: unsupported post-processor template (more than one token around the text)")
    first = pieces[0]["SpecialToken"]["id"] if seq_at[0] == 1 else None
    last = pieces[-1]["SpecialToken"]["id"] if len(pieces) - seq_at[0] == 2 else None

    def lookup(text: str | None) -> int | None:
        if text is None:
            return None
        if text not in token_ids:
            raise EdgekitError(f"{path}: post-processor token {text!r} is not in the vocabulary")
        return token_ids[text]

    return first is not None, last is not None, lookup(first), lookup(last)


def _chat_template(model_dir: Path, config: dict) -> str | None:
    # transformers prefers chat_template.jinja over the tokenizer_config.json entry.
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EdgekitError(f"{jinja}: cannot read: {e}") from None
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template else None


# -- helpers -------------------------------------------------------------------------------------


def _append(vocab: _Vocab, text: str, ttype: int, score: float = 0.0) -> None:
    vocab.tokens.append(text)
    vocab.types.append(int(ttype))
    if vocab.scores is not None:
        vocab.scores.append(score)


def _check_unique(tokens: list[str], model_dir: Path) -> None:
    # llama.cpp maps text -> id and aborts on a duplicate text.
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise EdgekitError(f"{model_dir}: token text {dup!r} appears twice in the vocabulary")
