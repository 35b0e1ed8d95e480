"""Prefill and decode speed and peak RSS: `edgekit-run --bench` vs llama.cpp on the same GGUF.

The GGUF has a real model's shapes (Qwen2.5-0.5B, Llama-3.2-1B) and random weights (as good as real ones
for speed and memory), written straight from quantized random blocks: no HF checkpoint in memory. Each
measurement runs in a fresh process (its own peak RSS), the two interleaved (and their order alternated) so
drift in machine load hits both alike.

- edgekit: the C runner, `edgekit-run -m F --bench -p P -n N -t T --json`, its own process, no Python: its
  JSON's prefill and decode tok/s (ek_decode plus argmax, timed in C) and peak RSS.
- llama.cpp: llama-cpp-python as .ci/setup builds it (portable CPU variants) through its C API with the
  default model and context parameters a user gets (`use_extra_bufts` on: weights llama.cpp can repack
  go to its CPU_REPACK buffer, as in `Llama(path)`); only `llama_decode` is timed. Its log's repack lines
  are counted and reported. Its peak RSS includes the Python interpreter, so its RSS before the model
  load is reported too.

    python benchmarks/native_vs_llamacpp.py --shape qwen2.5-0.5b llama-3.2-1b --quant q4_k_m q8_0 --repeat 3
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
    from edgekit.io.output import temp_path
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
    tmp = temp_path(path)
    w = gguf.GGUFWriter(str(tmp), arch)
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
    os.replace(tmp, path)  # a killed run leaves no half-written file behind
    return path


def edgekit_run() -> Path:
    """The runner the build installs beside libedgekit."""
    from edgekit.native import lib

    path = Path(lib()._name).parent / "edgekit-run"
    if not path.exists():
        sys.exit(f"{path}: edgekit-run not built (reinstall edgekit)")
    return path


def run_native(path: Path, threads: int, n_prompt: int, n_gen: int) -> dict:
    r = subprocess.run([str(edgekit_run()), "-m", str(path), "--bench", "-p", str(n_prompt), "-n", str(n_gen),
                        "-t", str(threads), "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"edgekit-run failed: {r.stderr.strip()}")
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return {"prefill_tps": j["prefill_tok_s"], "decode_tps": j["decode_tok_s"], "peak_rss": j["peak_rss_bytes"]}


_LLAMA = """
import ctypes, json, re, resource, sys, time
import numpy as np
from edgekit.runtime.backends.llamacpp import llama_cpp
ll = llama_cpp()
log = []
@ll.llama_log_callback
def keep(level, text, user):
    log.append(text.decode("utf-8", errors="replace"))
ll.llama_log_set(keep, ctypes.c_void_p(0))
def rss_now():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base_rss = rss_now()  # the interpreter, numpy and llama.cpp's libraries, before the model
mp = ll.llama_model_default_params()  # use_extra_bufts on: what Llama(path) gets
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
run([1], 0)  # graph setup, as llama-bench does before timing
ll.llama_memory_seq_rm(ll.llama_get_memory(ctx), 0, 0, -1)
spent[0] = 0.0
lg = run(list(range(1, n_prompt + 1)), 0)
prefill = spent[0]
for i in range(n_gen):
    tok = int(np.ctypeslib.as_array(lg, shape=(n_vocab,)).argmax())
    lg = run([tok], n_prompt + i)
text = "".join(log)
repack = re.findall(r"repack tensor \\S+ with (\\S+)", text)
print(json.dumps({"prefill_tps": n_prompt / prefill, "decode_tps": n_gen / (spent[0] - prefill),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "base_rss": base_rss,
                  "repacked": {k: repack.count(k) for k in sorted(set(repack))},
                  "buffers": re.findall(r"(\\S+) model buffer size = +([0-9.]+ MiB)", text)}))
