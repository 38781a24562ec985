"""minicompress/pretrained/tokenizer.py: sentence-transformers' token ids (golden file),
padding to the longest row with pad_mask True at padding, truncation with a warning, the
vocab.txt path equal to the tokenizer.json path, refused input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from make_golden import GOLDEN_DIR
from pretrained_helpers import minilm, need_extra, write_tiny_checkpoint

from minicompress.pretrained.tokenizer import (
    TruncationWarning,
    WordPieceTokenizer,
    pad_batch,
    select_rows,
)


def golden():
    with np.load(GOLDEN_DIR / "pretrained_minilm.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_pad_batch_by_hand():
    ids, pad = pad_batch([[5, 6, 7], [8]], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(pad, [[False, False, False], [False, True, True]])


def test_ids_match_sentence_transformers_golden():
    model, g = minilm(), golden()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = model.tokenizer.encode(list(g["texts"]))
    keep = g["attention_mask"] == 1
    np.testing.assert_array_equal(batch.pad_mask, ~keep)
    np.testing.assert_array_equal(batch.ids[keep], g["ids"][keep])
    np.testing.assert_array_equal(batch.token_types, g["token_types"])
    assert batch.ids.shape == g["ids"].shape  # padded to the longest row, not to 128
    # the last golden text is longer than 256 tokens: cut, and said so
    assert [str(w.message) for w in caught if w.category is TruncationWarning] == [
        "1 of 8 texts were longer than 256 tokens and were truncated (positions 7)"
    ]
    assert batch.ids[-1, -1] == 102  # [SEP] still closes the cut row


def test_vocab_txt_gives_the_same_ids_as_tokenizer_json(tmp_path):
    model, g = minilm(), golden()
    texts = list(g["texts"][:-1])
    folder = tmp_path / "vocab_only"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        (folder / name).write_bytes((model.model_dir / name).read_bytes())
    from_vocab = WordPieceTokenizer.from_dir(folder, max_length=256).encode(texts)
    from_json = model.tokenizer.encode(texts)
    np.testing.assert_array_equal(from_vocab.ids, from_json.ids)
    np.testing.assert_array_equal(from_vocab.pad_mask, from_json.pad_mask)


def test_tiny_vocabulary_and_truncation(tmp_path):
    need_extra()
    folder = write_tiny_checkpoint(tmp_path / "tiny")
    tok = WordPieceTokenizer.from_dir(folder, max_length=6)
    with pytest.warns(TruncationWarning, match="positions 1"):
        batch = tok.encode(["The cat sat.", "a big red dog runs on the mat"])
    # [CLS]=2 the=5 cat=6 sat=7 .=14 [SEP]=3;  a=10 big=16 red=17 dog=11 [SEP] (cut at 6)
    np.testing.assert_array_equal(batch.ids, [[2, 5, 6, 7, 14, 3], [2, 10, 16, 17, 11, 3]])
    np.testing.assert_array_equal(batch.lengths, [6, 6])
    batch = tok.encode(["the cats", "dog"])
    np.testing.assert_array_equal(batch.ids, [[2, 5, 6, 12, 3], [2, 11, 3, 0, 0]])
    np.testing.assert_array_equal(batch.pad_mask[1], [False, False, False, True, True])
    sub = select_rows(batch, [1])
    np.testing.assert_array_equal(sub.ids, [[2, 11, 3]])  # cut to its own length


@pytest.mark.parametrize(
    "texts, error",
    [("one string", TypeError), ([], ValueError), (["ok", 3], TypeError), (None, TypeError)],
)
def test_bad_texts_are_refused(tmp_path, texts, error):
    need_extra()
    tok = WordPieceTokenizer.from_dir(write_tiny_checkpoint(tmp_path / "t"), max_length=8)
    with pytest.raises(error, match="texts"):
        tok.encode(texts)


def test_bad_max_length_is_refused(tmp_path):
    need_extra()
    with pytest.raises(ValueError, match="max_length"):
        WordPieceTokenizer.from_dir(write_tiny_checkpoint(tmp_path / "t"), max_length=1)


def test_a_call_may_lower_max_length_but_not_raise_it(tmp_path):
    need_extra()
    tok = WordPieceTokenizer.from_dir(write_tiny_checkpoint(tmp_path / "t"), max_length=8)
    with pytest.warns(TruncationWarning, match="longer than 4 tokens"):
        batch = tok.encode(["the cat sat on the mat"], max_length=4)
    np.testing.assert_array_equal(batch.ids, [[2, 5, 6, 3]])
    assert tok.encode(["the cat sat on the mat"]).ids.shape == (1, 8)  # back to 8 after
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(["the cat"], max_length=9)
