"""An Android device over adb: `adb -s SERIAL shell` runs commands, files go to /data/local/tmp/edgekit
(copied only when the sha256 differs, pushed to a temporary name and renamed), the battery is read from its
sysfs or `dumpsys battery`. A phone has no edgekit Python: models run there through the static native runner
(edgekit-run, devices/runner.py), pushed beside them; `.gguf` files default to `--backend native` here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from edgekit.devices.transport import Transport, quote, sha256
from edgekit.errors import EdgekitError

REMOTE_DIR = "/data/local/tmp/edgekit"


def parse_devices(text: str) -> list[tuple[str, str]]:
    """`adb devices` -> [(serial, state)], state "device", "unauthorized", "offline", ..."""
    lines = text.splitlines()
    start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("List of devices")), len(lines))
    return [(p[0], p[1]) for p in (ln.split() for ln in lines[start:]) if len(p) >= 2]


def list_devices(adb: str = "adb") -> list[tuple[str, str]] | None:
    """Attached devices, or None when adb is not installed."""
    exe = shutil.which(adb)
    if not exe:
        return None
    try:
        p = subprocess.run([exe, "devices"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return []
    return parse_devices(p.stdout)


class Adb(Transport):
    os = "android"
    has_python = False

    def __init__(self, serial: str, adb: str = "adb") -> None:
        if not serial:
            raise EdgekitError("--device adb:SERIAL needs a serial (see `edgekit devices`)")
        self.serial, self.adb = serial, adb
        self.name = f"adb:{serial}"

    def argv(self, cmd: list[str]) -> list[str]:
        return [self.adb, "-s", self.serial, "shell", quote(cmd)]

    def probe(self):
        found = list_devices(self.adb)
        if found is None:
            raise EdgekitError(f"{self.name}: adb is not installed (apt-get install adb, or Android platform-tools)")
        state = dict(found).get(self.serial)
        if state != "device":
            listed = ", ".join(f"{s} ({st})" for s, st in found) or "none"
            raise EdgekitError(f"{self.name}: " + (f"device is {state}" if state else "no such device")
                               + f" (adb devices: {listed})")
        info = super().probe()
        self.os = "android"
        info.os = "android"
        return info

    def push(self, local: Path, with_files: list[Path] | None = None) -> str:
        rc, _ = self.run_text(["mkdir", "-p", REMOTE_DIR])
        if rc != 0:
            raise EdgekitError(f"{self.name}: cannot create {REMOTE_DIR}")
        for f in [Path(local), *(with_files or [])]:
            remote = f"{REMOTE_DIR}/{f.name}"
            rc, out = self.run_text(["sha256sum", remote])
            if rc == 0 and out.split() and out.split()[0] == sha256(f):
                continue
            tmp = f"{REMOTE_DIR}/.{f.name}.tmp"
            p = subprocess.run([self.adb, "-s", self.serial, "push", str(f), tmp], capture_output=True, text=True)
            if p.returncode != 0 or self.run_text(["mv", "-f", tmp, remote])[0] != 0:
                self.run_text(["rm", "-f", tmp])
                why = (p.stderr.strip().splitlines() or ["mv failed"])[-1]
                raise EdgekitError(f"{self.name}: pushing {f.name} failed ({why})")
        return f"{REMOTE_DIR}/{Path(local).name}"

    def python(self) -> list[str]:
        raise EdgekitError(f"{self.name}: a phone has no edgekit Python for the llamacpp and executorch backends: "
                           "use --backend native (edgekit-run)")
