"""The `edgekit` command: parses, calls the Python API, prints. One module per command group:

    convert   convert, imatrix                  (edgekit.converters)
    compress  prune, sparsify, distill          (edgekit.converters.compress)
    measure   eval                              (edgekit.eval)
    info      inspect, doctor                   (edgekit.inspect, edgekit.doctor)
    run       chat, generate, bundle, serve     (edgekit.runtime; chat.py is the terminal loop)
    profile   devices, profile                  (edgekit.devices)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

from edgekit import __version__
from edgekit.errors import EdgekitError, Terminated


def build_parser() -> argparse.ArgumentParser:
    from edgekit.cli import compress, convert, info, measure, profile, run

    p = argparse.ArgumentParser(prog="edgekit", description="Put language models on the devices people own.")
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (convert, compress, measure, info, run, profile):
        group.add_parsers(sub)
    return p


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Every way a command can end, as an exit code and at most one line on stderr: 0 done, 1 a user
    mistake (EdgekitError), 70 a bug (traceback only with EDGEKIT_DEBUG=1), 130/143 interrupted by Ctrl-C
    / SIGTERM (outputs in progress are removed), 141 stdout closed by the reader (`| head`)."""
    from edgekit.quiet import quiet_torch_logs

    args = build_parser().parse_args(argv)
    quiet_torch_logs()  # torchao (imported by transformers when installed) logs import-time noise
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except EdgekitError as e:
        print(f"edgekit: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print("edgekit: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away: nothing more can be written, and Python must not try again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("edgekit: output closed by the reader; stopped", file=sys.stderr)
        return 141
    except Exception as e:  # noqa: BLE001 -- the last line of defence: a bug, said as one
        if os.environ.get("EDGEKIT_DEBUG") == "1":
            traceback.print_exc()
        else:
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(f"edgekit: internal error (a bug in edgekit, please report it): {type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''} at {Path(where.filename).name}:{where.lineno}; "
                  "EDGEKIT_DEBUG=1 shows the traceback", file=sys.stderr)
        return 70
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
