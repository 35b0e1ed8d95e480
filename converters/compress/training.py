"""Pieces shared by edgekit's training loops (QAT and distillation): data windows, the KL term, the LR
schedule and held-out scoring."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.io.text import text_windows

SCHEDULES = ("cosine", "linear", "constant")


def lr_schedule(steps: int, warmup: float, kind: str = "cosine", min_ratio: float = 0.0) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over `warmup` x steps (at least one step), then cosine or linear decay
    from 1 to min_ratio at the last step, or constant."""
    if kind not in SCHEDULES:
        raise EdgekitError(f"LR schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    warm = max(1, round(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, steps - warm))
        if kind == "constant":
            return 1.0
        decay = 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else 1 - t
        return min_ratio + (1 - min_ratio) * decay
    return factor


def kl_divergence(target_logp: Any, logp: Any) -> Any:
    """Mean over positions of KL(target || model) = sum_v p_t (log p_t - log p_m), from log-probabilities."""
    return (target_logp.exp() * (target_logp - logp)).sum(-1).mean()


def heldout_stats(model: Any, teacher: Any, windows: Sequence[Sequence[int]]) -> tuple[float, float]:
    """(perplexity of model, mean KL(teacher || model)) over every position of every window after its first."""
    import torch

    nll, kl, n = 0.0, 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([list(w)], device=device)
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            target = logp if teacher is model else torch.log_softmax(teacher(ids).logits[0, :-1].float(), dim=-1)
            nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
            kl += float(kl_divergence(target, logp)) * logp.shape[0]
            n += logp.shape[0]
    return math.exp(nll / n), kl / n


def train_heldout_windows(tokenizer_dir: Path, data: Sequence[Path], seq_len: int, heldout: int, train: int,
                          what: str) -> tuple[list[list[int]], list[list[int]]]:
    """(training windows, held-out windows): consecutive seq_len-token windows of the text's token stream, each
    starting with the tokenizer's own prefix (BOS). The first `heldout` are held out (the same ones however long
    the training is); only as much text is tokenized as `train` more windows need."""
    windows = text_windows(Path(tokenizer_dir), data, seq_len, heldout + train)
    need = heldout + 1
    if len(windows) < need:
        raise EdgekitError(f"{', '.join(map(str, data))}: too little text for {what}: it makes {len(windows)} "
                           f"windows of {seq_len} tokens; need at least {need} ({heldout} held out + 1 to train on)")
    return windows[heldout:], windows[:heldout]
