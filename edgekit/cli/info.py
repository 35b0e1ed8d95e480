"""`edgekit inspect` (what is inside a .gguf or .pte) and `edgekit doctor` (what this machine offers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgekit import doctor
from edgekit.inspect import format_report, inspect_file


def add_parsers(sub: Any) -> None:
    i = sub.add_parser("inspect", help="summarise a GGUF or .pte file: architecture, tensors/methods, types, size",
                       description="Show what is inside a GGUF file or an ExecuTorch .pte program.")
    i.add_argument("file", type=Path, help="a .gguf or .pte file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--tensors", action="store_true", help="list every tensor")
    i.set_defaults(func=_inspect)

    d = sub.add_parser("doctor", help="show the CPU features found and the matmul kernels chosen",
                       description=doctor.__doc__.split("\n\n")[1].replace("\n", " "))
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=_doctor)


def _inspect(args: argparse.Namespace) -> int:
    info = inspect_file(args.file, tensors=args.tensors)
    print(json.dumps(info, indent=2, default=str) if args.json else format_report(info))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    info = doctor.report()
    print(json.dumps(info, indent=2) if args.json else doctor.format_report(info))
    return 0
