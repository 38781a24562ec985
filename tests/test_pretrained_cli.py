"""minicompress/cli/pretrained.py: ``pretrained embed`` writes the embeddings in input order
(equal to the library's), ``pretrained compress --json`` writes the metrics; bad input is
one line and exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pretrained_helpers import minilm

cli = pytest.importorskip("minicompress.cli", reason="the cli package")
if "pretrained" not in getattr(cli, "COMMANDS", ()):
    pytest.skip("the pretrained command is not registered yet", allow_module_level=True)

from minicompress.pretrained import embed_texts  # noqa: E402


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
