"""The models `edgekit eval` compares, behind one interface: next-token logits for a sequence of token ids.

A Hugging Face directory runs in transformers (float32), a .gguf in llama.cpp with an F32 KV cache (so an F32
file matches transformers), a .pte in the ExecuTorch runtime. Also here: which tokenizer to use when none is
given, and the check that model, reference and tokenizer mean the same thing by each token id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.io.gguf_reader import read_header
from edgekit.io.hf import load_model
from edgekit.io.text import Tokenizer, hf_tokenizer

# Token ids compared between tokenizers and GGUF vocabularies (plus every special token).
VOCAB_SAMPLE = 64


class Backend(Protocol):
    """A model that gives next-token logits for a sequence of token ids."""

    path: Path
    vocab_size: int   # logits per position

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 [len(tokens), vocab_size]: row i is the distribution of the token after tokens[i]."""
        ...

    def token_texts(self, ids: Sequence[int]) -> list[str | None] | None:
        """The model's own text for each token id (for vocabulary checks), or None if it has no vocabulary."""
        ...

    def close(self) -> None: ...


class HFBackend:
    """A Hugging Face checkpoint directory, run by transformers in float32."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._model = load_model(path)
        head = self._model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(self._model.config.vocab_size)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._model(input_ids=torch.tensor([list(tokens)]), use_cache=False).logits[0]
        return out.float().numpy()

    def token_texts(self, ids: Sequence[int]) -> list[str | None] | None:
        try:
            return hf_tokenizer(self.path).token_texts(ids)
        except EdgekitError:
            return None  # a checkpoint without tokenizer files: nothing to compare

    def close(self) -> None:
        self._model = None


class GGUFBackend:
    """A .gguf file run by llama.cpp (with plain attention) or by edgekit's C runtime, with an F32 KV cache, so
    F32 files match transformers."""

    def __init__(self, path: Path, ctx: int, backend: str = "llamacpp") -> None:
        self.path = path
        self._llm: Any
        if backend == "native":
            from edgekit.runtime.backends.native import NativeModel

            self._llm = NativeModel(path, n_ctx=ctx, n_batch=ctx, kv_f32=True)
        else:
            from edgekit.runtime.backends.llamacpp import LlamaCppModel

            self._llm = LlamaCppModel(path, n_ctx=ctx, n_batch=ctx, kv_f32=True, flash_attn=False)
        self.vocab_size = self._llm.n_vocab

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        assert self._llm is not None
        return self._llm.logits_all(tokens)

    def token_texts(self, ids: Sequence[int]) -> list[str | None] | None:
        return gguf_token_texts(self.path, ids)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


class PTEBackend:
    """An ExecuTorch .pte program run by the ExecuTorch runtime (edgekit.runtime.backends.executorch).

    The exported program returns only the last position's logits, so a window is fed one token per
    call: slower than the other backends, but the same numbers a device would compute."""

    def __init__(self, path: Path, ctx: int) -> None:
        from edgekit.runtime.backends.executorch import EtModel

        self.path = path
        self._m: EtModel | None = EtModel(path)
        if ctx > self._m.max_seq_len:
            raise EdgekitError(f"{path}: --ctx {ctx} exceeds the program's KV cache of {self._m.max_seq_len} "
                               "tokens (export with a larger --max-seq-len, or lower --ctx)")
        vocab = self._m.metadata.get("get_vocab_size")
        self.vocab_size = int(vocab) if vocab is not None else int(self._m.forward([0], 0).shape[-1])

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        assert self._m is not None
        return self._m.logits(tokens).astype(np.float32, copy=False)

    def token_texts(self, ids: Sequence[int]) -> list[str | None] | None:
        return None  # a .pte carries no vocabulary; its tokenizer.json sidecar is checked instead

    def close(self) -> None:
        self._m = None


# Model files by suffix; a directory is a Hugging Face checkpoint.
FILE_BACKENDS: dict[str, Callable[[Path, int], Backend]] = {".gguf": GGUFBackend, ".pte": PTEBackend}


def check_model_path(path: Path) -> None:
    """One line for a path that is no model edgekit can score."""
    if not path.exists():
        raise EdgekitError(f"{path}: model not found")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EdgekitError(f"{path}: not a Hugging Face model directory (no config.json)")
    elif path.suffix.lower() not in FILE_BACKENDS:
        raise EdgekitError(f"{path}: unsupported model file (expected .gguf, .pte or a Hugging Face directory)")


def open_model(path: str | Path, *, ctx: int = 512, backend: str = "llamacpp") -> Backend:
    """The backend for a model path: a HF directory, a .gguf or a .pte file; ctx is the longest sequence;
    backend: who runs a .gguf ("llamacpp" or "native")."""
    path = Path(path)
    check_model_path(path)
    if path.is_dir():
        return HFBackend(path)
    if path.suffix.lower() == ".gguf":
        return GGUFBackend(path, ctx, backend)
    return FILE_BACKENDS[path.suffix.lower()](path, ctx)


def gguf_tokenizer(path: Path, backend: str = "llamacpp") -> Tokenizer:
    """A GGUF's own tokenizer, as the runtime that scores it tokenizes (for a GGUF evaluated without a HF
    tokenizer): llama.cpp's, or edgekit's C runtime's (equal to llama.cpp's; needs no llama.cpp)."""
    if backend == "native":
        from edgekit.native.runtime import Model as NativeVocab

        native = NativeVocab(path)  # kept alive by the closures below
        tokenize, bos, eos, n_vocab = native.tokenize, native.info.bos, native.info.eos, native.info.n_vocab
        label = "edgekit native"
    else:
        from edgekit.runtime.backends.llamacpp import Vocab

        vocab = Vocab.open(path)
        tokenize, bos, eos, n_vocab = vocab.tokenize, vocab.bos, vocab.eos, vocab.n_vocab
        label = "llama.cpp"

    def encode(text: str) -> list[int]:
        # special-token text in the data becomes the special token, as HF tokenizers do
        return tokenize(text) if text else []

    plain, full = encode("a"), tokenize("a", add_special=True)
    prefix = next((full[:s] for s in range(len(full) - len(plain) + 1) if full[s:s + len(plain)] == plain), [])
    specials = sorted({i for i in (bos, eos) if i >= 0})
    return Tokenizer(name=f"{path} ({label})", source=path, encode=encode, prefix=list(prefix),
                     eos=eos if eos >= 0 else None, size=n_vocab,
                     special_ids=specials, token_texts=lambda ids: gguf_token_texts(path, ids))


def choose_tokenizer(model: Path, ref: Path | None, tokenizer: Path | None, backend: str = "llamacpp") -> Tokenizer:
    """An explicit tokenizer, else a HF one (reference first), else the GGUF's own (as `backend` tokenizes)."""
    if tokenizer is not None:
        if not Path(tokenizer).is_dir():
            raise EdgekitError(f"{tokenizer}: tokenizer must be a Hugging Face directory (tokenizer.json, ...)")
        return hf_tokenizer(Path(tokenizer))
    candidates = [p for p in (ref, model) if p is not None]
    for p in candidates:
        if p.is_dir():
            return hf_tokenizer(p)
    for p in candidates:  # a .pte ships its tokenizer.json beside it
        if p.suffix.lower() == ".pte" and (p.parent / "tokenizer.json").is_file():
            return hf_tokenizer(p.parent)
    for p in candidates:
        if p.suffix.lower() == ".gguf":
            return gguf_tokenizer(p, backend if p == model else "llamacpp")
    raise EdgekitError(f"{model}: no tokenizer to use; pass --tokenizer with a Hugging Face directory")


