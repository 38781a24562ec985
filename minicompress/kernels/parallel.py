"""The one parallel driver of every int8 layer kernel: who quantizes which rows, and which
thread computes which part of the output.

``run_layer(path, ...)`` is the int8 linear layer (``reference.quantized_linear_reference``)
for one path (``"portable"``, ``"avx2"``, ``"vnni"``, ``"amx"``). It runs the same steps
whatever the path:

1. check the arrays (``int8_quant.layer_status`` and the path's ``weight_status``);
2. a product too small to share (``serial``), or with few rows (the path's
   ``split_columns``): quantize every row on this thread, then share the *columns* among
   the threads, a panel of column units each (so M = 1 still uses every core);
3. otherwise share the *rows*: one chunk per thread (a multiple of the path's
   ``row_multiple``), which quantizes its rows and computes all their columns;

in one parallel region per call (waking the other threads can cost a scheduler time slice
on a busy machine). What differs between paths is a few small Numba functions, looked up
by name in the path's module (``register``) when ``run_layer`` is compiled for that path;
a path module defines only those that differ from ``DEFAULTS`` below:

- ``linear_rows(q, work, m0, m1, weight, u0, u1, n, s_x, z_x, col_sum, w_scale, bias,
  has_bias, y)``: y[m0:m1, columns of units u0:u1] from the quantized rows (required);
- ``column_units(weight, n)``: how many column units the weight has (required);
- ``weight_status(weight, k, n)``: OK, BAD_SHAPES or BAD_VALUES for the path's layout
  (required);
- ``q_width(weight, k)``: columns of the quantized rows (default 4 * weight.shape[1],
  for the layouts that group 4 k);
- ``q_rows(m)``: rows of the quantized activations (default m);
- ``split_columns(m, weight, threads)``: share columns rather than rows (default m < 8);
- ``panel(m, units, threads)``: column units per work item when columns are shared
  (default 1);
- ``row_multiple()``: rows per chunk are a multiple of it (default 1);
- ``workspace(q, m)`` and ``prepare(q, work, m0, m1)``: extra buffers made once per call and
  filled from the quantized rows m0:m1 (AMX copies them into tiles; default: none).

The path and the function names are compile-time constants (string literals), so Numba
compiles one specialization per path with the path's functions inlined; nothing is looked
up while a layer runs. With ``NUMBA_DISABLE_JIT=1`` the same code runs as Python (only the
portable path is allowed then).

Each path exposes three kernels that call it, with the arguments of the layer (x, weight,
col_sum, w_scale, bias, has_bias, y): ``linear_kernel`` (dynamic activation ranges, all
threads), ``linear_kernel_serial`` (the same on the calling thread, ``run_layer_serial``: the
same steps compiled without Numba's parallel machinery) and ``linear_kernel_full`` (also
``serial`` and ``options``: a static ``act_scale`` and ``act_zp``, int8 activations carried
in and out, the activation of ``epilogue.py``). Every argument costs 0.15-0.2 us to pass
from Python, a few percent of a call at M = 1, so the common calls pass only what they need.

Carried activations and epilogue: given x's codes (``q_in``), step 2/3 skip the
quantization; given an activation or output codes, step 3 computes a thread's chunk in blocks
of ``epilogue.EPILOGUE_ROWS`` rows and runs ``epilogue.epilogue_rows`` on each block as soon
as it is done (step 2: on all rows once the columns are done, the rows shared).

``run_layer`` is not cached itself: each path's kernels call it and cache it as part of
their own machine code, keyed on their own module's imports (``cache.py``), which include
the path module whose functions it inlines.
"""

from __future__ import annotations

import numpy as np
from numba import literally, njit, prange, types
from numba.extending import overload

from minicompress.kernels.epilogue import ACT_NONE, EPILOGUE_ROWS, epilogue_fits, epilogue_rows
from minicompress.kernels.int8_quant import (
    BAD_SHAPES,
    NOT_FINITE,
    OK,
    layer_status,
    quantize_rows,
)
from minicompress.kernels.threads import threads_here

MIN_ROWS_SPLIT_M = 8  # with fewer rows, the threads share the columns (default split_columns)

_PATHS: dict[str, object] = {}  # path -> the object whose attributes are its steps


def register(path: str, steps: object) -> None:
    """Make the Numba functions that are attributes of ``steps`` (a path's module, or a
    namespace) the steps of ``run_layer(path, ...)``."""
    _PATHS[path] = steps


