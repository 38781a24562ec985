"""Compressed checkpoints: write a model whose tensors are stored in any encoding of
``deploy.format``, read it back (``load_compressed``, the loader ``nn.checkpoint`` names for
every encoding but fp32), and turn what was read into the weights the runtime runs.

A compressed model in memory is a dict of parameter name -> object, each object what its
technique made:

- a float32 array (dense; also a layer that structured pruning shrank: it is just smaller);
- a ``quant.tensor.QuantizedTensor`` (codes, scales, zero points; ``int2`` .. ``int8``);
- a ``prune.sparse.SparseWeight`` (CSR of w.T with float32 values, or int8 values and one
  scale per output feature): encodings ``csr`` and ``csr-int8``, registered here.

The file is one ``nn.checkpoint`` archive (one SHA-256 over everything, atomic write), so a
damaged file is refused by the archive before any tensor is decoded, and each decoder
refuses an entry it cannot read, naming the tensor. Its size is the size on disk.

What the runtime runs (``runtime_params``): a quantized linear weight that the int8 kernels
take (symmetric, one scale per output channel or per tensor) becomes a
``kernels.PackedInt8Linear`` when the model was quantized with dynamic activations
(``meta["quant"]["activations"] == "dynamic"``) — the runtime then computes what the
simulation ``FakeQuantLinear(activations="dynamic")`` computes; otherwise (weight-only, or a
grid the kernels do not take) its dequantized float32 values, exactly what the weight-only
simulation runs. A CSR weight runs on the CSR kernels when its sparsity reaches their
measured break-even (``prune.sparse.BREAK_EVEN``), else as its dense float32 values (the
file keeps the smaller form either way); everything else is float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicompress.deploy.format import (
    Codec,
    Encoded,
    decode_tensor,
    encode_tensor,
    register_encoding,
)
from minicompress.deploy.runtime import Runtime, RuntimeConfig
from minicompress.kernels import CSR
from minicompress.kernels.reference import check_csr
from minicompress.nn.checkpoint import StoredTensor, read_checkpoint, write_checkpoint
from minicompress.nn.model import TransformerConfig, check_params, linear_names
from minicompress.prune.sparse import BREAK_EVEN, SparseWeight, to_dense_weight
from minicompress.quant.runtime import int8_weights, pack_int8_params
from minicompress.quant.tensor import QuantizedTensor, dequantize_tensor

CSR_F32, CSR_INT8 = "csr", "csr-int8"
RUNTIME_ACTIVATIONS = ("none", "dynamic")  # what the runtime reproduces of the simulation

# ----------------------------------------------------------------------------------------
# the CSR encodings
# ----------------------------------------------------------------------------------------


def encode_sparse(w: SparseWeight) -> Encoded:
    """A SparseWeight as ``csr`` (float32 values) or ``csr-int8`` (int8 values and a
    float32 scale per output feature). Arrays: indptr, indices, data (, scale); attribute
    ``shape`` = [N, K], the shape of w.T."""
    if not isinstance(w, SparseWeight):
        raise TypeError(f"encode_sparse takes a SparseWeight; got {type(w).__name__}")
    m = w.w_t
    arrays = {"indptr": m.indptr, "indices": m.indices, "data": m.data}
    if w.scale is not None:
        arrays["scale"] = np.asarray(w.scale, np.float32)
    encoding = CSR_F32 if w.scale is None else CSR_INT8
    return Encoded(encoding, arrays, {"shape": [int(m.shape[0]), int(m.shape[1])]})


def _canonical(a: np.ndarray) -> np.ndarray:
    """``a`` viewed with NumPy's own dtype object for its type (same bytes, no copy)."""
    return a.view(np.dtype(a.dtype.name)) if a.dtype.isnative else a


def decode_sparse(attrs: dict, arrays: dict) -> SparseWeight:
    """The SparseWeight a ``csr`` / ``csr-int8`` entry stores; an inconsistent structure
    (``kernels.reference.check_csr``), a missing array, a scale that is not finite and
    positive is a ValueError."""
    shape = attrs.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int for n in shape)):
        raise ValueError(f"a CSR tensor's shape must be two integers; got {shape!r}")
    int8 = "scale" in arrays
    want = {"indptr", "indices", "data"} | ({"scale"} if int8 else set())
    if set(arrays) != want:
        raise ValueError(f"a CSR tensor holds arrays {sorted(want)}; got {sorted(arrays)}")
    # the archive's arrays carry non-canonical dtype objects (explicit byte order); the CSR
    # kernels compare dtypes by identity, so view them with the canonical ones
    indptr, indices, data = (_canonical(arrays[k]) for k in ("indptr", "indices", "data"))
    m = CSR(indptr, indices, data, (shape[0], shape[1]))
    try:
        check_csr("w_t", m)
    except TypeError as e:
        raise ValueError(str(e)) from None
    if (m.data.dtype == np.int8) != int8:
        raise ValueError(f"CSR values are {m.data.dtype}: int8 values need a scale, floats none")
    scale = _canonical(arrays["scale"]) if int8 else None
    if int8 and (
        scale.dtype != np.float32
        or scale.shape != (shape[0],)
        or not (np.isfinite(scale).all() and (scale > 0).all())
    ):
        raise ValueError(f"the scale must be float32 [{shape[0]}], finite and positive")
    return SparseWeight(m, scale)


