"""A fixed set of English sentences from the built-in corpus, for fidelity reports,
calibration and distillation.

The corpus (``data.builtin_text()``, Python's own documentation) is prose mixed with code
and grammar rules. ``corpus_sentences`` keeps the prose: paragraphs whose lines are not
indented (code blocks are) and are not headings, joined and cut into sentences at ``. ``,
``! `` or ``? `` before a capital letter; a sentence is kept when it has ``min_words`` to
``max_words`` words, ends with a full stop, and is mostly letters. Duplicates are dropped.
The selection is deterministic (no random numbers): ``n`` sentences evenly spaced over the
whole corpus, in corpus order, so the same Python gives the same set, run after run.
"""

from __future__ import annotations

import re

import numpy as np

from minicompress.data import builtin_text

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“])")
_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}\s*$")
MIN_LETTER_FRACTION = 0.8  # of the non-space characters: prose, not code or grammar


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs (blocks between blank lines) that are prose: no line indented (code,
    grammar rules), no heading underline; lines joined by one space."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines or any(ln[0].isspace() for ln in lines):
            continue
        if any(_HEADING_RULE.match(ln) for ln in lines):
            continue
        out.append(" ".join(ln.strip() for ln in lines))
    return out


def is_prose_sentence(s: str, min_words: int, max_words: int) -> bool:
    """min_words <= words <= max_words, ends with '.', and at least 80% of the non-space
    characters are letters."""
    words = s.split()
    if not (min_words <= len(words) <= max_words) or not s.endswith("."):
        return False
    chars = s.replace(" ", "")
    return sum(c.isalpha() for c in chars) >= MIN_LETTER_FRACTION * len(chars)


def all_corpus_sentences(
    text: str | None = None, min_words: int = 6, max_words: int = 40
) -> list[str]:
    """Every distinct prose sentence of ``text`` (default: the built-in corpus), in order."""
    text = builtin_text() if text is None else text
    seen, out = set(), []
    for para in prose_paragraphs(text):
        for s in _SENTENCE_END.split(para):
            s = s.strip()
            if s not in seen and is_prose_sentence(s, min_words, max_words):
                seen.add(s)
                out.append(s)
    return out


def evenly_spaced(n_items: int, n: int) -> np.ndarray:
    """n distinct indices in [0, n_items) spread evenly from first to last (int64 [n])."""
    if not (1 <= n <= n_items):
        raise ValueError(f"n must lie in [1, {n_items}]; got {n}")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, n_items - 1, n)).astype(np.int64)


def corpus_sentences(
    n: int = 256, text: str | None = None, min_words: int = 6, max_words: int = 40
) -> list[str]:
    """``n`` prose sentences of the built-in corpus (or ``text``), evenly spaced over it.

    The default set of the fidelity reports is ``corpus_sentences(256)``; a smaller ``n``
    (fast modes) is another, smaller set spread over the same corpus.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    pool = all_corpus_sentences(text, min_words, max_words)
    if n > len(pool):
        raise ValueError(f"n={n} sentences asked; the text has {len(pool)} prose sentences")
    return [pool[i] for i in evenly_spaced(len(pool), n)]


def sentences_outside(exclude: list[str], text: str | None = None) -> list[str]:
    """The prose sentences of the corpus (or ``text``) that are not in ``exclude`` — for
    calibration and distillation, apart from the sentences a model is evaluated on."""
    held_out = set(exclude)
    return [s for s in all_corpus_sentences(text) if s not in held_out]
