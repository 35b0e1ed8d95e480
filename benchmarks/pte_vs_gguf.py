"""Decode speed and memory of the same model as ExecuTorch .pte (fp32, 8da4w) and as Q4_K_M GGUF (llama.cpp).

The model has a real model's shapes (default: Qwen2.5-0.5B) and random weights, which are as good as
real ones for speed and memory. Every export and every measurement runs in its own fresh process, so
peak RSS is its own; the runtimes get the same thread count. Each run prefills the same prompt, then
decodes greedily token by token (one forward call per token, argmax of the logits in Python for both).

    python benchmarks/pte_vs_gguf.py --shape qwen2.5-0.5b --threads 2,1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from report import write_report  # benchmarks/report.py (scripts run from this folder)

SHAPES = {
    # name: (hidden, ffn, layers, heads, kv_heads, vocab)  -- Qwen2 architecture, tied embeddings
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen2-tiny": (256, 512, 2, 4, 2, 512),  # for trying the script out
}

# variant -> (output file, export arguments)
VARIANTS = {
    "pte-fp32": ("model-fp32.pte", dict(quant="fp32")),
    "pte-8da4w": ("model-8da4w.pte", dict(quant="8da4w", group_size=32)),
    "pte-8da4w-emb4w": ("model-8da4w-emb4w.pte", dict(quant="8da4w", group_size=32, embedding_quant="4w")),
    "gguf-q4_k_m": ("model-q4_k_m.gguf", dict(quant="q4_k_m")),
}

# Peak RSS is read from /proc/self/status (VmHWM): getrusage's ru_maxrss survives fork+exec on Linux, so a
# child would report at least its parent's peak.
_HWM = """
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

_EXPORT_CHILD = _HWM + """
import json, sys, time
from pathlib import Path
src, out, kw = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
t = time.perf_counter()
if out.suffix == ".pte":
    from edgekit.converters.pte.export import PteConfig, export_pte
    export_pte(src, out, PteConfig(**kw))
else:
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    write_gguf(src, out, GGUFConfig(**kw), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss": hwm()}))
"""

# Both run children share this: a warm-up, then a timed prefill and N single-token greedy steps, each timed.
_RUN_COMMON = _HWM + """
import json, statistics, sys, time
import numpy as np
path, threads, prompt_len, n_decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompt = [int(x) for x in np.random.default_rng(0).integers(10, 500, prompt_len)]
def report(load_s, prefill_s, steps, baseline_rss):
    print(json.dumps({"load_s": load_s, "prefill_tok_s": prompt_len / prefill_s,
                      "decode_ms_median": 1e3 * statistics.median(steps),
                      "decode_ms_mean": 1e3 * statistics.mean(steps),
                      "peak_rss": hwm(),
                      "baseline_rss": baseline_rss}))
"""

_ET_CHILD = _RUN_COMMON + """
from edgekit.runtime.backends.executorch import EtModel, register_kernels
register_kernels()
from executorch.extension.pybindings import portable_lib
portable_lib._unsafe_reset_threadpool(threads)
assert portable_lib._threadpool_get_thread_count() == threads
base = hwm()  # torch + runtime imported, no model yet
t = time.perf_counter(); m = EtModel(path); load_s = time.perf_counter() - t
m.prefill(prompt); m.forward([1], m.pos)  # warm-up (first-call setup), then start over at 0
t = time.perf_counter(); logits = m.prefill(prompt); prefill_s = time.perf_counter() - t
steps = []
for _ in range(n_decode):
    tok = int(np.argmax(logits))
    t = time.perf_counter(); logits = m.forward([tok], m.pos); steps.append(time.perf_counter() - t)
report(load_s, prefill_s, steps, base)
"""

_LLAMA_CHILD = _RUN_COMMON + """
from edgekit.runtime.backends.llamacpp import LlamaCppModel
base = hwm()
t = time.perf_counter()
# (the model's first forward pass, llama.cpp's graph setup, is part of loading: LlamaCppModel runs it)
m = LlamaCppModel(path, n_ctx=int(sys.argv[5]), n_batch=prompt_len, threads=threads, flash_attn=False)
load_s = time.perf_counter() - t
m.prefill(prompt); m.reset()  # warm-up, then start over at 0
t = time.perf_counter(); logits = m.prefill(prompt); prefill_s = time.perf_counter() - t
steps = []
for _ in range(n_decode):
    tok = int(np.argmax(logits))
    t = time.perf_counter(); logits = m.decode(tok); steps.append(time.perf_counter() - t)
report(load_s, prefill_s, steps, base)
"""


