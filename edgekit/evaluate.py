"""`edgekit eval`: perplexity of a model on text and, against a reference model, KL-divergence,
ΔPPL and top-1 agreement of the next-token distributions.

Model and reference see the same token ids, window by window, in lockstep: only one window's
logits per model are alive at a time (they are vocab x ctx floats), and only a few numbers per
scored token are kept for the statistics.

Windows (as in HF's perplexity guide and llama.cpp's perplexity tool): the data is one token stream
(documents joined by the tokenizer's EOS); each window is the tokenizer's own prefix (BOS, when it
adds one) followed by the next ctx - len(prefix) stream tokens, starting `stride` tokens after the
previous window. The first window scores every token after its first; later windows score only
their last min(stride, text tokens - 1) tokens, the rest is context. Only whole windows are used.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import EdgekitError

DATA_SUFFIXES = (".txt", ".py")
# float64 rows are processed this many elements at a time (32 MiB per array), whatever the vocabulary.
_CHUNK_ELEMS = 1 << 22
# Token ids compared between tokenizers and GGUF vocabularies (plus every special token).
_VOCAB_SAMPLE = 64


# ---------------------------------------------------------------------------------------------
# Model backends


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
        import torch
        from transformers import AutoModelForCausalLM

        from edgekit.converters.imatrix import _quiet_transformers

        self.path = path
        try:
            with _quiet_transformers():
                self._model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError, KeyError) as e:
            raise EdgekitError(f"{path}: transformers cannot load the model ({_first_line(e)})") from None
        head = self._model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(self._model.config.vocab_size)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._model(input_ids=torch.tensor([list(tokens)]), use_cache=False).logits[0]
        return out.float().numpy()

    def token_texts(self, ids: Sequence[int]) -> list[str | None] | None:
        try:
            return load_hf_tokenizer(self.path).token_texts(ids)
        except EdgekitError:
            return None  # a checkpoint without tokenizer files: nothing to compare

    def close(self) -> None:
        self._model = None


class GGUFBackend:
    """A .gguf file run by llama.cpp (llama-cpp-python) with an F32 KV cache, so F32 files match transformers."""

    def __init__(self, path: Path, ctx: int) -> None:
        self.path = path
        self._llm = None
        self._llm = _load_llama(path, n_ctx=ctx, n_batch=ctx, logits_all=True, type_k=0, type_v=0)
        self.vocab_size = int(self._llm.n_vocab())

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        self._llm.reset()  # a fresh sequence: no KV cache carried over from the previous window
        self._llm.eval(list(tokens))
        # scores has n_ctx rows; copy out this window's, the buffer is reused by the next eval.
        return np.array(self._llm.scores[: len(tokens)], dtype=np.float32)

    def token_texts(self, ids: Sequence[int]) -> list[str | None] | None:
        return _gguf_token_texts(self.path, ids)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


class PTEBackend:
    """An ExecuTorch .pte program run by the ExecuTorch runtime (edgekit.runtime_et).

    The exported program returns only the last position's logits, so a window is fed one token per
    call: slower than the other backends, but the same numbers a device would compute."""

    def __init__(self, path: Path, ctx: int) -> None:
        from edgekit.runtime_et import EtModel

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
_FILE_BACKENDS: dict[str, Callable[[Path, int], Backend]] = {".gguf": GGUFBackend, ".pte": PTEBackend}


def _check_model_path(path: Path) -> None:
    if not path.exists():
        raise EdgekitError(f"{path}: model not found")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EdgekitError(f"{path}: not a Hugging Face model directory (no config.json)")
    elif path.suffix.lower() not in _FILE_BACKENDS:
        raise EdgekitError(f"{path}: unsupported model file (expected .gguf, .pte or a Hugging Face directory)")


def open_model(path: str | Path, *, ctx: int = 512) -> Backend:
    """The backend for a model path: a HF directory, a .gguf file (later a .pte); ctx is the longest sequence."""
    path = Path(path)
    _check_model_path(path)
    if path.is_dir():
        return HFBackend(path)
    return _FILE_BACKENDS[path.suffix.lower()](path, ctx)


# ---------------------------------------------------------------------------------------------
# Tokenizers


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


def load_hf_tokenizer(path: Path) -> Tokenizer:
    from transformers import AutoTokenizer

    from edgekit.converters.imatrix import _quiet_transformers, _special_prefix

    try:
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgekitError(f"{path}: cannot load a Hugging Face tokenizer ({_first_line(e)})") from None

    def encode(text: str) -> list[int]:
        with _quiet_transformers():  # no "longer than the model's max length" warning: the text is windowed
            return list(tok(text, add_special_tokens=False)["input_ids"])

    specials = {i for i in [*tok.all_special_ids, tok.bos_token_id, tok.eos_token_id] if i is not None}
    return Tokenizer(name=str(path), source=path, encode=encode, prefix=_special_prefix(tok), eos=tok.eos_token_id,
                     size=len(tok), special_ids=sorted(specials),
                     token_texts=lambda ids: list(tok.convert_ids_to_tokens(list(ids))))


def _load_llama_tokenizer(path: Path) -> Tokenizer:
    """llama.cpp's own tokenizer of a GGUF (for a GGUF evaluated without a HF tokenizer)."""
    llm = _load_llama(path, vocab_only=True)

    def encode(text: str) -> list[int]:
        # special=True: special-token text in the data becomes the special token, as HF tokenizers do.
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []

    plain, full = encode("a"), llm.tokenize(b"a", add_bos=True, special=True)
    prefix = next((full[:s] for s in range(len(full) - len(plain) + 1) if full[s:s + len(plain)] == plain), [])
    bos, eos = llm.token_bos(), llm.token_eos()
    specials = sorted({i for i in (bos, eos) if i is not None and i >= 0})
    return Tokenizer(name=f"{path} (llama.cpp)", source=path, encode=encode, prefix=list(prefix),
                     eos=eos if eos is not None and eos >= 0 else None, size=int(llm.n_vocab()),
                     special_ids=specials, token_texts=lambda ids: _gguf_token_texts(path, ids))


