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

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.eval.backends import check_model_path, check_vocab, choose_tokenizer, open_model
from edgekit.eval.metrics import Accumulator, EvalResult, plan_windows
from edgekit.io.text import read_data, token_stream
from edgekit.progress import human_bytes

__all__ = ["EvalConfig", "EvalResult", "compression_report", "evaluate"]


@dataclass
class EvalConfig:
    data: str | Path | Sequence[str | Path]  # UTF-8 text files, or directories of *.txt / *.py files
    ref: str | Path | None = None            # reference model: adds ΔPPL, KL(ref || model), top-1 agreement
    ctx: int = 512                           # tokens per window
    stride: int | None = None                # tokens between window starts; default: a whole window
    max_windows: int | None = None           # score at most this many windows
    tokenizer: str | Path | None = None      # HF tokenizer directory; default: the reference's, else the model's
    backend: str = "llamacpp"                # who runs the model's .gguf: "llamacpp" or "native" (the ref: llama.cpp)

    def check(self) -> None:
        if self.ctx < 2:
            raise EdgekitError(f"--ctx must be at least 2 tokens, got {self.ctx}")
        if self.max_windows is not None and self.max_windows < 1:
            raise EdgekitError(f"--max-windows must be at least 1, got {self.max_windows}")


def evaluate(model: str | Path, cfg: EvalConfig, *, progress: bool = True) -> EvalResult:
    """Perplexity of a model (HF directory, .gguf or .pte) on cfg.data; with cfg.ref, also ΔPPL,
    KL(ref || model) and top-1 agreement."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    model_path = Path(model)
    ref_path = Path(cfg.ref) if cfg.ref is not None else None
    ctx = cfg.ctx
    cfg.check()
    check_model_path(model_path)
    if ref_path is not None:
        check_model_path(ref_path)

    # Data errors first: they are cheap to find, models are not cheap to load.
    data = read_data(cfg.data)
    tok = choose_tokenizer(model_path, ref_path, Path(cfg.tokenizer) if cfg.tokenizer is not None else None,
                           cfg.backend)
    stream = token_stream(tok, data.texts)
    text = ctx - len(tok.prefix)
    if text < 2:
        raise EdgekitError(f"--ctx {ctx} leaves no room for text after the tokenizer's {len(tok.prefix)} "
                           "prefix token(s)")
    stride = text if cfg.stride is None else cfg.stride
    if not 1 <= stride <= ctx:
        raise EdgekitError(f"--stride must be between 1 and --ctx ({ctx}), got {stride}")
    windows = plan_windows(len(stream), ctx, stride, len(tok.prefix), cfg.max_windows)
    if not windows:
        names = ", ".join(map(str, data.files[:3])) + (" ..." if len(data.files) > 3 else "")
        bos = f" ({len(tok.prefix)} BOS + {text} of text)" if tok.prefix else ""
        raise EdgekitError(f"{names}: the text is {len(stream)} tokens, shorter than one window of {ctx} "
                           f"tokens{bos}; give more text or a smaller --ctx")

    acc = Accumulator()
    lm = ref_lm = None
    try:
        lm = open_model(model_path, ctx=ctx, backend=cfg.backend)
        ref_lm = open_model(ref_path, ctx=ctx) if ref_path is not None else None
        check_vocab(tok, lm, ref_lm)
        too_big = max(stream) if stream else 0
        for b in (lm, ref_lm):
            if b is not None and too_big >= b.vocab_size:
                raise EdgekitError(f"tokenizer mismatch: {tok.name} gives token id {too_big} but {b.path} has "
                                   f"only {b.vocab_size} tokens")
        bar = tqdm(windows, desc="eval", unit="window", file=sys.stderr, leave=False, dynamic_ncols=True,
                   disable=None if progress else True)
        for i, w in enumerate(bar):
            tokens = tok.prefix + stream[w.start:w.start + text]
            targets = np.asarray(tokens[w.first_row + 1:], dtype=np.int64)
            logits = lm.logits(tokens)[w.first_row:-1]
            ref_logits = ref_lm.logits(tokens)[w.first_row:-1] if ref_lm is not None else None
            for b, lg in ((lm, logits), (ref_lm, ref_logits)):
                if lg is not None and not np.isfinite(lg).all():
                    raise EdgekitError(f"{b.path}: the model gives non-finite logits (window {i + 1})")
            acc.add(logits, ref_logits, targets)
            del logits, ref_logits
            if i % 8 == 7:
                bar.set_postfix_str(f"ppl {acc.running_ppl():.3f}", refresh=False)
        bar.close()
    finally:
        for b in (lm, ref_lm):
            if b is not None:
                b.close()

    result = EvalResult(
        model=str(model_path), ref=str(ref_path) if ref_path is not None else None,
        data=[str(f) for f in data.files], tokenizer=tok.name, ctx=ctx, stride=stride, windows=len(windows),
        data_tokens=len(stream), skipped_files=[str(f) for f in data.skipped])
    acc.fill(result)
    result.seconds = time.perf_counter() - t0
    return result


def compression_report(source: str | Path, converted: Any, data: Sequence[str | Path], *, max_windows: int,
                       progress: bool = True) -> str:
    """What a conversion cost, in one line: size before and after, bits/weight, and accuracy against the
    source on held-out text. converted: a conversion's result (output, file_bytes, bits_per_weight)."""
    source = Path(source)
    before = (source.stat().st_size if source.is_file()
              else sum(f.stat().st_size for f in source.glob("*.safetensors")))
    r = evaluate(converted.output, EvalConfig(data=data, ref=source, ctx=256, max_windows=max_windows),
                 progress=progress)
    return (f"compression report: {human_bytes(before)} -> {human_bytes(converted.file_bytes)} "
            f"({before / converted.file_bytes:.1f}x smaller, {converted.bits_per_weight:.2f} bits/weight); on "
            f"{r.tokens:,} held-out tokens: PPL {r.ref_ppl:.3f} -> {r.ppl:.3f} ({r.delta_ppl_pct:+.2f} %), "
            f"mean KL {r.kl_mean:.5f}, top-1 agreement {100 * r.top1:.2f} %")
