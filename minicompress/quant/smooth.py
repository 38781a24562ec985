"""Per-input-channel scaling before quantization: SmoothQuant and AWQ.

Both rest on one identity. For a linear layer y = x @ w and any positive vector s [K],

    y = (x / s) @ (s[:, None] * w)

so dividing each input channel j by s_j and multiplying row j of the weight by s_j changes
nothing in float. It changes what quantization loses: a channel of x with large values
(an outlier channel) can hand its range to the weight (SmoothQuant: the activations get
easier to quantize per tensor), or a channel that carries large activations can have its
weight row enlarged so that rounding costs it relatively less (AWQ: the salient weights
are protected). The division x / s costs nothing at run time when it is folded into what
produces x (``fold_input_scales``):

- the input of ``attn.qkv`` (pre-LN) is ``ln1``'s output: ln1.g / s, ln1.b / s;
- the input of ``mlp.fc`` (pre-LN) is ``ln2``'s output: ln2.g / s, ln2.b / s;
- the input of ``head`` (pre-LN) is ``ln_f``'s output: ln_f.g / s, ln_f.b / s;
- the input of ``attn.proj`` is the attention output, probabilities @ v: the v columns
  of ``attn.qkv`` (and their bias) / s, in any norm layout.

The input of ``mlp.proj`` is GELU's output (not linear: no fold), and in post-LN the norms'
outputs are also the residual stream (a fold would change it): those layers are left as
they are. NumPy only.
"""

from __future__ import annotations

import numpy as np

from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.quant.tensor import QuantSpec, fake_quantize_tensor

SCALE_LIMITS = (1e-4, 1e4)  # s is clipped into this: a dead channel must not blow up a row
AWQ_ALPHAS = np.linspace(0.0, 1.0, 21)  # the exponents AWQ's grid search tries (0: s = 1)


def check_alpha(alpha: object) -> float:
    """The migration strength alpha, a real number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    return float(alpha)


def _check_stat(name: str, v: object) -> np.ndarray:
    v = np.asarray(v, np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{name} must be a non-empty 1-D array of finite values >= 0")
    return v


def _safe_scales(s: np.ndarray) -> np.ndarray:
    """s as float32 clipped into SCALE_LIMITS, with 1 where a channel gave no statistic."""
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.clip(s, *SCALE_LIMITS).astype(np.float32)


def smoothquant_scales(act_absmax, w_absmax, alpha: float = 0.5) -> np.ndarray:
    """SmoothQuant's migration factors (Xiao et al., "SmoothQuant: Accurate and Efficient
    Post-Training Quantization for Large Language Models", ICML 2023, eq. 4):

        s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

    act_absmax: float [K], max |x| of input channel j over calibration tokens; w_absmax:
    float [K], max |w| of row j of the weight [K, N]; alpha in [0, 1] (0.5 balances the
    two: after scaling, max|X_j / s_j| = max|s_j W_j| = sqrt(max|X_j| max|W_j|)).
    -> float32 [K]. A channel whose statistic is 0 (never active, or a zero row) gets
    s = 1; s is clipped into ``SCALE_LIMITS``.
    """
    alpha = check_alpha(alpha)
    a, w = _check_stat("act_absmax", act_absmax), _check_stat("w_absmax", w_absmax)
    if a.shape != w.shape:
        raise ValueError(f"act_absmax {a.shape} and w_absmax {w.shape} must have one shape")
    with np.errstate(divide="ignore", invalid="ignore"):
        s = a**alpha / w ** (1 - alpha)
    return _safe_scales(np.where((a > 0) & (w > 0), s, 1.0))


def awq_scales(act_mean_abs, alpha: float) -> np.ndarray:
    """AWQ's activation-aware scale for one exponent (Lin et al., "AWQ: Activation-aware
    Weight Quantization for LLM Compression and Acceleration", MLSys 2024, eq. 5):

        s_j = mean|X_j| ** alpha,   then divided by sqrt(max_j s_j * min_j s_j)

    (the normalisation of the authors' code: it centres s around 1 on a log scale and
    changes nothing in float). act_mean_abs: float [K], mean |x| of input channel j;
    alpha in [0, 1] (0: s = 1, no scaling). -> float32 [K]; channels with mean 0 get 1.
    """
    alpha = check_alpha(alpha)
    a = _check_stat("act_mean_abs", act_mean_abs)
    s = np.where(a > 0, a, 1.0) ** alpha
    s = s / np.sqrt(s.max() * s.min())
    return _safe_scales(s)


def scaled_output_error(
    x: np.ndarray, w: np.ndarray, s: np.ndarray, spec: QuantSpec, y_ref=None
) -> float:
    """AWQ's objective for one layer and one scale vector (float64 mean over x's entries):

        L(s) = mean( ((x / s) @ Q(s[:, None] * w) - x @ w) ** 2 )

    x: float32 [M, K] calibration inputs; w: float32 [K, N]; s: float32 [K]; Q: fake
    quantization at ``spec`` (weights as PTQ quantizes them); y_ref: float64 [M, N], x @ w
    when the caller already has it."""
    if y_ref is None:
        y_ref = x.astype(np.float64) @ w  # [M, N]
    w_hat = fake_quantize_tensor(s[:, None] * w, spec)  # [K, N]
    y_hat = (x / s).astype(np.float32) @ w_hat  # [M, N]
    return float(np.mean((y_hat - y_ref) ** 2))


def awq_search(
    x: np.ndarray, w: np.ndarray, spec: QuantSpec, alphas=AWQ_ALPHAS
) -> tuple[np.ndarray, float]:
    """AWQ's grid search for one layer: the ``awq_scales(mean|x|, alpha)`` of the alpha in
    ``alphas`` that minimizes ``scaled_output_error``. x: float32 [M, K]; w: float32 [K, N]
    -> (s float32 [K], alpha). Put 0 in alphas and the result is never worse than no
    scaling on x (ties go to the first alpha)."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x [M, K] and w [K, N] must agree; got {x.shape} and {w.shape}")
    mean_abs = np.abs(x).mean(axis=0)  # [K]
    y_ref = x.astype(np.float64) @ w  # [M, N]
    best = None
    for a in alphas:
        s = awq_scales(mean_abs, float(a))
        err = scaled_output_error(x, w, s, spec, y_ref)
        if best is None or err < best[0]:
            best = (err, s, float(a))
    if best is None:
        raise ValueError("alphas is empty")
    return best[1], best[2]