def _choose_tokenizer(model: Path, ref: Path | None, tokenizer: Path | None) -> Tokenizer:
    """An explicit tokenizer, else a HF one (reference first), else llama.cpp's of a GGUF."""
    if tokenizer is not None:
        if not Path(tokenizer).is_dir():
            raise EdgekitError(f"{tokenizer}: tokenizer must be a Hugging Face directory (tokenizer.json, ...)")
        return load_hf_tokenizer(Path(tokenizer))
    candidates = [p for p in (ref, model) if p is not None]
    for p in candidates:
        if p.is_dir():
            return load_hf_tokenizer(p)
    for p in candidates:  # a .pte ships its tokenizer.json beside it
        if p.suffix.lower() == ".pte" and (p.parent / "tokenizer.json").is_file():
            return load_hf_tokenizer(p.parent)
    for p in candidates:
        if p.suffix.lower() == ".gguf":
            return _load_llama_tokenizer(p)
    raise EdgekitError(f"{model}: no tokenizer to use; pass --tokenizer with a Hugging Face directory")


def _gguf_token_texts(path: Path, ids: Sequence[int]) -> list[str | None] | None:
    from edgekit.gguf_meta import read_header

    tokens = read_header(path).get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    return [tokens[i] if 0 <= i < len(tokens) else None for i in ids]


def _check_vocab(tok: Tokenizer, model: Backend, ref: Backend | None) -> None:
    """Model, reference and tokenizer must agree on what each token id means."""
    if ref is not None and model.vocab_size != ref.vocab_size:
        raise EdgekitError(f"vocabulary mismatch: {model.path} has {model.vocab_size} tokens, "
                           f"reference {ref.path} has {ref.vocab_size}")
    backends = [b for b in (model, ref) if b is not None]
    n = min([tok.size, *(b.vocab_size for b in backends)])
    ids = sorted({i for i in tok.special_ids if i < n} | {int(i) for i in np.linspace(0, n - 1, _VOCAB_SAMPLE)})
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


# ---------------------------------------------------------------------------------------------
# Data and windows


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

    tok = load_hf_tokenizer(Path(tokenizer_dir))
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


@dataclass(frozen=True)
class Window:
    start: int       # first stream token in the window (after the prefix)
    first_row: int   # logits rows first_row .. ctx-2 are scored (row r predicts window token r+1)


