"""The ``quantize`` command (cli/quantize.py) and quant/pipeline.py behind it: the report,
the saved checkpoint and its recorded activation quantization, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from quant_models import tiny_trained

from minicompress import cli
from minicompress.cli.quantize import run_quantize
from minicompress.deploy.format import load_quantized, read_compressed
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.quant import ptq
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.pipeline import QuantizeConfig


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    params, cfg, data = tiny_trained()
    folder = tmp_path_factory.mktemp("teacher")
    save_checkpoint(folder, params, cfg, data.tokenizer.chars)
    text = data.tokenizer.decode(np.concatenate([data.train, data.val]))
    path = folder / "text.txt"
    path.write_text(text, encoding="utf-8")
    return folder, path


def quantize_cli(monkeypatch, *argv):
    """``python -m minicompress quantize ...`` through the CLI's own main (the command is
    registered here until its name is in cli.COMMANDS)."""
    if "quantize" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "quantize"))
    return cli.main(["quantize", *map(str, argv)])


def test_w8a8_static_report_checkpoint_and_reload(teacher, tmp_path):
    folder, text = teacher
    qc = QuantizeConfig(bits=8, activations="static", calib_batches=2)
    report = run_quantize(folder, qc, tmp_path / "q", text.read_text(), progress=False)
    for key in ("val_ppl", "baseline_val_ppl", "file_bytes", "baseline_file_bytes"):
        assert isinstance(report[key], (int, float)) and report[key] > 0
    assert abs(report["val_ppl"] / report["baseline_val_ppl"] - 1) < 0.02
    assert report["file_bytes"] == (tmp_path / "q" / "model.mc").stat().st_size
    assert report["compression_ratio"] > 2.5  # a tiny model: biases, norms, header weigh more
    # the checkpoint records the calibrated activations: reloaded, it evaluates the same
    params, cfg, vocab, meta, linear = load_quantized(tmp_path / "q")
    assert isinstance(linear, FakeQuantLinear) and linear.activations == "static"
    assert set(meta["quantization"]["act_qparams"]) == set(ptq.check_layers(cfg, None))
    _, _, data = tiny_trained()
    assert ptq.perplexity(params, cfg, data.val, linear) == report["val_ppl"]
    assert read_compressed(tmp_path / "q").encodings["blocks.0.mlp.fc.w"] == "int8"


def test_cli_w4_group_with_qat_and_json(teacher, tmp_path, monkeypatch, capsys):
    folder, text = teacher
    out, js = tmp_path / "w4", tmp_path / "w4.json"
    status = quantize_cli(
        monkeypatch,
        folder,
        "--bits",
        4,
        "--granularity",
        "group",
        "--group-size",
        16,
        "--scheme",
        "asymmetric",
        "--qat-steps",
        4,
        "--out",
        out,
        "--json",
        js,
        "--text",
        text,
        "--no-progress",
    )
    assert status == 0, capsys.readouterr().err
    report = json.loads(js.read_text())
    assert report["bits"] == 4 and report["granularity"] == "group"
    assert "control_val_ppl" in report and "change_vs_control_pct" in report
    assert read_compressed(out).encodings["head.w"] == "int4"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--bits", "9"], "--bits 9: bits must be in [2, 8]; got 9"),
        (["--granularity", "group"], "--granularity group: granularity 'group' needs group_size"),
        (["--activations", "int8"], "--activations int8: activations must be one of"),
        (["--calibration", "entropy"], "--calibration entropy: calibration must be one of"),
        (["--scheme", "log", "--bits", "1"], "--bits 1: bits must be in [2, 8]"),
        (["--smooth", "1.5"], "--smooth 1.5: alpha must be a number in [0, 1]"),
    ],
)
def test_cli_bad_flags_one_line(teacher, tmp_path, monkeypatch, capsys, flags, message):
    folder, _ = teacher
    status = quantize_cli(monkeypatch, folder, *flags, "--out", tmp_path / "q")
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "q").exists()


def test_cli_refuses_to_overwrite_its_input_or_read_a_missing_model(
    teacher, tmp_path, monkeypatch, capsys
):
    folder, _ = teacher
    before = (folder / "model.mc").read_bytes()
    assert quantize_cli(monkeypatch, folder, "--out", folder) == 2
    assert "would replace the input" in capsys.readouterr().err
    assert (folder / "model.mc").read_bytes() == before
    assert quantize_cli(monkeypatch, tmp_path / "none", "--out", tmp_path / "q") == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_eval_and_generate_read_a_quantized_checkpoint(teacher, tmp_path, monkeypatch, capsys):
    folder, text = teacher
    out, js = tmp_path / "q", tmp_path / "q.json"
    flags = ["--activations", "static", "--calib-batches", 1, "--smooth", 0.5]
    status = quantize_cli(monkeypatch, folder, *flags, "--out", out, "--json", js, "--text", text)
    assert status == 0, capsys.readouterr().err
    report = json.loads(js.read_text())
    assert report["smooth"] == 0.5
    capsys.readouterr()
    metrics = tmp_path / "eval.json"
    assert cli.main(["eval", str(out), "--text", str(text), "--json", str(metrics)]) == 0
    # eval runs the checkpoint as it was quantized: its static activations included
    assert json.loads(metrics.read_text())["val_ppl"] == pytest.approx(report["val_ppl"], 1e-9)
    capsys.readouterr()
    argv = ["generate", str(out), "--prompt", "The", "--tokens", "5", "--temperature", "0"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith("The")


def test_cli_awq_flag(teacher, tmp_path, monkeypatch, capsys):
    folder, text = teacher
    flags = ["--bits", 4, "--granularity", "group", "--group-size", 16, "--scheme", "asymmetric"]
    flags += ["--awq", "true", "--calib-batches", 1, "--no-progress"]
    status = quantize_cli(monkeypatch, folder, *flags, "--out", tmp_path / "a", "--text", text)
    assert status == 0, capsys.readouterr().err
    meta = read_compressed(tmp_path / "a").meta
    assert meta["quantization"]["config"]["awq"] is True
    assert "blocks.0.mlp.fc" in meta["quantization"]["input_scales"]
