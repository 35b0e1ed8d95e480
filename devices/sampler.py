"""Samples an energy source, CPU temperature and CPU frequency in its own thread at a fixed rate while a
measurement runs, and turns the samples into joules between two instants (idle baseline, prefill, decode).
The rate and the sample count go into the report."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.devices import energy

if TYPE_CHECKING:
    from edgekit.devices.sources import Source
    from edgekit.devices.transport import Transport

THERMAL = "/sys/class/thermal"
CPUFREQ = "/sys/devices/system/cpu/cpu0/cpufreq"


@dataclass
class Sample:
    t: float
    joules: float | None = None
    watts: float | None = None
    temp_c: float | None = None
    freq_mhz: float | None = None


@dataclass
class Timeline:
    rate_hz: float
    source: str
    samples: list[Sample] = field(default_factory=list)
    max_freq_mhz: float | None = None
    trip_c: float | None = None

    def energy_j(self, t0: float, t1: float) -> float | None:
        """Joules used between t0 and t1: the counter's difference (interpolated at both ends), else the
        trapezoid integral of the power samples. None without enough samples inside [t0, t1]."""
        if t1 <= t0:
            return None
        counter = [(s.t, s.joules) for s in self.samples if s.joules is not None]
        if len(counter) >= 2:
            return _interp(counter, t1) - _interp(counter, t0) if counter[0][0] <= t0 and counter[-1][0] >= t1 \
                else None
        power = [(s.t, s.watts) for s in self.samples if s.watts is not None]
        if len(power) < 2 or power[0][0] > t0 or power[-1][0] < t1:
            return None
        pts = [(t0, _interp(power, t0))] + [p for p in power if t0 < p[0] < t1] + [(t1, _interp(power, t1))]
        return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:], strict=False))

    def mean_watts(self, t0: float, t1: float) -> float | None:
        j = self.energy_j(t0, t1)
        return None if j is None else j / (t1 - t0)

    def throttling(self) -> list[str]:
        return energy.throttled([s.freq_mhz for s in self.samples if s.freq_mhz],
                                self.max_freq_mhz, [s.temp_c for s in self.samples if s.temp_c is not None],
                                self.trip_c)

    def to_dict(self) -> dict[str, Any]:
        return {"rate_hz": self.rate_hz, "source": self.source, "n_samples": len(self.samples),
                "max_freq_mhz": self.max_freq_mhz, "trip_c": self.trip_c,
                "samples": [[s.t, s.joules, s.watts, s.temp_c, s.freq_mhz] for s in self.samples]}


def _interp(pts: list[tuple[float, float]], t: float) -> float:
    for (ta, va), (tb, vb) in zip(pts, pts[1:], strict=False):
        if ta <= t <= tb:
            return va if tb == ta else va + (vb - va) * (t - ta) / (tb - ta)
    return pts[0][1] if t < pts[0][0] else pts[-1][1]


def cpu_zone(t: Transport) -> str | None:
    """The thermal zone of the CPU: one whose type names the CPU or SoC, else the first zone."""
    zones = [z for z in t.list_dir(THERMAL) if z.startswith("thermal_zone")]
    for z in zones:
        kind = (t.read_file(f"{THERMAL}/{z}/type") or "").strip().lower()
        if any(k in kind for k in ("cpu", "soc", "x86_pkg", "k10temp", "tctl", "package")):
            return f"{THERMAL}/{z}"
    return f"{THERMAL}/{zones[0]}" if zones else None


class Sampler:
    """`with Sampler(transport, source, rate_hz) as s: ...` then `s.timeline`. source may be None (temperature
    and frequency are still sampled where the device has them)."""

    def __init__(self, t: Transport, source: Source | None, rate_hz: float = 10.0) -> None:
        self.t, self.source = t, source
        self.zone = cpu_zone(t)
        self.timeline = Timeline(rate_hz=rate_hz, source=source.name if source else "")
        self.timeline.max_freq_mhz = energy.cpufreq_mhz(t.read_file(f"{CPUFREQ}/cpuinfo_max_freq"))
        if self.zone:
            trips = []
            for i in range(4):  # passive/hot/critical trip points, numbered from 0
                x = energy.thermal_c(t.read_file(f"{self.zone}/trip_point_{i}_temp"))
                if x is None:
                    break
                if x > 0:
                    trips.append(x)
            self.timeline.trip_c = min(trips) if trips else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgekit-sampler")

    def sample(self) -> Sample:
        r = self.source.read() if self.source else None
        # Stamped when sampled: a streamed reading (a meter's newest line) holds until the next one arrives.
        s = Sample(t=time.time(), joules=r.joules if r else None, watts=r.watts if r else None)
        prev = next((p for p in reversed(self.timeline.samples) if p.joules is not None), None)
        if s.watts is None and s.joules is not None and prev and s.t > prev.t:  # a counter: power for the plots
            s.watts = (s.joules - prev.joules) / (s.t - prev.t)
        if self.zone:
            s.temp_c = energy.thermal_c(self.t.read_file(f"{self.zone}/temp"))
        s.freq_mhz = energy.cpufreq_mhz(self.t.read_file(f"{CPUFREQ}/scaling_cur_freq"))
        return s

    def _run(self) -> None:
        period = 1.0 / self.timeline.rate_hz
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.timeline.samples.append(self.sample())
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.timeline.samples.append(self.sample())  # one at the very end, so the last phase is covered
