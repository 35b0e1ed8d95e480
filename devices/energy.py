"""Energy and thermal readings as pure functions over the text each source produces, so every format is
tested on fixture files copied from real devices' formats (tests/fixtures/energy/). The sources that read
them live in devices/sources.py.

Units: every parser returns SI units (watts, joules, volts, amperes, °C, MHz) or None when the value is
missing or garbled; none raises on bad text.
"""

from __future__ import annotations

import re

UJ = 1e-6  # µJ, µW, µV, µA -> SI


def number(text: str | None) -> float | None:
    """A sysfs value ("3815175\\n") as a float; None if missing or garbled."""
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


# -- Linux RAPL powercap ----------------------------------------------------------------------------------

def rapl_delta_j(prev_uj: float, cur_uj: float, max_range_uj: float | None) -> float | None:
    """Joules between two `energy_uj` readings. The counter wraps at `max_energy_range_uj`: a negative delta
    means it wrapped once (two wraps within one sample period are impossible at sampling rates >= 1 Hz)."""
    d = cur_uj - prev_uj
    if d < 0:
        if not max_range_uj or max_range_uj <= 0:
            return None  # wrapped, but the range is unknown: the sample is lost, not guessed
        d += max_range_uj
    return d * UJ


# -- /sys/class/power_supply (laptop batteries; Android's battery sysfs is the same class) -------------------

def uevent(text: str) -> dict[str, str]:
    """`POWER_SUPPLY_VOLTAGE_NOW=3815175` lines -> {"voltage_now": "3815175"} (the names of the sysfs files)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("POWER_SUPPLY_"):
            out[key[len("POWER_SUPPLY_"):].lower()] = value.strip()
    return out


def current_amps(raw: float, *, android: bool = False) -> float:
    """A current reading in amperes, sign dropped. Linux documents µA; Android vendors report mA on some
    models (Samsung), so there a magnitude below 10000 is taken as mA, as battery apps do."""
    raw = abs(raw)
    if android and 0 < raw < 10000:
        return raw * 1e-3
    return raw * UJ


def supply_watts(fields: dict[str, str], *, android: bool = False) -> float | None:
    """Power drawn from a power_supply: `power_now` (µW) if present, else |current_now| × voltage_now (µA ×
    µV). Drivers disagree on the sign of current (negative, positive or always positive while
    discharging), so only the magnitude is used; `status` says which way it flows."""
    p = number(fields.get("power_now"))
    if p is not None:
        return abs(p) * UJ
    i, v = number(fields.get("current_now")), number(fields.get("voltage_now"))
    if i is None or v is None:
        return None
    return current_amps(i, android=android) * abs(v) * UJ


def supply_energy_j(fields: dict[str, str]) -> float | None:
    """Remaining energy (`energy_now`, µWh) in joules: a counter that falls while discharging."""
    e = number(fields.get("energy_now"))
    return None if e is None else e * UJ * 3600


def supply_discharging(fields: dict[str, str]) -> bool | None:
    status = fields.get("status", "").strip().lower()
    return {"discharging": True, "charging": False, "full": False, "not charging": False}.get(status)


# -- Raspberry Pi 5: vcgencmd pmic_read_adc ----------------------------------------------------------------

_PMIC = re.compile(r"^\s*(\S+)\s+(current|volt)\(\d+\)=([-+0-9.eE]+)([AV])\s*$")


def pmic_rails(text: str) -> dict[str, dict[str, float]]:
    """`  VDD_CORE_A current(7)=1.42880000A` / `  VDD_CORE_V volt(15)=0.72000000V` -> {"VDD_CORE": {"A": 1.43,
    "V": 0.72}}; garbled lines are skipped."""
    rails: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _PMIC.match(line)
        if not m:
            continue
        name, _, value, unit = m.groups()
        try:
            x = float(value)
        except ValueError:
            continue
        base = name[:-2] if name.endswith(("_A", "_V")) else name
        rails.setdefault(base, {})[unit] = x
    return rails


def pmic_watts(text: str) -> float | None:
    """Σ V·I over the rails with both readings. The PMIC has no 5 V input current channel, so this is
    the rails' power ("PMIC rails"), below the board's wall power."""
    rails = [r["V"] * r["A"] for r in pmic_rails(text).values() if "V" in r and "A" in r]
    return sum(rails) if rails else None


# -- Android `dumpsys battery` -----------------------------------------------------------------------------

def dumpsys_battery(text: str) -> dict[str, float | bool]:
    """`  voltage: 4063` (mV), `  temperature: 326` (0.1 °C), `  Charge counter: 2450000` (µAh), `  level: 84`,
    `  AC/USB/Wireless powered: true`, and `current now` (vendor units) where the build prints it. Keys:
    voltage_v, temperature_c, charge_counter_uah, level, current_raw, powered."""
    out: dict[str, float | bool] = {}
    powered = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key.endswith(" powered"):
            if value in ("true", "false"):
                powered = bool(powered) or value == "true"
            continue
        x = number(value)
        if x is None:
            continue
        if key == "voltage":
            out["voltage_v"] = x / 1000
        elif key == "temperature":
            out["temperature_c"] = x / 10
        elif key == "charge counter":
            out["charge_counter_uah"] = x
        elif key == "level":
            out["level"] = x
        elif key in ("current now", "current_now"):
            out["current_raw"] = x
    if powered is not None:
        out["powered"] = powered
    return out


def dumpsys_watts(text: str) -> float | None:
    d = dumpsys_battery(text)
    if "current_raw" not in d or "voltage_v" not in d:
        return None
    return current_amps(float(d["current_raw"]), android=True) * float(d["voltage_v"])


# -- macOS powermetrics --------------------------------------------------------------------------------------

_MW = re.compile(r"^\s*(CPU|GPU|ANE|Combined) Power(?: \([^)]*\))?:\s*([0-9.]+)\s*mW\s*$")


def powermetrics_watts(text: str) -> list[float]:
    """Watts of each `*** Sampled system activity ***` block: its Combined line, or CPU + GPU + ANE when the
    version prints no Combined line. A block with no power lines gives nothing."""
    out = []
    for block in re.split(r"^\*\*\* Sampled system activity.*$", text, flags=re.M)[1:]:
        parts: dict[str, float] = {}
        for line in block.splitlines():
            m = _MW.match(line)
            if m:
                parts[m.group(1)] = float(m.group(2)) / 1000
        if "Combined" in parts:
            out.append(parts["Combined"])
        elif parts:
            out.append(sum(parts.values()))
    return out


# -- external USB power meter: a command's output or a serial CSV stream --------------------------------------

def meter_header(line: str) -> dict[str, int]:
    """Column indexes of a meter's CSV header: power (W), voltage (V), current (A), matched by name."""
    cols = {}
    for i, name in enumerate(c.strip().lower() for c in line.split(",")):
        for key, names in (("W", ("w", "watts", "power", "power_w")), ("V", ("v", "volts", "voltage", "voltage_v")),
                           ("A", ("a", "amps", "current", "current_a"))):
            if name in names:
                cols[key] = i
    return cols


