"""minicompress/cli/pretrained.py: ``pretrained embed`` writes the embeddings in input order
(equal to the library's), ``pretrained compress --out --json`` writes a checkpoint and the
metrics of that file (recomputed here from the file); an existing output is refused before
any work; bad input (flags, a model directory without its files, of another architecture,
with a weight of the wrong shape) is one line and exit status 2."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from pretrained_helpers import (
    TINY_CONFIG,
    have,
    minilm,
    need_extra,
    tiny_hf_tensors,
    write_tiny_checkpoint,
)

cli = pytest.importorskip("minicompress.cli", reason="the cli package")
if "pretrained" not in getattr(cli, "COMMANDS", ()):
    pytest.skip("the pretrained command is not registered yet", allow_module_level=True)

from minicompress.pretrained import TruncationWarning, embed_texts, load_pretrained  # noqa: E402


def test_embed_writes_rows_in_input_order(tmp_path, capsys):
    model = minilm()
    f = tmp_path / "in.txt"
    f.write_text("A dog runs.\nThe cat sleeps on the mat.\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    assert cli.main(["pretrained", "embed", "--text", "Hello.", "--text-file", str(f),
                     "--out", str(out)]) == 0  # fmt: skip
    emb = np.load(out, allow_pickle=False)
    expected = embed_texts(model, ["Hello.", "A dog runs.", "The cat sleeps on the mat."])
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    assert "3 embeddings of width 384" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrained", "embed"], "no text to embed"),
        (["pretrained", "embed", "--text", "a", "--out", "x.txt"], ".npy"),
        (["pretrained", "embed", "--model-dir", "/nowhere", "--text", "a"], "/nowhere"),
        (["pretrained", "compress", "--sparsity", "1.5", "--no-bench"], "sparsity"),
        (["pretrained", "compress", "--bits", "9"], "--bits"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    minilm()
    if argv[1] == "compress":
        pytest.importorskip("minicompress.quant.runtime", reason="the quant package")
        pytest.importorskip("minicompress.prune.structured", reason="the prune package")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_compress_writes_the_metrics(tmp_path):
    minilm()
    pytest.importorskip("minicompress.quant.runtime", reason="the quant package")
    pytest.importorskip("minicompress.prune.structured", reason="the prune package")
    path = tmp_path / "m.json"
    argv = ["pretrained", "compress", "--activations", "dynamic", "--sentences", "8",
            "--no-bench", "--json", str(path)]  # fmt: skip
    assert cli.main(argv) == 0
    r = json.loads(path.read_text())
    assert r["method"] == "W8A8 dynamic channel" and r["runtime"] == "int8 kernels"
    assert 0.99 <= r["mean_cosine"] <= 1.0 and r["min_cosine"] <= r["mean_cosine"]
    for key in ("spearman", "top5_overlap"):
        assert 0 <= r[key] <= 1


# ----------------------------------------------------------------------------------------
# compress --out / --json on a tiny checkpoint written here (no model package needed)
# ----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_dir(tmp_path):
    need_extra()
    pytest.importorskip("minicompress.pretrained.saved", reason="the compressed encoder file")
    return write_tiny_checkpoint(tmp_path / "tiny")


def _compress(tiny_dir, tmp_path, *extra):
    argv = ["pretrained", "compress", "--model-dir", str(tiny_dir), "--sentences", "8", *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # 16 positions: corpus text is cut
        return cli.main(argv)


def test_compress_writes_a_checkpoint_and_the_metrics_of_that_file(tiny_dir, tmp_path):
    from minicompress.pretrained.fidelity import fidelity_report
    from minicompress.pretrained.saved import load_compressed_encoder
    from minicompress.pretrained.sentences import corpus_sentences

    out, js = tmp_path / "w8a8.mc", tmp_path / "w8a8.json"
    rc = _compress(tiny_dir, tmp_path, "--activations", "dynamic", "--out", str(out),
                   "--json", str(js))  # fmt: skip
    assert rc == 0
    r = json.loads(js.read_text())
    fields = ["mean_cosine", "min_cosine", "spearman", "top5_overlap", "ms_per_batch",
              "fp32_ms_per_batch", "file_bytes"]  # fmt: skip
    if have("torch"):
        fields += ["torch_int8_mean_cosine", "torch_int8_ms_per_batch", "torch_fp32_ms_per_batch"]
    assert not [k for k in fields if k not in r], sorted(r)
    assert r["file_bytes"] == out.stat().st_size and r["runtime"] == "int8 kernels"
    assert r["timed"] == "inference runtime" and r["ms_per_batch"] > 0
    # the figures are those of the file: recompute them from it, by another route
    model, cm = load_compressed_encoder(out)
    fp32 = load_pretrained(tiny_dir)
    texts = corpus_sentences(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        ref = embed_texts(fp32, texts)
        emb = embed_texts(model, texts, params=cm.params, cfg=cm.cfg, linear=cm.linear)
    again = fidelity_report(ref, emb)
    for k, v in again.items():
        assert r[k] == pytest.approx(v, abs=1e-12), k


def test_an_existing_output_is_refused_before_any_work(tiny_dir, tmp_path, capsys):
    out = tmp_path / "taken.mc"
    out.write_bytes(b"the user's file")
    js = tmp_path / "m.json"
    assert _compress(tiny_dir, tmp_path, "--out", str(out), "--json", str(js)) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "\n" not in err
    assert out.read_bytes() == b"the user's file" and not js.exists()
    js.write_text("{}")
    assert _compress(tiny_dir, tmp_path, "--json", str(js), "--no-bench") == 2
    assert js.read_text() == "{}"
    same = tmp_path / "same.mc"
    assert _compress(tiny_dir, tmp_path, "--out", str(same), "--json", str(same)) == 2
    assert "--json" in capsys.readouterr().err and not same.exists()


def _bad_dir(tmp_path, what):
    d = tmp_path / what
    if what == "empty":
        d.mkdir()
    elif what == "gpt2":
        write_tiny_checkpoint(d, config={**TINY_CONFIG, "model_type": "gpt2"})
    elif what == "shape":
        t = tiny_hf_tensors(np.random.default_rng(0))
        t["encoder.layer.1.intermediate.dense.weight"] = np.zeros((11, 8), np.float32)
        write_tiny_checkpoint(d, tensors=t)
    return d


@pytest.mark.parametrize(
    "what, message",
    [
        ("empty", "has no config.json"),
        ("gpt2", "config.json: model_type is 'gpt2'"),
        ("shape", "encoder.layer.1.intermediate.dense.weight' has shape (11, 8)"),
    ],
)
@pytest.mark.parametrize("command", ["embed", "compress"])
def test_a_bad_model_dir_is_one_line_naming_the_file(tmp_path, capsys, what, message, command):
    need_extra()
    d = _bad_dir(tmp_path, what)
    argv = ["pretrained", command, "--model-dir", str(d)]
    argv += ["--text", "a"] if command == "embed" else ["--no-bench"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(d) in err, err
    assert "\n" not in err and "Traceback" not in err


def test_embed_with_a_compressed_checkpoint(tiny_dir, tmp_path, capsys):
    from minicompress.pretrained.compress import CompressConfig, compress
    from minicompress.pretrained.saved import save_compressed_encoder

    model = load_pretrained(tiny_dir)
    cm = compress(model, CompressConfig(activations="dynamic"))
    ckpt = save_compressed_encoder(tmp_path / "w8a8.mc", model, cm)
    out = tmp_path / "e.npy"
    argv = ["pretrained", "embed", "--checkpoint", str(ckpt), "--text", "a big dog",
            "--text", "the cat sat", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    want = embed_texts(model, ["a big dog", "the cat sat"], params=cm.params, linear=cm.linear)
    np.testing.assert_array_equal(np.load(out, allow_pickle=False), want)
    both = ["pretrained", "embed", "--checkpoint", str(ckpt), "--model-dir", str(tiny_dir),
            "--text", "a"]  # fmt: skip
    assert cli.main(both) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--model-dir" in err and "--checkpoint" in err
    missing = ["pretrained", "embed", "--checkpoint", str(tmp_path / "none.mc"), "--text", "a"]
    assert cli.main(missing) == 2
    err = capsys.readouterr().err.strip()
    assert "none.mc" in err and "\n" not in err


def test_too_long_text_is_truncated_with_a_warning(tiny_dir, tmp_path):
    long_text = " ".join(["the big red dog sat on a mat"] * 5)  # 40 pieces, 16 positions
    out = tmp_path / "e.npy"
    argv = ["pretrained", "embed", "--model-dir", str(tiny_dir), "--text", long_text,
            "--out", str(out)]  # fmt: skip
    with pytest.warns(TruncationWarning, match="longer than 16 tokens"):
        assert cli.main(argv) == 0
    model = load_pretrained(tiny_dir)
    kept = model.tokenizer.encode(["the big red dog sat on a mat the big red dog sat on"])
    assert kept.ids.shape[1] == 16  # [CLS] + 14 pieces + [SEP]: what truncation keeps
    from minicompress.pretrained import sentence_embeddings

    want = sentence_embeddings(model.params, model.cfg, kept)
    np.testing.assert_allclose(np.load(out, allow_pickle=False), want, atol=1e-6)
