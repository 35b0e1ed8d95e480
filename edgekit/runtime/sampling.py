"""edgekit's own token sampler, shared by every backend, so a seed means the same thing everywhere.

Order of the steps (llama.cpp's default chain): repetition penalty, top-k, top-p, min-p on the
untempered distribution, then temperature, then one draw. Temperature 0 is greedy (after the penalty).
The draw is inverse-CDF over the kept tokens in descending probability, from numpy's PCG64 seeded by
`seed`: the same logits and seed give the same token on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; the defaults are llama.cpp's (llama-cli, llama-server)."""

    temperature: float = 0.8
    top_k: int = 40              # 0: off
    top_p: float = 0.95          # 1.0: off
    min_p: float = 0.05          # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64      # the penalty looks at this many most recent tokens (prompt included)
    seed: int | None = None      # None: a fresh random seed
    max_tokens: int = 256
    ignore_eos: bool = False     # never sample stop tokens (fixed-length runs, as llama.cpp's --ignore-eos)

    def __post_init__(self) -> None:
        checks = [("temperature", self.temperature >= 0), ("top_k", self.top_k >= 0),
                  ("top_p", 0 < self.top_p <= 1), ("min_p", 0 <= self.min_p < 1),
                  ("repeat_penalty", self.repeat_penalty > 0), ("repeat_last_n", self.repeat_last_n >= 0),
                  ("max_tokens", self.max_tokens >= 1)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise EdgekitError(f"invalid sampling setting: {', '.join(f'{b}={getattr(self, b)}' for b in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)


GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """A copy of logits where each token seen in `recent` is made less likely: positive logits divided by
    the penalty, negative ones multiplied (llama.cpp's and transformers' rule; once per distinct token)."""
    out = np.array(logits, dtype=np.float64)
    if penalty == 1.0 or len(recent) == 0:
        return out
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < out.size)]
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def filter_mask(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
    """Boolean mask of the tokens that survive top-k, then top-p, then min-p (probabilities at temperature 1).

    top-k keeps the k largest logits (ties at the k-th value broken by lower id); top-p keeps the smallest
    set of most likely tokens whose probability reaches top_p; min-p keeps tokens with at least min_p times
    the probability of the most likely one. The most likely token always survives."""
    z = np.asarray(logits, dtype=np.float64)
    if 0 < top_k < z.size:  # only the k best need sorting (a big vocabulary costs an argsort per token)
        kth = -np.partition(-z, top_k - 1)[top_k - 1]  # the k-th largest logit
        cand = np.flatnonzero(z >= kth)  # every token tied with it too, so the cut keeps the lowest ids
        order = cand[np.lexsort((cand, -z[cand]))][:top_k]  # most likely first; equal logits by id
    else:
        order = np.argsort(-z, kind="stable")
    n = order.size
    p = np.exp(z[order[:n]] - z[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        # the first position where the running sum reaches top_p is the last one kept
        n = min(n, int(np.searchsorted(np.cumsum(p), top_p)) + 1)
        p = p[:n] / p[:n].sum()
    if min_p > 0.0:
        n = max(1, int(np.count_nonzero(p >= min_p * p[0])))
    mask = np.zeros(z.size, dtype=bool)
    mask[order[:n]] = True
    return mask


def probabilities(logits: np.ndarray, params: SamplingParams, recent: Sequence[int] = ()) -> np.ndarray:
    """The distribution a token is drawn from (all zeros but the argmax when greedy)."""
    z = apply_repeat_penalty(logits, recent[-params.repeat_last_n:] if params.repeat_last_n else (),
                             params.repeat_penalty)
    p = np.zeros(z.size)
    if params.temperature <= 0:
        p[int(np.argmax(z))] = 1.0
        return p
    keep = filter_mask(z, params.top_k, params.top_p, params.min_p)
    kept = z[keep] / params.temperature
    e = np.exp(kept - kept.max())
    p[keep] = e / e.sum()
    return p


class Sampler:
    """Draws tokens for one generation stream; holds the random state so a seed replays exactly."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else int(np.random.SeedSequence().entropy % (1 << 63))
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def __call__(self, logits: np.ndarray, recent: Sequence[int] = ()) -> int:
        p = probabilities(logits, self.params, recent)
        if self.params.temperature <= 0:
            return int(np.argmax(p))
        kept = np.flatnonzero(p)
        order = kept[np.argsort(-p[kept], kind="stable")]
        cdf = np.cumsum(p[order])
        u = self.rng.random() * cdf[-1]
        return int(order[min(int(np.searchsorted(cdf, u, side="right")), order.size - 1)])
