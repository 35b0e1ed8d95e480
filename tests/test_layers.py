"""The package's layering, checked on the source: every import points down, nobody imports another
module's private names, and test scaffolding stays out of the layers that ship to users' code paths.

Layers (a module may import its own layer's modules and those of the layers it lists):

    cli                     the `edgekit` command: parses, calls the API, prints
    edgekit (the API)       edgekit/__init__.py: convert, prune, sparsify, distill, evaluate, load
    testing                 tiny-model and tokenizer builders, reference quantizers (tests, benchmarks)
    inspect, doctor, devices
    eval                    perplexity and KL (runs models through runtime's public backends)
    converters | runtime    the two halves: making files, running them; neither imports the other
    io | native | demo      reading and writing files; the C library; the demo model's files
    base                    errors, progress, quiet (log silencing)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"edgekit": REPO / "edgekit", "edgekit.converters": REPO / "converters",
         "edgekit.devices": REPO / "devices"}

# layer -> the layers it may import (besides its own)
BASE = {"base"}
LOWER = BASE | {"io", "native", "demo"}
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "io": BASE,
    "native": BASE,
    "demo": BASE,
    "converters": LOWER,
    "runtime": LOWER,
    "eval": LOWER | {"runtime"},
    "inspect": LOWER | {"converters"},
    "doctor": LOWER | {"runtime"},
    "devices": LOWER | {"runtime"},
    "testing": LOWER | {"converters", "runtime"},
    "api": LOWER | {"converters", "runtime", "eval", "inspect"},
    "cli": LOWER | {"converters", "runtime", "eval", "inspect", "doctor", "devices", "api"},
}
LAYER_OF = [  # module prefix -> layer; the longest matching prefix wins
    ("edgekit.errors", "base"), ("edgekit.progress", "base"), ("edgekit.quiet", "base"),
    ("edgekit.io", "io"), ("edgekit.native", "native"), ("edgekit.demo", "demo"),
    ("edgekit.demo.train", "testing"),  # retrains the demo teacher: a maintainer's tool, not a user's path
    ("edgekit.converters", "converters"), ("edgekit.runtime", "runtime"), ("edgekit.eval", "eval"),
    ("edgekit.inspect", "inspect"), ("edgekit.doctor", "doctor"), ("edgekit.devices", "devices"),
    ("edgekit.testing", "testing"), ("edgekit.cli", "cli"), ("edgekit.__main__", "cli"), ("edgekit", "api"),
]


def layer(module: str) -> str:
    best = max((p for p, _ in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYER_OF)[best]


def modules() -> dict[str, Path]:
    out = {}
    for prefix, root in ROOTS.items():
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = f
    return out


def imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every edgekit import, at any depth of the file."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "edgekit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "edgekit":
                out += [(target, a.name, node.lineno) for a in node.names]
    return out


def upward(mods: dict[str, Path]) -> list[str]:
    """Imports that point up or sideways."""
    bad = []
    for m, path in mods.items():
        mine = layer(m)
        for target, name, line in imports(m, path):
            full = f"{target}.{name}" if name else target
            if target == "edgekit" and name == "__version__":
                continue  # the package's version string is metadata, not a layer
            # `from edgekit import X` imports the submodule X when there is one
            theirs = layer(full if full in mods else target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{path.name}:{line}: {m} ({mine}) imports {full} ({theirs})")
    return bad


def private(mods: dict[str, Path]) -> list[str]:
    """Imports of another module's underscore names (or of a private module)."""
    bad = []
    for m, path in mods.items():
        for target, name, line in imports(m, path):
            parts = [*target.split("."), name] if name else target.split(".")
            if target != m and any(p.startswith("_") and not p.startswith("__") for p in parts):
                bad.append(f"{path.name}:{line}: {m} imports {target}{'.' + name if name else ''}")
    return bad


MODULES = modules()


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 60
    for m in MODULES:
        assert layer(m) in ALLOWED, m


def test_imports_point_down() -> None:
    bad = upward(MODULES)
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_no_private_imports() -> None:
    bad = private(MODULES)
    assert not bad, "imports of another module's private names:\n" + "\n".join(bad)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """Planted violations are found: the lower layer importing the CLI, converters importing the runtime, and
    a private name; relative imports resolve as Python resolves them."""
    planted = {"edgekit.io.planted": "from edgekit.cli import main\n",
               "edgekit.converters.gguf.planted": "def f():\n    from ..compress import prune\n"
                                                 "    from edgekit.runtime import load\n",
               "edgekit.eval.planted": "from edgekit.io.hf import _fail\n"}
    mods = {}
    for name, text in planted.items():
        mods[name] = tmp_path / f"{name}.py"
        mods[name].write_text(text)
    assert [b.split(": ", 1)[1] for b in upward(mods)] == [
        "edgekit.io.planted (io) imports edgekit.cli.main (cli)",
        "edgekit.converters.gguf.planted (converters) imports edgekit.runtime.load (runtime)"]
    assert [b.split(": ", 1)[1] for b in private(mods)] == ["edgekit.eval.planted imports edgekit.io.hf._fail"]


def test_one_import_name_per_file() -> None:
    """converters/ and devices/ are installed as edgekit.converters and edgekit.devices only: nothing imports
    them (or native/) as top-level packages, which would load the same file under a second name."""
    bad = []
    for p in [*MODULES.values(), *REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{p.relative_to(REPO)}:{node.lineno}: {n}" for n in names
                    if n.split(".")[0] in ("converters", "devices", "native")]
    assert not bad, bad


def test_one_llama_cpp_binding() -> None:
    """llama.cpp's Python package is imported by edgekit.runtime.backends.llamacpp alone; edgekit, its tests
    and its benchmarks go through that module."""
    users = set()
    for p in [*MODULES.values(), *REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "llama_cpp" for n in names):
                users.add(str(p.relative_to(REPO)))
    assert users == {"edgekit/runtime/backends/llamacpp.py"}, sorted(users)


def test_one_transformers_loader() -> None:
    """Models, configs and tokenizers are loaded by edgekit.io.hf alone (one error mapping). (The tokenizer
    builder's LlamaTokenizer.from_pretrained converts a SentencePiece model it has just trained.)"""
    users = {str(p.relative_to(REPO)) for p in MODULES.values()
             if re.search(r"\bAuto\w+\.from_pretrained\(", p.read_text(encoding="utf-8"))}
    assert users == {"edgekit/io/hf.py"}, sorted(users)
