"""The compressed checkpoint format: one encoding per tensor, one registry for every
technique.

A checkpoint stores each tensor as an *encoding* (a name), its arrays by role and a few
JSON attributes. This module holds the encoders and decoders, as pure functions, and the
registry that maps an encoding's name to them:

- ``fp32``: role ``values``, float32, the tensor itself;
- ``int2`` ... ``int8`` (quantized, ``quant.tensor.QuantizedTensor``): role ``codes``, the
  codes shifted to start at 0 (``q - q_min``) and packed ``bits`` to a bit stream, low
  bits first (int8: one per byte; int4: two per byte; int2: four; int3, int5-7 across
  byte boundaries); ``scale`` (float32, or float16 when the quantizer rounded the scales
  to it), in the shape of the scales; ``zero_point`` (asymmetric only), packed like the
  codes. Attributes: ``shape``, ``bits``, ``scheme``, ``granularity``, ``axis``,
  ``group_size``, ``narrow``, ``scale_dtype``.

Another technique adds its encoding with ``register_encoding(name, Codec(...), types)``:
an encoder ``obj -> Encoded``, a decoder ``(attrs, arrays) -> obj`` that refuses what it
cannot read, and ``to_dense(obj) -> float32``. Pruning's ``csr`` (``prune.sparse``: CSR of
w.T with float32 or int8 values) is registered so, below: no new format.

A compressed model in memory is a dict of parameter name -> tensor, each what its
technique made: a float32 array (also a layer that structured pruning shrank: it is just
smaller), a ``QuantizedTensor``, a ``SparseWeight``. ``save_compressed`` writes one through
``nn.checkpoint.write_checkpoint`` (one file, atomic, SHA-256, format version);
``read_compressed`` decodes every tensor (for a runtime:
the QuantizedTensors); ``load_compressed`` returns float32 parameters like
``load_checkpoint``, ``load_quantized`` adds the linear that simulates the recorded
activation quantization (for ``eval``, ``generate``), ``load_int8`` packs the stored codes
for the int8 kernels. The size of a compressed
model is the size of its file on disk: codes, scales, zero points, header and checksum
included (``file_bytes``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicompress.nn.checkpoint import (
    StoredTensor,
    check_savable,
    checkpoint_file,
    read_checkpoint,
    write_checkpoint,
)
from minicompress.nn.model import TransformerConfig, check_params
from minicompress.prune.sparse import (
    CSR_ENCODING,
    SparseWeight,
    decode_sparse_weight,
    encode_sparse_weight,
    to_dense_weight,
)
from minicompress.quant import formulas as F
from minicompress.quant.pipeline import simulation_linear
from minicompress.quant.runtime import pack_int8_params
from minicompress.quant.tensor import QuantizedTensor, QuantSpec, dequantize_tensor, scale_shape

FP32 = "fp32"
INT_ENCODINGS = tuple(f"int{n}" for n in range(F.BITS_RANGE[0], F.BITS_RANGE[1] + 1))


# One tensor as a checkpoint stores it: (encoding, arrays by role, JSON attributes).
Encoded = StoredTensor


class Codec(NamedTuple):
    encode: Callable[[object], Encoded]  # the in-memory object -> Encoded
    decode: Callable[[dict, dict], object]  # (attrs, arrays) -> the in-memory object
    to_dense: Callable[[object], np.ndarray]  # the object -> float32 values


# ----------------------------------------------------------------------------------------
# bit packing
# ----------------------------------------------------------------------------------------


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers < 2**bits into a bit stream, ``bits`` per value, the first
    value in the lowest bits of the first byte.

    values: integer [n] in [0, 2**bits)  ->  uint8 [ceil(n * bits / 8)].
    bits 8: one value per byte; 4: two (v0 | v1 << 4); 2: four; 3, 5, 6, 7: values
    straddle bytes.
    """
    bits = F.check_bits(bits)
    v = np.asarray(values).reshape(-1)
    if v.size and (v.min() < 0 or v.max() >= 2**bits):
        raise ValueError(f"values must lie in [0, {2**bits}) to pack in {bits} bits")
    v = v.astype(np.uint8)
    if bits == 8:
        return v.copy()
    stream = np.unpackbits(v[:, None], axis=1, bitorder="little")[:, :bits]  # [n, bits]
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The inverse of ``pack_bits``: uint8 [ceil(n * bits / 8)] -> uint8 [n]."""
    bits = F.check_bits(bits)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != packed_size(n, bits):
        raise ValueError(
            f"{n} values of {bits} bits take {packed_size(n, bits)} bytes (uint8, 1-D); got "
            f"{packed.dtype} {packed.shape}"
        )
    if bits == 8:
        return packed.copy()
    stream = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits)
    return np.packbits(stream, axis=1, bitorder="little")[:, 0]


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` values of ``bits`` bits take when packed."""
    return -(-n * bits // 8)


# ----------------------------------------------------------------------------------------
# fp32
# ----------------------------------------------------------------------------------------


def encode_fp32(a: np.ndarray) -> Encoded:
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
        raise TypeError(f"fp32 encodes a real float array; got {type(a).__name__}")
    return Encoded(FP32, {"values": a.astype(np.float32, copy=False)}, {})


def decode_fp32(attrs: dict, arrays: dict) -> np.ndarray:
    if set(arrays) != {"values"} or arrays["values"].dtype != np.float32:
        got = {role: str(a.dtype) for role, a in arrays.items()}
        raise ValueError(f"an fp32 tensor is one float32 array 'values'; got {got}")
    return arrays["values"]


# ----------------------------------------------------------------------------------------
# int2 ... int8
# ----------------------------------------------------------------------------------------

_SPEC_FIELDS = ("bits", "scheme", "granularity", "axis", "group_size", "narrow", "scale_dtype")


def encode_quantized(qt: QuantizedTensor) -> Encoded:
    """A QuantizedTensor as ``int{bits}``: packed codes, scales, packed zero points."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"encode_quantized takes a QuantizedTensor; got {type(qt).__name__}")
    spec = qt.spec
    q_min, _ = spec.code_range()
    arrays = {
        "codes": pack_bits(qt.q.reshape(-1) - q_min, spec.bits),
        "scale": np.ascontiguousarray(qt.scale, dtype=np.dtype(spec.scale_dtype)),
    }
    if spec.scheme == "asymmetric":
        arrays["zero_point"] = pack_bits(qt.zero_point.reshape(-1), spec.bits)
    attrs = {"shape": list(qt.q.shape), **{k: getattr(spec, k) for k in _SPEC_FIELDS}}
    return Encoded(f"int{spec.bits}", arrays, attrs)


def _spec_from_attrs(attrs: dict) -> tuple[QuantSpec, tuple[int, ...]]:
    missing = [k for k in (*_SPEC_FIELDS, "shape") if k not in attrs]
    if missing:
        raise ValueError(f"a quantized tensor's attributes lack {missing}")
    shape = attrs["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 1 for n in shape):
        raise ValueError(f"a quantized tensor's shape must be positive integers; got {shape!r}")
    try:
        spec = QuantSpec(**{k: attrs[k] for k in _SPEC_FIELDS})
    except (TypeError, ValueError) as e:
        raise ValueError(f"a quantized tensor's attributes are invalid ({e})") from None
    return spec, tuple(shape)


def decode_quantized(attrs: dict, arrays: dict) -> QuantizedTensor:
    """The QuantizedTensor an ``int{bits}`` entry stores; anything inconsistent (array
    sizes, dtypes, scales not finite and positive, codes or zero points off the grid) is
    a ValueError naming it."""
    spec, shape = _spec_from_attrs(attrs)
    roles = {"codes", "scale"} | ({"zero_point"} if spec.scheme == "asymmetric" else set())
    if set(arrays) != roles:
        raise ValueError(
            f"an int{spec.bits} tensor holds arrays {sorted(roles)}; got {sorted(arrays)}"
        )
    n = math.prod(shape)
    q_min, q_max = spec.code_range()
    q = unpack_bits(arrays["codes"], spec.bits, n).astype(np.int32) + q_min
    if q.max() > q_max:
        raise ValueError(f"codes beyond the grid's top {q_max}: the file is damaged")
    s_shape = scale_shape(shape, spec)
    scale = arrays["scale"]
    if scale.dtype != np.dtype(spec.scale_dtype) or scale.shape != s_shape:
        raise ValueError(
            f"scale must be {spec.scale_dtype} {s_shape}; got {scale.dtype} {scale.shape}"
        )
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scales must be finite and positive")
    if spec.scheme == "asymmetric":
        z = unpack_bits(arrays["zero_point"], spec.bits, math.prod(s_shape))
        zero_point = z.astype(np.int32).reshape(s_shape)
    else:
        zero_point = np.zeros(s_shape, np.int32)
    return QuantizedTensor(q.reshape(shape), scale, zero_point, spec)


# ----------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------

CODECS: dict[str, Codec] = {FP32: Codec(encode_fp32, decode_fp32, lambda a: a)}
for _name in INT_ENCODINGS:
    CODECS[_name] = Codec(encode_quantized, decode_quantized, dequantize_tensor)
ENCODERS: list[tuple[type, Codec]] = [
    (QuantizedTensor, CODECS["int8"]),  # before ndarray: a NamedTuple is not an array
    (np.ndarray, CODECS[FP32]),
]


def register_encoding(name: str, codec: Codec, types: tuple[type, ...] = ()) -> None:
    """Add an encoding: ``codec`` reads and writes it; objects of ``types`` are encoded
    with ``codec.encode`` by ``encode_tensor``. A name already taken is refused."""
    if not isinstance(name, str) or not name or name in CODECS:
        raise ValueError(f"encoding name {name!r} is empty or already registered")
    if not isinstance(codec, Codec):
        raise TypeError(f"codec must be a Codec(encode, decode, to_dense); got {type(codec)}")
    CODECS[name] = codec
    ENCODERS[:0] = [(t, codec) for t in types]


# pruning's sparse weights: CSR of w.T, float32 or int8 values (prune/sparse.py)
register_encoding(
    CSR_ENCODING,
    Codec(encode_sparse_weight, decode_sparse_weight, to_dense_weight),
    (SparseWeight,),
)


def codec_of(obj: object) -> Codec:
    """The codec of a parameter as what it is: an array fp32, a QuantizedTensor intN, an
    object of a registered type its registered codec."""
    for kind, codec in ENCODERS:
        if isinstance(obj, kind):
            return codec
    raise TypeError(f"no encoding for a {type(obj).__name__}; register one")


def encode_tensor(obj: object) -> Encoded:
    """Encode a parameter as what it is (see ``codec_of``)."""
    return codec_of(obj).encode(obj)


def decode_tensor(name: str, encoding: str, attrs: dict, arrays: dict) -> object:
    """The in-memory object one stored tensor stands for; an unknown encoding or a
    malformed entry is a one-line ValueError naming the tensor."""
    codec = CODECS.get(encoding)
    if codec is None:
        raise ValueError(
            f"tensor {name!r} has encoding {encoding!r}, which this minicompress does not "
            f"read (it reads {', '.join(sorted(CODECS))})"
        )
    try:
        return codec.decode(attrs, arrays)
    except ValueError as e:
        raise ValueError(f"tensor {name!r} ({encoding}): {e}") from None


def to_dense(encoding: str, obj: object) -> np.ndarray:
    """float32 values of a decoded tensor (dequantized codes, a dense matrix of CSR...)."""
    return CODECS[encoding].to_dense(obj)


# ----------------------------------------------------------------------------------------
# compressed checkpoints
# ----------------------------------------------------------------------------------------


class CompressedModel(NamedTuple):
    """A compressed checkpoint as loaded."""

    params: dict[str, np.ndarray]  # float32 values of every tensor: the simulation's model
    cfg: TransformerConfig
    vocab: list[str]
    meta: dict
    tensors: dict[str, object]  # decoded: ndarray (fp32), QuantizedTensor (intN), ...
    encodings: dict[str, str]  # name -> encoding
    path: Path  # the file
    file_bytes: int  # its size on disk


def dense_value(obj: object) -> np.ndarray:
    """The float32 values a tensor in memory stands for: an array itself, codes dequantized
    (``quant.tensor.dequantize_tensor``), CSR made dense (``prune.sparse.to_dense_weight``)."""
    return codec_of(obj).to_dense(obj)


def dense_params(params: dict) -> dict[str, np.ndarray]:
    """float32 values of every tensor of a compressed model in memory (name -> array,
    QuantizedTensor, SparseWeight...): the weights its simulation runs."""
    return {name: dense_value(obj) for name, obj in params.items()}


def save_compressed(
    path: str | Path,
    params: dict,
    cfg: TransformerConfig,
    vocab: list[str],
    meta: dict | None = None,
) -> Path:
    """Write a model whose tensors are objects of any encoding (``params``: name -> float
    array, ``QuantizedTensor``, ``SparseWeight``, or a registered type) as one checkpoint
    file, atomically, with the checksum of ``nn.checkpoint``. Everything is checked before
    a byte is written: each tensor encodes and decodes back to values of its parameter's
    shape, and those values make the config's model. ->  the file written."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> tensor; got {type(params).__name__}")
    tensors, dense = {}, {}
    for name, obj in params.items():
        enc = encode_tensor(obj)
        tensors[name] = enc
        dense[name] = to_dense(
            enc.encoding, decode_tensor(name, enc.encoding, enc.attrs, enc.arrays)
        )
    check_savable(dense, cfg, vocab, meta)
    return write_checkpoint(path, cfg, vocab, tensors, meta)


def read_compressed(path: str | Path) -> CompressedModel:
    """Every tensor of a checkpoint decoded, dense or compressed (see ``CompressedModel``).
    Refused with a one-line ValueError: what ``nn.checkpoint.read_checkpoint`` refuses (a
    missing, truncated, altered, foreign or pickled file, another format version), an
    unknown encoding, a malformed tensor, tensors that do not make the config's model."""
    ck = read_checkpoint(path)
    where = f"checkpoint {str(ck.path)!r}"
    tensors, params, encodings = {}, {}, {}
    for name, t in ck.tensors.items():
        try:
            obj = decode_tensor(name, t.encoding, t.attrs, t.arrays)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        tensors[name], encodings[name] = obj, t.encoding
        params[name] = to_dense(t.encoding, obj)
    try:
        check_params(params, ck.cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the tensors do not make the config's model: {e}") from None
    size = os.path.getsize(ck.path)
    return CompressedModel(params, ck.cfg, ck.vocab, ck.meta, tensors, encodings, ck.path, size)


def load_compressed(path: str | Path) -> tuple[dict, TransformerConfig, list[str], dict]:
    """``load_checkpoint`` for any checkpoint, dense or compressed: (params, config, vocab,
    meta) with every tensor as float32 values (quantized ones dequantized)."""
    m = read_compressed(path)
    return m.params, m.cfg, m.vocab, m.meta


def file_bytes(path: str | Path) -> int:
    """The size on disk of a checkpoint (its folder or its file)."""
    return os.path.getsize(checkpoint_file(path))


def load_quantized(path: str | Path) -> tuple[dict, TransformerConfig, list[str], dict, object]:
    """(params, cfg, vocab, meta, linear) of any checkpoint, for ``eval`` and ``generate``:
    float32 parameters (dequantized) and the linear that simulates the activation
    quantization the checkpoint records (``quant.pipeline.simulation_linear``; DENSE for a
    weight-only or dense model)."""
    params, cfg, vocab, meta = load_compressed(path)
    return params, cfg, vocab, meta, simulation_linear(meta)


def load_int8(
    path: str | Path, kernel_path: str | None = None
) -> tuple[dict, TransformerConfig, list[str], dict]:
    """A quantized checkpoint ready for the int8 runtime: (params, cfg, vocab, meta) where
    every linear weight stored with codes the int8 kernel takes is a ``PackedInt8Linear``
    built from those codes (no re-quantization; ``quant.runtime.pack_int8_params``), the
    rest float32. Run it with ``linear=quant.runtime.INT8``. A linear weight whose encoding
    the kernel cannot run (asymmetric, group-wise) is refused, naming it."""
    m = read_compressed(path)
    qtensors = {k: t for k, t in m.tensors.items() if isinstance(t, QuantizedTensor)}
    return pack_int8_params(m.params, m.cfg, qtensors, kernel_path), m.cfg, m.vocab, m.meta
