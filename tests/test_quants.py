"""The C quantizers (edgekit.native.quantize) against their numpy twin, gguf-py and llama.cpp.

Byte identity is the contract: files we write must be the files llama.cpp would write.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from edgekit.native import quantize as qn
from edgekit.testing import quants_ref

K_TYPES = [QT.Q4_K, QT.Q6_K]
ALL_TYPES = [QT.Q8_0, QT.Q4_K, QT.Q6_K]
Q5_TYPES = [QT.Q5_0, QT.Q5_1]  # llama.cpp's fallbacks for rows that are not whole super-blocks
BLOCK_BYTES = {QT.Q8_0: 34, QT.Q4_K: 144, QT.Q6_K: 210, QT.Q5_0: 22, QT.Q5_1: 24}


def twin(x: np.ndarray, qtype: QT, imatrix: np.ndarray | None = None) -> np.ndarray:
    if qtype == QT.Q8_0:
        return quants_ref.quantize_q8_0(x)
    if qtype == QT.Q4_K:
        return quants_ref.quantize_q4_k(x, imatrix)
    return quants_ref.quantize_q6_k(x, imatrix)


def assert_same_bytes(ours: np.ndarray, ref: np.ndarray, qtype: QT, what: str = "") -> None:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    if not np.array_equal(ours, ref):
        bad = np.flatnonzero((ours.reshape(-1, BLOCK_BYTES[qtype]) != ref.reshape(-1, BLOCK_BYTES[qtype])).any(1))
        pytest.fail(
            f"{what} {qtype.name}: {bad.size} of {ours.size // BLOCK_BYTES[qtype]} blocks differ "
            f"(first: block {bad[0]})"
        )


def _cases() -> dict[str, np.ndarray]:
    """Rows of 512 (two super-blocks) covering the paths where rounding details show."""
    rng = np.random.default_rng(1234)
    n = 512
    outlier = rng.standard_normal((3, n)) * 0.01
    outlier[:, 77] = 50.0
    outlier[1, 300] = -80.0
    mixed = rng.standard_normal((5, n))
    mixed[1] = 0.0  # an all-zero row
    mixed[3, :256] = 0.0  # an all-zero super-block next to a normal one
    cases = {
        "normal": rng.standard_normal((7, n)),  # odd row count
        "mixed": mixed,
        "zeros": np.zeros((3, n)),
        "constant": np.full((2, n), 0.37),
        "negative_constant": np.full((2, n), -2.5),
        "tiny": rng.standard_normal((3, n)) * 1e-20,  # fp16 scales underflow to 0
        "small": rng.standard_normal((3, n)) * 1e-6,
        "huge": rng.standard_normal((3, n)) * 3e4,
        "outlier": outlier,
        "positive": np.abs(rng.standard_normal((3, n))) + 1.0,
        "sparse": rng.standard_normal((3, n)) * (rng.random((3, n)) < 0.05),
        "half_ties": (rng.integers(-20, 20, (3, n)) + 0.5) / 8,  # exact .5 products hit ties
        "laplace": rng.laplace(size=(5, n)),
        "row_scales": rng.standard_normal((6, n)) * np.exp(rng.normal(0, 3, (6, 1))),
    }
    return {k: v.astype(np.float32) for k, v in cases.items()}


CASES = _cases()


def _imatrices(n: int) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(99)
    return {
        "none": None,
        "random": np.exp(rng.normal(0, 1.5, n)).astype(np.float32),
        "heavy": np.where(rng.random(n) < 0.03, 1000.0, 0.01).astype(np.float32),
        "zeros": np.zeros(n, np.float32),  # every weight 0: the searches' degenerate branches
    }


# ----------------------------------------------------------------------------- (a) C == numpy twin


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", list(CASES))
def test_c_matches_numpy_twin(case: str, qtype: QT) -> None:
    x = CASES[case]
    for im_name, im in _imatrices(x.shape[1]).items():
        if qtype == QT.Q8_0 and im is not None:
            continue
        assert_same_bytes(qn.quantize(x, qtype, im), twin(x, qtype, im), qtype, f"{case}/imatrix={im_name}")


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_c_matches_twin_on_larger_matrix(qtype: QT) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((33, 1024)) * np.exp(rng.normal(0, 1, (1, 1024)))).astype(np.float32)
    im = np.exp(rng.normal(0, 2, 1024)).astype(np.float32)
    assert_same_bytes(qn.quantize(x, qtype), twin(x, qtype), qtype, "plain")
    if qtype != QT.Q8_0:
        assert_same_bytes(qn.quantize(x, qtype, im), twin(x, qtype, im), qtype, "imatrix")


def test_q8_0_ignores_imatrix() -> None:
    x = CASES["normal"]
    im = np.exp(np.random.default_rng(3).normal(0, 2, x.shape[1])).astype(np.float32)
    assert np.array_equal(qn.quantize(x, QT.Q8_0, im), qn.quantize(x, QT.Q8_0))


# ----------------------------------------------------------------------------- (b) gguf-py's Q8_0


@pytest.mark.parametrize("case", ["normal", "mixed", "zeros", "outlier", "half_ties", "row_scales", "small"])
def test_q8_0_matches_gguf_py(case: str) -> None:
    x = CASES[case]
    ref = gguf.quants.quantize(x, QT.Q8_0)
    assert_same_bytes(qn.quantize(x, QT.Q8_0), ref.reshape(x.shape[0], -1), QT.Q8_0, case)


@pytest.mark.parametrize("qtype", Q5_TYPES, ids=lambda t: t.name)
def test_q5_without_imatrix_matches_gguf_py(qtype: QT) -> None:
    """gguf-py's Q5_0/Q5_1 are ggml's reference quantizers transcribed; ours must give the same bytes. ("sparse"
    is left out: its all-zero blocks hold -0.0, and gguf-py keeps that sign in the scale where ggml, and we,
    store +0.0 / -0.0 by ggml's own comparisons; the llama.cpp test below is the authority.)"""
    for case, x in CASES.items():
        if case == "sparse":
            continue
        ref = gguf.quants.quantize(x, qtype).reshape(x.shape[0], -1)
        assert_same_bytes(qn.quantize(x, qtype), ref, qtype, case)


@pytest.mark.parametrize("qtype", Q5_TYPES, ids=lambda t: t.name)
def test_q5_imatrix_lowers_weighted_error(qtype: QT) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    im = np.exp(rng.normal(0, 2, 512)).astype(np.float32)

    def weighted_err(q: np.ndarray) -> float:
        return float((((gguf.quants.dequantize(q, qtype).reshape(x.shape) - x) ** 2) * im).sum())

    assert weighted_err(qn.quantize(x, qtype, im)) < 0.9 * weighted_err(qn.quantize(x, qtype))


# ----------------------------------------------------------------------------- (c) reconstruction


@pytest.mark.parametrize(
    ("qtype", "bound"),
    [(QT.Q8_0, 0.006), (QT.Q4_K, 0.085), (QT.Q6_K, 0.022)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_dequantized_error(qtype: QT, bound: float) -> None:
    # Gaussian data: relative RMSE is ~0.004 (Q8_0), ~0.071 (Q4_K), ~0.018 (Q6_K).
    x = np.random.default_rng(11).standard_normal((64, 1024)).astype(np.float32)
    y = gguf.quants.dequantize(qn.quantize(x, qtype), qtype)
    assert y.shape == x.shape
    rel = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2))
    assert rel < bound, f"{qtype.name}: relative RMSE {rel:.4f} >= {bound}"


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_zero_rows_decode_to_zero(qtype: QT) -> None:
    x = np.zeros((2, 512), np.float32)
    q = qn.quantize(x, qtype)
    assert not q.any()  # d = dmin = 0 and all levels 0
    assert not gguf.quants.dequantize(q, qtype).any()


# ----------------------------------------------------------------------------- (d) threads


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_independent_of_thread_count(qtype: QT) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((301, 1024)).astype(np.float32)  # enough work for 7 threads
    im = None if qtype == QT.Q8_0 else rng.random(1024).astype(np.float32)
    one = qn.quantize(x, qtype, im, nthreads=1)
    for nt in (2, 7, 0):
        assert np.array_equal(qn.quantize(x, qtype, im, nthreads=nt), one), f"nthreads={nt}"


# ----------------------------------------------------------------------------- (e) importance matrix


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_imatrix_lowers_weighted_error(qtype: QT) -> None:
    rng = np.random.default_rng(5)
    n = 1024
    x = rng.standard_normal((64, n)).astype(np.float32)
    heavy = rng.choice(n, 24, replace=False)
    x[:, heavy] *= 4.0  # a few large, important columns (like activation outliers)
    im = np.full(n, 0.05, np.float32)
    im[heavy] = 50.0

    def weighted_err(q: np.ndarray) -> float:
        return float(((gguf.quants.dequantize(q, qtype) - x) ** 2 @ im).sum())

    plain, steered = weighted_err(qn.quantize(x, qtype)), weighted_err(qn.quantize(x, qtype, im))
    assert steered < 0.9 * plain, f"{qtype.name}: weighted error {steered:.2f} vs {plain:.2f} without imatrix"


# ----------------------------------------------------------------------------- API behaviour


def test_row_size_and_shapes() -> None:
    assert qn.row_size(QT.Q8_0, 64) == 68
    assert qn.row_size(QT.Q4_K, 512) == 288
    assert qn.row_size(QT.Q6_K, 256) == 210
    for qtype, n in [(QT.Q8_0, 48), (QT.Q4_K, 128), (QT.Q6_K, 300), (QT.Q4_K, 0)]:
        with pytest.raises(ValueError, match="multiple"):
            qn.row_size(qtype, n)
        if n:
            with pytest.raises(ValueError, match="multiple"):
                qn.quantize(np.zeros((2, n), np.float32), qtype)
    with pytest.raises(ValueError, match="does not support"):
        qn.quantize(np.zeros((2, 256), np.float32), QT.Q4_0)
    with pytest.raises(ValueError, match="imatrix"):
        qn.quantize(np.zeros((2, 256), np.float32), QT.Q4_K, np.ones(128, np.float32))
    with pytest.raises(ValueError, match="imatrix"):
        qn.quantize(np.zeros((2, 256), np.float32), QT.Q4_K, np.full(256, np.nan, np.float32))
    with pytest.raises(ValueError, match="multiple"):
        quants_ref.quantize_q4_k(np.zeros((2, 128), np.float32))
    assert qn.quantize(np.zeros((0, 256), np.float32), QT.Q6_K).shape == (0, 210)
    assert qn.version() == "0.1.0"


def test_c_row_size_rejects_bad_input() -> None:
    c = qn._c()
    assert c.ek_row_size(12, 255) == 0
    assert c.ek_row_size(2, 256) == 0  # Q4_0: not implemented natively
    buf = np.zeros(1000, np.uint8)
    x = np.zeros((1, 200), np.float32)
    assert c.ek_quantize(8, x.ctypes.data_as(qn._F32_P), buf.ctypes.data, 1, 200, None, 1) == 0


def test_accepts_non_contiguous_and_other_dtypes() -> None:
    x = np.random.default_rng(2).standard_normal((512, 6)).astype(np.float64)
    expected = qn.quantize(np.ascontiguousarray(x.T, dtype=np.float32), QT.Q4_K)
    assert np.array_equal(qn.quantize(x.T, QT.Q4_K), expected)
    assert np.array_equal(qn.quantize(x.T[0], QT.Q4_K), expected[:1])  # 1-D: one row


# ----------------------------------------------------------------------------- (f) llama.cpp itself

N_EMBD, N_FF, N_HEAD, N_VOCAB = 256, 512, 4, 256


def _tiny_llama_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """numpy shapes are (rows, n_per_row): GGUF stores them with ne = (n_per_row, rows)."""

    def w(rows: int, cols: int) -> np.ndarray:
        a = rng.standard_normal((rows, cols)) * np.exp(rng.normal(0, 0.5, (rows, 1))) * 0.05
        return a.astype(np.float32)

    out = w(N_VOCAB, N_EMBD)
    out[3, 100] = 4.0  # an outlier
    ffn_down = w(N_EMBD, N_FF)
    ffn_down[7] = 0.0  # an all-zero row
    attn_q, attn_k, attn_o = w(N_EMBD, N_EMBD), w(N_EMBD, N_EMBD), w(N_EMBD, N_EMBD)
    attn_q[5] *= 1e-18  # fp16 scales underflow
    attn_k[9] = 0.37  # a constant row
    attn_o[0] *= 1e3  # a large row
    return {
        "token_embd.weight": w(N_VOCAB, N_EMBD),
        "output_norm.weight": np.ones(N_EMBD, np.float32),
        "output.weight": out,
        "blk.0.attn_norm.weight": np.ones(N_EMBD, np.float32),
        "blk.0.attn_q.weight": attn_q,
        "blk.0.attn_k.weight": attn_k,
        "blk.0.attn_v.weight": w(N_EMBD, N_EMBD),
        "blk.0.attn_output.weight": attn_o,
        "blk.0.ffn_norm.weight": np.ones(N_EMBD, np.float32),
        "blk.0.ffn_gate.weight": w(N_FF, N_EMBD),
        "blk.0.ffn_up.weight": w(N_FF, N_EMBD),
        "blk.0.ffn_down.weight": ffn_down,
    }


def _write_tiny_llama(path, tensors: dict[str, np.ndarray], n_layer: int = 1, n_head_kv: int = N_HEAD) -> None:
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name("edgekit-quant-test")
    wr.add_context_length(128)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(N_FF)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(n_head_kv)
    wr.add_rope_dimension_count(N_EMBD // N_HEAD)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_vocab_size(N_VOCAB)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("gpt-2")
    wr.add_token_list([bytes([i]) for i in range(N_VOCAB)])
    wr.add_token_types([gguf.TokenType.NORMAL] * N_VOCAB)
    wr.add_token_merges([])
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    for name, arr in tensors.items():
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


_SCHEMES = {QT.Q8_0: "q8_0", QT.Q4_K: "q4_k", QT.Q6_K: "q6_k", QT.Q5_0: "q5_0", QT.Q5_1: "q5_1"}


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", ALL_TYPES + Q5_TYPES, ids=lambda t: t.name)
def test_byte_identical_to_llama_cpp(tmp_path, qtype: QT, with_imatrix: bool) -> None:
    pytest.importorskip("llama_cpp")
    from edgekit.runtime.backends.llamacpp import quantize as llama_quantize

    rng = np.random.default_rng(2024)
    tensors = _tiny_llama_tensors(rng)
    src, dst = tmp_path / "f32.gguf", tmp_path / f"{qtype.name}.gguf"
    _write_tiny_llama(src, tensors)
    imatrices: dict[str, np.ndarray] = {}
    if with_imatrix:
        for name, arr in tensors.items():
            if arr.ndim == 2:  # one weight per column (input feature), as llama-imatrix records
                imatrices[name] = np.exp(rng.normal(0, 1.5, arr.shape[1])).astype(np.float32)
    # pure: every 2-D weight gets the one type (no Q6_K output etc.)
    llama_quantize(src, dst, _SCHEMES[qtype], pure=True, importance=imatrices or None, threads=2)

    reader = gguf.GGUFReader(str(dst))
    seen = 0
    for t in reader.tensors:
        x = tensors[t.name]
        if x.ndim == 1:
            assert t.tensor_type == QT.F32
            continue
        assert t.tensor_type == qtype, f"{t.name}: llama.cpp wrote {t.tensor_type.name}"
        ours = qn.quantize(x, qtype, imatrices.get(t.name))
        theirs = np.asarray(t.data).view(np.uint8).reshape(ours.shape)
        assert_same_bytes(ours, theirs, qtype, f"{t.name} (imatrix={with_imatrix})")
        seen += 1
    assert seen == 9


@pytest.mark.parametrize("n_layer", [16, 22, 32])
def test_q4_k_m_mix_matches_llama_cpp_on_deep_models(tmp_path, n_layer: int) -> None:
    """llama.cpp's Q4_K_M gives Q6_K to attn_v / ffn_down in its "more bits" layers; at 16+ layers the
    (i - n/8) % 3 rule picks a sparse middle set. Our choice must be llama.cpp's, tensor by tensor."""
    pytest.importorskip("llama_cpp")
    from edgekit.converters.gguf.mix import SCHEMES, choose_types
    from edgekit.runtime.backends.llamacpp import quantize as llama_quantize

    rng = np.random.default_rng(n_layer)
    kv = N_EMBD // N_HEAD  # one KV head keeps attn_k / attn_v small (GQA, as deep models have)

    def w(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    tensors = {"token_embd.weight": w(N_VOCAB, N_EMBD), "output_norm.weight": np.ones(N_EMBD, np.float32),
               "output.weight": w(N_VOCAB, N_EMBD)}
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors |= {p + "attn_norm.weight": np.ones(N_EMBD, np.float32), p + "attn_q.weight": w(N_EMBD, N_EMBD),
                    p + "attn_k.weight": w(kv, N_EMBD), p + "attn_v.weight": w(kv, N_EMBD),
                    p + "attn_output.weight": w(N_EMBD, N_EMBD), p + "ffn_norm.weight": np.ones(N_EMBD, np.float32),
                    p + "ffn_gate.weight": w(N_EMBD, N_EMBD), p + "ffn_up.weight": w(N_EMBD, N_EMBD),
                    p + "ffn_down.weight": w(N_EMBD, N_EMBD)}
    src = tmp_path / "f32.gguf"
    _write_tiny_llama(src, tensors, n_layer=n_layer, n_head_kv=1)
    q = llama_quantize(src, tmp_path / "q.gguf", "q4_k_m")
    theirs = {t.name: t.tensor_type for t in gguf.GGUFReader(q).tensors}
    ours = choose_types({n: a.shape for n, a in tensors.items()}, SCHEMES["q4_k_m"], n_layer)
    assert ours == theirs
    six = sorted(int(n.split(".")[1]) for n, t in theirs.items() if n.endswith("ffn_down.weight") and t == QT.Q6_K)
    print(f"n_layer={n_layer}: Q6_K attn_v/ffn_down in layers {six}")
    assert 0 < len(six) < n_layer