def gguf_token_texts(path: Path, ids: Sequence[int]) -> list[str | None] | None:
    """The GGUF vocabulary's text of each token id (None for ids out of range); None without a vocabulary."""
    tokens = read_header(path).get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    return [tokens[i] if 0 <= i < len(tokens) else None for i in ids]


def check_vocab(tok: Tokenizer, model: Backend, ref: Backend | None) -> None:
    """Model, reference and tokenizer must agree on what each token id means."""
    if ref is not None and model.vocab_size != ref.vocab_size:
        raise EdgekitError(f"vocabulary mismatch: {model.path} has {model.vocab_size} tokens, "
                           f"reference {ref.path} has {ref.vocab_size}")
    backends = [b for b in (model, ref) if b is not None]
    n = min([tok.size, *(b.vocab_size for b in backends)])
    ids = sorted({i for i in tok.special_ids if i < n} | {int(i) for i in np.linspace(0, n - 1, VOCAB_SAMPLE)})
    want = tok.token_texts(ids)
    for b in backends:
        if b.path.resolve() == tok.source.resolve():
            continue  # the tokenizer's own files: equal by construction
        got = b.token_texts(ids)
        if got is None:
            continue
        for i, w, g in zip(ids, want, got, strict=True):
            if w is not None and g is not None and w != g:
                role = "reference" if b is ref else "model"
                raise EdgekitError(f"tokenizer mismatch: token {i} is {w!r} in {tok.name} but {g!r} in {role} "
                                   f"{b.path} (different vocabularies)")


