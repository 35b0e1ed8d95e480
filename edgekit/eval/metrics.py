"""What `edgekit eval` computes: the windows it scores, and per scored token the negative log-likelihood of
model and reference, KL(ref || model) and top-1 agreement, summed up with standard errors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# float64 rows are processed this many elements at a time (32 MiB per array), whatever the vocabulary.
CHUNK_ELEMS = 1 << 22


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
    tokens: int = 0               # tokens scored
    seconds: float = 0.0
    ppl: float = float("nan")
    ln_ppl_se: float = float("nan")  # standard error of ln PPL (mean negative log-likelihood)
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


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)  # float64: KL of near-identical distributions is a difference of close numbers
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


class Accumulator:
    """Per scored token: NLL of model and reference, KL and top-1 agreement (a few floats, never logits)."""

    def __init__(self) -> None:
        self.nll: list[np.ndarray] = []
        self.ref_nll: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self._sum, self._n = 0.0, 0

    def add(self, logits: np.ndarray, ref_logits: np.ndarray | None, targets: np.ndarray) -> None:
        step = max(1, CHUNK_ELEMS // logits.shape[1])
        for a in range(0, len(targets), step):
            t = targets[a:a + step]
            rows = np.arange(len(t))
            lm = log_softmax(logits[a:a + step])
            self.nll.append(-lm[rows, t])
            self._sum, self._n = self._sum + float(self.nll[-1].sum()), self._n + len(t)
            if ref_logits is None:
                continue
            lr = log_softmax(ref_logits[a:a + step])
            self.ref_nll.append(-lr[rows, t])
            # rounding can leave -1e-17 where the distributions are equal: KL is never negative
            self.kl.append(np.maximum((np.exp(lr) * (lr - lm)).sum(axis=1), 0.0))
            self.top1.append(lm.argmax(axis=1) == lr.argmax(axis=1))

    def running_ppl(self) -> float:
        return math.exp(self._sum / self._n) if self._n else float("nan")

    def fill(self, result: EvalResult) -> None:
        """The statistics of every token added so far, written into result."""
        nll = np.concatenate(self.nll)
        result.tokens, result.ppl, result.ln_ppl_se = len(nll), math.exp(float(nll.mean())), standard_error(nll)
        if not self.kl:
            return
        ref_nll, kl, top1 = np.concatenate(self.ref_nll), np.concatenate(self.kl), np.concatenate(self.top1)
        diff = nll - ref_nll
        p = float(top1.mean())
        result.ref_ppl = math.exp(float(ref_nll.mean()))
        result.ref_ln_ppl_se = standard_error(ref_nll)
        result.delta_ppl = result.ppl - result.ref_ppl
        result.delta_ppl_pct = 100 * result.delta_ppl / result.ref_ppl
        result.ln_ppl_ratio, result.ln_ppl_ratio_se = float(diff.mean()), standard_error(diff)
        result.kl_mean, result.kl_se = float(kl.mean()), standard_error(kl)
        result.kl_median, result.kl_p90, result.kl_p99 = (float(q) for q in np.quantile(kl, [0.5, 0.9, 0.99]))
        result.kl_max = float(kl.max())
        result.top1, result.top1_se = p, math.sqrt(p * (1 - p) / len(top1))


def standard_error(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
