"""`edgekit.convert`: one verb for every conversion, the format chosen by the output's suffix.

    convert("./my-llama", "m.gguf", GGUFConfig(quant="q4_k_m"))      # llama.cpp (converters.gguf)
    convert("./my-llama", "m/model.pte", PteConfig(quant="8da4w"))   # ExecuTorch (converters.pte)
    convert("./teacher", "student.gguf", recipe)                     # prune/sparsify/distill, then export

A recipe's own source and output are replaced by the ones given here ("demo" is the built-in teacher).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.converters.gguf.writer import GGUFConfig, GGUFResult, write_gguf
from edgekit.converters.pte.export import PteConfig, PteResult, export_pte
from edgekit.converters.recipe import PipelineResult, Recipe, run
from edgekit.errors import EdgekitError

CONFIGS = {".gguf": GGUFConfig, ".pte": PteConfig}


def convert(source: str | Path, output: str | Path, cfg: GGUFConfig | PteConfig | Recipe | None = None, *,
            progress: bool = True, log: Callable[[str], None] | None = None,
            resume: bool = False) -> GGUFResult | PteResult | PipelineResult:
    """Make output from source: a HF checkpoint directory (or, for .gguf output, an F32/F16/BF16 GGUF).
    cfg: the format's options (default: its defaults), or a Recipe of steps to run first (resume continues an
    interrupted one). progress: bars for long steps; log: stage messages."""
    out = Path(output)
    if isinstance(cfg, Recipe):
        cfg.source, cfg.output = str(source), str(out)
        return run(cfg, resume=resume, log=log, progress=progress)
    kind: Any = CONFIGS.get(out.suffix)
    if kind is None:
        raise EdgekitError(f"{out}: output must be a .gguf (llama.cpp) or .pte (ExecuTorch) file")
    if cfg is not None and not isinstance(cfg, kind):
        raise EdgekitError(f"{out}: {type(cfg).__name__} options are not for {out.suffix} output (use {kind.__name__})")
    if kind is GGUFConfig:
        return write_gguf(source, out, cfg, progress=progress)
    return export_pte(source, out, cfg, log=log, progress=progress)
