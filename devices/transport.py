"""A device the profiler talks to: run a command, push a file (only when its sha256 differs), read a file,
and probe what it is. `Local` is this machine; devices/ssh.py and devices/adb.py are the remote ones.
Every transport gives the same `DeviceInfo` and runs the same worker, so reports have one schema."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

# One shell script gathers everything probe() needs in one round trip (ssh and adb pay per command).
PROBE_SCRIPT = ("uname -s; uname -r; uname -m; (nproc 2>/dev/null || getconf _NPROCESSORS_ONLN); "
                "echo ---meminfo; cat /proc/meminfo 2>/dev/null | head -5; echo ---cpuinfo; "
                "grep -m1 -E '^(model name|Hardware|Model)[[:space:]]*:' /proc/cpuinfo 2>/dev/null; "
                "echo ---os; (cat /etc/os-release 2>/dev/null | grep -m1 PRETTY_NAME; "
                "getprop ro.build.version.release 2>/dev/null; getprop ro.product.model 2>/dev/null; "
                "sysctl -n machdep.cpu.brand_string hw.memsize 2>/dev/null; sw_vers -productVersion 2>/dev/null) | cat")


@dataclass
class DeviceInfo:
    name: str = ""          # how the user named it: "local", "ssh://pi@raspberrypi", "adb:R5CT1234"
    os: str = ""            # "linux", "android", "darwin"
    os_version: str = ""
    kernel: str = ""
    arch: str = ""          # uname -m: x86_64, aarch64, arm64
    cpu: str = ""
    cores: int = 0
    ram_total: int = 0      # bytes
    ram_free: int = 0       # bytes available (MemAvailable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_probe(text: str, name: str) -> DeviceInfo:
    """PROBE_SCRIPT's output -> DeviceInfo; unknown fields stay empty."""
    head, _, rest = text.partition("---meminfo")
    mem, _, rest = rest.partition("---cpuinfo")
    cpu, _, osr = rest.partition("---os")
    lines = [ln.strip() for ln in head.strip().splitlines()]
    info = DeviceInfo(name=name)
    if len(lines) >= 3:
        info.os, info.kernel, info.arch = lines[0].lower(), lines[1], lines[2]
    if len(lines) >= 4 and lines[3].isdigit():
        info.cores = int(lines[3])
    for ln in mem.splitlines():
        key, _, value = ln.partition(":")
        kb = value.split()[0] if value.split() else ""
        if kb.isdigit() and key in ("MemTotal", "MemAvailable"):
            setattr(info, "ram_total" if key == "MemTotal" else "ram_free", int(kb) * 1024)
    for ln in cpu.splitlines():
        if ":" in ln:
            info.cpu = ln.split(":", 1)[1].strip()
    extra = [ln.strip() for ln in osr.strip().splitlines() if ln.strip()]
    if extra and extra[0].startswith("PRETTY_NAME="):
        info.os_version = extra[0].split("=", 1)[1].strip('"')
    elif info.os == "linux" and len(extra) >= 2:  # Android: getprop's release and model
        info.os, info.os_version = "android", f"Android {extra[0]} ({extra[1]})"
    elif info.os == "darwin" and extra:
        if len(extra) >= 3:
            info.cpu, info.os_version = extra[0], f"macOS {extra[2]}"
            if extra[1].isdigit():
                info.ram_total = int(extra[1])
    return info


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Transport:
    """What the profiler needs from a device. Subclasses implement `argv` (how a command runs there),
    `push` and `read_file`; the rest is shared."""

    name = "local"
    os = "linux"
    timeout = 30.0  # seconds for a short command (probe, read); a measurement has no limit
    has_python = True  # whether edgekit's Python worker can run there (not on a phone)

    def argv(self, cmd: list[str]) -> list[str]:
        """The local argv that runs cmd on the device."""
        return cmd

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

    def run_text(self, cmd: list[str], timeout: float | None = None) -> tuple[int, str]:
        """(exit code, stdout) of a short command; 127 if it cannot start, 124 if it timed out."""
        try:
            p = subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout or self.timeout)
        except FileNotFoundError:
            return 127, ""
        except subprocess.TimeoutExpired:
            return 124, ""
        return p.returncode, p.stdout

    def shell(self, script: str) -> tuple[int, str]:
        return self.run_text(["sh", "-c", script])

    def read_file(self, path: str) -> str | None:
        rc, out = self.run_text(["cat", path])
        return out if rc == 0 else None

    def list_dir(self, path: str) -> list[str]:
        rc, out = self.run_text(["ls", "-1", path])
        return out.split() if rc == 0 else []

    def probe(self) -> DeviceInfo:
        rc, out = self.shell(PROBE_SCRIPT)
        if rc != 0 and not out:
            raise EdgekitError(f"{self.name}: cannot probe the device (exit {rc})")
        info = parse_probe(out, self.name)
        self.os = info.os or self.os
        return info

    def push(self, local: Path, with_files: list[Path] | None = None) -> str:
        """The device-side path of a local file, copied there (with its side files, into the same folder) unless
        a file with its sha256 is there already."""
        raise NotImplementedError

    def python(self) -> list[str]:
        """How to run edgekit's Python there (the worker): `python -m edgekit.devices.worker`."""
        raise EdgekitError(f"{self.name}: no edgekit Python on this device")

    def close(self) -> None:
        pass


class Local(Transport):
    """This machine: files are read directly and models are used in place."""

    def read_file(self, path: str) -> str | None:
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return None

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def push(self, local: Path, with_files: list[Path] | None = None) -> str:
        return str(Path(local).resolve())

    def python(self) -> list[str]:
        return [sys.executable]


def quote(cmd: list[str]) -> str:
    return shlex.join(cmd)


def open_device(spec: str, **options: Any) -> Transport:
    """A transport for `local`, `ssh://user@host[:port]` or `adb:SERIAL`."""
    if spec in ("", "local"):
        return Local()
    if spec.startswith("ssh://"):
        from edgekit.devices.ssh import Ssh

        return Ssh(spec, **options)
    if spec.startswith("adb:"):
        from edgekit.devices.adb import Adb

        return Adb(spec[4:], **{k: v for k, v in options.items() if k == "adb"})
    raise EdgekitError(f"--device {spec!r}: expected local, ssh://user@host[:port] or adb:SERIAL")
