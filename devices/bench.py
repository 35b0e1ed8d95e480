"""The profiler: on one device, for each model, start the worker (devices/worker.py; for --backend native
edgekit's C runner, devices/runner.py) as its own process, sample energy, temperature and frequency while it
runs, and turn its events into a `Report`:

- speed in llama-bench's terms (ppP, tgN, ppP+tgN at depth D; tokens/s per repeat -> mean ± sd, median),
  load time and time to first token;
- memory of the worker process: peak RSS from the kernel's accounting of the worker's own memory (VmHWM,
  read by the worker as it ends) and the steady RSS (VmRSS) after the tests; the runner's own getrusage peak;
- energy where a source exists: mean power, joules per token for prefill and decode apart and tokens per
  joule, with the idle power measured before the run subtracted;
- the roofline: measured read bandwidth ÷ bytes read per generated token (weights + KV cache at the depth)
  is the decode ceiling; the report gives the fraction of it each tg test reached.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.devices.report import SCHEMA_VERSION, Report
from edgekit.devices.runner import Runner, bench_events, local_runner
from edgekit.devices.sampler import Sampler, Timeline
from edgekit.devices.sources import find_source
from edgekit.devices.transport import Local, Transport
from edgekit.devices.worker import model_facts
from edgekit.errors import EdgekitError

BACKENDS = {"llamacpp": ".gguf", "executorch": ".pte", "native": ".gguf"}


@dataclass
class ProfileConfig:
    prompts: list[int] = field(default_factory=lambda: [512])
    gens: list[int] = field(default_factory=lambda: [128])
    pairs: list[tuple[int, int]] = field(default_factory=list)
    depths: list[int] = field(default_factory=lambda: [0])
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None
    backends: list[str] | None = None  # None: the default backend of each file's format
    rate_hz: float = 10.0
    idle_s: float = 2.0                # idle baseline before the runs (energy only)
    meter: str | None = None           # an external USB meter: "cmd:COMMAND" or a serial/CSV path
    settle_s: float = 0.0              # pause between models, for the device to cool
    runner_wrap: list[str] = field(default_factory=list)  # edgekit-run runs under it: ["taskset", "-c", "4-7"]

    def worker_args(self) -> list[str]:
        j = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
        args = ["-p", j(self.prompts) or "0", "-n", j(self.gens) or "0", "-d", j(self.depths),
                "-r", str(self.repeats), "--warmup", str(self.warmup)]
        if self.pairs:
            args += ["--pg", ";".join(f"{p},{n}" for p, n in self.pairs)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args


def summary(xs: list[float]) -> dict[str, float]:
    """mean, sample standard deviation (llama-bench's stddev_ts) and median."""
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "median": statistics.median(xs)}


def backends_for(model: Path, wanted: list[str] | None, python: bool = True) -> list[str]:
    """The backends that run `model`: those asked for, else the format's default (native for a .gguf on a
    device without edgekit's Python)."""
    if wanted is None:
        return ["executorch" if model.suffix == ".pte" else "llamacpp" if python else "native"]
    return [b for b in wanted if BACKENDS[b] == model.suffix]


