"""What the CLI tests share: a command that must be refused cleanly."""

from __future__ import annotations

import warnings

from minicompress.cli import main


def refused(capsys, argv: list[str]) -> str:
    """Run ``main(argv)`` in-process: exit status 2, exactly one line on stderr, no warning
    and no traceback before it. Returns the line."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert not caught, [str(w.message) for w in caught]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