def foldable_layers(cfg: TransformerConfig) -> dict[str, tuple[str, str]]:
    """{linear layer: (kind, what produces its input)} for the layers whose input scaling
    ``fold_input_scales`` can fold away (module docstring): kind "norm" (a LayerNorm's
    prefix, its g and b divided) or "v" (the qkv layer whose v columns are divided)."""
    out = {}
    for name in linear_names(cfg):
        if name.endswith("attn.proj"):
            out[name] = ("v", name[: -len("proj")] + "qkv")
        elif cfg.norm == "pre" and name.endswith("attn.qkv"):
            out[name] = ("norm", name[: -len("attn.qkv")] + "ln1")
        elif cfg.norm == "pre" and name.endswith("mlp.fc"):
            out[name] = ("norm", name[: -len("mlp.fc")] + "ln2")
        elif cfg.norm == "pre" and name == "head":
            out[name] = ("norm", "ln_f")
    return out


def fold_input_scales(params: dict, cfg: TransformerConfig, scales: dict) -> dict:
    """The equivalent model whose layer ``name`` reads x / s and holds s[:, None] * w.

    scales: {layer: float32 [K] > 0}, each layer one of ``foldable_layers(cfg)``.
    -> a new parameter dict (the caller's arrays are not modified); in float it computes
    the same function as ``params`` (up to float rounding). Raises ValueError for a layer
    that cannot be folded, a scale of the wrong shape or not positive.
    """
    can = foldable_layers(cfg)
    out = dict(params)
    for name, s in scales.items():
        if name not in can:
            raise ValueError(
                f"layer {name!r} cannot fold an input scale (its input is not a norm's "
                f"output or attention's v); foldable: {sorted(can)}"
            )
        w = out[name + ".w"]  # [K, N]
        s = np.asarray(s, w.dtype)
        if s.shape != (w.shape[0],) or not (np.isfinite(s).all() and (s > 0).all()):
            raise ValueError(f"scales[{name!r}] must be {w.shape[0]} finite values > 0")
        out[name + ".w"] = s[:, None] * w  # [K, N]: row j times s_j
        kind, source = can[name]
        if kind == "norm":  # x = ln(.) * g + b  ->  x / s = ln(.) * (g / s) + b / s
            out[source + ".g"] = out[source + ".g"] / s
            out[source + ".b"] = out[source + ".b"] / s
        else:  # attention output = probs @ v: dividing the v columns divides it
            qkv_w = out[source + ".w"].copy()  # [C, 3 H D], columns [3][H][D]
            v = slice(qkv_w.shape[1] - s.size, qkv_w.shape[1])  # the last H*D columns
            qkv_w[:, v] /= s
            out[source + ".w"] = qkv_w
            if out.get(source + ".b") is not None:
                qkv_b = out[source + ".b"].copy()
                qkv_b[v] /= s
                out[source + ".b"] = qkv_b
    return out


def channel_stats(inputs: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (max|x_j|, mean|x_j|)} per input channel j, float64 [K] each, of the inputs
    ``calibrate.record_inputs`` recorded ({layer: float [n_tokens, K]})."""
    out = {}
    for name, x in inputs.items():
        a = np.abs(np.asarray(x, np.float64))  # [n_tokens, K]
        out[name] = (a.max(axis=0), a.mean(axis=0))
    return out
