"""``minicompress train``: train a character language model and save its checkpoint.

Everything that can be refused is refused before training starts: flag values, the
config (naming the flag at fault), a model too large for this machine's memory, an
``--out`` that is a file or cannot be written, an existing checkpoint without
``--overwrite``, a text too short for the context.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from minicompress.cli.common import (
    UserError,
    add_config_flags,
    check_fits_in_memory,
    check_output_dir,
    config_from_args,
    flag_name,
    read_text,
)
from minicompress.data.corpus import CharTokenizer, make_dataset
from minicompress.nn.checkpoint import CHECKPOINT_FILE, LEGACY_FILES, check_savable
from minicompress.nn.model import TransformerConfig, count_params, init_params
from minicompress.nn.train import TrainConfig, train

LOSS_PLOT = "loss.png"  # written beside the checkpoint


def register(sub) -> None:
    t = sub.add_parser("train", help="train a character language model")
    # a language model needs its output head; the vocabulary comes from the text
    add_config_flags(t, TransformerConfig, skip=("vocab_size", "head"))
    add_config_flags(t, TrainConfig)
    t.add_argument("--text", help="a UTF-8 text file instead of the built-in corpus")
    t.add_argument("--out", default="runs/teacher", help="checkpoint folder (default %(default)s)")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint in --out")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-plot", action="store_true")
    t.set_defaults(func=run)


def metrics(loss: float, params: dict) -> dict:
    """Validation loss (nats per character) seen three ways, and the model's size."""
    return {
        "val_loss": loss,
        "val_ppl": math.exp(loss),
        "bpc": loss / math.log(2),
        "params": count_params(params),
    }


def holds_checkpoint(folder: Path) -> bool:
    return (folder / CHECKPOINT_FILE).exists() or any((folder / f).exists() for f in LEGACY_FILES)


def size_flags(args) -> list[str]:
    """The model-size flags the user set, as typed (for the memory message)."""
    fields = [f.name for f in dataclasses.fields(TransformerConfig)] + ["batch_size"]
    return [
        f"{flag_name(n)} {getattr(args, n)}" for n in fields if getattr(args, n, None) is not None
    ]


def run(args) -> int:
    writes = [CHECKPOINT_FILE] + ([] if args.no_plot else [LOSS_PLOT])
    out = check_output_dir("--out", args.out, inputs=[args.text], writes=writes)
    if holds_checkpoint(out) and not args.overwrite:
        raise UserError(
            f"--out {str(out)!r} already holds a checkpoint; pass --overwrite to replace it "
            f"or choose another folder"
        )
    text = read_text(args.text)
    tokenizer = CharTokenizer.from_text(text)
    cfg = config_from_args(TransformerConfig, args, vocab_size=tokenizer.vocab_size)
    tc = config_from_args(TrainConfig, args)
    check_fits_in_memory(cfg, tc.batch_size, size_flags(args))
    try:
        data = make_dataset(text, cfg.block_size, tokenizer=tokenizer)
    except ValueError as e:  # too short for the context: name what the user chose
        given = [f"--text {args.text}"] * bool(args.text)
        given += [f"--block-size {args.block_size}"] * (args.block_size is not None)
        raise UserError(f"{' '.join(given) or '--text'}: {e}") from None
    params = init_params(cfg, np.random.default_rng([tc.seed, 0]))
    check_savable(params, cfg, tokenizer.chars)  # what the save at the end will require
    print(
        f"model: {count_params(params):,} parameters, {cfg.n_layer} layers, width "
        f"{cfg.n_embd}, {cfg.n_head} heads, context {cfg.block_size}; corpus "
        f"{len(text):,} characters, vocabulary {cfg.vocab_size}"
    )
    hist = train(params, cfg, data, tc, out_dir=out, progress=not args.no_progress)
    m = metrics(hist.val_loss[-1], params)
    print(
        f"trained {hist.steps[-1] if hist.steps else 0} steps in {hist.seconds:.0f} s "
        f"({hist.tokens_per_second:,.0f} tokens/s): val ppl {m['val_ppl']:.3f}, "
        f"{m['bpc']:.3f} bits/char -> {out / CHECKPOINT_FILE}"
    )
    if not args.no_plot:
        from minicompress.report.plots import plot_loss_curve

        print(f"loss curve: {plot_loss_curve(hist, out / LOSS_PLOT, 'teacher')}")
    return 0
