"""Write ``tests/golden/quant_<case>.npz``: PyTorch's fake quantization, its straight-through
gradient and its observers, on small seeded inputs.

Run once, with torch installed, from the repository root:

    python tests/make_golden_quant.py

Every output comes from PyTorch (inputs from a seeded NumPy generator); nothing is computed
by minicompress. The tests compare ours with these files when torch is absent, and call
the same builders with fresh inputs when it is present.

Conventions compared (ours -> torch), each stated in the test that uses it:
- fake quantization: ours rounds ``x / s``, torch rounds ``x * (1 / s)``; both half to
  even. They agree exactly where ``x / s`` is not within a few ulps of a half-integer
  (ties at a power-of-two scale are exact in both, so they agree there too).
- the straight-through gradient: 1 where ``round(x / s) + z`` lies in [q_min, q_max].
- observers: ``MinMaxObserver`` widens [min, max] to hold 0; asymmetric quint8
  ``s = (max - min) / 255``, ``z = -round(min / s)``; symmetric qint8 ``s = max|x| / 127.5``
  (the full range [-128, 127]; ours defaults to /127 on [-127, 127]).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
PREFIX = "quant_"


def _np(t):
    return t.detach().numpy().copy()


def _with_ties(rng, shape, scale, zero_point):
    """Normal values spread over the grid, with every 5th value an exact half step
    ``(k + 0.5) * s - z s`` (a rounding tie when s is a power of two)."""
    x = (rng.standard_normal(shape) * 40 * scale).astype(np.float32)
    k = rng.integers(-60, 60, size=shape)
    ties = ((k + 0.5 - zero_point) * scale).astype(np.float32)
    flat = x.reshape(-1)
    flat[::5] = ties.reshape(-1)[::5]
    return x


def _fq_tensor(torch, rng, scale, zero_point, q_min, q_max):
    x = _with_ties(rng, (6, 40), scale, zero_point)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y = torch.fake_quantize_per_tensor_affine(xt, float(scale), int(zero_point), q_min, q_max)
    y.backward(torch.tensor(dy))
    return dict(
        x=x,
        dy=dy,
        scale=np.float32(scale),
        zero_point=np.int32(zero_point),
        q_min=np.int32(q_min),
        q_max=np.int32(q_max),
        y=_np(y),
        dx=_np(xt.grad),
    )


def fq_tensor_uint8_pow2(torch, rng):
    """Asymmetric 8-bit, scale 2**-5 (ties exact in both conventions)."""
    return _fq_tensor(torch, rng, 2.0**-5, 128, 0, 255)


def fq_tensor_uint8(torch, rng):
    """Asymmetric 8-bit, a scale that is not a power of two."""
    return _fq_tensor(torch, rng, 0.0173, 131, 0, 255)


def fq_tensor_int4_symmetric(torch, rng):
    """Symmetric 4-bit, full range [-8, 7] (clipping on both sides)."""
    return _fq_tensor(torch, rng, 0.37, 0, -8, 7)


def _fq_channel(torch, rng, q_min, q_max, symmetric):
    k, n = 32, 8
    scale = (rng.uniform(0.01, 0.1, n)).astype(np.float32)  # [N]
    if symmetric:
        zero_point = np.zeros(n, np.int32)
    else:
        zero_point = rng.integers(q_min, q_max + 1, n).astype(np.int32)
    x = (rng.standard_normal((k, n)) * scale * (q_max - q_min) / 4).astype(np.float32)
    dy = rng.standard_normal((k, n)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y = torch.fake_quantize_per_channel_affine(
        xt, torch.tensor(scale), torch.tensor(zero_point), 1, q_min, q_max
    )  # axis 1: the output channel of our [K, N] weights
    y.backward(torch.tensor(dy))
    return dict(
        x=x,
        dy=dy,
        scale=scale,
        zero_point=zero_point,
        q_min=np.int32(q_min),
        q_max=np.int32(q_max),
        y=_np(y),
        dx=_np(xt.grad),
    )


def fq_channel_uint8(torch, rng):
    return _fq_channel(torch, rng, 0, 255, symmetric=False)


def fq_channel_int4_symmetric(torch, rng):
    return _fq_channel(torch, rng, -7, 7, symmetric=True)


def _observe(torch, observer, batches):
    for b in batches:
        observer(torch.tensor(b))
    scale, zero_point = observer.calculate_qparams()
    return dict(
        min_val=_np(observer.min_val).astype(np.float32),
        max_val=_np(observer.max_val).astype(np.float32),
        scale=_np(scale).astype(np.float32),
        zero_point=_np(zero_point).astype(np.int32),
    )


def _batches(rng, n, shape):
    """Activation-like batches: shifted, scaled, with an outlier in the first one."""
    out = [(rng.standard_normal(shape) * 1.5 + 0.3).astype(np.float32) for _ in range(n)]
    out[0].reshape(-1)[7] = 9.5
    return out


def observer_minmax_affine(torch, rng):
    q = torch.ao.quantization
    batches = _batches(rng, 3, (16, 12))
    obs = q.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    return dict(batches=np.stack(batches), **_observe(torch, obs, batches))


def observer_minmax_positive(torch, rng):
    """All values > 0: the range is widened to hold 0 (min_val stays the data's)."""
    q = torch.ao.quantization
    batches = [np.abs(b) + 0.5 for b in _batches(rng, 2, (8, 12))]
    obs = q.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    return dict(batches=np.stack(batches), **_observe(torch, obs, batches))


def observer_minmax_4bit(torch, rng):
    q = torch.ao.quantization
    batches = _batches(rng, 2, (16, 12))
    obs = q.MinMaxObserver(
        dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=15
    )
    return dict(batches=np.stack(batches), **_observe(torch, obs, batches))


def observer_minmax_symmetric(torch, rng):
    q = torch.ao.quantization
    batches = _batches(rng, 3, (16, 12))
    obs = q.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return dict(batches=np.stack(batches), **_observe(torch, obs, batches))


def observer_moving_average(torch, rng):
    q = torch.ao.quantization
    batches = _batches(rng, 6, (16, 12))
    obs = q.MovingAverageMinMaxObserver(
        averaging_constant=0.01, dtype=torch.quint8, qscheme=torch.per_tensor_affine
    )
    return dict(
        batches=np.stack(batches),
        averaging_constant=np.float32(0.01),
        **_observe(torch, obs, batches),
    )


def observer_per_channel_symmetric(torch, rng):
    q = torch.ao.quantization
    w = (rng.standard_normal((32, 8)) * rng.uniform(0.01, 1.0, 8)).astype(np.float32)  # [K, N]
    obs = q.PerChannelMinMaxObserver(
        ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    return dict(batches=w[None], **_observe(torch, obs, [w]))


def observer_per_channel_affine(torch, rng):
    q = torch.ao.quantization
    w = (rng.standard_normal((32, 8)) * rng.uniform(0.01, 1.0, 8)).astype(np.float32)
    obs = q.PerChannelMinMaxObserver(
        ch_axis=1, dtype=torch.quint8, qscheme=torch.per_channel_affine
    )
    return dict(batches=w[None], **_observe(torch, obs, [w]))


def fq_linear(torch, rng):
    """A linear layer with static uint8 activations (calibrated by torch's MinMaxObserver
    on a narrower batch, so some inputs clip) and per-channel symmetric int8 weights,
    forward and backward. The weight scale is given to torch: max|w| / 127 on [-127, 127]
    (our narrow convention). PyTorch's own /127.5 puts each channel's extreme exactly on a
    rounding tie (|w| / s = 127.5), where x / s and x * (1 / s) round apart by design.
    Torch's weight layout is [N, K] (channel axis 0); ours [K, N] (axis 1)."""
    F = torch.nn.functional
    q = torch.ao.quantization
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)  # [B, T, K]
    w = (rng.standard_normal((8, 5)) * 0.3).astype(np.float32)  # ours [K, N]
    b = rng.standard_normal(5).astype(np.float32)
    dy = rng.standard_normal((2, 3, 5)).astype(np.float32)
    act_obs = q.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    act_obs(torch.tensor(x * 0.6))  # calibration data narrower than x: the tails clip
    xs, xz = act_obs.calculate_qparams()
    w_scale = np.abs(w).max(axis=0) / np.float32(127)  # [N], given to torch
    wt = torch.tensor(w.T.copy(), requires_grad=True)  # [N, K]
    xt, bt = torch.tensor(x, requires_grad=True), torch.tensor(b, requires_grad=True)
    x_hat = torch.fake_quantize_per_tensor_affine(xt, float(xs), int(xz), 0, 255)
    w_hat = torch.fake_quantize_per_channel_affine(
        wt, torch.tensor(w_scale), torch.zeros(5, dtype=torch.int32), 0, -127, 127
    )
    y = F.linear(x_hat, w_hat, bt)
    y.backward(torch.tensor(dy))
    return dict(
        x=x,
        w=w,
        b=b,
        dy=dy,
        act_scale=_np(xs).astype(np.float32)[0],
        act_zero_point=_np(xz).astype(np.int32)[0],
        y=_np(y),
        dx=_np(xt.grad),
        dw=_np(wt.grad).T.copy(),
        db=_np(bt.grad),
    )


FAKE_QUANT_BUILDERS = {
    "fq_tensor_uint8_pow2": fq_tensor_uint8_pow2,
    "fq_tensor_uint8": fq_tensor_uint8,
    "fq_tensor_int4_symmetric": fq_tensor_int4_symmetric,
    "fq_channel_uint8": fq_channel_uint8,
    "fq_channel_int4_symmetric": fq_channel_int4_symmetric,
}
OBSERVER_BUILDERS = {
    "observer_minmax_affine": observer_minmax_affine,
    "observer_minmax_positive": observer_minmax_positive,
    "observer_minmax_4bit": observer_minmax_4bit,
    "observer_minmax_symmetric": observer_minmax_symmetric,
    "observer_moving_average": observer_moving_average,
    "observer_per_channel_symmetric": observer_per_channel_symmetric,
    "observer_per_channel_affine": observer_per_channel_affine,
}
LINEAR_BUILDERS = {"fq_linear": fq_linear}
BUILDERS = {**FAKE_QUANT_BUILDERS, **OBSERVER_BUILDERS, **LINEAR_BUILDERS}


def load_golden(name: str) -> dict[str, np.ndarray]:
    """The stored case ``name`` (a missing file is an error, not a skip)."""
    path = GOLDEN_DIR / f"{PREFIX}{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python tests/make_golden_quant.py")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main() -> int:
    import torch

    GOLDEN_DIR.mkdir(exist_ok=True)
    for i, (name, build) in enumerate(BUILDERS.items()):
        case = build(torch, np.random.default_rng([2025, 11, i]))
        for k, a in case.items():
            if a.dtype == object or not np.isfinite(a.astype(np.float64)).all():
                raise RuntimeError(f"{name}.{k} is not a finite numeric array")
        path = GOLDEN_DIR / f"{PREFIX}{name}.npz"
        np.savez_compressed(path, torch_version=np.array(torch.__version__), **case)
        print(f"{path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
