"""The native runtime's model side (libedgekit: ek_model_load, ek_decode; edgekit.native.runtime): logits of
tiny random models of every architecture and tensor type against llama.cpp on the same token ids, the
session's invariants (prefill = decode, threads, KV types, rewinding), the loader's refusals of damaged
files, the BF16/Q5_0/Q5_1 kernels against ggml's, and a sanitizer-built fuzz run of the loader."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from edgekit.errors import EdgekitError
from edgekit.native import kernels as K
from edgekit.native import runtime as rt

REPO = Path(__file__).resolve().parents[1]
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3"]
TOKENS = [int(t) for t in np.random.default_rng(0).integers(0, 500, 24)]


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from conftest import llama_logits as ref

    return ref(path, tokens)


def native_logits(path: Path, tokens: list[int], **session) -> np.ndarray:
    with rt.Model(path) as m, m.session(**{"n_ctx": 64, "kv_f32": True, "threads": 2, **session}) as s:
        return s.decode(tokens, 0, logits_all=True)


def rel_err(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row: the largest logit difference relative to the row's largest logit."""
    return np.abs(got - ref).max(axis=-1) / np.abs(ref).max(axis=-1)


@pytest.fixture(scope="module")
def f32_models(tmp_path_factory) -> dict[str, Path]:
    """F32 GGUFs of tiny (hidden 64, 2 layers) random models of every architecture."""
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    from edgekit.testing.models import build_tiny_model

    root = tmp_path_factory.mktemp("native_f32")
    out = {}
    for a in ARCHS:
        hf = build_tiny_model(root / a, a, hidden=64, ffn=128, heads=4, kv_heads=2)
        out[a] = root / f"{a}.gguf"
        write_gguf(hf, out[a], GGUFConfig(quant="f32"), progress=False)
    return out


QUANTS = ["f16", "bf16", "q8_0", "q6_k", "q4_k_m", "q5_0", "q5_1"]


@pytest.fixture(scope="module")
def quant_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with hidden 256 (K-quant rows) in every tensor type: edgekit's converter writes the
    F16/BF16/Q8_0/Q6_K/Q4_K_M files, llama.cpp's own quantizer the Q5_0/Q5_1 ones."""
    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    from edgekit.runtime.backends.llamacpp import quantize as llama_quantize
    from edgekit.testing.models import build_tiny_model

    root = tmp_path_factory.mktemp("native_quant")
    hf = build_tiny_model(root / "hf", "llama", hidden=256, ffn=512, heads=4, kv_heads=2)
    out = {"f32": root / "f32.gguf"}
    write_gguf(hf, out["f32"], GGUFConfig(quant="f32"), progress=False)
    for q in QUANTS:
        out[q] = root / f"{q}.gguf"
        if q in ("q5_0", "q5_1"):
            llama_quantize(out["f32"], out[q], q)
        else:
            write_gguf(hf, out[q], GGUFConfig(quant=q), progress=False)
    return out


# ---- logits against llama.cpp ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_f32_logits_match_llama_cpp(f32_models, arch: str) -> None:
    """Same weights, same math (F32 KV cache on both sides): only float summation order differs."""
    pytest.importorskip("llama_cpp")
    err = rel_err(native_logits(f32_models[arch], TOKENS), llama_logits(f32_models[arch], TOKENS))
    assert err.max() < 1e-4, f"{arch}: max relative logit error {err.max():.2e}"


# Tolerances from the kernels' arithmetic. Q8_0/Q5_x/K-quants: both sides quantize activations to the same
# Q8 blocks and sum exact integers, so a row agrees to float rounding (1e-5) -- unless a float-rounding
# difference upstream moves one activation across a quantization rounding boundary: that changes it by one
# step (1/127 of its block's max) and the difference then cascades through later layers' quantizations.
# So: the typical (median) row within 1e-5, every row within 5e-2. F16: llama.cpp rounds activations to F16
# (2^-11 relative) where we keep float32; BF16: both round to bf16, but the sum order over 8-bit mantissas
# differs more; both within a few 1e-3.
FLOAT_TOL = {"f16": 5e-3, "bf16": 1e-2}


