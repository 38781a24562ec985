"""minicompress/report/bench_runtime.py: the PyTorch contender computes our model (fp32
logits, greedy tokens with its key/value cache), and the benchmark runs end to end on a tiny
model (its times are not asserted: speed belongs to ``bench runtime``)."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.nn.model import TransformerConfig, forward, generate, init_params
from minicompress.report.bench_runtime import run_runtime_bench, torch_decoder, torch_generate

TINY = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp_ratio=2)


def test_torch_decoder_is_our_model(rng, torch):
    cfg = TransformerConfig(**TINY)
    params = {k: v * 20 if k.endswith(".w") else v for k, v in init_params(cfg, rng).items()}
    idx = rng.integers(0, cfg.vocab_size, (3, 16))
    model = torch_decoder(params, cfg)
    with torch.no_grad():
        theirs, past = model(torch.from_numpy(idx))
    ours, _ = forward(params, idx, cfg)
    assert_close(theirs.numpy(), ours, rtol=1e-4, atol=1e-4, name="logits")
    assert len(past) == 2 and past[0][0].shape == (3, 2, 16, 8)
    prompt = np.array([1, 2, 3])
    greedy = np.random.default_rng(0)
    ref = generate(params, cfg, prompt, 10, greedy, 0.0, use_cache=False)
    for use_cache in (True, False):
        np.testing.assert_array_equal(torch_generate(model, prompt, 10, use_cache), ref)


def test_bench_runs_and_checks_its_contenders(rng, torch):
    cfg = TransformerConfig(**TINY)
    r = run_runtime_bench(None, cfg, batch_size=2, rounds=1, repeat=1, prompt_len=3, gen_tokens=4)
    names = [row["contender"] for row in r["forward"]]
    assert names == [
        "runtime fp32",
        "training forward fp32",
        "runtime int8",
        "torch eager fp32",
        "torch quantize_dynamic int8",
    ]
    assert len(r["generate"]) == 6 and all(row["ms"] > 0 for row in r["generate"])
    assert r["checks"]["torch_fp32_vs_ours_max_abs"] < 1e-4
    assert r["forward"][0]["time_vs_ours"] == 1.0


def test_bench_without_torch_and_bad_lengths():
    cfg = TransformerConfig(**TINY)
    r = run_runtime_bench(None, cfg, batch_size=2, rounds=1, repeat=1, prompt_len=2,
                          gen_tokens=2, with_torch=False, pause_s=0.0)  # fmt: skip
    assert [row["contender"] for row in r["forward"]][-1] == "runtime int8"
    assert "torch_fp32_vs_ours_max_abs" not in r["checks"]
    with pytest.raises(ValueError, match="block_size"):
        run_runtime_bench(None, cfg, prompt_len=10, gen_tokens=7, with_torch=False)
