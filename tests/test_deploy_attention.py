"""minicompress/deploy/attention.py: both inference attention kernels (SIMD for float32 with
D % 16 == 0, BLAS otherwise) against ``nn.attention.attention_forward`` in float64: odd
shapes, more than one group of rows, fewer queries than keys (key/value cache), padding that
hides every key from a query, strided views of the qkv projection, and the output layout
that makes ``merge_heads`` a reshape."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.deploy import attention as A
from minicompress.nn import attention

# float32: scores of magnitude ~15 (q, k ~ N(0, 4)) carry ~1e-6 relative rounding, which the
# softmax turns into the same relative error of the weights
F32 = dict(rtol=1e-5, atol=2e-5)
# float64: the softmax's exp is exp_nonpositive (relative error < 1e-8), not libm's
F64 = dict(rtol=1e-8, atol=1e-9)
TOL = {np.float32: F32, np.float64: F64}


def _qkv(rng, b, h, tq, tk, d, dtype):
    q = rng.standard_normal((b, h, tq, d)) * 2
    k = rng.standard_normal((b, h, tk, d)) * 2
    v = rng.standard_normal((b, h, tk, d))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _reference(q, k, v, causal, pad=None):
    """The training op in float64 on the same (float32) numbers."""
    q, k, v = (np.ascontiguousarray(a, dtype=np.float64) for a in (q, k, v))
    return attention.attention_forward(q, k, v, causal, pad)[0]


@pytest.mark.parametrize(
    "dtype, d",
    [(np.float32, 16), (np.float32, 32), (np.float32, 48), (np.float32, 8), (np.float64, 16),
     (np.float64, 8)],
)  # fmt: skip
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "tq, tk",
    [(1, 1), (7, 7), (70, 70), (130, 130), (1, 9), (3, 9), (65, 100), (6, 33)],
)  # one position, odd sizes, several groups of rows and key chunks, after a key/value cache
def test_attention_equals_reference(rng, dtype, d, causal, tq, tk):
    q, k, v = _qkv(rng, 2, 3, tq, tk, d, dtype)
    y, cache = A.attention_forward_infer(q, k, v, causal)
    assert cache.p is None and y.dtype == dtype and y.shape == q.shape
    assert_close(y, _reference(q, k, v, causal), **TOL[dtype], name="attention")


@pytest.mark.parametrize("dtype, d", [(np.float64, 4), (np.float32, 16)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tq", [5, 9])
def test_attention_with_padding_equals_reference(rng, dtype, d, causal, tq):
    """Padding at both ends; sequence 1 is padding at its first three positions, so under
    the causal mask its first queries see no key at all (a uniform row, as the reference),
    and sequence 2 is all padding."""
    tk = 9
    q, k, v = _qkv(rng, 3, 2, tq, tk, d, dtype)
    pad = np.zeros((3, tk), bool)
    pad[0, -2:] = True
    pad[1, :3] = True
    pad[2] = True
    y, _ = A.attention_forward_infer(q, k, v, causal, pad)
    assert_close(y, _reference(q, k, v, causal, pad), **TOL[dtype], name="attention, padding")


@pytest.mark.parametrize("d", [4, 16])
def test_attention_accepts_strided_keys(rng, d):
    """Keys and values as the key/value cache hands them over: views of a longer buffer."""
    q, _, _ = _qkv(rng, 2, 2, 1, 1, d, np.float32)
    buf_k, buf_v = (rng.standard_normal((2, 2, 16, d)).astype(np.float32) for _ in range(2))
    k, v = buf_k[:, :, :6], buf_v[:, :, :6]
    y, _ = A.attention_forward_infer(q, k, v, True)
    assert_close(y, _reference(q, k, v, True), **F32, name="attention on views")


@pytest.mark.parametrize("d", [8, 32])
def test_split_views_read_in_place_and_merge_without_copy(rng, d):
    """q, k, v as views of the projection [B, T, 3 H D] (no copy: they share its memory),
    the same numbers as ``nn.attention.split_qkv``'s copies; the output's [B, H, T, D]
    view merges into [B, T, H D] without a copy when the SIMD kernel ran."""
    b, t, h = 2, 21, 3
    qkv = (rng.standard_normal((b, t, 3 * h * d)) * 2).astype(np.float32)
    views = A.split_qkv_views(qkv, h)
    copies = attention.split_qkv(qkv, h)
    for view, copy in zip(views, copies, strict=True):
        assert np.shares_memory(view, qkv) and np.array_equal(view, copy)
    y, _ = A.attention_forward_infer(*views, False)
    assert_close(y, _reference(*copies, False), **F32, name="attention on the split views")
    merged = attention.merge_heads(y)  # [B, T, H D]
    assert np.array_equal(merged, np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(b, t, -1))
    assert np.shares_memory(merged, y) == (d % 16 == 0)


def test_simd_and_blas_kernels_agree(rng):
    """The two kernels on the same float32 input (the BLAS one forced by a contiguous copy
    through its own entry point): the same answer to float32 rounding."""
    q, k, v = _qkv(rng, 2, 2, 40, 40, 32, np.float32)
    y_simd, _ = A.attention_forward_infer(q, k, v, True)
    y_blas = np.empty_like(q)
    A._attention_heads_blas(q, k, v, True, np.zeros((0, 0), np.bool_), y_blas)
    assert_close(y_simd, y_blas, **F32, name="simd vs blas")


def test_attention_refuses_bad_shapes(rng):
    q, k, v = _qkv(rng, 1, 2, 4, 3, 16, np.float32)
    with pytest.raises(ValueError, match="more queries"):
        A.attention_forward_infer(q, k, v)
    q, k, v = _qkv(rng, 1, 2, 3, 3, 16, np.float32)
    with pytest.raises(ValueError, match="pad_mask"):
        A.attention_forward_infer(q, k, v, True, np.zeros((1, 2), bool))
