"""minicompress/report/bench_pretrained.py: what the benchmark times computes the right
thing — the PyTorch encoder of our weights gives sentence-transformers' embeddings (golden
file), its quantize_dynamic copy is really quantized, and the benchmark batch is 32 full
rows of 64 tokens. (The timings themselves are never asserted.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gradcheck import assert_close
from pretrained_helpers import minilm
from test_pretrained_embed import golden, golden_batch

from minicompress.pretrained.fidelity import row_cosines
from minicompress.pretrained.tokenizer import select_rows
from minicompress.report.bench_pretrained import (
    bench_batch,
    torch_encoder,
    torch_int8_dynamic,
    torch_runner,
)


def test_bench_batch_is_full_rows_of_corpus_tokens():
    batch = bench_batch(minilm())
    assert batch.ids.shape == (32, 64) and not batch.pad_mask.any()
    assert np.all(batch.ids[:, 0] == 101) and np.all(batch.ids[:, -1] == 102)  # [CLS] [SEP]


def test_torch_encoder_matches_sentence_transformers_golden(torch):
    model, g = minilm(), golden()
    rows = np.arange(len(g["texts"]) - 1)  # the short rows, padded
    theirs = torch_runner(
        torch_encoder(model.params, model.cfg), select_rows(golden_batch(g), rows)
    )()
    assert_close(theirs, g["embeddings"][rows], rtol=0, atol=1e-5, name="torch encoder")


def test_torch_int8_is_quantized_and_close(torch):
    model = minilm()
    batch = bench_batch(model, batch_size=4, seq_len=24)
    fp32 = torch_encoder(model.params, model.cfg)
    int8 = torch_int8_dynamic(fp32)
    assert "DynamicQuantizedLinear" in repr(int8)
    cos = row_cosines(torch_runner(fp32, batch)(), torch_runner(int8, batch)())
    assert 0.8 < cos.mean() < 0.9999


def test_bench_contenders_compute_the_same_embeddings(tmp_path):
    from pretrained_helpers import need_extra, write_tiny_checkpoint

    from minicompress.pretrained import load_pretrained
    from minicompress.pretrained.compress import CompressConfig, compress, encoder_runtime
    from minicompress.pretrained.embed import runtime_embeddings
    from minicompress.report.bench_pretrained import run_pretrained_bench

    need_extra()
    tiny = load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))
    rt = encoder_runtime(compress(tiny, CompressConfig(activations="dynamic")))
    r = run_pretrained_bench(
        tiny, {"w8a8": lambda b: lambda: runtime_embeddings(rt, b)}, batch_size=4, seq_len=16,
        rounds=1, repeat=1, with_torch=False,
    )  # fmt: skip
    rt.close()
    assert set(r["ms"]) == {"numpy_fp32", "numpy_fp32_training_path", "w8a8"}
    assert r["cosine_to_fp32"]["numpy_fp32_training_path"] > 1 - 1e-6  # the same model
    assert 0.9 < r["cosine_to_fp32"]["w8a8"] < 1 - 1e-6  # quantized, and close
    assert r["batch"] == [4, 16] and all(v > 0 for v in r["ms"].values())


def test_torch_is_timed_in_a_child_process(tmp_path, torch):
    """With torch, its two contenders are timed in a fresh process on the same checkpoint
    and batch (the child prints {name: ms}); their cosines are computed in this one."""
    from pretrained_helpers import need_extra, write_tiny_checkpoint

    from minicompress.pretrained import load_pretrained
    from minicompress.report.bench_pretrained import run_pretrained_bench, torch_times_in_child

    need_extra()
    tiny = load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))
    child = torch_times_in_child(tiny, 4, 16, 1, 1, 1)
    assert set(child) == {"torch_fp32", "torch_int8_dynamic"}
    assert all(v > 0 for v in child.values())
    r = run_pretrained_bench(tiny, batch_size=4, seq_len=16, threads=1, rounds=1, repeat=1)
    assert {"torch_fp32", "torch_int8_dynamic"} <= set(r["ms"])
    assert r["cosine_to_fp32"]["torch_fp32"] > 1 - 1e-5  # the twin computes our model
    gone = dataclasses.replace(tiny, model_dir=tmp_path / "gone")  # the child cannot load it
    with pytest.raises(RuntimeError, match="child process"):
        torch_times_in_child(gone, 4, 16, 1, 1, 1)
