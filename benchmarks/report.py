"""What every benchmark does last: write its Markdown table under benchmarks/results/ and print it."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_report(out: Path, lines: list[str]) -> None:
    report = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Run a command in its own process; (seconds, peak RSS bytes of that process). The peak comes from GNU time,
    a small process that forks the command: wait4()'s ru_maxrss from this (large) process would carry our own
    peak into every child (Linux keeps maxrss across fork and exec)."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as f:
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name, *cmd], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"command failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr}")
        return seconds, int(Path(f.name).read_text().split()[-1]) * 1024
