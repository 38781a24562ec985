"""The README stays true: its recipe parses as a recipe, and every command it shows is a
command of the CLI whose flags the parser accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import tomllib

from minicompress.cli import COMMANDS, build_parser
from minicompress.deploy.recipe import parse_recipe

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_readme_recipe_is_a_valid_recipe():
    (toml,) = blocks("toml")
    recipe = parse_recipe(tomllib.loads(toml))
    assert recipe.distill is not None and recipe.quantize.spec.bits == 4
    assert recipe.prune is None and recipe.finetune.steps == 80


def command_lines() -> list[list[str]]:
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                if words[:3] == ["python", "-m", "minicompress"]:
                    lines.append(words[3:])
    return lines


def test_the_readme_shows_every_command():
    shown = {words[0] for words in command_lines()}
    names = {"evaluate": "eval"}
    assert {names.get(c, c) for c in COMMANDS} - {"convert"} <= shown | {"generate"}


@pytest.mark.parametrize("argv", command_lines(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv):
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits (SystemExit) on an unknown flag
    assert args.command == argv[0]
