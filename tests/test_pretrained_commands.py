"""minicompress/pretrained/commands.py: texts from flags and a file in input order, the
.npy written atomically and read back without pickle, refused input."""

from __future__ import annotations

import numpy as np
import pytest
from pretrained_helpers import minilm

from minicompress.pretrained import embed_texts
from minicompress.pretrained.commands import embed_command, read_texts, save_npy


def test_read_texts_keeps_every_line_in_order(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("first line\n\nthird line\n", encoding="utf-8")
    assert read_texts(["flag one", "flag two"], f) == [
        "flag one",
        "flag two",
        "first line",
        "",
        "third line",
    ]


def test_no_text_and_bad_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--text"):
        read_texts(None, None)
    with pytest.raises(ValueError, match="does not exist"):
        read_texts(None, tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="UTF-8"):
        read_texts(None, tmp_path / "bin.txt")


def test_save_npy_round_trip_and_suffix(tmp_path, rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    path = save_npy(tmp_path / "e.npy", a)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), a)
    with pytest.raises(ValueError, match=r"\.npy"):
        save_npy(tmp_path / "e.txt", a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]  # no temporary left


def test_embed_command_rows_follow_the_input_order(tmp_path):
    model = minilm()
    f = tmp_path / "in.txt"
    f.write_text("A dog runs.\nThe interpreter reads the source file line by line.\n")
    emb = embed_command(None, ["Hello."], f, batch_size=2)
    expected = np.concatenate(
        [embed_texts(model, [t], batch_size=1) for t in ["Hello.", "A dog runs.",
                                                         "The interpreter reads the source file "
                                                         "line by line."]]
    )  # fmt: skip
    np.testing.assert_allclose(emb, expected, atol=1e-6)
