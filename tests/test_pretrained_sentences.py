"""minicompress/pretrained/sentences.py: the prose filter on a hand-made text, the fixed
set's size and determinism, even spacing."""

from __future__ import annotations

import numpy as np
import pytest

from minicompress.pretrained.sentences import (
    all_corpus_sentences,
    corpus_sentences,
    evenly_spaced,
    is_prose_sentence,
    prose_paragraphs,
)

TEXT = """A heading
*********

This first paragraph is prose that a reader
would enjoy. It goes on over two lines! Short one.

   def code_block(x):
       return x  # indented: code

Another paragraph holds a sentence of plain words here. X = y + z * (a - b) / c.
This first paragraph is prose that a reader would enjoy.
"""


def test_prose_paragraphs_skip_headings_and_code():
    paras = prose_paragraphs(TEXT)
    assert paras[0].startswith("This first paragraph is prose that a reader would enjoy.")
    assert not any("code_block" in p or "heading" in p for p in paras)


def test_sentences_by_hand():
    got = all_corpus_sentences(TEXT, min_words=5, max_words=40)
    # "It goes on over two lines!" does not end with '.'; "Short one." is too short; the
    # formula is not prose; the repeated sentence is kept once
    assert got == [
        "This first paragraph is prose that a reader would enjoy.",
        "Another paragraph holds a sentence of plain words here.",
    ]
    assert not is_prose_sentence("x = y + z * (a - b) / c and so on.", 3, 40)


def test_evenly_spaced_by_hand():
    np.testing.assert_array_equal(evenly_spaced(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(evenly_spaced(5, 5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(evenly_spaced(7, 1), [0])
    with pytest.raises(ValueError, match="n must lie"):
        evenly_spaced(3, 4)


def test_the_fixed_set_is_deterministic_distinct_and_large_enough():
    a, b = corpus_sentences(256), corpus_sentences(256)
    assert a == b and len(set(a)) == 256
    pool = all_corpus_sentences()
    assert len(pool) >= 256
    assert a[0] == pool[0] and a[-1] == pool[-1]  # spread over the whole corpus


@pytest.mark.parametrize("n", [0, -3, 2.5, True, 10**6])
def test_bad_n_is_refused(n):
    with pytest.raises(ValueError, match="n"):
        corpus_sentences(n)
