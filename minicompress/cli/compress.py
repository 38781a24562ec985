"""``minicompress compress MODEL --recipe FILE --out PATH [--json PATH]``: run a compression
recipe — distill -> prune -> quantize -> fine-tune, any subset, in that order (a TOML file,
``deploy.recipe``) — on a trained checkpoint, and write the compressed checkpoint.

The recipe and both outputs are checked before any work; the checkpoint and the JSON are
written only when every stage has run, and an existing file is never replaced.
"""

from __future__ import annotations

from pathlib import Path

from minicompress.cli.common import check_output_file, read_text


def register(sub) -> None:
    c = sub.add_parser(
        "compress", help="run a recipe (distill, prune, quantize, fine-tune) on a checkpoint"
    )
    c.add_argument("model", help="the trained (float) checkpoint")
    c.add_argument("--recipe", required=True, help="a TOML recipe (see deploy/recipe.py)")
    c.add_argument("--out", required=True, help="the compressed checkpoint (folder or .mc)")
    c.add_argument("--json", help="also write every stage's metrics to this JSON file")
    c.add_argument("--text", help="the UTF-8 text file the model was trained on")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=run)


def run(args) -> int:
    from minicompress.deploy.pipeline import compress
    from minicompress.deploy.recipe import load_recipe
    from minicompress.nn.checkpoint import checkpoint_file

    recipe = load_recipe(args.recipe)
    # the files are written at the very end: probe their folders now (a folder that only
    # root's permissions seem to allow, /proc say, is refused here, not after the work)
    out_file = args.out if Path(args.out).suffix == ".mc" else checkpoint_file(args.out)
    check_output_file("--out", out_file, inputs=[args.model, args.recipe])
    if args.json is not None:
        check_output_file("--json", args.json, inputs=[args.model, args.recipe])
    text = read_text(args.text)
    compress(args.model, recipe, args.out, args.json, text, progress=not args.no_progress)
    return 0
