"""minicompress/pretrained/fidelity.py: each metric on a case worked by hand (2-D unit
vectors at chosen angles), against scipy/NumPy where one exists, and its properties."""

from __future__ import annotations

import numpy as np
import pytest

from minicompress.pretrained.fidelity import (
    fidelity_report,
    nearest_neighbours,
    row_cosines,
    similarity_spearman,
    top_k_overlap,
)


def at_degrees(*angles: float) -> np.ndarray:
    """Unit vectors [N, 2] at the given angles: cos(x_i, x_j) = cos(angle_i - angle_j)."""
    a = np.radians(angles)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def test_row_cosines_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    emb = np.array([[1.0, 1.0], [0.0, -2.0], [6.0, 8.0]])
    # 1/sqrt 2 (45 degrees); -1 (opposite); 1 (same direction, twice as long)
    np.testing.assert_allclose(row_cosines(ref, emb), [2**-0.5, -1.0, 1.0], rtol=1e-15)


def test_similarity_spearman_by_hand():
    # ref at 0, 30, 90 degrees: pairs (01, 02, 12) have cosines .866, 0, .5 -> ranks 3, 1, 2
    # emb at 0, 80, 90 degrees: cosines .174, 0, .985 -> ranks 2, 1, 3
    # d = (1, 0, -1): rho = 1 - 6 * 2 / (3 * (3**2 - 1)) = 0.5
    rho = similarity_spearman(at_degrees(0, 30, 90), at_degrees(0, 80, 90))
    assert rho == pytest.approx(0.5, abs=1e-12)
    # the same order of all pairs, other values: 1
    assert similarity_spearman(at_degrees(0, 30, 90), at_degrees(0, 20, 85)) == pytest.approx(1.0)


def test_nearest_neighbours_and_top1_overlap_by_hand():
    ref, emb = at_degrees(0, 10, 60, 90), at_degrees(0, 40, 60, 90)
    # ref: 0 -> 10, 10 -> 0, 60 -> 90 (30 < 50), 90 -> 60
    np.testing.assert_array_equal(nearest_neighbours(ref, 1)[:, 0], [1, 0, 3, 2])
    # emb: 0 -> 40, 40 -> 60 (20 < 40), 60 -> 40 (20 < 30), 90 -> 60
    np.testing.assert_array_equal(nearest_neighbours(emb, 1)[:, 0], [1, 2, 1, 2])
    # the same neighbour for sentences 0 and 3, another for 1 and 2: 2 / 4
    assert top_k_overlap(ref, emb, k=1) == 0.5
    # k = 2: ref {1,2} {0,2} {3,1} {2,1};  emb {1,2} {2,0} {1,3} {2,1}: all shared
    assert top_k_overlap(ref, emb, k=2) == 1.0


def test_identical_embeddings_score_one_everywhere(rng):
    x = rng.standard_normal((12, 5))
    report = fidelity_report(x, x * 3.0)  # a positive scale changes no direction
    assert report == pytest.approx(
        {"mean_cosine": 1.0, "min_cosine": 1.0, "spearman": 1.0, "top5_overlap": 1.0}
    )


def test_spearman_matches_ranks_computed_by_numpy(rng):
    ref, emb = rng.standard_normal((9, 4)), rng.standard_normal((9, 4))
    i, j = np.triu_indices(9, k=1)
    a = (ref @ ref.T / np.outer(*[np.linalg.norm(ref, axis=1)] * 2))[i, j]
    b = (emb @ emb.T / np.outer(*[np.linalg.norm(emb, axis=1)] * 2))[i, j]
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties in random data
    assert similarity_spearman(ref, emb) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)


def test_noise_lowers_every_metric(rng):
    ref = rng.standard_normal((40, 16))
    small = fidelity_report(ref, ref + 0.05 * rng.standard_normal(ref.shape))
    large = fidelity_report(ref, ref + 1.0 * rng.standard_normal(ref.shape))
    for key in small:
        assert large[key] < small[key] <= 1.0, key


@pytest.mark.parametrize(
    "ref, emb, match",
    [
        (np.ones((3, 2)), np.ones((3, 3)), "same shape"),
        (np.ones(3), np.ones(3), "2-D"),
        (np.array([[1.0, np.nan]] * 3), np.ones((3, 2)), "finite"),
        (np.array([[0.0, 0.0], [1, 1], [1, 2]]), np.ones((3, 2)), "all zeros"),
    ],
)
def test_bad_input_is_refused(ref, emb, match):
    with pytest.raises(ValueError, match=match):
        fidelity_report(ref, emb, k=1)


def test_too_few_sentences_are_refused():
    with pytest.raises(ValueError, match="at least 3"):
        similarity_spearman(at_degrees(0, 1), at_degrees(0, 1))
    with pytest.raises(ValueError, match="at least 6"):
        top_k_overlap(at_degrees(0, 1, 2, 3, 4), at_degrees(0, 1, 2, 3, 4), k=5)
    with pytest.raises(ValueError, match="k must be"):
        top_k_overlap(at_degrees(0, 1), at_degrees(0, 1), k=0)
