"""minicompress/prune/schedules.py: the cubic schedule of Zhu & Gupta and iterative pruning
against values worked by hand; the schedules built for the CLI; bad input."""

from __future__ import annotations

import pytest

from minicompress.prune.schedules import (
    Cubic,
    Iterative,
    OneShot,
    cubic_sparsity,
    iterative_sparsity,
    make_schedule,
)

# s_i = 0, s_f = 0.8, t0 = 10, n = 4, dt = 5:  s = 0.8 - 0.8 (1 - k/4)^3 after k pruning steps
#   k = 1: 0.8 - 0.8 * 0.421875 = 0.4625;  k = 2: 0.8 - 0.8 * 0.125 = 0.7;
#   k = 3: 0.8 - 0.8 * 0.015625 = 0.7875;  k = 4: 0.8
CUBIC_BY_HAND = [
    (0, 0.0),
    (9, 0.0),
    (10, 0.0),
    (14, 0.0),
    (15, 0.4625),
    (19, 0.4625),
    (20, 0.7),
    (25, 0.7875),
    (30, 0.8),
    (1000, 0.8),
]


@pytest.mark.parametrize(("t", "expected"), CUBIC_BY_HAND)
def test_cubic_against_hand_computed_values(t, expected):
    assert cubic_sparsity(t, 0.0, 0.8, 10, 4, 5) == pytest.approx(expected, abs=1e-12)
    assert Cubic(0.8, 0.0, 10, 4, 5).sparsity_at(t) == pytest.approx(expected, abs=1e-12)


def test_cubic_with_initial_sparsity():
    # s_i = 0.1: k = 1 gives 0.8 + (0.1 - 0.8) * 0.421875 = 0.5046875; at t0 it is s_i
    assert cubic_sparsity(15, 0.1, 0.8, 10, 4, 5) == pytest.approx(0.5046875, abs=1e-12)
    assert cubic_sparsity(10, 0.1, 0.8, 10, 4, 5) == pytest.approx(0.1, abs=1e-12)


def test_cubic_rises_fast_first_then_slowly():
    s = [cubic_sparsity(t, 0.0, 0.9, 0, 10, 1) for t in range(11)]
    gains = [b - a for a, b in zip(s, s[1:], strict=False)]
    assert all(g1 > g2 for g1, g2 in zip(gains, gains[1:], strict=False))
    assert s[-1] == pytest.approx(0.9)


def test_iterative_by_hand():
    # s_f = 0.75, 2 rounds: each keeps sqrt(0.25) = 0.5 of what is left -> 0.5, then 0.75
    assert iterative_sparsity(0, 0.75, 2, 0, 10) == pytest.approx(0.5)
    assert iterative_sparsity(9, 0.75, 2, 0, 10) == pytest.approx(0.5)
    assert iterative_sparsity(10, 0.75, 2, 0, 10) == pytest.approx(0.75)
    assert iterative_sparsity(500, 0.75, 2, 0, 10) == pytest.approx(0.75)
    assert Iterative(0.75, 2, 5, 10).sparsity_at(4) == 0.0
    assert Iterative(0.75, 2, 5, 10).end == 15


def test_oneshot():
    s = OneShot(0.5, start=3)
    assert [s.sparsity_at(t) for t in (0, 2, 3, 100)] == [0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("name", ["oneshot", "iterative", "cubic"])
@pytest.mark.parametrize("steps", [0, 1, 7, 300])
def test_make_schedule_reaches_final_and_leaves_recovery(name, steps):
    sched = make_schedule(name, 0.8, steps)
    assert sched.sparsity_at(sched.end) == pytest.approx(0.8)
    if steps >= 3:
        assert sched.end <= (2 * steps) // 3  # the last third is recovery at the final sparsity
    values = [sched.sparsity_at(t) for t in range(max(steps, 1) + 1)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))  # never decreases


@pytest.mark.parametrize("name", ["iterative", "cubic"])
@pytest.mark.parametrize(("end", "events"), [(0.5, 30), (1 / 3, 10), (1.0, 4), (0.25, 1)])
def test_make_schedule_end_and_events(name, end, events):
    steps = 300
    sched = make_schedule(name, 0.8, steps, end=end, events=events)
    values = [sched.sparsity_at(t) for t in range(steps + 1)]
    last = int(end * steps + 0.5)  # 150, 100, 300, 75 steps: the ramp ends there or before
    assert values[last] == pytest.approx(0.8)
    assert all(v < 0.8 - 1e-9 for v in values[: sched.end])  # final only at the ramp's end
    assert sched.end <= last
    rises = sum(b > a for a, b in zip(values, values[1:], strict=False))
    assert rises == events - (1 if name == "iterative" else 0)  # iterative's round 1 is at t=0
    assert values[0] == (pytest.approx(1 - 0.2 ** (1 / events)) if name == "iterative" else 0.0)


def test_make_schedule_default_end_is_two_thirds():
    assert make_schedule("cubic", 0.8, 300).end == 200
    assert make_schedule("cubic", 0.8, 300, end=2 / 3).end == 200  # not 199 by rounding
    assert make_schedule("cubic", 0.8, 300, events=20).dt == 10


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(end=0.0), ValueError, "end must be a fraction in \\(0, 1\\]; got 0.0"),
        (dict(end=1.5), ValueError, "end must be a fraction"),
        (dict(end=float("nan")), ValueError, "end must be a fraction"),
        (dict(end="half"), TypeError, "end must be a number"),
        (dict(end=True), TypeError, "end must be a number"),
        (dict(events=0), ValueError, "events must be an integer >= 1; got 0"),
        (dict(events=2.5), ValueError, "events must be an integer"),
    ],
)
def test_make_schedule_bad_end_or_events(kw, error, match):
    with pytest.raises(error, match=match):
        make_schedule("cubic", 0.8, 300, **kw)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Cubic(1.2), "final"),
        (lambda: Cubic(0.5, initial=0.6), "must not exceed"),
        (lambda: Cubic(0.5, n=0), "n must be an integer >= 1"),
        (lambda: Cubic(0.5, dt=0), "dt must be"),
        (lambda: Iterative(0.5, rounds=0), "rounds"),
        (lambda: OneShot(-0.1), "final"),
        (lambda: make_schedule("linear", 0.5, 10), "schedule must be one of"),
        (lambda: cubic_sparsity(3, 0.0, 0.5, -1, 4, 5), "t0"),
    ],
)
def test_bad_schedules_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()
