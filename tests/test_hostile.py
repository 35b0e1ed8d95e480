"""Hostile files: GGUF and safetensors headers mutated at random for a bounded time, and config.json /
tokenizer.json with values of the wrong type. The only acceptable outcome is a clean EdgekitError (or a
file that still parses): no other exception, no unbounded memory.

EDGEKIT_FUZZ_SECONDS sets the time per format (default 15). Each run prints how many inputs it tried."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from edgekit import GGUFConfig, convert
from edgekit.errors import EdgekitError
from edgekit.io.checkpoint import open_checkpoint
from edgekit.io.gguf_reader import MAX_STRING, WINDOW, read_header

SECONDS = float(os.environ.get("EDGEKIT_FUZZ_SECONDS", "15"))
EXTREMES = [0, 1, 2, 7, 31, 33, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def _mutate(rng: random.Random, data: bytes, header_len: int) -> bytes:
    """One of: flipped bytes, an extreme u32/u64 written over a header position, a cut, a duplicated or
    deleted run of bytes (all within the header, where the parser looks)."""
    b = bytearray(data)
    kind = rng.randrange(5)
    at = rng.randrange(max(header_len, 1))
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(header_len)] ^= 1 << rng.randrange(8)
    elif kind == 1:
        fmt = rng.choice(["<Q", "<I"])
        v = rng.choice(EXTREMES) % (1 << (8 * struct.calcsize(fmt)))
        b[at:at + struct.calcsize(fmt)] = struct.pack(fmt, v)
    elif kind == 2:
        del b[rng.randrange(header_len):]
    elif kind == 3:
        n = rng.randint(1, 64)
        b[at:at] = b[at:at + n]
    else:
        del b[at:at + rng.randint(1, 64)]
    return bytes(b)


def _fuzz(rng: random.Random, seeds: list[tuple[bytes, int]], path: Path, parse) -> tuple[int, int, int]:
    """(inputs tried, clean refusals, still valid) within SECONDS; any other exception fails the test."""
    tried = refused = valid = 0
    end = time.perf_counter() + SECONDS
    while time.perf_counter() < end:
        data, header_len = rng.choice(seeds)
        mutated = _mutate(rng, data, header_len)
        path.write_bytes(mutated)
        tried += 1
        try:
            parse(path)
            valid += 1
        except EdgekitError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)
            refused += 1
        except Exception as e:  # noqa: BLE001 -- the failure this test exists to find
            keep = path.with_name(f"crash-{tried}{path.suffix}")
            shutil.copy(path, keep)
            raise AssertionError(f"{type(e).__name__}: {e} (input kept as {keep})") from e
    return tried, refused, valid


@pytest.fixture(scope="module")
def ggufs(tiny_models, tmp_path_factory) -> list[Path]:
    """Real files: byte-level BPE and SentencePiece vocabularies, float and K-quant tensors, tied embeddings."""
    root = tmp_path_factory.mktemp("hostile")
    out = []
    for arch, quant in (("llama", "f32"), ("qwen2", "q4_k_m"), ("mistral", "q8_0")):
        out.append(root / f"{arch}-{quant}.gguf")
        convert(tiny_models[arch], out[-1], GGUFConfig(quant=quant), progress=False)
    return out


@pytest.mark.slow
def test_gguf_header_fuzz(ggufs, tmp_path):
    seeds = [(p.read_bytes(), read_header(p).data_start) for p in ggufs]
    tried, refused, valid = _fuzz(random.Random(1), seeds, tmp_path / "m.gguf", read_header)
    print(f"\nGGUF header fuzz: {tried} inputs in {SECONDS:.0f} s, {refused} refused in one line, {valid} still "
          "valid, 0 crashes")
    assert tried > 200 and refused > tried // 4


def test_gguf_claims_cannot_make_the_reader_swallow_the_file(ggufs, tmp_path):
    """Counts and lengths that claim most of a 1 GiB file (sparse: no disk used): refused with a bounded
    read and allocation, far below the file's size."""
    real = ggufs[0].read_bytes()
    header = read_header(ggufs[0])
    key = b"general.architecture"
    at = real.index(struct.pack("<Q", len(key)) + key)
    cases = {"tensor count": (8, struct.pack("<Q", 2**40)), "key/value count": (16, struct.pack("<Q", 2**40)),
             "key length": (at, struct.pack("<Q", 900 << 20)), "string length": (at + 8 + len(key) + 4,
                                                                              struct.pack("<Q", 15 << 20))}
    for what, (offset, value) in cases.items():
        path = tmp_path / f"{what.replace(' ', '_').replace('/', '_')}.gguf"
        with open(path, "wb") as f:
            f.write(real[:offset] + value + real[offset + len(value):header.data_start])
            f.truncate(1 << 30)
        tracemalloc.start()
        try:
            with pytest.raises(EdgekitError):
                read_header(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # bounded by the reader's caps (a window, a value of at most MAX_STRING and its decoded copies), not
        # by the file: a 1 GiB file here, a 10 GiB one just the same
        assert peak < 4 * MAX_STRING + 4 * WINDOW, f"{what}: {peak / 2**20:.0f} MiB allocated for a 1 GiB file"


@pytest.mark.slow
def test_safetensors_header_fuzz(tiny_models, tmp_path):
    src = tiny_models["llama"] / "model.safetensors"
    data = src.read_bytes()
    header_len = 8 + struct.unpack("<Q", data[:8])[0]
    shutil.copy(tiny_models["llama"] / "config.json", tmp_path / "config.json")

    def parse(path: Path) -> None:
        ckpt = open_checkpoint(path.parent)
        for name in list(ckpt.tensors)[:3]:
            ckpt.read(name)

    tried, refused, valid = _fuzz(random.Random(2), [(data, header_len)], tmp_path / "model.safetensors", parse)
    print(f"\nsafetensors header fuzz: {tried} inputs in {SECONDS:.0f} s, {refused} refused in one line, {valid} "
          "still valid, 0 crashes")
    assert tried > 100 and refused > tried // 4


WRONG = [None, "x", -3, 0, 1.5, 1e300, True, [], [1], {}, {"a": 1}]


@pytest.mark.slow
def test_config_and_tokenizer_json_with_wrong_types(tiny_models, tmp_path):
    """Every top-level value of config.json, and the vocabulary, merges, added tokens and pre-tokenizer of
    tokenizer.json, replaced by values of every wrong type: converting gives a GGUF or one clean line."""
    src = tiny_models["qwen2"]
    config = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    edits: list[tuple[str, object]] = [("config.json", (k, v)) for k in config for v in WRONG]
    for path in (("model", "vocab"), ("model", "merges"), ("added_tokens",), ("pre_tokenizer",), ("model",),
                 ("normalizer",), ("decoder",), ("post_processor",)):
        edits += [("tokenizer.json", (path, v)) for v in WRONG]
    outcomes = {"converted": 0, "refused": 0}
    for i, (file, (key, value)) in enumerate(edits):
        d = tmp_path / f"m{i}"
        shutil.copytree(src, d)
        if file == "config.json":
            (d / file).write_text(json.dumps({**config, key: value}))
        else:
            t = json.loads(json.dumps(tok))
            node = t
            for k in key[:-1]:
                node = node[k]
            node[key[-1]] = value
            (d / file).write_text(json.dumps(t))
        out = d / "m.gguf"
        try:
            convert(d, out, GGUFConfig(quant="f32"), progress=False)
            outcomes["converted"] += 1
        except EdgekitError as e:
            assert "\n" not in str(e) and not out.exists(), (file, key, value, str(e))
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"{file} {key}={value!r}: {type(e).__name__}: {e}") from e
        shutil.rmtree(d)
    print(f"\nwrong-typed JSON: {len(edits)} files, {outcomes}")
    assert outcomes["refused"] > len(edits) // 2
