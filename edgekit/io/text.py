"""Text for calibration, training and evaluation: files and directories read as documents, a tokenizer that
is the same for every model compared, one token stream, and windows cut from it.

A directory contributes every *.txt / *.py file below it (sorted), each one document; documents are joined
by the tokenizer's EOS. Windows start with the tokenizer's own prefix (BOS, when it adds one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.io.hf import load_tokenizer, special_prefix
from edgekit.quiet import quiet_transformers

DATA_SUFFIXES = (".txt", ".py")


@dataclass
class Tokenizer:
    """Text -> token ids, the same for model and reference."""

    name: str                                          # where it comes from, for messages
    source: Path                                       # the HF directory or GGUF it was loaded from
    encode: Callable[[str], list[int]]                 # no special tokens added
    prefix: list[int]                                  # what it puts before a text (BOS); starts every window
    eos: int | None                                    # separates documents
    size: int                                          # number of token ids
    special_ids: list[int]
    token_texts: Callable[[Sequence[int]], list[str | None]]


def hf_tokenizer(path: Path) -> Tokenizer:
    """A Hugging Face tokenizer directory's tokenizer."""
    tok = load_tokenizer(path)

    def encode(text: str) -> list[int]:
        with quiet_transformers():  # no "longer than the model's max length" warning: the text is windowed
            return list(tok(text, add_special_tokens=False)["input_ids"])

    specials = {i for i in [*tok.all_special_ids, tok.bos_token_id, tok.eos_token_id] if i is not None}
    return Tokenizer(name=str(path), source=path, encode=encode, prefix=special_prefix(tok), eos=tok.eos_token_id,
                     size=len(tok), special_ids=sorted(specials),
                     token_texts=lambda ids: list(tok.convert_ids_to_tokens(list(ids))))


@dataclass
class Data:
    files: list[Path]
    skipped: list[Path]     # files in a directory that are not readable UTF-8 text
    texts: list[str]        # one per document, empty ones dropped


def read_data(paths: str | Path | Sequence[str | Path]) -> Data:
    """Files as given, and every *.txt / *.py under a directory (sorted); one document per file."""
    paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not paths:
        raise EdgekitError("no data given (--data FILE|DIR)")
    data = Data([], [], [])
    for p in paths:
        if not p.exists():
            raise EdgekitError(f"{p}: data not found")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in DATA_SUFFIXES and f.is_file())
            if not files:
                raise EdgekitError(f"{p}: no {' or '.join(DATA_SUFFIXES)} files in the data directory")
            texts = []
            for f in files:
                try:
                    texts.append(f.read_text(encoding="utf-8"))
                    data.files.append(f)
                except (UnicodeDecodeError, OSError):
                    data.skipped.append(f)  # one bad file should not sink a directory of good ones
            if not texts:
                raise EdgekitError(f"{p}: none of the {len(files)} data files is readable UTF-8 text")
        else:
            try:
                texts = [p.read_text(encoding="utf-8")]
            except UnicodeDecodeError:
                raise EdgekitError(f"{p}: data is not UTF-8 text") from None
            except OSError as e:
                raise EdgekitError(f"{p}: cannot read ({e.strerror or e})") from None
            data.files.append(p)
        data.texts += [t for t in texts if t.strip()]
    if not data.texts:
        raise EdgekitError(f"{', '.join(map(str, paths))}: data is empty")
    return data


def token_stream(tok: Tokenizer, texts: Sequence[str], limit: int | None = None) -> list[int]:
    """The documents' tokens, joined by EOS (or a blank line when the tokenizer has no EOS); with a limit,
    documents stop being tokenized once that many tokens are there."""
    sep = [tok.eos] if tok.eos is not None else tok.encode("\n\n")
    ids: list[int] = []
    for i, t in enumerate(texts):
        if limit is not None and len(ids) >= limit:
            break
        if i:
            ids += sep
        ids += tok.encode(t)
    return ids


def text_windows(tokenizer_dir: Path, data: Sequence[str | Path], ctx: int, max_windows: int,
                 seed: int | None = None) -> list[list[int]]:
    """Training/calibration windows: the data's token stream (documents shuffled by `seed`, if given) cut into
    consecutive windows of ctx tokens, each starting with the tokenizer's own prefix (BOS). At most max_windows,
    tokenizing only as much text as they need; whole windows only, unless the text is shorter than one."""
    import random

    tok = hf_tokenizer(Path(tokenizer_dir))
    body = ctx - len(tok.prefix)
    if body < 1:
        raise EdgekitError(f"{tokenizer_dir}: {ctx} tokens per window leave no room after the tokenizer's prefix")
    texts = list(read_data(data).texts)
    if seed is not None:
        random.Random(seed).shuffle(texts)
    stream = token_stream(tok, texts, limit=max_windows * body)
    if not stream:
        raise EdgekitError(f"{', '.join(map(str, data))}: the text has no tokens")
    starts = range(0, max(len(stream) - body, 0) + 1, body)
    return [tok.prefix + stream[i:i + body] for i in starts][:max_windows]
