"""Command line: ``python -m minicompress COMMAND ...`` (or the ``minicompress`` script).

Each command is one module of this package with a ``register(subparsers)`` function that
adds its parser(s) and sets ``func``; a new command is a new module plus its name in
``COMMANDS``. Every error the user can cause (a bad flag value, a missing or damaged file,
an output that cannot be written) prints one line naming the flag and exits with status 2;
no traceback (``MINICOMPRESS_DEBUG=1`` shows it).
"""

from __future__ import annotations

import importlib
import os
import sys

from minicompress.cli.common import Parser, UserError

# the command modules, in the order --help lists them
COMMANDS = (
    "demo",
    "train",
    "evaluate",
    "quantize",
    "distill",
    "prune",
    "compress",
    "bench",
    "convert",
    "pretrained",
)


def build_parser() -> Parser:
    parser = Parser(
        prog="minicompress",
        description="Transformer compression from scratch in NumPy: train a teacher, "
        "evaluate, sample, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a flag argparse refused (already printed)
        return e.code if isinstance(e.code, int) else 0
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, FloatingPointError, OSError, MemoryError) as e:
        if os.environ.get("MINICOMPRESS_DEBUG"):
            raise
        reason = " ".join(str(e).split())  # one line, whatever the message
        if isinstance(e, MemoryError):
            reason = "out of memory" + (f" ({reason})" if reason else "") + "; choose smaller sizes"
        reason = reason or type(e).__name__
        print(f"minicompress {args.command}: error: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minicompress {args.command}: interrupted", file=sys.stderr)
        return 130
