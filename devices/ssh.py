"""A device over OpenSSH: keys only (BatchMode: never a password prompt), its own known_hosts file, one
multiplexed connection for the many short commands sampling needs. Runs the edgekit installed there (its
Python: `--remote-python`); models go to a cache folder there, copied only when the sha256 differs, written
to a temporary name and renamed when complete."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from edgekit.devices.transport import Transport, quote, sha256
from edgekit.errors import EdgekitError

SPEC = re.compile(r"^ssh://(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d+))?/?$")


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    m = SPEC.match(spec)
    if not m:
        raise EdgekitError(f"--device {spec!r}: expected ssh://[user@]host[:port]")
    return m["user"], m["host"].strip("[]"), int(m["port"]) if m["port"] else None


class Ssh(Transport):
    def __init__(self, spec: str, *, identity: str | Path | None = None, known_hosts: str | Path | None = None,
                 remote_python: str = "python3", remote_dir: str = ".cache/edgekit/profile",  # under ~ unless absolute
                 connect_timeout: int = 10, ssh: str = "ssh") -> None:
        user, host, port = parse_spec(spec)
        self.name = spec
        self.remote_python, self.remote_dir = remote_python, remote_dir
        kh = Path(known_hosts) if known_hosts else Path.home() / ".cache" / "edgekit" / "known_hosts"
        kh.parent.mkdir(parents=True, exist_ok=True)
        self._control = Path(tempfile.mkdtemp(prefix="edgekit-ssh-")) / "c"
        self.base = [ssh, "-T", "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
                     "-o", "KbdInteractiveAuthentication=no", "-o", f"ConnectTimeout={connect_timeout}",
                     "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=accept-new",
                     "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
                     "-o", "ControlMaster=auto", "-o", f"ControlPath={self._control}", "-o", "ControlPersist=60"]
        if identity:
            self.base += ["-o", "IdentitiesOnly=yes", "-i", str(identity)]
        if port:
            self.base += ["-p", str(port)]
        self.base.append(f"{user}@{host}" if user else host)
        self.timeout = connect_timeout + 20.0

    def argv(self, cmd: list[str]) -> list[str]:
        return [*self.base, "--", quote(cmd)]

    def probe(self):
        try:  # one connection attempt with its error kept: the message names why the host is unreachable
            p = subprocess.run(self.argv(["true"]), capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise EdgekitError(f"{self.name}: unreachable (no answer within {self.timeout:.0f} s)") from None
        if p.returncode != 0:
            why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            raise EdgekitError(f"{self.name}: cannot connect ({why})")
        return super().probe()

    def python(self) -> list[str]:
        return [self.remote_python]

    def push(self, local: Path, with_files: list[Path] | None = None) -> str:
        """Copy local (and its side files, e.g. a .pte's tokenizer.json) into the remote cache folder, each only
        if the remote copy's sha256 differs; the remote path of local."""
        d = self.remote_dir if self.remote_dir.startswith("/") else f"~/{self.remote_dir}"
        rc, home = self.shell(f"mkdir -p {d} && cd {d} && pwd")
        if rc != 0 or not home.strip():
            raise EdgekitError(f"{self.name}: cannot create {d}")
        folder = home.strip()
        for f in [local, *(with_files or [])]:
            self._push_one(Path(f), f"{folder}/{Path(f).name}")
        return f"{folder}/{Path(local).name}"

    def _push_one(self, local: Path, remote: str) -> None:
        rc, out = self.shell(f"sha256sum {quote([remote])} 2>/dev/null || shasum -a 256 {quote([remote])} 2>/dev/null")
        if rc == 0 and out.split() and out.split()[0] == sha256(local):
            return
        size = local.stat().st_size
        rc, out = self.shell(f"df -Pk {quote([str(Path(remote).parent)])} | tail -1")
        fields = out.split()
        if rc == 0 and len(fields) >= 4 and fields[3].isdigit() and int(fields[3]) * 1024 < size:
            raise EdgekitError(f"{self.name}: {local.name} needs {size / 2**20:.0f} MiB, the remote disk has "
                               f"{int(fields[3]) / 1024:.0f} MiB free")
        tmp = f"{Path(remote).parent}/.{Path(remote).name}.{os.getpid()}.tmp"
        script = f"cat > {quote([tmp])} && mv -f {quote([tmp])} {quote([remote])}"
        with open(local, "rb") as fh:
            try:
                p = subprocess.run(self.argv(["sh", "-c", script]), stdin=fh, capture_output=True)
            except BaseException:
                self.shell(f"rm -f {quote([tmp])}")
                raise
        if p.returncode != 0:
            self.shell(f"rm -f {quote([tmp])}")  # nothing half-copied left behind as if complete
            why = (p.stderr.decode(errors="replace").strip().splitlines() or [f"exit {p.returncode}"])[-1]
            raise EdgekitError(f"{self.name}: copying {local.name} failed ({why})")

    def close(self) -> None:
        if self._control.exists():
            subprocess.run([*self.base[:-1], "-O", "exit", self.base[-1]], capture_output=True, timeout=10)
        try:
            self._control.parent.rmdir()
        except OSError:
            pass


def config_hosts(path: Path | None = None) -> list[str]:
    """Host aliases of ~/.ssh/config (patterns with * or ? left out)."""
    path = path or Path.home() / ".ssh" / "config"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    hosts = []
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0].lower() == "host":
            hosts += [h for h in parts[1:] if not any(c in h for c in "*?!")]
    return hosts
