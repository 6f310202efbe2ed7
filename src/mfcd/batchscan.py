"""A batch text's changes, its usual lines found by one regular expression (no I/O).

`batchfile.lines` reads a line at a time (find, slice, split, check the words): about 3 µs a
line, a fifth of what mfcd spends on each route of a large batch. Generated files are made
of one shape, `[mfc] add --source S --group G --iif I --oifs O` with one space between the
words; `lines` finds each such line with one regular expression over the whole text (about
1 µs a line) and leaves every other line to `batchfile.lines`, numbered as in the text. The
changes are the same either way: the expression takes only words that `batchfile.lines`
takes as they are (no quote, comment, comma, wildcard or prefix, no leading "-"); the
values are validated afterwards, whichever read them. mfcctl does not import this module
(`re` would slow its start): only mfcd reads batch texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mfcd import batchfile

_ADDRESS = r"[0-9A-Fa-f.:]+"
_NAME = r"[A-Za-z0-9_.+@][A-Za-z0-9_.+@-]*"
_USUAL = re.compile(
    rf"^(?:mfc )?add --source ({_ADDRESS}) --group ({_ADDRESS}) --iif ({_NAME})"
    rf" --oifs ({_NAME})$",
    re.MULTILINE,
)


def lines(text: str) -> Iterator[batchfile.Change]:
    """What batchfile.lines(text) yields, in the same order with the same line numbers;
    raises batchfile.SyntaxProblem naming the line as it does."""
    if any(end in text for end in batchfile._OTHER_LINE_ENDS):
        yield from batchfile.lines(text)  # (lines end otherwise than with "\n": rare)
        return
    lineno = 0  # lines before `pos`
    pos = 0
    for match in _USUAL.finditer(text):
        start = match.start()
        if start != pos:
            yield from _others(text[pos:start], lineno)
            lineno += text.count("\n", pos, start)
        lineno += 1
        source, group, iif, oif = match.groups()
        yield (lineno, "add", source, group, iif, [oif], None)
        pos = match.end() + 1  # past its "\n"
    if pos < len(text):
        yield from _others(text[pos:], lineno)


def _others(part: str, before: int) -> Iterator[batchfile.Change]:
    """batchfile.lines of whole lines of the text, `before` lines into it."""
    try:
        for change in batchfile.lines(part):
            yield (change[0] + before, *change[1:])
    except batchfile.SyntaxProblem as e:
        e.line += before
        raise
