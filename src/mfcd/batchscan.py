"""A batch text's changes, its usual lines found by one regular expression (no I/O).

`batchfile.lines` reads a line at a time (find, slice, split, check the words): about 3 µs a
line, a fifth of what mfcd spends on each route of a large batch. Generated files are made
of one shape, `[mfc] add --source S --group G --iif I --oifs O` with one space between the
words (O one name, or several separated by one comma or one space each: "r1,r2", "r1 r2");
`lines` finds each such line with one regular expression over the whole text (about 1 µs
a line) and leaves every other line to `batchfile.lines`, numbered as in the text. The
changes are the same either way: the expression takes only words that `batchfile.lines`
takes as they are (no quote, comment, wildcard or prefix, no leading "-", no empty name
between commas); the values are validated afterwards, whichever read them. mfcctl does not
import this module (`re` would slow its start): only mfcd reads batch texts.

`pieces` goes further for the IPv4 lines of that shape (with or without `--table N`): an
expression that also checks their addresses splits the text, and each stretch of such
lines comes as one `Run` of columns (sources, groups, iifs, oifs as written, tables), with
no Python step per line; the caller validates a Run's few distinct interfaces and tables
once and hands the controller its routes as runs (see commands.Commands._take_run). A part of the
text whose lines all differ only in their addresses (a generated file) gives the same Run
in a third of the time, read at the strings around its addresses (see _uniform).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from itertools import compress, repeat
from socket import AF_INET, inet_pton
from typing import NamedTuple

from mfcd import batchfile
from mfcd.validate import IFNAMSIZ, MAX_OIFS

_ADDRESS = r"[0-9A-Fa-f.:]+"
_NAME = r"[A-Za-z0-9_.+@][A-Za-z0-9_.+@-]*"
# The oifs as written: one name, or several separated by one comma or one space each
# ("r1", "r1,r2", "r1 r2"), which batchfile.lines reads as these names (see oif_names).
# A name never starts with "-", so a `--table` after them is never taken for one.
_OIFS = rf"{_NAME}(?:[ ,]{_NAME})*"
_USUAL = re.compile(
    rf"^(?:mfc )?add --source ({_ADDRESS}) --group ({_ADDRESS}) --iif ({_NAME})"
    rf" --oifs ({_OIFS})$",
    re.MULTILINE,
)
# The usual line of an IPv4 route whose addresses validate.route_key_of takes as they are:
# dotted quads without leading zeros (inet_pton's and so the canonical form), a unicast
# source (1-223, not 127/8) and a routed group (224-239, not 224.0.0.0/24), and an optional
# `--table N` at the end. Anything else it leaves to the other readers, which say what is
# wrong with it: the expression never decides that a line is wrong, only that it is fine.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_SOURCE4 = rf"(?!127\.)(?:22[0-3]|2[01][0-9]|1[0-9][0-9]|[1-9][0-9]|[1-9])(?:\.{_OCTET}){{3}}"
_GROUP4 = rf"(?:22[5-9]|23[0-9]|224(?!\.0\.0\.))(?:\.{_OCTET}){{3}}"
_VALID = re.compile(
    rf"^(?:mfc )?add --source ({_SOURCE4}) --group ({_GROUP4}) --iif ({_NAME})"
    rf" --oifs ({_OIFS})(?: --table ([0-9]{{1,10}}))?$",
    re.MULTILINE,
)
_FIELDS = 6  # what _VALID.split gives per line: the text before it, then its five groups


class Run(NamedTuple):
    """Consecutive usual IPv4 add lines with valid addresses (see _VALID), as columns: the
    first line's number, then each line's source, group, iif, oifs as written ("r1",
    "r1,r2" or "r1 r2": see oif_names) and table (None: none given)."""

    line: int
    sources: list[str]
    groups: list[str]
    iifs: list[str]
    oifs: list[str]
    tables: list[str | None]


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
        source, group, iif, oifs = match.groups()
        yield (lineno, "add", source, group, iif, oif_names(oifs), None)
        pos = match.end() + 1  # past its "\n"
    if pos < len(text):
        yield from _others(text[pos:], lineno)


def oif_names(oifs: str) -> list[str]:
    """The names of oifs as a Run (or _USUAL) holds them, one or several separated by one
    comma or space each: what batchfile.lines reads of them (batchfile.split_oifs)."""
    return oifs.replace(" ", ",").split(",")


def pieces(text: str) -> Iterator[Run | batchfile.Change]:
    """What lines(text) yields, but each stretch of consecutive usual IPv4 adds whose
    addresses are valid as one Run: read by one `re.split` over a part of the text at a time
    and sliced into columns, without a Python step per line (reading and checking the
    addresses together for about what `lines` costs to read them alone). Raises
    batchfile.SyntaxProblem as `lines` does, once the pieces before the line are out."""
    if any(end in text for end in batchfile._OTHER_LINE_ENDS):
        yield from batchfile.lines(text)
        return
    before = pos = 0  # lines before `pos`
    while pos < len(text):
        # Whole lines, PART_CHARS or a little more: what one split holds stays small.
        cut = text.find("\n", pos + PART_CHARS) + 1 or len(text)
        part = text[pos:cut]
        yield from _part_pieces(part, before)
        before += part.count("\n")
        pos = cut


PART_CHARS = 1 << 20  # about 16,000 usual lines


def _part_pieces(text: str, before: int) -> Iterator[Run | batchfile.Change]:
    """pieces() of whole lines of a text, `before` lines into it. (A function of its own: the
    split's strings go when it ends, before the next part's are made.)"""
    run = _uniform(text, before)
    if run is not None:
        yield run  # (what _split_pieces gives for it: tests/unit/test_batchscan.py)
        return
    yield from _split_pieces(text, before)


def _uniform(text: str, before: int) -> Run | None:
    """The Run that _split_pieces(text, before) gives when the whole text is one, in a
    third of its time, else None: for text made of lines that all differ from the first
    only by their addresses (a generated file), which are then checked in bulk.

    The first line, matched by _VALID, gives what every line must repeat around its
    addresses (_Shape). The text is split at those literal strings (no expression made of
    the text, no backtracking over octets), and the text made again from the pieces must be
    the text itself, so each line has the first one's shape. The addresses are then
    checked as _VALID checks them (see _valid_sources and _valid_groups), and each column's
    strings made one after the other, as _anew would make them."""
    shape = _shape(text)
    if shape is None:
        return None
    fields = _fields(text, shape)
    if fields is None:
        return None
    sources, groups = fields[0::2], fields[1::2]
    if not (_valid_sources(sources) and _valid_groups(groups)):
        return None
    del fields
    count = len(groups)
    iif, oif, table = shape.first.group(3, 4, 5)
    sources, groups = _anew(sources), _anew(groups)
    return Run(before + 1, sources, groups, [iif] * count, [oif] * count, [table] * count)


def _too_many(oifs: str) -> bool:
    """Whether oifs as written hold a name too long to be valid or more names than a route
    takes (MAX_OIFS)."""
    if len(oifs) < IFNAMSIZ:
        return False  # (the usual case: one short name, or a few)
    if len(oifs) >= MAX_OIFS * IFNAMSIZ:
        return True  # (at most MAX_OIFS names of at most IFNAMSIZ - 1 characters, and commas)
    names = oif_names(oifs)
    return len(names) > MAX_OIFS or max(map(len, names)) >= IFNAMSIZ


class _Shape(NamedTuple):
    """The strings that a uniform text's first line has around its addresses."""

    first: re.Match[str]  # the first line, by _VALID
    head: str  # before its source: "mfc add --source " or "add --source "
    middle: str  # between its source and group: " --group "
    tail: str  # after its group: " --iif I --oifs O[,O...][ --table N]\n"


