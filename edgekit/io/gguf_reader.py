"""Fast, bounded reading of a GGUF file's header: metadata key/values and tensor infos, not tensor data.

gguf-py's GGUFReader builds a numpy view per string, which takes ~4.7 s for the 128k-token
vocabulary of a Llama 3 model; reading the same header with struct and bytes slicing takes a
fraction of a second. Tensor data is then read through mmap by the caller.
Layout (GGUF v2/v3, little endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
n_kv x (string key, u32 type, value), n_tensors x (string name, u32 n_dims, u64 dims..., u32 type,
u64 offset), padding to `general.alignment` (default 32), tensor data.

The file is hostile until proven otherwise: every count and length is checked against the bytes left
before anything is read or allocated, the file is read in windows of at most a few MiB (so a claimed
length never makes the reader swallow a whole model file), and anything malformed is one EdgekitError.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from edgekit.errors import EdgekitError

V = GGUFValueType
_SCALARS = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
            V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}
_NUMPY = {V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4", V.INT32: "<i4",
          V.FLOAT32: "<f4", V.BOOL: "?", V.UINT64: "<u8", V.INT64: "<i8", V.FLOAT64: "<f8"}
MAX_DIMS = 4             # ggml's GGML_MAX_DIMS
WINDOW = 4 << 20         # bytes read from the file at a time
# Sanity bounds far above any real file (a chat template is ~10 KB, a 256k vocabulary's scores 1 MiB): a
# claim beyond them is corruption, refused before a byte of it is read.
MAX_STRING = 16 << 20
MAX_ARRAY_BYTES = 256 << 20


@dataclass(frozen=True)
class Field:
    type: GGUFValueType
    sub_type: GGUFValueType | None  # element type of an array
    value: Any                      # str, int, float, bool, or a list of those


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]          # numpy order (row length last)
    type: GGMLQuantizationType
    offset: int                     # absolute offset of the data in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    fields: dict[str, Field]
    tensors: list[TensorInfo]
    file_size: int

    def get(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        return default if f is None else f.value


    @property
    def data_start(self) -> int:
        """Where the tensor data begins: the header's size, padded to the alignment."""
        return self._data_start

    _data_start: int = 0


def tensor_nbytes(t: GGMLQuantizationType, shape: Sequence[int]) -> int:
    """Bytes of a tensor of numpy shape `shape` (last axis = row) stored as type t."""
    blk, size = GGML_QUANT_SIZES[t]
    n = 1
    for d in shape:
        n *= d
    return n // blk * size


