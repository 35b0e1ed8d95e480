"""Summarise an ExecuTorch program (.pte): methods and their inputs, delegated vs portable operators,
size, constant-method metadata and the edgekit manifest next to it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, require
from edgekit.progress import human_bytes
from edgekit.quiet import quiet_torch_logs

# c10::ScalarType codes as ExecuTorch's TensorInfo.dtype() reports them.
_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
           7: "float64", 11: "bool", 15: "bfloat16"}
_SIDECARS = ("tokenizer.json", "tokenizer_config.json")


def inspect_pte(path: str | Path) -> dict[str, Any]:
    """Everything `edgekit inspect` shows about a .pte, as a JSON-serialisable dict."""
    from edgekit.converters.pte.export import manifest_path

    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 8 or head[4:6] != b"ET":  # flatbuffer file identifier "ET??" at offset 4
        raise EdgekitError(f"{path}: not an ExecuTorch program (no 'ET' file identifier)")
    quiet_torch_logs()
    require("executorch.runtime", "inspecting a .pte")
    from executorch.runtime import Runtime

    try:
        program = Runtime.get().load_program(path)
    except Exception as e:  # the runtime's own errors: corrupt or unsupported program version
        raise EdgekitError(f"{path}: ExecuTorch cannot load it ({str(e).strip().splitlines()[0]})") from None
    info: dict[str, Any] = {"format": "pte", "file": str(path), "bytes": path.stat().st_size, **_layout(path, head)}
    methods: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for name in sorted(program.method_names):
        meta = program.metadata(name)
        if meta.num_inputs() == 0:  # constant methods: the LLM runner's metadata (get_max_seq_len, ...)
            try:
                vals = [v.item() if hasattr(v, "item") else v for v in program.load_method(name).execute([])]
                metadata[name] = vals if len(vals) != 1 or name == "get_eos_ids" else vals[0]
                continue
            except Exception:  # a no-input method that is not a constant: report its signature below
                pass
        methods[name] = {"inputs": [_tensor(meta.input_tensor_meta, i) for i in range(meta.num_inputs())],
                         "outputs": [_tensor(meta.output_tensor_meta, i) for i in range(meta.num_outputs())]}
    info["methods"] = methods
    info["metadata"] = metadata
    info["ops"] = _op_counts(path, head)
    man = manifest_path(path)
    try:
        info["manifest"] = json.loads(man.read_text(encoding="utf-8")) if man.is_file() else None
    except (OSError, ValueError) as e:
        raise EdgekitError(f"{man}: unreadable manifest ({e})") from None
    info["sidecars"] = {n: path.with_name(n).is_file() for n in (*_SIDECARS, man.name)}
    return info


def _tensor(get: Any, i: int) -> dict[str, Any]:
    try:
        t = get(i)
    except IndexError:  # not a tensor (constant methods return ints, bools and lists)
        return {"shape": None, "dtype": "scalar", "bytes": 0}
    return {"shape": list(t.sizes()), "dtype": _DTYPES.get(t.dtype(), str(t.dtype())), "bytes": t.nbytes()}


def _extended_header(head: bytes) -> Any:
    from executorch.exir._serialize._program import _get_extended_header

    eh = _get_extended_header(head)
    return eh if eh is not None and eh.is_valid() else None


def _layout(path: Path, head: bytes) -> dict[str, Any]:
    """Bytes of the program flatbuffer vs the data segments (weights, delegate blobs) after it."""
    try:
        eh = _extended_header(head)
    except Exception:  # a private ExecuTorch helper: its absence must not break inspect
        return {}
    if eh is None:
        return {"program_bytes": path.stat().st_size, "segment_bytes": 0}
    return {"program_bytes": eh.program_size, "segment_bytes": eh.segment_data_size}


def _op_counts(path: Path, head: bytes) -> dict[str, Any]:
    """Per method: calls into each delegate backend and each portable kernel, from the instruction lists.

    Parses only the flatbuffer head of the file (not the weights) with ExecuTorch's own (private)
    deserializer; if that is unavailable, the counts are reported as unavailable."""
    try:
        from executorch.exir._serialize._program import _flatbuffer_to_program

        eh = _extended_header(head)
        with open(path, "rb") as f:
            fb = f.read(eh.program_size) if eh is not None else f.read()
        program = _flatbuffer_to_program(fb)
    except Exception as e:  # private API: keep inspect working if ExecuTorch changes it
        return {"error": f"operator counts unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"}
    out: dict[str, Any] = {}
    for plan in program.execution_plan:
        names = [f"{o.name}.{o.overload}" if o.overload else o.name for o in plan.operators]
        delegated: Counter[str] = Counter()
        portable: Counter[str] = Counter()
        for chain in plan.chains:
            for ins in chain.instructions:
                kind = type(ins.instr_args).__name__
                if kind == "DelegateCall":
                    delegated[plan.delegates[ins.instr_args.delegate_index].id] += 1
                elif kind == "KernelCall":
                    name = names[ins.instr_args.op_index]
                    if not name.startswith("executorch_prim::"):  # views and scalar glue, not compute
                        portable[name] += 1
        if delegated or portable:
            out[plan.name] = {"delegated_calls": sum(delegated.values()), "portable_calls": sum(portable.values()),
                              "delegated": dict(delegated), "portable": dict(portable.most_common())}
    return out


def format_report(info: dict[str, Any]) -> str:
    """The human-readable form of inspect_pte's dict."""
    lines = [f"file         {info['file']}", f"size         {human_bytes(info['bytes'])}"
             + (f" (program {human_bytes(info['program_bytes'])}, data segments "
                f"{human_bytes(info['segment_bytes'])})" if "program_bytes" in info else "")]
    lines.append("methods")
    for name, m in info["methods"].items():
        ins = ", ".join(f"{t['dtype']}{t['shape'] or ''}" for t in m["inputs"])
        outs = ", ".join(f"{t['dtype']}{t['shape'] or ''}" for t in m["outputs"])
        lines.append(f"  {name}({ins}) -> {outs}   (shapes are upper bounds)")
        ops = info["ops"].get(name)
        if ops:
            backends = ", ".join(f"{n} x{c}" for n, c in ops["delegated"].items()) or "none"
            lines.append(f"    delegated calls {ops['delegated_calls']} ({backends}); portable kernel calls "
                         f"{ops['portable_calls']}")
            top = list(ops["portable"].items())[:8]
            if top:
                lines.append("    portable: " + ", ".join(f"{n} x{c}" for n, c in top)
                             + (", ..." if len(ops["portable"]) > len(top) else ""))
    if "error" in info["ops"]:
        lines.append(f"  {info['ops']['error']}")
    if info["metadata"]:
        lines.append("metadata (constant methods)")
        lines += [f"  {k:<24} {v}" for k, v in info["metadata"].items()]
    man = info.get("manifest")
    if man:
        q = man.get("quantization", {})
        src = man.get("source", {})
        lines.append("manifest")
        lines.append(f"  name                     {man.get('name')}")
        lines.append(f"  source                   {src.get('architecture')} {src.get('path')}")
        lines.append(f"  source sha256            {src.get('safetensors_sha256')}")
        lines.append(f"  quantization             linear {q.get('linear')} (group {q.get('group_size')}), "
                     f"embedding {q.get('embedding') or 'float'}")
        lines.append(f"  context / prefill        {man.get('max_seq_len')} / {man.get('max_prefill')} tokens")
        lines.append(f"  bos / eos                {man.get('bos_id')} / {man.get('eos_ids')}")
        lines.append(f"  chat template            {'yes' if man.get('chat_template') else 'no'}")
        if man.get("recipe"):
            from edgekit.converters.recipe import describe

            lines.append(f"  recipe                   {describe(man['recipe'])}")
        lines.append(f"  needs kernels            {', '.join(man.get('program', {}).get('needs_kernels', [])) or '-'}")
        made = ", ".join(f"{k} {v}" for k, v in man.get("created_by", {}).items())
        lines.append(f"  created by               {made}")
    else:
        lines.append("manifest     none (not written by edgekit, or the sidecar was not copied)")
    missing = [n for n, ok in info["sidecars"].items() if not ok]
    lines.append("sidecars     " + ("all present" if not missing else "missing " + ", ".join(missing)))
    return "\n".join(lines)