def plan_windows(n_tokens: int, ctx: int, stride: int, n_prefix: int = 0,
                 max_windows: int | None = None) -> list[Window]:
    """Whole windows over a stream of n_tokens; each holds n_prefix prefix tokens and ctx - n_prefix stream tokens."""
    text = ctx - n_prefix
    if n_tokens < text:
        return []
    n = 1 + (n_tokens - text) // stride
    if max_windows is not None:
        n = min(n, max_windows)
    later = min(stride, text - 1)  # the window's first stream token is never scored from the prefix alone
    return [Window(0, 0)] + [Window(k * stride, ctx - 1 - later) for k in range(1, n)]


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass
class EvalResult:
    model: str
    ref: str | None
    data: list[str]
    tokenizer: str
    ctx: int
    stride: int
    windows: int
    data_tokens: int              # tokens in the whole data stream
    tokens: int                   # tokens scored
    seconds: float
    ppl: float
    ln_ppl_se: float              # standard error of ln PPL (mean negative log-likelihood)
    ref_ppl: float | None = None
    ref_ln_ppl_se: float | None = None
    delta_ppl: float | None = None        # PPL(model) - PPL(ref)
    delta_ppl_pct: float | None = None    # 100 * delta_ppl / PPL(ref)
    ln_ppl_ratio: float | None = None     # ln(PPL(model) / PPL(ref)), the mean per-token NLL difference
    ln_ppl_ratio_se: float | None = None
    kl_mean: float | None = None          # KL(ref || model) per token, nats
    kl_se: float | None = None
    kl_median: float | None = None
    kl_p90: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1: float | None = None             # fraction of tokens where both argmaxes agree
    top1_se: float | None = None
    skipped_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report(self) -> str:
        name = Path(self.model).name
        lines = [f"edgekit eval: {name}" + (f" vs reference {Path(self.ref).name}" if self.ref else ""),
                 f"  data         {_describe_files(self.data)}, {self.data_tokens:,} tokens "
                 f"(tokenizer: {self.tokenizer})",
                 f"  windows      {self.windows} x {self.ctx} tokens, stride {self.stride}: {self.tokens:,} tokens "
                 f"scored in {self.seconds:.1f} s"]
        if self.skipped_files:
            lines.append(f"  skipped      {len(self.skipped_files)} unreadable file(s): "
                         + ", ".join(self.skipped_files[:3]) + (" ..." if len(self.skipped_files) > 3 else ""))
        lines.append(f"  perplexity   {self.ppl:.4f} ± {self.ppl * self.ln_ppl_se:.4f}")
        if self.ref is not None:
            lines += [
                f"  reference    {self.ref_ppl:.4f} ± {self.ref_ppl * self.ref_ln_ppl_se:.4f}",
                f"  ΔPPL         {self.delta_ppl:+.4f} ({self.delta_ppl_pct:+.3f} %), "
                f"ln(PPL/PPL_ref) {self.ln_ppl_ratio:+.5f} ± {self.ln_ppl_ratio_se:.5f}",
                f"  KL(ref||model) mean {self.kl_mean:.6f} ± {self.kl_se:.6f}, median {self.kl_median:.6f}, "
                f"p90 {self.kl_p90:.6f}, p99 {self.kl_p99:.6f}, max {self.kl_max:.6f}",
                f"  top-1 agreement {100 * self.top1:.3f} % ± {100 * self.top1_se:.3f} %",
            ]
        return "\n".join(lines)


def _describe_files(files: list[str]) -> str:
    return files[0] if len(files) == 1 else f"{len(files)} files"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)  # float64: KL of near-identical distributions is a difference of close numbers
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


