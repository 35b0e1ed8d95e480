"""Energy sources: each one probes the device (`probe()` -> None when usable, else the reason it is not) and
then gives `Reading`s: a cumulative energy counter (joules) or an instantaneous power (watts). They read the
device through its transport (a file or a command's output), so the same source works locally, over ssh and
over adb. The text formats are parsed by devices/energy.py.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekit.devices import energy

if TYPE_CHECKING:
    from edgekit.devices.transport import Transport

POWERCAP = "/sys/class/powercap"
POWER_SUPPLY = "/sys/class/power_supply"


@dataclass
class Reading:
    t: float                       # time.time() of the reading
    joules: float | None = None    # cumulative energy since the source started
    watts: float | None = None     # instantaneous power


class Source:
    name = ""       # as the report names it
    note = ""       # what the number means (e.g. rails only, charging)

    def probe(self) -> str | None:
        """None if this source can be read here, else why not (one line)."""
        raise NotImplementedError

    def read(self) -> Reading | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Rapl(Source):
    """Intel/AMD RAPL package zones: `energy_uj` counters (µJ) that wrap at `max_energy_range_uj`."""

    name = "RAPL powercap (CPU packages)"

    def __init__(self, t: Transport) -> None:
        self.t = t
        self.zones: list[str] = []
        self.last: dict[str, float] = {}
        self.range: dict[str, float | None] = {}
        self.total = 0.0

    def probe(self) -> str | None:
        zones = [f"{POWERCAP}/{z}" for z in self.t.list_dir(POWERCAP)
                 if z.startswith("intel-rapl") and z.count(":") == 1]  # packages; "intel-rapl:0:0" is a subzone
        if not zones:
            return "no RAPL powercap (/sys/class/powercap has no intel-rapl zone: not an x86 Linux machine, or a VM)"
        for z in zones:
            raw = energy.number(self.t.read_file(f"{z}/energy_uj"))
            if raw is None:
                return (f"{z}/energy_uj is not readable: RAPL is root-only since Linux 5.10 (CVE-2020-8694); "
                        "run as root or make energy_uj readable")
            self.zones.append(z)
            self.last[z] = raw
            self.range[z] = energy.number(self.t.read_file(f"{z}/max_energy_range_uj"))
        return None

    def read(self) -> Reading | None:
        now = time.time()
        for z in self.zones:
            raw = energy.number(self.t.read_file(f"{z}/energy_uj"))
            if raw is None:
                continue  # a missed read: the next delta covers both periods
            d = energy.rapl_delta_j(self.last[z], raw, self.range[z])
            self.last[z] = raw
            if d is not None:
                self.total += d
        return Reading(now, joules=self.total)


class PowerSupply(Source):
    """A battery in /sys/class/power_supply (laptops; Android phones' battery sysfs is the same class):
    power_now, or |current_now| × voltage_now."""

    def __init__(self, t: Transport, android: bool = False) -> None:
        self.t, self.android = t, android
        self.path = ""
        self.name = "Android battery sysfs" if android else "battery (power_supply)"

    def fields(self) -> dict[str, str]:
        return energy.uevent(self.t.read_file(f"{self.path}/uevent") or "")

    def probe(self) -> str | None:
        batteries = [f"{POWER_SUPPLY}/{d}" for d in self.t.list_dir(POWER_SUPPLY)
                     if (self.t.read_file(f"{POWER_SUPPLY}/{d}/type") or "").strip() == "Battery"]
        if not batteries:
            return "no battery in /sys/class/power_supply"
        for b in batteries:
            self.path = b
            f = self.fields()
            if energy.supply_watts(f, android=self.android) is not None:
                self.name += f" {b.rsplit('/', 1)[-1]}"
                if energy.supply_discharging(f) is False:
                    self.note = "the battery is charging or full: its power is not the device's draw"
                return None
        return f"{batteries[0]}: no power_now or current_now/voltage_now to read"

    def read(self) -> Reading | None:
        w = energy.supply_watts(self.fields(), android=self.android)
        return None if w is None else Reading(time.time(), watts=w)


class Pmic(Source):
    """Raspberry Pi 5: `vcgencmd pmic_read_adc`, Σ V·I over the PMIC's rails."""

    name = "PMIC rails (vcgencmd pmic_read_adc)"
    note = "the PMIC has no 5 V input current channel: rail power is below the board's wall power"

    def __init__(self, t: Transport) -> None:
        self.t = t

    def _watts(self) -> float | None:
        rc, out = self.t.run_text(["vcgencmd", "pmic_read_adc"])
        return energy.pmic_watts(out) if rc == 0 else None

    def probe(self) -> str | None:
        return None if self._watts() is not None else "no vcgencmd pmic_read_adc (not a Raspberry Pi 5)"

    def read(self) -> Reading | None:
        w = self._watts()
        return None if w is None else Reading(time.time(), watts=w)


class Dumpsys(Source):
    """Android `dumpsys battery`, for builds whose battery sysfs is not readable from the shell."""

    name = "Android dumpsys battery"

    def __init__(self, t: Transport) -> None:
        self.t = t

    def _text(self) -> str:
        rc, out = self.t.run_text(["dumpsys", "battery"])
        return out if rc == 0 else ""

    def probe(self) -> str | None:
        d = energy.dumpsys_battery(self._text())
        if "voltage_v" not in d:
            return "no dumpsys battery (not an Android device)"
        if "current_raw" not in d:
            return "dumpsys battery prints no current on this build"
        if d.get("powered"):
            self.note = "the phone is on USB/AC power: it charges while it runs, so energy is unreliable"
        return None

    def read(self) -> Reading | None:
        w = energy.dumpsys_watts(self._text())
        return None if w is None else Reading(time.time(), watts=w)


class Stream(Source):
    """A power reading from a long-running command's lines (macOS powermetrics, a USB meter's logging tool) or
    a serial device streaming CSV (`/dev/ttyUSB0`). A thread parses lines as they arrive; `read()` gives the
    newest value."""

    def __init__(self, name: str, argv: list[str] | None = None, path: str | None = None,
                 kind: str = "meter") -> None:
        self.name, self.argv, self.path, self.kind = name, argv, path, kind
        self.latest: Reading | None = None
        self.proc: subprocess.Popen | None = None
        self.error = ""

    def probe(self) -> str | None:
        try:
            if self.argv:
                self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                lines = self.proc.stdout
            else:
                lines = open(self.path, encoding="ascii", errors="replace")  # noqa: SIM115 -- read by the thread
        except OSError as e:
            return f"{self.name}: cannot start ({e.strerror or e})"
        threading.Thread(target=self._pump, args=(lines,), daemon=True).start()
        deadline = time.time() + 5
        while self.latest is None and time.time() < deadline and not self.error:
            time.sleep(0.05)
        return None if self.latest else f"{self.name}: no power reading within 5 s {self.error}".rstrip()

    def _pump(self, lines) -> None:
        cols: dict[str, int] = {}
        block: list[str] = []
        for line in lines:
            if self.kind == "powermetrics":
                if line.startswith("*** Sampled") and block:
                    w = energy.powermetrics_watts("".join(block))
                    if w:
                        self.latest = Reading(time.time(), watts=w[-1])
                    block = []
                block.append(line)
                w = energy.powermetrics_watts("".join(block))  # a block is complete at its Combined line
                if w and "Combined" in line:
                    self.latest = Reading(time.time(), watts=w[-1])
                    block = []
            elif not cols:
                cols = energy.meter_header(line)
                if not cols:
                    self.error = f"(first line is not a CSV header with W, or V and A: {line.strip()[:60]!r})"
                    return
            else:
                w = energy.meter_watts(line, cols)
                if w is not None:
                    self.latest = Reading(time.time(), watts=w)

    def read(self) -> Reading | None:
        return self.latest

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def find_source(t: Transport, meter: str | None = None) -> tuple[Source | None, list[str]]:
    """The first usable energy source of a device, and why each other one is not usable. meter: an external
    USB meter, `cmd:COMMAND ...` or a serial/CSV path, tried first (it measures the whole board)."""
    import shlex

    candidates: list[Source] = []
    if meter:
        candidates.append(Stream("USB power meter", argv=shlex.split(meter[4:])) if meter.startswith("cmd:")
                          else Stream("USB power meter", path=meter))
    if t.os == "android":
        candidates += [PowerSupply(t, android=True), Dumpsys(t)]
    elif t.os == "darwin":
        candidates.append(Stream("macOS powermetrics", argv=["sudo", "-n", "powermetrics", "--samplers",
                                                             "cpu_power,gpu_power", "-i", "200"], kind="powermetrics"))
    else:
        candidates += [Rapl(t), Pmic(t), PowerSupply(t)]
    reasons = []
    for s in candidates:
        why = s.probe()
        if why is None:
            return s, reasons
        s.close()
        reasons.append(why)
    return None, reasons
