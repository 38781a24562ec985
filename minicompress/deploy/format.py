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
cannot read, and ``to_dense(obj) -> float32`` (e.g. CSR for a pruned weight). No new
format, no change here.

The size of a compressed model is the size of its file on disk: codes, scales, zero
points, header and checksum included (``file_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from minicompress.quant import formulas as F
from minicompress.quant.tensor import QuantizedTensor, QuantSpec, dequantize_tensor, scale_shape

FP32 = "fp32"
INT_ENCODINGS = tuple(f"int{n}" for n in range(F.BITS_RANGE[0], F.BITS_RANGE[1] + 1))


class Encoded(NamedTuple):
    """One tensor as a checkpoint stores it (the fields of ``nn.checkpoint.StoredTensor``)."""

    encoding: str  # "fp32", "int4", ...
    arrays: dict[str, np.ndarray]  # by role: {"values": w}, {"codes", "scale", ...}
    attrs: dict  # JSON-safe parameters of the encoding


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
ENCODERS: list[tuple[type, Callable[[object], Encoded]]] = [
    (QuantizedTensor, encode_quantized),  # before ndarray: a NamedTuple is not an array
    (np.ndarray, encode_fp32),
]


def register_encoding(name: str, codec: Codec, types: tuple[type, ...] = ()) -> None:
    """Add an encoding: ``codec`` reads and writes it; objects of ``types`` are encoded
    with ``codec.encode`` by ``encode_tensor``. A name already taken is refused."""
    if not isinstance(name, str) or not name or name in CODECS:
        raise ValueError(f"encoding name {name!r} is empty or already registered")
    if not isinstance(codec, Codec):
        raise TypeError(f"codec must be a Codec(encode, decode, to_dense); got {type(codec)}")
    CODECS[name] = codec
    ENCODERS[:0] = [(t, codec.encode) for t in types]


def encode_tensor(obj: object) -> Encoded:
    """Encode a parameter as what it is: an array as fp32, a QuantizedTensor as intN, an
    object of a registered type with its encoder."""
    for kind, encode in ENCODERS:
        if isinstance(obj, kind):
            return encode(obj)
    raise TypeError(f"no encoding for a {type(obj).__name__}; register one")


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
