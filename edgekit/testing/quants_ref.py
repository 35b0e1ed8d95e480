"""Readable numpy reference for ggml's Q8_0, Q4_K and Q6_K quantizers.

This is the executable specification of ``native/src/quant_*.c``: tests require the two to agree
byte for byte, and the C code in turn matches ggml's reference quantizers (``ggml-quants.c``).
It favours clarity over speed (1-5 M weights/s for the K-quants); use
:mod:`edgekit.native.quantize` for real work.

Formats (ggml's block layouts, all little-endian; every row is a whole number of blocks):

* **Q8_0** -- 32 values per 34-byte block: fp16 ``d`` then 32 int8 ``qs``; ``x ~= d * qs``.
* **Q4_K** -- 256 values per 144-byte super-block of 8 sub-blocks of 32: fp16 ``d``, fp16
  ``dmin``, 12 bytes holding eight 6-bit scales ``sc`` and eight 6-bit mins ``m``, then 128 bytes
  of 4-bit levels ``q``; ``x ~= d*sc*q - dmin*m``.
* **Q6_K** -- 256 values per 210-byte super-block of 16 sub-blocks of 16: 128 bytes ``ql`` (low
  nibbles), 64 bytes ``qh`` (two high bits each), 16 int8 scales ``sc``, fp16 ``d``;
  ``x ~= d*sc*(q - 32)`` with ``q`` in 0..63.

Byte identity needs C's float32 semantics, so the code below:

* accumulates every sum in float32 *in index order* (``np.sum`` adds pairwise and changes the
  rounding of ~1% of blocks; :func:`_seq_sum` uses ``np.cumsum``, a left-to-right scan),
* keeps ggml's operand order in products (``w*x*l`` is ``(w*x)*l``) and never lets a Python
  int or float promote an expression to float64,
* rounds like ggml: ``nearest_int`` (ties to even, via the 1.5*2^23 trick), ``roundf`` (ties
  away from zero) for Q8_0, fp16 by round-to-nearest-even,
* quantizes the final levels against the *stored* fp16 scales, as the decoder will see them.

Loops run over the within-block index (32 or fewer steps); each step is vectorized across all
blocks of all rows. Data-dependent choices (``if err < best``) become ``np.where`` masks.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
QK8_0 = 32
QK_K = 256
_EPS = F32(1e-15)  # ggml's GROUP_MAX_EPS: below this a group counts as all zeros


# ----------------------------------------------------------------------------- helpers


def _seq_sum(terms: np.ndarray) -> np.ndarray:
    """``s = 0.0f; for t in terms: s += t`` along the last axis, in float32.

    cumsum scans left to right from the first term; starting from +0.0 instead changes at most
    the sign of a zero partial sum, and adding +0.0 at the end gives C's sign for a zero total."""
    return np.cumsum(terms, axis=-1, dtype=F32)[..., -1] + F32(0)


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even for |v| < 2^22, via the bits of v + 1.5*2^23.

    Outside that range (or for inf/NaN) it returns the same bit-derived value as C, not a
    clamp, which keeps degenerate inputs byte-identical too."""
    biased = np.asarray(v, dtype=F32) + F32(12582912.0)
    return (biased.view(np.int32) & 0x007FFFFF) - 0x00400000


def _roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf: to nearest, ties away from zero (np.round ties to even)."""
    t = np.trunc(v)
    frac = v - t  # exact in float32
    return t + np.where(np.abs(frac) >= F32(0.5), np.sign(v), F32(0)).astype(F32)


def _fp16(v: np.ndarray) -> np.ndarray:
    """Round float32 to fp16 (nearest, ties to even -- numpy and ggml agree)."""
    return np.asarray(v, dtype=F32).astype(np.float16)


def _fp16_bytes(h: np.ndarray) -> np.ndarray:
    """fp16 array (...,) -> little-endian bytes (..., 2)."""
    return np.ascontiguousarray(h.astype("<f2")).view(np.uint8).reshape(*h.shape, 2)


def _first_max(values: np.ndarray, key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """C's ``best = 0; for v: if (key(v) > best_key) ...`` scan over the last axis.

    Returns (best key, value at that position); the first strictly larger key wins, and the
    scan starts from 0 (so all-non-positive keys leave 0)."""
    key = values if key is None else key
    best_key = np.zeros(values.shape[:-1], F32)
    best_val = np.zeros(values.shape[:-1], F32)
    for i in range(values.shape[-1]):
        upd = key[..., i] > best_key
        best_key = np.where(upd, key[..., i], best_key)
        best_val = np.where(upd, values[..., i], best_val)
    return best_key, best_val


def _as_rows(x: np.ndarray, block: int) -> np.ndarray:
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, n_per_row) array, got shape {x.shape}")
    if x.shape[1] % block:
        raise ValueError(f"n_per_row={x.shape[1]} is not a multiple of the block size {block}")
    return x


