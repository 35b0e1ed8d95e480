"""The adb transport against a stand-in `adb` (tests/fixtures/adb/adb): no phone can exist on a build machine,
so the stand-in implements the adb commands edgekit uses (devices, shell, push) over a local folder that plays
the phone's file system, with its battery sysfs, thermal zone, cpufreq and /proc from fixture files in the
formats real phones use."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgekit.devices.adb import Adb, list_devices, parse_devices
from edgekit.devices.bench import ProfileConfig, Profiler
from edgekit.devices.sampler import Sampler
from edgekit.devices.sources import find_source
from edgekit.errors import EdgekitError

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def phone(tmp_path, monkeypatch) -> Adb:
    root = tmp_path / "phone"
    shutil.copytree(FIX / "energy" / "android", root)
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_SERIAL", "R5CT1234")
    return Adb("R5CT1234", adb=str(FIX / "adb" / "adb"))


def test_parse_adb_devices():
    text = ("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
            "List of devices attached\nR5CT1234\tdevice\nemulator-5554\toffline\n0123\tunauthorized\n\n")
    assert parse_devices(text) == [("R5CT1234", "device"), ("emulator-5554", "offline"), ("0123", "unauthorized")]
    assert list_devices("/nonexistent/adb") is None


def test_probe_battery_and_sampling(phone):
    info = phone.probe()
    assert (info.os, info.os_version, info.ram_total, info.ram_free) == (
        "android", "Android 14 (Stand-in Phone)", 7812345 * 1024, 3012345 * 1024)
    assert "SM8550" in info.cpu
    source, _ = find_source(phone)
    assert source.name == "Android battery sysfs battery"
    assert source.read().watts == pytest.approx(0.612 * 3.921)  # µA, positive while discharging
    s = Sampler(phone, source, rate_hz=20)
    got = s.sample()
    assert got.temp_c == pytest.approx(41.2) and got.freq_mhz == pytest.approx(2016.0)
    assert s.timeline.max_freq_mhz == pytest.approx(3187.2)


def test_push_only_when_sha256_differs_then_no_runner(phone, tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    root = Path(phone_root := str(tmp_path / "phone"))
    assert phone.push(model) == "/data/local/tmp/edgekit/m.gguf"
    assert (root / "data/local/tmp/edgekit/m.gguf").read_bytes() == model.read_bytes()
    phone.push(model)  # same sha256: not copied again
    assert (root / "pushes.log").read_text().count("m.gguf") == 1
    model.write_bytes(b"GGUF changed")
    phone.push(model)
    assert (root / "pushes.log").read_text().count("m.gguf") == 2
    assert not list((root / "data/local/tmp/edgekit").glob(".*.tmp")), phone_root
    with pytest.raises(EdgekitError, match="no runner for android yet"):
        Profiler(phone, ProfileConfig(idle_s=0.1)).run([model])


def test_unknown_serial(phone):
    with pytest.raises(EdgekitError, match=r"adb:NOPE: no such device \(adb devices: R5CT1234 \(device\)\)"):
        Adb("NOPE", adb=phone.adb).probe()
