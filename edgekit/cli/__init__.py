"""The `edgekit` command: parses, calls the Python API, prints. One module per command group:

    convert   convert, imatrix                  (edgekit.converters)
    compress  prune, sparsify, distill          (edgekit.converters.compress)
    measure   eval                              (edgekit.eval)
    info      inspect, doctor                   (edgekit.inspect, edgekit.doctor)
    run       chat, generate, bundle, serve     (edgekit.runtime; chat.py is the terminal loop)
"""

from __future__ import annotations

import argparse
import sys

from edgekit import __version__
from edgekit.errors import EdgekitError


def build_parser() -> argparse.ArgumentParser:
    from edgekit.cli import compress, convert, info, measure, run

    p = argparse.ArgumentParser(prog="edgekit", description="Put language models on the devices people own.")
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (convert, compress, measure, info, run):
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from edgekit.quiet import quiet_torch_logs

    args = build_parser().parse_args(argv)
    quiet_torch_logs()  # torchao (imported by transformers when installed) logs import-time noise
    try:
        return args.func(args)
    except EdgekitError as e:
        print(f"edgekit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
