"""The student: its shape, its checks against the teacher, and its initialisation (from
scratch, or from every other block of the teacher as DistilBERT does).

Course 3.2.2, step 2: "initialise a small student model S, whose structure may differ from
the teacher's". Here the student is the same kind of Transformer (same vocabulary, same
context, same norm placement and masking) with fewer blocks, a narrower residual stream or
fewer heads.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from minicompress.nn.model import TransformerConfig, check_params, count_params, param_count


def student_config(
    teacher_cfg: TransformerConfig, n_layer: int, n_embd: int, n_head: int | None = None
) -> TransformerConfig:
    """The teacher's config with the student's depth, width and heads.

    n_head default: the teacher's head count when it divides ``n_embd``, else as many heads
    of the teacher's width D as fit; refused when neither divides the width.
    """
    if n_head is None:
        d = teacher_cfg.head_dim
        if n_embd % teacher_cfg.n_head == 0:
            n_head = teacher_cfg.n_head
        elif n_embd % d == 0:
            n_head = n_embd // d
        else:
            raise ValueError(
                f"student width {n_embd} is divisible neither by the teacher's {teacher_cfg.n_head}"
                f" heads nor by its head width {d}: give the student's heads (--student-heads)"
            )
    return dataclasses.replace(teacher_cfg, n_layer=n_layer, n_embd=n_embd, n_head=n_head)


def check_teacher_student(
    teacher_cfg: TransformerConfig,
    student_cfg: TransformerConfig,
    teacher_params: dict | None = None,
    student_params: dict | None = None,
) -> None:
    """Refuse a student that cannot learn from this teacher, warn about one that is not
    smaller.

    Refused (ValueError): another vocabulary (the logits would not line up), a longer context
    than the teacher can read, another masking (a causal teacher's next-token distribution
    means nothing to a bidirectional student), a model without an output head. Warned
    (UserWarning): a student with more parameters than the teacher — distillation then
    compresses nothing, which is usually a mistake in the student's flags.
    """
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise ValueError(
            f"teacher and student have different vocabularies: {teacher_cfg.vocab_size} tokens "
            f"vs {student_cfg.vocab_size}; the student must use the teacher's tokenizer"
        )
    if student_cfg.block_size > teacher_cfg.block_size:
        raise ValueError(
            f"student context {student_cfg.block_size} is longer than the teacher's "
            f"{teacher_cfg.block_size}: the teacher cannot label those windows"
        )
    if student_cfg.causal != teacher_cfg.causal:
        raise ValueError(
            f"teacher causal={teacher_cfg.causal} but student causal={student_cfg.causal}: "
            "both must predict the same distributions"
        )
    for who, cfg in (("teacher", teacher_cfg), ("student", student_cfg)):
        if not cfg.head:
            raise ValueError(
                f"the {who} has no output head (head=False): logit distillation needs logits; "
                "distil an encoder's embeddings with losses.mse_rows_forward instead"
            )
    n_t = param_count(teacher_cfg) if teacher_params is None else count_params(teacher_params)
    n_s = param_count(student_cfg) if student_params is None else count_params(student_params)
    if n_s > n_t:
        warnings.warn(
            f"the student ({n_s:,} parameters: {student_cfg.n_layer} blocks of width "
            f"{student_cfg.n_embd}) is larger than the teacher ({n_t:,}): distillation will not "
            "compress anything; check the student's layers and width",
            UserWarning,
            stacklevel=2,
        )


def every_other_layer(n_teacher: int, n_student: int) -> list[int]:
    """Teacher blocks a student of ``n_student`` blocks starts from: floor(l N / M) for
    l = 0..M-1, evenly spaced from the first (N = 4, M = 2: [0, 2]; DistilBERT: every other
    layer of BERT)."""
    if not 1 <= n_student <= n_teacher:
        raise ValueError(
            f"a student initialised from the teacher needs 1 to {n_teacher} blocks; got {n_student}"
        )
    return [l * n_teacher // n_student for l in range(n_student)]


def student_from_teacher(
    teacher_params: dict,
    teacher_cfg: TransformerConfig,
    n_layer: int,
    layers: list[int] | None = None,
) -> tuple[dict[str, np.ndarray], TransformerConfig]:
    """A student of ``n_layer`` blocks that starts as the teacher's blocks ``layers``
    (default ``every_other_layer``), renumbered 0..n_layer-1, with the teacher's embeddings,
    final norm and head (Sanh et al. 2019, DistilBERT: "taking one layer out of two").

    Same width and heads as the teacher (a block cannot be copied into another width).
    ->  (params: new arrays, the teacher's untouched; the student's config).
    """
    check_params(teacher_params, teacher_cfg)
    n = teacher_cfg.n_layer
    layers = every_other_layer(n, n_layer) if layers is None else list(layers)
    if len(layers) != n_layer:
        raise ValueError(f"layers names {len(layers)} teacher blocks for {n_layer} student blocks")
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n:
            raise ValueError(f"layers names teacher block {i!r}; the teacher has blocks 0..{n - 1}")
    cfg = dataclasses.replace(teacher_cfg, n_layer=n_layer)
    params = {k: v.copy() for k, v in teacher_params.items() if not k.startswith("blocks.")}
    for dst, src in enumerate(layers):
        pre = f"blocks.{src}."
        for k, v in teacher_params.items():
            if k.startswith(pre):
                params[f"blocks.{dst}." + k[len(pre) :]] = v.copy()
    check_params(params, cfg)
    return params, cfg
