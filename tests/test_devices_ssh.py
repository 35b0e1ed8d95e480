"""The ssh transport against a real OpenSSH server on 127.0.0.1 that the test starts (its own port, host key
and authorized_keys, key-only), profiling a tiny model end to end with the edgekit installed "there" (this
session's venv: the far side is this machine). Skips, saying why, where sshd is not installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.devices.bench import ProfileConfig, Profiler
from edgekit.devices.runner import Runner
from edgekit.devices.ssh import Ssh, config_hosts, parse_spec
from edgekit.errors import EdgekitError

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("sshd"), os.environ["PATH"])


def serve(d: Path, path: str):
    """An sshd on a free port of 127.0.0.1 (key-only, its own host key) whose sessions get PATH=path."""
    if not SSHD:
        pytest.skip("sshd is not installed (apt-get install openssh-server; .ci/setup does it where it can)")
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        os.makedirs("/run/sshd", mode=0o755)  # sshd's privilege-separation directory, missing in containers
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n"
        f"StrictModes no\nPermitRootLogin prohibit-password\nPidFile {d / 'sshd.pid'}\n"
        f"SetEnv PATH={path}\n")
    p = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if p.poll() is not None:
                pytest.skip(f"sshd did not start: {p.stderr.read().strip().splitlines()[-1:]}")
            time.sleep(0.05)
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    yield {"spec": f"ssh://{user}@127.0.0.1:{port}", "identity": d / "client", "known_hosts": d / "known_hosts",
           "dir": d}
    p.terminate()
    p.wait(timeout=10)


def connect(sshd, **kw) -> Ssh:
    return Ssh(sshd["spec"], identity=sshd["identity"], known_hosts=sshd["known_hosts"],
               remote_python=sys.executable, remote_dir=str(sshd["dir"] / "remote"), **kw)


def test_spec_and_config_hosts(tmp_path):
    assert parse_spec("ssh://pi@raspberrypi.local:2222") == ("pi", "raspberrypi.local", 2222)
    assert parse_spec("ssh://host") == (None, "host", None)
    with pytest.raises(EdgekitError, match="expected ssh://"):
        parse_spec("ssh://a@b@c")
    cfg = tmp_path / "config"
    cfg.write_text("Host pi5 pi4\n  HostName 10.0.0.5\nHost *.lan\n  User x\nhost phone-bench\n")
    assert config_hosts(cfg) == ["pi5", "pi4", "phone-bench"]


def test_unreachable_host_is_one_line():
    port = free_port()  # nothing listens there
    t0 = time.time()
    with pytest.raises(EdgekitError, match=rf"ssh://nobody@127.0.0.1:{port}: cannot connect \(.*refused"):
        Ssh(f"ssh://nobody@127.0.0.1:{port}", connect_timeout=3).probe()
    assert time.time() - t0 < 10


@pytest.mark.slow
def test_profile_over_ssh_end_to_end(sshd, f32_ggufs, tmp_path):
    t = connect(sshd)
    try:
        info = t.probe()
        assert info.arch == os.uname().machine and info.ram_total > 0 and info.cores == os.cpu_count()
        model = f32_ggufs["llama"]
        remote = t.push(model)
        assert Path(remote).read_bytes() == model.read_bytes()
        before = Path(remote).stat().st_mtime_ns
        t.push(model)  # same sha256: not copied again
        assert Path(remote).stat().st_mtime_ns == before
        report = Profiler(t, ProfileConfig(prompts=[16], gens=[8], pairs=[(16, 8)], depths=[0, 16], repeats=2,
                                           threads=1, idle_s=0.1)).run([model])
    finally:
        t.close()
    d = report.data
    assert d["device"]["name"] == sshd["spec"] and not d["incomplete"]
    [run] = d["runs"]
    assert [(t["name"], t["depth"]) for t in run["tests"]] == [
        ("pp16", 0), ("tg8", 0), ("pp16+tg8", 0), ("pp16", 16), ("tg8", 16), ("pp16+tg8", 16)]
    pg = run["tests"][2]
    assert pg["ttft_s"]["mean"] < sum(pg["samples_s"]) / 2  # the first token comes before the 8 decoded ones
    assert all(abs(t["tokens_per_s"]["mean"] / t["llama_perf_tokens_per_s"]["mean"] - 1) < 0.5 for t in run["tests"])
    assert run["peak_rss_from"] == "VmHWM of the worker" and run["peak_rss"] > 10 * 2**20
    assert d["bandwidth_bytes_per_s"] > 1e8
    assert not list(Path(remote).parent.glob(".*.tmp"))


@pytest.mark.slow
def test_model_larger_than_free_ram_is_refused_before_copying(sshd, tmp_path, monkeypatch):
    from edgekit.devices import transport

    big = tmp_path / "big.gguf"
    big.write_bytes(b"GGUF" + b"\0" * 4096)
    t = connect(sshd)
    real = transport.parse_probe
    monkeypatch.setattr(transport, "parse_probe", lambda text, name: _with_ram(real(text, name), 1024))
    try:
        with pytest.raises(EdgekitError, match="does not fit the 0 MiB of free RAM"):
            Profiler(t, ProfileConfig(idle_s=0.1)).run([big])
    finally:
        t.close()
    assert not (sshd["dir"] / "remote" / "big.gguf").exists()


@pytest.mark.slow
def test_no_edgekit_on_the_far_side(sshd, f32_ggufs):
    t = connect(sshd)
    t.remote_python = "/nonexistent/python3"
    try:
        with pytest.raises(EdgekitError, match=r"cannot run edgekit.s worker there \(.*nonexistent/python3"):
            Profiler(t, ProfileConfig(idle_s=0.1)).run([f32_ggufs["llama"]])
    finally:
        t.close()


@pytest.mark.slow
def test_full_remote_disk_copies_nothing(sshd, tmp_path):
    model = tmp_path / "fresh.gguf"
    model.write_bytes(b"GGUF" + os.urandom(3 << 20))
    t = connect(sshd)
    real = t.shell

    def small_disk(script: str):  # the far side's df says 1 MiB is free; everything else runs for real
        if script.startswith("df "):
            return 0, "/dev/sda1 1000000 999000 1024 100% /\n"
        return real(script)

    t.shell = small_disk
    try:
        with pytest.raises(EdgekitError, match=r"fresh.gguf needs 3 MiB, the remote disk has 1 MiB free"):
            t.push(model)
    finally:
        t.close()
    assert not list((sshd["dir"] / "remote").glob("*fresh.gguf*"))


def _with_ram(info, free):
    info.ram_free = free
    return info


@pytest.mark.slow
def test_dropped_worker_keeps_results_marked_incomplete(sshd, f32_ggufs, tmp_path):
    """The far side's worker dies mid-run (as on a dropped link): the tests done so far are kept and the
    run is marked incomplete."""
    t = connect(sshd)
    wrapper = tmp_path / "python-dies"  # relays the worker's first test event, then the link "drops"
    wrapper.write_text(f"#!{sys.executable}\n" + """import subprocess, sys
