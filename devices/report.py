"""A profile's report: one schema-versioned JSON document (`Report.data`), and its Markdown table, CSV and
PNG plots, written into a directory file by file, each complete or not at all."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from edgekit.io.output import temp_path
from edgekit.progress import human_bytes

SCHEMA_VERSION = 1
COLUMNS = ["model", "backend", "test", "depth", "tokens_per_s", "sd", "median", "ttft_ms", "joules_per_token",
           "tokens_per_joule", "mean_watts", "roofline_fraction", "peak_rss_bytes", "steady_rss_bytes", "load_s"]


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


class Report:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @classmethod
    def load(cls, path: Path) -> Report:
        return cls(json.loads(Path(path).read_text()))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for run in self.data["runs"]:
            for t in run["tests"]:
                e, r = t.get("energy") or {}, t.get("roofline") or {}
                out.append({"model": Path(run["model"]).name, "backend": run["backend"], "test": t["name"],
                            "depth": t["depth"], "tokens_per_s": t["tokens_per_s"]["mean"],
                            "sd": t["tokens_per_s"]["sd"], "median": t["tokens_per_s"]["median"],
                            "ttft_ms": 1000 * t["ttft_s"]["mean"] if "ttft_s" in t else None,
                            "joules_per_token": e.get("joules_per_token"),
                            "tokens_per_joule": e.get("tokens_per_joule"), "mean_watts": e.get("mean_watts"),
                            "roofline_fraction": r.get("fraction"), "peak_rss_bytes": run.get("peak_rss"),
                            "steady_rss_bytes": run.get("steady_rss"), "load_s": run.get("load_s")})
        return out

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows())
        return buf.getvalue()

    def to_markdown(self) -> str:
        d, dev, en = self.data, self.data["device"], self.data["energy"]
        bw = d.get("bandwidth_bytes_per_s")
        lines = [f"# edgekit profile: {dev.get('name')}", "",
                 f"- device: {dev.get('cpu') or '?'}, {dev.get('cores')} cores, {dev.get('arch')}, "
                 f"{human_bytes(dev.get('ram_total') or 0)} RAM ({human_bytes(dev.get('ram_free') or 0)} free), "
                 f"{dev.get('os_version') or dev.get('os')}",
                 f"- memory read bandwidth: {bw / 1e9:.1f} GB/s ({d.get('bandwidth_from') or 'numpy, one core'})"
                 if bw else "- memory read bandwidth: –",
                 (f"- energy: {en['source']}" + (f" ({en['note']})" if en.get("note") else "")
                  + (f", idle {en['idle_watts']:.2f} W subtracted" if en.get("idle_watts") is not None else ""))
                 if en.get("source") else f"- energy: {en.get('unavailable')}",
                 f"- settings: {d['config']['repeats']} repeats, {d['config']['warmup']} warm-up, threads "
                 f"{d['config'].get('threads') or 'default'}, sampling at {d['config']['rate_hz']:g} Hz", ""]
        if d.get("incomplete"):
            lines += [f"**INCOMPLETE**: {d.get('incomplete_reason')} (results so far below)", ""]
        lines += ["| model | backend | test | depth | tok/s | median | TTFT ms | J/token | tok/J | W | roofline | "
                  "peak RSS | steady RSS | load s |", "|" + "---|" * 3 + "---:|" * 11]
        for r in self.rows():
            lines.append(
                f"| {r['model']} | {r['backend']} | {r['test']} | {r['depth']} | {r['tokens_per_s']:.1f} ± "
                f"{r['sd']:.1f} | {r['median']:.1f} | {_fmt(r['ttft_ms'], '.1f')} | "
                f"{_fmt(r['joules_per_token'], '.4f')} | {_fmt(r['tokens_per_joule'], '.1f')} | "
                f"{_fmt(r['mean_watts'], '.2f')} | "
                f"{'–' if r['roofline_fraction'] is None else format(100 * r['roofline_fraction'], '.0f') + ' %'} | "
                f"{human_bytes(r['peak_rss_bytes']) if r['peak_rss_bytes'] else '–'} | "
                f"{human_bytes(r['steady_rss_bytes']) if r['steady_rss_bytes'] else '–'} | "
                f"{_fmt(r['load_s'], '.2f')} |")
        notes = []
        for run in d["runs"]:
            name = Path(run["model"]).name
            if run.get("throttling"):
                notes.append(f"- {name} ({run['backend']}): throttling: {'; '.join(run['throttling'])}")
            if run.get("incomplete"):
                notes.append(f"- {name} ({run['backend']}): incomplete: {run['incomplete_reason']}")
            over = [t for t in run["tests"] if (t.get("roofline") or {}).get("fraction", 0) > 1]
            if over:
                which = ", ".join(f"{t['name']} @ d{t['depth']}" for t in over)
                notes.append(f"- {name} ({run['backend']}): {which} "
                             "beat the DRAM ceiling: the model fits in the CPU caches, so its decode speed says "
                             "nothing about memory bandwidth")
            tl = run.get("timeline") or {}
            if tl:
                notes.append(f"- {name} ({run['backend']}): {tl['n_samples']} samples at {tl['rate_hz']:g} Hz; "
                             f"peak RSS from {run.get('peak_rss_from', '–')}")
        lines += ["", "Roofline: decode tok/s as a fraction of (read bandwidth ÷ bytes read per token: weights + KV "
                  "cache at the depth)."]
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    def write(self, out_dir: Path, plots: bool = True) -> list[Path]:
        """profile.json, profile.md, profile.csv and the PNG plots, into out_dir (created if needed)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in (("profile.json", self.to_json()), ("profile.md", self.to_markdown()),
                           ("profile.csv", self.to_csv())):
            written.append(_write(out_dir / name, text.encode()))
        if plots:
            from edgekit.devices.plot import plots as make_plots

            for name, png in make_plots(self).items():
                written.append(_write(out_dir / name, png))
        return written


def _write(path: Path, data: bytes) -> Path:
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
