"""GPTQ into ggml's block formats: column-by-column rounding with error feedback (Frantar et al. 2022).

For a linear layer y = W x with calibration inputs X, GPTQ minimises ||(W - Ŵ) X|| by quantizing the
input columns of W one at a time and spreading each column's rounding error over the columns not yet
quantized, weighted by the inverse Hessian H⁻¹ (H = X Xᵀ, damped). Here the quantizer is the real
ggml format, so the result is an ordinary GGUF tensor:

* at the first column of every ggml block (256 for Q4_K/Q6_K, 32 for Q5_0/Q8_0) the block's scales
  and minimums are chosen for the weights as they are *now* (after earlier feedback), by edgekit's own
  byte-identical search (libedgekit) with the Hessian's diagonal as the importance weights;
* inside the block each column is then rounded to that fixed grid and its error fed forward;
* the bytes keep ggml's scales and carry GPTQ's levels, so llama.cpp decodes exactly Ŵ.

Updates are applied lazily per batch of columns (a whole number of ggml blocks), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from edgekit.native.quantize import quantize as native_quantize
from edgekit.native.quantize import row_size

T = GGMLQuantizationType
GPTQ_TYPES = frozenset({T.Q4_K, T.Q6_K, T.Q5_0, T.Q8_0})


@dataclass
class Grid:
    """Per value: Ŵ = scale * q + offset with integer q in [lo, hi] (arrays of the matrix's shape)."""

    scale: np.ndarray
    offset: np.ndarray
    lo: int
    hi: int


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)[..., 0]


def _blocks(data: np.ndarray, qtype: T) -> np.ndarray:
    """(rows, row_bytes) uint8 -> (rows, n_blocks, block_bytes)."""
    bb = GGML_QUANT_SIZES[qtype][1]
    return data.reshape(data.shape[0], -1, bb)


