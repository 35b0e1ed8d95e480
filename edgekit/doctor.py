"""`edgekit doctor`: what this machine offers, and what edgekit chose.

Shows which optional parts are usable here and, for those that are not, why (llama.cpp, ExecuTorch, the
native runtime, the ARM cross toolchain and qemu-user), then the CPU features libedgekit detected
(cpuid/xgetbv on x86, getauxval on ARM), the levels it can run, the level in use (EDGEKIT_CPU_LEVEL can
force a lower one) and, per weight type, whose code runs it.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from typing import Any

from edgekit.errors import EdgekitError


def _part(probe: Callable[[], str]) -> dict[str, Any]:
    """{"ok": True, "detail": ...} or {"ok": False, "why": ...}: a probe returns what it found or raises."""
    try:
        return {"ok": True, "detail": probe()}
    except EdgekitError as e:
        return {"ok": False, "why": str(e)}
    except Exception as e:  # noqa: BLE001 -- a broken install is a finding here, not a crash
        return {"ok": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _llama_cpp() -> str:
    from importlib.metadata import version

    from edgekit.runtime.backends.llamacpp import cpu_backend

    return f"llama-cpp-python {version('llama-cpp-python')}, CPU backend {cpu_backend()}"


def _executorch() -> str:
    from importlib.metadata import version

    from edgekit.errors import require

    require("executorch.runtime", "running a .pte")
    require("torchao.quantization", "exporting a .pte")
    return f"executorch {version('executorch')}, torchao {version('torchao')}"


def _native_runtime() -> str:
    from edgekit.native import lib

    if not hasattr(lib(), "ek_model_load"):
        raise EdgekitError("this libedgekit has kernels and quantizers only (no ek_model_load): the C runtime "
                           "is not part of this build")
    return "ek_model_load present"


def _cross_tools() -> str:
    tools = ("aarch64-linux-gnu-gcc", "arm-linux-gnueabihf-gcc", "qemu-aarch64", "qemu-arm", "qemu-x86_64")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise EdgekitError(f"missing {', '.join(missing)} (apt-get install gcc-aarch64-linux-gnu "
                           "gcc-arm-linux-gnueabihf qemu-user): the ARM and CPU-portability tests skip")
    return ", ".join(tools)


PARTS = {"llama.cpp": _llama_cpp, "ExecuTorch": _executorch, "native runtime": _native_runtime,
         "cross tools": _cross_tools}


def report() -> dict:
    """Machine, features, levels and kernels as a plain dict (what --json prints)."""
    from edgekit.native import kernels
    from edgekit.native.quantize import version

    return {
        "parts": {name: _part(probe) for name, probe in PARTS.items()},
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
    lines = [f"{name + ':':<16} " + (f"usable ({p['detail']})" if p["ok"] else f"not usable: {p['why']}")
             for name, p in info["parts"].items()]
    lines += [
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
