"""minicompress/cli/common.py: the strict flag types, the config flags and who is blamed,
output checks, the memory estimate; and hypothesis over the flags of ``train`` and
``generate``: any value gives either exit 2 with one line naming the flag, or exactly what
the library gives for the same value parsed by Python."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import typing
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minicompress.cli.common as common
import minicompress.cli.train as cli_train
from minicompress.cli import main
from minicompress.cli.common import (
    UserError,
    check_output_dir,
    check_output_file,
    config_from_args,
    flag_bool,
    flag_float,
    flag_int,
    training_bytes,
)
from minicompress.data.corpus import CharTokenizer
from minicompress.nn.checkpoint import load_checkpoint
from minicompress.nn.model import TransformerConfig, generate, init_params
from minicompress.nn.train import TrainConfig

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in-process: (status, stdout, stderr); fails on any warning."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    assert not caught, [str(w.message) for w in caught]
    return status, out.getvalue(), err.getvalue()


def one_error_line(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, (status, err)
    return lines[0]


# ----------------------------------------------------------------------------------------
# flag types
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
     ("false", False), ("False", False), ("0", False), ("no", False), (" no ", False)],
)  # fmt: skip
def test_flag_bool_accepts(text, value):
    assert flag_bool(text) is value


@pytest.mark.parametrize("text", ["ture", "", "2", "y", "n", "on", "off", "nan", "truee"])
def test_flag_bool_refuses_rather_than_reading_false(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a boolean; use true or false"):
        flag_bool(text)


@pytest.mark.parametrize("text, value", [("7", 7), (" 7 ", 7), ("+3", 3), ("0", 0), ("-0", 0)])
def test_flag_int_accepts(text, value):
    assert flag_int(minimum=0)(text) == value


@pytest.mark.parametrize(
    "text, match",
    [("1.0", "not an integer"), ("1e3", "not an integer"), ("0x10", "not an integer"),
     ("1_000", "not an integer"), ("\u0663", "not an integer"), ("", "not an integer"),
     ("nan", "not an integer"), ("-1", "too small; expected an integer >= 0"),
     ("11", "too large; expected an integer <= 10")],
)  # fmt: skip
def test_flag_int_refuses(text, match):
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        flag_int(minimum=0, maximum=10)(text)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), (" 2.5 ", 2.5), ("0", 0.0), ("-0.0", 0.0)])
def test_flag_float_accepts(text, value):
    assert flag_float(minimum=0.0)(text) == value


@pytest.mark.parametrize(
    "text, match",
    [("nan", "not a finite number"), ("inf", "not a finite number"),
     ("-Infinity", "not a finite number"), ("1e999", "not a finite number"),
     ("abc", "not a number"), ("", "not a number"), ("-1", "too small")],
)  # fmt: skip
def test_flag_float_refuses(text, match):
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        flag_float(minimum=0.0)(text)


# ----------------------------------------------------------------------------------------
# config flags: the dataclass decides, the message names the flag
# ----------------------------------------------------------------------------------------


def namespace(**given):
    names = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(TransformerConfig)}
    return argparse.Namespace(**{n: given.get(n) for n in names})


@pytest.mark.parametrize(
    "given, flags",
    [
        ({"lr": -1.0}, "--lr -1.0"),
        ({"lr": 1e-4, "min_lr": 1e-3}, "--lr 0.0001 --min-lr 0.001"),  # the pair at fault
        ({"lr": 5e-5, "min_lr": 1e-5, "grad_clip": -1.0}, "--grad-clip -1.0"),  # not --lr
        ({"eval_windows": 0, "eval_every": 1}, "--eval-windows 0"),
        ({"lr": -1.0, "grad_clip": -1.0}, "--lr -1.0 --grad-clip -1.0"),  # two faults
    ],
)
def test_refused_train_config_names_the_flags_at_fault(given, flags):
    with pytest.raises(UserError) as e:
        config_from_args(TrainConfig, namespace(**given))
    assert str(e.value).startswith(flags + ":"), str(e.value)


def test_refused_model_config_names_the_flags_at_fault():
    with pytest.raises(UserError, match=r"^--n-embd 30: n_embd=30 must be divisible by n_head"):
        config_from_args(TransformerConfig, namespace(n_embd=30), vocab_size=5)
    with pytest.raises(UserError, match=r"^--n-head 7 --n-embd 30: n_embd=30 .* n_head=7"):
        config_from_args(TransformerConfig, namespace(n_embd=30, n_head=7), vocab_size=5)
    assert config_from_args(
        TransformerConfig, namespace(n_embd=30, n_head=5), vocab_size=5
    ) == TransformerConfig(vocab_size=5, n_embd=30, n_head=5)


def test_a_fixed_value_at_fault_is_not_blamed_on_a_flag():
    with pytest.raises(ValueError, match="vocab_size") as e:
        config_from_args(TransformerConfig, namespace(n_layer=2), vocab_size=0)
    assert not isinstance(e.value, UserError)


# ----------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------


def test_output_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_output_file("--json", tmp_path / "new" / "m.json") == tmp_path / "new" / "m.json"
    assert not (tmp_path / "new").exists()  # checked, not created
    assert check_output_file("--json", tmp_path / "f") == tmp_path / "f"  # may be replaced
    with pytest.raises(UserError, match="--json .* is a folder"):
        check_output_file("--json", tmp_path)
    with pytest.raises(UserError, match="--json .*/f' is a file, not a folder"):
        check_output_file("--json", tmp_path / "f" / "m.json")
    with pytest.raises(UserError, match="--json .* is a file this command reads"):
        check_output_file("--json", tmp_path / "sub" / ".." / "f", inputs=[tmp_path / "f"])
    with pytest.raises(UserError, match="--out .* is a file; give a folder"):
        check_output_dir("--out", tmp_path / "f")
    with pytest.raises(UserError, match="--out .* cannot be written"):
        check_output_dir("--out", "/proc/minicompress-test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # the probes left nothing


# ----------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------


def test_training_bytes_by_hand():
    """V=2, T=1, one block, C=1, H=1, F=1: 23 parameters (wte 2, wpe 1, LayerNorms 4,
    qkv 3+3, proj 1+1, fc 1+1, proj 1+1, ln_f 2, head 2) -> 16 * 23 bytes; activations
    B*T*(14C + 3F + 2H*T) + 3*B*T*V = 19 + 6 floats -> 100 bytes."""
    cfg = TransformerConfig(vocab_size=2, block_size=1, n_layer=1, n_head=1, n_embd=1, mlp_ratio=1)
    assert training_bytes(cfg, 1) == 16 * 23 + 4 * 25


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_parameter_count_is_the_models(layers):
    cfg = TransformerConfig(vocab_size=11, n_layer=layers, n_embd=12, n_head=3, mlp_ratio=2)
    params = init_params(cfg, np.random.default_rng(0))
    assert common.parameter_count(cfg) == sum(a.size for a in params.values())


def test_memory_check_of_absurd_depths_allocates_nothing():
    """2**40 blocks: refused by the estimate, not by a MemoryError while estimating."""
    cfg = TransformerConfig(vocab_size=11, n_layer=2**40)
    with pytest.raises(UserError, match=r"^--n-layer 1099511627776: .* GiB"):
        common.check_fits_in_memory(cfg, 1, ["--n-layer 1099511627776"])


def test_memory_check_names_the_size_flags(monkeypatch):
    cfg = TransformerConfig(vocab_size=10)
    monkeypatch.setattr(common, "total_memory_bytes", lambda: training_bytes(cfg, 16) - 1)
    with pytest.raises(UserError, match=r"^--n-layer 4 --batch-size 16: .* GiB"):
        common.check_fits_in_memory(cfg, 16, ["--n-layer 4", "--batch-size 16"])
    monkeypatch.setattr(common, "total_memory_bytes", lambda: training_bytes(cfg, 16))
    common.check_fits_in_memory(cfg, 16, [])  # exactly enough
    monkeypatch.setattr(common, "total_memory_bytes", lambda: None)
    common.check_fits_in_memory(TransformerConfig(vocab_size=10, n_embd=10**9, n_head=1), 1, [])


# ----------------------------------------------------------------------------------------
# hypothesis over the flags
# ----------------------------------------------------------------------------------------

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
INVALID = object()


def python_parse(kind: type, text: str):
    """What the flag should mean, by Python's own parsers and the documented grammar:
    booleans true/false/1/0/yes/no, base-10 integers >= 0, finite floats, non-empty text."""
    if kind is bool:
        return _BOOLS.get(text.strip().lower(), INVALID)
    if kind is int:
        ok = re.fullmatch(r"\s*[+-]?[0-9]+\s*", text) is not None
        return int(text) if ok and int(text) >= 0 else INVALID
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            return INVALID
        return value if np.isfinite(value) else INVALID
    return text if text else INVALID


def kinds(cls) -> dict[str, type]:
    """bool / int / float / str of each field (``float | None`` -> float)."""
    hints = typing.get_type_hints(cls)
    return {
        name: next(t for t in (bool, int, float, str) if t is h or t in typing.get_args(h))
        for name, h in hints.items()
    }


MODEL_KINDS = {n: k for n, k in kinds(TransformerConfig).items() if n not in ("vocab_size", "head")}
TRAIN_KINDS = kinds(TrainConfig)
BASE = {"n_layer": 1, "n_embd": 8, "n_head": 2, "block_size": 8, "batch_size": 2, "steps": 1,
        "eval_every": 0}  # fmt: skip

flag_values = st.one_of(  # sizes are small or far too large: nothing slow to allocate
    st.integers(-3, 200).map(str),
    st.integers(2**40, 2**70).map(str),
    st.integers(-(2**70), -1).map(str),
    st.floats().map(repr),
    st.floats(-3, 3).map(str),
    st.sampled_from(["true", "FALSE", "Yes", "no", "1", "0", "ture", "", " 5 ", "+7", "1_0",
                     "0x1", "\u0663", "nan", "-inf", "1e999", "1e308", "pre", "post", "tanh",
                     "none", "erf"]),
    st.text(max_size=5),
)  # fmt: skip


class Reached(Exception):
    """Raised by the stand-in for training: the command got past every check."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    p.write_text(TEXT)
    return p


