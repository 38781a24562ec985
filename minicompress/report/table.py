"""Plain-text tables for the terminal (and Markdown, for the README)."""

from __future__ import annotations


def format_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".3g") -> str:
    """Rows of dicts as an aligned text table; None prints as '-'."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    out = [line, sep] + [
        "  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body
    ]
    return "\n".join(out)
