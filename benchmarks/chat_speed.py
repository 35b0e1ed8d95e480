"""First-token latency and decode speed of `edgekit chat` on each backend, through edgekit's own runtime.

Each backend runs in its own fresh process. A run is one chat turn: the demo's chat template around a fixed
user message (prefill from an empty cache), then 128 sampled tokens (stop tokens banned, so every run has
the same length). First-token latency = call to first sampled token (tokenize + prefill + sampling); decode
tokens/s = tokens after the first / their time (forward call + sampling each). A second turn, whose prompt
repeats the first, shows the KV-cache prefix reuse. Medians of --runs runs after a warm-up.

    python benchmarks/chat_speed.py --gguf demo.gguf --pte demo.pte --threads 1,2
    python benchmarks/chat_speed.py --workdir /tmp/demo     # converts the demo model first (Q4_K_M, 8da4w)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_CHILD = """
import json, statistics, sys, time
import edgekit
path, threads, runs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
m = edgekit.load(path, **({"threads": threads} if path.endswith(".gguf") else {}))
load_s = time.perf_counter() - t
msgs = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
kw = dict(max_tokens=n, ignore_eos=True, temperature=0.8, seed=1)
rows = []
for i in range(runs + 1):
    m.reset()
    answer = m.chat(msgs, **kw)
    first = m.stats.to_dict()
    m.chat([*msgs, {"role": "assistant", "content": answer}, {"role": "user", "content": "Shorter."}], **kw)
    if i:  # the first pass is the warm-up
        rows.append((first, m.stats.to_dict()))
med = lambda xs: statistics.median(xs)
print(json.dumps({
    "load_s": load_s, "prompt_tokens": rows[0][0]["prompt_tokens"],
    "first_token_ms": 1000 * med([r[0]["first_token_s"] for r in rows]),
    "prefill_tps": med([r[0]["prefill_tps"] for r in rows]),
    "decode_tps": med([r[0]["decode_tps"] for r in rows]),
    "turn2_prompt_tokens": rows[0][1]["prompt_tokens"], "turn2_reused": rows[0][1]["reused_tokens"],
    "turn2_first_token_ms": 1000 * med([r[1]["first_token_s"] for r in rows]),
}))
"""


def _convert_demo(workdir: Path) -> tuple[Path, Path]:
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    from edgekit.converters.pte.export import PteConfig, export_pte
    from edgekit.demo import model_dir

    workdir.mkdir(parents=True, exist_ok=True)
    gguf, pte = workdir / "demo.gguf", workdir / "demo.pte"
    if not gguf.exists():
        write_gguf(model_dir(), gguf, GGUFConfig(quant="q4_k_m", name="edgekit-demo"), progress=False)
    if not pte.exists():
        export_pte(model_dir(), pte, PteConfig(quant="8da4w", name="edgekit-demo"))
    return gguf, pte


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--pte", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-chat-bench"))
    ap.add_argument("--threads", default="1,2", help="llama.cpp thread counts to try (default: 1,2)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-n", type=int, default=128, help="tokens per answer")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "chat_speed.md")
    args = ap.parse_args()
    if args.gguf is None or args.pte is None:
        gguf, pte = _convert_demo(args.workdir)
        args.gguf, args.pte = args.gguf or gguf, args.pte or pte
    cases = [(f"GGUF Q4_K_M, llama.cpp, {t} thread{'s' if t != '1' else ''}", args.gguf, t)
             for t in args.threads.split(",")] + [("PTE 8da4w, ExecuTorch (XNNPACK)", args.pte, "0")]
    rows = []
    for name, path, threads in cases:
        load_before = os.getloadavg()[0]
        r = subprocess.run([sys.executable, "-c", _CHILD, str(path), threads, str(args.runs), str(args.n)],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res.update(name=name, load_avg=load_before)
        rows.append(res)
        print(json.dumps(res), flush=True)
    lines = [
        "# Chat speed of the demo model (edgekit chat's runtime)",
        "",
        f"`python benchmarks/chat_speed.py` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; the machine was "
        "shared with other jobs (1-minute load average before each case in the last column), so treat these as "
        f"rough. One chat turn: prompt of {rows[0]['prompt_tokens']} tokens from an empty cache, then {args.n} "
        f"sampled tokens; medians of {args.runs} runs after a warm-up. Turn 2 re-sends the conversation plus one "
        "message; the cached prefix is reused.",
        "",
        "| backend | load | first token | prefill | decode | turn 2: prompt (reused) | turn 2: first token "
        "| load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {r['name']} | {r['load_s']:.2f} s | {r['first_token_ms']:.1f} ms | {r['prefill_tps']:,.0f} tok/s | "
          f"{r['decode_tps']:,.0f} tok/s | {r['turn2_prompt_tokens']} ({r['turn2_reused']}) | "
          f"{r['turn2_first_token_ms']:.1f} ms | {r['load_avg']:.1f} |" for r in rows),
        "",
        "The demo model is tiny (5.8 M parameters, 3.6 MiB as Q4_K_M): these numbers show the runtime's own "
        "overhead (Python loop, sampling, detokenization) more than the kernels. For kernel speed on real model "
        "shapes see `pte_vs_gguf.md`.",
        "",
        "- With more llama.cpp threads than idle cores, its spinning thread pool collapses (the 2-thread rows on a "
        "loaded 2-core machine); on a busy device use fewer threads (`--threads`).",
        "- Turn 2 reuses the cache up to the first token where re-tokenizing the history differs from what was "
        "generated. The demo's template trims each message (`| trim`), so an answer that began with a newline "
        "(the .pte's, here) is only reused up to the end of turn 1's prompt.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
