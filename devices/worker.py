"""The process that does the work: loads one model, runs llama-bench-style tests and prints one JSON object
per line on stdout. The profiler starts it as a child (locally or over ssh) for the llamacpp and executorch
backends, so the memory it reports is this process's, not the profiler's (--backend native: devices/runner.py).

    python -m edgekit.devices.worker MODEL [-p 512] [-n 128] [--pg 512,128] [-d 0,512] [-r 5] [--threads N]
                                     [--backend llamacpp|native|executorch]

Tests, as llama-bench has them: ppP (prefill P tokens), tgN (decode N tokens one at a time), pgP,N (both), each
at every depth D (D tokens already in the KV cache, filled before the clock starts). Tokenization and sampling
are not timed; the first token of a decode is arbitrary text of the model's vocabulary. Events:

    {"event": "loaded", "load_s", "n_ctx", "backend", "model": {...}, "rss"}
    {"event": "test", "name": "tg128", "depth", "n_prompt", "n_gen", "samples_s", "spans", "ttft_s", "perf", "rss"}
    {"event": "done", "peak_rss", "rss"}          (peak_rss: VmHWM, the kernel's high-water mark)

`--bandwidth` (no model) prints {"event": "bandwidth", "read_bytes_per_s"} instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

TEXT = ("The quick brown fox jumps over the lazy dog while the model reads a long and varied sentence, "
        "def f(x):\n    return x * 2 + 1  # 12345 ")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (bytes) from /proc/PID/status; empty where there is no /proc (macOS)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM") and value.split():
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def read_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes per second one core reads from memory: the best of several sums over an array far larger than
    any last-level cache we expect (numpy's reduction streams it once)."""
    import numpy as np

    a = np.ones(nbytes // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    del a
    return nbytes / best


def model_facts(path: Path) -> dict[str, Any]:
    """What the roofline needs: bytes of weights read per decoded token (every tensor but the token embedding,
    of which one row is read, unless the output reuses it) and the KV cache's bytes per position (F16)."""
    facts: dict[str, Any] = {"path": str(path), "file_bytes": path.stat().st_size, "format": path.suffix[1:]}
    if path.suffix == ".gguf":
        from edgekit.io.gguf_reader import read_header

        h = read_header(path)
        arch = h.get("general.architecture", "")
        names = {t.name for t in h.tensors}
        tied = "output.weight" not in names
        facts["weight_bytes_per_token"] = sum(t.nbytes for t in h.tensors
                                              if t.name != "token_embd.weight" or tied)
        n_layer = int(h.get(f"{arch}.block_count", 0))
        n_head = int(h.get(f"{arch}.attention.head_count", 1) or 1)
        n_kv = int(h.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
        emb = int(h.get(f"{arch}.embedding_length", 0))
        head_dim = int(h.get(f"{arch}.attention.key_length", emb // n_head if n_head else 0))
        facts["kv_bytes_per_position"] = 2 * n_layer * n_kv * head_dim * 2  # K and V, F16
        facts["name"] = str(h.get("general.name") or path.stem)
        facts["quant"] = _gguf_quant(h)
    else:
        facts["weight_bytes_per_token"] = facts["file_bytes"]  # a .pte's constants are its weights, near enough
        facts["kv_bytes_per_position"] = None
        facts["name"] = path.stem
        facts["quant"] = ""
    return facts


def _gguf_quant(h: Any) -> str:
    from collections import Counter

    c = Counter(t.type.name for t in h.tensors if len(t.shape) == 2)
    return "+".join(k for k, _ in c.most_common(2))


def parse_pairs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in filter(None, text.split(";")):
        p, _, n = item.partition(",")
        out.append((int(p), int(n)))
    return out


class Bench:
    def __init__(self, model: Any, emit: Any) -> None:
        self.m, self.emit = model, emit
        ids = model.tokenize(TEXT)
        self.pool = ids * (1 + 8192 // max(1, len(ids)))
        self.perf = getattr(model, "perf", None)  # llama.cpp's own counters, where the backend has them

    def tokens(self, n: int, offset: int = 0) -> list[int]:
        return self.pool[offset:offset + n]

    def run_once(self, depth: int, n_prompt: int, n_gen: int) -> tuple[float, float, float, float, dict | None]:
        """(seconds, ttft, wall start, wall end, llama.cpp perf) of one repeat of one test."""
        m = self.m
        m.reset()
        ctx = self.tokens(depth)
        if depth:
            m.prefill(ctx)
        if self.perf:
            self.perf(reset=True)
        w0, t0 = time.time(), time.perf_counter()
        ttft = 0.0
        if n_prompt:
            logits = m.prefill(ctx + self.tokens(n_prompt, depth))
            int(logits.argmax())
            ttft = time.perf_counter() - t0
        tok = self.pool[(depth + n_prompt) % len(self.pool)]
        for _ in range(n_gen):
            m.decode(tok)
        t1 = time.perf_counter()
        return t1 - t0, ttft, w0, time.time(), (self.perf() if self.perf else None)

    def test(self, name: str, depth: int, n_prompt: int, n_gen: int, repeats: int, warmup: int) -> None:
        for _ in range(warmup):
            self.run_once(depth, n_prompt, min(n_gen, 1) if n_prompt == 0 else n_gen)
        samples, ttfts, spans, perfs = [], [], [], []
        for _ in range(repeats):
            s, ttft, w0, w1, perf = self.run_once(depth, n_prompt, n_gen)
            samples.append(s)
            ttfts.append(ttft)
            spans.append([w0, w1])
            perfs.append(perf)
        self.emit({"event": "test", "name": name, "depth": depth, "n_prompt": n_prompt, "n_gen": n_gen,
                   "samples_s": samples, "ttft_s": ttfts, "spans": spans, "perf": perfs,
                   "rss": proc_status().get("VmRSS")})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.devices.worker")
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("-p", default="512", help="prompt lengths, comma-separated (0: none)")
    ap.add_argument("-n", default="128", help="generation lengths, comma-separated (0: none)")
    ap.add_argument("--pg", default="", help="prompt,generation pairs, ';'-separated")
    ap.add_argument("-d", default="0", help="depths, comma-separated")
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--backend", choices=["llamacpp", "native", "executorch"],
                    help="who runs it (default: by the file's format)")
    ap.add_argument("--bandwidth", action="store_true",
                    help="measure the memory read bandwidth instead (its own process: the array would count in "
                         "a model run's peak RSS)")
    args = ap.parse_args(argv)

    # JSON goes to the original stdout; anything a library prints there goes to stderr instead.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")

    from edgekit.errors import EdgekitError

    if args.bandwidth or args.model is None:
        emit({"event": "bandwidth", "read_bytes_per_s": read_bandwidth()})
        return 0
    try:
        ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
        prompts, gens, depths, pairs = ints(args.p), ints(args.n), ints(args.d) or [0], parse_pairs(args.pg)
        need = max(depths) + max([*prompts, *gens, *(p + n for p, n in pairs), 1]) + 1
        emit({"event": "start", "pid": os.getpid(), "t": time.time()})
        facts = model_facts(args.model)
        import edgekit.runtime as rt

        t0 = time.perf_counter()
        opts: dict[str, Any] = {"threads": args.threads} if args.threads and args.model.suffix == ".gguf" else {}
        if args.backend and args.model.suffix == ".gguf":
            opts["backend"] = args.backend
        # A .pte's KV cache has the length it was exported with: load it as it is, check the length below.
        model = rt.load(args.model, n_ctx=None if args.model.suffix == ".pte" else need, **opts)
        load_s = time.perf_counter() - t0
        emit({"event": "loaded", "load_s": load_s, "n_ctx": model.n_ctx, "backend": model.backend,
              "threads": getattr(model, "threads", None), "model": facts, "rss": proc_status().get("VmRSS")})
        if model.n_ctx < need:
            raise EdgekitError(f"{args.model}: the tests need {need} positions, the model has {model.n_ctx}")
        b = Bench(model, emit)
        for d in depths:
            for p in prompts:
                if p:
                    b.test(f"pp{p}", d, p, 0, args.r, args.warmup)
            for n in gens:
                if n:
                    b.test(f"tg{n}", d, 0, n, args.r, args.warmup)
            for p, n in pairs:
                b.test(f"pp{p}+tg{n}", d, p, n, args.r, args.warmup)
        model.close()
        st = proc_status()
        emit({"event": "done", "peak_rss": st.get("VmHWM"), "rss": st.get("VmRSS")})
        return 0
    except EdgekitError as e:
        emit({"event": "error", "message": str(e)})
        return 1
    except KeyboardInterrupt:
        emit({"event": "interrupted"})
        return 130


if __name__ == "__main__":
    sys.exit(main())
