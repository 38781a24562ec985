"""The tests' own comparison, ``gradcheck.assert_close``: np.allclose's rule, hand cases."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

INF, NAN = np.inf, np.nan


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ([1.0, 2.0], [1.0, 2.0]),
        ([1.0 + 1e-7], [1.0]),  # within rtol
        ([INF, -INF], [INF, -INF]),  # equal infinities
        ([NAN, 1.0], [NAN, 1.0]),  # NaN against NaN
    ],
)
def test_assert_close_accepts(ours, theirs):
    assert_close(np.array(ours), np.array(theirs), rtol=1e-6)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ([1.0 + 1e-5], [1.0]),  # beyond rtol
        ([1e300], [INF]),  # finite against inf (inf - inf once hid this)
        ([INF], [1e300]),
        ([-INF], [INF]),
        ([NAN], [1.0]),
        ([1.0], [NAN]),
    ],
)
def test_assert_close_refuses(ours, theirs):
    with pytest.raises(AssertionError, match="differ beyond"):
        assert_close(np.array(ours), np.array(theirs), rtol=1e-6)


def test_assert_close_refuses_another_shape():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(3), np.zeros((1, 3)), rtol=1.0)