# ----------------------------------------------------------------------------------------
# the steps a path may leave out
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _q_width(weight, k):
    return 4 * weight.shape[1]


@njit(cache=True, nogil=True)
def _q_rows(m):
    return m


@njit(cache=True, nogil=True)
def _split_columns(m, weight, threads):
    return m < MIN_ROWS_SPLIT_M


@njit(cache=True, nogil=True)
def _panel(m, units, threads):
    return 1


@njit(cache=True, nogil=True)
def _row_multiple():
    return 1


@njit(cache=True, nogil=True)
def _workspace(q, m):
    return q  # no buffer of its own: the quantized rows are what the path reads


@njit(cache=True, nogil=True)
def _prepare(q, work, m0, m1):
    return None


DEFAULTS = {
    "q_width": _q_width,
    "q_rows": _q_rows,
    "split_columns": _split_columns,
    "panel": _panel,
    "row_multiple": _row_multiple,
    "workspace": _workspace,
    "prepare": _prepare,
}


def _step(path: str, name: str):
    """The function ``name`` of the path's module, or its default."""
    module = _PATHS.get(path)
    if module is None:
        raise ValueError(f"no int8 layer kernel is registered for path {path!r}")
    found = getattr(module, name, None)
    if found is None:
        found = DEFAULTS.get(name)
    if found is None:
        raise NotImplementedError(f"path {path!r} must define {name}()")
    return found


def step(path, name, *args):
    """Call the step ``name`` of ``path`` (plain Python, for ``NUMBA_DISABLE_JIT=1``)."""
    return _step(path, name)(*args)


@overload(step, prefer_literal=True)
def _ol_step(path, name, *args):
    if not (isinstance(path, types.StringLiteral) and isinstance(name, types.StringLiteral)):
        return None
    function = _step(path.literal_value, name.literal_value)
    return lambda path, name, *args: function(*args)


# ----------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------


