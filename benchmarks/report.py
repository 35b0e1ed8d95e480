"""What every benchmark does last: write its Markdown table under benchmarks/results/ and print it."""

from __future__ import annotations

from pathlib import Path


def write_report(out: Path, lines: list[str]) -> None:
    report = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