def child(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        sys.exit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def build_checkpoint(work: Path, shape: str) -> Path:
    """A random Qwen2-architecture HF checkpoint (bf16, as real ones ship), cached."""
    hf = work / f"{shape}-hf"
    if (hf / "config.json").exists():
        return hf
    from edgekit.testing.models import build_tiny_model

    hidden, ffn, layers, heads, kv, vocab = SHAPES[shape]
    t = time.perf_counter()
    build_tiny_model(hf, "qwen2", layers=layers, hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv,
                     model_vocab=vocab, dtype="bfloat16", max_shard_size="2GB", max_position_embeddings=32768)
    print(f"built random {shape} checkpoint in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=list(SHAPES))
    ap.add_argument("--threads", default="2,1", help="comma-separated thread counts, each run for every variant")
    ap.add_argument("--context", type=int, default=1024, help="KV-cache length of every variant")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (one prefill call)")
    ap.add_argument("--decode", type=int, default=128, help="generated tokens, each timed")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for llama.cpp (its OpenMP threads spin by default, which collapses "
                         "when another process holds a core); '' leaves it unset")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-bench-pte"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pte_vs_gguf.md")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    threads = [int(t) for t in args.threads.split(",") if t]
    llama_env = {"OMP_WAIT_POLICY": args.omp_wait_policy} if args.omp_wait_policy else {}

    hf = build_checkpoint(args.work_dir, args.shape)
    exports: dict[str, tuple[Path, dict]] = {}
    for name in variants:
        file, kw = VARIANTS[name]
        out = args.work_dir / name / file  # own directory: each .pte brings its own tokenizer sidecars
        out.parent.mkdir(exist_ok=True)
        if out.suffix == ".pte":
            kw = {**kw, "max_seq_len": args.context, "max_prefill": args.prompt}
        exports[name] = (out, child(_EXPORT_CHILD, str(hf), str(out), json.dumps(kw)))
        print(f"{name}: exported in {exports[name][1]['seconds']:.0f} s", file=sys.stderr)
    runs: list[tuple[str, int, dict]] = []
    for n in threads:
        for name in variants:
            out = exports[name][0]
            code, env = (_ET_CHILD, None) if out.suffix == ".pte" else (_LLAMA_CHILD, llama_env)
            run = child(code, str(out), str(n), str(args.prompt), str(args.decode), str(args.context), env=env)
            print(f"{name} x{n}: {json.dumps(run)}", file=sys.stderr)
            runs.append((name, n, run))

    mib = 1 << 20
    hidden, ffn, layers, heads, kv, vocab = SHAPES[args.shape]
    cmd = (f"python benchmarks/pte_vs_gguf.py --shape {args.shape} --threads {args.threads} "
           f"--context {args.context} --prompt {args.prompt} --decode {args.decode}")
    lines = [
        "# Decode speed and memory: ExecuTorch .pte (XNNPACK) vs GGUF (llama.cpp)",
        "",
        f"`{cmd}`",
        "",
        f"Model: random weights, {args.shape} shapes (Qwen2: {layers} layers, hidden {hidden}, ffn {ffn}, "
        f"{heads}/{kv} heads, vocab {vocab}, tied embeddings), source checkpoint bf16. KV cache {args.context} "
        f"positions; prompt {args.prompt} tokens in one call, then {args.decode} greedy steps of one token, each "
        "timed. Every export and every run is a fresh process; peak RSS is that process's VmHWM.",
        "",
        "| variant | threads | file (MiB) | load (s) | prefill (tok/s) | decode ms/token (median) | mean | "
        "peak RSS (MiB) | RSS before load (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, n, run in runs:
        out = exports[name][0]
        lines.append(f"| {name} | {n} | {out.stat().st_size / mib:.0f} | {run['load_s']:.2f} | "
                     f"{run['prefill_tok_s']:.0f} | {run['decode_ms_median']:.2f} | {run['decode_ms_mean']:.2f} | "
                     f"{run['peak_rss'] / mib:.0f} | {run['baseline_rss'] / mib:.0f} |")
    lines += ["", "| variant | export / convert (s) | its peak RSS (MiB) |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {e['seconds']:.0f} | {e['peak_rss'] / mib:.0f} |" for name, (_, e) in exports.items()]
    lines += [
        "",
        "- pte-fp32: float32 everything. pte-8da4w: linear layers (lm_head included) int8 dynamic activations x "
        "int4 weights, group 32, embeddings float32. pte-8da4w-emb4w: the same plus int4 embeddings (group 32). "
        "gguf-q4_k_m: llama.cpp's Q4_K_M mix (edgekit's converter), llama.cpp's default F16 KV cache.",
        "- .pte programs use ExecuTorch's LLM custom ops (llama::update_cache, llama::custom_sdpa) and return only "
        "the last position's logits; the ExecuTorch runtime is driven from Python "
        "(edgekit.runtime.backends.executorch), llama.cpp through llama-cpp-python; both pay a Python call per token.",
        "- \"RSS before load\" is the process after importing the runtime (for ExecuTorch's Python bindings "
        "that includes torch); an on-device C++ runner would not carry it.",
        f"- llama.cpp ran with OMP_WAIT_POLICY={args.omp_wait_policy or '(unset: its default, spinning threads)'}. "
        "On a machine where another process holds a core, spinning OpenMP threads lose whole scheduler slices "
        "(seen here on a tiny model at 2 threads: 284 ms/token spinning, 0.31 ms passive); PASSIVE avoids that. "
        "ExecuTorch's thread pool needs no such setting.",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
