"""The adb transport against a stand-in `adb` (tests/fixtures/adb/adb): no phone can exist on a build machine,
so the stand-in implements the adb commands edgekit uses (devices, shell, push) over a local folder that plays
the phone's file system, with its battery sysfs, thermal zone, cpufreq and /proc from fixture files in the
formats real phones use."""

from __future__ import annotations

import os
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
    with pytest.raises(EdgekitError, match="a phone has no edgekit Python .* use --backend native"):
        Profiler(phone, ProfileConfig(idle_s=0.1, backends=["llamacpp"])).run([model])


def test_no_runner_for_the_phones_architecture(phone, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_ARCH", "riscv64")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(EdgekitError, match=r"^adb:R5CT1234: no runner for riscv64 \(edgekit-run builds for "
                                           r"aarch64, armhf, x86_64\)$"):
        Profiler(phone, ProfileConfig(idle_s=0.1)).run([model])  # a .gguf on a phone: --backend native
    assert not (tmp_path / "phone" / "data" / "local" / "tmp" / "edgekit" / "m.gguf").exists()


def test_unknown_serial(phone):
    with pytest.raises(EdgekitError, match=r"adb:NOPE: no such device \(adb devices: R5CT1234 \(device\)\)"):
        Adb("NOPE", adb=phone.adb).probe()


@pytest.mark.slow
def test_native_runner_on_the_stand_in_phone_with_battery_energy(phone, f32_ggufs, tmp_path, monkeypatch):
    """No phone can exist here. The stand-in phone says it is aarch64 (its `uname -m`), so the profiler pushes
    the static aarch64 edgekit-run to /data/local/tmp/edgekit and runs it there under qemu-aarch64 (this
    machine's own runner, as an x86_64 phone, when the cross tools or qemu are absent). `battery-load` (a
    fixture program on the phone) raises the fixture battery's discharge current from 0.612 A to 1.5 A while the
    runner runs: the idle baseline reads 0.612 A × 3.921 V and the energy per token is the 0.888 A × 3.921 V
    the run added, integrated over each test's spans from the sysfs samples (a span ends when the runner's
    output arrives, a transport's latency late: tests of a few ms would be mis-timed, these take ~0.1 s)."""
    cross = all(shutil.which(t) for t in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-strip", "qemu-aarch64"))
    monkeypatch.setenv("FAKE_ADB_ARCH", "aarch64" if cross else os.uname().machine)
    monkeypatch.setenv("FAKE_ADB_LOAD_UA", "1500000")
    cfg = ProfileConfig(prompts=[48], gens=[32], depths=[0], repeats=2, warmup=0, threads=1, idle_s=0.5,
                        rate_hz=50, runner_wrap=["battery-load", *(["qemu-aarch64"] if cross else [])])
    report = Profiler(phone, cfg).run([f32_ggufs["llama"]])  # a .gguf on a phone: --backend native
    d = report.data
    assert not d["incomplete"] and d["device"]["os"] == "android"
    assert d["energy"]["source"] == "Android battery sysfs battery"
    assert d["energy"]["idle_watts"] == pytest.approx(0.612 * 3.921, rel=1e-6)
    [run] = d["runs"]
    assert run["backend"] == "native" and run["model"] == str(f32_ggufs["llama"])
    assert run["backend_name"] == f"edgekit-run ({'aarch64' if cross else 'x86_64'}, static)"
    phone_dir = tmp_path / "phone" / "data" / "local" / "tmp" / "edgekit"
    assert (phone_dir / f32_ggufs["llama"].name).read_bytes() == f32_ggufs["llama"].read_bytes()
    assert run["timeline"]["n_samples"] > 10 and run["peak_rss"] > 2**20
    for t in run["tests"]:
        e = t["energy"]
        n_tok = (t["n_prompt"] + t["n_gen"]) * len(t["samples_s"])
        want = 0.888 * 3.921 * e["seconds"] / n_tok
        assert e["joules_per_token"] == pytest.approx(want, rel=0.15), (t["name"], e["joules_per_token"] / want)
        assert e["tokens_per_joule"] == pytest.approx(1 / e["joules_per_token"])
