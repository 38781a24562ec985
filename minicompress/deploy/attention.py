"""The inference attention: y = softmax(q k^T / sqrt(D) + mask) v, head by head, without
the [B, H, Tq, Tk] probabilities of the training op and without the copies around it.

Two kernels with the same contract (``tests/test_deploy_attention.py`` checks both against
``nn.attention.attention_forward``):

- ``_attention_heads_simd`` (float32, D a multiple of 16; every head of BERT-base,
  MiniLM and the default teacher): four query rows at a time, their scores and outputs in
  16-float accumulators that LLVM keeps in registers (``kernels/x86/simd.py``'s ``vec_*``,
  plain LLVM vectors: AVX-512 runs one instruction per 16 lanes, AVX2 two). The k of a head
  is first transposed (``kt`` [D, Tk], 8 KB at Tk = 64, in 16 x 16 register blocks); then
  each 16-key load of ``kt`` feeds the four rows' FMAs, two 16-key chunks at once so that
  eight independent FMA chains are in flight (``_tile_scores``); the softmax
  numerators of the four rows go together, 16 keys at a time (``_softmax_numerators``:
  masked max and sum in ``simd.vec_max_first``/``vec_add_first``, one 16-lane
  ``fastmath.exp_nonpositive_f32`` per row and 16 keys); each 16-float load of v feeds the
  four rows' output FMAs, 32 columns at once (``_tile_output``), divided by the softmax's
  sum at the end (one pass less). A causal group stops at the last key its last row sees.
  The heads are shared among Numba's threads.
- ``_attention_heads_blas`` (everything else: float64 model checks, odd head widths): two
  BLAS products per block of rows (``np.dot`` inside Numba) and the softmax between them.

Layout: ``split_qkv_views`` gives q, k, v as strided *views* of the qkv projection
[B, T, 3, H, D] (no copy), which the SIMD kernel reads in place (each row of D floats is
contiguous); y is written in [B, T, H, D] order and returned as its [B, H, T, D] view, so
that ``nn.attention.merge_heads`` is a reshape without a copy. Measured on all-MiniLM-L6-v2
(16 x 64 tokens, one thread): the layer's split copy 0.27 ms, attention 3.4 ms before; see
the README for the forward after.

The softmax numerators were a scalar max (LLVM does not vectorize a max reduction without
``nnan``: one chain of scalar ``vmaxss``), then an exp loop of 16 lanes followed by 4-lane
and scalar remainders (a causal row's end is anything), one row per call. Measured
(``attention_forward_infer`` on ``split_qkv_views`` of a random float32 qkv, one thread;
the old op, the new one and the new one without its softmax alternated in one process,
60 calls each; min / median in ms): all-MiniLM
(B = 16, T = 64, H = 12, D = 32) 1.27 / 1.48 before, 1.03 / 1.25 after, 0.80 / 0.99
without softmax (the softmax 0.48 -> 0.24 ms, 19 ns a row of 64 keys); the teacher's
causal shape (B = 16, T = 128, H = 4, D = 32) 0.99 / 1.02 before, 0.75 / 0.78 after,
0.57 / 0.60 without (0.42 -> 0.18 ms). Eight FMA chains instead of four (two 16-key
chunks, or 32 columns of v, per pass; the same sums in the same order, bit for bit):
teacher 1 x 128 54.3 -> 44.9 us, 16 x 128 796 -> 662 us, MiniLM 16 x 64 1.10 -> 0.90 ms
(min of 400, alternated in one process).

Shape letters: B batch, H heads, Tq queries, Tk keys, D head width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from minicompress.kernels.fastmath import FAST, NO_REASSOC, exp_nonpositive, exp_nonpositive_f32
from minicompress.kernels.threads import threads_here
from minicompress.kernels.x86 import simd
from minicompress.nn.attention import check_attention_shapes, check_pad_mask


class NoAttentionCache(NamedTuple):
    """What the inference attention keeps: nothing. ``p`` is None because the model's forward
    lists every block's ``cache.p`` (the probabilities a distiller reads); inference never
    holds them for a whole batch."""

    p: None = None


_NO_ATTENTION_CACHE = NoAttentionCache()


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _softmax_row(s, end, scale, tk):
    """s[:end] <- softmax(scale * s[:end]), s[end:] <- 0. Scores of -inf (padding) get
    probability 0; a row whose scores are all -inf (a query that sees no key) gets 1 / Tk
    on each of its Tk' entries, as the NumPy reference (its masked scores are all -1e9, so
    such a query averages all Tk values; a causal block holds Tk' <= Tk keys: the
    causal mask and padding together can only leave a query keyless in a non-causal
    model or with every visible key padded). s: [Tk']."""
    m = s[0]
    for j in range(1, end):
        m = max(m, s[j])
    if m == -np.inf:
        s[:] = 1.0 / tk
        return
    total = 0.0
    for j in range(end):
        e = exp_nonpositive((s[j] - m) * scale)  # exp(-inf) = 0
        s[j] = e
        total += e
    inv = 1.0 / total
    for j in range(end):
        s[j] *= inv
    s[end:] = 0.0


_ROW_BLOCK = 64  # causal queries per block: a block multiplies only the keys it can see


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _attention_heads_blas(q, k, v, causal, pad, y):
    """y[b, h] = softmax(q[b, h] k[b, h]^T / sqrt(D) + mask) v[b, h] for every head.
    q, y: [B, H, Tq, D]; k, v: [B, H, Tk, D] (C-contiguous); pad: [B, Tk] or [0, 0].
    Causal: the queries go in blocks of _ROW_BLOCK rows, and a block's two products stop
    at the last key its last query sees (at T = 128, two blocks: 3/4 of the full square)."""
    b_, h_, tq, d = q.shape
    tk = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    has_pad = pad.shape[0] > 0
    blocked = causal and not has_pad  # with padding a query may see no key: full rows
    rows = min(tq, _ROW_BLOCK) if blocked else tq
    buf = np.empty(rows * tk, dtype=q.dtype)  # scores of one block, then its probabilities
    for b in range(b_):
        for h in range(h_):
            for i0 in range(0, tq, rows):
                i1 = min(i0 + rows, tq)
                kend = tk - tq + i1 if blocked else tk  # keys 0 .. kend - 1 are seen
                s = buf[: (i1 - i0) * kend].reshape((i1 - i0, kend))
                np.dot(q[b, h, i0:i1], k[b, h, :kend].T, s)  # [R, D] @ [D, Tk'] -> [R, Tk']
                if has_pad:
                    for j in range(kend):
                        if pad[b, j]:
                            s[:, j] = -np.inf
                for i in range(i0, i1):
                    end = tk - tq + i + 1 if causal else tk
                    _softmax_row(s[i - i0], end, scale, tk)
                np.dot(s, v[b, h, :kend], y[b, h, i0:i1])  # [R, Tk'] @ [Tk', D] -> [R, D]


# ----------------------------------------------------------------------------------------
# the SIMD kernel (float32, D % 16 == 0)
# ----------------------------------------------------------------------------------------

_W = 16  # floats per accumulator (one zmm register, two ymm)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy", inline="always")
def _zero4(a0, a1, a2, a3):
    """Four 16-float accumulators <- 0."""
    simd.vec_zero(a0, _W)
    simd.vec_zero(a1, _W)
    simd.vec_zero(a2, _W)
    simd.vec_zero(a3, _W)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy", inline="always")
def _fma4(a0, a1, a2, a3, c0, c1, c2, c3, address):
    """a_r += c_r * (the 16 floats at ``address``) for r < 4: one load feeds four FMAs."""
    simd.vec_fma(a0, c0, address, _W)
    simd.vec_fma(a1, c1, address, _W)
    simd.vec_fma(a2, c2, address, _W)
    simd.vec_fma(a3, c3, address, _W)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy", inline="always")
def _store4(a0, a1, a2, a3, out, ld):
    """Store four accumulators at ``out``, ``out + ld``, ... (byte addresses)."""
    simd.vec_store(a0, out, _W)
    simd.vec_store(a1, out + ld, _W)
    simd.vec_store(a2, out + 2 * ld, _W)
    simd.vec_store(a3, out + 3 * ld, _W)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _tile_scores(q4, kt, s4, nchunks):
    """s4[r, 16c : 16c + 16] = sum_d q4[r, d] kt[d, 16c : 16c + 16] for r < 4, c < nchunks:
    four rows and two 16-key chunks at once, so that each 16-key load of kt feeds four FMAs
    and eight independent chains hide the FMA's latency (four chains ran at half the FMA
    units' rate). q4: [4, D]; kt: [D, Tk16]; s4: [4, Tk16], C-contiguous."""
    d = q4.shape[1]
    ldk, lds = kt.strides[0], s4.strides[0]
    a0, a1, a2, a3 = simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W)
    b0, b1, b2, b3 = simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W)
    for c in range(0, nchunks, 2):
        pair = c + 1 < nchunks  # a second chunk (the b accumulators)
        _zero4(a0, a1, a2, a3)
        _zero4(b0, b1, b2, b3)
        col = kt.ctypes.data + c * _W * 4
        for dd in range(d):
            row = col + dd * ldk
            q0, q1, q2, q3 = q4[0, dd], q4[1, dd], q4[2, dd], q4[3, dd]
            _fma4(a0, a1, a2, a3, q0, q1, q2, q3, row)
            if pair:
                _fma4(b0, b1, b2, b3, q0, q1, q2, q3, row + _W * 4)
        out = s4.ctypes.data + c * _W * 4
        _store4(a0, a1, a2, a3, out, lds)
        if pair:
            _store4(b0, b1, b2, b3, out + _W * 4, lds)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _tile_output(p4, end, v_row0, ldv, out4):
    """out4[r, 0:D] = sum_{j < end} p4[r, j] v[j, 0:D] for r < 4, 32 columns at a time
    (eight chains, as ``_tile_scores``): each 16-float load of v feeds four FMAs.
    p4: [4, Tk16]; v_row0: byte address of v[0, 0]; ldv: bytes between rows of v;
    out4: [4, D] C-contiguous (D % 16 == 0)."""
    d, ldo = out4.shape[1], out4.strides[0]
    a0, a1, a2, a3 = simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W)
    b0, b1, b2, b3 = simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W), simd.vec_alloc(_W)
    for d0 in range(0, d, 2 * _W):
        pair = d0 + _W < d  # a second 16 columns (the b accumulators)
        _zero4(a0, a1, a2, a3)
        _zero4(b0, b1, b2, b3)
        col = v_row0 + d0 * 4
        for j in range(end):
            row = col + j * ldv
            p0, p1, p2, p3 = p4[0, j], p4[1, j], p4[2, j], p4[3, j]
            _fma4(a0, a1, a2, a3, p0, p1, p2, p3, row)
            if pair:
                _fma4(b0, b1, b2, b3, p0, p1, p2, p3, row + _W * 4)
        out = out4.ctypes.data + d0 * 4
        _store4(a0, a1, a2, a3, out, ldo)
        if pair:
            _store4(b0, b1, b2, b3, out + _W * 4, ldo)


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy")
def _softmax_numerators(s4, g, ends, total, b, pad, has_pad):
    """For each row r < g of s4: s4[r, j] <- exp(s4[r, j] - max) for j < ends[r], padded
    keys at 0, and total[r] <- their sum; a row whose visible keys are all padding gets
    ends[r] = 0 (the caller then averages all Tk values, as the NumPy reference does).
    s4: [4, Tk16], C-contiguous; the entries past ends[r] (and the rows past g) are left
    finite but undefined: the caller zeroes those it reads. ends: int64 [4]; total:
    float32 [4], also the scratch of the four maxima.

    The four rows go together, 16 keys at a time: four independent chains of masked
    ``vmaxps`` (``simd.vec_max_first``, lanes past a row's end left out), one 16-lane exp
    per row (the loop of 16 over a view, which LLVM turns into one vector exp without a
    scalar remainder), four chains of masked adds (``simd.vec_add_first``). Compiled without
    ``reassoc`` (``fastmath``'s docstring); the sums are explicit lanes."""
    lds = s4.strides[0]
    row0 = s4.ctypes.data
    if has_pad:
        for r in range(g):
            for j in range(ends[r]):
                if pad[b, j]:
                    s4[r, j] = -np.inf
    e0 = ends[0]  # lanes past a row's end (and every lane of rows past g) are left out
    e1 = ends[1] if g > 1 else 0
    e2 = ends[2] if g > 2 else 0
    e3 = ends[3] if g > 3 else 0
    last = max(max(e0, e1), max(e2, e3))
    acc0, acc1 = simd.vec_alloc(_W), simd.vec_alloc(_W)
    acc2, acc3 = simd.vec_alloc(_W), simd.vec_alloc(_W)
    simd.vec_fill(acc0, -np.inf, _W)
    simd.vec_fill(acc1, -np.inf, _W)
    simd.vec_fill(acc2, -np.inf, _W)
    simd.vec_fill(acc3, -np.inf, _W)
    for j0 in range(0, last, _W):
        at = row0 + j0 * 4
        simd.vec_max_first(acc0, at, e0 - j0, _W)
        simd.vec_max_first(acc1, at + lds, e1 - j0, _W)
        simd.vec_max_first(acc2, at + 2 * lds, e2 - j0, _W)
        simd.vec_max_first(acc3, at + 3 * lds, e3 - j0, _W)
    total[0] = simd.vec_hmax(acc0, _W)  # the maxima, until the sums replace them
    total[1] = simd.vec_hmax(acc1, _W)
    total[2] = simd.vec_hmax(acc2, _W)
    total[3] = simd.vec_hmax(acc3, _W)
    for r in range(4):
        if total[r] == -np.inf:  # no visible key (or a row past g): exp(x - 0) below
            total[r] = 0.0
            if r < g:
                ends[r] = 0
    zero = np.float32(0.0)
    for j0 in range(0, last, _W):
        for r in range(4):
            m = total[r]
            chunk = s4[r, j0 : j0 + _W]  # a view: LLVM makes the loop of 16 one 16-lane exp
            for j in range(_W):
                # min: a lane past the row's end (any finite score) stays <= 0; -inf gives 0
                chunk[j] = exp_nonpositive_f32(min(chunk[j] - m, zero))
    simd.vec_zero(acc0, _W)
    simd.vec_zero(acc1, _W)
    simd.vec_zero(acc2, _W)
    simd.vec_zero(acc3, _W)
    for j0 in range(0, last, _W):
        at = row0 + j0 * 4
        simd.vec_add_first(acc0, at, e0 - j0, _W)
        simd.vec_add_first(acc1, at + lds, e1 - j0, _W)
        simd.vec_add_first(acc2, at + 2 * lds, e2 - j0, _W)
        simd.vec_add_first(acc3, at + 3 * lds, e3 - j0, _W)
    total[0] = simd.vec_hsum(acc0, _W)
    total[1] = simd.vec_hsum(acc1, _W)
    total[2] = simd.vec_hsum(acc2, _W)
    total[3] = simd.vec_hsum(acc3, _W)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy", inline="always")