"""


def run_llama(path: Path, threads: int, n_prompt: int, n_gen: int) -> dict:
    r = subprocess.run([sys.executable, "-c", _LLAMA, str(path), str(threads), str(n_prompt), str(n_gen)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"llama.cpp child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure(path: Path, threads: int, args) -> tuple[str, dict]:
    """One table row: `repeat` interleaved pairs of runs (the order alternated), medians and ratio spreads."""
    runs: dict[str, list[dict]] = {"native": [], "llama": []}
    for i in range(args.repeat):
        order = [("native", run_native), ("llama", run_llama)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            runs[name].append(fn(path, threads, args.prompt, args.gen))
    def spread(ours: list[float], theirs: list[float]) -> str:
        ratios = [x / y for x, y in zip(ours, theirs, strict=True)]
        return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"

    nat, lla, cells = runs["native"], runs["llama"], []
    for key in ("prefill_tps", "decode_tps"):
        ours, theirs = [r[key] for r in nat], [r[key] for r in lla]
        cells += [f"{statistics.median(ours):.1f}", f"{statistics.median(theirs):.1f}", spread(ours, theirs)]
    mib = 1 << 20
    ours = [r["peak_rss"] / mib for r in nat]
    raw = [r["peak_rss"] / mib for r in lla]
    theirs = [(r["peak_rss"] - r["base_rss"]) / mib for r in lla]  # less the Python process it lives in
    cells += [f"{statistics.median(v):.0f}" for v in (ours, raw, theirs)] + [spread(ours, theirs)]
    return f"| {threads} | " + " | ".join(cells) + " |", runs["llama"][0]


def report(path: Path, shape: str, quant: str, args) -> list[str]:
    load_before, rows, llama = os.getloadavg()[0], [], {}
    for th in args.threads:
        row, llama = measure(path, th, args)
        rows.append(row)
        print(row, file=sys.stderr)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    repacked = ", ".join(f"{n} tensors to {k}" for k, n in llama["repacked"].items()) or "none"
    buffers = ", ".join(f"{name} {size}" for name, size in llama["buffers"])
    return [f"# edgekit-run vs llama.cpp: {shape} shapes, {quant} (random weights)", "",
            f"`python benchmarks/native_vs_llamacpp.py --shape {shape} --quant {quant} --threads "
            f"{' '.join(map(str, args.threads))} --prompt {args.prompt} --gen {args.gen} --repeat {args.repeat}`", "",
            f"CPU: {cpu_name()} ({os.cpu_count()} online, shared with other jobs: {load}). File: "
            f"{path.stat().st_size / (1 << 20):.0f} MiB. edgekit: `edgekit-run --bench --json` in its own process. "
            f"llama.cpp: llama-cpp-python's C API, default model and context parameters (`use_extra_bufts` on, "
            f"as `Llama(path)` loads); its log: model buffers {buffers}; repacked: {repacked}. "
            f"Prefill: {args.prompt} tokens in one batch; decode: {args.gen} greedy tokens. Ratios edgekit / "
            f"llama.cpp (> 1: edgekit faster; RSS < 1: edgekit smaller), median of {args.repeat} interleaved runs "
            f"[min-max]. Peak RSS: llama.cpp's process also holds a Python interpreter, so the ratio is taken "
            f"against its peak less its RSS just before the model load (the `llama.cpp` RSS column; `raw`: the "
            f"whole process).", "",
            "| threads | prefill tok/s edgekit | llama.cpp | ratio | decode tok/s edgekit | llama.cpp | ratio | "
            "peak RSS MiB edgekit | llama.cpp raw | llama.cpp | ratio |", "| ---: " * 11 + "|", *rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs="+", default=["qwen2.5-0.5b"], choices=list(SHAPES))
    ap.add_argument("--quant", nargs="+", default=["q4_k_m"], choices=["q4_k_m", "q8_0"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (one prefill batch)")
    ap.add_argument("--gen", type=int, default=64, help="tokens decoded one by one")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-bench"))
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    for shape in args.shape:
        for quant in args.quant:
            path = build_gguf(args.work_dir / f"{shape}-{quant}.gguf", shape, quant)
            write_report(args.out_dir / f"native_vs_llamacpp_{shape}_{quant}.md", report(path, shape, quant, args))


if __name__ == "__main__":
    main()
