"""Energy, temperature and frequency parsers on fixture files in each source's real format (tests/fixtures/
energy/: RAPL powercap, power_supply uevent in both sign conventions, Pi 5 pmic_read_adc, Android sysfs and
dumpsys battery in mA and µA, macOS powermetrics with and without the Combined line, USB meter CSV), including
wrap-around, missing and garbled values; and the sources reading them through a transport."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from edgekit.devices import energy, sources
from edgekit.devices.transport import Local

FIX = Path(__file__).parent / "fixtures" / "energy"


def text(name: str) -> str:
    return (FIX / name).read_text()


class Rooted(Local):
    """This machine with /sys/... read from a fixture folder, to run the sources on recorded files."""

    def __init__(self, mapping: dict[str, Path]) -> None:
        self.mapping = mapping

    def _path(self, path: str) -> str:
        for prefix, root in self.mapping.items():
            if path.startswith(prefix):
                return str(root) + path[len(prefix):]
        return "/nonexistent" + path

    def read_file(self, path: str) -> str | None:
        return super().read_file(self._path(path))

    def list_dir(self, path: str) -> list[str]:
        return super().list_dir(self._path(path))

    def run_text(self, cmd, timeout=None):
        return 127, ""


def test_rapl_wraps_at_max_range():
    # 262143000000 -> 500000 µJ with a range of 262143328850: it wrapped, 328850 + 500000 µJ were used.
    assert energy.rapl_delta_j(262143000000, 500000, 262143328850) == pytest.approx(0.82885)
    assert energy.rapl_delta_j(1_000_000, 3_500_000, 262143328850) == pytest.approx(2.5)
    assert energy.rapl_delta_j(5, 1, None) is None  # wrapped with no known range: lost, not guessed


def test_rapl_source_on_fixture_files(tmp_path):
    import shutil

    root = tmp_path / "powercap"
    shutil.copytree(FIX / "rapl", root)
    src = sources.Rapl(Rooted({"/sys/class/powercap": root}))
    assert src.probe() is None
    assert src.zones == ["/sys/class/powercap/intel-rapl:0"]  # the package, not its core subzone
    (root / "intel-rapl:0" / "energy_uj").write_text("500000\n")  # the counter wrapped
    assert src.read().joules == pytest.approx(0.82885)
    (root / "intel-rapl:0" / "energy_uj").write_text("garbled\n")  # a missed read keeps the total
    assert src.read().joules == pytest.approx(0.82885)
    (root / "intel-rapl:0" / "energy_uj").write_text("2500000\n")
    assert src.read().joules == pytest.approx(2.82885)


def test_rapl_unreadable_says_root_only(tmp_path):
    import shutil

    root = tmp_path / "powercap"
    shutil.copytree(FIX / "rapl", root)
    (root / "intel-rapl:0" / "energy_uj").unlink()  # what an unprivileged read looks like: no text
    why = sources.Rapl(Rooted({"/sys/class/powercap": root})).probe()
    assert "root-only since Linux 5.10" in why
    assert "no RAPL" in sources.Rapl(Rooted({})).probe()


def test_power_supply_power_now_and_energy():
    f = energy.uevent(text("bat/BAT0/uevent"))
    assert energy.supply_watts(f) == pytest.approx(8.456)                 # POWER_NOW µW
    assert energy.supply_energy_j(f) == pytest.approx(40.12 * 3600)       # ENERGY_NOW µWh
    assert energy.supply_discharging(f) is True


def test_power_supply_current_both_signs():
    neg = energy.supply_watts(energy.uevent(text("uevent_current_negative.txt")))
    pos = energy.supply_watts(energy.uevent(text("uevent_current_positive.txt")))
    assert neg == pos == pytest.approx(1.25 * 3.815175)


def test_power_supply_garbled_and_missing():
    f = energy.uevent(text("uevent_garbled.txt"))
    assert energy.supply_watts(f) is None
    assert energy.supply_discharging(f) is None
    assert energy.supply_watts({}) is None


def test_power_supply_source(tmp_path):
    src = sources.PowerSupply(Rooted({"/sys/class/power_supply": FIX / "bat"}))
    assert src.probe() is None and "BAT0" in src.name
    assert src.read().watts == pytest.approx(8.456)
    assert "no battery" in sources.PowerSupply(Rooted({})).probe()


def test_android_units_and_signs():
    # Xiaomi-style µA, positive while discharging; Samsung-style mA, negative.
    xiaomi = energy.uevent(text("android/sys/class/power_supply/battery/uevent"))
    assert energy.supply_watts(xiaomi, android=True) == pytest.approx(0.612 * 3.921)
    samsung = energy.uevent(text("samsung_current_mA.txt"))
    assert energy.supply_watts(samsung, android=True) == pytest.approx(0.356 * 4.012)
    # Linux's own rule (µA) would make the mA reading a thousand times too small: the heuristic matters.
    assert energy.supply_watts(samsung) == pytest.approx(0.356e-3 * 4.012)


def test_dumpsys_battery():
    d = energy.dumpsys_battery(text("dumpsys_battery.txt"))
    assert d["voltage_v"] == pytest.approx(4.063) and d["temperature_c"] == pytest.approx(32.6)
    assert d["level"] == 84 and d["charge_counter_uah"] == 2450000 and d["powered"] is False
    assert energy.dumpsys_watts(text("dumpsys_battery.txt")) == pytest.approx(0.412 * 4.063)        # mA
    assert energy.dumpsys_watts(text("dumpsys_battery_usb_uA.txt")) == pytest.approx(0.398 * 4.301)  # µA
    assert energy.dumpsys_battery(text("dumpsys_battery_usb_uA.txt"))["powered"] is True
    assert energy.dumpsys_watts(text("dumpsys_battery_nocurrent.txt")) is None
    assert energy.dumpsys_battery("garbage\n:\nvoltage: x") == {}


def test_pmic_rails():
    rails = energy.pmic_rails(text("pmic_read_adc.txt"))
    assert rails["VDD_CORE"] == {"A": 1.4288, "V": 0.72}
    assert "EXT5V" in rails and "A" not in rails["EXT5V"]  # no input current channel
    # Σ V·I over rails with both readings, worked out from the fixture line by line.
    pairs = {}
    for line in text("pmic_read_adc.txt").split("\n"):
        if "=" in line:
            name, value = line.split()[0], float(line.split("=")[1][:-1])
            pairs.setdefault(name[:-2], []).append(value)
    expected = sum(v[0] * v[1] for v in pairs.values() if len(v) == 2)
    assert energy.pmic_watts(text("pmic_read_adc.txt")) == pytest.approx(expected)
    assert energy.pmic_watts(text("pmic_garbled.txt")) is None  # the only current is garbled
    assert energy.pmic_watts("") is None


def test_powermetrics_with_and_without_combined():
    assert energy.powermetrics_watts(text("powermetrics.txt")) == pytest.approx([4.1, 5.52])
    assert energy.powermetrics_watts(text("powermetrics_old.txt")) == pytest.approx([2.45])  # summed; empty skipped


def test_usb_meter_csv():
    lines = text("usb_meter.csv").splitlines()
    cols = energy.meter_header(lines[0])
    got = [energy.meter_watts(ln, cols) for ln in lines[1:]]
    assert got[0] == pytest.approx(5.112 * 0.812) and got[4] == pytest.approx(5.099 * 0.901)
    assert got[2] is None and got[3] is None  # garbled, missing
    wl = text("usb_meter_watts.csv").splitlines()
    assert [energy.meter_watts(ln, energy.meter_header(wl[0])) for ln in wl[1:]] == pytest.approx([4.02, 4.10])
    assert energy.meter_header("hello world") == {}


def test_stream_sources_read_a_command_and_a_file():
    cmd = [sys.executable, "-c", f"import sys,time; sys.stdout.write(open({str(FIX / 'powermetrics.txt')!r}).read());"
           "sys.stdout.flush(); time.sleep(30)"]
    s = sources.Stream("macOS powermetrics", argv=cmd, kind="powermetrics")
    try:
        assert s.probe() is None
        deadline = time.time() + 5
        while s.read().watts != pytest.approx(5.52) and time.time() < deadline:
            time.sleep(0.05)
        assert s.read().watts == pytest.approx(5.52)
    finally:
        s.close()
    m = sources.Stream("USB power meter", path=str(FIX / "usb_meter.csv"))
    assert m.probe() is None
    time.sleep(0.2)
    assert m.read().watts == pytest.approx(5.099 * 0.901)  # the newest good line
    bad = sources.Stream("USB power meter", path=str(FIX / "powermetrics_old.txt"))
    assert "no power reading" in bad.probe()
    assert "cannot start" in sources.Stream("USB power meter", argv=["/nonexistent/meter"]).probe()


def test_no_source_here_says_why():
    src, reasons = sources.find_source(Rooted({}))
    assert src is None and any("RAPL" in r for r in reasons) and any("battery" in r for r in reasons)


def test_thermal_and_frequency():
    assert energy.thermal_c(text("android/sys/class/thermal/thermal_zone0/temp")) == pytest.approx(41.2)
    assert energy.thermal_c("45\n") == 45 and energy.thermal_c("n/a") is None
    assert energy.cpufreq_mhz("2016000\n") == pytest.approx(2016.0) and energy.cpufreq_mhz("") is None
    assert energy.throttled([2400, 2400, 1500, 1400], 2400, [60, 70], 85) == ["frequency fell to 1400 of 2400 MHz"]
    assert energy.throttled([2400, 2400, 2390, 2400], 2400, [60, 86], 85)[0].startswith("temperature reached 86.0")
    assert energy.throttled([1200, 1200], 2400, [], None) == []  # never boosted: a governor's choice, not throttling


def test_timeline_energy_from_counter_and_from_power():
    from edgekit.devices.sampler import Sample, Timeline

    counter = Timeline(10, "RAPL", [Sample(t=float(i), joules=3.0 * i) for i in range(5)])  # 3 W
    assert counter.energy_j(0.5, 3.5) == pytest.approx(9.0)
    assert counter.energy_j(3.5, 9.0) is None  # not covered by samples: unknown, not extrapolated
    power = Timeline(10, "battery", [Sample(t=0.0, watts=2.0), Sample(t=1.0, watts=4.0), Sample(t=2.0, watts=4.0)])
    # trapezoids: 0.5..1 averages 3.5 W (0.5 s), 1..2 is 4 W (1 s)
    assert power.energy_j(0.5, 2.0) == pytest.approx(0.5 * 3.5 + 4.0)
    assert power.mean_watts(1.0, 2.0) == pytest.approx(4.0)


def test_sampler_gives_power_from_a_counter(tmp_path):
    import shutil

    from edgekit.devices.sampler import Sampler

    root = tmp_path / "powercap"
    shutil.copytree(FIX / "rapl", root)
    src = sources.Rapl(Rooted({"/sys/class/powercap": root}))
    assert src.probe() is None
    s = Sampler(Rooted({}), src)
    s.timeline.samples.append(s.sample())
    (root / "intel-rapl:0" / "energy_uj").write_text("500000\n")  # 0.82885 J later, across the wrap
    time.sleep(0.1)
    second = s.sample()
    dt = second.t - s.timeline.samples[0].t
    assert second.joules == pytest.approx(0.82885) and second.watts == pytest.approx(0.82885 / dt)


def test_sampler_thread_rate():
    from edgekit.devices.sampler import Sampler

    class Constant(sources.Source):
        name = "constant 2 W"

        def read(self):
            return sources.Reading(time.time(), watts=2.0)

    with Sampler(Rooted({}), Constant(), rate_hz=50) as s:
        time.sleep(0.05)  # the first sample is in
        t0 = time.time()
        time.sleep(0.4)
        t1 = time.time()
    tl = s.timeline
    assert 15 <= len(tl.samples) <= 35 and tl.to_dict()["n_samples"] == len(tl.samples)
    assert tl.energy_j(t0, t1) == pytest.approx(2.0 * (t1 - t0))