@SETTINGS
@given(field=st.sampled_from(sorted({**MODEL_KINDS, **TRAIN_KINDS})), text=flag_values)
def test_train_flags_property(tmp_path, corpus, monkeypatch, field, text):
    kind = {**MODEL_KINDS, **TRAIN_KINDS}[field]
    value = python_parse(kind, text)
    flag = "--" + field.replace("_", "-")
    argv = ["train", "--text", str(corpus), "--out", str(tmp_path / "o"), "--no-progress"]
    for name, v in {**BASE, field: text}.items():
        argv += ["--" + name.replace("_", "-"), str(v)]
    reached = {}

    def stand_in(params, cfg, data, tc, **kwargs):
        reached.update(cfg=cfg, tc=tc)
        raise Reached

    with monkeypatch.context() as m:
        m.setattr(cli_train, "train", stand_in)
        try:
            status, _, err = run(argv)
        except Reached:
            status, err = 0, ""
    if value is INVALID:  # the flag's own parser refuses it
        line = one_error_line(status, err)
        assert f"argument {flag}:" in line, line
        return
    given_kwargs = {k: v for k, v in BASE.items() if k != field}
    given_kwargs[field] = value
    vocab = CharTokenizer.from_text(TEXT).vocab_size
    try:  # the reference: the dataclasses themselves
        cfg = TransformerConfig(
            vocab_size=vocab, **{k: v for k, v in given_kwargs.items() if k in MODEL_KINDS}
        )
        tc = TrainConfig(**{k: v for k, v in given_kwargs.items() if k in TRAIN_KINDS})
    except (ValueError, TypeError):
        line = one_error_line(status, err)
        assert flag in line, line
        return
    if reached:
        assert reached["cfg"] == cfg and reached["tc"] == tc
        assert getattr(cfg if field in MODEL_KINDS else tc, field) == value
        return
    line = one_error_line(status, err)  # the only refusals left: memory, text too short
    assert flag in line, line
    assert "GiB" in line or "too short" in line, line


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("gen") / "m"
    argv = ["train", "--text", str(corpus), "--out", str(out), "--no-progress", "--no-plot"]
    for name, v in BASE.items():
        argv += ["--" + name.replace("_", "-"), str(v)]
    assert main(argv) == 0
    return out


