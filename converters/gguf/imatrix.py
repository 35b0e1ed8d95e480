"""Importance matrix (imatrix): per-input-column activation statistics that steer K-quant rounding.

For every matrix multiplication y = W x in the model, llama.cpp's imatrix tool records, per input
column j, the sum of x_j^2 over all tokens seen and the number of tokens. The quantizers then get
the per-column mean of x^2 ("importance"), so the columns that carry large activations are
rounded more carefully. This module collects the same statistics by running the Hugging Face model
in PyTorch, and reads/writes llama.cpp's two file formats:

* GGUF (current llama.cpp): ``general.type = "imatrix"``, ``imatrix.datasets`` (string array),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32), and per weight two F32 tensors:
  ``<name>.in_sum2`` (sum of squares, one value per column; one row per expert) and
  ``<name>.counts`` (tokens seen, one per expert). Newer writers may add ``<name>.in_sum``, which
  quantization does not use and we ignore.
* legacy ``.dat``: int32 entry count; per entry int32 name length, name, int32 ncall, int32 nval,
  nval float32 values already divided by the token count and multiplied by ncall; optionally
  int32 chunk count, int32 dataset-name length and the dataset name.

Keys are GGUF tensor names (``blk.0.attn_q.weight``), as llama.cpp's quantizer looks them up.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.io.hf import load_model, load_tokenizer, special_prefix
from edgekit.io.output import temp_path
from edgekit.quiet import quiet_transformers

# name -> (sum over tokens of x^2 per input column, float32; number of tokens)
Stats = dict[str, tuple[np.ndarray, int]]

GGUF_MAGIC = b"GGUF"
IMATRIX_SUFFIXES = (".gguf", ".dat")


@dataclass
class ImatrixFile:
    """The contents of an imatrix file."""

    stats: Stats
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0          # tokens per chunk; 0 when unknown (legacy files do not store it)
    legacy: bool = False

    def importance(self) -> Importance:
        return importance(self.stats)


class Importance(dict[str, np.ndarray]):
    """name -> per-column importance (float32), remembering where it came from for error messages."""

    source: str = "imatrix"

    def for_tensor(self, name: str, ncols: int) -> np.ndarray | None:
        """The importance for one weight of row length ncols; None if the imatrix has no entry for it."""
        im = self.get(name)
        if im is not None and im.shape != (ncols,):
            raise EdgekitError(f"{self.source}: imatrix entry {name!r} has {im.size} columns but the tensor has "
                               f"{ncols} (the imatrix was made for a different model)")
        return im


# ---------------------------------------------------------------------------------------------
# Collection


def collect(hf_dir: Path, text: str, *, ctx: int = 512, max_chunks: int = 64, progress: bool = True) -> Stats:
    """Run the HF model over `text` in non-overlapping chunks of `ctx` tokens; sum x^2 per Linear input column.

    Each chunk starts with the tokenizer's own prefix (BOS) when it adds one, as llama.cpp's imatrix
    tool does. Only whole chunks are used, unless the text is shorter than one chunk (then all of it).
    """
    import torch
    from torch import nn
    from tqdm import tqdm

    from edgekit.converters import archs

    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise EdgekitError(f"{hf_dir}: not a Hugging Face model directory (the imatrix runs the model in PyTorch)")
    if ctx < 2:
        raise EdgekitError(f"imatrix context must be at least 2 tokens, got {ctx}")
    if max_chunks < 1:
        raise EdgekitError(f"imatrix needs at least one chunk, got max_chunks={max_chunks}")
    if not text.strip():
        raise EdgekitError("calibration text is empty")
    tok = load_tokenizer(hf_dir)
    model = load_model(hf_dir)
    prefix = special_prefix(tok)
    with quiet_transformers():  # (it warns that the text is longer than the model's context: it is chunked below)
        ids = tok(text, add_special_tokens=False)["input_ids"]

    if not ids:
        raise EdgekitError("calibration text has no tokens")
    per_chunk = ctx - len(prefix)
    if per_chunk < 1:
        raise EdgekitError(f"imatrix context {ctx} is too short for the tokenizer's {len(prefix)} prefix tokens")
    n_chunks = min(max(len(ids) // per_chunk, 1), max_chunks)
    chunks = [prefix + ids[i * per_chunk:(i + 1) * per_chunk] for i in range(n_chunks)]

    arch = archs.get_arch((model.config.architectures or [type(model).__name__])[0], str(hf_dir / "config.json"))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(gname: str):
        def hook(_mod: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            # float64 accumulation: thousands of tokens summed in float32 would lose low bits.
            s = x.double().square().sum(0)
            if gname in sums:
                sums[gname] += s
            else:
                sums[gname] = s
            counts[gname] = counts.get(gname, 0) + x.shape[0]
        return hook

    for mname, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        try:
            gname = arch.gguf_name(mname + ".weight")
        except KeyError:
            continue  # a projection GGUF does not store (none in the supported architectures)
        if gname is None:
            continue
        if gname == "output.weight" and tied:
            gname = "token_embd.weight"  # llama.cpp multiplies by token_embd when embeddings are tied
        hooks.append(mod.register_forward_pre_hook(make_hook(gname)))

    try:
        with torch.no_grad():
            for chunk in tqdm(chunks, desc="imatrix", unit="chunk", file=sys.stderr, leave=False,
                              disable=None if progress else True, dynamic_ncols=True):
                model(torch.tensor([chunk]))
    finally:
        for h in hooks:
            h.remove()
    return {n: (sums[n].float().numpy(), counts[n]) for n in sorted(sums)}


def importance(stats: Stats) -> Importance:
    """Per-column mean of x^2 (float32, as llama.cpp's quantize divides); 1 where no token was seen."""
    out = Importance()
    for name, (s, n) in stats.items():
        s = np.asarray(s, dtype=np.float32)
        out[name] = s / np.float32(n) if n > 0 else np.ones_like(s)
    return out


# ---------------------------------------------------------------------------------------------
# Files


def save(path: Path, stats: Stats, *, dataset: str, chunks: int | None = None, ctx: int) -> Path:
    """Write stats as a llama.cpp GGUF imatrix (atomically: temp file, then rename).

    chunks defaults to the number of ctx-token chunks the largest count implies.
    """
    import gguf

    path = Path(path)
    if not stats:
        raise EdgekitError(f"{path}: no imatrix data to save")
    if chunks is None:
        chunks = -(-max(n for _, n in stats.values()) // ctx)
    tmp = temp_path(path)
    writer = gguf.GGUFWriter(tmp, arch="")
    # llama.cpp's imatrix files carry no architecture; gguf-py always adds one.
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(gguf.Keys.IMatrix.DATASETS, [dataset])
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(chunks))
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, int(ctx))
    for name in sorted(stats):  # sorted, as llama.cpp writes them
        s, n = stats[name]
        writer.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(s, dtype=np.float32).reshape(-1))
        writer.add_tensor(f"{name}.counts", np.array([n], dtype=np.float32))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except OSError as e:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise EdgekitError(f"{path}: cannot write imatrix ({e.strerror or e})") from None
    return path