def _register() -> None:
    codec = Codec(encode_sparse, decode_sparse, to_dense_weight)
    for name in (CSR_F32, CSR_INT8):
        register_encoding(name, codec, (SparseWeight,) if name == CSR_F32 else ())


_register()


# ----------------------------------------------------------------------------------------
# save and load
# ----------------------------------------------------------------------------------------


def dense_value(obj) -> np.ndarray:
    """The float32 values a stored object stands for: codes dequantized
    (``quant.tensor.dequantize_tensor``), CSR made dense (``prune.sparse.to_dense_weight``)."""
    if isinstance(obj, QuantizedTensor):
        return dequantize_tensor(obj)
    if isinstance(obj, SparseWeight):
        return to_dense_weight(obj)
    if isinstance(obj, np.ndarray):
        return obj.astype(np.float32, copy=False)
    raise TypeError(f"no dense value for a {type(obj).__name__}")


def dense_params(params: dict) -> dict[str, np.ndarray]:
    """float32 values of every tensor of a compressed model: the weights the simulation
    runs."""
    return {name: dense_value(obj) for name, obj in params.items()}


def save_compressed(
    path: str | Path,
    params: dict,
    cfg: TransformerConfig,
    vocab: list[str],
    meta: dict | None = None,
) -> Path:
    """Write a compressed model (``params``: name -> array / QuantizedTensor / SparseWeight)
    as one checkpoint file; checked before a byte is written (every tensor encodable, the
    dense values a model of ``cfg``). ->  the file written."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict; got {type(params).__name__}")
    check_params(dense_params(params), cfg)
    tensors = {name: StoredTensor(*encode_tensor(obj)) for name, obj in params.items()}
    return write_checkpoint(path, cfg, vocab, tensors, meta)


def load_compressed(path: str | Path) -> tuple[dict, TransformerConfig, list[str], dict]:
    """(params, cfg, vocab, meta) of any checkpoint, every tensor decoded to its object.
    Refused with a one-line ValueError: a damaged or foreign file (the archive's checks),
    an unknown encoding, an entry its decoder cannot read, values that are not a model of
    the config (``check_params``)."""
    ck = read_checkpoint(path)
    params = {
        name: decode_tensor(name, t.encoding, t.attrs, t.arrays) for name, t in ck.tensors.items()
    }
    try:
        check_params(dense_params(params), ck.cfg)
    except ValueError as e:
        raise ValueError(f"checkpoint {str(ck.path)!r} does not match its config: {e}") from None
    return params, ck.cfg, ck.vocab, ck.meta


def file_bytes(path: str | Path) -> int:
    """Bytes on disk of a checkpoint file (header, codes, scales and checksum included)."""
    from minicompress.nn.checkpoint import checkpoint_file

    return checkpoint_file(path).stat().st_size


# ----------------------------------------------------------------------------------------
# what the runtime runs
# ----------------------------------------------------------------------------------------


def sparse_fraction(w: SparseWeight) -> float:
    """Fraction of zeros of the dense weight a SparseWeight stands for."""
    n, k = w.w_t.shape
    return 1.0 - w.w_t.data.size / (n * k)


def _int8_kernel_takes(name: str, qt: QuantizedTensor) -> bool:
    try:
        int8_weights(name, qt)
    except ValueError:
        return False
    return True


def runtime_params(params: dict, cfg: TransformerConfig, activations: str = "none") -> dict:
    """The weights the runtime runs for a compressed model (see the module docstring).

    activations: "dynamic" (W8A8 dynamic: quantized linear weights on the int8 kernels) or
    "none" (weight-only: every quantized tensor dequantized to float32).
    """
    if activations not in RUNTIME_ACTIVATIONS:
        raise ValueError(
            f"the runtime runs activations {' or '.join(RUNTIME_ACTIVATIONS)}; got "
            f"{activations!r} (a static-activation model runs in the simulation only)"
        )
    layers = {n + ".w": n for n in linear_names(cfg)}
    packable = {
        key: obj
        for key, obj in params.items()
        if isinstance(obj, QuantizedTensor)
        and key in layers
        and activations == "dynamic"
        and _int8_kernel_takes(layers[key], obj)
    }
    out = {}
    for key, obj in params.items():
        if isinstance(obj, QuantizedTensor) and key not in packable:
            out[key] = dequantize_tensor(obj)
        elif isinstance(obj, SparseWeight) and sparse_fraction(obj) < BREAK_EVEN:
            out[key] = to_dense_weight(obj)  # the dense product is faster below break-even
        else:
            out[key] = obj
    return pack_int8_params(out, cfg, packable) if packable else out


def load_runtime(path: str | Path, rc: RuntimeConfig | None = None) -> tuple[Runtime, list, dict]:
    """A ``Runtime`` for a checkpoint file of any encoding -> (runtime, vocab, meta)."""
    params, cfg, vocab, meta = load_compressed(path)
    quant = meta.get("quant") if isinstance(meta.get("quant"), dict) else {}
    activations = quant.get("activations", "none")
    return Runtime(runtime_params(params, cfg, activations), cfg, rc), vocab, meta