class Profiler:
    def __init__(self, transport: Transport, cfg: ProfileConfig,
                 progress: Callable[[str], None] | None = None) -> None:
        self.t, self.cfg = transport, cfg
        self.say = progress or (lambda msg: None)
        self.runner: Runner | None = None

    def worker(self, args: list[str]) -> list[str]:
        return [*self.t.python(), "-m", "edgekit.devices.worker", *args]

    def bandwidth(self) -> tuple[float | None, str]:
        """The device's read bandwidth and how it was measured: by edgekit-run's threads where the runner is
        there, else by the worker (numpy, one core) in a process of its own."""
        if self.runner:
            return self.runner.bandwidth(self.cfg.threads)
        p = self.t.popen(self.worker(["--bandwidth"]))
        out, err = p.communicate(timeout=300)
        for line in out.splitlines():
            if line.startswith("{"):
                return json.loads(line).get("read_bytes_per_s"), "numpy sum of 256 MiB (one core)"
        why = (err.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise EdgekitError(f"{self.t.name}: cannot run edgekit's worker there ({why}); --remote-python names a "
                           "Python with edgekit installed")

    def run(self, models: list[Path]) -> Report:
        cfg = self.cfg
        for m in models:
            if not m.is_file():
                raise EdgekitError(f"{m}: no such model file")
            if m.suffix not in (".gguf", ".pte"):
                raise EdgekitError(f"{m}: not a .gguf or .pte model")
            if not backends_for(m, cfg.backends, self.t.has_python):
                raise EdgekitError(f"{m}: none of --backend {','.join(cfg.backends or [])} runs a {m.suffix} file")
        self.say(f"probing {self.t.name}")
        info = self.t.probe()
        wanted = {b for m in models for b in backends_for(m, cfg.backends, self.t.has_python)}
        if wanted - {"native"}:
            self.worker([])  # no edgekit Python there: say so before anything is measured or copied
        for m in models:  # nor is a model copied that cannot fit
            if info.ram_free and m.stat().st_size > info.ram_free:
                raise EdgekitError(f"{m}: {m.stat().st_size / 2**20:.0f} MiB does not fit the "
                                   f"{info.ram_free / 2**20:.0f} MiB of free RAM on {self.t.name}")
        if "native" in wanted or (isinstance(self.t, Local) and local_runner()):
            self.say(f"edgekit-run for {info.arch}: building or reusing it, copying it to {self.t.name}")
            try:
                self.runner = Runner(self.t, info.arch, cfg.runner_wrap)
            except EdgekitError as e:
                if "native" in wanted:
                    raise EdgekitError(f"{self.t.name}: {e}") from None
        source, reasons = find_source(self.t, cfg.meter)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report = Report({"schema_version": SCHEMA_VERSION, "created": created,
                         "device": info.to_dict(), "config": {**cfg.__dict__, "pairs": [list(p) for p in cfg.pairs]},
                         "energy": {"source": source.name if source else None, "note": source.note if source else "",
                                    "unavailable": ("" if source else "no energy source: " + "; ".join(reasons)),
                                    "idle_watts": None},
                         "runs": [], "incomplete": False, "incomplete_reason": ""})
        try:
            self.say("measuring memory read bandwidth")
            report.data["bandwidth_bytes_per_s"], report.data["bandwidth_from"] = self.bandwidth()
            if source:
                self.say(f"idle baseline ({cfg.idle_s:.0f} s, {source.name})")
                with Sampler(self.t, source, cfg.rate_hz) as s:
                    time.sleep(1.5 / cfg.rate_hz)  # so the first sample precedes the window
                    t0 = time.time()
                    time.sleep(cfg.idle_s)
                    t1 = time.time()
                report.data["energy"]["idle_watts"] = s.timeline.mean_watts(t0, t1)
            for i, m in enumerate(models):
                for backend in backends_for(m, cfg.backends, self.t.has_python):
                    if i and cfg.settle_s:
                        time.sleep(cfg.settle_s)
                    run = self.run_model(m, backend, source)
                    report.data["runs"].append(run)
                    if run.get("incomplete") and not report.data["incomplete"]:
                        report.data["incomplete"] = True
                        report.data["incomplete_reason"] = run["incomplete_reason"]
                    if run.get("incomplete") and "interrupted" in run["incomplete_reason"]:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            report.data["incomplete"] = True
            report.data["incomplete_reason"] = "interrupted (Ctrl-C)"
        finally:
            if source:
                source.close()
        derive(report.data)
        return report

    def run_model(self, model: Path, backend: str, source: Any) -> dict[str, Any]:
        run: dict[str, Any] = {"model": str(model), "backend": backend, "tests": [], "incomplete": False,
                               "incomplete_reason": ""}
        self.say(f"{model.name}: copying to {self.t.name}" if self.t.name != "local" else f"{model.name}: loading")
        side = [model.with_name(n) for n in ("tokenizer.json", "tokenizer_config.json", f"{model.stem}.manifest.json")]
        remote = self.t.push(model, [f for f in side if model.suffix == ".pte" and f.is_file()])
        sampler = Sampler(self.t, source, self.cfg.rate_hz)
        events: list[dict[str, Any]] = []
        interrupted = False
        with sampler:
            try:
                if backend == "native":
                    assert self.runner
                    rc, err = 0, ""
                    bench_events(self.runner, remote, model_facts(model), self.cfg,
                                 lambda ev: self._event(ev, events, model.name))
                else:
                    args = self.worker([remote, *self.cfg.worker_args(), "--backend", backend])
                    rc, err = self._follow(args, events, model.name)
            except KeyboardInterrupt:  # keep what the worker finished; run() stops after this model
                interrupted, rc, err = True, 130, ""
        run["timeline"] = sampler.timeline.to_dict()
        run["throttling"] = sampler.timeline.throttling()
        self._collect(run, events, sampler.timeline)
        done = any(e["event"] == "done" for e in events)
        if not done:
            errors = [e["message"] for e in events if e["event"] == "error"]
            if errors and not run["tests"]:
                raise EdgekitError(errors[0])
            run["incomplete"] = True
            if interrupted or rc in (130, -2):
                errors.append("interrupted (Ctrl-C)")
            run["incomplete_reason"] = errors[0] if errors else f"the worker stopped (exit {rc}): {err or 'no message'}"
        return run

    def _follow(self, args: list[str], events: list[dict], name: str) -> tuple[int, str]:
        """Run the worker, keep its events as they come; (exit code, its last line on stderr)."""
        p = self.t.popen(args)
        tail: list[str] = []
        drain = threading.Thread(target=lambda: [tail.append(x) for x in p.stderr], daemon=True)
        drain.start()
        try:
            for line in p.stdout:
                if not line.startswith("{"):
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                self._event(ev, events, name)
        except KeyboardInterrupt:
            p.terminate()
            p.wait()
            raise
        finally:
            drain.join(timeout=5)
            p.stdout.close()
            p.stderr.close()
        rc = p.wait()
        return rc, next((x.strip() for x in reversed(tail) if x.strip()), "")

    def _event(self, ev: dict[str, Any], events: list[dict], name: str) -> None:
        events.append(ev)
        if ev["event"] == "loaded":
            self.say(f"{name}: loaded in {ev['load_s']:.2f} s")
        elif ev["event"] == "test":
            tps = (ev["n_prompt"] + ev["n_gen"]) / statistics.fmean(ev["samples_s"])
            self.say(f"{name}: {ev['name']} @ d{ev['depth']}: {tps:.1f} tok/s")

    def _collect(self, run: dict[str, Any], events: list[dict], tl: Timeline) -> None:
        for ev in events:
            if ev["event"] == "loaded":
                run.update(load_s=ev["load_s"], n_ctx=ev["n_ctx"], backend_name=ev["backend"],
                           threads=ev.get("threads"), model_facts=ev["model"])
            elif ev["event"] == "done":
                # The kernel's high-water mark of the worker's own memory. Not wait4's ru_maxrss: a child
                # started by fork/exec inherits the parent's high-water mark (here the profiler's, with torch).
                run.update(peak_rss=ev.get("peak_rss"), steady_rss=ev.get("rss"),
                           peak_rss_from="VmHWM of the worker" if "load_s_all" not in ev else
                           "edgekit-run's own getrusage (ru_maxrss), the largest over its runs")
            elif ev["event"] == "test":
                run["tests"].append(self._test(ev, tl, run.get("model_facts", {})))
                run["steady_rss"] = ev.get("rss")

    def _test(self, ev: dict, tl: Timeline, facts: dict) -> dict[str, Any]:
        n_tok = ev["n_prompt"] + ev["n_gen"]
        tps = [n_tok / s for s in ev["samples_s"]]
        out: dict[str, Any] = {k: ev[k] for k in ("name", "depth", "n_prompt", "n_gen", "samples_s", "spans")}
        out["tokens_per_s"] = summary(tps)
        out["samples_ts"] = tps
        if ev["n_prompt"]:
            out["ttft_s"] = summary(ev["ttft_s"])
        perf = [p for p in ev.get("perf") or [] if p]
        if perf:  # llama.cpp's own timing of the same runs, for comparison
            out["llama_perf_samples_ts"] = [llama_perf_tps(p) for p in perf]
            out["llama_perf_tokens_per_s"] = summary(out["llama_perf_samples_ts"])
        joules = [tl.energy_j(a, b) for a, b in ev["spans"]]
        if joules and all(j is not None for j in joules):
            secs = sum(b - a for a, b in ev["spans"])
            gross = sum(joules)
            out["energy"] = {"mean_watts": gross / secs, "joules": gross, "seconds": secs}
        if facts.get("weight_bytes_per_token") and ev["n_gen"] and not ev["n_prompt"]:
            kv = (facts.get("kv_bytes_per_position") or 0) * (ev["depth"] + ev["n_gen"] / 2)
            out["bytes_per_token"] = facts["weight_bytes_per_token"] + kv
        return out


def llama_perf_tps(p: dict[str, float]) -> float:
    """Tokens/s by llama_perf_context: batches of several tokens count as p_eval, single tokens as eval.
    llama.cpp reports a count of at least 1 even for a phase that never ran, so only timed phases count."""
    n = (p["n_p_eval"] if p["t_p_eval_ms"] > 0 else 0) + (p["n_eval"] if p["t_eval_ms"] > 0 else 0)
    ms = p["t_p_eval_ms"] + p["t_eval_ms"]
    return n * 1000 / ms if ms > 0 else 0.0


def derive(data: dict[str, Any]) -> None:
    """The numbers computed from the measurements: net energy per token (idle power subtracted), tokens per
    joule, and the roofline (decode ceiling = bandwidth ÷ bytes per token, and the fraction reached)."""
    idle = data["energy"].get("idle_watts")
    bw = data.get("bandwidth_bytes_per_s")
    for run in data["runs"]:
        for t in run["tests"]:
            e = t.get("energy")
            n_tok = (t["n_prompt"] + t["n_gen"]) * len(t["samples_s"])
            if e and idle is not None:
                e["idle_watts"] = idle
                e["net_joules"] = max(0.0, e["joules"] - idle * e["seconds"])
                e["joules_per_token"] = e["net_joules"] / n_tok
                e["tokens_per_joule"] = n_tok / e["net_joules"] if e["net_joules"] > 0 else None
            if bw and t.get("bytes_per_token"):
                ceiling = bw / t["bytes_per_token"]
                t["roofline"] = {"bandwidth_bytes_per_s": bw, "bytes_per_token": t["bytes_per_token"],
                                 "ceiling_tokens_per_s": ceiling,
                                 "fraction": t["tokens_per_s"]["mean"] / ceiling}
