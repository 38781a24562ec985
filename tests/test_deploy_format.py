"""minicompress/deploy/format.py: bit packing by hand and by properties, every quantized
encoding round-tripped, damaged entries refused, the registry extended by another codec;
compressed checkpoints saved and read, their real sizes, damaged files refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicompress.deploy import format as fmt
from minicompress.nn.checkpoint import (
    StoredTensor,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.prune.sparse import load_sparse, save_sparse, unpack_sparse
from minicompress.quant import ptq
from minicompress.quant.tensor import QuantSpec, dequantize_tensor, quantize_tensor

# ----------------------------------------------------------------------------------------
# bit packing
# ----------------------------------------------------------------------------------------


def test_pack_bits_by_hand():
    assert fmt.pack_bits(np.array([1, 2, 3]), 4).tolist() == [0x21, 0x03]  # two per byte
    # 2 bits: 1 | 2 << 2 | 3 << 4 | 0 << 6 = 57, then 1
    assert fmt.pack_bits(np.array([1, 2, 3, 0, 1]), 2).tolist() == [57, 1]
    # 3 bits, low bits first: 5 = 101, 3 = 011, 7 = 111 -> stream 1,0,1, 1,1,0, 1,1,1
    # byte 0 = bits 1,0,1,1,1,0,1,1 (LSB first) = 1 + 4 + 8 + 16 + 64 + 128 = 221; byte 1 = 1
    assert fmt.pack_bits(np.array([5, 3, 7]), 3).tolist() == [221, 1]
    assert fmt.pack_bits(np.array([0, 255, 7]), 8).tolist() == [0, 255, 7]
    assert fmt.packed_size(5, 3) == 2 and fmt.packed_size(16, 4) == 8


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 8), st.integers(0, 50), st.data())
def test_pack_unpack_round_trip(bits, n, data):
    values = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)))
    packed = fmt.pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8)
    assert np.array_equal(fmt.unpack_bits(packed, bits, n), values.astype(np.uint8))


def test_pack_refuses_values_off_the_grid():
    with pytest.raises(ValueError, match=r"values must lie in \[0, 16\) to pack in 4 bits"):
        fmt.pack_bits(np.array([3, 16]), 4)
    with pytest.raises(ValueError, match="values must lie in"):
        fmt.pack_bits(np.array([-1]), 8)
    with pytest.raises(ValueError, match="3 values of 4 bits take 2 bytes"):
        fmt.unpack_bits(np.zeros(3, np.uint8), 4, 3)


# ----------------------------------------------------------------------------------------
# encodings
# ----------------------------------------------------------------------------------------

SPECS = [
    QuantSpec(8, "asymmetric", "channel"),
    QuantSpec(8, "symmetric", "tensor"),
    QuantSpec(8, "symmetric", "channel", narrow=False),
    QuantSpec(4, "asymmetric", "group", group_size=8, scale_dtype="float16"),
    QuantSpec(4, "symmetric", "group", group_size=16),
    QuantSpec(3, "asymmetric", "group", group_size=8),
    QuantSpec(2, "asymmetric", "tensor"),
    QuantSpec(5, "log", "channel"),
    QuantSpec(6, "asymmetric", "channel", axis=0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.bits}{s.scheme[:3]}{s.granularity}")
def test_quantized_round_trip(spec, rng):
    w = rng.standard_normal((32, 12)).astype(np.float32)
    qt = quantize_tensor(w, spec)
    enc = fmt.encode_tensor(qt)
    assert enc.encoding == f"int{spec.bits}"
    assert enc.arrays["codes"].nbytes == -(-w.size * spec.bits // 8)  # really packed
    assert ("zero_point" in enc.arrays) == (spec.scheme == "asymmetric")
    back = fmt.decode_tensor("w", enc.encoding, enc.attrs, enc.arrays)
    assert np.array_equal(back.q, qt.q) and back.spec == spec
    assert np.array_equal(back.scale, qt.scale) and back.scale.dtype == qt.scale.dtype
    assert np.array_equal(back.zero_point, qt.zero_point)
    assert np.array_equal(fmt.to_dense(enc.encoding, back), dequantize_tensor(qt))


def test_fp32_round_trip(rng):
    w = rng.standard_normal((3, 4)).astype(np.float32)
    enc = fmt.encode_tensor(w)
    assert enc.encoding == "fp32" and enc.attrs == {}
    assert np.array_equal(fmt.decode_tensor("w", "fp32", {}, enc.arrays), w)
    with pytest.raises(ValueError, match="tensor 'w' \\(fp32\\): an fp32 tensor is one float32"):
        fmt.decode_tensor("w", "fp32", {}, {"values": w.astype(np.float64)})


GROUP4 = QuantSpec(4, "asymmetric", "group", group_size=8)


def _encoded(rng, spec=GROUP4):
    return fmt.encode_tensor(quantize_tensor(rng.standard_normal((16, 4)).astype(np.float32), spec))


def test_damaged_entries_are_refused(rng):
    enc = _encoded(rng)

    def decode(attrs=None, **arrays):
        return fmt.decode_tensor(
            "blocks.0.mlp.fc.w", enc.encoding, attrs or enc.attrs, {**enc.arrays, **arrays}
        )

    with pytest.raises(ValueError, match=r"tensor 'blocks.0.mlp.fc.w' \(int4\): scale must be"):
        decode(scale=enc.arrays["scale"][:1])
    with pytest.raises(ValueError, match="scales must be finite and positive"):
        decode(scale=-enc.arrays["scale"])
    with pytest.raises(ValueError, match="64 values of 4 bits take 32 bytes"):
        decode(codes=enc.arrays["codes"][:-1])
    with pytest.raises(ValueError, match="holds arrays"):
        fmt.decode_tensor("w", "int4", enc.attrs, {"codes": enc.arrays["codes"]})
    with pytest.raises(ValueError, match=r"attributes lack \['group_size'\]"):
        decode({k: v for k, v in enc.attrs.items() if k != "group_size"})
    with pytest.raises(ValueError, match="attributes are invalid.*bits must be in"):
        decode({**enc.attrs, "bits": 12})
    with pytest.raises(ValueError, match="shape must be positive integers"):
        decode({**enc.attrs, "shape": [16, -4]})
    with pytest.raises(ValueError, match="encoding 'int9', which this minicompress does not"):
        fmt.decode_tensor("w", "int9", enc.attrs, enc.arrays)
    sym = _encoded(rng, QuantSpec(4, "symmetric", "tensor"))  # codes 0..14 after the shift
    codes = sym.arrays["codes"].copy()
    codes[0] |= 0x0F  # 15: one beyond the narrow grid
    with pytest.raises(ValueError, match="codes beyond the grid's top 7"):
        fmt.decode_tensor("w", "int4", sym.attrs, {**sym.arrays, "codes": codes})


def test_another_technique_registers_its_encoding(monkeypatch):
    # e.g. pruning's CSR: an encoder, a decoder, a densifier; no change to the format
    monkeypatch.setattr(fmt, "CODECS", dict(fmt.CODECS))
    monkeypatch.setattr(fmt, "ENCODERS", list(fmt.ENCODERS))

    class Halves(np.ndarray):  # a toy in-memory type: float16 values
        pass

    codec = fmt.Codec(
        encode=lambda a: fmt.Encoded("f16", {"values": np.asarray(a, np.float16)}, {}),
        decode=lambda attrs, arrays: arrays["values"].view(Halves),
        to_dense=lambda a: np.asarray(a, np.float32),
    )
    fmt.register_encoding("f16", codec, types=(Halves,))
    x = np.array([0.5, 1.25], np.float32).view(Halves)
    enc = fmt.encode_tensor(x)
    assert enc.encoding == "f16" and enc.arrays["values"].dtype == np.float16
    back = fmt.decode_tensor("x", "f16", enc.attrs, enc.arrays)
    assert fmt.to_dense("f16", back).tolist() == [0.5, 1.25]
    assert fmt.encode_tensor(np.zeros(2, np.float32)).encoding == "fp32"  # others unchanged
    with pytest.raises(ValueError, match="already registered"):
        fmt.register_encoding("int4", codec)
    with pytest.raises(TypeError, match="no encoding for a str"):
        fmt.encode_tensor("w")


# ----------------------------------------------------------------------------------------
# compressed checkpoints on disk
# ----------------------------------------------------------------------------------------


def _model(cfg=None):
    cfg = cfg or TransformerConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16)
    params = init_params(cfg, np.random.default_rng(0))
    return params, cfg, [chr(65 + i) for i in range(cfg.vocab_size)]


W4G = QuantSpec(4, "asymmetric", "group", group_size=16, scale_dtype="float16")


def test_save_and_read_round_trip(tmp_path):
    params, cfg, vocab = _model()
    q = ptq.quantize_weights(params, cfg, W4G)
    file = fmt.save_compressed(tmp_path / "q", {**params, **q}, cfg, vocab, {"note": "w4"})
    m = fmt.read_compressed(tmp_path / "q")
    assert m.path == file and m.file_bytes == file.stat().st_size == fmt.file_bytes(tmp_path / "q")
    assert m.cfg == cfg and m.vocab == vocab and m.meta == {"note": "w4"}
    for name, a in params.items():
        if name in q:
            assert m.encodings[name] == f"int{q[name].spec.bits}"
            assert np.array_equal(m.tensors[name].q, q[name].q)
            assert np.array_equal(m.params[name], dequantize_tensor(q[name]))
        else:
            assert m.encodings[name] == "fp32" and np.array_equal(m.params[name], a)
    loaded, cfg2, vocab2, meta2 = fmt.load_compressed(file)
    assert set(loaded) == set(params) and cfg2 == cfg and meta2 == {"note": "w4"}


def test_load_compressed_reads_dense_checkpoints_like_load_checkpoint(tmp_path):
    params, cfg, vocab = _model()
    save_checkpoint(tmp_path / "d", params, cfg, vocab)
    ours, theirs = fmt.load_compressed(tmp_path / "d"), load_checkpoint(tmp_path / "d")
    assert ours[1:] == theirs[1:]
    assert all(np.array_equal(ours[0][k], theirs[0][k]) for k in params)


def test_sizes_on_disk_of_the_default_model(tmp_path):
    # the default teacher's shapes (836k parameters): W8 >= 3.5x smaller, W4 >= 6x,
    # measured as real file sizes, scales, zero points, header and checksum included
    params, cfg, vocab = _model(TransformerConfig(vocab_size=103))
    fp32 = save_checkpoint(tmp_path / "fp32", params, cfg, vocab).stat().st_size
    sizes = {}
    w4 = QuantSpec(4, "asymmetric", "group", group_size=32, scale_dtype="float16")
    for label, spec in (("w8", QuantSpec(8, "symmetric", "channel")), ("w4", w4)):
        q = ptq.quantize_weights(params, cfg, spec)
        sizes[label] = (
            fmt.save_compressed(tmp_path / label, {**params, **q}, cfg, vocab).stat().st_size
        )
    assert fp32 / sizes["w8"] >= 3.5 and fp32 / sizes["w4"] >= 6.0, (fp32, sizes)
    assert fp32 >= 4 * sum(a.size for a in params.values())


def test_damaged_files_are_refused_in_one_line(tmp_path):
    params, cfg, vocab = _model()
    file = fmt.save_compressed(
        tmp_path / "q", {**params, **ptq.quantize_weights(params, cfg, W4G)}, cfg, vocab
    )
    data = file.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:300] + bytes([data[300] ^ 0x10]) + data[301:],
        "version": data[:8] + (99).to_bytes(4, "little") + data[12:],
        "pickle": pickle.dumps({"w": [1.0]}),
    }
    messages = {
        "truncated": "damaged",
        "flipped": "damaged",
        "version": "format version 99",
        "pickle": "pickle",
    }
    for what, blob in cases.items():
        bad = tmp_path / f"{what}.mc"
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=messages[what]) as e:
            fmt.read_compressed(bad)
        assert "\n" not in str(e.value)


def test_unknown_encoding_in_a_file_is_refused(tmp_path):
    params, cfg, vocab = _model()
    tensors = {k: fmt.encode_tensor(v) for k, v in params.items()}
    tensors["wte"] = StoredTensor("int9", {"codes": np.zeros(3, np.uint8)}, {})
    write_checkpoint(tmp_path / "x.mc", cfg, vocab, tensors)
    with pytest.raises(ValueError, match="tensor 'wte' has encoding 'int9', which this"):
        fmt.read_compressed(tmp_path / "x.mc")


def test_a_failed_save_writes_nothing_and_keeps_the_old_file(tmp_path):
    params, cfg, vocab = _model()
    file = fmt.save_compressed(tmp_path / "q", params, cfg, vocab)
    before = file.read_bytes()
    wrong = quantize_tensor(np.zeros((3, 3), np.float32) + 1, QuantSpec(8))
    with pytest.raises(ValueError, match=r"wte.*\(3, 3\)"):
        fmt.save_compressed(tmp_path / "q", {**params, "wte": wrong}, cfg, vocab)
    with pytest.raises(ValueError, match="nope"):
        fmt.save_compressed(tmp_path / "q", {**params, "nope": wrong}, cfg, vocab)
    with pytest.raises(TypeError, match="no encoding for a str"):
        fmt.save_compressed(tmp_path / "q", {**params, "wte": "x"}, cfg, vocab)
    assert file.read_bytes() == before and sorted(p.name for p in file.parent.iterdir()) == [
        "model.mc"
    ]


def test_pruning_csr_checkpoints_read_through_the_same_format(tmp_path):
    # prune.sparse writes "csr" tensors; the registry reads them (and writes them back)
    params, cfg, vocab = _model()
    rng = np.random.default_rng(3)
    w = params["blocks.0.mlp.fc.w"]
    params["blocks.0.mlp.fc.w"] = np.where(rng.random(w.shape) < 0.9, 0, w).astype(np.float32)
    for int8 in (False, True):
        file = save_sparse(tmp_path / f"s{int8}", params, cfg, vocab, min_sparsity=0.5, int8=int8)
        m = fmt.read_compressed(file)
        assert m.encodings["blocks.0.mlp.fc.w"] == "csr"
        expected = unpack_sparse(load_sparse(file)[0])
        assert all(np.array_equal(m.params[k], expected[k]) for k in params)
        fc = {k: v for k, v in m.tensors.items() if k.endswith("fc.w")}
        again = fmt.save_compressed(tmp_path / f"again{int8}", {**params, **fc}, cfg, vocab)
        assert np.array_equal(
            unpack_sparse(load_sparse(again)[0])["blocks.0.mlp.fc.w"], expected["blocks.0.mlp.fc.w"]
        )
