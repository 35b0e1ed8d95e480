"""Accuracy per bit: llama.cpp's Q4_K_M (without / with an imatrix) against edgekit's calibrated methods.

On the demo teacher (edgekit/demo: a Llama trained on the standard library's sources), every variant is a
Q4_K_M file with the same tensor types, so the sizes are equal; each is scored against the float model on
the demo's held-out files (never used for calibration): KL(float || quantized) per token (mean ± standard
error, median, p99), same-top-1 and ln(PPL ratio), plus conversion time and peak RSS (each conversion runs
in its own process). Calibration text: every CALIB_EVERY-th training file, at most CALIB_CHARS characters.

    .venv/bin/python benchmarks/accuracy_per_bit.py --work-dir /tmp/edgekit-apb

Writes benchmarks/results/accuracy_per_bit.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import gguf
from report import run_measured  # benchmarks/report.py (scripts run from this folder)

ROOT = Path(__file__).resolve().parent.parent
CALIB_EVERY, CALIB_CHARS = 10, 300_000
CTX = 256


def run(cmd: list[str], log) -> tuple[float, int]:
    """Log and run a command: (seconds, peak RSS bytes), from report.run_measured."""
    log("$ " + shlex.join(cmd))
    return run_measured(cmd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-apb"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-windows", type=int, default=160, help=f"held-out windows of {CTX} tokens")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy_per_bit.md")
    args = ap.parse_args()
    t_start = time.perf_counter()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    from edgekit.demo import corpus, model_dir
    from edgekit.eval import EvalConfig, evaluate

    src = model_dir()
    train_files, held_files = corpus.split()
    calib = "".join(corpus.read(f) + "\n" for f in train_files[::CALIB_EVERY])[:CALIB_CHARS]
    (work / "calib.txt").write_text(calib, encoding="utf-8")
    py = sys.executable
    edgekit = [py, "-m", "edgekit"]
    th = ["--threads", str(args.threads)]

    variants: list[tuple[str, Path, list[str]]] = []
    f32 = work / "f32.gguf"
    run([*edgekit, "convert", str(src), "-o", str(f32), "--quant", "f32", "-q"], log)
    im = work / "imatrix.gguf"
    im_cmd = [*edgekit, "imatrix", str(src), "--data", str(work / "calib.txt"), "-o", str(im), "-q", *th]
    im_s, im_rss = run(im_cmd, log)
    quantize = ("import sys, numpy as np; from edgekit.converters.gguf import imatrix as I; "
                "from edgekit.runtime.backends.llamacpp import quantize as Q; "
                "imp = I.load(sys.argv[3]).importance() if len(sys.argv) > 3 else None; "
                f"Q(sys.argv[1], sys.argv[2], 'q4_k_m', importance=imp, threads={args.threads})")
    variants.append(("llama.cpp Q4_K_M", work / "llamacpp.gguf",
                     [py, "-c", quantize, str(f32), str(work / "llamacpp.gguf")]))
    variants.append(("llama.cpp Q4_K_M + imatrix", work / "llamacpp-imatrix.gguf",
                     [py, "-c", quantize, str(f32), str(work / "llamacpp-imatrix.gguf"), str(im)]))
    variants.append(("edgekit rtn", work / "rtn.gguf",
                     [*edgekit, "convert", str(src), "-o", str(work / "rtn.gguf"), "-q", *th]))
    variants.append(("edgekit rtn + imatrix", work / "rtn-imatrix.gguf",
                     [*edgekit, "convert", str(src), "-o", str(work / "rtn-imatrix.gguf"), "--imatrix", str(im),
                      "-q", *th]))
    for m in ("awq", "gptq", "awq+gptq"):
        out = work / f"{m.replace('+', '-')}.gguf"
        variants.append((f"edgekit {m}", out, [*edgekit, "convert", str(src), "-o", str(out), "--method", m,
                                               "--calib", str(work / "calib.txt"), "-q", *th]))

    rows = []
    for label, path, cmd in variants:
        seconds, rss = run(cmd, log)
        if "imatrix" in label:
            seconds += im_s  # the statistics are part of the cost
            rss = max(rss, im_rss)
        r = evaluate(path, EvalConfig(data=held_files, ref=src, ctx=CTX, max_windows=args.eval_windows),
                     progress=False)
        rows.append((label, path, seconds, rss, r))
        log(f"{label:28s} KL {r.kl_mean:.5f} ± {r.kl_se:.5f}  top-1 {100 * r.top1:.2f} %  "
            f"ln(PPL ratio) {r.ln_ppl_ratio:+.5f}  {seconds:.1f} s  {rss / 2**20:.0f} MiB")

    def tensors(p: Path) -> dict[str, bytes]:
        return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(p).tensors}

    same = tensors(work / "rtn.gguf") == tensors(work / "llamacpp.gguf")
    same_im = tensors(work / "rtn-imatrix.gguf") == tensors(work / "llamacpp-imatrix.gguf")
    base = {label: r for label, _, _, _, r in rows}["llama.cpp Q4_K_M + imatrix"]
    r0 = rows[0][4]
    lines = [
        "# Accuracy per bit: llama.cpp Q4_K_M vs edgekit's calibrated methods",
        "",
        "Generated by `benchmarks/accuracy_per_bit.py`:",
        "",
        "```",
        f".venv/bin/python benchmarks/accuracy_per_bit.py --work-dir {args.work_dir} --threads {args.threads} "
        f"--eval-windows {args.eval_windows}",
        "```",
        "",
        f"- Machine: {platform.machine()} ({_cpu()}), {args.threads} threads; Python {platform.python_version()}; "
        f"total script time {time.perf_counter() - t_start:.0f} s.",
        "- Model: the demo teacher (edgekit/demo: Llama, 6 layers, hidden 256, ffn 768, 4 heads / 2 KV, tied "
        "embeddings, vocab 4096, trained on the standard library's sources).",
        f"- Calibration: every {CALIB_EVERY}th training file, first {CALIB_CHARS:,} characters (the same text for "
        "the imatrix and for awq/gptq; at most 64 windows of 512 tokens); none of it is in the test text.",
        f"- Test: the demo's held-out files ({len(held_files)} files, never trained on), {r0.windows} windows of "
        f"{CTX} tokens, {r0.tokens:,} scored tokens; the float model in transformers (float32) is the reference, "
        "the quantized file runs in llama.cpp.",
        f"- Every file is Q4_K_M with the same tensor types; edgekit rtn is byte-identical to llama.cpp's Q4_K_M: "
        f"{'yes' if same else 'NO'}; with the imatrix: {'yes' if same_im else 'NO'}.",
        "",
        "| variant | file (bytes) | KL mean ± s.e. | KL median | KL p99 | same top-1 | ln(PPL ratio) ± s.e. | "
        "time (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, path, seconds, rss, r in rows:
        lines.append(f"| {label} | {path.stat().st_size:,} | {r.kl_mean:.5f} ± {r.kl_se:.5f} | {r.kl_median:.5f} | "
                     f"{r.kl_p99:.5f} | {100 * r.top1:.2f} % | {r.ln_ppl_ratio:+.5f} ± {r.ln_ppl_ratio_se:.5f} | "
                     f"{seconds:.1f} | {rss / 2**20:.0f} |")
    lines += ["", "Against llama.cpp's imatrix Q4_K_M (ratio of mean KL; a win or loss counts only where the "
              "difference exceeds 2 × the combined standard error, which ignores the positive correlation of "
              "paired tokens and so is conservative):", ""]
    for label, _, _, _, r in rows[2:]:
        diff = r.kl_mean - base.kl_mean
        se = math.hypot(r.kl_se, base.kl_se)
        verdict = "better beyond the uncertainty" if diff < -2 * se else (
            "worse beyond the uncertainty" if diff > 2 * se else "within the uncertainty")
        lines.append(f"- {label}: {r.kl_mean / base.kl_mean:.3f} × ({diff:+.5f} ± {2 * se:.5f}): {verdict}.")
    lines += ["", "Target of issue 16: edgekit's best Q4_K_M at ≤ 0.8 × llama.cpp's imatrix Q4_K_M mean KL.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    log(f"wrote {args.out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
