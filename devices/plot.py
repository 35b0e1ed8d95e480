"""The report's PNG plots (matplotlib, no display): decode tokens/s per model and depth, joules per token
per model, and power, temperature and frequency over time."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import require

if TYPE_CHECKING:
    from edgekit.devices.report import Report


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(report: Report) -> dict[str, bytes]:
    """{file name: PNG bytes}; a plot with nothing to show is left out."""
    require("matplotlib", "the report's PNG plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    rows = report.rows()
    label = lambda r: f"{r['model']}\n{r['backend']}"  # noqa: E731
    tg = [r for r in rows if r["test"].startswith("tg")]
    if tg:
        labels = list(dict.fromkeys(label(r) for r in tg))
        depths = sorted({r["depth"] for r in tg})
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels)), 3.6))
        w = 0.8 / len(depths)
        for j, d in enumerate(depths):
            xs, ys, es = [], [], []
            for i, lab in enumerate(labels):
                for r in tg:
                    if label(r) == lab and r["depth"] == d:
                        xs.append(i + j * w)
                        ys.append(r["tokens_per_s"])
                        es.append(r["sd"])
            ax.bar(xs, ys, w, yerr=es, label=f"depth {d}", capsize=3)
        ax.set_xticks([i + w * (len(depths) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
        ax.set_ylabel("decode tokens/s")
        dev = report.data["device"]
        ax.set_title(f"decode speed on {dev.get('name')} ({dev.get('cpu') or dev.get('arch')})")
        ax.legend(fontsize=8)
        out["decode_tps.png"] = _png(fig)
    jt = [r for r in rows if r["joules_per_token"] is not None]
    if jt:
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(jt)), 3.6))
        ax.bar(range(len(jt)), [r["joules_per_token"] for r in jt])
        ax.set_xticks(range(len(jt)), [f"{label(r)}\n{r['test']} d{r['depth']}" for r in jt], fontsize=7)
        ax.set_ylabel("joules per token (idle subtracted)")
        out["joules_per_token.png"] = _png(fig)
    series = []
    for run in report.data["runs"]:
        tl = run.get("timeline") or {}
        if any(x is not None for row in tl.get("samples") or [] for x in row[2:5]):  # power, temperature, clock
            series.append((Path(run["model"]).name + " " + run["backend"], tl["samples"]))
    if series:
        t0 = min(s[0][0] for _, s in series)
        fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
        for name, samples in series:
            ts = [s[0] - t0 for s in samples]
            for ax, k in zip(axes, (2, 3, 4), strict=True):
                pts = [(t, s[k]) for t, s in zip(ts, samples, strict=True) if s[k] is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=name, lw=1)
        for ax, lab in zip(axes, ("power (W)", "CPU temperature (°C)", "CPU frequency (MHz)"), strict=True):
            ax.set_ylabel(lab, fontsize=8)
            if not ax.lines:
                ax.text(0.5, 0.5, "not available on this device", ha="center", va="center", transform=ax.transAxes)
        axes[-1].set_xlabel("seconds")
        if axes[0].lines or axes[1].lines or axes[2].lines:
            next(ax for ax in axes if ax.lines).legend(fontsize=7)
        out["timeline.png"] = _png(fig)
    return out
