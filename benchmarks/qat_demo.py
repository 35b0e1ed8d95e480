"""Does quantization-aware training win back what int4 costs? The demo teacher as 8da4w .pte files, plain
(post-training quantization) vs QAT, scored in the ExecuTorch runtime on the demo's held-out split.

QAT fine-tunes on the demo's *training* files only (distilling from the float model, see
converters/pte/qat.py); the held-out files are never seen.

    python benchmarks/qat_demo.py            # writes benchmarks/results/qat_demo.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from report import write_report  # benchmarks/report.py (scripts run from this folder)

from edgekit.converters.pte.export import PteConfig, export_pte
from edgekit.converters.pte.qat import QatConfig
from edgekit.demo import corpus, model_dir
from edgekit.eval import EvalConfig, evaluate

# (label, group size, embedding scheme)
SCHEMES = [("8da4w g32", 32, None), ("8da4w g128 + 4w embeddings", 128, "4w")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-qat-demo"))
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=100, help="held-out windows per model")
    ap.add_argument("--steps", type=int, default=QatConfig(data=[]).steps)
    ap.add_argument("--lr", type=float, default=QatConfig(data=[]).lr)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "qat_demo.md")
    args = ap.parse_args()
    demo = model_dir()
    train, heldout = corpus.split()
    qat = QatConfig(data=train, steps=args.steps, lr=args.lr)

    base = evaluate(demo, EvalConfig(data=heldout, ctx=args.ctx, max_windows=args.max_windows), progress=False)
    rows = []
    for label, group, emb in SCHEMES:
        for method in ("PTQ", "QAT"):
            pte = args.work_dir / f"{label.replace(' ', '_').replace('+', '')}-{method}" / "model.pte"
            pte.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            cfg = PteConfig(quant="8da4w", group_size=group, embedding_quant=emb, max_seq_len=args.ctx,
                            qat=qat if method == "QAT" else None)
            res = export_pte(demo, pte, cfg, progress=False)
            seconds = time.perf_counter() - t
            r = evaluate(pte, EvalConfig(data=heldout, ref=demo, ctx=args.ctx, max_windows=args.max_windows),
                         progress=False)
            rows.append((label, method, res, seconds, r))
            print(f"{label:<28} {method} PPL {r.ppl:.3f} ({r.delta_ppl_pct:+.2f} %) KL {r.kl_mean:.5f} "
                  f"top-1 {100 * r.top1:.2f} %  export {seconds:.0f} s", file=sys.stderr)
            if res.qat:
                print("  " + res.qat.summary(), file=sys.stderr)

    lines = [
        "# QAT on the demo teacher: 8da4w .pte, plain vs quantization-aware",
        "",
        f"`python benchmarks/qat_demo.py --steps {args.steps} --lr {args.lr:g}`",
        "",
        f"QAT: {args.steps} steps of {qat.batch_size} x {qat.seq_len} tokens from the demo's training files, "
        f"AdamW at peak lr {args.lr:g} (warmup + cosine), loss KL(float || fake-quantized).",
        f"Scored: the .pte in the ExecuTorch runtime on the held-out split, {base.windows} windows of {args.ctx} "
        f"tokens ({base.tokens:,} tokens), against the float HF model (PPL {base.ppl:.3f}).",
        "",
        "| scheme | method | size (MiB) | PPL | ΔPPL | mean KL | top-1 agreement | export time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, method, res, seconds, r in rows:
        lines.append(f"| {label} | {method} | {res.file_bytes / (1 << 20):.2f} | {r.ppl:.3f} | "
                     f"{r.delta_ppl_pct:+.2f}% | {r.kl_mean:.5f} | {100 * r.top1:.2f}% | {seconds:.0f} s |")
    qat_rows = [(label, res.qat) for label, _, res, _, _ in rows if res.qat]
    lines += ["", "QAT's own held-out windows (the first 16 windows of its training text, never trained on):", ""]
    lines += [f"- {label}: {q.summary()}" for label, q in qat_rows]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
