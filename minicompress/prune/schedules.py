"""Sparsity schedules: how much of the model is pruned at each fine-tuning step.

A schedule maps the optimizer step t (0 before the first step) to a target sparsity s_t;
the masks are recomputed whenever s_t rises (``gradual.py`` interleaves this with
fine-tuning), so the network recovers between pruning events.

- ``OneShot``:  everything at once, s_t = s_f from step ``start`` on.
- ``Iterative``: ``rounds`` equal pruning rounds, each removing the same fraction of the
  weights still there (Han et al. 2015; Frankle & Carbin 2019): s_j = 1 - (1 - s_f)^(j / R).
- ``Cubic``:    Zhu & Gupta (2017), fast at first, slowly at the end:
  s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3  at t = t0, t0 + dt, ..., t0 + n dt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from minicompress.prune.masks import check_sparsity


def _check_step(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def cubic_sparsity(t: float, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta (2017), "To prune, or not to prune", eq. (1):

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3

    for t in {t0, t0 + dt, ..., t0 + n dt}: s_{t0} = s_i, s_{t0 + n dt} = s_f. Between those
    steps the sparsity of the last pruning step holds; before t0 nothing is pruned (0), after
    t0 + n dt it stays s_f.  t: step; s_i, s_f in [0, 1]; t0 >= 0; n >= 1 pruning steps of dt >= 1.
    """
    s_i, s_f = check_sparsity(s_i, "s_i"), check_sparsity(s_f, "s_f")
    _check_step("t0", t0, 0)
    _check_step("n", n, 1)
    _check_step("dt", dt, 1)
    if t < t0:
        return 0.0
    k = min(n, math.floor((t - t0) / dt))  # pruning steps taken so far
    return s_f + (s_i - s_f) * (1.0 - k / n) ** 3


def iterative_sparsity(t: float, s_f: float, rounds: int, start: int, every: int) -> float:
    """Iterative pruning: round j (j = 1..R, at step start + (j - 1) * every) removes the same
    fraction of the remaining weights, so after it

        s_j = 1 - (1 - s_f)**(j / R)

    (each round keeps (1 - s_f)^(1/R) of what was left; s_R = s_f). 0 before ``start``."""
    s_f = check_sparsity(s_f, "s_f")
    _check_step("rounds", rounds, 1)
    _check_step("start", start, 0)
    _check_step("every", every, 1)
    if t < start:
        return 0.0
    j = min(rounds, math.floor((t - start) / every) + 1)
    return 1.0 - (1.0 - s_f) ** (j / rounds)


@dataclass(frozen=True)
class OneShot:
    """Prune to ``final`` at step ``start`` (0: before fine-tuning), then only fine-tune."""

    final: float  # s_f: the sparsity reached
    start: int = 0  # step at which the masks are computed (movement scores need a few first)

    def __post_init__(self):
        check_sparsity(self.final, "final")
        _check_step("start", self.start, 0)

    def sparsity_at(self, t: float) -> float:
        return self.final if t >= self.start else 0.0

    @property
    def end(self) -> int:
        """The step from which the sparsity is final."""
        return self.start


@dataclass(frozen=True)
class Iterative:
    """``iterative_sparsity``: ``rounds`` pruning rounds ``every`` steps apart from ``start``."""

    final: float  # s_f: the sparsity after the last round
    rounds: int = 5  # R: pruning rounds
    start: int = 0  # step of the first round
    every: int = 50  # fine-tuning steps between two rounds

    def __post_init__(self):
        check_sparsity(self.final, "final")
        _check_step("rounds", self.rounds, 1)
        _check_step("start", self.start, 0)
        _check_step("every", self.every, 1)

    def sparsity_at(self, t: float) -> float:
        return iterative_sparsity(t, self.final, self.rounds, self.start, self.every)

    @property
    def end(self) -> int:
        return self.start + (self.rounds - 1) * self.every


@dataclass(frozen=True)
class Cubic:
    """``cubic_sparsity`` (Zhu & Gupta 2017): n pruning steps dt apart from t0."""

    final: float  # s_f: the sparsity at t0 + n dt
    initial: float = 0.0  # s_i: the sparsity at t0
    start: int = 0  # t0: the first pruning step
    n: int = 10  # number of pruning steps after t0
    dt: int = 20  # fine-tuning steps between two pruning steps

    def __post_init__(self):
        check_sparsity(self.final, "final")
        check_sparsity(self.initial, "initial")
        if self.initial > self.final:
            raise ValueError(
                f"initial sparsity {self.initial} must not exceed the final one {self.final}"
            )
        _check_step("start", self.start, 0)
        _check_step("n", self.n, 1)
        _check_step("dt", self.dt, 1)

    def sparsity_at(self, t: float) -> float:
        return cubic_sparsity(t, self.initial, self.final, self.start, self.n, self.dt)

    @property
    def end(self) -> int:
        return self.start + self.n * self.dt


SCHEDULES = ("oneshot", "iterative", "cubic")


def check_fraction(value: object, name: str, low_open: bool = True) -> float:
    """``value`` as a float in (0, 1] (``low_open``) or [0, 1]; a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1]; got {value!r}")
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    if not (math.isfinite(value) and ok):
        lo = "(0" if low_open else "[0"
        raise ValueError(f"{name} must be a fraction in {lo}, 1]; got {value!r}")
    return float(value)


def make_schedule(
    name: str,
    final: float,
    steps: int,
    start: int = 0,
    *,
    end: float | None = None,
    events: int | None = None,
):
    """The schedule ``name`` reaching ``final`` within ``steps`` fine-tuning steps, then
    holding it to the end so that the network recovers at the final sparsity.

    end: the fraction of ``steps`` by which the sparsity is final (None: 2/3, leaving the
    last third to recover; 1 leaves no recovery); events: how many times the masks rise
    (None: 10 for cubic — Zhu & Gupta's n — and 5 rounds for iterative; fewer when the ramp
    has fewer steps). oneshot: everything at ``start``; iterative: equal rounds; cubic:
    n = events pruning steps, dt = the ramp / n.
    """
    check_sparsity(final, "final")
    _check_step("steps", steps, 0)
    if end is not None:
        end = check_fraction(end, "end")
    if events is not None:
        _check_step("events", events, 1)
    if name == "oneshot":
        return OneShot(final, start)
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {name!r}")
    # steps over which the sparsity rises (the 1e-9 keeps end * steps = 200.0 from 199.99..)
    last = (2 * steps) // 3 if end is None else math.floor(end * steps + 1e-9)
    ramp = max(1, last - start)
    if name == "iterative":
        rounds = min(5 if events is None else events, ramp)
        return Iterative(final, rounds, start, max(1, ramp // rounds))
    n = min(10 if events is None else events, ramp)
    return Cubic(final, 0.0, start, n, max(1, ramp // n))
