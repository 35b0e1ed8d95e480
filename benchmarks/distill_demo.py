"""Does distillation beat training on hard labels, and how much of pruning's loss does it win back?

On the demo teacher (a 5.8M-param Llama trained on the Python standard library), every run sees the same
batches of the demo's *training* split (same seed, same steps, same tokens, same LR schedule); every
perplexity is on the demo's *held-out* split (files never trained on), 200 windows of 256 tokens, scored by
`edgekit.eval` on the saved student (stored in fp16, as the teacher is).

1. A student about half the teacher's size (4 layers instead of 6, FFN 384 instead of 768), randomly
   initialised, trained for N steps from scratch on hard labels (alpha = 0) vs distilled from the teacher
   (alpha, T below).
2. The teacher pruned to 50 % of its FFN channels (activation importance), then distilled for N steps; and,
   as a control, the same pruned model fine-tuned on hard labels for the same N steps.

    python benchmarks/distill_demo.py            # writes benchmarks/results/distill_demo.md
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from report import write_report  # benchmarks/report.py (scripts run from this folder)

from edgekit.converters.compress.distill import DistillConfig, distill
from edgekit.converters.compress.prune import PruneConfig, prune
from edgekit.demo import corpus, model_dir
from edgekit.eval import EvalConfig, evaluate

HALF = {"num_hidden_layers": 4, "intermediate_size": 384}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--beta", type=float, default=0.5, help="representation-loss weight of the third student")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak LR for the fresh students")
    ap.add_argument("--lr-pruned", type=float, default=5e-4, help="peak LR for the pruned teacher")
    ap.add_argument("--max-windows", type=int, default=200, help="held-out windows per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-distill-demo"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "distill_demo.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher = model_dir()
    train, heldout = corpus.split()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)

    def score(path: Path) -> tuple[float, float, float]:
        """(held-out PPL, mean KL(teacher || model), top-1 agreement with the teacher)."""
        r = evaluate(path, EvalConfig(data=heldout, ref=teacher, ctx=256, max_windows=args.max_windows), progress=False)
        return r.ppl, r.kl_mean, r.top1

    def train_student(name: str, student, alpha: float, lr: float, beta: float = 0.0):
        cfg = DistillConfig(data=train, eval_data=heldout, steps=args.steps, batch_size=args.batch_size, lr=lr,
                            alpha=alpha, temperature=args.temperature, beta=beta, heldout_windows=8,
                            weight_decay=0.1)
        r = distill(teacher, args.work_dir / name, replace(cfg, student=student),
                    progress=False, log=lambda m: print(f"{name}: {m}", flush=True))
        print(r.summary(), flush=True)
        return r, score(args.work_dir / name)

    p_teacher = evaluate(teacher, EvalConfig(data=heldout, ctx=256, max_windows=args.max_windows), progress=False).ppl
    n_teacher = sum(p.numel() for p in _params(teacher))
    print(f"teacher: {n_teacher / 1e6:.2f}M params, held-out PPL {p_teacher:.3f}", flush=True)

    scratch, s_scratch = train_student("half-scratch", HALF, 0.0, args.lr)
    kd, s_kd = train_student("half-distilled", HALF, args.alpha, args.lr)
    rep, s_rep = train_student("half-distilled-rep", HALF, args.alpha, args.lr, beta=args.beta)

    pr = prune(teacher, args.work_dir / "pruned", PruneConfig(ffn=0.5, data=train, max_tokens=16384))
    print(pr.summary(), flush=True)
    s_pruned = score(args.work_dir / "pruned")
    ft, s_ft = train_student("pruned-hard-labels", args.work_dir / "pruned", 0.0, args.lr_pruned)
    pkd, s_pkd = train_student("pruned-distilled", args.work_dir / "pruned", args.alpha, args.lr_pruned)

    tokens = args.steps * args.batch_size * 256

    def cols(s: tuple[float, float, float], bold: bool = False) -> str:
        b = "**" if bold else ""
        return f"{b}{s[0]:.3f}{b} | {100 * (s[0] / p_teacher - 1):+.1f} % | {s[1]:.4f} | {100 * s[2]:.1f} %"

    lines = [
        "# Distillation on the demo teacher",
        "",
        f"Command: `python benchmarks/distill_demo.py --steps {args.steps}`. Every training run: {args.steps} steps x "
        f"{args.batch_size} sequences x 256 tokens = {tokens:,} tokens of the demo's training split, the same batches "
        f"in the same order, AdamW (peak LR below, 5 % warmup, cosine to 10 %, weight decay 0.1). Distilled runs: "
        f"alpha {args.alpha}, T {args.temperature}, i.e. loss = {1 - args.alpha:.1f} x CE + {args.alpha} x T^2 x "
        "KL(teacher_T || student_T). Perplexity: the demo's held-out split, "
        f"{args.max_windows} windows of 256 tokens, on the saved fp16 students.",
        "",
        "## A student half the teacher's size, from scratch vs distilled",
        "",
        "| model | params | training | held-out PPL | vs teacher | KL to teacher | top-1 = teacher |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
        f"| teacher (6 layers, FFN 768) | {n_teacher / 1e6:.2f}M | 4.9M tokens (its own training) | "
        f"{p_teacher:.3f} | | | |",
        f"| student (4 layers, FFN 384), hard labels | {scratch.params_student / 1e6:.2f}M | {args.steps} steps, "
        f"LR {args.lr:g} | {cols(s_scratch)} |",
        f"| student (4 layers, FFN 384), **distilled** | {kd.params_student / 1e6:.2f}M | {args.steps} steps, "
        f"LR {args.lr:g} | {cols(s_kd, True)} |",
        f"| student, distilled + hidden states (beta {args.beta:g}) | {rep.params_student / 1e6:.2f}M | "
        f"{args.steps} steps, LR {args.lr:g} | {cols(s_rep)} |",
        "",
        f"Distillation lowers the student's held-out perplexity by {100 * (1 - s_kd[0] / s_scratch[0]):.1f} % "
        "against training on hard labels with the same steps and tokens.",
        "",
        "## The teacher pruned to 50 % FFN, then distilled",
        "",
        "| model | params | held-out PPL | vs teacher | KL to teacher | top-1 = teacher |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| teacher, before pruning | {n_teacher / 1e6:.2f}M | {p_teacher:.3f} | | | |",
        f"| right after pruning (FFN 768 -> {pr.ffn[1]}, activation importance) | {pr.params_after / 1e6:.2f}M | "
        f"{cols(s_pruned)} |",
        f"| pruned + hard labels, {args.steps} steps (control), LR {args.lr_pruned:g} | "
        f"{ft.params_student / 1e6:.2f}M | {cols(s_ft)} |",
        f"| pruned + **distilled**, {args.steps} steps, LR {args.lr_pruned:g} | {pkd.params_student / 1e6:.2f}M | "
        f"{cols(s_pkd, True)} |",
        "",
        "The teacher saw 4.9M tokens in its own training and is not converged, so any further training on the "
        "same kind of text can take a pruned model below the teacher's perplexity; the fair comparison is the "
        "distilled row against the control with the same steps and tokens. KL and top-1 are measured against "
        "the teacher, token by token: how faithfully the student reproduces it.",
        "",
        f"Training speed (CPU, {args.threads} threads, {platform.processor() or platform.machine()}): "
        f"hard labels {tokens / scratch.seconds:,.0f} tok/s, distilled (teacher forward included) "
        f"{tokens / kd.seconds:,.0f} tok/s for the half-size student. Whole benchmark "
        f"{time.perf_counter() - t0:.0f} s.",
    ]
    write_report(args.out, lines)


def _params(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).parameters()


if __name__ == "__main__":
    main()