def summary(path: Path, stats: Stats, ctx: int) -> str:
    """One line for the CLI after save()."""
    tokens = max((n for _, n in stats.values()), default=0)
    return f"wrote {path}: {len(stats)} tensors, {tokens} tokens ({-(-tokens // ctx)} chunks of {ctx})"


def load(path: Path) -> ImatrixFile:
    """Read a GGUF or legacy .dat imatrix file; EdgekitError naming the file if it is not one."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: imatrix file not found")
    if not path.is_file():
        raise EdgekitError(f"{path}: is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    im = _load_gguf(path) if magic == GGUF_MAGIC else _load_dat(path)
    for name, (s, _n) in im.stats.items():
        if not np.isfinite(s).all() or (s < 0).any():
            raise EdgekitError(f"{path}: imatrix entry {name!r} has negative or non-finite values (corrupt file)")
    return im


def _load_gguf(path: Path) -> ImatrixFile:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises assorted errors on truncated/corrupt files
        raise EdgekitError(f"{path}: not a readable GGUF imatrix (truncated or corrupt: {e})") from None

    def field_value(key: str):
        f = reader.get_field(key)
        return f.contents() if f is not None else None

    kind = field_value(gguf.Keys.General.TYPE)
    if kind is not None and kind != gguf.GGUFType.IMATRIX:
        raise EdgekitError(f"{path}: is a GGUF {kind}, not an imatrix file")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if t.name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise EdgekitError(f"{path}: imatrix tensor {t.name!r} is {t.tensor_type.name}, expected F32")
                into[t.name[: -len(suffix)]] = np.array(t.data, dtype=np.float32).reshape(-1)
    if not sums:
        raise EdgekitError(f"{path}: GGUF has no '.in_sum2' tensors (a model, not an imatrix file?)")
    if sums.keys() != counts.keys():
        odd = sorted(sums.keys() ^ counts.keys())[0]
        raise EdgekitError(f"{path}: imatrix entry {odd!r} lacks its in_sum2 or counts tensor (corrupt file)")
    stats: Stats = {}
    for name in sorted(sums):
        c = counts[name]
        if c.size != 1:
            raise EdgekitError(f"{path}: imatrix entry {name!r} has per-expert counts (MoE models are not supported)")
        stats[name] = (sums[name], int(round(float(c[0]))))
    datasets = field_value(gguf.Keys.IMatrix.DATASETS) or []
    return ImatrixFile(stats, list(datasets), int(field_value(gguf.Keys.IMatrix.CHUNK_COUNT) or 0),
                       int(field_value(gguf.Keys.IMatrix.CHUNK_SIZE) or 0))


def _load_dat(path: Path) -> ImatrixFile:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise EdgekitError(f"{path}: truncated or not an imatrix file (.gguf or legacy .dat)")
        vals = struct.unpack_from(fmt, data, pos)
        pos += size
        return vals

    (n_entries,) = take("<i")
    # A real entry takes at least 16 bytes, which also rejects text files read as a count.
    if n_entries < 1 or n_entries * 16 > len(data):
        raise EdgekitError(f"{path}: not an imatrix file (.gguf or legacy .dat)")
    stats: Stats = {}
    for _ in range(n_entries):
        (n,) = take("<i")
        if n < 1 or n > 4096:
            raise EdgekitError(f"{path}: truncated or corrupt legacy imatrix (tensor name length {n})")
        (raw,) = take(f"<{n}s")
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise EdgekitError(f"{path}: truncated or corrupt legacy imatrix (tensor name is not UTF-8)") from None
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise EdgekitError(f"{path}: truncated or corrupt legacy imatrix (entry {name!r} claims {nval} values)")
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        # Stored values are mean(x^2) * ncall: keeping ncall as the count makes sums/count the mean,
        # as llama.cpp's quantize computes it. ncall 0 means "use the values as they are".
        stats[name] = (vals, ncall) if ncall > 0 else (vals, 1)
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):  # optional trailer
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (n,) = take("<i")
            if 0 < n <= len(data) - pos:
                datasets = [data[pos:pos + n].decode(errors="replace")]
    return ImatrixFile(stats, datasets, chunk_count, 0, legacy=True)


# ---------------------------------------------------------------------------------------------
# Conversion entry point


def is_imatrix_file(path: Path) -> bool:
    """True for .gguf/.dat names or GGUF content; anything else is treated as calibration text."""
    path = Path(path)
    if path.suffix.lower() in IMATRIX_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_text(path: Path) -> str:
    """Calibration text as UTF-8, with one-line errors naming the file."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: calibration file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgekitError(f"{path}: calibration text is not UTF-8 (imatrix files must end in .gguf or .dat)") from None
    except OSError as e:
        raise EdgekitError(f"{path}: cannot read ({e.strerror or e})") from None


def collect_file(hf_dir: Path, data: Path, *, ctx: int = 512, max_chunks: int = 64, threads: int = 0,
                 progress: bool = True) -> Stats:
    """collect() on a calibration text file; errors name the file."""
    text = read_text(data)
    old = None
    if threads > 0:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return collect(Path(hf_dir), text, ctx=ctx, max_chunks=max_chunks, progress=progress)
    except EdgekitError as e:
        if str(e).startswith("calibration text"):
            raise EdgekitError(f"{data}: {e}") from None
        raise
    finally:
        if old is not None:
            import torch

            torch.set_num_threads(old)


def for_conversion(path: Path, hf_dir: Path | None, threads: int, progress: bool) -> Importance:
    """Importance per GGUF tensor name for `convert --imatrix`: from an imatrix file, or by running calibration text."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: imatrix file not found")
    if is_imatrix_file(path):
        out = load(path).importance()
    else:
        if hf_dir is None:
            raise EdgekitError(f"{path}: calibration text needs a Hugging Face model to run, but the source is a "
                               "GGUF; pass an imatrix file (.gguf/.dat, e.g. from `edgekit imatrix`) instead")
        out = importance(collect_file(hf_dir, path, threads=threads, progress=progress))
    out.source = str(path)
    return out
