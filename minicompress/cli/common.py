"""What every command shares: the one-line error, strict flag types, flags built from the
config dataclasses, output paths checked before long work starts, the memory check.

A user error (a bad flag value, a missing or damaged file, an output that cannot be
written) is raised as ``UserError`` (or a ValueError/TypeError of the library) and printed
by ``minicompress.cli.main`` as one line naming the flag, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Iterable
from pathlib import Path

from minicompress.data.corpus import builtin_text, load_text
from minicompress.nn.model import TransformerConfig, param_count
from minicompress.platform import total_memory_bytes


class UserError(Exception):
    """A problem with what the user asked for; printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: no usage block before them."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# ----------------------------------------------------------------------------------------
# strict flag types: argparse prefixes their messages with "argument --flag:"
# ----------------------------------------------------------------------------------------

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def flag_bool(text: str) -> bool:
    """true/false, 1/0, yes/no (any case); anything else is refused, not read as False."""
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a boolean; use true or false (or 1/0, yes/no)"
        ) from None


def flag_int(minimum: int | None = None, maximum: int | None = None):
    """A parser of base-10 integers within [minimum, maximum] ("1.0", "1e3", "nan" refused)."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        value = int(text)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(
                f"{value} is too small; expected an integer >= {minimum}"
            )
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(
                f"{value} is too large; expected an integer <= {maximum}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def flag_float(minimum: float | None = None):
    """A parser of finite numbers >= minimum ("nan", "inf" and "1e999" refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(
                f"{value} is too small; expected a number >= {minimum}"
            )
        return value

    parse.__name__ = "number"
    return parse


def flag_text(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# ----------------------------------------------------------------------------------------
# flags built from the config dataclasses
# ----------------------------------------------------------------------------------------


def _field_types(cls) -> dict[str, type]:
    """The plain type of each field (``float | None`` -> float); others are left out."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = args[0] if len(args) == 1 else None
        if hint in (bool, int, float, str):
            out[name] = hint
    return out


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = ()) -> None:
    """One flag per field of the dataclass ``cls``: ``n_embd`` -> ``--n-embd``. Booleans
    take true/false; integers (counts, sizes, seeds) are >= 0; floats are finite. Whether
    a value is allowed beyond that is the dataclass's own check (``config_from_args``)."""
    parse = {bool: flag_bool, int: flag_int(minimum=0), float: flag_float(), str: flag_text}
    kinds = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name not in kinds:
            continue
        parser.add_argument(
            flag_name(f.name),
            type=parse[kinds[f.name]],
            default=None,
            metavar=kinds[f.name].__name__.upper(),
            help=f"(default {f.default})",
        )


def _refusal(cls, kwargs: dict) -> Exception | None:
    try:
        cls(**kwargs)
    except (ValueError, TypeError) as e:
        return e
    return None


def config_from_args(cls, args: argparse.Namespace, **fixed):
    """``cls(**fixed, **flags given)``. When the dataclass refuses it, the UserError gives
    its reason after the flags at fault: those whose removal alone makes the config valid
    (``--n-embd 30`` with the default 4 heads), else the pairs whose removal does
    (``--n-embd 30 --n-head 7``), else every flag given."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    error = _refusal(cls, {**fixed, **given})
    if error is None:
        return cls(**fixed, **given)
    if _refusal(cls, fixed) is not None or not given:
        raise error  # not about a flag the user gave
    for size in (1, 2):  # the flags (or pairs of flags) without which it would be valid
        groups = itertools.combinations(given, size)
        culprits = [n for g in groups if _valid_without(cls, fixed, given, g) for n in g]
        if culprits:
            break
    else:
        culprits = list(given)
    flags = " ".join(f"{flag_name(n)} {given[n]}" for n in dict.fromkeys(culprits))
    raise UserError(f"{flags}: {error}")


def _valid_without(cls, fixed: dict, given: dict, names) -> bool:
    return _refusal(cls, {**fixed, **{k: v for k, v in given.items() if k not in names}}) is None


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


# ----------------------------------------------------------------------------------------
# inputs and outputs
# ----------------------------------------------------------------------------------------


def read_text(path: str | None) -> str:
    """The --text file, or the built-in corpus."""
    if path is None:
        return builtin_text()
    try:
        return load_text(path)
    except ValueError as e:
        raise UserError(f"--text: {e}") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _probe(flag: str, path: Path, folder: Path) -> None:
    """Refuse ``path`` (to be written in ``folder``) when ``folder`` or a parent of it is a
    file, or when the nearest existing folder cannot take a new file (checked by creating
    and removing one: permissions, read-only file systems and quotas all show up)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".minicompress-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{flag} {str(path)!r} cannot be written: {e.strerror}") from None


def check_output_file(flag: str, path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """A file the command will write (e.g. ``--json``), checked before any long work: not a
    folder, writable, and not one of the command's own ``inputs``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder; give a file name")
    for item in inputs:
        if item is not None and _same_file(path, Path(item)):
            raise UserError(
                f"{flag} {str(path)!r} is a file this command reads; write to another file"
            )
    _probe(flag, path, path.parent)
    return path


def check_output_dir(
    flag: str,
    path: str | Path,
    inputs: Iterable[str | Path] = (),
    writes: Iterable[str] = (),
) -> Path:
    """A folder the command will write ``writes`` (file names) into, checked before any
    long work: not a file, writable, and none of the files it writes is an input."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file; give a folder")
    for name in writes:
        for item in inputs:
            if item is not None and _same_file(path / name, Path(item)):
                raise UserError(
                    f"{flag} {str(path)!r}: writing {name} there would replace the input "
                    f"{str(item)!r}"
                )
    _probe(flag, path, path)
    return path


# ----------------------------------------------------------------------------------------
# will it fit in memory?
# ----------------------------------------------------------------------------------------


def parameter_count(cfg: TransformerConfig) -> int:
    """``nn.model.param_count`` of ``cfg`` in constant memory: that one lists the shapes of
    every block, which for ``--n-layer 1099511627776`` is itself out of memory; all blocks
    are alike, so count one and two blocks and extrapolate."""
    one = param_count(dataclasses.replace(cfg, n_layer=1))
    two = param_count(dataclasses.replace(cfg, n_layer=2))
    return one + (cfg.n_layer - 1) * (two - one)


def training_bytes(cfg: TransformerConfig, batch_size: int) -> int:
    """A lower estimate of the memory training ``cfg`` takes, from the config alone (Python
    ints: nothing allocated, no overflow): 16 bytes per parameter (float32 weights,
    gradients, AdamW's two moments) plus the float32 activations the backward keeps for a
    batch of B x T: about B*T*(14C + 3F + 2H*T) per block and 3*B*T*V for the logits,
    their softmax and its gradient (C = n_embd, F = mlp_ratio * C, H = n_head)."""
    b, t, c = batch_size, cfg.block_size, cfg.n_embd
    f, h, v = cfg.mlp_ratio * c, cfg.n_head, cfg.vocab_size
    activations = cfg.n_layer * b * t * (14 * c + 3 * f + 2 * h * t) + 3 * b * t * v
    return 16 * parameter_count(cfg) + 4 * activations


def check_fits_in_memory(cfg: TransformerConfig, batch_size: int, given: Iterable[str]) -> None:
    """Refuse, before anything is allocated, a model that could not be trained in this
    machine's memory; ``given`` are the size flags the user set (named in the message)."""
    total = total_memory_bytes()
    need = training_bytes(cfg, batch_size)
    if total is None or need <= total:
        return
    flags = " ".join(given) or "the model"
    raise UserError(
        f"{flags}: training this model would need at least {need / 2**30:,.4g} GiB "
        f"({parameter_count(cfg):,.4g} parameters, batch {batch_size} x {cfg.block_size}); "
        f"this machine has {total / 2**30:,.1f} GiB: choose smaller sizes"
    )
