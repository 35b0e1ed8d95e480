"""Quantization-aware training for the .pte path: torchao prepare -> short fine-tune -> convert.

`prepare` swaps each Linear for a fake-quantized one that rounds its weights to the final int4 groups and its
inputs to per-token int8 in the forward pass (straight-through gradients), so the fine-tune sees exactly the
error the exported 8da4w program will have. `convert` then quantizes the tuned weights for real.

The fine-tune distils from the untouched float model (loss = KL(float || fake-quantized), temperature 1)
instead of training on the text's next tokens: the goal is to get back what quantization lost, not to
train the model further on the calibration text, and a perplexity after QAT below the float model's
would then mean overfitting, not recovery. The calibration text is cut into windows of `seq_len`
tokens; the first `heldout_windows` are never trained on and give the perplexities in the report. Windows
are reused, in the same shuffled order, when the steps need more than the text has.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.converters.compress.training import heldout_stats, kl_divergence, lr_schedule, train_heldout_windows
from edgekit.errors import EdgekitError


@dataclass
class QatConfig:
    data: list[Path]                 # calibration text: files, or directories of .txt/.py files
    steps: int = 100                 # optimizer steps
    lr: float = 1e-4                 # peak AdamW learning rate (linear warmup over 10% of steps, cosine decay)
    seq_len: int = 256               # tokens per training window (BOS included when the tokenizer adds one)
    batch_size: int = 4              # windows per step
    heldout_windows: int = 16        # windows kept out of training for the before/after perplexities
    seed: int = 0


@dataclass
class QatReport:
    steps: int
    trained_tokens: int
    heldout_tokens: int
    seconds: float
    ppl_float: float                 # the float model on the held-out windows
    ppl_before: float                # fake-quantized, before the fine-tune (what plain 8da4w gives)
    ppl_after: float                 # fake-quantized, after it
    kl_before: float                 # mean KL(float || fake-quantized) per held-out token, before
    kl_after: float                  # the same after: what the fine-tune minimises
    losses: list[float] = field(default_factory=list)  # KL per step

    def summary(self) -> str:
        def pct(p: float) -> str:
            return f"{100 * (p / self.ppl_float - 1):+.2f} %"

        return (f"QAT: {self.steps} steps on {self.trained_tokens:,} tokens in {self.seconds:.0f} s; held-out PPL "
                f"(on {self.heldout_tokens:,} tokens): float {self.ppl_float:.3f}, int4 before "
                f"{self.ppl_before:.3f} ({pct(self.ppl_before)}), after {self.ppl_after:.3f} ({pct(self.ppl_after)}); "
                f"KL to float {self.kl_before:.5f} -> {self.kl_after:.5f}")


# (torchao base config, names of the Linear modules it applies to)
LinearPlan = list[tuple[Any, set[str]]]


def quantization_aware_finetune(model: Any, plan: LinearPlan, tokenizer_dir: Path, cfg: QatConfig, *,
                                log: Callable[[str], None] | None = None, progress: bool = True) -> QatReport:
    """Fine-tune `model` (float, in place) against fake quantization per `plan`, then convert it.

    On return the Linear layers of `plan` hold real torchao-quantized weights, as plain PTQ would leave
    them; everything else is still float and tuned."""
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from tqdm import tqdm

    log = log or (lambda _msg: None)
    check_config(cfg)
    train, heldout = train_heldout_windows(tokenizer_dir, cfg.data, cfg.seq_len, cfg.heldout_windows,
                                           cfg.steps * cfg.batch_size, "QAT")
    t0 = time.perf_counter()
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def apply(step: str) -> None:
        for base, names in plan:
            quantize_(model, QATConfig(base, step=step),
                      filter_fn=lambda m, fqn, names=names: isinstance(m, torch.nn.Linear) and fqn in names)

    log(f"QAT: measuring the float model on {len(heldout)} held-out windows")
    ppl_float, _ = heldout_stats(teacher, teacher, heldout)
    apply("prepare")
    model.eval()  # no dropout; gradients still flow
    ppl_before, kl_before = heldout_stats(model, teacher, heldout)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.steps, warmup=0.1))
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train), generator=gen).tolist()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="QAT", unit="step", file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=None if progress else True)
    for step in bar:
        ids = torch.tensor([train[order[(step * cfg.batch_size + i) % len(order)]] for i in range(cfg.batch_size)])
        with torch.no_grad():
            target = torch.log_softmax(teacher(ids).logits.float(), dim=-1)
        logp = torch.log_softmax(model(ids).logits.float(), dim=-1)
        loss = kl_divergence(target, logp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(kl=f"{losses[-1]:.4f}")
    bar.close()
    for p in params:
        p.requires_grad_(False)
    del opt
    ppl_after, kl_after = heldout_stats(model, teacher, heldout)
    del teacher
    apply("convert")
    return QatReport(steps=cfg.steps, trained_tokens=cfg.steps * cfg.batch_size * cfg.seq_len,
                     heldout_tokens=len(heldout) * (cfg.seq_len - 1), seconds=time.perf_counter() - t0,
                     ppl_float=ppl_float, ppl_before=ppl_before, ppl_after=ppl_after, kl_before=kl_before,
                     kl_after=kl_after, losses=losses)


def check_config(cfg: QatConfig) -> None:
    """Bad options and missing data are reported before any model is loaded."""
    for path in cfg.data:
        if not Path(path).exists():
            raise EdgekitError(f"{path}: data not found")
    for name in ("steps", "batch_size", "heldout_windows"):
        if getattr(cfg, name) < 1:
            raise EdgekitError(f"QAT {name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.seq_len < 8:
        raise EdgekitError(f"QAT sequence length must be at least 8 tokens, got {cfg.seq_len}")
    if not cfg.lr > 0:
        raise EdgekitError(f"QAT learning rate must be positive, got {cfg.lr}")