@pytest.mark.parametrize("quant", QUANTS)
def test_quantized_logits_match_llama_cpp(quant_models, quant: str) -> None:
    path = quant_models[quant]
    ref = llama_logits(path, TOKENS)
    err = rel_err(native_logits(path, TOKENS), ref)
    if quant in FLOAT_TOL:
        assert err.max() < FLOAT_TOL[quant], f"{quant}: max relative logit error {err.max():.2e}"
    else:
        assert np.median(err) < 1e-5 and err.max() < 5e-2, f"{quant}: errors {np.round(err, 7)}"


def greedy(path: Path, prompt: list[int], steps: int) -> list[int]:
    with rt.Model(path) as m, m.session(n_ctx=64, kv_f32=True, threads=2) as s:
        seq = list(prompt)
        logits = s.decode(prompt, 0)
        for _ in range(steps):
            seq.append(int(logits.argmax()))
            logits = s.decode([seq[-1]])
    return seq


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3"])
def test_greedy_sequence_matches_llama_cpp(f32_models, arch: str) -> None:
    """32 greedy steps of ours (prefill, then one-token decodes); llama.cpp, run over the whole sequence,
    must pick the same token at every step."""
    pytest.importorskip("llama_cpp")
    seq = greedy(f32_models[arch], TOKENS[:8], 32)
    ref = llama_logits(f32_models[arch], seq).argmax(axis=1)
    assert list(ref[7:-1]) == seq[8:]


# ---- session invariants ---------------------------------------------------------------------------
def test_prefill_then_decode_equals_one_batch(quant_models) -> None:
    """Batched GEMM prefill, batches split by n_batch, and one-token GEMV decodes give the same logits."""
    path = quant_models["q8_0"]
    whole = native_logits(path, TOKENS)
    split = native_logits(path, TOKENS, n_batch=5)
    with rt.Model(path) as m, m.session(n_ctx=64, kv_f32=True, threads=2) as s:
        first = s.decode(TOKENS[:10], 0, logits_all=True)
        steps = [s.decode([t]) for t in TOKENS[10:]]
        assert s.n_past == len(TOKENS)
    stepped = np.concatenate([first, np.stack(steps)])
    for other in (split, stepped):
        err = rel_err(other, whole)
        assert np.median(err) < 1e-5 and err.max() < 5e-2, np.round(err, 7)


def test_threads_do_not_change_results(quant_models) -> None:
    path = quant_models["q4_k_m"]
    one = native_logits(path, TOKENS, threads_batch=1)
    with rt.Model(path) as m:
        for th in (1, 2):
            with m.session(n_ctx=64, kv_f32=True, threads=th, threads_batch=th) as s:
                np.testing.assert_array_equal(s.decode(TOKENS, 0, logits_all=True), one)


def test_kv_f16_close_to_f32(f32_models) -> None:
    """An F16 cache rounds K and V to 11 bits: logits move by ~1e-3, the argmax stays."""
    path = f32_models["qwen2"]
    f32 = native_logits(path, TOKENS)
    with rt.Model(path) as m, m.session(n_ctx=64, threads=2) as s:
        f16 = s.decode(TOKENS, 0, logits_all=True)
    err = rel_err(f16, f32)
    assert 0 < err.max() < 1e-2
    assert (f16.argmax(1) == f32.argmax(1)).mean() >= 0.9


def test_decode_at_an_earlier_position_forgets_the_rest(f32_models) -> None:
    path = f32_models["llama"]
    other = [5, 6, 7, 8]
    with rt.Model(path) as m, m.session(n_ctx=64, kv_f32=True) as s:
        s.decode(TOKENS, 0)
        rewound = s.decode(other, 6, logits_all=True)
        assert s.n_past == 10
    fresh = native_logits(path, TOKENS[:6] + other)[6:]
    np.testing.assert_allclose(rewound, fresh, rtol=0, atol=1e-5 * np.abs(fresh).max())


