"""Matmul kernels (edgekit.native.kernels / libedgekit): every SIMD level against the scalar reference, the
scalar reference against gguf-py's dequantizers + numpy, dispatch, bad input, and the ARM builds
run under qemu-user on four emulated CPUs (plus armhf)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from edgekit.native import kernels as K
from edgekit.native import quantize as qn

REPO = Path(__file__).resolve().parents[1]
TYPES = [QT.F32, QT.F16, QT.Q8_0, QT.Q4_K, QT.Q6_K]
QTYPES = [QT.Q8_0, QT.Q4_K, QT.Q6_K]
NCOLS = {QT.F32: 37, QT.F16: 100, QT.Q8_0: 96, QT.Q4_K: 512, QT.Q6_K: 768}
BLOCK = {QT.Q8_0: 34, QT.Q4_K: 144, QT.Q6_K: 210}
SIMD_LEVELS = [lv for lv in K.available_levels() if lv != "scalar"]


# ---- helpers -----------------------------------------------------------------------------------
def weights(qt: QT, w: np.ndarray) -> np.ndarray:
    """float rows -> raw ggml rows of qt (uint8)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if qt == QT.F32:
        return w.view(np.uint8)
    if qt == QT.F16:
        return np.clip(w, -65504, 65504).astype(np.float16).view(np.uint8)
    return qn.quantize(w, qt)