def _run_layer(path, x, weight, col_sum, w_scale, bias, has_bias, y, serial, options):
    """The int8 linear layer on ``path``: the steps of the module docstring.

    x: float32 [M, K]; weight: the path's packed int8 weights; col_sum: int32 [N];
    w_scale, bias: float32 [N] (bias read only if has_bias); y: float32 [M, N], written;
    serial: run on the calling thread only; options: the tuple (act_scale, act_zp, q_in,
    s_in, z_in, act, q_out, s_out, z_out) (``options()`` makes the plain one):

    - act_scale, act_zp: float32 > 0 and int32 for a static activation quantization
      (``int8_quant.quantize_rows``), or 0 and 0 for dynamic per-row ranges;
    - q_in, s_in, z_in: x's rows already quantized (``carried.py``: uint8
      [>= q_rows(M), q_width], float32 [M], int32 [M]), used instead of quantizing x; 0 rows:
      none;
    - act: ``epilogue.ACT_*``, applied to y in place; q_out, s_out, z_out: y's rows (after
      act) quantized for the next layer (uint8 [>= M, >= N], float32 [>= M], int32 [>= M];
      0 rows: none). Both run on blocks of ``EPILOGUE_ROWS`` rows as soon as the layer has
      computed them (``epilogue.py``).

    Returns ``int8_quant.OK``, ``NOT_FINITE`` (x holds NaN or inf, or a row's range
    overflows float32; y is then undefined), ``BAD_SHAPES`` or ``BAD_VALUES``.
    """
    literally(path)
    act_scale, act_zp, q_in, s_in, z_in, act, q_out, s_out, z_out = options
    m_total, k = x.shape
    n = y.shape[1]
    status = layer_status(x, col_sum, w_scale, bias, y)
    if status == OK:
        status = step(path, "weight_status", weight, k, n)
    if status == OK and not epilogue_fits(m_total, n, act, q_out, s_out, z_out):
        status = BAD_SHAPES
    carried = q_in.shape[0] > 0
    rows, width = step(path, "q_rows", m_total), step(path, "q_width", weight, k)
    if status == OK and carried:
        if q_in.shape[0] < rows or q_in.shape[1] != width or s_in.size < m_total:
            status = BAD_SHAPES
        elif z_in.size < m_total:
            status = BAD_SHAPES
    if status != OK:
        return status
    epilogue = act != ACT_NONE or q_out.shape[0] > 0
    if carried:
        q, s_x, z_x = q_in, s_in, z_in
    else:
        q = np.empty((rows, width), np.uint8)
        s_x = np.empty(m_total, dtype=np.float32)  # [M] activation scale of each row
        z_x = np.empty(m_total, dtype=np.int32)  # [M] and its zero point
    work = step(path, "workspace", q, m_total)
    units = step(path, "column_units", weight, n)
    threads = 1 if serial else threads_here()
    finite = True
    if serial or step(path, "split_columns", m_total, weight, threads):
        # few rows: quantize them all here, then share the columns
        if not carried:
            finite = quantize_rows(x, q, s_x, z_x, 0, m_total, act_scale, act_zp)
        step(path, "prepare", q, work, 0, q.shape[0])
        panel = step(path, "panel", m_total, units, threads)
        n_parts = -(-units // panel)
        if finite and serial:
            step(
                path,
                "linear_rows",
                q,
                work,
                0,
                m_total,
                weight,
                0,
                units,
                n,
                s_x,
                z_x,
                col_sum,
                w_scale,
                bias,
                has_bias,
                y,
            )
            if epilogue:
                finite = epilogue_rows(y, 0, m_total, act, q_out, s_out, z_out)
        elif finite:  # (a conditional inside prange's argument would make it a plain range)
            for p in prange(n_parts):
                u0, u1 = p * panel, min(units, (p + 1) * panel)
                step(
                    path,
                    "linear_rows",
                    q,
                    work,
                    0,
                    m_total,
                    weight,
                    u0,
                    u1,
                    n,
                    s_x,
                    z_x,
                    col_sum,
                    w_scale,
                    bias,
                    has_bias,
                    y,
                )
            if epilogue:  # every column of a row is done: share the rows
                n_row_parts = min(threads, m_total)
                part_finite = np.empty(n_row_parts, dtype=np.bool_)
                for p in prange(n_row_parts):
                    r0, r1 = p * m_total // n_row_parts, (p + 1) * m_total // n_row_parts
                    part_finite[p] = epilogue_rows(y, r0, r1, act, q_out, s_out, z_out)
                for p in range(n_row_parts):
                    finite &= part_finite[p]
    else:
        # many rows: one chunk of rows per thread, quantized by the thread that uses them
        multiple = step(path, "row_multiple")
        chunk = -(-m_total // (threads * multiple)) * multiple
        block = -(-EPILOGUE_ROWS // multiple) * multiple if epilogue else chunk
        n_chunks = -(-m_total // chunk)
        chunk_finite = np.empty(n_chunks, dtype=np.bool_)
        for c in prange(n_chunks):
            m0, m1 = c * chunk, min(m_total, (c + 1) * chunk)
            ok = True
            if not carried:
                ok = quantize_rows(x, q, s_x, z_x, m0, m1, act_scale, act_zp)
            step(path, "prepare", q, work, m0, min(q.shape[0], m0 + chunk))
            for b0 in range(m0, m1, block):  # one block, unless there is an epilogue
                b1 = min(m1, b0 + block)
                step(
                    path,
                    "linear_rows",
                    q,
                    work,
                    b0,
                    b1,
                    weight,
                    0,
                    units,
                    n,
                    s_x,
                    z_x,
                    col_sum,
                    w_scale,
                    bias,
                    has_bias,
                    y,
                )
                if epilogue:
                    ok &= epilogue_rows(y, b0, b1, act, q_out, s_out, z_out)
            chunk_finite[c] = ok
        for c in range(n_chunks):
            finite &= chunk_finite[c]
    return OK if finite else NOT_FINITE


run_layer = njit(parallel=True, nogil=True)(_run_layer)
# The same steps compiled without the parallel machinery, for the products too small to
# share (``serial`` True): calling a parallel function costs 0.2-0.3 us more, measured on
# the 4-6 us layer at M = 1.
run_layer_serial = njit(nogil=True)(_run_layer)

NO_SCALE, NO_ZERO_POINT = np.float32(0.0), np.int32(0)  # act_scale = 0: dynamic ranges


@njit(cache=True, nogil=True)
def options():
    """``run_layer``'s options for a plain dynamic layer: per-row ranges, nothing carried in
    or out, no activation. Made inside the kernel that calls (a global array would be a
    read-only constant, a type of its own)."""
    q, s, z = np.empty((0, 0), np.uint8), np.empty(0, np.float32), np.empty(0, np.int32)
    return (NO_SCALE, NO_ZERO_POINT, q, s, z, np.int64(ACT_NONE), q, s, z)
