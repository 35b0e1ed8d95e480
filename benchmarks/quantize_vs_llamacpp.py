"""Quantize the same F32 GGUF with edgekit and with llama.cpp (llama_model_quantize), in one run.

The model has a real model's shapes (default: Llama-3.2-1B) and random weights, which are as
good as real ones for speed and memory. Each quantizer runs in its own fresh process so peak
RSS is its own; both get the same thread count. The two outputs are compared tensor by tensor.

    python benchmarks/quantize_vs_llamacpp.py --shape llama-3.2-1b --quant q4_k_m --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from report import write_report  # benchmarks/report.py (scripts run from this folder)

SHAPES = {
    # name: (hidden, ffn, layers, heads, kv_heads, vocab, tied)
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 128256, True),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "llama-200m": (1024, 4096, 12, 16, 4, 32000, False),
}
SCHEMES = ("q4_k_m", "q8_0", "q6_k")

_EDGEKIT_CHILD = """
import json, sys, time, resource

from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
t = time.perf_counter()
write_gguf(sys.argv[1], sys.argv[2], GGUFConfig(quant=sys.argv[3], threads=int(sys.argv[4])), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

_LLAMA_CHILD = """
import json, sys, time, resource
from edgekit.runtime.backends.llamacpp import llama_cpp, quantize
llama_cpp()  # imported before the clock starts, as for edgekit
t = time.perf_counter()
quantize(sys.argv[1], sys.argv[2], sys.argv[3], threads=int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

_BASELINE_CHILD = """
import json, resource
import edgekit.converters.gguf.writer  # noqa: F401  (import cost alone)
from edgekit.runtime.backends.llamacpp import llama_cpp
llama_cpp()
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def build_f32_gguf(work: Path, shape: str) -> Path:
    """A random HF checkpoint (bf16, as real ones ship) converted to F32 GGUF by edgekit, cached."""
    f32 = work / f"{shape}-f32.gguf"
    if f32.exists():
        return f32
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    from edgekit.testing.models import build_tiny_model

    hidden, ffn, layers, heads, kv, vocab, tied = SHAPES[shape]
    hf = work / f"{shape}-hf"
    if not (hf / "config.json").exists():
        t = time.perf_counter()
        build_tiny_model(hf, "llama", tokenizer="llama3", layers=layers, hidden=hidden, ffn=ffn, heads=heads,
                         kv_heads=kv, dtype="bfloat16", max_shard_size="2GB", model_vocab=vocab,
                         tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
        print(f"built random {shape} checkpoint in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    res = write_gguf(hf, f32, GGUFConfig(quant="f32"), progress=False)
    print(f"HF -> F32 GGUF: {res.summary()}", file=sys.stderr)
    return f32


def compare(a: Path, b: Path) -> tuple[int, int, list[str]]:
    import gguf

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    same, diff = 0, []
    for name in sorted(ta.keys() | tb.keys()):
        x, y = ta.get(name), tb.get(name)
        if x is not None and y is not None and x.tensor_type == y.tensor_type and \
                x.data.tobytes() == y.data.tobytes():
            same += 1
        else:
            diff.append(name)
    return same, len(ta), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.2-1b", choices=list(SHAPES))
    ap.add_argument("--quant", default="q4_k_m", choices=SCHEMES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool; the best time counts")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-bench"))
    ap.add_argument("--out", type=Path, help="markdown report (default: results/quantize_vs_llamacpp_QUANT.md)")
    args = ap.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / f"quantize_vs_llamacpp_{args.quant}.md"
    args.work_dir.mkdir(parents=True, exist_ok=True)

    f32 = build_f32_gguf(args.work_dir, args.shape)
    ours, theirs = args.work_dir / f"ours-{args.quant}.gguf", args.work_dir / f"llama-{args.quant}.gguf"
    base = child(_BASELINE_CHILD)
    runs: dict[str, list[dict]] = {"edgekit": [], "llama.cpp": []}
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
        runs["edgekit"].append(child(_EDGEKIT_CHILD, str(f32), str(ours), args.quant, str(args.threads)))
        runs["llama.cpp"].append(child(_LLAMA_CHILD, str(f32), str(theirs), args.quant,
                                       str(args.threads)))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    same, total, diff = compare(ours, theirs)
    mib = 1 << 20
    ratio = best["edgekit"]["seconds"] / best["llama.cpp"]["seconds"]
    lines = [
        f"# Quantization speed and memory: edgekit vs llama.cpp ({args.quant})",
        "",
        f"`python benchmarks/quantize_vs_llamacpp.py --shape {args.shape} --quant {args.quant} "
        f"--threads {args.threads} --repeat {args.repeat}`",
        "",
        f"Input: {f32.name} ({f32.stat().st_size / mib:.0f} MiB F32 GGUF, random weights, {args.shape} shapes). "
        f"Threads: {args.threads}. Best of {args.repeat} interleaved runs; each run in a fresh process.",
        "",
        "| tool | seconds | peak RSS (MiB) | output (MiB) |",
        "| --- | ---: | ---: | ---: |",
        f"| edgekit | {best['edgekit']['seconds']:.2f} | {best['edgekit']['peak_rss'] / mib:.0f} | "
        f"{ours.stat().st_size / mib:.1f} |",
        f"| llama.cpp `llama_model_quantize` | {best['llama.cpp']['seconds']:.2f} | "
        f"{best['llama.cpp']['peak_rss'] / mib:.0f} | {theirs.stat().st_size / mib:.1f} |",
        "",
        f"Time ratio edgekit / llama.cpp: **{ratio:.2f}** (below 1 = edgekit faster).",
        f"Peak RSS of a process that only imports both libraries: {base['peak_rss'] / mib:.0f} MiB.",
        f"Identical tensors (type and bytes): **{same} / {total}**" + (f"; differ: {diff[:10]}" if diff else "."),
        "",
        "All runs (s): " + "; ".join(f"{k}: " + ", ".join(f"{r['seconds']:.2f}" for r in v) for k, v in runs.items()),
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
