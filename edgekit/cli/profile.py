"""`edgekit devices` and `edgekit profile`: which devices can be measured, and speed, memory and energy of
models on one of them (edgekit.devices)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(x < 0 for x in out):
        raise argparse.ArgumentTypeError(f"negative value in {text!r}")
    return out


def _pair(text: str) -> tuple[int, int]:
    p = _ints(text)
    if len(p) != 2:
        raise argparse.ArgumentTypeError(f"-pg takes PROMPT,GEN, got {text!r}")
    return p[0], p[1]


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("devices", help="devices the profiler can measure: this machine, adb devices, ssh hosts",
                       description="This machine (CPU, cores, RAM, energy source), Android devices adb lists, and "
                                   "the hosts of ~/.ssh/config.")
    d.set_defaults(func=_devices)
    p = sub.add_parser(
        "profile", help="tokens/s, memory and energy of models on a device (llama-bench's -p/-n/-pg/-d/-r)",
        description="Measure models on this machine or a device over ssh/adb: load time, time to first token,\n"
                    "prefill and decode tokens/s (mean ± sd and median over repeats), peak and steady RSS of the\n"
                    "process doing the work, energy where the device has a source (idle subtracted), and the\n"
                    "memory-bandwidth roofline.",
        epilog="examples:\n  edgekit profile demo.gguf\n"
               "  edgekit profile demo.gguf --device ssh://pi@raspberrypi.local -p 128 -n 128 -d 0,512 -r 5\n"
               "  edgekit profile a.gguf c.pte --backend llamacpp,executorch --report out/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", metavar="MODEL", help=".gguf or .pte files")
    p.add_argument("--device", default="local", help="local (default), ssh://user@host[:port] or adb:SERIAL")
    p.add_argument("--backend", help="comma-separated: llamacpp, executorch, native (default: by file format)")
    p.add_argument("-p", type=_ints, default=[512], metavar="N[,N]", help="prompt lengths (default 512; 0: none)")
    p.add_argument("-n", type=_ints, default=[128], metavar="N[,N]", help="generation lengths (default 128; 0: none)")
    p.add_argument("-pg", type=_pair, action="append", default=[], metavar="P,N", help="prompt then generation")
    p.add_argument("-d", type=_ints, default=[0], metavar="D[,D]", help="KV-cache depths (default 0)")
    p.add_argument("-r", type=int, default=5, metavar="N", help="repeats (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="unrecorded warm-up runs per test (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads (default: the backend's)")
    p.add_argument("--report", type=Path, metavar="DIR", help="write profile.json/.md/.csv and PNG plots there")
    p.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="energy/thermal sampling rate (default 10)")
    p.add_argument("--idle", type=float, default=2.0, metavar="S", help="idle baseline seconds (default 2)")
    p.add_argument("--meter", metavar="cmd:COMMAND|PATH",
                   help="an external USB power meter: a command printing CSV, or a serial device / CSV file")
    p.add_argument("--remote-python", default="python3", metavar="PATH",
                   help="ssh: the remote Python with edgekit installed (default python3)")
    p.add_argument("--identity", type=Path, metavar="KEY", help="ssh: private key file")
    p.add_argument("--known-hosts", type=Path, metavar="FILE",
                   help="ssh: known_hosts file (default ~/.cache/edgekit/known_hosts)")
    p.add_argument("--runner-wrap", metavar="CMD", default="",
                   help="native: run edgekit-run under this command there, e.g. 'taskset -c 4-7' (big cores)")
    p.add_argument("--json", action="store_true", help="print the report's JSON instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_profile)


def _devices(args: argparse.Namespace) -> int:
    from edgekit.devices.adb import list_devices
    from edgekit.devices.sources import find_source
    from edgekit.devices.ssh import config_hosts
    from edgekit.devices.transport import Local
    from edgekit.progress import human_bytes

    t = Local()
    info = t.probe()
    source, reasons = find_source(t)
    print(f"local: {info.cpu or '?'}, {info.cores} cores, {info.arch}, {human_bytes(info.ram_total)} RAM "
          f"({human_bytes(info.ram_free)} free), {info.os_version or info.os}")
    print(f"  energy: {source.name}" if source else f"  energy: no energy source: {'; '.join(reasons)}")
    if source:
        source.close()
    found = list_devices()
    if found is None:
        print("adb: not installed")
    else:
        print("adb: " + (", ".join(f"adb:{s} ({st})" for s, st in found) or "no devices attached"))
    hosts = config_hosts()
    print("ssh (~/.ssh/config): " + (", ".join(f"ssh://{h}" for h in hosts) or "no hosts"))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from edgekit.devices.bench import BACKENDS, ProfileConfig, Profiler
    from edgekit.devices.transport import open_device

    backends = None
    if args.backend:
        backends = [b.strip() for b in args.backend.split(",") if b.strip()]
        bad = [b for b in backends if b not in BACKENDS]
        if bad:
            raise EdgekitError(f"--backend {','.join(bad)}: unknown (choose from {', '.join(BACKENDS)})")
    if args.r < 1:
        raise EdgekitError("-r must be at least 1")
    if not any(args.p) and not any(args.n) and not args.pg:
        raise EdgekitError("nothing to measure: -p and -n are 0 and no -pg")
    if args.report and args.report.exists() and not args.report.is_dir():
        raise EdgekitError(f"--report {args.report}: exists and is not a directory")
    opts = {}
    if args.device.startswith("ssh://"):
        opts = {"identity": args.identity, "known_hosts": args.known_hosts, "remote_python": args.remote_python}
    t = open_device(args.device, **opts)
    cfg = ProfileConfig(prompts=args.p, gens=args.n, pairs=args.pg, depths=args.d, repeats=args.r,
                        warmup=args.warmup, threads=args.threads, backends=backends, rate_hz=args.rate,
                        idle_s=args.idle, meter=args.meter, runner_wrap=shlex.split(args.runner_wrap))
    tty = sys.stderr.isatty() and not args.quiet
    width = shutil.get_terminal_size().columns

    def progress(msg: str) -> None:
        if args.quiet:
            return
        if tty:
            sys.stderr.write("\r" + msg[:width - 1].ljust(width - 1))
        else:
            sys.stderr.write(f"profile: {msg}\n")
        sys.stderr.flush()

    try:
        report = Profiler(t, cfg, progress).run(args.models)
    finally:
        t.close()
        if tty:
            sys.stderr.write("\r" + " " * (width - 1) + "\r")
    if args.report:
        for f in report.write(args.report):
            if not args.quiet:
                print(f"profile: wrote {f}", file=sys.stderr)
    print(report.to_json() if args.json else report.to_markdown(), end="" if not args.json else "\n")
    if report.data["incomplete"]:
        print(f"edgekit: profile incomplete: {report.data['incomplete_reason']}", file=sys.stderr)
        return 130 if "interrupted" in report.data["incomplete_reason"] else 1
    return 0
