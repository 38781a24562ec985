"""minicompress/data/corpus.py: the built-in corpus, the character tokenizer, the 90/10
split, random batches and the fixed validation windows, and refusal of bad files."""

from __future__ import annotations

import numpy as np
import pytest

from minicompress.data.corpus import (
    CharTokenizer,
    builtin_text,
    eval_windows,
    get_batch,
    load_text,
    make_dataset,
)


@pytest.fixture(scope="module")
def corpus() -> str:
    return builtin_text()


def test_builtin_corpus_size_and_determinism(corpus):
    assert abs(len(corpus) - 465_000) < 0.1 * 465_000, len(corpus)  # ~465k characters
    assert builtin_text() == corpus  # same text every call (topics in sorted order)
    assert 'The "if" statement' in corpus  # it is Python's language reference


def test_tokenizer_round_trip(corpus):
    tok = CharTokenizer.from_text(corpus)
    assert tok.chars == sorted(set(corpus)) and tok.vocab_size == len(set(corpus))
    ids = tok.encode(corpus)
    assert ids.dtype == np.int64 and ids.shape == (len(corpus),)
    assert ids.min() == 0 and ids.max() == tok.vocab_size - 1
    assert tok.decode(ids) == corpus


def test_tokenizer_by_hand():
    tok = CharTokenizer.from_text("hello")
    assert tok.chars == ["e", "h", "l", "o"]
    np.testing.assert_array_equal(tok.encode("hole"), [1, 3, 2, 0])
    assert tok.decode([1, 0, 2, 2, 3]) == "hello"
    assert tok.decode(np.array([], np.int64)) == ""


def test_tokenizer_refuses_bad_input():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z'.*vocabulary"):
        tok.encode("abz")
    with pytest.raises(ValueError, match=r"token ids.*\[0, 3\)"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="chars"):
        CharTokenizer("aa")
    with pytest.raises(ValueError, match="text"):
        CharTokenizer.from_text("")


def test_split_is_90_10_and_contiguous(corpus):
    data = make_dataset(corpus, block_size=64)
    ids = data.tokenizer.encode(corpus)
    assert len(data.train) == round(0.9 * len(ids))
    assert len(data.train) + len(data.val) == len(ids)
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), ids)


def test_split_by_hand_and_given_tokenizer():
    data = make_dataset("abcdefghij" * 3, block_size=2, val_fraction=0.2)
    assert len(data.train) == 24 and len(data.val) == 6
    assert data.tokenizer.decode(data.val) == "efghij"
    tok = CharTokenizer("jihgfedcba")  # e.g. a trained model's vocabulary
    data = make_dataset("abcdefghij" * 3, block_size=2, tokenizer=tok)
    assert data.tokenizer is tok and data.train[0] == 9


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1])
def test_make_dataset_refuses_bad_fraction(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        make_dataset("abcdefghij" * 10, block_size=2, val_fraction=val_fraction)


@pytest.mark.parametrize("text", ["abc", "x" * 50])
def test_make_dataset_refuses_too_short_text(text):
    with pytest.raises(ValueError, match="text is too short.*block_size=8"):
        make_dataset(text, block_size=8)


def test_make_dataset_refuses_characters_outside_given_tokenizer():
    with pytest.raises(ValueError, match="vocabulary"):
        make_dataset("abcd" * 30, block_size=2, tokenizer=CharTokenizer("abc"))


# ----------------------------------------------------------------------------------------
# batches and windows, on ids = 0, 1, 2, ... so that a window tells where it starts
# ----------------------------------------------------------------------------------------


def test_get_batch_windows_and_shift():
    ids = np.arange(40, dtype=np.int64)
    x, y = get_batch(ids, 64, 8, np.random.default_rng(1))
    assert x.shape == y.shape == (64, 8) and x.dtype == np.int64
    starts = x[:, 0]
    np.testing.assert_array_equal(x, starts[:, None] + np.arange(8))  # contiguous windows
    np.testing.assert_array_equal(y, x + 1)  # y is x shifted by one
    assert starts.min() >= 0 and y.max() <= 39  # never past the end


def test_get_batch_reaches_both_ends():
    ids = np.arange(12, dtype=np.int64)
    x, _ = get_batch(ids, 500, 8, np.random.default_rng(2))
    assert set(x[:, 0]) == {0, 1, 2, 3}  # the starts 0 .. len - T - 1, all of them


def test_get_batch_same_seed_same_batch():
    ids = np.arange(1000, dtype=np.int64)
    a = get_batch(ids, 4, 16, np.random.default_rng(7))
    b = get_batch(ids, 4, 16, np.random.default_rng(7))
    c = get_batch(ids, 4, 16, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_get_batch_refuses_too_few_tokens():
    with pytest.raises(ValueError, match="ids has 8 tokens.*9"):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))


@pytest.mark.parametrize("n, t", [(41, 8), (40, 8), (9, 8), (100, 7)])
def test_eval_windows_cover_without_overlap(n, t):
    ids = np.arange(n, dtype=np.int64)
    x, y = eval_windows(ids, t)
    n_windows = (n - 1) // t
    assert x.shape == y.shape == (n_windows, t)
    np.testing.assert_array_equal(x.reshape(-1), np.arange(n_windows * t))  # in order, no gap
    np.testing.assert_array_equal(y, x + 1)
    assert n - 1 - n_windows * t < t  # what is left over is shorter than a window


# ----------------------------------------------------------------------------------------
# user files
# ----------------------------------------------------------------------------------------


def test_load_text_reads_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("naïve café ✓\n".encode())
    assert load_text(path) == "naïve café ✓\n"
    assert load_text(str(path)) == "naïve café ✓\n"


def test_load_text_refuses_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.txt.*does not exist"):
        load_text(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="not a file"):
        load_text(tmp_path)  # a folder


def test_load_text_refuses_empty_file(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="e.txt.*empty"):
        load_text(tmp_path / "e.txt")


def test_load_text_refuses_non_utf8(tmp_path):
    (tmp_path / "l1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="l1.txt.*UTF-8.*byte 3"):
        load_text(tmp_path / "l1.txt")