GENERATE_BASE = {"prompt": "the ", "tokens": 3, "temperature": 0.8, "top_k": None, "seed": 0}
generate_values = {
    "prompt": st.one_of(st.text(alphabet="the quickbrownZé.\n", max_size=20), st.text(max_size=4)),
    "tokens": st.one_of(st.integers(-2, 12).map(str), flag_values.filter(lambda s: len(s) < 3)),
    "temperature": st.one_of(st.floats(-1, 5).map(str), flag_values),
    "top_k": st.one_of(st.integers(-1, 40).map(str), flag_values.filter(lambda s: len(s) < 3)),
    "seed": st.one_of(st.integers(-2, 2**70).map(str), flag_values.filter(lambda s: len(s) < 9)),
}


@SETTINGS
@given(data=st.data(), field=st.sampled_from(sorted(generate_values)))
def test_generate_flags_property(tiny_model, data, field):
    text = data.draw(generate_values[field])
    params, cfg, vocab, _ = load_checkpoint(tiny_model)
    tok = CharTokenizer(vocab)
    flag = "--" + field.replace("_", "-")
    args = {**GENERATE_BASE, field: text}
    argv = ["generate", str(tiny_model)]
    for name, v in args.items():
        if v is not None:
            argv += ["--" + name.replace("_", "-"), str(v)]
    kind = {"prompt": str, "tokens": int, "temperature": float, "top_k": int, "seed": int}[field]
    value = python_parse(kind, text)
    # known, the lead's: z / temperature overflows below ~1e-307 (see the xfail in test_cli)
    assume(field != "temperature" or value is INVALID or not 0 < value < 1e-300)
    status, out, err = run(argv)
    allowed = value is not INVALID and {
        "prompt": lambda v: set(v) <= set(vocab),
        "tokens": lambda v: v >= 1,
        "temperature": lambda v: v >= 0,
        "top_k": lambda v: 1 <= v <= cfg.vocab_size,
        "seed": lambda v: True,
    }[field](value)
    if not allowed:
        line = one_error_line(status, err)
        assert flag in line, line
        return
    assert status == 0, err
    kw = {**GENERATE_BASE, field: value}
    ids = generate(
        params,
        cfg,
        tok.encode(kw["prompt"]),
        kw["tokens"],
        np.random.default_rng(kw["seed"]),
        kw["temperature"],
        kw["top_k"],
    )
    assert out == tok.decode(ids) + "\n"