def _as_imatrix(imatrix: np.ndarray | None, n_per_row: int) -> np.ndarray | None:
    if imatrix is None:
        return None
    im = np.asarray(imatrix, dtype=F32)
    if im.shape != (n_per_row,):
        raise ValueError(f"imatrix must have shape ({n_per_row},), got {im.shape}")
    return im


# ----------------------------------------------------------------------------- Q8_0


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 rows: per 32 values, ``d = max|x|/127`` and ``q = roundf(x/d)``.

    The integer levels use the unrounded float32 ``1/d``; only the stored scale is fp16.
    Returns uint8 of shape (rows, n_per_row // 32 * 34)."""
    x = _as_rows(x, QK8_0)
    rows = x.shape[0]
    xb = x.reshape(-1, QK8_0)
    with np.errstate(all="ignore"):
        amax = np.abs(xb).max(axis=1)
        d = amax / F32(127)
        inv_d = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        q = _roundf(xb * inv_d[:, None]).astype(np.int32)
    blocks = np.concatenate([_fp16_bytes(_fp16(d)), (q & 0xFF).astype(np.uint8)], axis=1)
    return blocks.reshape(rows, -1)


# ----------------------------------------------------------------------------- Q4_K


def _fit_scale_min(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``x ~= scale*L - neg_min`` per row of x (groups of 32), L in 0..nmax.

    ggml's make_qkx2_quants / make_qkx3_quants (identical when weights are given): start from
    the min/max grid, then try inverse scales ``(nmax + rmin + rdelta*k) / (max - min)`` for
    k = 0..nstep, solve weighted least squares for (scale, min) on each candidate level set,
    and keep the one with the lowest weighted squared error. Returns (scale, neg_min, L)."""
    n = x.shape[-1]
    lo, hi = x[:, 0].copy(), x[:, 0].copy()
    for i in range(1, n):  # first-wins scan, as the C loop (also for -0.0 vs 0.0)
        lo = np.where(x[:, i] < lo, x[:, i], lo)
        hi = np.where(x[:, i] > hi, x[:, i], hi)
    sum_w = np.cumsum(w, axis=1, dtype=F32)[:, -1]  # C starts these sums at element 0, not 0.0f
    sum_x = np.cumsum(w * x, axis=1, dtype=F32)[:, -1]
    lo = np.where(lo > 0, F32(0), lo)
    degenerate = hi == lo

    iscale = F32(nmax) / (hi - lo)
    scale = F32(1) / iscale
    L = np.clip(_nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax)
    diff = scale[:, None] * L.astype(F32) + lo[:, None] - x
    best = _seq_sum(w * (diff * diff))

    for step in range(nstep + 1):
        # As in ggml, the grid is anchored at the best min found so far, not the data's min.
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (hi - lo)
        trial = np.clip(_nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax)
        lf = trial.astype(F32)
        sum_l = _seq_sum(w * lf)
        sum_l2 = _seq_sum(w * lf * lf)
        sum_xl = _seq_sum(w * lf * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0  # not representable: refit the scale with min = 0
        this_min = np.where(positive, F32(0), this_min)
        this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        diff = this_scale[:, None] * lf + this_min[:, None] - x
        err = _seq_sum(w * (diff * diff))
        better = (det > 0) & (err < best) & ~degenerate
        L = np.where(better[:, None], trial, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        lo = np.where(better, this_min, lo)

    scale = np.where(degenerate, F32(0), scale)
    L = np.where(degenerate[:, None], 0, L)
    return scale.astype(F32), (-lo).astype(F32), L.astype(np.uint8)


def _fit_levels_positive(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize non-negative x (per row) to levels 0..nmax against one factor (make_qp_quants).

    A 9-point grid over the factor picks the starting levels, then up to five passes of
    coordinate descent move single levels while that increases sumlx^2/suml2 (the weighted
    fit quality). Returns (factor, levels as uint8)."""
    n = x.shape[-1]
    xmax = np.zeros(x.shape[0], F32)
    for i in range(n):
        xmax = np.where(xmax > x[:, i], xmax, x[:, i])
    zero = xmax < _EPS

    iscale = F32(nmax) / xmax
    start = (_nearest_int(iscale[:, None] * x) & 0xFF).astype(F32)  # C stores it in a uint8
    scale = F32(1) / iscale
    diff = x - scale[:, None] * start
    best = _seq_sum(w * diff * diff)
    for k in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_k = (F32(0.1) * F32(k) + F32(nmax)) / xmax
        scale_k = F32(1) / iscale_k
        lk = np.minimum(nmax, _nearest_int(iscale_k[:, None] * x)).astype(F32)
        diff = x - scale_k[:, None] * lk
        mse = _seq_sum(w * diff * diff)
        better = mse < best
        best = np.where(better, mse, best)
        iscale = np.where(better, iscale_k, iscale)

    lvl = np.minimum(nmax, _nearest_int(iscale[:, None] * x))
    L = lvl & 0xFF
    lf = lvl.astype(F32)  # the sums use the int level, the array keeps its uint8 truncation
    sumlx = _seq_sum(w * x * lf)
    suml2 = _seq_sum(w * lf * lf)
    active = np.ones(x.shape[0], bool)
    for _ in range(5):
        changed = np.zeros(x.shape[0], bool)
        for i in range(n):
            wi, xi, li = w[:, i], x[:, i], L[:, i].astype(F32)
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            new_l = np.minimum(nmax, _nearest_int(xi * sl2 / slx))
            nf = new_l.astype(F32)
            slx_new = slx + wi * xi * nf
            sl2_new = sl2 + wi * nf * nf
            take = (
                active
                & (slx > 0)
                & (sl2 > 0)
                & (new_l != L[:, i])
                & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new)
            )
            L[:, i] = np.where(take, new_l & 0xFF, L[:, i])
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
            changed |= take
        active &= changed  # a row with no change in a pass is finished
        if not active.any():
            break
    factor = np.where(suml2 > 0, sumlx / suml2, F32(0))
    factor = np.where(zero, F32(0), factor)
    L = np.where(zero[:, None], 0, L)
    return factor.astype(F32), L.astype(np.uint8)


def _pack_q4_k(
    x: np.ndarray, L: np.ndarray, ls: np.ndarray, lm: np.ndarray, d: np.ndarray, dmin: np.ndarray
) -> np.ndarray:
    """Final levels against the stored scales, then the 144-byte blocks.

    x, L: (nb, 8, 32); ls, lm: (nb, 8) 6-bit; d, dmin: (nb,) float32 before fp16 rounding."""
    d16, m16 = _fp16(d), _fp16(dmin)
    sub_d = d16.astype(F32)[:, None] * ls.astype(F32)
    sub_m = m16.astype(F32)[:, None] * lm.astype(F32)
    with np.errstate(all="ignore"):
        lvl = np.clip(_nearest_int((x + sub_m[..., None]) / sub_d[..., None]), 0, 15)
    L = np.where((sub_d != 0)[..., None], lvl, L).astype(np.uint8)  # zero scale: keep search levels

    # 6-bit scales/mins: entries 0..3 in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins);
    # entries 4..7 put low nibbles in bytes 8..11 and top 2 bits in the high bits of bytes 0..7.
    sc = np.zeros((x.shape[0], 12), np.uint8)
    sc[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sc[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)

    # nibbles: per 64-value chunk, byte i = value i (low) | value i+32 (high)
    chunks = L.reshape(-1, 4, 2, 32)
    qs = (chunks[:, :, 0, :] | (chunks[:, :, 1, :] << 4)).reshape(-1, 128)
    return np.concatenate([_fp16_bytes(d16), _fp16_bytes(m16), sc, qs], axis=1)


def quantize_q4_k(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q4_K rows (ggml's quantize_row_q4_K_ref, or quantize_row_q4_K_impl given an imatrix).

    Without an imatrix each value weighs ``rms(sub-block) + |x|``; each sub-block gets its own
    (scale, min) from :func:`_fit_scale_min`, and the 8 scales and 8 mins are quantized to 6
    bits linearly against their maxima (``d = max_scale/63``).

    With an imatrix ``qw`` (one weight per column) value i weighs ``qw_i*sqrt(sigma2 + x_i^2)``
    with ``sigma2 = 2*mean(x^2)`` over the super-block, the scale search is finer, and the 6-bit
    scales/mins are fitted by :func:`_fit_levels_positive` under the sub-blocks' weight sums.

    Returns uint8 of shape (rows, n_per_row // 256 * 144)."""
    x = _as_rows(x, QK_K)
    im = _as_imatrix(imatrix, x.shape[1])
    rows = x.shape[0]
    xs = x.reshape(-1, 8, 32)  # (super-blocks, sub-blocks, values)
    nb = xs.shape[0]

    with np.errstate(all="ignore"):
        if im is None:
            sum_x2 = _seq_sum(xs * xs)
            av_x = np.sqrt(sum_x2 / F32(32))
            w = av_x[..., None] + np.abs(xs)
            scales, mins, L = _fit_scale_min(xs.reshape(-1, 32), w.reshape(-1, 32), 15, -1.0, 0.1, 20)
            scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
            max_scale, _ = _first_max(scales)
            max_min, _ = _first_max(mins)
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
            # C truncates to uint8 before clamping to 63; keep that order.
            ls = np.minimum(63, _nearest_int(inv_scale[:, None] * scales) & 0xFF).astype(np.uint8)
            lm = np.minimum(63, _nearest_int(inv_min[:, None] * mins) & 0xFF).astype(np.uint8)
            d, dmin = max_scale / F32(63), max_min / F32(63)
        else:
            qw = np.broadcast_to(im, (rows, im.size)).reshape(-1, 8, 32)  # same weights for every row
            sum_x2 = _seq_sum(xs.reshape(nb, QK_K) * xs.reshape(nb, QK_K))
            sigma2 = F32(2) * sum_x2 / F32(QK_K)
            w = qw * np.sqrt(sigma2[:, None, None] + xs * xs)
            sw = _seq_sum(w)  # (nb, 8)
            scales, mins, L = _fit_scale_min(xs.reshape(-1, 32), w.reshape(-1, 32), 15, -0.9, 0.05, 36)
            d, ls = _fit_levels_positive(scales.reshape(nb, 8), sw, 63)
            dmin, lm = _fit_levels_positive(mins.reshape(nb, 8), sw, 63)
        blocks = _pack_q4_k(xs, L.reshape(nb, 8, 32), ls, lm, d, dmin)
    return blocks.reshape(rows, -1)


# ----------------------------------------------------------------------------- Q6_K


def _fit_symmetric(x: np.ndarray, qw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Signed scale for groups of 16 (ggml's make_qx_quants, nmax=32, rmse_type=1).

    Levels l in -32..31 (stored as l+32); weights qw, or x^2 without an imatrix. The largest-
    magnitude value is mapped towards -32 (the scale takes its sign), then 18 neighbouring
    inverse scales are tried, keeping the one that maximises sumlx^2/suml2.
    Returns (scale, L with the +32 offset)."""
    nmax = 32
    amax = np.zeros(x.shape[0], F32)
    xmax = np.zeros(x.shape[0], F32)
    for i in range(x.shape[1]):  # value with the first largest |x|, sign included
        upd = np.abs(x[:, i]) > amax
        amax = np.where(upd, np.abs(x[:, i]), amax)
        xmax = np.where(upd, x[:, i], xmax)
    zero = amax < _EPS
    w = x * x if qw is None else qw

    def levels(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lvl = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = lvl.astype(F32)
        return lvl, _seq_sum(w * x * lf), _seq_sum(w * lf * lf)

    lvl, sumlx, suml2 = levels(F32(-nmax) / xmax)
    L = lvl + nmax
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        lvl, sumlx, suml2 = levels(-(F32(nmax) + F32(0.1) * F32(k)) / xmax)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better[:, None], lvl + nmax, L)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero[:, None], 0, L)
    return scale.astype(F32), L.astype(np.uint8)


def quantize_q6_k(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q6_K rows (ggml's quantize_row_q6_K_ref, or quantize_row_q6_K_impl given an imatrix).

    Each 16-value sub-block gets a signed scale from :func:`_fit_symmetric` (importance weights
    replace the default x^2 weights when given). The 16 scales become int8 against
    ``d = max_scale / -128`` (the largest-magnitude scale maps to -128), d is stored as fp16,
    and the final 6-bit levels are recomputed against ``fp16(d) * sc``.

    Returns uint8 of shape (rows, n_per_row // 256 * 210)."""
    x = _as_rows(x, QK_K)
    im = _as_imatrix(imatrix, x.shape[1])
    rows = x.shape[0]
    xs = x.reshape(-1, 16, 16)
    nb = xs.shape[0]
    qw = None if im is None else np.broadcast_to(im, (rows, im.size)).reshape(-1, 16)

    with np.errstate(all="ignore"):
        scales, L = _fit_symmetric(xs.reshape(-1, 16), qw)
        scales, L = scales.reshape(nb, 16), L.reshape(nb, 16, 16)
        max_abs, max_scale = _first_max(scales, np.abs(scales))
        empty = max_abs < _EPS  # whole super-block is zeros: all bytes 0

        iscale = F32(-128) / max_scale
        d16 = _fp16(F32(1) / iscale)
        sc = (np.minimum(127, _nearest_int(iscale[:, None] * scales)) & 0xFF).astype(np.uint8)
        sub_d = d16.astype(F32)[:, None] * sc.view(np.int8).astype(F32)  # the stored int8 scale
        lvl = np.clip(_nearest_int(xs / sub_d[..., None]), -32, 31) + 32
        L = np.where((sub_d != 0)[..., None], lvl, L).astype(np.uint8).reshape(nb, QK_K)

    # Per 128-value half: ql byte i = low nibbles of values i and i+64, byte 32+i = values
    # 32+i and 96+i; qh byte i = bits 4-5 of values i, 32+i, 64+i, 96+i (2 bits each).
    quarters = L.reshape(nb, 2, 4, 32)
    lo, hi = quarters & 0xF, quarters >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    blocks = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc, _fp16_bytes(d16)], axis=1)
    blocks[empty] = 0
    return blocks.reshape(rows, -1)