def meter_watts(line: str, cols: dict[str, int]) -> float | None:
    """Watts of one CSV data line: its power column, else voltage × current; None for a garbled line."""
    cells = line.strip().split(",")

    def cell(key: str) -> float | None:
        i = cols.get(key)
        return number(cells[i]) if i is not None and i < len(cells) else None

    w = cell("W")
    if w is not None:
        return abs(w)
    v, a = cell("V"), cell("A")
    return abs(v * a) if v is not None and a is not None else None


# -- CPU temperature and frequency ---------------------------------------------------------------------------

def thermal_c(text: str | None) -> float | None:
    """thermal_zone*/temp (m°C) -> °C. A few drivers report whole degrees: values below 200 are taken as °C."""
    x = number(text)
    if x is None:
        return None
    return x if abs(x) < 200 else x / 1000


def cpufreq_mhz(text: str | None) -> float | None:
    """scaling_cur_freq (kHz) -> MHz."""
    x = number(text)
    return None if x is None or x <= 0 else x / 1000


def throttled(freqs_mhz: list[float], max_mhz: float | None, temps_c: list[float],
              trip_c: float | None) -> list[str]:
    """Why a run looks throttled: frequency fell below 90 % of the maximum in the second half of the run while
    it had reached it earlier, or a temperature reached the zone's trip point. Empty when neither."""
    why = []
    if max_mhz and freqs_mhz:
        late = freqs_mhz[len(freqs_mhz) // 2:]
        if min(late) < 0.9 * max_mhz and max(freqs_mhz) >= 0.95 * max_mhz:
            why.append(f"frequency fell to {min(late):.0f} of {max_mhz:.0f} MHz")
    if trip_c is not None and temps_c and max(temps_c) >= trip_c:
        why.append(f"temperature reached {max(temps_c):.1f} °C (trip point {trip_c:.1f} °C)")
    return why
