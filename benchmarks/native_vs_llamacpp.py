"""Prefill and decode speed and peak RSS: edgekit's native runtime vs llama.cpp on the same GGUF.

The GGUF has a real model's shapes (Qwen2.5-0.5B, Llama-3.2-1B) and random weights (as good as real ones
for speed and memory), written straight from quantized random blocks: no HF checkpoint in memory. Each
measurement runs in a fresh process (its own peak RSS), the tools interleaved so drift in machine load hits
both alike. Only C time counts: the native runtime's own ek_session_stats timers, llama.cpp's
llama_perf_context timers.

    python benchmarks/native_vs_llamacpp.py --shape qwen2.5-0.5b --quant q4_k_m --threads 1 2 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from report import write_report  # benchmarks/report.py (scripts run from this folder)

SHAPES = {
    # name: (arch, hidden, ffn, layers, heads, kv_heads, vocab, tied)
    "qwen2.5-0.5b": ("qwen2", 896, 4864, 24, 14, 2, 151936, True),
    "llama-3.2-1b": ("llama", 2048, 8192, 16, 32, 8, 128256, True),
}


def build_gguf(path: Path, shape: str, quant: str) -> Path:
    """Random weights of `shape` in `quant` (llama.cpp's per-tensor mix): each matrix is 64 quantized random rows
    tiled to its size, so writing a 1B model takes seconds and little memory beyond one tensor."""
    if path.exists():
        return path
    import gguf

    from edgekit.converters.gguf.mix import SCHEMES, choose_types
    from edgekit.native.quantize import quantize

    arch, e, ff, n_layer, n_head, n_kv, vocab, tied = SHAPES[shape]
    hd = e // n_head
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, e), "output_norm.weight": (e,)}
    if not tied:
        shapes["output.weight"] = (vocab, e)
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes |= {b + "attn_norm.weight": (e,), b + "ffn_norm.weight": (e,), b + "attn_q.weight": (n_head * hd, e),
                   b + "attn_k.weight": (n_kv * hd, e), b + "attn_v.weight": (n_kv * hd, e),
                   b + "attn_output.weight": (e, n_head * hd), b + "ffn_gate.weight": (ff, e),
                   b + "ffn_up.weight": (ff, e), b + "ffn_down.weight": (e, ff)}
        if arch == "qwen2":
            shapes |= {b + "attn_q.bias": (n_head * hd,), b + "attn_k.bias": (n_kv * hd,),
                       b + "attn_v.bias": (n_kv * hd,)}
    types = choose_types(shapes, SCHEMES[quant], n_layer)
    rng = np.random.default_rng(0)
    tiles: dict[tuple[int, int], np.ndarray] = {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"random {shape}")
    w.add_context_length(4096)
    w.add_embedding_length(e)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("none")  # no vocabulary: both runtimes decode token ids
    for name, shp in shapes.items():
        t = types[name]
        if len(shp) == 1:
            arr = (1.0 if "norm" in name else 0.0) + 0.1 * rng.standard_normal(shp).astype(np.float32)
            w.add_tensor(name, arr.astype(np.float32))
            continue
        key = (int(t), shp[1])
        if key not in tiles:
            x = rng.standard_normal((64, shp[1])).astype(np.float32) * 0.05
            native = t.name in ("Q4_K", "Q6_K", "Q8_0")  # else gguf-py's (Q5_0: llama.cpp's fallback for 896 values)
            tiles[key] = quantize(x, t) if native else gguf.quants.quantize(x, t)
        rows = np.tile(tiles[key], (shp[0] // 64 + 1, 1))[: shp[0]]
        w.add_tensor(name, rows, raw_shape=rows.shape, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_NATIVE = """
import json, sys
from edgekit.native.runtime import Model
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with Model(path) as m, m.session(n_ctx=n_prompt + n_gen + 8, threads=threads, n_batch=n_prompt) as s:
    logits = s.decode(list(range(1, n_prompt + 1)), 0)
    for _ in range(n_gen):
        logits = s.decode([int(logits.argmax())])
    st = s.stats()
print(json.dumps({"prefill_tps": st["n_prefill"] / st["prefill_ms"] * 1e3,
                  "decode_tps": st["n_decode"] / st["decode_ms"] * 1e3, "peak_rss": st["peak_rss_bytes"]}))
"""

_LLAMA = """
import json, resource, sys
from edgekit.runtime.backends.llamacpp import llama_cpp
ll = llama_cpp()
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mp = ll.llama_model_default_params()
model = ll.llama_model_load_from_file(path.encode(), mp)
cp = ll.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = n_prompt + n_gen + 8, n_prompt, n_prompt
cp.n_threads = cp.n_threads_batch = threads
ctx = ll.llama_init_from_model(model, cp)
n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
batch = ll.llama_batch_init(n_prompt, 0, 1)
spent = [0.0]
def run(tokens, pos):
    batch.n_tokens = len(tokens)
    for i, t in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, pos + i, 1, int(i == len(tokens) - 1)
        batch.seq_id[i][0] = 0
    t0 = time.perf_counter()
    assert ll.llama_decode(ctx, batch) == 0  # the C call alone is timed
    spent[0] += time.perf_counter() - t0
    return ll.llama_get_logits_ith(ctx, -1)
import time
import numpy as np
run([1], 0)  # graph setup, as llama-cli does before timing
ll.llama_memory_seq_rm(ll.llama_get_memory(ctx), 0, 0, -1)
spent[0] = 0.0
lg = run(list(range(1, n_prompt + 1)), 0)
prefill = spent[0]
for i in range(n_gen):
    tok = int(np.ctypeslib.as_array(lg, shape=(n_vocab,)).argmax())
    lg = run([tok], n_prompt + i)
print(json.dumps({"prefill_tps": n_prompt / prefill, "decode_tps": n_gen / (spent[0] - prefill),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(code: str, *args: object) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=list(SHAPES))
    ap.add_argument("--quant", default="q4_k_m", choices=["q4_k_m", "q8_0"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (one prefill batch)")
    ap.add_argument("--gen", type=int, default=32, help="tokens decoded one by one")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-bench"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out = args.out or Path(__file__).parent / "results" / f"native_vs_llamacpp_{args.shape}_{args.quant}.md"
    path = build_gguf(args.work_dir / f"{args.shape}-{args.quant}.gguf", args.shape, args.quant)
    mib = 1 << 20
    load_before, rows = os.getloadavg()[0], []
    for th in args.threads:
        runs = {"native": [], "llama": []}
        for _ in range(args.repeat):
            runs["native"].append(child(_NATIVE, path, th, args.prompt, args.gen))
            runs["llama"].append(child(_LLAMA, path, th, args.prompt, args.gen))
        cells = []
        for key in ("prefill_tps", "decode_tps", "peak_rss"):
            ours = [r[key] for r in runs["native"]]
            theirs = [r[key] for r in runs["llama"]]
            ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
            scale = mib if key == "peak_rss" else 1
            cells += [f"{statistics.median(ours) / scale:.1f}", f"{statistics.median(theirs) / scale:.1f}",
                      f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"]
        rows.append(f"| {th} | " + " | ".join(cells) + " |")
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines = [f"# Native runtime vs llama.cpp: {args.shape} shapes, {args.quant} (random weights)", "",
             f"`python benchmarks/native_vs_llamacpp.py --shape {args.shape} --quant {args.quant} --threads "
             f"{' '.join(map(str, args.threads))} --prompt {args.prompt} --gen {args.gen} --repeat {args.repeat}`", "",
             f"CPU: {cpu_name()} ({os.cpu_count()} online, shared with other jobs: {load}; a busy machine slows "
             f"llama.cpp's polling worker threads more than ours, which soon sleep: read the spread). "
             f"File: {path.stat().st_size / mib:.0f} MiB. Prefill: {args.prompt} tokens in one batch; "
             f"decode: {args.gen} greedy tokens. Ratios native / llama.cpp (> 1: native faster; RSS < 1: native "
             f"smaller), median of {args.repeat} interleaved runs [min-max].", "",
             "| threads | prefill tok/s native | llama.cpp | ratio | decode tok/s native | llama.cpp | ratio | "
             "peak RSS MiB native | llama.cpp | ratio |", "| ---: " * 10 + "|"]
    write_report(out, lines + rows)


if __name__ == "__main__":
    main()
