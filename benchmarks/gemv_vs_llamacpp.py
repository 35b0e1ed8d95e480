"""GEMV (one token, decode) throughput of edgekit's kernels and of llama.cpp's, in one run.

Both read the same weight bytes in ggml's block formats: edgekit through ``ek_matmul``, llama.cpp
through ggml itself (libggml-base / libggml-cpu shipped inside llama-cpp-python, called with
ctypes: one graph of ``ggml_mul_mat`` nodes computed on a persistent ggml threadpool, as llama.cpp
decodes), twice: on the plain bytes, and with the weights in ggml's CPU_REPACK buffer (rearranged for
its interleaved kernels: what llama.cpp loads by default, ``use_extra_bufts``, for the types it repacks
on this CPU; the others it runs plain). Speed is GB/s of weights read. Every pass walks many distinct
copies of the matrix, together well over the last-level cache, so the numbers are memory-bound ones, and they sit next
to a measured memory-read bandwidth (a C read loop over 1 GiB, 1 and 2 threads).

    python benchmarks/gemv_vs_llamacpp.py                       # all types, shapes, levels; 1 and 2 threads
    python benchmarks/gemv_vs_llamacpp.py --types Q4_K --shapes 2048x8192 --threads 2 --quick
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT

from edgekit.native import kernels as K
from edgekit.native import quantize as qn
from edgekit.testing.ggml import Ggml

GIB = 1 << 30


# ---- memory bandwidth ----------------------------------------------------------------------------
# A plain C read loop (16 independent 64-bit sums, vectorized by the compiler): numpy's reductions
# are compute-bound on a fast core and understate what one core can read.
_READ_C = r"""
#include <stddef.h>
#include <stdint.h>
uint64_t read_sum(const uint64_t *p, size_t n) {
    uint64_t a[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) a[k] += p[i + k];
    uint64_t s = 0;
    for (int k = 0; k < 16; k++) s += a[k];
    for (; i < n; i++) s += p[i];
    return s;
}
"""


@cache
def _read_loop():
    """The C read loop, compiled once (in a temporary directory, removed once loaded); None without
    a C compiler."""
    import shutil
    import subprocess
    import tempfile

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    d = Path(tempfile.mkdtemp(prefix="edgekit-readbw-"))
    (d / "read.c").write_text(_READ_C)
    r = subprocess.run([cc, "-O3", "-march=native", "-shared", "-fPIC", str(d / "read.c"), "-o", str(d / "read.so")],
                       capture_output=True)
    lib = ctypes.CDLL(str(d / "read.so")) if r.returncode == 0 else None
    shutil.rmtree(d, ignore_errors=True)
    if lib is None:
        return None
    fn = lib.read_sum
    fn.restype, fn.argtypes = ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_size_t]
    return fn


def read_bandwidth(threads: int, reps: int = 5) -> tuple[float, str]:
    """GB/s reading 1 GiB split into `threads` parts read concurrently (ctypes and numpy reductions
    release the GIL): the C read loop, or numpy's max if no C compiler is around."""
    a = np.ones(GIB // 8, dtype=np.uint64)
    parts = np.array_split(a, threads)
    loop = _read_loop()
    if loop is not None:
        def one(p):
            return loop(p.ctypes.data, p.size)
        how = "C read loop"
    else:
        def one(p):
            return p.view(np.float32).max()
        how = "numpy max"
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t = time.perf_counter()
            list(pool.map(one, parts))
            times.append(time.perf_counter() - t)
    return a.nbytes / statistics.median(times) / 1e9, how


# ---- the benchmark -------------------------------------------------------------------------------
def ek_runner(qt: QT, shape, ntok: int, wptrs: list[int], xp, yptrs: list, level: str, nth: int):
    """One pass of edgekit matmuls over every weight copy, at one kernel level."""
    c, (nrows, ncols) = K._c(), shape

    def run() -> None:
        K.set_level(level)
        for wp, yp in zip(wptrs, yptrs, strict=True):
            c.ek_matmul(int(qt), wp, nrows, ncols, xp, ntok, yp, nth)

    return run


def make_weights(qt: QT, shape, count: int, rng) -> tuple[np.ndarray, int]:
    """One random matrix in qt, copied `count` times into one buffer (distinct memory is what counts)."""
    w = rng.standard_normal(shape).astype(np.float32)
    one = {QT.F32: lambda: w.view(np.uint8), QT.F16: lambda: w.astype(np.float16).view(np.uint8)}.get(
        qt, lambda: qn.quantize(w, qt))().reshape(-1)
    return np.tile(one, count), one.nbytes


def measure(ggml: Ggml, qt: QT, shape, ntok: int, gib: float, threads: list[int], levels: list[str], passes: int,
            rng) -> list[tuple]:
    """Seconds per pass for each implementation, per thread count: (type, shape, threads, ntok, bytes, times, diff)."""
    nrows, ncols = shape
    count = max(2, int(np.ceil(gib * GIB / (nrows * K.row_size(qt, ncols)))))
    w, mbytes = make_weights(qt, shape, count, rng)
    x = rng.standard_normal((ntok, ncols)).astype(np.float32)
    y_ek = np.empty((count, ntok, nrows), np.float32)
    y_gg = np.empty((count, ntok, nrows), np.float32)
    y_rp = np.empty((count, ntok, nrows), np.float32)
    xp = x.ctypes.data_as(K._F32_P)
    wptrs = [w.ctypes.data + i * mbytes for i in range(count)]
    yptrs = [ctypes.cast(y_ek.ctypes.data + i * ntok * nrows * 4, K._F32_P) for i in range(count)]
    rows = []
    for nth in threads:
        # Round robin over the implementations, pass by pass, so that load from other processes
        # on a shared machine spreads over all of them alike; medians per implementation.
        run_gg, close = ggml.gemv_graph(qt, w, count, mbytes, shape, x, y_gg, nth)
        repacked = ggml.gemv_graph(qt, w, count, mbytes, shape, x, y_rp, nth, repack=True)  # None: not repacked
        runners = {lv: ek_runner(qt, shape, ntok, wptrs, xp, yptrs, lv, nth) for lv in levels}
        runners["llama.cpp"] = run_gg
        if repacked is not None:
            runners["repacked"] = repacked[0]
        times: dict[str, list[float]] = {k: [] for k in runners}
        try:
            for fn in runners.values():
                fn()  # warm-up: page faults, thread start-up
            for i in range(passes):
                for k, fn in runners.items():
                    if k == "scalar" and i >= max(1, passes // 2):
                        continue  # slow, and only a reference
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
        finally:
            close()
            if repacked is not None:
                repacked[1]()
        ek_runner(qt, shape, ntok, wptrs, xp, yptrs, levels[-1], nth)()
        # same answers? (ggml rounds F16-weight activations to F16: a looser match there)
        ref = y_rp if repacked is not None else y_gg
        diff = float(np.abs(y_ek - ref).max() / max(np.abs(ref).max(), 1e-30))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((qt.name, f"{nrows}x{ncols}", nth, ntok, count * mbytes, med, diff))
        print(qt.name, shape, f"tokens={ntok}", f"threads={nth}", {k: f"{v * 1e3:.1f} ms" for k, v in med.items()},
              f"maxdiff {diff:.1e}", file=sys.stderr)
    K.set_level(K.available_levels()[-1])
    return rows


def bench(args) -> str:
    types = [QT[t] for t in args.types.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    levels = K.available_levels() if args.levels == "all" else args.levels.split(",")
    ggml = Ggml()
    rng = np.random.default_rng(0)

    measured = {t: read_bandwidth(t) for t in threads}
    bw = {t: v for t, (v, _) in measured.items()}
    args.bw_how = next(iter(measured.values()))[1]
    print("read bandwidth:", {t: f"{v:.1f} GB/s" for t, v in bw.items()}, args.bw_how, file=sys.stderr)
    load0 = os.getloadavg()
    gemv = [r for qt in types for shape in shapes
            for r in measure(ggml, qt, shape, 1, args.gib, threads, levels, args.passes, rng)]
    gemm = []
    if args.gemm_tokens > 0:
        simd = [lv for lv in levels if lv != "scalar"] or levels
        gemm = [r for qt in types
                for r in measure(ggml, qt, shapes[0], args.gemm_tokens, args.gib / 4, threads, simd, args.passes, rng)]
    load1 = os.getloadavg()
    return report(gemv, gemm, levels, bw, load0, load1, args)


def l3_size() -> str:
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (idx / "level").read_text().strip() == "3":
                return (idx / "size").read_text().strip()
        except OSError:
            pass
    return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(gemv, gemm, levels, bw, load0, load1, args) -> str:
    out = [
        "# GEMV throughput: edgekit kernels vs llama.cpp (ggml)",
        "",
        f"Generated by `{' '.join(['python benchmarks/gemv_vs_llamacpp.py', *sys.argv[1:]])}`.",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} CPUs, L3 {l3_size()}; features: {' '.join(K.features())}",
        f"- edgekit levels: {', '.join(levels)}; llama.cpp: libggml-cpu from llama-cpp-python (its own x86 build "
        "flags, see .ci/setup), ggml_mul_mat graphs on a persistent ggml threadpool, on the same weight bytes: "
        "`plain` as they are in the GGUF, `repacked` copied into ggml's CPU_REPACK buffer type (rearranged for "
        "its interleaved kernels, as llama.cpp's default `use_extra_bufts` loads them; `-`: ggml has no repacked "
        "layout for this type on this CPU, and llama.cpp runs it plain)",
        f"- GEMV working set: >= {args.gib:g} GiB of distinct weight copies per pass (well over the L3); median "
        f"of {args.passes} passes after a warm-up, implementations interleaved pass by pass",
        f"- measured read bandwidth ({args.bw_how} over 1 GiB, median of 5): "
        + ", ".join(f"{v:.1f} GB/s with {t} thread{'s' if t > 1 else ''}" for t, v in bw.items()),
        f"- load average before/after: {load0[0]:.2f} / {load1[0]:.2f} (a shared machine makes all numbers noisy)",
        "",
        "Reading these numbers: edgekit's pool wakes its workers once per matmul and lets each take chunks "
        "of rows from a shared counter; llama.cpp's threadpool meets at a spinning barrier after every graph "
        "node. When other processes hold the cores (load average above the core count), a barrier waits "
        "for a descheduled thread, and llama.cpp's 2-thread columns collapse: compare 2-thread numbers from "
        "a quiet machine only. Single-thread columns are the fair comparison of the kernels themselves.",
        "",
        "## GEMV (1 token)",
        "",
        "GB/s = bytes of weights read per second. ratio = top edgekit level (the one picked by default) / "
        "llama.cpp as it runs by default (repacked where ggml repacks, else plain). %bw = top edgekit level as "
        "a fraction of the measured read bandwidth at the same thread count. "
        "maxdiff = max |edgekit - llama.cpp| / max |llama.cpp| over all outputs (llama.cpp as it runs by default).",
        "",
        "| type | shape (rows x cols) | threads | " + " | ".join(levels)
        + " | llama.cpp plain | repacked | ratio | %bw | maxdiff |",
        "|---|---|---|" + "---|" * len(levels) + "---|---|---|---|---|",
    ]
    for name, shape, nth, _ntok, total, med, diff in gemv:
        gbs = {k: total / v / 1e9 for k, v in med.items()}
        best, theirs = gbs[levels[-1]], gbs.get("repacked", gbs["llama.cpp"])
        out.append(f"| {name} | {shape} | {nth} | " + " | ".join(f"{gbs[lv]:.1f}" for lv in levels)
                   + f" | {gbs['llama.cpp']:.1f} | {_cell(gbs, 'repacked')} | {best / theirs:.2f} "
                   f"| {100 * best / bw[nth]:.0f}% | {diff:.1e} |")
    if gemm:
        simd = [k for k in gemm[0][5] if k not in ("llama.cpp", "repacked")]
        out += ["", f"## GEMM ({gemm[0][3]} tokens: prefill)", "",
                "GOP/s = 2 x rows x cols x tokens / time (multiply-adds, int8 or float). ratio = top edgekit "
                "level / llama.cpp as it runs by default (plain: its own tiled K-quant path, llamafile sgemm for "
                "Q8_0/F16; repacked: its interleaved GEMM).", "",
                "| type | shape (rows x cols) | tokens | threads | " + " | ".join(simd)
                + " | llama.cpp plain | repacked | ratio |",
                "|---|---|---|---|" + "---|" * len(simd) + "---|---|---|"]
        for name, shape, nth, ntok, total, med, _diff in gemm:
            r, c = (int(v) for v in shape.split("x"))
            count = total // (r * K.row_size(QT[name], c))
            gops = {k: 2 * r * c * ntok * count / v / 1e9 for k, v in med.items()}
            theirs = gops.get("repacked", gops["llama.cpp"])
            out.append(f"| {name} | {shape} | {ntok} | {nth} | " + " | ".join(f"{gops[lv]:.1f}" for lv in simd)
                       + f" | {gops['llama.cpp']:.1f} | {_cell(gops, 'repacked')} | {gops[simd[-1]] / theirs:.2f} |")
    return "\n".join(out) + "\n"


def _cell(values: dict[str, float], key: str) -> str:
    return f"{values[key]:.1f}" if key in values else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", default="Q8_0,Q4_K,Q6_K,F16")
    p.add_argument("--shapes", default="2048x8192,8192x2048,2048x2048", help="rows x cols of W, comma-separated")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--levels", default="all", help="edgekit levels to run (default: every available one)")
    p.add_argument("--gib", type=float, default=1.0, help="weights walked per pass, GiB (default: 1)")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--gemm-tokens", type=int, default=32, help="tokens for the GEMM table, first shape (0: none)")
    p.add_argument("--quick", action="store_true", help="0.5 GiB, 3 passes: a rough look")
    p.add_argument("-o", "--output", type=Path, help="markdown file (default: benchmarks/results/gemv_<arch>.md)")
    args = p.parse_args()
    if args.quick:
        args.gib, args.passes = 0.5, 3
    text = bench(args)
    out = args.output or Path(__file__).parent / "results" / f"gemv_{platform.machine()}.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