class _Accumulator:
    """Per scored token: NLL of model and reference, KL and top-1 agreement (a few floats, never logits)."""

    def __init__(self) -> None:
        self.nll: list[np.ndarray] = []
        self.ref_nll: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self._sum, self._n = 0.0, 0

    def add(self, logits: np.ndarray, ref_logits: np.ndarray | None, targets: np.ndarray) -> None:
        step = max(1, _CHUNK_ELEMS // logits.shape[1])
        for a in range(0, len(targets), step):
            t = targets[a:a + step]
            rows = np.arange(len(t))
            lm = _log_softmax(logits[a:a + step])
            self.nll.append(-lm[rows, t])
            self._sum, self._n = self._sum + float(self.nll[-1].sum()), self._n + len(t)
            if ref_logits is None:
                continue
            lr = _log_softmax(ref_logits[a:a + step])
            self.ref_nll.append(-lr[rows, t])
            # rounding can leave -1e-17 where the distributions are equal: KL is never negative
            self.kl.append(np.maximum((np.exp(lr) * (lr - lm)).sum(axis=1), 0.0))
            self.top1.append(lm.argmax(axis=1) == lr.argmax(axis=1))

    def running_ppl(self) -> float:
        return math.exp(self._sum / self._n) if self._n else float("nan")


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


# ---------------------------------------------------------------------------------------------
# Entry point


def evaluate(model_path: str | Path, data_paths: str | Path | Sequence[str | Path], *, ref: str | Path | None = None,
             ctx: int = 512, stride: int | None = None, max_windows: int | None = None,
             tokenizer: str | Path | None = None, progress: bool = True) -> EvalResult:
    """Perplexity of model_path on the data; with ref, also ΔPPL, KL(ref || model) and top-1 agreement."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    model_path = Path(model_path)
    ref_path = Path(ref) if ref is not None else None
    if ctx < 2:
        raise EdgekitError(f"--ctx must be at least 2 tokens, got {ctx}")
    if max_windows is not None and max_windows < 1:
        raise EdgekitError(f"--max-windows must be at least 1, got {max_windows}")
    _check_model_path(model_path)
    if ref_path is not None:
        _check_model_path(ref_path)

    # Data errors first: they are cheap to find, models are not cheap to load.
    data = read_data(data_paths)
    tok = _choose_tokenizer(model_path, ref_path, Path(tokenizer) if tokenizer is not None else None)
    stream = token_stream(tok, data.texts)
    text = ctx - len(tok.prefix)
    if text < 2:
        raise EdgekitError(f"--ctx {ctx} leaves no room for text after the tokenizer's {len(tok.prefix)} "
                           "prefix token(s)")
    stride = text if stride is None else stride
    if not 1 <= stride <= ctx:
        raise EdgekitError(f"--stride must be between 1 and --ctx ({ctx}), got {stride}")
    windows = plan_windows(len(stream), ctx, stride, len(tok.prefix), max_windows)
    if not windows:
        names = ", ".join(map(str, data.files[:3])) + (" ..." if len(data.files) > 3 else "")
        bos = f" ({len(tok.prefix)} BOS + {text} of text)" if tok.prefix else ""
        raise EdgekitError(f"{names}: the text is {len(stream)} tokens, shorter than one window of {ctx} "
                           f"tokens{bos}; give more text or a smaller --ctx")

    model = ref_model = None
    try:
        model = open_model(model_path, ctx=ctx)
        ref_model = open_model(ref_path, ctx=ctx) if ref_path is not None else None
        _check_vocab(tok, model, ref_model)
        too_big = max(stream) if stream else 0
        for b in (model, ref_model):
            if b is not None and too_big >= b.vocab_size:
                raise EdgekitError(f"tokenizer mismatch: {tok.name} gives token id {too_big} but {b.path} has "
                                   f"only {b.vocab_size} tokens")
        acc = _Accumulator()
        bar = tqdm(windows, desc="eval", unit="window", file=sys.stderr, leave=False, dynamic_ncols=True,
                   disable=None if progress else True)
        for i, w in enumerate(bar):
            tokens = tok.prefix + stream[w.start:w.start + text]
            targets = np.asarray(tokens[w.first_row + 1:], dtype=np.int64)
            logits = model.logits(tokens)[w.first_row:-1]
            ref_logits = ref_model.logits(tokens)[w.first_row:-1] if ref_model is not None else None
            for b, lg in ((model, logits), (ref_model, ref_logits)):
                if lg is not None and not np.isfinite(lg).all():
                    raise EdgekitError(f"{b.path}: the model gives non-finite logits (window {i + 1})")
            acc.add(logits, ref_logits, targets)
            del logits, ref_logits
            if i % 8 == 7:
                bar.set_postfix_str(f"ppl {acc.running_ppl():.3f}", refresh=False)
        bar.close()
    finally:
        for b in (model, ref_model):
            if b is not None:
                b.close()

    nll = np.concatenate(acc.nll)
    result = EvalResult(
        model=str(model_path), ref=str(ref_path) if ref_path is not None else None,
        data=[str(f) for f in data.files], tokenizer=tok.name, ctx=ctx, stride=stride, windows=len(windows),
        data_tokens=len(stream), tokens=len(nll), seconds=0.0, ppl=math.exp(float(nll.mean())), ln_ppl_se=_se(nll),
        skipped_files=[str(f) for f in data.skipped])
    if ref_model is not None:
        ref_nll, kl, top1 = np.concatenate(acc.ref_nll), np.concatenate(acc.kl), np.concatenate(acc.top1)
        diff = nll - ref_nll
        p = float(top1.mean())
        result.ref_ppl = math.exp(float(ref_nll.mean()))
        result.ref_ln_ppl_se = _se(ref_nll)
        result.delta_ppl = result.ppl - result.ref_ppl
        result.delta_ppl_pct = 100 * result.delta_ppl / result.ref_ppl
        result.ln_ppl_ratio, result.ln_ppl_ratio_se = float(diff.mean()), _se(diff)
        result.kl_mean, result.kl_se = float(kl.mean()), _se(kl)
        result.kl_median, result.kl_p90, result.kl_p99 = (float(q) for q in np.quantile(kl, [0.5, 0.9, 0.99]))
        result.kl_max = float(kl.max())
        result.top1, result.top1_se = p, math.sqrt(p * (1 - p) / len(top1))
    result.seconds = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------
# Helpers


def _load_llama(path: Path, **kw: Any) -> Any:
    """A llama_cpp.Llama, quietly: llama-cpp-python's log callback prints warnings (e.g. about a vocab-only
    context) to sys.stderr even with verbose=False, so they are captured and shown only if loading fails."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise EdgekitError(f"{path}: evaluating a .gguf needs llama-cpp-python "
                           "(pip install 'edgekit[llama]')") from None
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):
            return Llama(model_path=str(path), verbose=False, **kw)
    except (ValueError, RuntimeError) as e:
        why = [ln.strip() for ln in log.getvalue().splitlines() if ln.strip()]
        raise EdgekitError(f"{path}: llama.cpp cannot load the model ({why[-1] if why else _first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
