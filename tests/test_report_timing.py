"""The timing helpers of the benchmarks: what they return, not how fast anything is."""

from __future__ import annotations

import pytest

from minicompress.report import timing


def test_median_ms_is_the_median_of_the_calls(monkeypatch):
    # a fake clock: each call of fn takes the next duration in seconds
    durations = iter([5.0, 5.0, 0.001, 0.003, 0.002])  # 2 warm-up calls, then 3 timed
    now = [0.0]

    def fn():
        now[0] += next(durations)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    assert timing.median_ms(fn, repeat=3, warmup=2) == pytest.approx(2.0)


def test_best_of_rounds_alternates_and_keeps_each_best(monkeypatch):
    calls = []
    medians = {  # median_ms of each function, round by round
        "a": iter([3.0, 1.0, 2.0]),
        "b": iter([4.0, 6.0, 5.0]),
    }

    def fake_median_ms(fn, repeat, min_seconds):
        name = fn()
        calls.append(name)
        return next(medians[name])

    monkeypatch.setattr(timing, "median_ms", fake_median_ms)
    best = timing.best_of_rounds({"a": lambda: "a", "b": lambda: "b"}, rounds=3)
    assert best == {"a": 1.0, "b": 4.0}
    assert calls == ["a", "b", "a", "b", "a", "b"]  # in turn, not all of a then all of b


def test_best_of_rounds_refuses_no_round():
    with pytest.raises(ValueError, match="rounds must be >= 1; got 0"):
        timing.best_of_rounds({"a": lambda: None}, rounds=0)


def test_interleaved_times_rotates_the_start_and_warms_each_contender(monkeypatch):
    calls = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: calls.append(f"sleep {s}"))
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.interleaved_times(fns, rounds=2, repeat=2, pause_s=0.5)
    pause = "sleep 0.5"
    round1 = [pause, "a", "a", "a", pause, "b", "b", "b", pause, "c", "c", "c"]
    round2 = [pause, "b", "b", "b", pause, "c", "c", "c", pause, "a", "a", "a"]
    assert calls == round1 + round2  # a pause and one untimed call before each timed pair
    assert list(times) == ["a", "b", "c"] and all(len(t) == 4 for t in times.values())


@pytest.mark.parametrize("rounds, repeat", [(0, 1), (1, 0)])
def test_interleaved_times_refuses_no_call(rounds, repeat):
    with pytest.raises(ValueError, match="must be >= 1"):
        timing.interleaved_times({"a": lambda: None}, rounds=rounds, repeat=repeat)


def test_interleaved_times_calls_short_functions_until_min_seconds(monkeypatch):
    now = [0.0]

    def fn():  # each call takes 0.1 s of a fake clock
        now[0] += 0.1

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(timing.time, "sleep", lambda s: None)
    times = timing.interleaved_times({"f": fn}, rounds=2, repeat=1, min_seconds=0.35)
    assert times["f"] == pytest.approx([100.0] * 8)  # 4 calls reach 0.35 s, in each round
