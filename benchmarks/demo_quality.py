"""What each compression step costs the demo teacher, measured on its held-out split.

For every scheme: size, bits/weight, perplexity, ΔPPL, KL(original || quantized) and top-1
agreement against the original HF model, for edgekit's quantizer and, next to it, llama.cpp's own
(`llama_model_quantize`) run on the same F16 GGUF. The imatrix is collected from training-split
text only (never the held-out files).

    python benchmarks/demo_quality.py            # writes benchmarks/results/demo_quality.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from report import write_report  # benchmarks/report.py (scripts run from this folder)

from edgekit.converters.gguf import imatrix
from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
from edgekit.demo import corpus, model_dir
from edgekit.eval import EvalConfig, evaluate
from edgekit.inspect.gguf import inspect_gguf
from edgekit.runtime.backends.llamacpp import quantize as llama_quantize

SCHEMES = ["f16", "q8_0", "q6_k", "q4_k_m", "q4_k"]
IMATRIX_SCHEMES = ["q4_k_m", "q4_k"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-demo-quality"))
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=200, help="windows per model (the .pte runs a token per call)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_quality.md")
    args = ap.parse_args()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    demo = model_dir()
    train_files, heldout = corpus.split()

    # Calibration: the start of the training split, written out as one text file.
    calib = work / "calib.txt"
    calib.write_text("".join(corpus.lines(train_files, 400_000)))
    stats = imatrix.collect_file(demo, calib, ctx=args.ctx, max_chunks=128, progress=False)
    im_path = imatrix.save(work / "demo.imatrix.gguf", stats, dataset=calib.name, ctx=args.ctx)
    importance = imatrix.importance(stats)

    f16 = work / "edgekit-f16.gguf"
    write_gguf(demo, f16, GGUFConfig(quant="f16"), progress=False)
    files: list[tuple[str, str, Path]] = []
    for scheme in SCHEMES:
        ours = f16 if scheme == "f16" else work / f"edgekit-{scheme}.gguf"
        if scheme != "f16":
            write_gguf(demo, ours, GGUFConfig(quant=scheme), progress=False)
        files.append((scheme, "edgekit", ours))
        if scheme != "f16":
            files.append((scheme, "llama.cpp", llama_quantize(f16, work / f"llama-{scheme}.gguf", scheme)))
    for scheme in IMATRIX_SCHEMES:
        ours = work / f"edgekit-{scheme}-imatrix.gguf"
        write_gguf(demo, ours, GGUFConfig(quant=scheme, imatrix=im_path), progress=False)
        files.append((f"{scheme} + imatrix", "edgekit", ours))
        theirs = llama_quantize(f16, work / f"llama-{scheme}-imatrix.gguf", scheme, importance=importance)
        files.append((f"{scheme} + imatrix", "llama.cpp", theirs))

    from edgekit.converters.pte.export import PteConfig, export_pte

    for label, emb in (("8da4w (.pte)", None), ("8da4w + 4w embeddings (.pte)", "4w")):
        pte = work / f"demo-8da4w{'-emb4w' if emb else ''}" / "model.pte"  # one dir each: tokenizer sidecars
        pte.parent.mkdir(exist_ok=True)
        export_pte(demo, pte, PteConfig(quant="8da4w", group_size=32, embedding_quant=emb, max_seq_len=args.ctx))
        files.append((label, "ExecuTorch", pte))

    base = evaluate(demo, EvalConfig(data=heldout, ctx=args.ctx, max_windows=args.max_windows), progress=False)
    rows = []
    for scheme, tool, path in files:
        t = time.perf_counter()
        r = evaluate(path, EvalConfig(data=heldout, ref=demo, ctx=args.ctx, max_windows=args.max_windows),
                     progress=False)
        rows.append((scheme, tool, path, r))
        print(f"{scheme:<18} {tool:<9} PPL {r.ppl:.3f}  ΔPPL {r.delta_ppl_pct:+.2f}%  KL {r.kl_mean:.5f}  "
              f"top-1 {100 * r.top1:.2f}%  ({time.perf_counter() - t:.0f} s)", file=sys.stderr)

    info = json.loads((demo / "training.json").read_text())
    mib = 1 << 20
    lines = [
        "# Demo teacher: what each quantization costs (held-out split)",
        "",
        "`python benchmarks/demo_quality.py`",
        "",
        f"Model: the built-in demo teacher ({info['params'] / 1e6:.2f} M params, Llama architecture, "
        f"{info['vocab']}-token byte-level BPE), trained {info['train_seconds']:.0f} s on "
        f"{info['train_files']} standard-library files. Held out: {len(heldout)} files, "
        f"{base.data_tokens:,} tokens; {base.windows} windows of {args.ctx} tokens, {base.tokens:,} tokens scored.",
        f"Reference: the original HF checkpoint (fp16 weights run in fp32 by transformers), PPL {base.ppl:.3f}.",
        "KL = mean KL(original || quantized) of next-token distributions, nats/token. imatrix: "
        f"{calib.stat().st_size // 1000} kB of training-split text, {args.ctx}-token chunks.",
        "",
        "bits/weight of a .pte is its file size over the parameter count (the program has no per-tensor table).",
        "",
        "| scheme | quantized by | size (MiB) | bits/weight | PPL | ΔPPL | mean KL | top-1 agreement |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    n_params = info["params"]
    for scheme, tool, path, r in rows:
        bpw = inspect_gguf(path)["bits_per_weight"] if path.suffix == ".gguf" else 8 * path.stat().st_size / n_params
        lines.append(f"| {scheme} | {tool} | {path.stat().st_size / mib:.2f} | {bpw:.2f} | {r.ppl:.3f} | "
                     f"{r.delta_ppl_pct:+.2f}% | {r.kl_mean:.5f} | {100 * r.top1:.2f}% |")
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
