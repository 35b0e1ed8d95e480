"""Recipes: the whole plan for making a model fit a device, as one versioned file.

A recipe names a teacher, an output and the steps between them, run in order:

    source: ./teacher            # an HF model directory, or "demo" for the built-in demo teacher
    output: student-q4km.gguf    # .gguf or .pte (quantized; the HF student is kept next to it), or a directory
    data: corpus/                # text for every step that needs some (a step's own `data` wins)
    eval_data: heldout/          # optional: the final report's held-out text
    steps:
      - prune: {ffn: 0.5, heads: 0.25}                  # structured (edgekit.converters.compress.prune)
      - sparsify: {method: wanda, pattern: "2:4"}       # unstructured (edgekit.converters.compress.sparsify)
      - distill: {steps: 2000, alpha: 0.5, temperature: 2.0}   # edgekit.converters.compress.distill
      - export: {quant: q4_k_m}                         # GGUF or .pte, by the output's suffix

Relative paths are relative to the recipe file. "demo:train" and "demo:heldout" name the demo corpus's
splits. `edgekit convert`'s --prune/--sparsify/--distill flags build the same object. The resolved recipe
(every default filled in) is stored with the result: `edgekit_recipe.json` in the student directory, the
`edgekit.recipe` key of a GGUF, the manifest of a .pte.

Intermediate models live in a work directory (default: OUTPUT.work next to the output): one directory
per finished step plus the distillation checkpoints. `resume` reuses the finished steps and the newest
checkpoint; on success the work directory is removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.converters.compress import distributed as dist
from edgekit.errors import EdgekitError
from edgekit.io.output import check_output_dir, check_output_path, temp_path

FORMAT = "edgekit-recipe"
VERSION = 1
RECORD = "edgekit_recipe.json"     # the recipe as stored in a student directory
STEP_ORDER = ("prune", "sparsify", "distill", "export")
_EXPORT_KEYS = {"quant", "imatrix", "group_size", "embedding_quant", "max_seq_len", "name"}
_CONFIGS = {"prune": "edgekit.converters.compress.prune:PruneConfig",
            "sparsify": "edgekit.converters.compress.sparsify:SparsifyConfig",
            "distill": "edgekit.converters.compress.distill:DistillConfig"}


@dataclass
class Recipe:
    source: str                               # HF directory, or "demo"
    output: str
    steps: list[tuple[str, dict[str, Any]]]   # (kind, options) in STEP_ORDER
    data: list[str] = field(default_factory=list)
    eval_data: list[str] = field(default_factory=list)
    work_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "source": self.source, "output": self.output,
                "data": self.data, "eval_data": self.eval_data, "work_dir": self.work_dir,
                "steps": [{kind: opts} for kind, opts in self.steps]}


# ---------------------------------------------------------------------------------------------
# Reading and checking


def load(path: str | Path) -> Recipe:
    """Read a YAML or JSON recipe; every problem is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgekitError(f"{path}: recipe not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgekitError(f"{path}: cannot read the recipe ({e})") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 -- json and yaml raise different types for the same user mistake
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first})") from None
    return from_dict(raw, base=path.parent, where=str(path))


