"""edgekit: put language models on the devices people own.

One verb per step, each over a config dataclass; the `edgekit` command is a thin layer over the same calls:

    import edgekit as ek

    ek.convert("./my-llama", "m.gguf", ek.GGUFConfig(quant="q4_k_m"))         # or .pte with ek.PteConfig
    ek.prune("./my-llama", "pruned/", ek.PruneConfig(ffn=0.5, data=["corpus/"]))
    ek.sparsify("./my-llama", "sparse/", ek.SparsifyConfig(pattern="2:4", data=["corpus/"]))
    ek.distill("./my-llama", "student/", ek.DistillConfig(student="pruned/", data=["corpus/"]))
    ek.convert("./my-llama", "student.gguf", ek.load_recipe("recipes/demo-prune-distill.yaml"))
    ek.evaluate("m.gguf", ek.EvalConfig(data=["held-out/"], ref="./my-llama")).report()
    with ek.load("m.gguf") as m:
        print(m.chat([{"role": "user", "content": "hi"}], temperature=0))

Names are imported on first use, so `import edgekit` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_API = {
    "convert": "edgekit.converters.convert:convert",
    "GGUFConfig": "edgekit.converters.gguf.writer:GGUFConfig",
    "PteConfig": "edgekit.converters.pte.export:PteConfig",
    "QatConfig": "edgekit.converters.pte.qat:QatConfig",
    "Recipe": "edgekit.converters.recipe:Recipe",
    "load_recipe": "edgekit.converters.recipe:load",
    "prune": "edgekit.converters.compress.prune:prune",
    "PruneConfig": "edgekit.converters.compress.prune:PruneConfig",
    "sparsify": "edgekit.converters.compress.sparsify:sparsify",
    "SparsifyConfig": "edgekit.converters.compress.sparsify:SparsifyConfig",
    "distill": "edgekit.converters.compress.distill:distill",
    "DistillConfig": "edgekit.converters.compress.distill:DistillConfig",
    "evaluate": "edgekit.eval:evaluate",
    "EvalConfig": "edgekit.eval:EvalConfig",
    "load": "edgekit.runtime:load",
    "Model": "edgekit.runtime:Model",
    "SamplingParams": "edgekit.runtime:SamplingParams",
    "EdgekitError": "edgekit.errors:EdgekitError",
}
__all__ = sorted(_API)

def __getattr__(name: str) -> Any:
    spec = _API.get(name)
    if spec is None:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    module, attr = spec.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