def _shape(text: str) -> _Shape | None:
    """The first line's _Shape, if every line of the text may repeat it: not when the text
    does not end as the first line does (its last line has no newline, or another end) or
    when an interface name is too long to be valid or there are more oifs than a route
    takes (the line is refused later, and a tail of megabytes would cost as much to look
    for as the whole text: see test_batchscan.py)."""
    first = _VALID.match(text)
    if first is None or first.end() == len(text):
        return None
    if first.end(3) - first.start(3) >= IFNAMSIZ or _too_many(first.group(4)):
        return None  # (the table has at most 10 digits: a valid tail is short)
    tail = text[first.end(2) : first.end() + 1]
    if not text.endswith(tail):
        return None
    return _Shape(first, text[: first.start(1)], text[first.end(1) : first.start(2)], tail)


def _fields(text: str, shape: _Shape) -> list[str] | None:
    """Each line's source and group, in turn, when the text is made of lines of its shape
    with only these between its strings, else None."""
    _, head, middle, tail = shape
    between = tail + head  # what stands between one line's group and the next's source
    if text.count(between) != text.count("\n") - 1:
        return None  # (another line: known in a tenth of the time the pieces take)
    body = text[len(head) : len(text) - len(tail)]
    fields = middle.join(body.split(between)).split(middle)
    if len(fields) % 2:
        return None
    # The text again: the fields between the strings, " --group " then the next line's.
    again = [between] * (2 * len(fields) - 1)
    again[0::2] = fields
    again[1::4] = repeat(middle, len(fields) // 2)
    return fields if "".join(again) == body else None


# First octets that no source of _SOURCE4 has (0/8, 127/8, 224 and up), and those of groups.
_NOT_SOURCE = bytes([0, 127, *range(224, 256)])
_GROUP_FIRST = bytes(range(224, 240))
# Bytes to 1 where they are 224 (0), others to 0: to find groups in 224.0.0.0/24 at once.
_IS_224 = bytes(byte == 224 for byte in range(256))
_IS_0 = bytes(byte == 0 for byte in range(256))


def _packed(addresses: Iterable[str]) -> bytes | None:
    """The IPv4 addresses packed one after the other, or None if one is not a dotted quad
    that inet_pton takes (glibc's takes exactly canonical ones, as validate._address relies
    on)."""
    try:
        return b"".join(map(inet_pton, repeat(AF_INET), addresses))
    except (OSError, ValueError):
        return None


def _valid_sources(sources: list[str]) -> bool:
    """Whether every source is one that _SOURCE4 matches (each distinct one checked once)."""
    packed = _packed(set(sources))
    if packed is None:
        return False
    firsts = packed[0::4]
    return len(firsts.translate(None, _NOT_SOURCE)) == len(firsts)


def _valid_groups(groups: list[str]) -> bool:
    """Whether every group is one that _GROUP4 matches."""
    packed = _packed(groups)
    if packed is None:
        return False
    firsts = packed[0::4]
    if firsts.translate(None, _GROUP_FIRST):
        return False  # a first octet outside 224-239
    if b"\xe0" not in firsts:
        return True
    # 224.0.0.0/24: a group whose first octet is 224 and next two 0, all groups at once.
    in_224 = int.from_bytes(firsts.translate(_IS_224))
    in_224 &= int.from_bytes(packed[1::4].translate(_IS_0))
    return not in_224 & int.from_bytes(packed[2::4].translate(_IS_0))


def _split_pieces(text: str, before: int) -> Iterator[Run | batchfile.Change]:
    """pieces() of whole lines of a text, `before` lines into it, by one _VALID.split."""
    parts = _VALID.split(text)
    found = len(parts) // _FIELDS  # lines the expression took
    head = parts[0]  # the whole lines before the first of them
    if head:
        yield from _others(head, before, lines)
    if not found:
        return
    lineno = before + head.count("\n")  # lines before the next run
    start = 0  # its first line's place among those the expression took
    # A run ends where the text between two lines it took is more than the newline.
    ends = [*compress(range(1, found), map("\n".__ne__, parts[_FIELDS:-1:_FIELDS])), found]
    for end in ends:
        sources, groups, iifs, oifs, tables = (
            parts[i + _FIELDS * start : _FIELDS * end : _FIELDS] for i in range(1, _FIELDS)
        )
        yield Run(lineno + 1, _anew(sources), _anew(groups), iifs, oifs, tables)
        lineno += end - start
        between = parts[_FIELDS * end][1:]  # (past the newline that ends the run's last line)
        if between:
            yield from _others(between, lineno, lines)
            lineno += between.count("\n")
        start = end


def _anew(texts: list[str]) -> list[str]:
    """Copies of the strings, made one after the other. A route keeps its source and group
    for good, and the split made them between each line's other strings (64-byte blocks as
    well), which go once the batch is read: pymalloc would keep a pool for every few
    routes, with holes beside each (see test_large_tables)."""
    return "\n".join(texts).split("\n")


def _others(
    part: str, before: int, read: Callable[[str], Iterator[batchfile.Change]] = batchfile.lines
) -> Iterator[batchfile.Change]:
    """What `read` (batchfile.lines) yields for whole lines of the text, `before` lines into it."""
    try:
        for change in read(part):
            yield (change[0] + before, *change[1:])
    except batchfile.SyntaxProblem as e:
        e.line += before
        raise