def from_dict(raw: Any, *, base: Path = Path("."), where: str = "recipe") -> Recipe:
    """Check a recipe's structure and option names, resolving relative paths against `base`."""
    if not isinstance(raw, dict):
        raise EdgekitError(f"{where}: a recipe is a mapping with source, output and steps")
    unknown = set(raw) - {"format", "version", "source", "output", "data", "eval_data", "work_dir", "steps"}
    if unknown:
        raise EdgekitError(f"{where}: unknown recipe key(s) {', '.join(sorted(unknown))}")
    if raw.get("format", FORMAT) != FORMAT or int(raw.get("version", VERSION)) > VERSION:
        raise EdgekitError(f"{where}: not an {FORMAT} v{VERSION} file")
    for key in ("source", "output"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise EdgekitError(f"{where}: `{key}` is required (a path)")
    steps_raw = raw.get("steps") or []
    if not isinstance(steps_raw, list):
        raise EdgekitError(f"{where}: `steps` must be a list like [{{prune: {{ffn: 0.5}}}}, {{distill: {{}}}}]")
    steps: list[tuple[str, dict[str, Any]]] = []
    for item in steps_raw:
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise EdgekitError(f"{where}: each step is one of {', '.join(STEP_ORDER)} with its options")
        (kind, opts), = item.items()
        opts = dict(opts or {})
        if kind not in STEP_ORDER:
            raise EdgekitError(f"{where}: unknown step {kind!r} (steps: {', '.join(STEP_ORDER)})")
        if steps and STEP_ORDER.index(kind) <= STEP_ORDER.index(steps[-1][0]):
            raise EdgekitError(f"{where}: step {kind!r} is out of order or repeated (order: {' -> '.join(STEP_ORDER)})")
        bad = set(opts) - _allowed(kind)
        if bad:
            raise EdgekitError(f"{where}: {kind}: unknown option(s) {', '.join(sorted(bad))} "
                               f"(known: {', '.join(sorted(_allowed(kind)))})")
        if kind == "sparsify" and isinstance(opts.get("pattern"), int):
            raise EdgekitError(f'{where}: sparsify: write the pattern quoted, e.g. pattern: "2:4" '
                               f"(YAML reads an unquoted 2:4 as the number {opts['pattern']})")
        steps.append((kind, opts))
    if not steps:
        raise EdgekitError(f"{where}: the recipe has no steps")

    def paths(v: Any) -> list[str]:
        items = v if isinstance(v, list) else ([] if v is None else [v])
        return [_resolve(str(p), base) for p in items]

    for _kind, opts in steps:
        for key in ("data", "eval_data"):
            if key in opts:
                opts[key] = paths(opts[key])
        if "imatrix" in opts:
            opts["imatrix"] = _resolve(str(opts["imatrix"]), base)
        if isinstance(opts.get("student"), str):
            opts["student"] = _resolve(opts["student"], base)
    source = raw["source"] if raw["source"] == "demo" else _resolve(raw["source"], base)
    return Recipe(source=source, output=_resolve(raw["output"], base), steps=steps, data=paths(raw.get("data")),
                  eval_data=paths(raw.get("eval_data")),
                  work_dir=_resolve(raw["work_dir"], base) if raw.get("work_dir") else None)


def _allowed(kind: str) -> set[str]:
    if kind == "export":
        return _EXPORT_KEYS
    return {f.name for f in dataclasses.fields(_import(_CONFIGS[kind]))}


def _import(spec: str) -> Any:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _resolve(p: str, base: Path) -> str:
    if p.startswith("demo:") or p == "demo":
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else base / q)


def parse_options(spec: str, flag: str) -> dict[str, Any]:
    """'ffn=0.5,heads=0.25' -> {'ffn': 0.5, 'heads': 0.25}."""
    out: dict[str, Any] = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise EdgekitError(f"{flag} {spec!r}: expected key=value pairs separated by commas, "
                               "e.g. ffn=0.5,heads=0.25")
        out[key.strip().replace("-", "_")] = _scalar(value.strip())
    return out


def _scalar(v: str) -> Any:
    """A flag value: int, float, true/false/none, else the string itself (so 2:4 stays "2:4")."""
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def _data(paths: list[str], where: str) -> list[Path]:
    """Paths, with demo:train / demo:heldout expanded to the demo corpus's files."""
    out: list[Path] = []
    for p in paths:
        if p.startswith("demo:"):
            from edgekit.demo import corpus

            split = {"demo:train": 0, "demo:heldout": 1}.get(p)
            if split is None:
                raise EdgekitError(f"{where}: {p!r}: the demo corpus has demo:train and demo:heldout")
            out += corpus.split()[split]
        else:
            out.append(Path(p))
    return out


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class PipelineResult:
    student_dir: Path | None          # the HF student (None when no step changed the model)
    output: Path
    teacher: Path                     # the source model
    eval_data: list[Path]             # held-out text for a report against the teacher (may be empty)
    export: Any = None                # the exporter's result (ConvertResult or PteResult), if any
    lines: list[str] = field(default_factory=list)   # each step's summary