def test_info_meta_stats_and_bad_calls(f32_models) -> None:
    import gguf

    path = f32_models["qwen3"]
    reader = gguf.GGUFReader(path)
    hdr = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    with rt.Model(path) as m:
        i = m.info
        assert (i.arch, i.n_embd, i.n_layer, i.n_head, i.n_head_kv, i.n_ff, i.n_ctx_train) == (
            "qwen3", hdr["qwen3.embedding_length"], hdr["qwen3.block_count"], hdr["qwen3.attention.head_count"],
            hdr["qwen3.attention.head_count_kv"], hdr["qwen3.feed_forward_length"], hdr["qwen3.context_length"])
        assert i.n_params == sum(int(t.n_elements) for t in reader.tensors)
        assert i.file_bytes == path.stat().st_size and i.n_vocab == 512
        assert m.meta("general.architecture") == "qwen3"
        assert m.meta("qwen3.block_count") == "2"
        assert m.meta("tokenizer.ggml.tokens") == "[512 items]"
        assert m.meta("no.such.key") is None
        with m.session(n_ctx=16, threads=1) as s:
            s.decode(TOKENS[:4])
            s.decode(TOKENS[4:5])
            st = s.stats()
            assert st["n_prefill"] == 4 and st["n_decode"] == 1 and st["load_ms"] > 0
            assert st["prefill_ms"] > 0 and st["decode_ms"] > 0 and st["peak_rss_bytes"] > 1 << 20
            with pytest.raises(rt.ContextFull):
                s.decode(list(range(12)))
            with pytest.raises(EdgekitError, match="outside the vocabulary"):
                s.decode([512])
            with pytest.raises(EdgekitError, match="outside 0..5"):
                s.decode([1], pos=6)
            assert s.n_past == 5  # refused calls leave the session as it was
            s.abort()  # an abort asked before a call stops it at its first batch
            with pytest.raises(rt.Aborted):
                s.decode([1, 2])
            assert s.n_past == 5
            s.decode([1, 2])  # and the flag is cleared
            assert s.n_past == 7


# ---- the loader refuses damaged files ----------------------------------------------------------------
def _fields(path: Path) -> dict[str, int]:
    """Byte offsets of a few header fields of a real file (from gguf-py's reader)."""
    import gguf

    r = gguf.GGUFReader(path)
    last = r.tensors[-1].field
    name_len = int(last.parts[0][0])
    n_dims = int(last.parts[2][0])
    type_at = last.offset + 8 + name_len + 4 + 8 * n_dims
    return {"first_key_len": 24, "tensor_type": type_at, "tensor_offset": type_at + 4, "data": r.data_offset,
            "last_dim": type_at - 8}


def _damaged(src: bytes, where: int, value: bytes) -> bytes:
    return src[:where] + value + src[where + len(value):]


def test_loader_refuses_damaged_files(f32_models, tmp_path) -> None:
    src_path = f32_models["llama"]
    src = src_path.read_bytes()
    f = _fields(src_path)
    cases = {
        "magic": (_damaged(src, 0, b"GGUX"), "format error", "not a GGUF"),
        "version 2": (_damaged(src, 4, struct.pack("<I", 2)), "unsupported", "version 2"),
        "version 99": (_damaged(src, 4, struct.pack("<I", 99)), "format error", "version 99"),
        "tensor count": (_damaged(src, 8, struct.pack("<Q", 1 << 62)), "format error",
                         "tensor count 4611686018427387904 is absurd"),
        "kv count": (_damaged(src, 16, struct.pack("<Q", 1 << 40)), "format error",
                     "metadata count 1099511627776 is absurd"),
        "key length": (_damaged(src, f["first_key_len"], struct.pack("<Q", 1 << 40)), "format error", "length"),
        "misaligned offset": (_damaged(src, f["tensor_offset"], struct.pack("<Q", 4)), "format error",
                              "not a multiple of the alignment"),
        "extent past EOF": (_damaged(src, f["tensor_offset"], struct.pack("<Q", 1 << 40)), "format error",
                            "past the end of the file"),
        "huge dimension": (_damaged(src, f["last_dim"], struct.pack("<Q", 1 << 62)), "format error", "past the end"),
        "unknown type": (_damaged(src, f["tensor_type"], struct.pack("<I", 99)), "unsupported", "ggml type 99"),
        "Q4_0 type": (_damaged(src, f["tensor_type"], struct.pack("<I", 2)), "unsupported", "ggml type 2"),
    }
    # truncations: inside the fixed header, in the metadata, in the tensor infos, in the data, one byte short
    for cut in (0, 3, 4, 12, 23, 24, 100, f["data"] // 2, f["tensor_type"], f["data"] - 1, f["data"] + 10,
                len(src) - 1):
        cases[f"cut at {cut}"] = (src[:cut], "format error", ("truncated", "past the end of the file"))
    for label, (data, status, text) in cases.items():
        p = tmp_path / "bad.gguf"
        p.write_bytes(data)
        with pytest.raises(EdgekitError) as e:
            rt.Model(p)
        msg = str(e.value)
        said = any(t in msg for t in ((text,) if isinstance(text, str) else text))
        assert e.value.status == status and str(p) in msg and said and "\n" not in msg, (label, msg)
    with pytest.raises(EdgekitError, match="cannot open") as e:
        rt.Model(tmp_path / "missing.gguf")
    assert e.value.status == "i/o error"