def _q4_k_scales_mins(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes -> 8 six-bit scales and 8 six-bit mins (last axis)."""
    sc = sc.astype(np.uint8)
    lo_s, lo_m = sc[..., 0:4] & 63, sc[..., 4:8] & 63
    hi_s = (sc[..., 8:12] & 0xF) | ((sc[..., 0:4] >> 6) << 4)
    hi_m = (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)
    return np.concatenate([lo_s, hi_s], -1), np.concatenate([lo_m, hi_m], -1)


# Q6_K's 256 values: for each half n of 128 and l < 32 the four values 128n + l + 32t (t = 0..3)
# take nibble (t % 2 ? high : low) of ql[64n + l + 32 (t & 1)] and bits 2t..2t+1 of qh[32n + l].
_Q6_IDX = np.arange(256).reshape(2, 4, 32)  # [n, t, l] -> value index


def grid(data: np.ndarray, qtype: T) -> Grid:
    """The decoding grid of quantized rows (what ggml's dequantizer multiplies and adds)."""
    b = _blocks(data, qtype)
    rows, nb = b.shape[:2]
    if qtype == T.Q8_0:
        d = _f16(b[..., 0:2])
        scale, off, lo, hi = np.repeat(d, 32, -1), np.zeros((rows, nb * 32), np.float32), -127, 127
    elif qtype == T.Q5_0:
        d = np.repeat(_f16(b[..., 0:2]), 32, -1)
        scale, off, lo, hi = d, -16 * d, 0, 31
    elif qtype == T.Q4_K:
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        s, m = _q4_k_scales_mins(b[..., 4:16])
        # float32 products in ggml's order: d * sc and dmin * m per sub-block of 32
        scale = np.repeat(d[..., None] * s.astype(np.float32), 32, -1).reshape(rows, -1)
        off = -np.repeat(dmin[..., None] * m.astype(np.float32), 32, -1).reshape(rows, -1)
        lo, hi = 0, 15
    elif qtype == T.Q6_K:
        d = _f16(b[..., 208:210])
        sc = b[..., 192:208].view(np.int8).astype(np.float32)
        scale = np.repeat(d[..., None] * sc, 16, -1).reshape(rows, -1)
        off, lo, hi = -32 * scale, 0, 63
    else:
        raise ValueError(f"GPTQ does not support {qtype.name}")
    return Grid(scale.astype(np.float32), off.astype(np.float32), lo, hi)


def levels(data: np.ndarray, qtype: T) -> np.ndarray:
    """The integer level of every value (rows, n_per_row), on the grid() scale."""
    b = _blocks(data, qtype)
    rows, nb = b.shape[:2]
    if qtype == T.Q8_0:
        return b[..., 2:].view(np.int8).astype(np.int32).reshape(rows, -1)
    if qtype == T.Q5_0:
        qh = b[..., 2:6].copy().view("<u4")[..., 0]
        qs = b[..., 6:22]
        low = np.concatenate([qs & 0xF, qs >> 4], -1).astype(np.int32)
        high = (qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1
        return (low | (high.astype(np.int32) << 4)).reshape(rows, -1)
    if qtype == T.Q4_K:
        qs = b[..., 16:144].reshape(rows, nb, 4, 32)
        return np.stack([qs & 0xF, qs >> 4], 3).astype(np.int32).reshape(rows, -1)
    if qtype == T.Q6_K:
        ql, qh = b[..., 0:128].reshape(rows, nb, 2, 64), b[..., 128:192].reshape(rows, nb, 2, 32)
        out = np.empty((rows, nb, 256), np.int32)
        for t in range(4):
            low = ql[..., 32 * (t & 1):32 * (t & 1) + 32]
            low = (low >> 4) if t >= 2 else (low & 0xF)
            out[..., _Q6_IDX[:, t]] = low | (((qh >> (2 * t)) & 3) << 4)
        return out.reshape(rows, -1)
    raise ValueError(f"GPTQ does not support {qtype.name}")


def with_levels(data: np.ndarray, qtype: T, q: np.ndarray) -> np.ndarray:
    """A copy of quantized rows with their scales kept and the levels replaced by q."""
    out = data.copy()
    b = _blocks(out, qtype)
    rows, nb = b.shape[:2]
    q = q.reshape(rows, nb, -1)
    if qtype == T.Q8_0:
        b[..., 2:] = q.astype(np.int8).view(np.uint8)
    elif qtype == T.Q5_0:
        u = q.astype(np.uint32)
        b[..., 6:22] = ((u[..., :16] & 0xF) | ((u[..., 16:] & 0xF) << 4)).astype(np.uint8)
        qh = ((u >> 4) << np.arange(32, dtype=np.uint32)).sum(-1, dtype=np.uint32)
        b[..., 2:6] = qh.astype("<u4")[..., None].view(np.uint8)
    elif qtype == T.Q4_K:
        u = q.astype(np.uint8).reshape(rows, nb, 4, 2, 32)
        b[..., 16:144] = (u[..., 0, :] | (u[..., 1, :] << 4)).reshape(rows, nb, 128)
    elif qtype == T.Q6_K:
        u = q.astype(np.uint8)
        ql = np.zeros((rows, nb, 2, 64), np.uint8)
        qh = np.zeros((rows, nb, 2, 32), np.uint8)
        for t in range(4):
            v = u[..., _Q6_IDX[:, t]]
            sl = slice(32 * (t & 1), 32 * (t & 1) + 32)
            ql[..., sl] |= (v & 0xF) << (4 if t >= 2 else 0)
            qh |= (v >> 4) << (2 * t)
        b[..., 0:128], b[..., 128:192] = ql.reshape(rows, nb, 128), qh.reshape(rows, nb, 64)
    else:
        raise ValueError(f"GPTQ does not support {qtype.name}")
    return out


def dequantize(data: np.ndarray, qtype: T) -> np.ndarray:
    g = grid(data, qtype)
    return g.scale * levels(data, qtype).astype(np.float32) + g.offset


def rtn(w: np.ndarray, h: np.ndarray, qtype: T) -> np.ndarray:
    """Round-to-nearest with the same format and scale search GPTQ uses (the Hessian diagonal as the imatrix):
    llama.cpp's imatrix quantization, for comparison."""
    return native_quantize(np.ascontiguousarray(w, np.float32), qtype, _importance(h))


def _importance(h: np.ndarray) -> np.ndarray:
    return np.maximum(np.diag(h), 0).astype(np.float32)


def gptq(w: np.ndarray, h: np.ndarray, qtype: T, *, damp: float = 0.01, batch: int = 128) -> np.ndarray:
    """Quantize w (rows, cols) given the Hessian h = Σ x xᵀ of its inputs (cols, cols); returns ggml rows
    (uint8, rows × row_size) that decode to Ŵ with small ||(W - Ŵ) X||."""
    if qtype not in GPTQ_TYPES:
        raise ValueError(f"GPTQ does not support {qtype.name}")
    rows, cols = w.shape
    gs = GGML_QUANT_SIZES[qtype][0]
    if cols % gs:
        raise ValueError(f"{qtype.name} rows must be whole blocks of {gs}, got {cols}")
    batch = max(gs, batch // gs * gs)
    imp = _importance(h)
    W = w.astype(np.float64, copy=True)
    H = h.astype(np.float64, copy=True)
    dead = np.diag(H) <= 0  # inputs that are always zero: nothing to preserve there
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(cols)] += damp * np.mean(np.diag(H))
    # Upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U): row i holds the feedback weights of column i.
    hinv = np.linalg.inv(H)
    U = np.linalg.cholesky((hinv + hinv.T) / 2).T

    out = np.empty((rows, row_size(qtype, cols)), np.uint8)
    bb = GGML_QUANT_SIZES[qtype][1]
    for b0 in range(0, cols, batch):
        b1 = min(b0 + batch, cols)
        W1, U1 = W[:, b0:b1], U[b0:b1, b0:b1]
        err = np.zeros((rows, b1 - b0))
        for g0 in range(b0, b1, gs):
            j0 = g0 - b0
            # This block's scales, from its weights after all feedback so far.
            blk = native_quantize(W1[:, j0:j0 + gs].astype(np.float32), qtype, imp[g0:g0 + gs])
            g = grid(blk, qtype)
            q0 = levels(blk, qtype)
            q = np.empty_like(q0)
            for j in range(gs):
                i = j0 + j
                s, o = g.scale[:, j].astype(np.float64), g.offset[:, j].astype(np.float64)
                col = W1[:, i]
                with np.errstate(divide="ignore", invalid="ignore"):
                    qi = np.clip(np.rint((col - o) / s), g.lo, g.hi)
                qi = np.where(s != 0, qi, q0[:, j])  # a zero scale decodes to the offset whatever q is
                q[:, j] = qi
                e = (col - (s * qi + o)) / U1[i, i]
                W1[:, i + 1:] -= np.outer(e, U1[i, i + 1:])
                err[:, i] = e
            k = g0 // gs
            out[:, k * bb:(k + 1) * bb] = with_levels(blk, qtype, q)
        W[:, b1:] -= err @ U[b0:b1, b1:]
    return out


def output_error(w: np.ndarray, data: np.ndarray, qtype: T, h: np.ndarray) -> float:
    """||(W - Ŵ) X||_F computed from the Hessian: sqrt(trace(D H Dᵀ)) with D = W - Ŵ."""
    d = w.astype(np.float64) - dequantize(data, qtype).astype(np.float64)
    return float(np.sqrt(max(np.einsum("ij,jk,ik->", d, h, d), 0.0)))
