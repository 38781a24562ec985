"""``minicompress convert OLD [--out NEW]``: turn a checkpoint of minicompress 0.1 (a folder
with ``config.json`` and ``model.npz``) into the one-file format, once."""

from __future__ import annotations

from pathlib import Path

from minicompress.cli.common import check_output_dir
from minicompress.nn.checkpoint import CHECKPOINT_FILE, convert_legacy_checkpoint


def register(sub) -> None:
    c = sub.add_parser(
        "convert", help="convert a checkpoint of minicompress 0.1 (config.json + model.npz)"
    )
    c.add_argument("old", help="the old checkpoint folder")
    c.add_argument(
        "--out",
        help=f"folder for the converted checkpoint (default: {CHECKPOINT_FILE} in the old folder)",
    )
    c.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.old if args.out is None else args.out)
    check_output_dir("--out", out)
    written = convert_legacy_checkpoint(args.old, out)
    print(f"converted {args.old} -> {written}")
    if args.out is None:
        print("(the old config.json and model.npz beside it are no longer read)")
    return 0