def test_loader_refuses_files_it_cannot_run(f32_models, tmp_path) -> None:
    """Valid GGUF containers with the wrong content: another architecture, a missing tensor, a wrong shape."""
    import gguf

    def write(name: str, arch: str, tensors: dict[str, np.ndarray], **kv: int) -> Path:
        p = tmp_path / f"{name}.gguf"
        w = gguf.GGUFWriter(str(p), arch)
        for k, v in kv.items():
            w.add_uint32(f"{arch}.{k}", v)
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        for n, t in tensors.items():
            w.add_tensor(n, t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return p

    hp = dict(context_length=64, embedding_length=32, block_count=1, feed_forward_length=64,
              **{"attention.head_count": 4})
    emb = np.zeros((100, 32), np.float32)
    cases = [
        (write("gpt2", "gpt2", {"token_embd.weight": emb}, **hp), "unsupported", "architecture gpt2"),
        (write("nohp", "llama", {"token_embd.weight": emb}), "format error", "llama.context_length is missing"),
        (write("missing", "llama", {"token_embd.weight": emb}, **hp), "format error", "is missing"),
        (write("shape", "llama", {"token_embd.weight": np.zeros((100, 16), np.float32)}, **hp), "format error",
         "token_embd.weight"),
    ]
    for p, status, text in cases:
        with pytest.raises(EdgekitError) as e:
            rt.Model(p)
        assert e.value.status == status and text in str(e.value) and str(p) in str(e.value), str(e.value)


# ---- BF16 / Q5_0 / Q5_1 kernels ----------------------------------------------------------------------
NEW_TYPES = [QT.BF16, QT.Q5_0, QT.Q5_1]


def _weights(qt: QT, w: np.ndarray) -> np.ndarray:
    from gguf.quants import quantize

    return np.ascontiguousarray(quantize(w.astype(np.float32), qt)).view(np.uint8).reshape(w.shape[0], -1)


@pytest.mark.parametrize("qt", NEW_TYPES, ids=lambda t: t.name)
def test_new_kernels_match_ggml_and_every_level(qt: QT) -> None:
    """Against ggml's own CPU matmul (llama-cpp-python's libggml) on the same bytes, and every SIMD level
    against the scalar reference: the activations are quantized as ggml does (Q8_0 for Q5_0, Q8_1 for Q5_1,
    BF16 for BF16) and integer sums are exact, so only float rounding differs."""
    from gguf.quants import dequantize

    pytest.importorskip("llama_cpp")
    from edgekit.testing.ggml import Ggml

    g, rng = Ggml(), np.random.default_rng(int(qt))
    # 17 and 40 tokens: packed GEMM groups plus a rest; 2080 values: more blocks than one widened piece (64)
    for nrows, ncols, ntok in ((23, 96, 1), (23, 96, 7), (5, 544, 3), (9, 2080, 17), (6, 96, 40)):
        w = rng.standard_normal((nrows, ncols))
        w[0] = 0.5
        wb = _weights(qt, w)
        x = rng.standard_normal((ntok, ncols)).astype(np.float32)
        bound = np.abs(x) @ np.abs(dequantize(wb, qt).reshape(nrows, ncols)).T.astype(np.float64) + 1e-30
        y = np.zeros((ntok, nrows), np.float32)
        run, close = g.gemv_graph(qt, wb.reshape(-1), 1, wb.nbytes, (nrows, ncols), x, y, 2)
        try:
            run()
        finally:
            close()
        with K.using_level("scalar"):
            ref = K.matmul(wb, qt, (nrows, ncols), x, nthreads=1)
        assert (np.abs(ref - y) <= 2e-5 * bound).all(), f"{qt.name} vs ggml: {np.abs(ref - y).max()}"
        for level in K.available_levels():
            with K.using_level(level):
                got = K.matmul(wb, qt, (nrows, ncols), x, nthreads=3)
            assert (np.abs(got - ref) <= 1e-5 * bound).all(), f"{qt.name} at {level}"


# ---- the shared library's exports and a sanitizer fuzz run of the loader -----------------------------
def declared_functions(header: Path) -> set[str]:
    """The ek_* functions a C header declares (comments stripped first)."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", header.read_text(), flags=re.S)
    return set(re.findall(r"\b(ek_\w+)\s*\(", text))


def test_only_the_public_api_is_exported() -> None:
    """The shared library exports exactly the functions declared in native/include (edgekit.h's API and
    edgekit_test.h's test-only entry points): no internal ek_gguf_*, ek_parallel, ek_kernels_* or libc helper
    leaks into an app's symbol space, and no declared function is missing from native/edgekit.map."""
    nm = shutil.which("nm")
    if nm is None or not Path(rt.lib()._name).name.endswith(".so"):
        pytest.skip("needs nm and an ELF shared library")
    out = subprocess.run([nm, "-D", "--defined-only", rt.lib()._name], capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    declared = set().union(*(declared_functions(h) for h in (REPO / "native" / "include").glob("*.h")))
    assert exported, out
    assert not exported - declared, f"exported but not declared in native/include: {sorted(exported - declared)}"
    assert not declared - exported, f"declared but not exported (native/edgekit.map): {sorted(declared - exported)}"


@pytest.mark.slow
def test_fuzz_loader_under_sanitizers(f32_models, quant_models, tmp_path) -> None:
    """native/tests/fuzz_gguf.c, built with ASan + UBSan (no recovery), mutates real GGUF headers for ~20 s
    and loads every result (and runs two tokens through any that still load): zero sanitizer reports."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler")
    src = REPO / "native" / "src"
    # the library's portable sources (no SIMD files: the fuzzer exercises the loader, not the kernels)
    lib_sources = sorted(p.name for p in src.glob("*.c"))
    exe = tmp_path / "fuzz_gguf"
    build = subprocess.run([gcc, "-std=c11", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                            "-fno-omit-frame-pointer", "-D_GNU_SOURCE", f"-I{REPO / 'native' / 'include'}", f"-I{src}",
                            str(REPO / "native" / "tests" / "fuzz_gguf.c"), *[str(src / s) for s in lib_sources],
                            "-o", str(exe), "-lpthread", "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    import gguf

    seeds = [f"{p}:{gguf.GGUFReader(p).data_offset}" for p in (f32_models["phi3"], f32_models["qwen2"],
                                                                quant_models["q4_k_m"])]
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    run = subprocess.run([str(exe), "20", str(tmp_path / "work.gguf"), *seeds], capture_output=True, text=True,
                         env=env, timeout=120)
    print(run.stdout.strip())
    assert run.returncode == 0 and "runtime error" not in run.stderr and "Sanitizer" not in run.stderr, \
        run.stderr[-3000:]
    tried, refused, loaded = (int(v) for v in run.stdout.split()[1:6:2])
    assert tried > 1000 and refused > 0 and loaded > 0


def test_abort_from_another_thread(quant_models) -> None:
    """ek_abort from another thread stops a long decode between batches; the cache keeps what finished and
    the session goes on from there as if nothing happened."""
    import threading
    import time

    path = quant_models["q8_0"]
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, 500, 3000)]
    with rt.Model(path) as m, m.session(n_ctx=4096, kv_f32=True, threads=1, n_batch=1) as s:
        result: dict[str, object] = {}

        def run() -> None:
            try:
                s.decode(tokens, 0)
                result["done"] = True
            except rt.Aborted as e:
                result["aborted"] = e

        th = threading.Thread(target=run)
        th.start()
        deadline = time.monotonic() + 30
        while s.n_past < 4 and time.monotonic() < deadline:  # abort once the decode is surely under way
            time.sleep(0.0005)
        s.abort()
        th.join(timeout=60)
        assert "aborted" in result and "aborted" in str(result["aborted"]), result
        kept = s.n_past
        assert 0 < kept < len(tokens)
        went_on = s.decode(tokens[kept:kept + 3], kept)
        with m.session(n_ctx=4096, kv_f32=True, threads=1, n_batch=1) as fresh:  # the same path, not aborted
            fresh.decode(tokens[:kept], 0)
            np.testing.assert_array_equal(went_on, fresh.decode(tokens[kept:kept + 3], kept))