def raw_blocks(qt: QT, nrows: int, ncols: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for every quant and scale bit, with finite fp16 block scales of both signs."""
    nb = nrows * ncols // (256 if qt != QT.Q8_0 else 32)
    b = rng.integers(0, 256, size=(nb, BLOCK[qt]), dtype=np.uint8)
    scales = (rng.choice([-1, 1], size=(nb, 2)) * rng.uniform(2.0**-8, 4.0, size=(nb, 2))).astype(np.float16)
    if qt == QT.Q8_0:
        b[:, 0:2] = scales[:, :1].view(np.uint8)
    elif qt == QT.Q4_K:
        b[:, 0:4] = scales.view(np.uint8)
    else:
        b[:, 208:210] = scales[:, :1].view(np.uint8)
    return b.reshape(nrows, -1)


def deq_weights(qt: QT, wb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if qt == QT.F32:
        return wb.view(np.float32).reshape(shape).astype(np.float64)
    if qt == QT.F16:
        return wb.view(np.float16).reshape(shape).astype(np.float64)
    return dequantize(wb, qt).reshape(shape).astype(np.float64)


def q8k_fields(xq: np.ndarray, ncols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q8_K rows -> d (float32), qs (int8) and bsums (int16), per block."""
    b = xq.reshape(-1, 292)
    return b[:, :4].copy().view(np.float32)[:, 0], b[:, 4:260].view(np.int8), b[:, 260:].copy().view(np.int16)


def deq_activations(qt: QT, x: np.ndarray) -> np.ndarray:
    """What the kernels actually multiply: the activations after their quantization."""
    vt = K.vec_type(qt)
    if vt == QT.F32:
        return x.astype(np.float64)
    xq = K.quantize_activations(x, qt)
    if vt == QT.Q8_0:
        return dequantize(xq, QT.Q8_0).reshape(x.shape).astype(np.float64)
    d, qs, _ = q8k_fields(xq, x.shape[1])
    return (d[:, None].astype(np.float64) * qs).reshape(x.shape)


def q4k_min_part(wb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """|dmin * m| per weight of Q4_K rows: the part the kernels subtract separately (for the error bound)."""
    b = wb.reshape(-1, 144)
    dmin = b[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float64)
    s = b[:, 4:16].astype(np.int64)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return np.abs(np.repeat(dmin[:, None] * m, 32, axis=1)).reshape(shape)


def matmul_at(level: str, wb, qt, shape, x, nthreads: int = 2) -> np.ndarray:
    with K.using_level(level):
        return K.matmul(wb, qt, shape, x, nthreads=nthreads)


FILLS = {
    "gauss": lambda rng, s: rng.standard_normal(s),
    "zeros": lambda rng, s: np.zeros(s),
    "huge": lambda rng, s: rng.standard_normal(s) * 3e4,
    "equal": lambda rng, s: np.full(s, 0.37),
    "negative_equal": lambda rng, s: np.full(s, -2.5),
    "outlier": lambda rng, s: np.where(np.arange(s[-1]) % 97 == 5, 60.0, 0.01 * rng.standard_normal(s)),
    "tiny": lambda rng, s: rng.standard_normal(s) * 1e-6,
}
SHAPES = [(1, 1), (7, 1), (13, 3), (37, 17), (6, 4), (22, 40)]  # (nrows, ntokens): rows not a multiple of threads,
# tiles or packed groups; 40 tokens = two 16-token groups + an 8-token tile
EDGES = [("zeros", "gauss"), ("gauss", "zeros"), ("huge", "huge"), ("equal", "negative_equal"),
         ("outlier", "gauss"), ("gauss", "outlier"), ("tiny", "gauss"), ("negative_equal", "equal")]


def cases(qt: QT):
    """(label, weight bytes, shape, x) for the shapes and edge values above, plus raw random blocks."""
    rng = np.random.default_rng(int(qt) + 7)
    n = NCOLS[qt]
    for nrows, ntok in SHAPES:
        w = rng.standard_normal((nrows, n))
        w[0, :] = 0.5  # a row of all-equal values
        yield f"{nrows}x{n}x{ntok}", weights(qt, w), (nrows, n), rng.standard_normal((ntok, n)).astype(np.float32)
    for wf, xf in EDGES:
        yield (f"w={wf},x={xf}", weights(qt, FILLS[wf](rng, (9, n))), (9, n),
               FILLS[xf](rng, (9, n)).astype(np.float32))  # 9 tokens: full register tiles and a rest
    if qt in QTYPES:
        for ntok in (1, 17):
            yield f"raw blocks x{ntok}", raw_blocks(qt, 11, n, rng), (11, n), rng.standard_normal((ntok, n)).astype(
                np.float32)


def term_bound(qt: QT, wb: np.ndarray, shape, x: np.ndarray) -> np.ndarray:
    """sum_i |w_i x_i| per output (plus Q4_K's separately summed min part): the scale of float rounding."""
    xa = np.abs(deq_activations(qt, x))
    b = xa @ np.abs(deq_weights(qt, wb, shape)).T
    if qt == QT.Q4_K:
        b += xa @ q4k_min_part(wb, shape).T
    return b


# ---- every SIMD level against the scalar reference ------------------------------------------------
@pytest.mark.parametrize("level", SIMD_LEVELS)
@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
def test_level_matches_scalar(level: str, qt: QT) -> None:
    for label, wb, shape, x in cases(qt):
        ref = matmul_at("scalar", wb, qt, shape, x, nthreads=1)
        got = matmul_at(level, wb, qt, shape, x, nthreads=3)
        # Integer dot products are exact; only the order of float sums differs.
        tol = 1e-5 * term_bound(qt, wb, shape, x) + 1e-30
        bad = ~(np.abs(got - ref) <= tol)
        assert not bad.any(), (f"{level} {qt.name} {label}: {bad.sum()} outputs differ, first at "
                               f"{np.argwhere(bad)[0]}: {got[bad][0]} vs scalar {ref[bad][0]}")


def test_x86_levels_present() -> None:
    """On x86 with AVX2 (every CI machine here), the SIMD levels must be built in, not silently absent."""
    if not any(f == "avx2" for f in K.features()):
        pytest.skip("CPU without AVX2")
    assert "avx2" in SIMD_LEVELS
    feats = set(K.features())
    assert ("avxvnni" in SIMD_LEVELS) == ("avxvnni" in feats)
    assert ("avx512vnni" in SIMD_LEVELS) == ({"avx512f", "avx512bw", "avx512vl", "avx512vnni"} <= feats)
    assert K.level() == SIMD_LEVELS[-1]  # the best one is picked by default


@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
def test_thread_count_does_not_change_results(qt: QT) -> None:
    rng = np.random.default_rng(5)
    n = NCOLS[qt]
    wb = weights(qt, rng.standard_normal((37, n)))
    x = rng.standard_normal((17, n)).astype(np.float32)
    outs = [K.matmul(wb, qt, (37, n), x, nthreads=t) for t in (1, 2, 3, 5, 64)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_prequantized_activations_and_gemv_shape() -> None:
    rng = np.random.default_rng(6)
    qt, n = QT.Q4_K, 512
    wb = weights(qt, rng.standard_normal((10, n)))
    x = rng.standard_normal((3, n)).astype(np.float32)
    y = K.matmul(wb, qt, (10, n), x)
    np.testing.assert_array_equal(K.matmul_q(wb, qt, (10, n), K.quantize_activations(x, qt)), y)
    y1 = K.matmul(wb, qt, (10, n), x[1])  # one token as a 1-D vector
    assert y1.shape == (10,)
    np.testing.assert_array_equal(y1, y[1])


def test_thread_pool_is_persistent_and_shared() -> None:
    """Workers are created once and reused; concurrent callers (the pool busy) still get right answers."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    qt, shape = QT.Q8_0, (300, 1024)
    wb = weights(qt, rng.standard_normal(shape))
    xs = [rng.standard_normal((3, 1024)).astype(np.float32) for _ in range(8)]
    want = [K.matmul(wb, qt, shape, x, nthreads=1) for x in xs]
    K.matmul(wb, qt, shape, xs[0], nthreads=4)  # the pool now has its workers
    before = len(os.listdir("/proc/self/task"))
    for _ in range(20):
        K.matmul(wb, qt, shape, xs[0], nthreads=4)
    assert len(os.listdir("/proc/self/task")) == before, "threads created per call"
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: K.matmul(wb, qt, shape, x, nthreads=2), xs * 5))
    for g, w in zip(got, want * 5, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
def test_matches_llama_cpp_ggml(qt: QT) -> None:
    """The same weight bytes through ggml's own CPU kernels (llama-cpp-python's libggml, via ctypes).
    Q8_0/Q4_K/Q6_K quantize activations exactly as ggml does, so only float rounding differs; ggml
    rounds activations to F16 for F16 weights, a looser match there."""
    pytest.importorskip("llama_cpp")
    from edgekit.testing.ggml import Ggml

    g = Ggml()
    rng = np.random.default_rng(12)
    n = {QT.F32: 96, QT.F16: 96}.get(qt, NCOLS[qt])
    for ntok in (1, 7):
        wb = weights(qt, rng.standard_normal((23, n))).reshape(-1)
        x = rng.standard_normal((ntok, n)).astype(np.float32)
        y = np.zeros((ntok, 23), np.float32)
        run, close = g.gemv_graph(qt, wb, 1, wb.nbytes, (23, n), x, y, 2)
        try:
            run()
        finally:
            close()
        ours = K.matmul(wb, qt, (23, n), x)
        tol = (3e-3 if qt == QT.F16 else 1e-5) * term_bound(qt, wb.reshape(23, -1), (23, n), x) + 1e-30
        assert (np.abs(ours - y) <= tol).all(), f"{qt.name} x{ntok}: max diff {np.abs(ours - y).max()}"


def test_runs_tensors_read_from_a_gguf_file(tmp_path) -> None:
    """What a GGUF holds is what the kernels take: rows of raw blocks, in ggml's (ncols, nrows) order."""
    import gguf

    rng = np.random.default_rng(13)
    path = tmp_path / "w.gguf"
    wr = gguf.GGUFWriter(str(path), "llama")
    src = {qt: weights(qt, rng.standard_normal((24, 512))) for qt in QTYPES}
    for qt, wb in src.items():
        wr.add_tensor(f"w.{qt.name}", wb, raw_dtype=qt)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    x = rng.standard_normal((3, 512)).astype(np.float32)
    for t in gguf.GGUFReader(str(path)).tensors:
        ncols, nrows = (int(v) for v in t.shape)
        qt = QT(t.tensor_type)
        y = K.matmul(t.data, qt, (nrows, ncols), x)
        np.testing.assert_array_equal(y, K.matmul(src[qt], qt, (24, 512), x))
        ref = deq_activations(qt, x) @ deq_weights(qt, src[qt], (24, 512)).T
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


# ---- the scalar reference against gguf-py + numpy ---------------------------------------------
@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
def test_scalar_matches_dequantized_matmul(qt: QT) -> None:
    """dequant(W) @ dequant(quantized x) in float64 is what the scalar kernels compute exactly in
    integers; only float32 rounding of scales and block sums remains."""
    for label, wb, shape, x in cases(qt):
        ref = deq_activations(qt, x) @ deq_weights(qt, wb, shape).T
        got = matmul_at("scalar", wb, qt, shape, x)
        tol = 2e-6 * term_bound(qt, wb, shape, x) + 1e-30
        bad = ~(np.abs(got - ref) <= tol)
        assert not bad.any(), f"scalar {qt.name} {label}: {got[bad][:3]} vs numpy {ref[bad][:3]}"


@pytest.mark.parametrize("qt", QTYPES, ids=lambda t: t.name)
def test_end_to_end_error_vs_float_activations(qt: QT) -> None:
    """Against float activations the only extra error is the 8-bit activation rounding: small."""
    rng = np.random.default_rng(8)
    n = NCOLS[qt]
    wb = weights(qt, rng.standard_normal((64, n)))
    x = rng.standard_normal((5, n)).astype(np.float32)
    exact = x.astype(np.float64) @ deq_weights(qt, wb, (64, n)).T
    err = np.sqrt(np.mean((K.matmul(wb, qt, (64, n), x) - exact) ** 2) / np.mean(exact**2))
    assert err < 0.02, f"{qt.name}: relative RMS error {err:.4f} against float activations"


def test_activation_quantizers_match_ggml_formulas() -> None:
    """Q8_0 / Q8_K activations byte for byte against numpy versions of ggml's formulas (round half to even)."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 512)) * np.array([[1.0], [1e-3], [50.0], [0.0]])).astype(np.float32)
    x[1, 17] = -9.0  # the largest magnitude negative: Q8_K maps it to -127, as ggml does

    xq = K.quantize_activations(x, QT.Q8_0).reshape(-1, 34)
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    np.testing.assert_array_equal(xq[:, :2].copy().view(np.float16)[:, 0], d.astype(np.float16))
    np.testing.assert_array_equal(xq[:, 2:].view(np.int8), np.rint(blocks * inv[:, None]).astype(np.int8))

    d8, qs, bsums = q8k_fields(K.quantize_activations(x, QT.Q4_K), 512)
    kb = x.reshape(-1, 256)
    mx = kb[np.arange(len(kb)), np.abs(kb).argmax(axis=1)]
    with np.errstate(divide="ignore"):
        iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
    want = np.minimum(127, np.rint(kb * iscale[:, None])).astype(np.int8)
    np.testing.assert_array_equal(qs, want)
    np.testing.assert_array_equal(bsums, want.reshape(-1, 16, 16).sum(axis=2, dtype=np.int16))
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(d8, np.where(iscale != 0, np.float32(1) / iscale, 0).astype(np.float32))
    assert qs[2].min() == -127 and qs.min() >= -127  # block with the -9.0


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_activation_quantizers_same_bytes_at_every_level(level: str) -> None:
    """Each level compiles its own (vectorized) copy of the activation quantizers: same bytes."""
    rng = np.random.default_rng(10)
    x = np.concatenate([rng.standard_normal((3, 512)) * s for s in (1.0, 1e-30, 1e4)]).astype(np.float32)
    x[4, :256] = 0.0
    x[5, 3] = np.float32(-3e4)  # a tie of largest magnitudes, the negative one first
    x[5, 10] = np.float32(3e4)
    for qt in (QT.Q8_0, QT.Q4_K):
        with K.using_level("scalar"):
            want = K.quantize_activations(x, qt)
        with K.using_level(level):
            np.testing.assert_array_equal(K.quantize_activations(x, qt), want)


# ---- dispatch and bad input ----------------------------------------------------------------------
def _level_in_subprocess(value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEKIT_CPU_LEVEL": value}
    return subprocess.run([sys.executable, "-c", "from edgekit.native import kernels; print(kernels.level())"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_env_var_forces_lower_level() -> None:
    for lv in K.available_levels():
        r = _level_in_subprocess(lv)
        assert r.returncode == 0 and r.stdout.strip() == lv, (lv, r.stdout, r.stderr)
        assert r.stderr == ""


def test_env_var_never_raises_level() -> None:
    foreign = "avx512vnni" if "neon" in K.features() else "i8mm"  # another architecture's level
    r = _level_in_subprocess(foreign)
    assert r.returncode == 0 and "not available" in r.stderr
    assert r.stdout.strip() in K.available_levels()
    r = _level_in_subprocess("warp-drive")
    assert r.returncode == 0 and "not a kernel level" in r.stderr


def test_set_level_rejects_unavailable() -> None:
    missing = [lv for lv in K.LEVELS if lv not in K.available_levels()]
    with pytest.raises(ValueError, match="not available"):
        K.set_level(missing[0])
    with pytest.raises(ValueError, match="unknown kernel level"):
        K.set_level("fast")


def test_bad_input_is_an_error_not_a_crash() -> None:
    w = weights(QT.Q8_0, np.ones((2, 64)))
    x = np.ones((1, 64), np.float32)
    with pytest.raises(ValueError, match="no matmul kernels"):
        K.matmul(w, QT.Q4_0, (2, 64), x)
    with pytest.raises(ValueError, match="take 136 bytes"):
        K.matmul(w[:1], QT.Q8_0, (2, 64), x)
    with pytest.raises(ValueError, match="multiple of its block size"):
        K.matmul(np.zeros(2 * 144, np.uint8), QT.Q4_K, (2, 100), np.ones(100, np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.matmul(w, QT.Q8_0, (2, 64), np.ones((1, 32), np.float32))
    with pytest.raises(ValueError, match="whole rows"):
        K.matmul_q(w, QT.Q8_0, (2, 64), np.zeros(35, np.uint8))
    # the C API itself refuses bad arguments with a message
    c = K._c()
    assert c.ek_matmul(2, w.ctypes.data, 2, 64, x.ctypes.data_as(K._F32_P), 1, x.ctypes.data_as(K._F32_P), 1) < 0
    assert b"no matmul kernels" in c.ek_last_error()
    assert c.ek_matmul(12, None, 2, 256, None, 1, None, 1) < 0


def test_doctor(capsys) -> None:
    from edgekit.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"kernel level:     {K.level()}" in out
    for f in K.features():
        assert f in out
    assert main(["doctor", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["kernels"]["Q4_K"] == {"level": K.impl(QT.Q4_K), "activations": "Q8_K"}


# ---- the C test program: native, and cross-built for ARM under qemu-user -------------------------
def _cmake() -> str:
    local = Path(sys.executable).parent / "cmake"
    return str(local) if local.exists() else (shutil.which("cmake") or "cmake")


def _build_c_test(tmp_path_factory, toolchain: str | None) -> Path:
    build = tmp_path_factory.mktemp(f"native-{toolchain or 'host'}")
    cfg = [_cmake(), "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DEDGEKIT_BUILD_TESTS=ON"]
    if toolchain:
        cfg.append(f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'native' / 'cmake' / toolchain}.cmake")
    for cmd in (cfg, [_cmake(), "--build", str(build), "-j2", "--target", "test_kernels"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return build / "native" / "test_kernels"


def _need_tools(*tools: str) -> None:
    """The ARM builds need the cross toolchain and qemu-user, which .ci/setup installs where it may (root):
    without them these tests skip, and pytest -ra lists the reason (EDGEKIT_REQUIRE_CROSS=1 makes it a
    failure instead, for a CI that must run them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        why = (f"missing {', '.join(missing)} (apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf "
               "qemu-user, as root)")
        if os.environ.get("EDGEKIT_REQUIRE_CROSS") == "1":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def aarch64_test(tmp_path_factory) -> Path:
    _need_tools("aarch64-linux-gnu-gcc", "qemu-aarch64")
    return _build_c_test(tmp_path_factory, "aarch64-linux-gnu")


@pytest.fixture(scope="module")
def armhf_test(tmp_path_factory) -> Path:
    _need_tools("arm-linux-gnueabihf-gcc", "qemu-arm")
    return _build_c_test(tmp_path_factory, "arm-linux-gnueabihf")


def _run_c_test(cmd: list[str], env_level: str | None = None) -> tuple[str, dict[str, str]]:
    env = dict(os.environ)
    env.pop("EDGEKIT_CPU_LEVEL", None)
    if env_level:
        env["EDGEKIT_CPU_LEVEL"] = env_level
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "OK:" in r.stdout, f"{' '.join(cmd)} exit {r.returncode}:\n{r.stdout}\n{r.stderr}"
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    return r.stdout + r.stderr, fields


def test_c_test_native(tmp_path_factory) -> None:
    out, f = _run_c_test([str(_build_c_test(tmp_path_factory, None))])
    assert f["level"] == K.level()
    assert f["testing"].split(" (")[0].split() == SIMD_LEVELS


# cortex-a53 / a72 (Pi 3 / Pi 4): armv8.0, no sdot; a76 (Pi 5): dotprod; max: dotprod + i8mm.
@pytest.mark.parametrize("cpu,level", [("cortex-a53", "neon"), ("cortex-a72", "neon"), ("cortex-a76", "dotprod"),
                                       ("max", "i8mm")])
@pytest.mark.slow
def test_aarch64_under_qemu(aarch64_test: Path, cpu: str, level: str) -> None:
    out, f = _run_c_test(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu", cpu, str(aarch64_test)])
    assert f["level"] == level, out
    assert f["kernel Q4_K"] == level and f["kernel F32"] == "neon"
    assert ("dotprod" in f["features"].split()) == (level != "neon")
    tested = f["testing"].split(" (")[0].split()
    assert tested == ["neon", "dotprod", "i8mm"][: tested.index(level) + 1]


@pytest.mark.slow
def test_aarch64_env_var_under_qemu(aarch64_test: Path) -> None:
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu"]
    out, f = _run_c_test([*qemu, "max", str(aarch64_test)], env_level="neon")
    assert f["level"] == "neon"
    out, f = _run_c_test([*qemu, "cortex-a72", str(aarch64_test)], env_level="i8mm")
    assert f["level"] == "neon" and "not available" in out  # clamped down, never up: sdot would SIGILL here


@pytest.mark.slow
def test_armhf_under_qemu(armhf_test: Path) -> None:
    out, f = _run_c_test(["qemu-arm", "-L", "/usr/arm-linux-gnueabihf", str(armhf_test)])
    assert f["level"] == "neon", out
    assert f["kernel Q6_K"] == "neon"
