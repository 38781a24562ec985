"""minicompress/nn/checkpoint.py: one file under one checksum, exact round trips, a save
that refuses what the load would refuse (before writing anything), a crash at any step of a
save leaving the old checkpoint or the new one, and the old two-file format converted once."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minicompress import fileio
from minicompress.data.corpus import make_dataset
from minicompress.nn.checkpoint import (
    CHECKPOINT_FILE,
    COMPRESSED_LOADER,
    FP32,
    StoredTensor,
    convert_legacy_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.nn.train import TrainConfig, train

VOCAB = list("abcdefg")
CFG = TransformerConfig(
    vocab_size=7,
    block_size=6,
    n_layer=2,
    n_head=2,
    n_embd=8,
    mlp_ratio=2,
    norm="post",
    gelu="none",
    causal=False,
)  # not the defaults: all must survive
META = {"note": "x", "steps": 3}


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def params_of(cfg, seed=0):
    p = init_params(cfg, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    return {k: v + rng.standard_normal(v.shape).astype(np.float32) for k, v in p.items()}


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == np.float32 and np.array_equal(a[k], b[k]), k


@pytest.fixture
def ckpt(tmp_path):
    params = params_of(CFG)
    save_checkpoint(tmp_path / "ck", params, CFG, VOCAB, META)
    return tmp_path / "ck", params


def reseal(path, edit):
    """Apply ``edit`` to the archive's header JSON and recompute the checksum: a deliberate
    edit, which only the checks after the checksum can catch."""
    data = path.read_bytes()[:-32]
    n = int.from_bytes(data[12:16], "little")
    doc = json.loads(data[16 : 16 + n])
    edit(doc)
    text = json.dumps(doc).encode()
    if len(text) > n:
        raise AssertionError("edit made the header longer than its padding")
    body = data[:16] + text + b" " * (n - len(text)) + data[16 + n :]
    path.write_bytes(body + hashlib.sha256(body).digest())


# ----------------------------------------------------------------------------------------
# round trip and layout
# ----------------------------------------------------------------------------------------


def test_round_trip_is_exact_from_folder_file_or_string(ckpt):
    folder, params = ckpt
    for where in (folder, folder / CHECKPOINT_FILE, str(folder)):
        loaded, cfg, vocab, meta = load_checkpoint(where)
        assert cfg == CFG and vocab == VOCAB and meta == META
        assert_same_params(loaded, params)


def test_a_checkpoint_is_one_file(ckpt):
    folder, params = ckpt
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE]
    save_checkpoint(folder, params, CFG, VOCAB)  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE]


def test_a_path_ending_in_mc_is_the_file_itself(tmp_path):
    params = params_of(CFG)
    written = save_checkpoint(tmp_path / "sub" / "teacher.mc", params, CFG, VOCAB)
    assert written == tmp_path / "sub" / "teacher.mc" and written.is_file()
    assert_same_params(load_checkpoint(written)[0], params)


def test_header_records_every_tensor_as_fp32(ckpt):
    folder, params = ckpt
    ck = read_checkpoint(folder)
    assert list(ck.tensors) == list(params)  # the model's order
    for name, t in ck.tensors.items():
        assert t.encoding == FP32 and list(t.arrays) == ["values"] and t.attrs == {}
        assert np.array_equal(t.arrays["values"], params[name])


def test_numpy_integers_in_the_config_are_saved_as_plain_ints(tmp_path):
    cfg = TransformerConfig(
        vocab_size=np.int64(7), block_size=np.int32(6), n_layer=1, n_head=2, n_embd=8
    )
    params = params_of(cfg)
    save_checkpoint(tmp_path / "ck", params, cfg, VOCAB, {"steps": np.int64(5)})
    _, cfg2, _, meta = load_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg and type(cfg2.vocab_size) is int and meta == {"steps": 5}


def test_float64_parameters_are_stored_as_float32(tmp_path):
    params = {k: v.astype(np.float64) for k, v in params_of(CFG).items()}
    save_checkpoint(tmp_path / "ck", params, CFG, VOCAB)
    loaded = load_checkpoint(tmp_path / "ck")[0]
    for k in params:
        assert loaded[k].dtype == np.float32
        assert np.array_equal(loaded[k], params[k].astype(np.float32))
    assert params["wte"].dtype == np.float64  # the caller's arrays are not touched


def test_a_pruned_model_saves_and_loads(tmp_path):
    """Heads and neurons removed (smaller matrices, not zeros) load back as they were, and a
    qkv width that is not a whole number of heads is refused."""
    params = params_of(CFG)
    d, h = CFG.head_dim, CFG.n_head
    keep = np.r_[0:d, h * d : h * d + d, 2 * h * d : 2 * h * d + d]  # head 0 of q, k and v
    params["blocks.0.attn.qkv.w"] = params["blocks.0.attn.qkv.w"][:, keep]
    params["blocks.0.attn.qkv.b"] = params["blocks.0.attn.qkv.b"][keep]
    params["blocks.0.attn.proj.w"] = params["blocks.0.attn.proj.w"][:d]
    params["blocks.1.mlp.fc.w"] = params["blocks.1.mlp.fc.w"][:, :5]
    params["blocks.1.mlp.fc.b"] = params["blocks.1.mlp.fc.b"][:5]
    params["blocks.1.mlp.proj.w"] = params["blocks.1.mlp.proj.w"][:5]
    save_checkpoint(tmp_path / "pruned", params, CFG, VOCAB)
    loaded, cfg, _, _ = load_checkpoint(tmp_path / "pruned")
    assert cfg == CFG
    assert_same_params(loaded, params)
    params["blocks.0.attn.qkv.w"] = params["blocks.0.attn.qkv.w"][:, :-1]
    with pytest.raises(ValueError, match="'blocks.0.attn.qkv.w' has 11 columns"):
        save_checkpoint(tmp_path / "bad", params, CFG, VOCAB)
    assert not (tmp_path / "bad").exists()


small_configs = st.builds(
    lambda v, t, layers, heads, d, ratio, norm, gelu, causal: TransformerConfig(
        vocab_size=v,
        block_size=t,
        n_layer=layers,
        n_head=heads,
        n_embd=heads * d,
        mlp_ratio=ratio,
        norm=norm,
        gelu=gelu,
        causal=causal,
    ),
    st.integers(1, 12),
    st.integers(1, 8),
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from(["pre", "post"]),
    st.sampled_from(["tanh", "none"]),
    st.booleans(),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cfg=small_configs, data=st.data())
def test_round_trip_property(tmp_path, cfg, data):
    vocab = data.draw(
        st.lists(
            st.text(min_size=1, max_size=3),
            min_size=cfg.vocab_size,
            max_size=cfg.vocab_size,
            unique=True,
        )
    )
    seed = data.draw(st.integers(0, 2**32 - 1))
    params = params_of(cfg, seed)
    save_checkpoint(tmp_path / "p", params, cfg, vocab, {"seed": seed})
    loaded, cfg2, vocab2, meta = load_checkpoint(tmp_path / "p")
    assert cfg2 == cfg and vocab2 == vocab and meta == {"seed": seed}
    assert_same_params(loaded, params)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**65) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(
    where=st.sampled_from(["config", "vocab", "meta", "tensors", "config.n_head", "config.norm",
                           "tensors.wte", "tensors.wte.arrays", "tensors.wte.encoding",
                           "tensors.wte.arrays.values", "vocab.0"]),
    value=json_values,
)  # fmt: skip
def test_any_sealed_header_edit_loads_or_raises_value_error(ckpt, tmp_path, where, value):
    """Whatever a deliberate edit puts anywhere in the header: a model of that config, or
    a one-line ValueError; never another exception."""
    folder, _ = ckpt
    path = tmp_path / "edit.mc"
    path.write_bytes((folder / CHECKPOINT_FILE).read_bytes())

    def edit(doc):
        node, *keys = ["header", *where.split(".")]
        target = doc[node]
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = keys[-1]
        target[int(last) if isinstance(target, list) else last] = value

    try:
        reseal(path, edit)
    except AssertionError:  # the edit does not fit the header's padding: nothing to test
        return
    try:
        params, cfg, vocab, _ = load_checkpoint(path)
    except ValueError as e:
        one_line(e)
    else:
        assert len(vocab) == cfg.vocab_size and params["wte"].shape[0] == cfg.vocab_size


@PROPERTY
@given(
    params=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["wte", "wpe", "head.w", "x"]),
            st.one_of(json_values, st.just(np.zeros((7, 8), np.float32)),
                      st.just(np.zeros((7, 8), np.complex64)), st.just(np.array(["a"]))),
        ),
    ),
    vocab=st.one_of(json_values, st.lists(st.text(max_size=2), max_size=8)),
    meta=json_values,
    cfg=st.one_of(st.just(CFG), json_values),
)  # fmt: skip
def test_save_with_any_arguments_raises_only_clear_errors(tmp_path, params, vocab, meta, cfg):
    folder = tmp_path / "ck"
    try:
        save_checkpoint(folder, params, cfg, vocab, meta)
    except (TypeError, ValueError) as e:
        one_line(e)
        assert not folder.exists() or not any(folder.iterdir())  # nothing half-written
    else:
        assert load_checkpoint(folder)[1] == cfg


# ----------------------------------------------------------------------------------------
# one checksum over config, vocabulary and arrays
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new",
    [
        (b'"n_head": 2', b'"n_head": 4'),
        (b'"norm": "post"', b'"norm": "pre" '),
        (b'"causal": false', b'"causal": true '),
        (b'"gelu": "none"', b'"gelu": "tanh"'),
        (b'"d", "e"', b'"d", "x"'),  # one character of the vocabulary
        (b'"steps": 3', b'"steps": 4'),  # the metadata
    ],
)
def test_editing_the_config_or_vocabulary_is_refused(ckpt, old, new):
    folder, _ = ckpt
    path = folder / CHECKPOINT_FILE
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))
    with pytest.raises(ValueError, match="damaged: its SHA-256 does not match") as e:
        load_checkpoint(folder)
    one_line(e.value)


def test_every_flipped_byte_and_truncation_is_refused(ckpt):
    folder, _ = ckpt
    path = folder / CHECKPOINT_FILE
    data = path.read_bytes()
    for i in range(0, len(data), 7):  # every 7th byte: header, arrays, padding and checksum
        flipped = bytearray(data)
        flipped[i] ^= 0x10
        path.write_bytes(bytes(flipped))
        with pytest.raises(ValueError) as e:
            load_checkpoint(folder)
        one_line(e.value)
    for n in (0, 10, 16, 100, len(data) // 2, len(data) - 33, len(data) - 1):
        path.write_bytes(data[:n])
        with pytest.raises(ValueError, match="damaged|not a minicompress file") as e:
            load_checkpoint(folder)
        one_line(e.value)


def test_pickled_payload_is_refused(tmp_path):
    params = params_of(CFG)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / CHECKPOINT_FILE).write_bytes(pickle.dumps((params, CFG, VOCAB)))
    with pytest.raises(ValueError, match="pickle, which minicompress never loads") as e:
        load_checkpoint(tmp_path / "ck")
    one_line(e.value)


def test_unknown_version_is_refused(ckpt):
    folder, _ = ckpt
    path = folder / CHECKPOINT_FILE
    data = bytearray(path.read_bytes())
    data[8] = 9
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="format version 9"):
        load_checkpoint(folder)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*does not exist.*model.mc"):
        load_checkpoint(tmp_path / "empty")


# ----------------------------------------------------------------------------------------
# deliberate edits (valid checksum): the checks behind the checksum
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda d: d["header"]["config"].update(n_head=3),
            "n_embd=8 must be divisible by n_head=3",
        ),
        (lambda d: d["header"]["config"].update(n_embd=16, n_head=2), "shape"),
        (lambda d: d["header"]["config"].update(n_layer=3), "'blocks.2.attn.qkv.w' is missing"),
        (lambda d: d["header"]["config"].update(n_layer=1), r"unexpected parameters \['blocks.1"),
        (lambda d: d["header"]["config"].update(bogus=1), r"config is invalid.*\['bogus'\]"),
        (lambda d: d["header"]["vocab"].pop(), "vocab has 6 tokens, config says vocab_size=7"),
        (lambda d: d["header"]["vocab"].__setitem__(0, "b"), "token 'b' more than once"),
        (lambda d: d["header"]["vocab"].__setitem__(0, 5), "vocab must be a list of strings"),
        (lambda d: d["header"].pop("tensors"), "lacks config, vocab, meta or tensors"),
        (lambda d: d["header"].update(meta=[]), "meta and tensors must be JSON objects"),
        (lambda d: d["header"]["tensors"].pop("wte"), "array 'wte/values' belongs to no tensor"),
        (
            lambda d: d["header"]["tensors"]["wpe"]["arrays"].update(values="wte/values"),
            "names a missing array 'wte/values'",
        ),
        (lambda d: d["header"]["tensors"]["wte"].pop("encoding"), "'wte' is malformed"),
        (lambda d: d.update(kind="calibration"), "holds a minicompress 'calibration'"),
    ],
)
def test_deliberately_edited_header_is_refused(ckpt, edit, match):
    folder, _ = ckpt
    reseal(folder / CHECKPOINT_FILE, edit)
    with pytest.raises(ValueError, match=match) as e:
        load_checkpoint(folder)
    one_line(e.value)


@pytest.mark.parametrize(
    "bad", [np.arange(64, dtype=np.int32), np.zeros(64, np.complex64), np.zeros(64, np.float64)]
)
def test_fp32_tensor_must_hold_float32(tmp_path, bad):
    """complex, integer (and float64) arrays under an fp32 tensor are refused, not cast."""
    params = params_of(CFG)
    tensors = {k: StoredTensor(FP32, {"values": v}, {}) for k, v in params.items()}
    if bad.dtype.kind == "c":  # the archive itself refuses complex arrays
        tensors["ln_emb"] = StoredTensor(FP32, {"values": bad}, {})
        with pytest.raises(TypeError, match="complex64"):
            write_checkpoint(tmp_path / "ck", CFG, VOCAB, tensors)
        return
    tensors["blocks.0.ln1.g"] = StoredTensor(FP32, {"values": bad[:8]}, {})
    write_checkpoint(tmp_path / "ck", CFG, VOCAB, tensors)
    with pytest.raises(ValueError, match=f"'blocks.0.ln1.g' must be one float32.*{bad.dtype}"):
        load_checkpoint(tmp_path / "ck")


def test_compressed_encoding_is_refused_naming_its_loader(tmp_path):
    params = params_of(CFG)
    tensors = {k: StoredTensor(FP32, {"values": v}, {}) for k, v in params.items()}
    w = params["blocks.0.mlp.fc.w"]
    scale = np.abs(w).max(0, keepdims=True) / 127  # [1, N]
    tensors["blocks.0.mlp.fc.w"] = StoredTensor(
        "int8",
        {"q": np.round(w / scale).astype(np.int8), "scale": scale},
        {"granularity": "channel"},
    )
    write_checkpoint(tmp_path / "ck", CFG, VOCAB, tensors)
    ck = read_checkpoint(tmp_path / "ck")  # the table is readable by any loader
    t = ck.tensors["blocks.0.mlp.fc.w"]
    assert t.encoding == "int8" and t.attrs == {"granularity": "channel"}
    assert t.arrays["q"].dtype == np.int8 and np.array_equal(t.arrays["scale"], scale)
    with pytest.raises(ValueError, match=f"stored as 'int8'.*{COMPRESSED_LOADER}") as e:
        load_checkpoint(tmp_path / "ck")
    one_line(e.value)


# ----------------------------------------------------------------------------------------
# save refuses what load would refuse, before writing a byte
# ----------------------------------------------------------------------------------------


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda p, v, m: (p, v[:-1], m), ValueError, "vocab has 6 tokens, config says"),
        (lambda p, v, m: (p, v[:-1] + ["a"], m), ValueError, "'a' more than once"),
        (lambda p, v, m: (p, "abcdefg", m), TypeError, "vocab must be a list"),
        (lambda p, v, m: (_without(p, "head.w"), v, m), ValueError, r"\['head.w'\] are missing"),
        (lambda p, v, m: ({**p, "extra": p["wte"]}, v, m), ValueError, r"unexpected.*\['extra'\]"),
        (
            lambda p, v, m: ({**p, "wte": p["wte"][:, :4]}, v, m),
            ValueError,
            r"'wte' should have shape \(7, 8\); got \(7, 4\)",
        ),
        (
            lambda p, v, m: ({**p, "wte": p["wte"].astype(np.complex64)}, v, m),
            TypeError,
            "'wte' has dtype complex64",
        ),
        (
            lambda p, v, m: ({**p, "wte": p["wte"].astype(np.int32)}, v, m),
            TypeError,
            "'wte' has dtype int32",
        ),
        (lambda p, v, m: ({**p, "wte": "x"}, v, m), TypeError, "'wte' is a str"),
        (lambda p, v, m: (p, v, {"x": np.zeros(2)}), TypeError, r"meta\['x'\] is a ndarray"),
        (lambda p, v, m: (p, v, {"x": float("nan")}), ValueError, r"meta\['x'\] is nan"),
        (lambda p, v, m: (p, v, [1]), TypeError, "meta must be a dict"),
    ],
)
def test_save_refuses_before_writing(ckpt, change, error, match):
    folder, params = ckpt
    before = (folder / CHECKPOINT_FILE).read_bytes()
    p, v, m = change(dict(params), list(VOCAB), dict(META))
    with pytest.raises(error, match=match) as e:
        save_checkpoint(folder, p, CFG, v, m)
    one_line(e.value)
    assert (folder / CHECKPOINT_FILE).read_bytes() == before  # the old one is untouched
    assert sorted(x.name for x in folder.iterdir()) == [CHECKPOINT_FILE]


def test_save_refuses_a_config_that_is_not_one(tmp_path):
    with pytest.raises(TypeError, match="cfg must be a TransformerConfig"):
        save_checkpoint(tmp_path / "ck", params_of(CFG), CFG.to_dict(), VOCAB)


def test_save_never_replaces_a_file_of_another_name(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is a file; a checkpoint path is a folder"):
        save_checkpoint(tmp_path / "notes.txt", params_of(CFG), CFG, VOCAB)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------
# crash consistency
# ----------------------------------------------------------------------------------------


class Tripwire:
    """Counts the steps of a save that touch the disk (each write, the fsync of the file,
    the rename, the fsync of the folder) and fires ``action`` at step ``at``."""

    def __init__(self, monkeypatch, at=None, action=None):
        self.n, self.at, self.action = 0, at, action
        real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace
        tw = self

        class File(io.RawIOBase):
            def __init__(self, fd):
                self.f = real_fdopen(fd, "wb")

            def write(self, b):
                tw.step("write")
                return self.f.write(b)

            def flush(self):
                self.f.flush()

            def fileno(self):
                return self.f.fileno()

            def close(self):
                self.f.close()

        def fsync(fd):
            tw.step("fsync")
            real_fsync(fd)

        def replace(a, b):
            tw.step("replace")
            real_replace(a, b)

        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: File(fd))
        monkeypatch.setattr(fileio.os, "fsync", fsync)
        monkeypatch.setattr(fileio.os, "replace", replace)

    def step(self, what):
        if self.n == self.at:
            self.action(what)
        self.n += 1


def test_save_interrupted_at_each_step_leaves_old_or_new(ckpt, monkeypatch):
    folder, old = ckpt
    new = params_of(CFG, seed=7)
    with monkeypatch.context() as m:
        counter = Tripwire(m)
        save_checkpoint(folder / "probe", new, CFG, VOCAB)
    steps = counter.n  # writes, fsync of the file, rename, fsync of the folder
    assert steps >= 5

    def fail(what):
        raise OSError(f"interrupted at {what}")

    for at in range(steps):
        save_checkpoint(folder, old, CFG, VOCAB, META)  # start from the old one each time
        with monkeypatch.context() as m:
            Tripwire(m, at, fail)
            with pytest.raises(OSError, match="interrupted"):
                save_checkpoint(folder, new, CFG, VOCAB)
        loaded = load_checkpoint(folder)[0]
        renamed = at >= steps - 1  # only the folder's fsync comes after the rename
        assert_same_params(loaded, new if renamed else old)
        assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE, "probe"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_process_killed_at_each_step_leaves_old_or_new(ckpt, monkeypatch):
    """A process that dies at a step (os._exit: no cleanup, no finally) leaves a checkpoint
    that loads: the old one before the rename, the new one after it."""
    folder, old = ckpt
    new = params_of(CFG, seed=7)
    with monkeypatch.context() as m:
        counter = Tripwire(m)
        save_checkpoint(folder / "probe", new, CFG, VOCAB)
    got = []
    for at in range(counter.n):
        save_checkpoint(folder, old, CFG, VOCAB, META)
        pid = os.fork()
        if pid == 0:  # the child: die at step `at`
            try:
                with monkeypatch.context() as m:
                    Tripwire(m, at, lambda what: os._exit(0))
                    save_checkpoint(folder, new, CFG, VOCAB)
            finally:
                os._exit(1)  # never reached if the tripwire fired
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        loaded = load_checkpoint(folder)[0]
        got.append("new" if np.array_equal(loaded["wte"], new["wte"]) else "old")
        assert_same_params(loaded, new if got[-1] == "new" else old)
    assert got == ["old"] * (counter.n - 1) + ["new"], got
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------
# the two-file format of minicompress 0.1
# ----------------------------------------------------------------------------------------


def write_legacy(folder, params, cfg, vocab, meta):
    """What minicompress 0.1 wrote, rebuilt with NumPy and json only."""
    folder.mkdir()
    buf = io.BytesIO()
    np.savez(buf, **params)
    (folder / "model.npz").write_bytes(buf.getvalue())
    conf = {
        "model": cfg.to_dict(),
        "vocab": vocab,
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "meta": meta,
    }
    (folder / "config.json").write_text(json.dumps(conf))


def test_old_format_is_refused_with_the_command_that_converts_it(tmp_path):
    params = params_of(CFG)
    write_legacy(tmp_path / "old", params, CFG, VOCAB, META)
    for where in (tmp_path / "old", tmp_path / "old" / "config.json"):
        with pytest.raises(ValueError, match="two-file format.*minicompress convert") as e:
            load_checkpoint(where)
        one_line(e.value)
    written = convert_legacy_checkpoint(tmp_path / "old", tmp_path / "new")
    assert written == tmp_path / "new" / CHECKPOINT_FILE
    loaded, cfg, vocab, meta = load_checkpoint(tmp_path / "new")
    assert cfg == CFG and vocab == VOCAB and meta == META
    assert_same_params(loaded, params)
    convert_legacy_checkpoint(tmp_path / "old")  # in place: model.mc beside the old files
    assert_same_params(load_checkpoint(tmp_path / "old")[0], params)
    with pytest.raises(ValueError, match="already exists"):
        convert_legacy_checkpoint(tmp_path / "old")


def test_conversion_refuses_damaged_arrays(tmp_path):
    write_legacy(tmp_path / "old", params_of(CFG), CFG, VOCAB, META)
    npz = tmp_path / "old" / "model.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 1
    npz.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        convert_legacy_checkpoint(tmp_path / "old", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="not a checkpoint of minicompress 0.1"):
        convert_legacy_checkpoint(tmp_path / "new")


# ----------------------------------------------------------------------------------------
# the training loop writes through save_checkpoint
# ----------------------------------------------------------------------------------------


def test_training_writes_a_loadable_checkpoint(tmp_path):
    data = make_dataset("abcdefgh " * 30, block_size=8)
    cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8
    )
    params = init_params(cfg, np.random.default_rng(0))
    tc = TrainConfig(batch_size=2, steps=2, warmup=1, eval_every=0)
    train(params, cfg, data, tc, out_dir=tmp_path / "run", progress=False)
    loaded, cfg2, vocab, meta = load_checkpoint(tmp_path / "run")
    assert cfg2 == cfg and vocab == data.tokenizer.chars and meta["steps"] == 2
    assert_same_params(loaded, params)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_FILE]