class _Reader:
    """Sequential little-endian reads from a file, through a window of at most WINDOW bytes (plus whatever
    one value needs); every length is checked against the bytes the file still has before it is read."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path
        self.buf: bytes | bytearray = b""              # the window
        self.at, self.base = 0, 0                        # position in it, file offset of its start

    @property
    def pos(self) -> int:
        return self.base + self.at

    def corrupt(self, what: str) -> EdgekitError:
        return EdgekitError(f"{self.path}: corrupt GGUF ({what} at byte {self.pos})")

    def need(self, n: int, what: str) -> None:
        """n more bytes must exist in the file; have them in the window."""
        if n < 0 or self.pos + n > self.size:
            raise EdgekitError(f"{self.path}: truncated or corrupt GGUF ({what} needs {n:,} bytes at byte "
                               f"{self.pos:,}; the file has {self.size:,})")
        if self.at + n > len(self.buf):  # a new window: what is left of this one, then the file (no extra copy)
            rest = memoryview(self.buf)[self.at:]
            want = min(max(n, WINDOW), self.size - self.pos)
            buf = bytearray(want)
            buf[:len(rest)] = rest
            got = self.f.readinto(memoryview(buf)[len(rest):])
            self.base += self.at
            self.buf, self.at = buf[:len(rest) + got] if len(rest) + got < want else buf, 0

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        b = memoryview(self.buf)[self.at:self.at + n]
        self.at += n
        return b

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, min_bytes: int) -> int:
        """A u64 count of items that take at least min_bytes each: no more than the rest of the file holds."""
        n = self.unpack("<Q", what)
        if n * min_bytes > self.size - self.pos:
            raise self.corrupt(f"{what} {n:,} does not fit in the {self.size - self.pos:,} bytes left")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"{what} length", 1)
        if n > MAX_STRING:
            raise self.corrupt(f"{what} of {n:,} bytes")
        return str(self.take(n, what), "utf-8", "replace")

    def vtype(self, what: str) -> GGUFValueType:
        raw = self.unpack("<I", what)
        try:
            return V(raw)
        except ValueError:
            raise self.corrupt(f"unknown value type {raw} for {what}") from None

    def value(self, vtype: GGUFValueType, key: str) -> Any:
        if vtype == V.STRING:
            return self.string(f"value of {key!r}")
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], f"value of {key!r}")
        raise self.corrupt(f"unknown value type {int(vtype)} for {key!r}")

    def array(self, key: str) -> tuple[GGUFValueType, list[Any]]:
        sub = self.vtype(f"element type of {key!r}")
        if sub in _NUMPY:  # numbers: one bulk read
            dt = np.dtype(_NUMPY[sub])
            n = self.count(f"length of {key!r}", dt.itemsize)
            if n * dt.itemsize > MAX_ARRAY_BYTES:
                raise self.corrupt(f"array {key!r} of {n:,} items")
            return sub, np.frombuffer(self.take(n * dt.itemsize, f"array {key!r}"), dtype=dt).tolist()
        if sub == V.STRING:  # (vocabularies: 100k+ items, so the loop works on the window directly)
            n = self.count(f"length of {key!r}", 8)
            out = []
            for _ in range(n):
                self.need(8, f"item of {key!r}")
                (k,) = struct.unpack_from("<Q", self.buf, self.at)
                self.at += 8
                if k > MAX_STRING:
                    raise self.corrupt(f"item of {key!r} of {k:,} bytes")
                self.need(k, f"item of {key!r}")
                out.append(self.buf[self.at:self.at + k].decode("utf-8", errors="replace"))  # (small: a copy is fine)
                self.at += k
            return sub, out
        raise self.corrupt(f"array {key!r} of {sub.name} (nested arrays are not GGUF)")


def read_header(path: str | Path) -> GGUFHeader:
    """Metadata and tensor infos of a GGUF file; EdgekitError on anything malformed or truncated."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if f.read(4) != b"GGUF":
                raise EdgekitError(f"{path}: not a GGUF file")
            r = _Reader(f, size, path)
            r.base = 4
            return _parse(r)
    except OSError as e:
        raise EdgekitError(f"{path}: cannot read ({e.strerror or e})") from None


def _parse(r: _Reader) -> GGUFHeader:
    path = r.path
    version = r.unpack("<I", "version")
    if version not in (2, 3):
        raise EdgekitError(f"{path}: unsupported GGUF version {version}")
    # a tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes; a key/value
    # at least 8 (key length) + 4 (type) + 1 (a one-byte value)
    n_tensors, n_kv = r.count("tensor count", 24), r.count("key/value count", 13)
    fields: dict[str, Field] = {}
    for _ in range(n_kv):
        key = r.string("key")
        if key in fields:
            raise r.corrupt(f"key {key!r} appears twice")
        vtype = r.vtype(f"key {key!r}")
        if vtype == V.ARRAY:
            sub, value = r.array(key)
            fields[key] = Field(vtype, sub, value)
        else:
            fields[key] = Field(vtype, None, r.value(vtype, key))
    raw = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = r.string("tensor name")
        if name in names:
            raise r.corrupt(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = r.unpack("<I", f"dimensions of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.corrupt(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS})")
        dims = [r.unpack("<Q", f"shape of {name!r}") for _ in range(n_dims)]
        raw_type = r.unpack("<I", f"type of {name!r}")
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise r.corrupt(f"unknown tensor type {raw_type} for {name!r}") from None
        raw.append((name, dims, qtype, r.unpack("<Q", f"offset of {name!r}")))
    align = fields["general.alignment"].value if "general.alignment" in fields else 32
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
        raise r.corrupt(f"general.alignment {align!r} (must be a power of two)")
    data_start = -(-r.pos // align) * align
    tensors = []
    for name, dims, qtype, rel in raw:
        shape = tuple(reversed(dims))
        block = GGML_QUANT_SIZES[qtype][0]
        if any(d == 0 for d in dims) or dims[0] % block:
            raise r.corrupt(f"tensor {name!r} has shape {list(shape)}, not whole {qtype.name} blocks of {block}")
        if rel % align:
            raise r.corrupt(f"tensor {name!r} data offset {rel} is not aligned to {align}")
        nbytes = tensor_nbytes(qtype, shape)
        if data_start + rel + nbytes > r.size:
            raise EdgekitError(f"{path}: truncated GGUF (tensor {name!r} runs past the end of the file)")
        tensors.append(TensorInfo(name, shape, qtype, data_start + rel, nbytes))
    return GGUFHeader(path, version, fields, tensors, r.size, data_start)
