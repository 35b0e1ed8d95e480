"""The sample profiler report in benchmarks/results/profile_demo/: the demo model as Q4_K_M and Q8_0 GGUF
(llama.cpp and edgekit's native runtime) and as an 8da4w .pte (ExecuTorch) on this machine, at depths 0 and 256,
through `edgekit profile` itself (JSON, Markdown, CSV, PNG).

    python benchmarks/profile_demo.py [--workdir /tmp/edgekit-profile-demo] [-r 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "profile_demo"


def convert_demo(workdir: Path) -> list[Path]:
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    from edgekit.converters.pte.export import PteConfig, export_pte
    from edgekit.demo import model_dir

    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for quant in ("q4_k_m", "q8_0"):
        f = workdir / f"demo-{quant}.gguf"
        if not f.exists():
            write_gguf(model_dir(), f, GGUFConfig(quant=quant, name="edgekit-demo"), progress=False)
        out.append(f)
    pte = workdir / "demo-8da4w.pte"
    if not pte.exists():
        export_pte(model_dir(), pte, PteConfig(quant="8da4w", name="edgekit-demo", max_seq_len=512))
    return [*out, pte]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-profile-demo"))
    ap.add_argument("-r", default="5")
    ap.add_argument("--threads", default=str(min(2, os.cpu_count() or 1)))
    args = ap.parse_args()
    models = convert_demo(args.workdir)
    from edgekit.cli import main as edgekit

    if OUT.exists():
        shutil.rmtree(OUT)
    return edgekit(["profile", *map(str, models), "--backend", "llamacpp,executorch,native", "-p", "128",
                    "-n", "64", "-d", "0,256", "-r", args.r, "--threads", args.threads, "--report", str(OUT)])


if __name__ == "__main__":
    sys.exit(main())