def _scaled_row(c, src, dst, d, acc):
    """dst[0:D] = c * src[0:D], 16 floats at a time; src, dst: byte addresses of D float32
    (D % 16 == 0); acc: a 16-float accumulator."""
    for d0 in range(0, d, _W):
        simd.vec_zero(acc, _W)
        simd.vec_fma(acc, c, src + d0 * 4, _W)
        simd.vec_store(acc, dst + d0 * 4, _W)


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _attention_head(q, k, v, b, h, causal, pad, y, kt, s4, q4, out4):
    """y[b, :, h] = softmax(q[b, h] k[b, h]^T / sqrt(D) + mask) v[b, h] for one head, four
    query rows at a time (the shapes of ``_attention_heads_simd``). Scratch: kt [D, Tk16]
    (columns past Tk: 0), s4 [4, Tk16], q4 [4, D] (rows past the last query: 0),
    out4 [4, D]."""
    _, _, tq, d = q.shape
    tk = k.shape[2]
    scale = np.float32(1.0 / math.sqrt(d))
    has_pad = pad.shape[0] > 0
    total, ends = np.empty(4, np.float32), np.empty(4, np.int64)
    kt3 = kt.reshape((1, d, kt.shape[1]))  # the [blocks, K, W] view transpose_tile writes
    acc = simd.vec_alloc(_W)
    ldq, ldv, ldy = q.strides[2], v.strides[2], y.strides[1]
    ldq4, ldo4 = q4.strides[0], out4.strides[0]
    kh = k[b, h]  # [Tk, D]
    full = tk // _W * _W
    for j0 in range(0, full, _W):  # 16 x 16 blocks transposed in registers
        for d0 in range(0, d, _W):
            simd.transpose_tile(kh, j0, d0, kt3, 0, j0)
    for j in range(full, tk):
        for dd in range(d):
            kt[dd, j] = kh[j, dd]
    v_row0 = v.ctypes.data + b * v.strides[0] + h * v.strides[1]
    q_row0 = q.ctypes.data + b * q.strides[0] + h * q.strides[1]
    for i0 in range(0, tq, 4):
        g = min(4, tq - i0)  # rows in this group
        for r in range(g):
            _scaled_row(scale, q_row0 + (i0 + r) * ldq, q4.ctypes.data + r * ldq4, d, acc)
        last = tk - tq + i0 + g if causal else tk  # keys any row of the group sees
        _tile_scores(q4, kt, s4, (last + _W - 1) // _W)
        seen = last
        for r in range(g):
            ends[r] = tk - tq + i0 + r + 1 if causal else tk
        _softmax_numerators(s4, g, ends, total, b, pad, has_pad)
        for r in range(g):
            if ends[r] == 0:  # no visible key: the mean of all Tk values
                s4[r, :tk] = 1.0
                total[r], ends[r], seen = tk, tk, tk
        for r in range(4):
            s4[r, ends[r] if r < g else 0 : seen] = 0.0
        _tile_output(s4, seen, v_row0, ldv, out4)
        for r in range(g):
            inv = np.float32(1.0) / total[r]
            y_row = y.ctypes.data + b * y.strides[0] + (i0 + r) * ldy + h * d * 4
            _scaled_row(inv, out4.ctypes.data + r * ldo4, y_row, d, acc)


@njit(cache=True, nogil=True, parallel=True)
def _attention_heads_simd(q, k, v, causal, pad, y):
    """``_attention_head`` for every head, the heads shared among Numba's threads (one, in
    the runtime's batch-split workers; all of them when one sequence runs alone).
    q: [B, H, Tq, D]; k, v: [B, H, Tk, D], float32, any strides with each row of D floats
    contiguous (views of the qkv projection); pad: bool [B, Tk] or [0, 0];
    y: float32 [B, Tq, H, D] C-contiguous. D % 16 == 0."""
    b_, h_, tq, d = q.shape
    tk16 = (k.shape[2] + _W - 1) // _W * _W
    parts = min(threads_here(), b_ * h_)  # heads p, p + parts, p + 2 parts, ...
    kt = np.zeros((parts, d, tk16), np.float32)  # the scratch of each part
    s4 = np.zeros((parts, 4, tk16), np.float32)
    q4 = np.zeros((parts, 4, d), np.float32)
    out4 = np.empty((parts, 4, d), np.float32)
    for p in prange(parts):
        for bh in range(p, b_ * h_, parts):
            _attention_head(
                q, k, v, bh // h_, bh % h_, causal, pad, y, kt[p], s4[p], q4[p], out4[p]
            )


# ----------------------------------------------------------------------------------------
# the op
# ----------------------------------------------------------------------------------------


def split_qkv_views(qkv: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``nn.attention.split_qkv`` without its copy: q, k, v [B, H, T, D] as strided views of
    qkv [B, T, 3 H D] (the attention reads them in place)."""
    b, t, c3 = qkv.shape
    x = qkv.reshape(b, t, 3, n_head, c3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)
    return x[0], x[1], x[2]


def _rows_contiguous(a: np.ndarray) -> np.ndarray:
    """a itself when each row of its last axis is contiguous, else a contiguous copy."""
    return a if a.strides[-1] == a.itemsize else np.ascontiguousarray(a)


def attention_forward_infer(q, k, v, causal: bool = True, pad_mask=None):
    """``attention.attention_forward`` without the probabilities in its cache:
    y = softmax(q k^T / sqrt(D) + mask) v, head by head.

    q: [B, H, Tq, D]; k, v: [B, H, Tk, D] with Tq <= Tk (query i at position Tk - Tq + i),
    any strides; pad_mask: bool [B, Tk] (True = padding) or None  ->  (y [B, H, Tq, D], a
    view of a [B, Tq, H, D] array, NoAttentionCache). float32 with D % 16 == 0 runs the
    SIMD kernel, anything else the BLAS one.
    """
    check_attention_shapes(q, k, v)
    b, h, tq, d = q.shape
    pad_mask = check_pad_mask(pad_mask, b, k.shape[2])
    pad = np.zeros((0, 0), np.bool_) if pad_mask is None else np.ascontiguousarray(pad_mask)
    if q.dtype == np.float32 and d % _W == 0:
        q, k, v = (_rows_contiguous(a) for a in (q, k, v))
        y = np.empty((b, tq, h, d), np.float32)  # [B, Tq, H, D]
        _attention_heads_simd(q, k, v, bool(causal), pad, y)
        return y.transpose(0, 2, 1, 3), _NO_ATTENTION_CACHE
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    y = np.empty_like(q)
    _attention_heads_blas(q, k, v, bool(causal), pad, y)
    return y, _NO_ATTENTION_CACHE
