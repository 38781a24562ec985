"""``minicompress eval`` (validation perplexity, bits per character) and ``minicompress
generate`` (sample text) on a checkpoint, dense or compressed: a quantized checkpoint runs
as it was quantized (``deploy.format.load_quantized``: dequantized weights, and the
activations' fake quantization it records)."""

from __future__ import annotations

import numpy as np

from minicompress.cli.common import (
    UserError,
    check_output_file,
    flag_float,
    flag_int,
    flag_text,
    read_text,
)
from minicompress.cli.train import metrics
from minicompress.data.corpus import CharTokenizer, make_dataset
from minicompress.deploy.format import load_quantized
from minicompress.fileio import save_json
from minicompress.nn.checkpoint import checkpoint_file
from minicompress.nn.model import generate
from minicompress.nn.train import evaluate
from minicompress.report.table import format_table


def register(sub) -> None:
    e = sub.add_parser("eval", help="validation perplexity and bits per character")
    e.add_argument("model", help="checkpoint folder (or its model.mc file)")
    e.add_argument("--text", help="the UTF-8 text file the model was trained on")
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.set_defaults(func=run_eval)

    g = sub.add_parser("generate", help="sample text from a checkpoint")
    g.add_argument("model", help="checkpoint folder (or its model.mc file)")
    g.add_argument("--prompt", required=True, type=flag_text, help="text to continue")
    g.add_argument("--tokens", type=flag_int(minimum=1), default=200, help="(default 200)")
    g.add_argument(
        "--temperature",
        type=flag_float(minimum=0.0),
        default=0.8,
        help="softmax temperature; 0 takes the most likely token (default 0.8)",
    )
    g.add_argument(
        "--top-k", type=flag_int(minimum=1), default=None, help="sample among the k most likely"
    )
    g.add_argument("--seed", type=flag_int(minimum=0), default=0, help="(default 0)")
    g.set_defaults(func=run_generate)


def run_eval(args) -> int:
    if args.json is not None:
        check_output_file("--json", args.json, inputs=[checkpoint_file(args.model), args.text])
    params, cfg, vocab, _, linear = load_quantized(args.model)
    text = read_text(args.text)
    try:
        data = make_dataset(text, cfg.block_size, tokenizer=CharTokenizer(vocab))
    except ValueError as e:
        raise UserError(f"--text: {e}") from None
    m = metrics(evaluate(params, cfg, data.val, linear=linear), params)
    print(format_table([m], floatfmt=".4f"))
    if args.json is not None:
        save_json(args.json, m)
    return 0


def run_generate(args) -> int:
    params, cfg, vocab, _, linear = load_quantized(args.model)
    if args.top_k is not None and args.top_k > cfg.vocab_size:
        raise UserError(
            f"--top-k {args.top_k}: the model has {cfg.vocab_size} tokens; allowed 1 to "
            f"{cfg.vocab_size}"
        )
    tok = CharTokenizer(vocab)
    ids = generate(
        params,
        cfg,
        tok.encode(args.prompt, "--prompt"),
        args.tokens,
        np.random.default_rng(args.seed),
        args.temperature,
        args.top_k,
        linear=linear,
    )
    print(tok.decode(ids))
    return 0