def test_valid_flags_reach_training_with_their_values(tmp_path, corpus, monkeypatch):
    """The train property is not vacuous: valid flags get past every check, as typed."""
    reached = {}

    def stand_in(params, cfg, data, tc, **kwargs):
        reached.update(cfg=cfg, tc=tc, params=params)
        raise Reached

    monkeypatch.setattr(cli_train, "train", stand_in)
    argv = ["train", "--text", str(corpus), "--out", str(tmp_path / "o"), "--causal", "No"]
    argv += ["--lr", "2e-3", "--seed", "5", "--minutes", "0.5", "--ln-eps", "1e-12"]
    with pytest.raises(Reached):
        main([*argv, *sum((["--" + k.replace("_", "-"), str(v)] for k, v in BASE.items()), [])])
    cfg, tc = reached["cfg"], reached["tc"]
    assert cfg.causal is False and cfg.ln_eps == 1e-12 and (cfg.n_layer, cfg.n_embd) == (1, 8)
    assert (tc.lr, tc.seed, tc.minutes, tc.steps) == (2e-3, 5, 0.5, 1)
    ref = init_params(cfg, np.random.default_rng([5, 0]))  # seeded from --seed, as documented
    assert all(np.array_equal(ref[k], reached["params"][k]) for k in ref)
