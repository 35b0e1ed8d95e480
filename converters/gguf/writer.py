"""Convert a Hugging Face checkpoint, or an F32/F16/BF16 GGUF, into a GGUF file llama.cpp runs.

The file is planned first (names, shapes, types, metadata), then each tensor is read, converted,
quantized and written before the next one is touched: memory stays near one tensor's size.
Output goes to a temporary file in the target directory and is renamed only on success.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgekit.converters import archs
from edgekit.converters.gguf.mix import SCHEMES, choose_types
from edgekit.converters.gguf.quantize import quantize_tensor
from edgekit.errors import EdgekitError
from edgekit.io.checkpoint import open_checkpoint
from edgekit.io.gguf_reader import read_header, tensor_nbytes
from edgekit.io.output import check_output_path, temp_path
from edgekit.progress import bar, human_bytes, peak_rss_bytes

RECIPE_KEY = "edgekit.recipe"  # the recipe (prune/distill/export steps) that made the model, as JSON


@dataclass
class GGUFConfig:
    quant: str = "q4_k_m"             # a key of edgekit.converters.gguf.mix.SCHEMES
    imatrix: Path | None = None       # calibration text (.txt) or activation statistics (.gguf/.dat)
    threads: int = 0                  # quantizer threads; 0 = all cores
    method: str = "rtn"               # rtn (llama.cpp's rounding) | awq | gptq | awq+gptq (need calib)
    calib: Path | None = None         # calibration text for --method (a .txt file or a folder of them)
    name: str | None = None           # general.name; default: the source's name
    recipe: dict[str, Any] | None = None  # the recipe that made the model: stored as JSON in edgekit.recipe


@dataclass
class GGUFResult:
    output: Path
    file_bytes: int
    n_params: int
    tensor_bytes: int
    seconds: float
    peak_rss: int
    types: dict[str, int] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(self.n_params, 1)

    def summary(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.types.items(), key=lambda kv: -kv[1]))
        return (f"wrote {self.output}: {human_bytes(self.file_bytes)}, {self.n_params / 1e6:.2f} M params, "
                f"{self.bits_per_weight:.2f} bits/weight, {self.seconds:.1f} s, peak RSS "
                f"{human_bytes(self.peak_rss)} [{types}]")


# Big tensors are read, quantized and written this many float32 bytes at a time, so even a
# 1 GiB embedding matrix never sits in memory whole.
CHUNK_BYTES = 32 << 20


@dataclass
class _Tensor:
    name: str                                  # GGUF name
    shape: tuple[int, ...]                     # numpy shape, row length last
    read: Callable[[int, int], np.ndarray]     # rows [start, stop) as float32, already in GGUF layout
    row_align: int = 1                         # chunks start at multiples of this (whole RoPE heads)
    release: Callable[[int, int], None] = lambda a, b: None  # done with rows [start, stop): drop pages

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    def chunks(self) -> list[tuple[int, int]]:
        row_bytes = 4 * int(np.prod(self.shape)) // self.rows
        step = max(1, CHUNK_BYTES // row_bytes // self.row_align) * self.row_align
        return [(r, min(r + step, self.rows)) for r in range(0, self.rows, step)]


@dataclass
class _Plan:
    arch: str
    n_layer: int
    tensors: list[_Tensor]
    add_metadata: Callable[[gguf.GGUFWriter], None]
    hf_dir: Path | None = None        # set when the source is a HF checkpoint (imatrix can run it)


def write_gguf(source: str | Path, output: str | Path, cfg: GGUFConfig | None = None, *,
               progress: bool = True) -> GGUFResult:
    """Convert a HF checkpoint directory, or requantize an F32/F16/BF16 GGUF, into output (a .gguf);
    raises EdgekitError with a one-line message on bad input."""
    t0 = time.perf_counter()
    cfg = cfg or GGUFConfig()
    if cfg.quant not in SCHEMES:
        raise EdgekitError(f"unknown --quant {cfg.quant!r} (choose from {', '.join(SCHEMES)})")
    scheme = SCHEMES[cfg.quant]
    out = Path(output)
    check_output_path(out, ".gguf")
    src = Path(source)
    plan = _plan_gguf(src) if src.suffix == ".gguf" and src.is_file() else _plan_hf(src, cfg.name)
    shapes = {t.name: t.shape for t in plan.tensors}
    types = choose_types(shapes, scheme, plan.n_layer)
    imatrix = _imatrix(cfg, plan, progress) if cfg.imatrix else None
    prepared = _prepare(cfg, plan, types, progress)

    tmp = temp_path(out)
    written = 0
    writer = gguf.GGUFWriter(tmp, plan.arch)
    try:
        plan.add_metadata(writer)
        writer.add_file_type(int(scheme.file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if cfg.recipe is not None:
            writer.add_string(RECIPE_KEY, json.dumps(cfg.recipe, sort_keys=True))
        total = 0
        for t in plan.tensors:
            nbytes = tensor_nbytes(types[t.name], t.shape)
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes, raw_dtype=types[t.name])
            total += nbytes
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with bar(total, f"{out.name} [{cfg.quant}]", progress) as pbar, _AsyncWriter(writer.fout[0]) as w:
            for t in plan.tensors:
                qtype = types[t.name]
                pbar.set_postfix_str(f"{t.name} {qtype.name}", refresh=False)
                im = imatrix.for_tensor(t.name, t.shape[-1]) if imatrix else None
                w.pad(writer.data_alignment)  # GGUF aligns every tensor's data
                pre = prepared.get(t.name) if prepared else None
                if pre is not None:  # computed by --method: ggml rows as they are, or floats to quantize
                    data = pre if pre.dtype == np.uint8 else quantize_tensor(np.asarray(pre), qtype, im, cfg.threads)
                    w.write(data)
                    written += data.nbytes
                    pbar.update(data.nbytes)
                    continue
                for start, stop in t.chunks():
                    data = quantize_tensor(t.read(start, stop), qtype, im, cfg.threads)
                    t.release(start, stop)
                    w.write(data)
                    written += data.nbytes
                    pbar.update(data.nbytes)
            w.pad(writer.data_alignment)
        writer.close()
        os.replace(tmp, out)
        if prepared:
            prepared.close()
    except BaseException as e:
        _discard(writer, tmp)
        if prepared:
            prepared.close()
        if not isinstance(e, OSError):
            raise
        # numpy reports a short write with no errno: on a local disk that means it is full.
        if e.errno in (None, errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise EdgekitError(f"{out}: disk full after writing {human_bytes(written)} "
                               f"({e.strerror or e}); no output was kept") from None
        raise EdgekitError(f"{out}: cannot write ({e.strerror or e})") from None
    return GGUFResult(
        output=out, file_bytes=out.stat().st_size, n_params=sum(int(np.prod(s)) for s in shapes.values()),
        tensor_bytes=written, seconds=time.perf_counter() - t0, peak_rss=peak_rss_bytes(),
        types=dict(Counter(t.name for t in types.values())))


class _AsyncWriter:
    """Writes chunks in order on one background thread, so disk writes overlap quantization
    (file writes and the C quantizer both release the GIL). At most `depth` chunks wait."""

    def __init__(self, fout: Any, depth: int = 2):
        self.fout, self.pos, self.depth = fout, fout.tell(), depth
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque[Future] = deque()

    def write(self, data: np.ndarray | bytes) -> None:
        buf = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
        self.pending.append(self.pool.submit(self.fout.write, buf))
        self.pos += len(buf)
        while len(self.pending) > self.depth:
            self.pending.popleft().result()  # re-raises a failed write (disk full) here

    def pad(self, alignment: int) -> None:
        if self.pos % alignment:
            self.write(b"\0" * (-self.pos % alignment))

    def __enter__(self) -> _AsyncWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _discard(writer: gguf.GGUFWriter, tmp: Path) -> None:
    """Close and delete a half-written output; never mask the original error."""
    try:
        writer.close()
    except OSError:
        pass
    tmp.unlink(missing_ok=True)


def _plan_hf(path: Path, name: str | None) -> _Plan:
    ckpt = open_checkpoint(path)
    where = str(path / "config.json")
    arch = archs.get_arch(ckpt.architecture, where)
    hp = archs.HParams.from_config(ckpt.config, where)
    if hp.rope_type == "llama3" and arch.gguf_arch != "llama":
        raise EdgekitError(f"{where}: llama3 RoPE scaling is only supported for Llama models")

    tensors: list[tuple[int, int, _Tensor]] = []
    seen: set[str] = set()
    for i, (hf_name, ref) in enumerate(ckpt.tensors.items()):
        try:
            gname = arch.gguf_name(hf_name)
        except KeyError:
            raise EdgekitError(f"{ref.file}: unexpected tensor {hf_name!r} for {ckpt.architecture}") from None
        if gname is None or (gname == "output.weight" and hp.tie_embeddings):
            continue  # buffers GGUF recomputes; a stored copy of tied embeddings
        layer = int(gname.split(".")[1]) if gname.startswith("blk.") else -1
        if layer >= hp.n_layer:
            raise EdgekitError(f"{ref.file}: tensor {hf_name!r} is beyond num_hidden_layers={hp.n_layer}")
        want = archs.expected_shape(arch, gname, hp)
        if ref.shape != want:
            raise EdgekitError(f"{ref.file}: tensor {hf_name!r} has shape {list(ref.shape)}, "
                               f"config.json implies {list(want)}")
        seen.add(gname)
        tensors.append((layer if layer >= 0 else (-1 if gname == "token_embd.weight" else hp.n_layer), i,
                        _hf_tensor(ckpt, hf_name, gname, ref.shape, arch, hp)))
    _check_complete(arch, hp, seen, path)
    if hp.rope_type == "llama3":
        factors = archs.llama3_rope_factors(hp)
        tensors.append((-1, -1, _Tensor("rope_freqs.weight", factors.shape, lambda a, b: factors)))
    tensors.sort(key=lambda x: (x[0], x[1]))

    def add_metadata(w: gguf.GGUFWriter) -> None:
        from edgekit.converters.gguf.tokenizer import add_tokenizer

        w.add_name(name or path.resolve().name)
        archs.write_hparams(w, arch, hp, where)
        add_tokenizer(w, path, hp.n_vocab)

    return _Plan(arch.gguf_arch, hp.n_layer, [t for _, _, t in tensors], add_metadata, hf_dir=path)


def _hf_tensor(ckpt: Any, hf_name: str, gname: str, shape: tuple[int, ...], arch: archs.Arch,
               hp: archs.HParams) -> _Tensor:
    heads = {"attn_q": hp.n_head, "attn_k": hp.n_head_kv}.get(gname.split(".")[-2]) if arch.permute_qk else None
    if not heads:
        if len(shape) == 1:
            return _Tensor(gname, shape, lambda a, b: ckpt.read(hf_name))
        return _Tensor(gname, shape, lambda a, b: ckpt.read(hf_name, a, b))
    head_rows = shape[0] // heads

    def read(start: int, stop: int) -> np.ndarray:  # whole heads only: the permutation is per head
        return archs.permute_rope_rows(ckpt.read(hf_name, start, stop), (stop - start) // head_rows)

    return _Tensor(gname, shape, read, row_align=head_rows)


def _check_complete(arch: archs.Arch, hp: archs.HParams, seen: set[str], path: Path) -> None:
    for gg in arch.tensors.values():
        names = [gg.format(bid=b) for b in range(hp.n_layer)] if "{bid}" in gg else [gg]
        for n in names:
            if n == "output.weight" and hp.tie_embeddings:
                continue
            if n not in seen:
                raise EdgekitError(f"{path}: checkpoint lacks tensor {n!r} (incomplete or wrong architecture)")


_FLOAT_INPUTS = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16,
                 gguf.GGMLQuantizationType.BF16: np.uint16}


def _plan_gguf(path: Path) -> _Plan:
    """Requantize a float GGUF, as llama-quantize does: metadata copied, tensors re-typed."""
    header = read_header(path)
    arch = header.get(gguf.Keys.General.ARCHITECTURE)
    if arch is None:
        raise EdgekitError(f"{path}: GGUF has no general.architecture")
    n_layer = int(header.get(f"{arch}.block_count", 0))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    tensors = []
    for t in header.tensors:
        if t.type not in _FLOAT_INPUTS:
            raise EdgekitError(f"{path}: tensor {t.name!r} is already {t.type.name}; requantize from an "
                               "F32, F16 or BF16 GGUF (quantizing twice loses accuracy)")
        tensors.append(_gguf_tensor(mm, t.name, t.offset, t.type, t.shape))

    skip = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE,
            gguf.Keys.General.QUANTIZATION_VERSION, gguf.Keys.General.ALIGNMENT}

    def add_metadata(w: gguf.GGUFWriter) -> None:
        for key, f in header.fields.items():
            if key not in skip:
                w.add_key_value(key, f.value, f.type, f.sub_type)

    return _Plan(arch, n_layer, tensors, add_metadata)


def _gguf_tensor(mm: mmap.mmap, name: str, offset: int, qtype: gguf.GGMLQuantizationType,
                 shape: tuple[int, ...]) -> _Tensor:
    row = int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape))
    dtype = np.dtype(_FLOAT_INPUTS[qtype])
    row_bytes = row * dtype.itemsize

    def read(start: int, stop: int) -> np.ndarray:
        # Zero-copy view of the mapped file: F32 input goes straight to the quantizer.
        x = np.frombuffer(mm, dtype=dtype, count=(stop - start) * row, offset=offset + start * row_bytes)
        if qtype == gguf.GGMLQuantizationType.BF16:
            x = (x.astype(np.uint32) << 16).view(np.float32)
        return x.astype(np.float32, copy=False).reshape((stop - start, *shape[1:]) if len(shape) > 1 else shape)

    def release(start: int, stop: int) -> None:
        # Unmap what was read (it stays in the page cache): the mapping never piles up in our RSS.
        begin = (offset + start * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, begin, offset + stop * row_bytes - begin)

    return _Tensor(name, shape, read, release=release)


def _prepare(cfg: GGUFConfig, plan: _Plan, types: dict, progress: bool) -> Any:
    """Run a calibrated --method (awq, gptq, awq+gptq) ahead of writing; None for rtn."""
    if cfg.method == "rtn":
        if cfg.calib:
            raise EdgekitError("--calib is for --method awq, gptq or awq+gptq (rtn needs no calibration)")
        return None
    from edgekit.converters.gguf import methods

    if cfg.method not in methods.METHODS:
        raise EdgekitError(f"unknown --method {cfg.method!r} (choose from {', '.join(methods.METHODS)})")
    if plan.hf_dir is None:
        raise EdgekitError(f"--method {cfg.method} runs the model layer by layer: give a Hugging Face directory, "
                           "not a GGUF")
    if cfg.calib is None:
        raise EdgekitError(f"--method {cfg.method} needs calibration text: --calib FILE.txt|DIR")
    return methods.prepare(plan.hf_dir, [Path(cfg.calib)], types, cfg.method, progress=progress)


def _imatrix(cfg: GGUFConfig, plan: _Plan, progress: bool) -> Any:
    from edgekit.converters.gguf import imatrix

    return imatrix.for_conversion(Path(cfg.imatrix), plan.hf_dir, cfg.threads, progress)