p = subprocess.Popen([sys.executable, *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
for line in p.stdout:
    sys.stdout.write(line)
    sys.stdout.flush()
    if '"event": "test"' in line:
        p.kill()
        sys.exit(255)
sys.exit(p.wait())
""")
    wrapper.chmod(0o755)
    t.remote_python = str(wrapper)
    try:
        report = Profiler(t, ProfileConfig(prompts=[16], gens=[8], depths=[0, 16], repeats=2,
                                           warmup=0, threads=2, idle_s=0.1)).run([f32_ggufs["llama"]])
    finally:
        t.close()
    d = report.data
    assert d["incomplete"] and "the worker stopped" in d["incomplete_reason"]
    assert d["runs"][0]["tests"]  # what finished before the drop is kept


@pytest.fixture(scope="module")
def sshd_aarch64(tmp_path_factory):
    """An sshd whose sessions see an aarch64 machine: a `uname` first on their PATH says aarch64 for -m (the
    rest is the real uname). This machine has no binfmt_misc entry for aarch64, so an aarch64 program runs
    there only as `qemu-aarch64 PROGRAM`: the profiler's runner_wrap, the same option that runs the runner
    under `taskset` on a real board."""
    need = [t for t in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-strip", "qemu-aarch64") if not shutil.which(t)]
    if need:
        pytest.skip(f"missing {', '.join(need)} (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    d = tmp_path_factory.mktemp("sshd-aarch64")
    (d / "bin").mkdir()
    (d / "bin" / "uname").write_text(f'#!/bin/sh\n[ "$1" = -m ] && {{ echo aarch64; exit 0; }}\n'
                                     f'exec {shutil.which("uname")} "$@"\n')
    (d / "bin" / "uname").chmod(0o755)
    yield from serve(d, f"{d / 'bin'}:{os.environ['PATH']}")


@pytest.mark.slow
def test_native_runner_over_ssh_on_aarch64_under_qemu(sshd_aarch64, f32_ggufs):
    """--backend native on an "aarch64" host over a real sshd: the static aarch64 edgekit-run is built (or taken
    from the cache), pushed once, and runs under qemu-aarch64 on the far side (binfmt absent, so without the
    wrap it could not run at all); its JSON fills the same report: load, TTFT, tokens/s, its peak RSS, and its
    --bandwidth for the roofline."""
    t = connect(sshd_aarch64)
    cfg = ProfileConfig(prompts=[8], gens=[4], depths=[0, 8], repeats=2, warmup=0, threads=1, idle_s=0.1,
                        backends=["native"], runner_wrap=["qemu-aarch64"])
    try:
        assert t.probe().arch == "aarch64"
        report = Profiler(t, cfg).run([f32_ggufs["llama"]])
        remote = sshd_aarch64["dir"] / "remote"
        runner = remote / "edgekit-run-aarch64"
        assert runner.read_bytes()[:4] == b"\x7fELF" and runner.read_bytes()[18] == 183  # e_machine: EM_AARCH64
        before = runner.stat().st_mtime_ns
        Runner(t, "aarch64", ["qemu-aarch64"])
        assert runner.stat().st_mtime_ns == before  # same sha256: not pushed again
    finally:
        t.close()
    d = report.data
    assert not d["incomplete"] and d["device"]["arch"] == "aarch64"
    [run] = d["runs"]
    assert run["backend_name"] == "edgekit-run (aarch64, static)"
    assert [(x["name"], x["depth"]) for x in run["tests"]] == [("pp8", 0), ("tg4", 0), ("pp8", 8), ("tg4", 8)]
    for x in run["tests"]:
        assert len(x["samples_s"]) == 2 and x["tokens_per_s"]["mean"] > 0
    assert run["tests"][0]["ttft_s"]["mean"] > 0 and run["load_s"] > 0
    assert run["peak_rss"] > 2**20 and run["peak_rss_from"].startswith("edgekit-run's own getrusage")
    assert d["bandwidth_from"].startswith("edgekit-run --bandwidth") and d["bandwidth_bytes_per_s"] > 1e7
    assert run["tests"][1]["roofline"]["fraction"] > 0
    assert not list(remote.glob(".*.tmp"))


@pytest.mark.slow
def test_native_runner_link_drops_mid_run(sshd_aarch64, f32_ggufs, tmp_path):
    """The link drops during the third runner process (the wrap exits as ssh does when the connection is lost):
    the test finished before it is kept and the run is marked incomplete, with ssh's message."""
    count = tmp_path / "runs"
    drop = tmp_path / "drop-third"
    drop.write_text(f'#!/bin/sh\necho x >> {count}\nif [ "$(wc -l < {count})" -ge 3 ]; then\n'
                    '  echo "Connection to 127.0.0.1 closed by remote host." >&2; exit 255\nfi\nexec "$@"\n')
    drop.chmod(0o755)
    t = connect(sshd_aarch64)
    cfg = ProfileConfig(prompts=[8], gens=[4], depths=[0], repeats=1, warmup=0, threads=1, idle_s=0.1,
                        backends=["native"], runner_wrap=[str(drop), "qemu-aarch64"])
    try:
        report = Profiler(t, cfg).run([f32_ggufs["llama"]])  # runs: --bandwidth, pp8, then tg4 drops
    finally:
        t.close()
    d = report.data
    assert d["incomplete"] and "closed by remote host" in d["incomplete_reason"]
    assert [x["name"] for x in d["runs"][0]["tests"]] == ["pp8"]
