"""minicompress/pretrained/compress.py: the config's checks and labels, which runtime each
setting gets, pruning and head removal by count, the int8-kernel model against its own
simulation, and the issue's fidelity targets on all-MiniLM-L6-v2 (a few sentences; the
full set of 256 is the CLI's and the tutorial's)."""

from __future__ import annotations

import numpy as np
import pytest
from pretrained_helpers import minilm, need_extra, write_tiny_checkpoint

pytest.importorskip("minicompress.quant.runtime", reason="the quant package is not on main")
pytest.importorskip("minicompress.prune.structured", reason="the prune package is not on main")

from minicompress.pretrained import embed_texts, load_pretrained  # noqa: E402
from minicompress.pretrained.compress import (  # noqa: E402
    CompressConfig,
    compress,
    encoder_runtime,
    kernel_runs,
)
from minicompress.pretrained.embed import runtime_embeddings, sentence_embeddings  # noqa: E402
from minicompress.pretrained.fidelity import row_cosines  # noqa: E402
from minicompress.pretrained.sentences import corpus_sentences, sentences_outside  # noqa: E402
from minicompress.quant.linear import FakeQuantLinear  # noqa: E402
from minicompress.quant.ptq import dequantized_params  # noqa: E402


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 1}, "bits"),
        ({"bits": 9}, "bits"),
        ({"granularity": "model"}, "granularity"),
        ({"activations": "int4"}, "activations"),
        ({"scheme": "log"}, "scheme"),
        ({"group_size": 0}, "group_size"),
        ({"bits": None, "activations": "dynamic"}, "give bits"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"head_sparsity": 1.0}, "head_sparsity"),
        ({"calibration_sentences": 0}, "calibration_sentences"),
    ],
)
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CompressConfig(**kwargs)


def test_labels_and_runtimes():
    assert CompressConfig().label() == "W8 channel"
    assert CompressConfig(activations="dynamic").label() == "W8A8 dynamic channel"
    assert CompressConfig(bits=4, granularity="group", scheme="asymmetric").label() == (
        "W4 group32 asym"
    )
    assert CompressConfig(bits=None, sparsity=0.5).label() == "sparse 50%"
    assert kernel_runs(CompressConfig(activations="dynamic", granularity="tensor"))
    assert not kernel_runs(CompressConfig(activations="dynamic", scheme="asymmetric"))
    assert not kernel_runs(CompressConfig(activations="dynamic", granularity="group"))
    assert kernel_runs(CompressConfig(activations="static"))
    assert not kernel_runs(CompressConfig(activations="none"))


@pytest.fixture
def tiny(tmp_path):
    need_extra()
    return load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))


def test_magnitude_pruning_zeroes_that_share_of_every_linear_weight(tiny):
    cm = compress(tiny, CompressConfig(bits=None, sparsity=0.5))
    for name in ("blocks.0.attn.qkv.w", "blocks.1.mlp.proj.w"):
        w = cm.params[name]
        assert int((w == 0).sum()) == round(0.5 * w.size), name
        kept = w != 0
        assert np.abs(w[kept]).min() >= np.abs(tiny.params[name][~kept]).max()  # smallest go
    assert cm.runtime == "float" and cm.params["wte"] is tiny.params["wte"]


def test_head_removal_shrinks_the_blocks(tiny):
    cm = compress(tiny, CompressConfig(bits=None, head_sparsity=0.5))
    assert cm.info["heads_kept"] == [1, 1]
    assert cm.params["blocks.0.attn.qkv.w"].shape == (8, 3 * 1 * 4)  # C x 3 H D, D = 4
    assert cm.params["blocks.0.attn.proj.w"].shape == (4, 8)


def test_int8_kernels_match_their_simulation(tiny):
    texts = ["the cat sat on the mat", "a big red dog", "the dogs run"]
    cm = compress(tiny, CompressConfig(activations="dynamic"))
    assert cm.runtime == "int8 kernels"
    ours = embed_texts(tiny, texts, params=cm.params, linear=cm.linear)
    simulated = embed_texts(
        tiny,
        texts,
        params=dequantized_params(tiny.params, cm.qtensors),
        linear=FakeQuantLinear(activations="dynamic"),
    )
    assert np.abs(ours - simulated).max() < 1e-4  # quant.runtime's stated agreement


def test_static_activations_need_calibration_sentences(tiny):
    with pytest.raises(ValueError, match="calibration"):
        compress(tiny, CompressConfig(activations="static"))
    cm = compress(tiny, CompressConfig(activations="static"), ["the cat sat", "a dog runs"])
    assert cm.runtime == "int8 kernels" and cm.info["calibrated_layers"] == 8


def test_static_int8_kernels_match_their_simulation(tiny):
    texts = ["the cat sat on the mat", "a big red dog", "the dogs run"]
    cm = compress(tiny, CompressConfig(activations="static"), texts)
    ours = embed_texts(tiny, texts, params=cm.params, linear=cm.linear)
    sim = FakeQuantLinear(activations="static", act_qparams=cm.linear.act_qparams)
    simulated = embed_texts(
        tiny, texts, params=dequantized_params(tiny.params, cm.qtensors), linear=sim
    )
    assert np.abs(ours - simulated).max() < 1e-4  # quant.runtime's stated agreement
    dynamic = compress(tiny, CompressConfig(activations="dynamic"))
    other = embed_texts(tiny, texts, params=dynamic.params, linear=dynamic.linear)
    assert np.abs(other - ours).max() > 1e-3  # the calibrated ranges were used


@pytest.mark.parametrize(
    "cc",
    [CompressConfig(bits=None), CompressConfig(activations="dynamic"),
     CompressConfig(activations="static"), CompressConfig(bits=None, head_sparsity=0.5)],
    ids=["fp32", "W8A8 dynamic", "W8A8 static", "heads removed"],
)  # fmt: skip
def test_inference_runtime_computes_the_training_path(tiny, cc):
    texts = ["the cat sat on the mat", "a big red dog", "the dogs run", "a"]
    cm = compress(tiny, cc, texts)
    batch = tiny.tokenizer.encode(texts)  # padded: the runtime masks it too
    with encoder_runtime(cm, threads=2) as rt:
        got = runtime_embeddings(rt, batch)
    want = sentence_embeddings(cm.params, cm.cfg, batch, cm.linear)
    assert np.abs(got - want).max() < 1e-5, np.abs(got - want).max()


def test_a_simulation_has_no_runtime(tiny):
    cc = CompressConfig(bits=4, granularity="group", group_size=4, activations="dynamic")
    assert encoder_runtime(compress(tiny, cc)) is None


@pytest.mark.parametrize(
    "cc, floor",
    [(CompressConfig(), 0.999), (CompressConfig(activations="dynamic"), 0.99)],
    ids=["W8 channel weight-only", "W8A8 dynamic int8 kernels"],
)
def test_minilm_fidelity_targets(cc, floor):
    model = minilm()
    texts = corpus_sentences(256)[::32]  # 8 of the fixed set
    cm = compress(model, cc, sentences_outside(texts)[:16])
    ref = embed_texts(model, texts)
    emb = embed_texts(model, texts, params=cm.params, cfg=cm.cfg, linear=cm.linear)
    cos = row_cosines(ref, emb)
    assert cos.mean() >= floor, (cc.label(), cos)
