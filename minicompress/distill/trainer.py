"""Distillation through the one training loop: a loss object for
``nn.train.train(params, cfg, data, tc, loss=DistillLoss(...))``.

The teacher is frozen — forward only, its parameters held read-only — and labels every
batch; the student is trained on

    L = alpha CE(z_S, y) + (1 - alpha) KD(z_S, z_T)                     (course 3.2.1)
        + w_hidden * mean over mapped blocks of MSE(h_S W + b, h_T)     (TinyBERT)
        + w_attn * mean over mapped blocks of KL(A_T || A_S)            (MiniLM)

The projections W, b (one per mapped block, from the student's width to the teacher's) are
the loss's own ``params``: the loop trains them with the student and does not save them in
the student's checkpoint. The loop gives the progress bar, the validation (the student's
next-token cross-entropy on the validation windows) and the checkpoints.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minicompress.distill.losses import (
    check_alpha,
    check_kind,
    check_temperature,
    distillation_loss_backward,
    distillation_loss_forward,
)
from minicompress.distill.student import check_teacher_student
from minicompress.distill.transfer import (
    HEAD_MODES,
    attention_kl_backward,
    attention_kl_forward,
    check_layer_map,
    hidden_mse_backward,
    hidden_mse_forward,
    init_projection,
)
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, backward, check_params, forward


@dataclass(frozen=True)
class DistillConfig:
    """What the student learns from the teacher. The defaults are Hinton's soft targets at
    a moderate temperature mixed half and half with the hard labels."""

    alpha: float = 0.5  # weight of the hard-label cross-entropy; 1 - alpha goes to the KD term
    temperature: float = 2.0  # T of softmax(z / T) in the KD term (Hinton et al.: 1 to 20)
    loss: str = "kl"  # the KD term: "kl" (T^2 KL), "mse" (course: on probabilities), "mse-logits"
    hidden_weight: float = 0.0  # weight of the hidden-state MSE through a projection (0: off)
    attn_weight: float = 0.0  # weight of the attention-map KL (0: off)
    attn_heads: str = "auto"  # attention heads "matched" one to one, "averaged", or "auto"
    layer_map: tuple | None = None  # (student block, teacher block) pairs; None: uniform

    def __post_init__(self):
        check_alpha(self.alpha)
        check_temperature(self.temperature)
        check_kind(self.loss)
        for name in ("hidden_weight", "attn_weight"):
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, (int, float, np.floating)):
                raise TypeError(f"{name} must be a number; got {w!r}")
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {w!r}")
        if self.attn_heads not in HEAD_MODES:
            raise ValueError(
                f"attn_heads must be one of {', '.join(HEAD_MODES)}; got {self.attn_heads!r}"
            )


class TeacherOutputs(NamedTuple):
    logits: np.ndarray  # [B, T, V] the soft labels' logits
    hidden: dict  # teacher block -> its output [B, T, C_T] (only the mapped blocks)
    attn: dict  # teacher block -> its attention probabilities [B, H_T, T, T] (mapped only)


class SoftLabelCache:
    """The teacher's outputs of batches already seen, up to ``max_mb`` megabytes.

    Worth it when the same batches come back: runs that share a seed (a sweep over alpha
    and T) draw the same batches in the same order, so the teacher labels each batch once.
    Once full, new batches are not kept: with batches replayed in order, dropping the oldest
    to make room would evict every entry before its reuse (no hit at all); keeping the first
    ones serves that many steps of every later run. Keyed by the batch's tokens, padding
    and token types, and by which teacher outputs are kept."""

    def __init__(self, max_mb: float):
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not max_mb >= 0:
            raise ValueError(f"max_mb must be a number >= 0; got {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self.entries: dict = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(batch, hidden_layers: tuple, attn_layers: tuple) -> tuple:
        h = hashlib.sha256()
        for a in (batch.x, batch.pad_mask, batch.token_types):
            if a is not None:
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.tobytes())
            h.update(b"|")
        return h.hexdigest(), hidden_layers, attn_layers

    def get(self, key) -> TeacherOutputs | None:
        out = self.entries.get(key)
        if out is None:
            self.misses += 1
        else:
            self.hits += 1
        return out

    def put(self, key, out: TeacherOutputs) -> None:
        size = out.logits.nbytes + sum(a.nbytes for d in (out.hidden, out.attn) for a in d.values())
        if self.bytes + size > self.max_bytes:
            return  # full: keep the batches already held (see the class docstring)
        self.entries[key] = out
        self.bytes += size


def _frozen(params: dict) -> dict:
    """Read-only views of the teacher's arrays: nothing can train or change them through the
    loss (the caller's arrays keep their own flags)."""
    out = {}
    for k, a in params.items():
        view = a.view()
        view.flags.writeable = False
        out[k] = view
    return out


class DistillLoss:
    """The loss hook of ``nn.train.train`` that distils ``teacher`` into the student.

    teacher_params, teacher_cfg: the trained teacher (frozen); student_params, student_cfg:
    the student as it starts (for the checks and the projections' shapes); dc: the
    ``DistillConfig``; rng: initialises the projections; teacher_linear: the teacher's
    linear layers (dense by default); soft_labels: a ``SoftLabelCache`` to reuse the
    teacher's outputs of repeated batches (None: the teacher runs on every batch);
    op_impl: the ops of both forward passes (default ``MINICOMPRESS_KERNEL``).

    Called as ``loss(params, batch, cfg, linear) -> (loss, grads)``; ``grads`` holds the
    student's gradients and the projections' (under ``self.params``' names). Each call
    appends its terms to ``self.terms`` (ce, kd, hidden, attn, total) for plots.
    """

    def __init__(
        self,
        teacher_params: dict,
        teacher_cfg: TransformerConfig,
        student_params: dict,
        student_cfg: TransformerConfig,
        dc: DistillConfig | None = None,
        *,
        rng: np.random.Generator | None = None,
        teacher_linear=DENSE,
        soft_labels: SoftLabelCache | None = None,
        op_impl=None,
    ):
        dc = DistillConfig() if dc is None else dc
        if not isinstance(dc, DistillConfig):
            raise TypeError(f"dc must be a DistillConfig; got {type(dc).__name__}")
        check_params(teacher_params, teacher_cfg)
        check_params(student_params, student_cfg)
        check_teacher_student(teacher_cfg, student_cfg, teacher_params, student_params)
        self.config = dc
        self.teacher_params = _frozen(teacher_params)
        self.teacher_cfg = teacher_cfg
        self.student_cfg = student_cfg
        self.teacher_linear = teacher_linear
        self.soft_labels = soft_labels
        self.op_impl = op_impl
        self.layer_map = check_layer_map(dc.layer_map, student_cfg.n_layer, teacher_cfg.n_layer)
        self.hidden_layers = tuple(t for _, t in self.layer_map) if dc.hidden_weight else ()
        self.attn_layers = tuple(t for _, t in self.layer_map) if dc.attn_weight else ()
        rng = np.random.default_rng(0) if rng is None else rng
        self.params: dict[str, np.ndarray] = {}
        if dc.hidden_weight:
            for s, _ in self.layer_map:
                w, b = init_projection(student_cfg.n_embd, teacher_cfg.n_embd, rng)
                self.params[f"distill.hidden.{s}.w"] = w  # [C_S, C_T]
                self.params[f"distill.hidden.{s}.b"] = b  # [C_T]
        self.terms: list[dict[str, float]] = []

    def teacher_outputs(self, batch) -> TeacherOutputs:
        """The frozen teacher's logits (and mapped hidden states / attention maps) for
        ``batch``: one forward pass, no backward, or the cached result of an earlier one."""
        key = None
        if self.soft_labels is not None:
            key = SoftLabelCache.key(batch, self.hidden_layers, self.attn_layers)
            out = self.soft_labels.get(key)
            if out is not None:
                return out
        logits, cache = forward(
            self.teacher_params,
            batch.x,
            self.teacher_cfg,
            self.teacher_linear,
            pad_mask=batch.pad_mask,
            token_types=batch.token_types,
            op_impl=self.op_impl,
        )
        out = TeacherOutputs(
            logits,
            {t: cache.hidden[t + 1] for t in self.hidden_layers},  # block t's output
            {t: cache.attn[t] for t in self.attn_layers},
        )
        if key is not None:
            self.soft_labels.put(key, out)
        return out

    def __call__(self, params: dict, batch, cfg: TransformerConfig, linear):
        dc = self.config
        if cfg.n_layer != self.student_cfg.n_layer or cfg.n_embd != self.student_cfg.n_embd:
            raise ValueError(
                f"this loss was built for a student of {self.student_cfg.n_layer} blocks of width "
                f"{self.student_cfg.n_embd}; got {cfg.n_layer} blocks of width {cfg.n_embd}"
            )
        teacher = self.teacher_outputs(batch)
        pad = batch.pad_mask
        logits, cache = forward(
            params,
            batch.x,
            cfg,
            linear,
            pad_mask=pad,
            token_types=batch.token_types,
            op_impl=self.op_impl,
        )  # [B, T, V]
        loss, mix = distillation_loss_forward(
            logits, teacher.logits, batch.y, dc.alpha, dc.temperature, dc.loss, pad
        )
        total = float(loss)
        dlogits = distillation_loss_backward(1.0, mix)  # [B, T, V]
        grads_own: dict[str, np.ndarray] = {}
        terms = {"ce": mix.ce, "kd": mix.kd, "hidden": None, "attn": None}
        dhidden = dattn = None
        weight = 1.0 / len(self.layer_map)  # each term is a mean over the mapped blocks
        if dc.hidden_weight:
            dhidden = [None] * (cfg.n_layer + 1)
            terms["hidden"] = 0.0
            for s, t in self.layer_map:
                name = f"distill.hidden.{s}"
                value, c = hidden_mse_forward(
                    cache.hidden[s + 1],  # block s's output [B, T, C_S]
                    teacher.hidden[t],  # [B, T, C_T]
                    self.params[name + ".w"],
                    self.params[name + ".b"],
                    pad,
                )
                dh, grads_own[name + ".w"], grads_own[name + ".b"] = hidden_mse_backward(
                    dc.hidden_weight * weight, c
                )
                dhidden[s + 1] = dh  # [B, T, C_S]
                terms["hidden"] += weight * float(value)
            total += dc.hidden_weight * terms["hidden"]
        if dc.attn_weight:
            dattn = [None] * cfg.n_layer
            terms["attn"] = 0.0
            for s, t in self.layer_map:
                value, c = attention_kl_forward(cache.attn[s], teacher.attn[t], dc.attn_heads, pad)
                dattn[s] = attention_kl_backward(dc.attn_weight * weight, c)  # [B, H_S, T, T]
                terms["attn"] += weight * float(value)
            total += dc.attn_weight * terms["attn"]
        grads = backward(dlogits, cache, dhidden=dhidden, dattn=dattn)
        grads.update(grads_own)
        terms["total"] = total
        self.terms.append(terms)
        return total, grads


def self_distill_loss(
    params: dict,
    cfg: TransformerConfig,
    dc: DistillConfig | None = None,
    *,
    soft_label_mb: float = 512.0,
    op_impl=None,
) -> DistillLoss:
    """Distillation from the model itself: ``params`` (copied, then frozen) teach their own
    compressed copy — a model pruned or quantized while it fine-tunes learns

        L = alpha CE(z_S, y) + (1 - alpha) T^2 KL(softmax(z_T / T) || softmax(z_S / T))

    from the model it was before compression (same shape, so only the logits' term is
    used unless ``dc`` asks for more). Given as the loss hook of both the compressed run and
    its control, the teacher labels each batch once: the runs share a seed, so they draw the
    same batches, and the ``SoftLabelCache`` of ``soft_label_mb`` megabytes (0: no cache)
    serves the second run. -> DistillLoss.
    """
    teacher = {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()}
    cache = SoftLabelCache(soft_label_mb) if soft_label_mb else None
    return DistillLoss(teacher, cfg, teacher, cfg, dc, soft_labels=cache, op_impl=op_impl)