def run(recipe: Recipe, *, resume: bool = False, log: Callable[[str], None] | None = None,
        progress: bool = True) -> PipelineResult:
    """Run the recipe's steps in order; only rank 0 writes (under torchrun, every rank trains)."""
    dist.init()  # under torchrun, join the process group before the first barrier
    say = log if (log and dist.is_main()) else (lambda _msg: None)
    source = _source(recipe)
    out = Path(recipe.output)
    quantized = out.suffix in (".gguf", ".pte")
    if "export" in (k for k, _ in recipe.steps) and not quantized:
        raise EdgekitError(f"{out}: an export step needs a .gguf or .pte output (a directory gets the HF student)")
    if quantized and recipe.steps[-1][0] != "export":
        recipe.steps.append(("export", {}))  # a quantized output implies the export step
    changes = [k for k, _ in recipe.steps if k != "export"]
    student_out = (out.with_name(out.stem + "-student") if quantized else out) if changes else None
    work = Path(recipe.work_dir) if recipe.work_dir else out.with_name(out.name.removesuffix(out.suffix) + ".work")
    steps, record = _resolved(recipe)
    _check_steps(steps, source)
    if dist.is_main():
        if student_out is not None:
            check_output_dir(student_out)
        if quantized:
            check_output_path(out, out.suffix)
            _check_export(out, steps[-1][1])
        if changes:
            _open_work_dir(work, record, resume)
    dist.barrier()

    result = PipelineResult(student_dir=student_out, output=out, teacher=source,
                            eval_data=_data(record["eval_data"], "eval_data"))
    current = source
    for n, (kind, opts) in enumerate(steps, 1):
        if kind == "export":
            break
        stage = work / f"{n}-{kind}"
        if stage.is_dir():
            say(f"{kind}: reusing {stage} from the earlier run")
        elif kind == "distill":
            _distill(source, current, stage, opts, work, resume, say, progress, result)
        else:
            with dist.main_first() as main:
                if main:
                    say(f"{kind}: {current} -> {stage}")
                    _emit(result, _structural(kind, current, stage, opts))
        current = stage

    if dist.is_main():
        if current != source:
            (current / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        if quantized:
            result.export = _export(current, out, steps[-1][1], record, say)
            _emit(result, result.export.summary())
        if student_out is not None:
            if student_out.exists():
                student_out.rmdir()  # checked empty before the work started
            shutil.move(str(current), str(student_out))
            shutil.rmtree(work, ignore_errors=True)
    dist.barrier()
    return result


def _emit(result: PipelineResult, line: str) -> None:
    print(line, flush=True)
    result.lines.append(line)


def _source(recipe: Recipe) -> Path:
    if recipe.source == "demo":
        from edgekit.demo import model_dir

        return model_dir()
    src = Path(recipe.source)
    if not (src / "config.json").is_file():
        raise EdgekitError(f"{src}: not a Hugging Face model directory (no config.json)")
    return src


def _resolved(recipe: Recipe) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """Every step's options with the shared data applied (the demo's splits by default for the demo teacher),
    and the record to store: the same with every default filled in."""
    data = recipe.data or (["demo:train"] if recipe.source == "demo" else [])
    eval_data = recipe.eval_data or (["demo:heldout"] if recipe.source == "demo" else [])
    steps = []
    for kind, opts in recipe.steps:
        full = dict(opts)
        if kind in ("prune", "sparsify", "distill") and "data" not in full and data:
            full["data"] = list(data)
        if kind == "distill" and "eval_data" not in full and eval_data:
            full["eval_data"] = list(eval_data)
        if kind == "distill" and not full.get("data"):
            raise EdgekitError("distill: needs training text (the recipe's `data`, or --data)")
        steps.append((kind, full))
    record = recipe.to_dict() | {"data": data, "eval_data": eval_data,
                                 "steps": [{k: _defaults(k, o)} for k, o in steps]}
    return steps, record


def _defaults(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
    if kind == "export":
        return opts
    cls = _import(_CONFIGS[kind])
    base = {f.name: (f.default if f.default is not dataclasses.MISSING else
                     f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            for f in dataclasses.fields(cls)}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in (base | opts).items()}


def _check_steps(steps: list[tuple[str, dict[str, Any]]], source: Path) -> None:
    """Every step's options, checked before the first step starts (a typo should not cost a pruning run)."""
    changed = False  # has an earlier step made a student?
    for kind, opts in steps:
        if kind == "export":
            continue
        _make(_CONFIGS[kind], opts, kind).check()
        if kind == "distill" and "student" not in opts and not changed:
            raise EdgekitError(f"distill: no student for {source}: prune or sparsify first, or give `student` "
                               "(a directory, or config overrides such as {num_hidden_layers: 4})")
        changed = True


def _open_work_dir(work: Path, record: dict[str, Any], resume: bool) -> None:
    state = work / "recipe.json"
    if work.exists() and any(work.iterdir()):
        if not resume:
            raise EdgekitError(f"{work}: holds the work of an earlier run; continue it with --resume, or remove it")
        if not state.is_file() or json.loads(state.read_text(encoding="utf-8")) != json.loads(json.dumps(record)):
            raise EdgekitError(f"{work}: was made by a different recipe; remove it to start over")
        return
    work.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _make(cls_spec: str, opts: dict[str, Any], where: str) -> Any:
    cls = _import(cls_spec)
    opts = dict(opts)
    for key in ("data", "eval_data"):
        if key in opts:
            opts[key] = _data(opts[key], where)
    if "layer_map" in opts and opts["layer_map"] is not None:
        opts["layer_map"] = [tuple(p) for p in opts["layer_map"]]
    try:
        return cls(**opts)
    except TypeError as e:
        raise EdgekitError(f"{where}: {e}") from None


def _structural(kind: str, src: Path, dst: Path, opts: dict[str, Any]) -> str:
    if kind == "prune":
        from edgekit.converters.compress.prune import prune

        return prune(src, dst, _make(_CONFIGS["prune"], opts, "prune")).summary()
    from edgekit.converters.compress.sparsify import sparsify

    return sparsify(src, dst, _make(_CONFIGS["sparsify"], opts, "sparsify")).summary()


def _distill(source: Path, current: Path, stage: Path, opts: dict[str, Any], work: Path, resume: bool, say,
             progress: bool, result: PipelineResult) -> None:
    """The teacher is the recipe's source; the student is what the earlier steps made, or `student`."""
    from edgekit.converters.compress.distill import distill

    cfg = _make(_CONFIGS["distill"], opts, "distill")
    if cfg.student is None:
        cfg.student = current
    report = distill(source, stage, cfg, checkpoint_dir=work / "checkpoints", resume=resume, log=say,
                     progress=progress)
    if dist.is_main():
        _emit(result, report.summary())


def _check_export(out: Path, opts: dict[str, Any]) -> None:
    """The export step's options, checked before any training starts."""
    from edgekit.converters.gguf.mix import SCHEMES
    from edgekit.converters.pte.export import QUANTS

    schemes, only_other = (SCHEMES, {"group_size", "embedding_quant", "max_seq_len"}) if out.suffix == ".gguf" \
        else (QUANTS, {"imatrix"})
    bad = sorted(set(opts) & only_other)
    if bad:
        raise EdgekitError(f"export: {', '.join(bad)}: not for {out.suffix} output")
    if "quant" in opts and opts["quant"] not in schemes:
        raise EdgekitError(f"export: quant {opts['quant']!r} is not a {out.suffix} scheme "
                           f"({', '.join(schemes)})")


def _export(student: Path, out: Path, opts: dict[str, Any], record: dict[str, Any], say) -> Any:
    if out.suffix == ".gguf":
        from edgekit.converters.gguf.writer import GGUFConfig, write_gguf

        return write_gguf(student, out, GGUFConfig(quant=opts.get("quant", "q4_k_m"),
                                                   imatrix=Path(opts["imatrix"]) if opts.get("imatrix") else None,
                                                   name=opts.get("name") or out.stem, recipe=record))
    from edgekit.converters.pte.export import PteConfig, export_pte

    return export_pte(student, out, PteConfig(quant=opts.get("quant", "8da4w"), group_size=opts.get("group_size", 32),
                                              embedding_quant=opts.get("embedding_quant"),
                                              max_seq_len=opts.get("max_seq_len"), name=opts.get("name") or out.stem,
                                              recipe=record), log=say)


def describe(record: dict[str, Any]) -> str:
    """One line for `edgekit inspect`: 'prune ffn=0.5 -> distill 2000 steps (alpha 0.5, T 2.0) -> export q4_k_m'."""
    parts = []
    for step in record.get("steps", []):
        (kind, o), = step.items()
        if kind == "prune":
            what = ",".join(f"{k}={o[k]}" for k in ("ffn", "heads", "layers") if o.get(k))
        elif kind == "sparsify":
            what = f"{o.get('method')} {o.get('pattern') or o.get('sparsity')}"
        elif kind == "distill":
            what = f"{o.get('steps')} steps (alpha {o.get('alpha')}, T {o.get('temperature')})"
        else:
            what = str(o.get("quant", ""))
        parts.append(f"{kind} {what}".strip())
    return f"{record.get('source')}: " + " -> ".join(parts)


def write(recipe: Recipe, path: Path) -> None:
    """Save a recipe (e.g. one built from flags) as YAML or JSON, by the file's suffix."""
    d = recipe.to_dict()
    base = path.parent.resolve()

    def rel(p: Any) -> Any:  # paths relative to the recipe file, as load() reads them
        if isinstance(p, list):
            return [rel(x) for x in p]
        if not isinstance(p, str) or p == "demo" or p.startswith("demo:"):
            return p
        return os.path.relpath(Path(p).resolve(), base)

    for key in ("source", "output", "data", "eval_data", "work_dir"):
        if d[key]:
            d[key] = rel(d[key])
    for step in d["steps"]:
        for opts in step.values():
            for key in ("data", "eval_data", "imatrix", "student"):
                if key in opts:
                    opts[key] = rel(opts[key])
    if path.suffix == ".json":
        text = json.dumps(d, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(d, sort_keys=False)
    tmp = temp_path(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":  # pragma: no cover -- `python -m edgekit.converters.recipe FILE` checks a recipe
    print(json.dumps(load(sys.argv[1]).to_dict(), indent=2))
