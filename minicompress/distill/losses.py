"""Knowledge-distillation losses on the logits, each a forward/backward pair.

The course (3.2.1) trains the student S on

    L = alpha * L_CE(p_S, y) + (1 - alpha) * L_KD(p_S, p_T)

with the KD term either the KL divergence ``sum_i p_T(i) log(p_T(i) / p_S(i))`` or the
squared difference ``sum_i (p_T(i) - p_S(i))**2``. Here ``p = softmax(z / T)`` with a
temperature T (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"), and a third KD term, the squared difference of the logits themselves.

Conventions shared by every function of this module:
- logits are ``[..., V]``: every leading position is one *token* (one distribution over the
  V classes), so a language model's ``[B, T, V]`` holds N = B * T tokens.
- Each loss is **summed over the classes and averaged over the tokens** (N counts the tokens
  that are not padding when ``pad_mask`` is given; padding tokens add nothing and get a zero
  gradient). This is PyTorch's ``reduction="batchmean"`` applied to logits flattened to
  ``[N, V]``; ``batchmean`` on an unflattened ``[B, T, V]`` divides by B only.
- The teacher is frozen: its logits are constants and get no gradient. They are cast to the
  student's dtype; every result keeps the student's dtype (float32 in training, float64 in
  gradient checks). Nothing is modified in place.
- ``*_backward(dloss, cache)`` returns the gradient w.r.t. the student's logits, scaled by
  the upstream ``dloss`` (1.0 for a loss that is the objective itself).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minicompress.nn.ops import (
    cross_entropy_backward,
    cross_entropy_forward,
    softmax_backward,
    softmax_forward,
)

KD_KINDS = ("kl", "mse", "mse-logits")  # the KD terms distillation_loss_forward can mix in

# ----------------------------------------------------------------------------------------
# checks of the arguments
# ----------------------------------------------------------------------------------------


def check_temperature(temperature) -> float:
    """A temperature must be a finite number > 0 (T = 1 is the plain softmax)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
        raise TypeError(f"temperature must be a number; got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    return float(temperature)


def check_alpha(alpha) -> float:
    """The weight of the cross-entropy in the mix must lie in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"alpha must be a number; got {type(alpha).__name__}")
    if not 0.0 <= alpha <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha!r}")
    return float(alpha)


def check_logit_pair(student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Refuse a teacher whose logits do not line up with the student's (another vocabulary,
    another batch or sequence shape); return the teacher's logits in the student's dtype."""
    student, teacher = np.asarray(student), np.asarray(teacher)
    if not np.issubdtype(student.dtype, np.floating):
        raise TypeError(f"student logits must be a float array; got {student.dtype}")
    if not np.issubdtype(teacher.dtype, np.floating):
        raise TypeError(f"teacher logits must be a float array; got {teacher.dtype}")
    if student.ndim < 1 or student.shape != teacher.shape:
        what = "vocabularies" if student.shape[:-1] == teacher.shape[:-1] else "shapes"
        raise ValueError(
            f"student and teacher logits have different {what}: student {student.shape}, "
            f"teacher {teacher.shape}; both must be [..., V] with the same V and positions"
        )
    return teacher.astype(student.dtype, copy=False)


def token_weights(shape: tuple, pad_mask: np.ndarray | None, dtype) -> tuple[np.ndarray, int]:
    """Which tokens count: weight 1 for a real token, 0 for padding, and their number N.

    shape: the leading shape ``[...]`` of the logits; pad_mask: bool ``[...]`` (True =
    padding) or None  ->  (weights [..., 1] of ``dtype``, N). N = 0 is refused (the mean
    over no token is undefined).
    """
    if pad_mask is None:
        n = math.prod(shape)
        weights = np.ones((*shape, 1), dtype=dtype)
    else:
        pad_mask = np.asarray(pad_mask)
        if pad_mask.dtype != np.bool_ or pad_mask.shape != tuple(shape):
            raise ValueError(
                f"pad_mask must be a bool array of shape {tuple(shape)} with True at padding; "
                f"got {pad_mask.dtype} {pad_mask.shape}"
            )
        weights = (~pad_mask).astype(dtype)[..., None]  # [..., 1]
        n = int((~pad_mask).sum())
    if n == 0:
        raise ValueError("no token to average over: every position is padding (or none given)")
    return weights, n


# ----------------------------------------------------------------------------------------
# softmax with temperature
# ----------------------------------------------------------------------------------------


class TemperedSoftmaxCache(NamedTuple):
    p: np.ndarray  # [..., V] the probabilities, all the softmax backward needs
    temperature: float


def softmax_with_temperature_forward(z: np.ndarray, temperature: float = 1.0) -> tuple:
    """p = softmax(z / T) over the last axis (the nn softmax, on the scaled logits).

    z: [..., V] float  ->  p: [..., V], same dtype. T > 1 flattens the distribution (the
    "soft labels" of Hinton et al. 2015), T < 1 sharpens it, T -> 0 approaches the argmax.
    """
    t = check_temperature(temperature)
    p, _ = softmax_forward(z / z.dtype.type(t))  # [..., V]; z / T is a new array
    return p, TemperedSoftmaxCache(p, t)


def softmax_with_temperature_backward(dp: np.ndarray, cache: TemperedSoftmaxCache) -> np.ndarray:
    """dz_j = (1 / T) p_j (dp_j - sum_i dp_i p_i)   (the softmax Jacobian, then d(z/T)/dz)."""
    p, t = cache
    return softmax_backward(dp, p) / p.dtype.type(t)


def log_softmax_with_temperature(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log p = z / T - max(z / T) - log sum_j exp(z_j / T - max(z / T)), over the last axis.

    z: [..., V]  ->  [..., V], same dtype. Computed from the logits, not as log(softmax):
    a probability that underflows to 0 keeps its finite log here (the KL needs it).
    """
    t = check_temperature(temperature)
    s = z / z.dtype.type(t)  # [..., V]
    s -= s.max(axis=-1, keepdims=True)
    s -= np.log(np.exp(s).sum(axis=-1, keepdims=True))  # [..., 1] broadcast
    return s


# ----------------------------------------------------------------------------------------
# KL divergence (Hinton's KD loss)
# ----------------------------------------------------------------------------------------


def kl_rows(p: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) over the last axis, with 0 log 0 = 0.

    p, log_p, log_q: [..., V] (p = exp(log_p), passed in to avoid recomputing it)  ->  [...].
    An entry with p_i = 0 adds exactly 0 whatever q_i is (as ``scipy.special.rel_entr``).
    """
    terms = np.where(p > 0, p * (log_p - log_q), p.dtype.type(0))  # [..., V]
    return terms.sum(axis=-1)


class KLCache(NamedTuple):
    p_s: np.ndarray  # [..., V] student probabilities at temperature T
    p_t: np.ndarray  # [..., V] teacher probabilities (soft labels) at temperature T
    weights: np.ndarray  # [..., 1] 1 for a token that counts, 0 for padding
    n: int  # N, the number of tokens that count
    temperature: float


def kd_kl_forward(
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    temperature: float = 1.0,
    pad_mask: np.ndarray | None = None,
) -> tuple:
    """Hinton's KD loss: L = T**2 / N * sum_n KL(p_T,n || p_S,n),  p = softmax(z / T).

    student_logits, teacher_logits: [..., V]; pad_mask: bool [...] (True = padding) or None
    ->  scalar (the student's dtype). The T**2 keeps the gradient's size independent of T
    (it is O(1/T**2) without it), so the KD term can be mixed with cross-entropy at any T.
    PyTorch: ``T**2 * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
    reduction="batchmean")`` on logits flattened to [N, V].
    """
    t = check_temperature(temperature)
    teacher_logits = check_logit_pair(student_logits, teacher_logits)
    weights, n = token_weights(student_logits.shape[:-1], pad_mask, student_logits.dtype)
    log_p_s = log_softmax_with_temperature(student_logits, t)  # [..., V]
    log_p_t = log_softmax_with_temperature(teacher_logits, t)  # [..., V]
    p_s, p_t = np.exp(log_p_s), np.exp(log_p_t)
    kl = kl_rows(p_t, log_p_t, log_p_s)  # [...]
    loss = t * t * float(np.sum(kl * weights[..., 0])) / n
    return student_logits.dtype.type(loss), KLCache(p_s, p_t, weights, n, t)


def kd_kl_backward(dloss: float, cache: KLCache) -> np.ndarray:
    """dL/dz_S = T * (p_S - p_T) / N   (zero on padding).

    Derivation, for one token: L = T**2 sum_i p_T,i (log p_T,i - log p_S,i) and
    log p_S,i = z_i / T - logsumexp(z / T), so d log p_S,i / dz_j = (delta_ij - p_S,j) / T and
    dL/dz_j = -T sum_i p_T,i (delta_ij - p_S,j) = T (p_S,j - p_T,j), using sum_i p_T,i = 1.
    """
    p_s, p_t, weights, n, t = cache
    scale = p_s.dtype.type(dloss * t / n)
    return (p_s - p_t) * weights * scale


# ----------------------------------------------------------------------------------------
# squared differences: the course's MSE on probabilities, and MSE on logits
# ----------------------------------------------------------------------------------------


class MSECache(NamedTuple):
    diff: np.ndarray  # [..., K] a - b, all the gradient needs (zero on padding)
    n: int  # N, the number of rows that count


def mse_rows_forward(a: np.ndarray, b: np.ndarray, pad_mask: np.ndarray | None = None) -> tuple:
    """L = 1 / N * sum_n sum_k (a_n,k - b_n,k)**2: summed over the last axis, averaged over
    the rows (tokens, or sentences for pooled embeddings).

    a: [..., K] (the student's side), b: [..., K] (the target, a constant); pad_mask: bool
    [...] or None  ->  scalar (a's dtype). Equals PyTorch's
    ``F.mse_loss(a, b, reduction="sum") / N``; ``F.mse_loss(a, b)`` (the mean over all
    entries) is this divided by K.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim < 1 or a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape [..., K]; got {a.shape} and {b.shape}")
    weights, n = token_weights(a.shape[:-1], pad_mask, a.dtype)
    diff = (a - b.astype(a.dtype, copy=False)) * weights  # [..., K]
    loss = float(np.sum(diff * diff)) / n
    return a.dtype.type(loss), MSECache(diff, n)


def mse_rows_backward(dloss: float, cache: MSECache) -> np.ndarray:
    """dL/da = 2 (a - b) / N   (zero on padding)."""
    diff, n = cache
    return diff * diff.dtype.type(2.0 * dloss / n)


class ProbMSECache(NamedTuple):
    softmax: TemperedSoftmaxCache  # the student's probabilities, for the Jacobian
    mse: MSECache


def kd_mse_forward(
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    temperature: float = 1.0,
    pad_mask: np.ndarray | None = None,
) -> tuple:
    """The course's squared-difference KD loss on probabilities:

        L = 1 / N * sum_n sum_i (p_T,n(i) - p_S,n(i))**2,   p = softmax(z / T).

    student_logits, teacher_logits: [..., V]; pad_mask: bool [...] or None  ->  scalar.
    Unlike the KL, no T**2 factor: this is the course's form as written (T = 1 by default).
    Each term is at most 2, so its gradient is bounded, and it vanishes where p_S is
    saturated (the softmax Jacobian below) — it pulls less hard than the KL on a wrong,
    confident student.
    """
    t = check_temperature(temperature)
    teacher_logits = check_logit_pair(student_logits, teacher_logits)
    p_s, sm = softmax_with_temperature_forward(student_logits, t)  # [..., V]
    p_t, _ = softmax_with_temperature_forward(teacher_logits, t)  # [..., V]
    loss, mse = mse_rows_forward(p_s, p_t, pad_mask)
    return loss, ProbMSECache(sm, mse)


def kd_mse_backward(dloss: float, cache: ProbMSECache) -> np.ndarray:
    """dL/dz_S,j = (2 / (N T)) p_S,j [(p_S,j - p_T,j) - sum_i p_S,i (p_S,i - p_T,i)].

    Derivation, for one token: dL/dp_S,i = 2 (p_S,i - p_T,i) / N, and the softmax of z / T
    has the Jacobian dp_S,i / dz_j = p_S,i (delta_ij - p_S,j) / T, symmetric in the sense
    sum_i g_i dp_i/dz_j = p_j (g_j - sum_i g_i p_i) / T. With g = dL/dp_S this is the formula
    above: the chain rule through ``mse_rows_backward`` then
    ``softmax_with_temperature_backward``.
    """
    dp = mse_rows_backward(dloss, cache.mse)  # [..., V]
    return softmax_with_temperature_backward(dp, cache.softmax)


def kd_mse_logits_forward(
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    temperature: float = 1.0,
    pad_mask: np.ndarray | None = None,
) -> tuple:
    """Squared difference of the logits: L = 1 / N * sum_n sum_i (z_S,n(i) - z_T,n(i))**2.

    ``temperature`` is accepted (and checked) for a uniform signature, and has no effect:
    T**2 * sum ((z_S - z_T) / T)**2 is the same loss. Hinton et al. 2015 (section 2.1): as
    T -> infinity, T**2 KL tends to 1 / (2V) sum (z_S - z_T)**2 for zero-mean logits, so this
    is the high-temperature limit of the KL up to that factor (and the logits' means).
    """
    check_temperature(temperature)
    teacher_logits = check_logit_pair(student_logits, teacher_logits)
    return mse_rows_forward(student_logits, teacher_logits, pad_mask)


def kd_mse_logits_backward(dloss: float, cache: MSECache) -> np.ndarray:
    """dL/dz_S = 2 (z_S - z_T) / N."""
    return mse_rows_backward(dloss, cache)


KD_FORWARD = {"kl": kd_kl_forward, "mse": kd_mse_forward, "mse-logits": kd_mse_logits_forward}
KD_BACKWARD = {"kl": kd_kl_backward, "mse": kd_mse_backward, "mse-logits": kd_mse_logits_backward}


def check_kind(kind) -> str:
    if kind not in KD_FORWARD:
        raise ValueError(f"kind (the KD loss) must be one of {', '.join(KD_KINDS)}; got {kind!r}")
    return kind


# ----------------------------------------------------------------------------------------
# the course's objective: alpha * CE + (1 - alpha) * KD
# ----------------------------------------------------------------------------------------


class DistillationCache(NamedTuple):
    alpha: float
    kind: str
    ce: float | None  # the cross-entropy term (None when alpha == 0: not computed)
    kd: float | None  # the KD term (None when alpha == 1: not computed)
    ce_cache: object  # CrossEntropyCache or None
    kd_cache: object  # the KD loss's cache or None


def distillation_loss_forward(
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    targets: np.ndarray | None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    kind: str = "kl",
    pad_mask: np.ndarray | None = None,
) -> tuple:
    """L = alpha * CE(z_S, y) + (1 - alpha) * KD(z_S, z_T)   (course 3.2.1).

    student_logits, teacher_logits: [..., V]; targets: int [...] (the true next tokens) or
    None for unlabelled data (then alpha must be 0); kind: "kl" (``kd_kl_forward``), "mse"
    (``kd_mse_forward``) or "mse-logits" (``kd_mse_logits_forward``)  ->  (scalar loss, cache;
    ``cache.ce`` and ``cache.kd`` hold the two terms). The cross-entropy is the nn one
    (``nn.ops.cross_entropy_forward``, at T = 1, on the hard labels). A term whose weight is
    0 is not computed, so alpha = 1 is exactly the cross-entropy, value and gradient.
    """
    alpha = check_alpha(alpha)
    kind = check_kind(kind)
    check_temperature(temperature)
    teacher_logits = check_logit_pair(student_logits, teacher_logits)
    ce = kd = ce_cache = kd_cache = None
    if alpha > 0:
        if targets is None:
            raise ValueError(f"alpha={alpha} weights the cross-entropy, which needs targets")
        if pad_mask is not None:
            raise ValueError("the cross-entropy term takes no pad_mask; use alpha=0 on padding")
        ce, ce_cache = cross_entropy_forward(student_logits, np.asarray(targets))
    if alpha < 1:
        kd, kd_cache = KD_FORWARD[kind](student_logits, teacher_logits, temperature, pad_mask)
    if alpha == 1:
        loss = ce
    elif alpha == 0:
        loss = kd
    else:
        loss = student_logits.dtype.type(alpha * ce + (1.0 - alpha) * kd)
    return loss, DistillationCache(
        alpha,
        kind,
        None if ce is None else float(ce),
        None if kd is None else float(kd),
        ce_cache,
        kd_cache,
    )


def distillation_loss_backward(dloss: float, cache: DistillationCache) -> np.ndarray:
    """dL/dz_S = alpha * dCE/dz_S + (1 - alpha) * dKD/dz_S   (each term's own backward)."""
    alpha, kind = cache.alpha, cache.kind
    if alpha == 1:
        return cross_entropy_backward(dloss, cache.ce_cache)
    dz = KD_BACKWARD[kind](dloss * (1.0 - alpha), cache.kd_cache)
    if alpha > 0:
        dz = dz + cross_entropy_backward(dloss * alpha, cache.ce_cache)
    return dz
