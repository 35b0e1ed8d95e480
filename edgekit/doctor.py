"""`edgekit doctor`: what this machine offers the native kernels, and what they chose.

Shows the CPU features libedgekit detected (cpuid/xgetbv on x86, getauxval on ARM), the levels
it can run, the level in use (EDGEKIT_CPU_LEVEL can force a lower one) and, per weight type,
whose code runs it.
"""

from __future__ import annotations

import os
import platform


def report() -> dict:
    """Machine, features, levels and kernels as a plain dict (what --json prints)."""
    from edgekit.native import kernels
    from edgekit.native.quantize import version

    return {
        "libedgekit": version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
        "features": kernels.features(),
        "available_levels": kernels.available_levels(),
        "level": kernels.level(),
        "forced_by_env": os.environ.get("EDGEKIT_CPU_LEVEL") or None,
        "kernels": {qt.name: {"level": kernels.impl(qt), "activations": kernels.vec_type(qt).name}
                    for qt in kernels.KERNEL_TYPES},
    }


def format_report(info: dict) -> str:
    lines = [
        f"libedgekit {info['libedgekit']} on {info['system']} {info['machine']}, {info['cpus']} CPUs",
        f"CPU features:     {' '.join(info['features']) or '(none detected)'}",
        f"available levels: {' '.join(info['available_levels'])}",
        f"kernel level:     {info['level']}"
        + (f"  (EDGEKIT_CPU_LEVEL={info['forced_by_env']})" if info["forced_by_env"] else ""),
        "kernels per weight type:",
    ]
    for name, k in info["kernels"].items():
        lines.append(f"  {name:<5} {k['level']:<11} activations as {k['activations']}")
    return "\n".join(lines)
