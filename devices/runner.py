"""The native backend on a device: edgekit's C runner, `edgekit-run`, one static file per architecture.

Locally the runner the build installs beside libedgekit runs in place. For another device the runner is
built from this checkout's native/ sources with the cross toolchain for the device's `uname -m` (static, so
it needs nothing there), cached in ~/.cache/edgekit/runners/<sha256 of the sources>/, pushed like a model
(only when its sha256 differs) and run as `edgekit-run --bench --depth D -p P -n N --json`, once per repeat: its JSON
(load, TTFT, prefill and decode tokens/s, its own peak RSS from getrusage) becomes the worker's events, so
reports keep one schema; `edgekit-run --bandwidth --json` gives the roofline's bandwidth."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.devices.transport import Local, Transport, quote
from edgekit.errors import EdgekitError

# uname -m -> (cross toolchain file in native/cmake, compiler prefix); None: the host's own compiler.
ARCHES: dict[str, tuple[str | None, str]] = {
    "x86_64": (None, ""), "amd64": (None, ""),
    "aarch64": ("aarch64-linux-gnu", "aarch64-linux-gnu-"), "arm64": ("aarch64-linux-gnu", "aarch64-linux-gnu-"),
    **{a: ("arm-linux-gnueabihf", "arm-linux-gnueabihf-") for a in ("armv7l", "armv8l", "armhf")},
}
CANONICAL = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "armhf", "armv8l": "armhf"}
BANDWIDTH_MIB = 256  # far larger than any last-level cache, small enough for a 1 GiB board


def repo_root() -> Path | None:
    """The checkout edgekit runs from, when it has the C sources (an editable install); None for a wheel."""
    root = Path(__file__).resolve().parents[1]  # devices/ sits in the checkout's root
    return root if (root / "native" / "tools" / "edgekit_run.c").is_file() else None


def sources_sha256(root: Path) -> str:
    h = hashlib.sha256()
    kinds = (".c", ".h", ".inc", ".cmake", ".txt", ".map")
    files = [root / "CMakeLists.txt", *sorted(p for p in (root / "native").rglob("*") if p.suffix in kinds)]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def local_runner() -> Path | None:
    """The edgekit-run installed beside libedgekit (dynamically linked against it), if built."""
    try:
        from edgekit.native import lib

        path = Path(lib()._name).parent / "edgekit-run"
    except Exception:  # no library built: no runner either
        return None
    return path if path.is_file() else None


def build_runner(arch: str, cache: Path | None = None) -> Path:
    """A static edgekit-run for `arch` (uname -m), built once per source tree and cached; one-line error
    "no runner for ARCH (why)" where it cannot be built."""
    if arch not in ARCHES:
        known = sorted({CANONICAL.get(a, a) for a in ARCHES})
        raise EdgekitError(f"no runner for {arch} (edgekit-run builds for {', '.join(known)})")
    toolchain, prefix = ARCHES[arch]
    name = CANONICAL.get(arch, arch)
    root = repo_root()
    if root is None:
        raise EdgekitError(f"no runner for {name} (building it needs edgekit's source checkout: native/ is not here)")
    cache = cache or Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")) / "runners"
    out = cache / sources_sha256(root)[:16] / f"edgekit-run-{name}"
    if out.is_file():
        return out
    cmake = Path(sys.executable).parent / "cmake"
    cmake_exe = str(cmake) if cmake.exists() else shutil.which("cmake")
    missing = [t for t in (f"{prefix}gcc", f"{prefix}strip") if not shutil.which(t)] + ([] if cmake_exe else ["cmake"])
    if missing:
        raise EdgekitError(f"no runner for {name} (building it needs {', '.join(missing)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=out.parent))  # its own: builds may run at once
    cfg = [cmake_exe, "-S", str(root), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DEDGEKIT_SHARED=OFF",
           "-DEDGEKIT_STATIC_RUN=ON"]
    if toolchain:
        cfg.append(f"-DCMAKE_TOOLCHAIN_FILE={root / 'native' / 'cmake' / toolchain}.cmake")
    try:
        for cmd in (cfg, [cmake_exe, "--build", str(build), "-j2", "--target", "edgekit-run"]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                why = ((r.stderr or r.stdout).strip().splitlines() or [f"exit {r.returncode}"])[-1]
                raise EdgekitError(f"no runner for {name} (the build failed: {why})")
        tmp = build / out.name
        subprocess.run([f"{prefix}strip", "-o", str(tmp), str(build / "native" / "edgekit-run")], check=True)
        os.replace(tmp, out)  # complete or absent
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return out


class Runner:
    """edgekit-run on one device: where it is there, and how it is started (`wrap`: a command it runs under,
    e.g. `taskset -c 4-7` for the big cores, or an emulator)."""

    def __init__(self, t: Transport, arch: str, wrap: list[str] | None = None) -> None:
        self.t = t
        host = os.uname().machine
        if isinstance(t, Local) and local_runner() and CANONICAL.get(arch, arch) == CANONICAL.get(host, host):
            self.local, self.kind = local_runner(), "edgekit-run (this build)"
        else:
            self.local, self.kind = build_runner(arch), f"edgekit-run ({CANONICAL.get(arch, arch)}, static)"
        self.path = t.push(self.local)
        if not isinstance(t, Local) and t.run_text(["chmod", "755", self.path])[0] != 0:
            raise EdgekitError(f"{t.name}: cannot make {self.path} executable")
        self.argv = [*(wrap or []), self.path]

    def bandwidth(self, threads: int | None) -> tuple[float, str]:
        """(read bytes/s, how it was measured) by the runner's threads summing one buffer."""
        cmd = [*self.argv, "--bandwidth", "--mb", str(BANDWIDTH_MIB), "--json",
               *(["-t", str(threads)] if threads else [])]
        rc, out = self.t.run_text(cmd, timeout=600)
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                return r["bandwidth_gb_s"] * 1e9, f"edgekit-run --bandwidth ({r['threads']} threads, {r['mib']} MiB)"
        raise EdgekitError(f"{self.t.name}: edgekit-run --bandwidth failed (exit {rc})")

    def bench_once(self, model: str, depth: int, n_prompt: int, n_gen: int, threads: int | None,
                   procs: list[subprocess.Popen]) -> tuple[dict[str, Any], float]:
        """One `--bench` run: (its JSON, local wall time when it ended)."""
        cmd = [*self.argv, "-m", model, "--bench", "--depth", str(depth), "-p", str(n_prompt), "-n", str(n_gen),
               "--json", *(["-t", str(threads)] if threads else [])]
        # Started by a forking shell, not exec'd in place: getrusage's peak RSS survives exec, so a runner
        # exec'd straight from this Python (or from sshd) would report their high-water mark if larger.
        p = self.t.popen(["sh", "-c", quote(cmd) + "; exit $?"])
        procs.append(p)
        out, err = p.communicate()
        end = time.time()
        procs.remove(p)
        for line in out.splitlines():
            if line.startswith("{"):
                try:
                    return json.loads(line), end
                except ValueError:
                    break
        why = (err.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise EdgekitError(f"{self.t.name}: {why}")


def bench_events(r: Runner, model: str, facts: dict[str, Any], cfg: Any,
                 emit: Callable[[dict[str, Any]], None]) -> None:
    """The worker's events (loaded, test..., done) from runs of edgekit-run. A test ppP runs `-p P -n 1`, tgN
    `-p 1 -n N` (one prompt token: the runner decodes after a prefill), ppP+tgN `-p P -n N`; each repeat is one
    process. Spans (for energy) end when the process's output arrived: decode is the runner's last phase."""
    loads, peaks, steady = [], [], None
    tests = [(f"pp{p}", p, 0) for p in cfg.prompts if p] + [(f"tg{n}", 0, n) for n in cfg.gens if n] + \
        [(f"pp{p}+tg{n}", p, n) for p, n in cfg.pairs]
    procs: list[subprocess.Popen] = []
    n_ctx = max(cfg.depths) + max(max(p, 1) + max(n, 1) for _, p, n in tests) + 8 if tests else 0  # the largest run's
    try:
        for depth in cfg.depths:
            for name, n_prompt, n_gen in tests:
                args = (depth, max(n_prompt, 1), max(n_gen, 1))
                for _ in range(cfg.warmup):
                    r.bench_once(model, *args, cfg.threads, procs)
                samples, ttfts, spans = [], [], []
                for _ in range(cfg.repeats):
                    j, end = r.bench_once(model, *args, cfg.threads, procs)
                    if not loads:
                        emit({"event": "loaded", "load_s": j["load_ms"] / 1e3, "n_ctx": n_ctx,
                              "backend": r.kind, "threads": j.get("threads") or None, "model": facts})
                    loads.append(j["load_ms"] / 1e3)
                    peaks.append(j["peak_rss_bytes"])
                    steady = j.get("rss_bytes") or None  # 0: the device's OS does not say
                    t_dec, t_pre = args[2] / j["decode_tok_s"], j["ttft_ms"] / 1e3
                    dec, pre = (t_dec if n_gen else 0.0), (t_pre if n_prompt else 0.0)
                    samples.append(pre + dec)
                    ttfts.append(pre)
                    start = end - t_dec - (t_pre if n_prompt else 0.0)
                    spans.append([start, end if n_gen else end - t_dec])
                emit({"event": "test", "name": name, "depth": depth, "n_prompt": n_prompt, "n_gen": n_gen,
                      "samples_s": samples, "ttft_s": ttfts, "spans": spans, "perf": [], "rss": steady})
        emit({"event": "done", "peak_rss": max(peaks) if peaks else None, "rss": steady,
              "load_s_all": loads})
    except EdgekitError as e:
        emit({"event": "error", "message": str(e)})
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
            p.wait()
        raise
