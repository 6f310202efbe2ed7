"""Routes, templates, joins and interface settings declared in the config files (pure, no I/O).

The TOML shape (docs/configuration.md has the complete example):

    [[route]]                      # one table per route
    source = "198.18.1.2"          # optional: absent or "*" = any source; "198.18.0.0/16" a prefix
    group = "239.1.1.1"            # or a prefix, "239.2.0.0/24"
    iif = "eth0"
    oifs = ["eth1", "vlan*"]       # a name ending in * or + is a wildcard
    table = 100                    # optional: number, "default" or an rt_tables name

    [[join]]
    interface = "eth0"
    group = "239.1.1.1"            # or a prefix
    source = "198.18.1.2"          # optional: a source-specific join

    [[interface]]
    name = "eth1"
    threshold = 3                  # TTL threshold (1-255)
    mrdisc = true                  # multicast router discovery (RFC 4286) announcements

    [[interface]]                  # the threshold of one table only (it wins over the above)
    name = "eth1"
    table = 100                    # number, "default" (IPv4's, 253) or an rt_tables name
    threshold = 8

A route with one source address and one group is an exact (S,G) route; any other is a
template (its routes are learned from traffic). Every problem is reported as "FILE:LINE:
reason", and every problem of every file is collected, so `mfcd --check-config` prints
them all. tomllib gives no positions: the n-th `[[route]]` header of a file is the n-th
entry of its `route` array, and a key's line is found in the lines of its entry.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, chain, islice, repeat
from operator import add, itemgetter
from typing import Any, NamedTuple

from mfcd import groups, validate
from mfcd.errors import MfcdError
from mfcd.groups import JoinKey
from mfcd.model import DEFAULT_TABLE, MAXVIFS, Ports, RouteKey
from mfcd.protocol import family_text
from mfcd.templates import TemplateKey
from mfcd.wildcards import WILDCARDS, is_wildcard, matches, per_iif

KINDS = ("route", "join", "interface")  # the top-level keys that declare, not set
ROUTE_KEYS = ("source", "group", "iif", "oifs", "table")
JOIN_KEYS = ("interface", "group", "source")
INTERFACE_KEYS = ("name", "threshold", "mrdisc", "table")
ANY_SOURCE = "*"
_LINE_SHIFT = 32  # a position is file index << 32 | line (one int per route, not a string)


class Template(NamedTuple):
    """A route with any source, a source prefix or a group prefix: a pattern routes are
    learned from (parsed and checked here; the controller applies it, see template_intents)."""

    family: int
    source: str  # "*" or a prefix such as "198.18.0.0/16"
    group: str  # a prefix such as "239.2.0.0/24" ("/32" or "/128" for one group)
    iif: str
    oifs: tuple[str, ...]
    table: int
    where: str


class Join(NamedTuple):
    """A group joined on an interface (IGMP/MLD membership), any-source or source-specific."""

    family: int
    interface: str
    group: str  # an address, or a prefix (each group of it is joined)
    source: str | None
    where: str


class InterfaceSetting(NamedTuple):
    name: str
    threshold: int | None
    mrdisc: bool | None
    where: str
    table: int | None = None  # the one table its threshold applies to (None: every table)


@dataclass(slots=True)
class Declarations:
    """Everything the config files declare, validated; positions kept for messages."""

    files: list[str] = field(default_factory=list)
    routes: dict[RouteKey, Ports] = field(default_factory=dict)  # exact (S,G), as declared
    positions: dict[RouteKey, int] = field(default_factory=dict)  # see where()
    wild: set[RouteKey] = field(default_factory=set)  # routes naming a wildcard interface
    templates: list[Template] = field(default_factory=list)
    joins: list[Join] = field(default_factory=list)
    interfaces: dict[str, InterfaceSetting] = field(default_factory=dict)
    # The thresholds of one table, by (name, table): each with a threshold, no mrdisc.
    table_interfaces: dict[tuple[str, int], InterfaceSetting] = field(default_factory=dict)

    def where(self, key: RouteKey) -> str:
        """FILE:LINE of a declared route."""
        position = self.positions[key]
        return f"{self.files[position >> _LINE_SHIFT]}:{position & ((1 << _LINE_SHIFT) - 1)}"

    def thresholds(self) -> dict[str, int]:
        return {n: s.threshold for n, s in self.interfaces.items() if s.threshold is not None}

    def mrdisc(self) -> dict[str, bool]:
        return {n: s.mrdisc for n, s in self.interfaces.items() if s.mrdisc is not None}

    def table_thresholds(self) -> dict[tuple[str, int], int]:
        return {k: s.threshold for k, s in self.table_interfaces.items() if s.threshold is not None}


class Problems(MfcdError):
    """Every problem found in the config files, each "FILE:LINE: reason"; the message is
    the first one, with how many more there are, and `file` and `line` say where it is."""

    code = "config_error"

    def __init__(self, problems: list[str]) -> None:
        more = len(problems) - 1
        tail = f" (and {more} more: mfcd --check-config lists them)" if more else ""
        file, line = place_of(problems[0])
        super().__init__(problems[0] + tail, line=line, file=file)
        self.problems = problems


_PLACE = re.compile(r"(?P<file>[^\n]+?):(?P<line>[0-9]+): ")


def place_of(problem: str) -> tuple[str | None, int | None]:
    """The FILE and LINE a problem starts with ("FILE:LINE: reason"), or None for each
    (a problem of a whole file says "FILE: reason": no line)."""
    found = _PLACE.match(problem)
    if found is None:
        return None, None
    return found["file"], int(found["line"])


def template_intents(
    declared: Declarations, links: Iterable[str]
) -> dict[TemplateKey, tuple[Ports, str]]:
    """The templates the config files declare, as model keys with their interfaces and
    FILE:LINE: a wildcard iif is one template per existing interface it matches, wildcard
    oifs are the existing interfaces they match (see expand)."""
    out: dict[TemplateKey, tuple[Ports, str]] = {}
    for key, ports, t in _expansions(declared.templates, links):
        out.setdefault(key, (ports, t.where))
    return out


def template_patterns(declared: Declarations, links: Iterable[str]) -> dict[TemplateKey, Ports]:
    """The config templates with a wildcard iif or oifs, their interfaces as declared, by
    each template they expand to now: `show` lists them beside it, as it does a runtime
    template's (controller.shown_patterns)."""
    wild = [t for t in declared.templates if any(map(is_wildcard, (t.iif, *t.oifs)))]
    out: dict[TemplateKey, Ports] = {}
    for key, _, t in _expansions(wild, links):
        out.setdefault(key, Ports(t.iif, t.oifs))
    return out


def template_unexpanded(declared: Declarations, links: Iterable[str]) -> dict[TemplateKey, Ports]:
    """The config templates with wildcards that stand for no template over the interfaces
    that exist (see wildcards.per_iif), by their key as given (a wildcard iif in it), with
    their interfaces as declared: `show` lists them all the same."""
    names = list(links)
    out: dict[TemplateKey, Ports] = {}
    for t in declared.templates:
        if any(map(is_wildcard, (t.iif, *t.oifs))) and not per_iif(Ports(t.iif, t.oifs), names):
            given = validate.template_change(t.source, t.group, t.iif, [*t.oifs], t.table)
            out.setdefault(given.key, Ports(t.iif, t.oifs))
    return out


def template_keys(t: Template, links: Iterable[str]) -> list[TemplateKey]:
    """The model keys of the templates one declared template is over the interfaces that
    exist (see template_intents)."""
    return [key for key, _, _ in _expansions([t], links)]


def _expansions(
    templates: Iterable[Template], links: Iterable[str]
) -> Iterator[tuple[TemplateKey, Ports, Template]]:
    """Each template's model key and interfaces over the interfaces that exist (see
    wildcards.per_iif), with the declared template it comes from."""
    names = list(links)
    for t in templates:
        for ports in per_iif(Ports(t.iif, t.oifs), names):
            change = validate.template_change(t.source, t.group, ports.iif, [*ports.oifs], t.table)
            yield change.key, change.ports, t


def join_intents(declared: Declarations, links: Iterable[str]) -> dict[JoinKey, str]:
    """The joins the config files declare, as join keys with FILE:LINE: a group prefix is
    one join per group, a wildcard interface one per existing interface it matches."""
    names = list(links)
    out: dict[JoinKey, str] = {}
    for j in declared.joins:
        for key in join_keys_of(j, names):
            out.setdefault(key, j.where)
    return out


def join_keys_of(j: Join, links: Iterable[str]) -> Iterator[JoinKey]:
    """The join keys of one declared join over the interfaces that exist (join_intents)."""
    if is_wildcard(j.interface):
        interfaces = [n for n in links if matches(j.interface, n)]
    else:
        interfaces = [j.interface]
    for name in interfaces:
        yield from groups.join_keys(name, j.group, j.source)


# --- positions ----------------------------------------------------------------------------------

_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*(route|join|interface)[ \t]*\]\]", re.MULTILINE)
# Any line that opens a table (or an array of arrays, which no declaration has): more of
# them than _HEADER finds means a table a block's text must not hide (see _blocks_of).
_ANY_HEADER = re.compile(r"^[ \t]*\[", re.MULTILINE)
_KEY = re.compile(r"[ \t]*([A-Za-z0-9_-]+)[ \t]*=")


class _Source:
    """One file's text, with the line of each [[kind]] header (found when first asked)."""

    def __init__(self, path: str, index: int, text: str) -> None:
        self.path = path
        self.index = index
        self.text = text
        self.headers: dict[str, list[int]] | None = None
        self.starts: list[int] = []  # where each line starts (see key_line)

    def header_lines(self, kind: str) -> list[int]:
        if self.headers is None:
            headers: dict[str, list[int]] = {k: [] for k in KINDS}
            line, last = 1, 0
            text = self.text
            for m in _HEADER.finditer(text):
                line += text.count("\n", last, m.start())
                last = m.start()
                headers[m.group(1)].append(line)
            self.headers = headers
        return self.headers[kind]

    def entry_line(self, kind: str, index: int) -> int:
        """The line of the index-th [[kind]] header, or of the first `kind =` line when the
        entries are written another way (an inline array)."""
        lines = self.header_lines(kind)
        if len(lines) > index:
            return lines[index]
        return self.key_line(kind, 1) or 1

    def key_line(self, key: str, start: int) -> int | None:
        """The first line at or after `start`, before the next table header, setting `key`."""
        if not self.starts:  # where each line starts: made once, when a problem is found
            self.starts = [0, *(m.end() for m in re.finditer("\n", self.text))]
        for line in range(start, min(start + 200, len(self.starts) + 1)):
            begin = self.starts[line - 1]
            end = self.starts[line] if line < len(self.starts) else len(self.text)
            text = self.text[begin:end]
            if line > start and text.lstrip().startswith("["):
                return None
            m = _KEY.match(text)
            if m and m.group(1) == key:
                return line
        return None

    def at(self, line: int) -> str:
        return f"{self.path}:{line}"


# --- parsing ------------------------------------------------------------------------------------


# The plain TOML that config files are written in, one line at a time: `[[kind]]` headers
# and `key = value` lines whose value is a string without escapes, an integer, a float, a
# boolean, or a list of such strings on one line. Ten times faster than tomllib, which
# reads anything else (and says what is wrong with a file that is not TOML).
_STRING = r'"[^"\\\x00-\x1f\x7f]*"'  # a basic string without escapes
_PLAIN_KEY = re.compile(
    rf"[ \t]*([A-Za-z0-9_-]+)[ \t]*=[ \t]*(?:({_STRING})"
    rf"|(\[[ \t]*(?:{_STRING}[ \t]*(?:,[ \t]*{_STRING}[ \t]*)*,?[ \t]*)?\])"
    r"|(true|false)|([+-]?(?:0|[1-9][0-9]*))|([+-]?(?:0|[1-9][0-9]*)\.[0-9]+))"
    r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?\Z"
)
_PLAIN_HEADER = re.compile(
    r"[ \t]*\[\[[ \t]*(route|join|interface)[ \t]*\]\][ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?\Z"
)
_PLAIN_SKIP = re.compile(r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?\Z")
_LIST_ITEM = re.compile(r'"([^"]*)"')


def plain_toml(text: str) -> dict[str, Any] | None:
    """What tomllib.loads would return for a file in plain TOML (see above), or None for
    any other file, which tomllib then reads."""
    data: dict[str, Any] = {}
    table = data
    key_match, header_match, skip_match = _PLAIN_KEY.match, _PLAIN_HEADER.match, _PLAIN_SKIP.match
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        m = key_match(line)
        if m is not None:
            key, string, items, boolean, integer, number = m.groups()
            if key in table:
                return None  # a key set twice: tomllib says so
            if string is not None:
                table[key] = string[1:-1]
            elif items is not None:
                table[key] = _LIST_ITEM.findall(items)
            elif boolean is not None:
                table[key] = boolean == "true"
            elif integer is not None:
                table[key] = int(integer)
            else:
                table[key] = float(number)
            continue
        h = header_match(line)
        if h is not None:
            entries = data.setdefault(h.group(1), [])
            if not isinstance(entries, list):
                return None
            table = {}
            entries.append(table)
            continue
        if skip_match(line) is None:
            return None
    return data


def parse_text(
    text: str, path: str, into: Declarations, problems: list[str]
) -> dict[str, Any] | None:
    """Parse one file's TOML and its declarations into `into`; return its other (setting)
    keys, or None if it is not valid TOML. Problems are appended, never raised."""
    data = plain_toml(text)
    if data is None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            problems.append(_toml_problem(path, str(e), text))
            return None
    source = _Source(path, len(into.files), text)
    into.files.append(path)
    for kind in KINDS:
        if kind not in data:
            continue
        entries = data.pop(kind)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            line = source.key_line(kind, 1) or source.entry_line(kind, 0)
            problems.append(f"{source.at(line)}: {kind} must be a list of [[{kind}]] tables")
            continue
        parse_one = _PARSERS[kind]
        for index, entry in enumerate(entries):
            parse_one(entry, source, index, into, problems)
    return data


# A [[route]] block's text -> the exact route it declares (key, interfaces, has wildcards).
Blocks = dict[str, tuple[RouteKey, Ports, bool]]


class _Columns:
    """The blocks of a file read at once (_read_columns) as columns, in the order of the
    file: made into Blocks when first looked up (by a reload), not at start, which never
    needs them (the dict of 100,000 texts was a tenth of a start's read)."""

    __slots__ = ("alike", "built", "keys", "ports", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.keys: list[RouteKey] = []
        self.ports: list[Ports] = []
        self.built: Blocks | None = None
        # (text, start, lines a block, blocks) of blocks read by _read_alike: their texts,
        # found when the blocks are built (the lines at start were split without them)
        self.alike: tuple[str, int, int, int] | None = None

    def blocks(self) -> Blocks:
        if self.built is None:
            if self.alike is not None:
                text, start, period, count = self.alike
                texts = _ALIKE_BLOCKS[period].findall(text, start)
                del texts[count - 1 :]  # the last block: to the end of the file
                texts.append(text[start + sum(map(len, texts)) :])
                self.texts, self.alike = texts, None
            values = zip(self.keys, self.ports, repeat(False))
            self.built = dict(zip(self.texts, values, strict=False))  # (as long as the texts)
            self.texts, self.keys, self.ports = [], [], []
        return self.built


class Part(NamedTuple):
    """One file as read: its text, its declarations alone, its other keys (None if it is
    not TOML) and its problems. A reload reuses the Part of a file whose text is the same,
    and the routes of the [[route]] blocks whose text is the same (`blocks`)."""

    text: str
    found: Declarations
    settings: dict[str, Any] | None
    problems: list[str]
    stored: Blocks | _Columns | None = None  # the blocks, as read (see blocks)

    @property
    def blocks(self) -> Blocks | None:
        """The routes of the file's [[route]] blocks by their text (None: not kept)."""
        stored = self.stored
        return stored.blocks() if isinstance(stored, _Columns) else stored


def parse_file(text: str, path: str, previous: Part | None = None) -> Part:
    """Read one file. If it is plain TOML with only exact routes after its settings, each
    [[route]] block is parsed and checked once: a block whose text `previous` had is taken
    from it (a change of one route in 100,000 parses one block, not the file)."""
    known = previous.blocks if previous is not None else None
    part = _parse_edit(text, path, previous) if previous is not None else None
    if part is None:
        part = _parse_blocks(text, path, known or {})
    if part is not None:
        return part
    found = Declarations()
    problems: list[str] = []
    settings = parse_text(text, path, found, problems)
    return Part(text, found, settings, problems, _blocks_of(text, found) if not problems else None)


_EDGE = 1 << 16  # characters compared at a time by _same_head and _same_tail
_ROUTE_HEADER = "\n[[route]]\n"


def _same_head(a: str, b: str) -> int:
    """The length of the longest common prefix of a and b."""
    end, at = min(len(a), len(b)), 0
    while at + _EDGE <= end and a[at : at + _EDGE] == b[at : at + _EDGE]:
        at += _EDGE
    while at < end and a[at] == b[at]:
        at += 1
    return at


def _same_tail(a: str, b: str, most: int) -> int:
    """The length of the longest common suffix of a and b, at most `most` (<= both lengths)."""
    done, la, lb = 0, len(a), len(b)
    while (
        done + _EDGE <= most
        and a[la - done - _EDGE : la - done] == b[lb - done - _EDGE : lb - done]
    ):
        done += _EDGE
    while done < most and a[la - done - 1] == b[lb - done - 1]:
        done += 1
    return done


def _parse_edit(text: str, path: str, previous: Part) -> Part | None:
    """parse_file for a file read before by blocks whose text differs in one stretch (an
    edit of some routes): the blocks before and after the stretch are taken from `previous`
    as they are, unread (their lines shifted if the stretch's count changed); those in it
    are read as _parse_blocks reads them. None when that does not apply (no blocks known,
    the stretch reaches the settings, a problem: the caller reads the file by blocks)."""
    old, known = previous.text, previous.blocks
    if not known or previous.problems or previous.settings is None:
        return None
    head = _same_head(old, text)
    tail = _same_tail(old, text, min(len(old), len(text)) - head)
    # The stretch grown to whole blocks: from the header before it to the one after it.
    start = old.rfind(_ROUTE_HEADER, 0, head + 1) + 1
    # (the header's own newline in the common tail too: otherwise the new text can have
    # anything before the "[[route]]" there, "# " say, and the cut would land in a comment)
    end = old.find(_ROUTE_HEADER, len(old) - tail) + 1 or len(old)
    new_end = end + len(text) - len(old)
    if start == 0 or new_end < start:
        return None
    part = _parse_blocks(text[start:new_end], path, known)
    if part is None or part.settings:
        return None
    first = old.count("\n", 0, start) + 1  # the stretch's first line
    after = first + old.count("\n", start, end)  # the first line after it, before the edit
    shift = part.text.count("\n") - (after - first)
    found = previous.found
    routes, positions = dict(found.routes), dict(found.positions)
    for key, line in found.positions.items():
        if line >= after:
            if shift:
                positions[key] = line + shift
        elif line >= first:
            del routes[key], positions[key]  # in the stretch: read again below
    for key, ports in part.found.routes.items():
        if key in routes:
            return None  # also declared outside the stretch: the full read says where
        routes[key] = ports
        positions[key] = part.found.positions[key] + first - 1
    blocks = part.blocks or {}
    if len(known) + len(blocks) > 2 * len(routes) + 1000:
        return None  # the blocks of former edits would pile up: read by blocks, afresh
    wild = {key for key in found.wild if key in routes} | part.found.wild
    into = Declarations(files=[path], routes=routes, positions=positions, wild=wild)
    blocks = {**known, **blocks}  # (the edited blocks' former texts too: a few)
    return Part(text, into, previous.settings, [], blocks)


def _block_starts(text: str) -> list[int] | None:
    """Where each [[route]] header starts, or None if the file has another kind of table."""
    starts = []
    for m in _HEADER.finditer(text):
        if m.group(1) != "route":
            return None
        starts.append(m.start())
    return starts


def _blocks_of(text: str, found: Declarations) -> Blocks | None:
    """The blocks of a file just parsed in full, for the next read (files of exact routes
    only: a template, join or interface is not kept per block)."""
    starts = _block_starts(text)
    if not starts or found.templates or len(starts) != len(found.routes):
        return None
    if len(_ANY_HEADER.findall(text)) != len(starts):
        # Another table ([[routes]], [logging]: refused as a setting by config, not here)
        # would sit in a block's text and be taken unread with it by the next read.
        return None
    blocks: Blocks = {}
    ends = [*starts[1:], len(text)]
    keys = sorted(found.routes, key=found.positions.__getitem__)  # in the order of the file
    for start, end, key in zip(starts, ends, keys, strict=True):
        blocks[text[start:end]] = (key, found.routes[key], key in found.wild)
    return blocks


def _parse_blocks(text: str, path: str, known: Blocks) -> Part | None:
    """`parse_file` by blocks (those `known` from the last read reused), or None when a full
    read is needed (no [[route]] block, another kind of table, text that is not plain TOML,
    or any problem: the full read reports it)."""
    first = _HEADER.search(text)
    if first is not None and not known:
        settings = plain_toml(text[: first.start()])
        if settings is None or any(kind in settings for kind in KINDS):
            return None
        read = _read_columns(text, first.start(), path)
        if read is not None:
            return Part(text, read[0], settings, [], read[1])
    starts = _block_starts(text)
    if not starts:
        return None
    settings = plain_toml(text[: starts[0]])
    if settings is None or any(kind in settings for kind in KINDS):
        return None
    found = Declarations(files=[path])
    routes, positions, wild = found.routes, found.positions, found.wild
    blocks: Blocks = {}
    ports_of: dict[tuple[str, str], Ports] = {}  # see _written_block
    line, last = 1, 0
    ends = [*starts[1:], len(text)]
    for start, end in zip(starts, ends, strict=True):
        line += text.count("\n", last, start)
        last = start
        block = text[start:end]
        parsed = known.get(block) or blocks.get(block)
        if parsed is None:
            parsed = _written_block(block, ports_of) or _one_block(block, path)
            if parsed is None:
                return None
        key, ports, has_wildcards = parsed
        if key in routes:
            return None  # a duplicate: the full read says where both are
        routes[key] = ports
        positions[key] = line
        if has_wildcards:
            wild.add(key)
        blocks[block] = parsed
    return Part(text, found, settings, [], blocks)


# A [[route]] block of an exact route as mfcctl import-smcroute (and most generators) write
# it: its keys in this order, one space around `=`, no comments, blank lines after it.
_VALUE = r'"([^"\\\x00-\x1f\x7f]*)"'  # a basic string without escapes: its text
_NAME = r'"([^"\\\x00-\x1f\x7f*+]*)"'  # the same, not a wildcard
# The interfaces of such a block: its iif (group 1) and its oifs' list (group 2).
_INTERFACES = (
    rf"iif = {_NAME}\n"
    r'oifs = \[((?:"[^"\\\x00-\x1f\x7f*+]*", )*"[^"\\\x00-\x1f\x7f*+]*")\]\n'
)
_WRITTEN = re.compile(
    rf"\[\[route\]\]\nsource = {_VALUE}\ngroup = {_VALUE}\n{_INTERFACES}"
    r"(?:table = ([1-9][0-9]{0,9})\n)?\n*\Z"
)
_INTERFACES_WRITTEN = re.compile(_INTERFACES + r"\Z")


# _WRITTEN for the blocks of a whole file at once (see _read_columns), loosely: each
# block's text, its source and group, its two lines of interfaces as one text, its table
# ("" when absent) and its blank lines. Twice as fast as _WRITTEN's character classes;
# _take_written holds each column to _WRITTEN (the addresses by inet_pton, each distinct
# text of interfaces by _INTERFACES_WRITTEN), so a block it takes is one _WRITTEN takes.
_WRITTEN_ALL = re.compile(
    r'(\[\[route\]\]\nsource = "([^"]*)"\ngroup = "([^"]*)"\n'
    r'(iif = "[^"]*"\noifs = \[[^]]*\]\n)(?:table = ([1-9][0-9]{0,9})\n)?(\n*))'
)
_WRITTEN_SPAN = 1 << 20  # characters of blocks read per findall (its rows are transient)
_IPV4 = partial(socket.inet_pton, socket.AF_INET)
# The first bytes route_key_of takes without further ado: unicast sources (not 0, not
# 127), groups of 224/4 (224.0.0.0/24 aside, looked at below).
_SOURCE_FIRST = bytes([*range(1, 127), *range(128, 224)])
_GROUP_FIRST = bytes(range(224, 240))
_LOCAL4 = b"\xe0\x00\x00"  # 224.0.0.0/24: link-local groups, never routed


def _read_columns(text: str, start: int, path: str) -> tuple[Declarations, _Columns] | None:
    """_parse_blocks' routes and blocks for a file whose blocks from `start` on are all
    written as _WRITTEN with IPv4 addresses (a start with 100,000 routes), the blocks left
    as columns (built when a reload looks them up): blocks alike but for their addresses
    from their lines, others by a findall over a span of blocks, each column checked at
    once. None if any block is in another form, not IPv4 or has a problem: the caller
    reads the file by blocks, which says why."""
    return _read_alike(text, start, path) or _read_spans(text, start, path)


# The blocks import-smcroute writes (and the bench, and most files written by hand): alike
# but for their addresses, as many lines between each and the next (blank lines, comment
# lines such as import-smcroute's note of the line it converted), any such lines after
# the last. Split in lines, a block's source and group are its second and third lines
# without their key and quotes; the text rebuilt from them must be the file's.
_ALIKE_HEAD, _ALIKE_MID = '[[route]]\nsource = "', '"\ngroup = "'
_SOURCE_VALUE, _GROUP_VALUE = itemgetter(slice(10, -1)), itemgetter(slice(9, -1))
# (and held to _WRITTEN_ALL's own form of them: a ] in a name ends its list there)
_LOOSE_INTERFACES = re.compile(r'iif = "[^"]*"\noifs = \[[^]]*\]\n\Z')
_GAP_MOST = 3  # lines between two blocks read alike (more: read by spans or by blocks)
# a block's text, with the lines between it and the next, by its count of lines
_ALIKE_BLOCKS = {n: re.compile(rf"(?:[^\n]*\n){{{n}}}") for n in range(5, 6 + _GAP_MOST)}


def _read_alike(text: str, start: int, path: str) -> tuple[Declarations, _Columns] | None:
    """_read_spans of a file whose blocks from `start` on are written as _WRITTEN and alike
    but for their source and group (one iif and oifs line, no table), as many blank or
    comment lines between each and the next, any after the last, in LF or CRLF: its lines
    split once, without a findall, the form proved by the text rebuilt from the addresses
    and the lines between. None for any other file, and on any problem: _read_spans reads
    it, or says it is not for a read at once."""
    body = text[start:]
    if "\r" in body:  # CRLF: the same lines (a lone CR stays, and is no form read here)
        body = body.replace("\r\n", "\n")
    if not body.endswith("\n"):
        body += "\n"  # (the last line's end: the same TOML, the same lines)
    first = body.split("\n", 6)  # the first block's lines
    if len(first) < 6 or not _LOOSE_INTERFACES.match(interfaces := f"{first[3]}\n{first[4]}\n"):
        return None
    # Cheap signs first (a file of other blocks is left at once): one interfaces' text
    # for every block, no table.
    count = body.count(_ALIKE_HEAD)
    if count == 0 or body.count(interfaces) != count or "\ntable = " in body:
        return None
    period = body.count("\n", 0, body.find(_ALIKE_HEAD, 1)) if count > 1 else 5  # (lines a block)
    end = body.find(interfaces, body.rindex(_ALIKE_HEAD))  # the last block's end
    if period not in _ALIKE_BLOCKS or end < 0:
        return None
    end += len(interfaces)
    if not all(map(_PLAIN_SKIP.match, body[end:].split("\n"))):
        return None  # after the last block: lines that are not blank or a comment
    lines = body.split("\n")
    whole = period * (count - 1)  # the lines of all blocks but the last
    sources = list(map(_SOURCE_VALUE, lines[1 : whole + 2 : period]))
    groups = list(map(_GROUP_VALUE, lines[2 : whole + 3 : period]))
    gaps = [lines[5 + j : whole : period] for j in range(period - 5)]  # lines between blocks
    del lines
    if len(sources) != count or len(groups) != count:
        return None
    for gap in gaps:
        if gap.count("") != len(gap) and not all(map(_PLAIN_SKIP.match, set(gap))):
            return None  # between blocks: lines that are not blank or a comment
    tail = '"\n' + interfaces
    between = chain.from_iterable(zip(gaps, repeat(repeat("\n"))))
    pieces = zip(repeat(_ALIKE_HEAD), sources, repeat(_ALIKE_MID), groups, repeat(tail), *between)
    last = (_ALIKE_HEAD, sources[-1], _ALIKE_MID, groups[-1], tail)
    rebuilt = "".join(chain(chain.from_iterable(islice(pieces, count - 1)), last))
    if len(rebuilt) != end or not body.startswith(rebuilt):
        return None
    del rebuilt, body
    found = Declarations(files=[path])
    line = text.count("\n", 0, start) + 1
    lines_at = range(line, line + period * count + 1, period)
    # (a source or group with a quote, which _WRITTEN_ALL would read otherwise, is no address)
    taken = _take_columns(
        sources,
        groups,
        [interfaces] * count,
        repeat(DEFAULT_TABLE[4]),
        lines_at,
        found=found,
        ports_of={},
    )
    if taken is None:
        return None
    blocks = _Columns()
    blocks.keys, blocks.ports = taken
    blocks.alike = (text, start, period, count)
    return found, blocks


def _read_spans(text: str, start: int, path: str) -> tuple[Declarations, _Columns] | None:
    """_read_columns a span of blocks at a time: a findall, each column checked at once."""
    found = Declarations(files=[path])
    blocks = _Columns()
    ports_of: dict[str, Ports] = {}  # each text of interfaces checked once
    line, end = text.count("\n", 0, start) + 1, len(text)
    while start < end:
        stop = text.find(_ROUTE_HEADER, start + _WRITTEN_SPAN) + 1 or end
        rows = _WRITTEN_ALL.findall(text, start, stop)
        taken = _take_written(
            rows, stop - start, line, found=found, blocks=blocks, ports_of=ports_of
        )
        if taken is None:
            return None
        line, start = taken, stop
    return found, blocks


def _take_written(
    rows: list[tuple[str, ...]],
    length: int,
    line: int,
    *,
    found: Declarations,
    blocks: _Columns,
    ports_of: dict[str, Ports],
) -> int | None:
    """Add the routes of `rows` (_WRITTEN_ALL's, from `length` characters starting at
    `line`) to `found` and `blocks`, checked as route_key_of and add_change check them;
    the line after them, or None."""
    if not rows:
        return None
    texts, sources, grouped, interfaces, tables, blanks = zip(*rows, strict=True)
    if sum(map(len, texts)) != length:
        return None  # something between the blocks that is not one
    numbers: Iterable[int] = repeat(DEFAULT_TABLE[4])
    sizes: Iterable[int] = repeat(5)  # lines of a block before its blank lines
    if any(tables):
        numbers = [int(t) if t else DEFAULT_TABLE[4] for t in tables]
        sizes = [6 if t else 5 for t in tables]
        if max(numbers) > validate.MAX_TABLE[4]:
            return None
    lines: list[int] = list(accumulate(map(add, sizes, map(len, blanks)), initial=line))
    taken = _take_columns(
        sources, grouped, interfaces, numbers, lines, found=found, ports_of=ports_of
    )
    if taken is None:
        return None
    blocks.texts += texts
    blocks.keys += taken[0]
    blocks.ports += taken[1]
    return lines[-1]


def _take_columns(
    sources: Sequence[str],
    grouped: Sequence[str],
    interfaces: Sequence[str],
    numbers: Iterable[int],
    lines: Sequence[int],
    *,
    found: Declarations,
    ports_of: dict[str, Ports],
) -> tuple[list[RouteKey], list[Ports]] | None:
    """The routes of blocks given as columns (their sources, groups, texts of interfaces,
    tables and first lines, with the line after the last), checked as route_key_of and
    add_change check them and added to `found`: their keys and Ports, or None."""
    # Routes that share a source or a group share its string (memory only, as
    # address_sharing does, here per span of blocks and in C: each text maps to its first
    # row's); each distinct address is checked once.
    source_seen: dict[str, str] = {}
    group_seen: dict[str, str] = {}
    shared_sources = list(map(source_seen.setdefault, sources, sources))
    shared_groups = list(map(group_seen.setdefault, grouped, grouped))
    try:
        srcs, grps = b"".join(map(_IPV4, source_seen)), b"".join(map(_IPV4, group_seen))
    except (OSError, ValueError):
        return None  # IPv6, a prefix, not an address: read by blocks
    if srcs[::4].translate(None, _SOURCE_FIRST) or grps[::4].translate(None, _GROUP_FIRST):
        return None
    if b"\xe0" in grps[::4] and any(grps[k : k + 3] == _LOCAL4 for k in range(0, len(grps), 4)):
        return None
    try:
        for written in set(interfaces).difference(ports_of):
            m = _INTERFACES_WRITTEN.match(written)
            if m is None:
                return None  # not as _WRITTEN reads it (a wildcard, an escape, a comment...)
            iif, names = m.group(1), _LIST_ITEM.findall(m.group(2))
            ports_of[written] = validate.add_change(sources[0], grouped[0], iif, names).ports
    except MfcdError:
        return None
    keys = list(zip(repeat(4), shared_sources, shared_groups, numbers))
    ports = list(map(ports_of.__getitem__, interfaces))
    routes, before = found.routes, len(found.routes)
    routes.update(zip(keys, ports, strict=True))
    if len(routes) != before + len(keys):
        return None  # a route declared twice: the full read says where both are
    found.positions.update(zip(keys, lines, strict=False))  # (one line more: the next)
    return keys, ports


def _written_block(
    block: str, ports_of: dict[tuple[str, str], Ports]
) -> tuple[RouteKey, Ports, bool] | None:
    """_one_block for a block written as _WRITTEN (None: another form, or a problem, for
    _one_block to read): one match instead of a TOML reader, and each combination of
    interfaces checked once (`ports_of`, by their text)."""
    m = _WRITTEN.match(block)
    if m is None:
        return None
    source, group, iif, oifs, table = m.groups()
    if "/" in source or "/" in group or source in _ANY:
        return None  # a template (as _exact says)
    try:
        key = validate.route_key_of(source, group, None if table is None else int(table))
        ports = ports_of.get((iif, oifs))
        if ports is None:
            names = _LIST_ITEM.findall(oifs)
            ports = ports_of[(iif, oifs)] = validate.add_change(source, group, iif, names).ports
    except MfcdError:
        return None
    return key, ports, False


def _one_block(block: str, path: str) -> tuple[RouteKey, Ports, bool] | None:
    """The exact route of one [[route]] block, or None (not plain, a template, a problem)."""
    data = plain_toml(block)
    if data is None:
        return None
    found = Declarations()
    problems: list[str] = []
    source = _Source(path, 0, block)
    found.files.append(path)
    entries = data.get("route")
    if not isinstance(entries, list) or len(entries) != 1 or len(data) != 1:
        return None
    _parse_route(entries[0], source, 0, found, problems)
    if problems or len(found.routes) != 1:
        return None
    ((key, ports),) = found.routes.items()
    return key, ports, key in found.wild


def merge(parts: list[Declarations], problems: list[str]) -> Declarations:
    """The declarations of several files as one (a declaration in two files is a problem).
    The declarations of the only file that has any are returned as they are."""
    parts = [
        p for p in parts if p.routes or p.templates or p.joins or p.interfaces or p.table_interfaces
    ]
    if len(parts) == 1:
        return parts[0]
    out = Declarations()
    joins: dict[tuple[str, str, str | None], str] = {}
    for part in parts:
        shift = len(out.files) << _LINE_SHIFT
        out.files += part.files
        routes, positions = out.routes, out.positions
        for key, ports in part.routes.items():
            if key in routes:
                problems.append(
                    f"{part.where(key)}: route: the route {key[1]} -> {key[2]}{_table_text(key)}"
                    f" is declared twice (also at {out.where(key)})"
                )
                continue
            routes[key] = ports
            positions[key] = part.positions[key] + shift
        out.wild |= part.wild
        out.templates += part.templates
        for join in part.joins:
            seen = joins.setdefault((join.interface, join.group, join.source), join.where)
            if seen != join.where:
                problems.append(f"{join.where}: join: this join is declared twice (also at {seen})")
            else:
                out.joins.append(join)
        for name, setting in part.interfaces.items():
            other = out.interfaces.get(name)
            if other is not None:
                problems.append(
                    f"{setting.where}: interface: interface {name} is declared twice (also at"
                    f" {other.where})"
                )
            else:
                out.interfaces[name] = setting
        for (name, table), setting in part.table_interfaces.items():
            other = out.table_interfaces.get((name, table))
            if other is not None:
                problems.append(
                    f"{setting.where}: interface: interface {name} is declared twice for table"
                    f" {table} (also at {other.where})"
                )
            else:
                out.table_interfaces[(name, table)] = setting
    return out


def _toml_problem(path: str, message: str, text: str) -> str:
    # tomllib: "Invalid value (at line 3, column 7)", or "(at end of document)"
    if message.endswith("(at end of document)"):
        last = text.rstrip("\n").count("\n") + 1
        return f"{path}:{last}: not valid TOML: {message[: -len('(at end of document)')].strip()}"
    m = re.search(r"\(at line (\d+), column (\d+)\)$", message)
    if m:
        reason = message[: m.start()].strip()
        return f"{path}:{m.group(1)}: not valid TOML: {reason} (column {m.group(2)})"
    return f"{path}: not valid TOML: {message}"


class _Bad(Exception):
    """One problem in an entry: its message and the key at fault (for the line)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _locate(source: _Source, kind: str, index: int, e: Exception) -> str:
    start = source.entry_line(kind, index)
    key = getattr(e, "key", None) or getattr(e, "field", None)
    line = source.key_line(key, start) if key else None
    return f"{source.at(line or start)}: {kind}: {e}"


def _fields(entry: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    for name in entry:
        if name not in allowed:
            raise _Bad(f"unknown key {name!r} (allowed: {', '.join(allowed)})", name)
    for name in required:
        if name not in entry:
            raise _Bad(f"missing key {name!r}")


def _parse_route(
    entry: dict[str, Any], source: _Source, index: int, into: Declarations, problems: list[str]
) -> None:
    try:
        _fields(entry, ROUTE_KEYS, ("group", "iif", "oifs"))
        src, group = entry.get("source", ANY_SOURCE), entry["group"]
        line = source.entry_line("route", index)
        if _exact(src) and _exact(group):
            _exact_route(entry, source, line, into)
        else:
            into.templates.append(_template(entry, src, group, source.at(line)))
    except (_Bad, MfcdError) as e:
        problems.append(_locate(source, "route", index, e))


def _exact(address: Any) -> bool:
    return isinstance(address, str) and "/" not in address and address not in _ANY


_ANY = (ANY_SOURCE, "0.0.0.0", "::")  # smcroute and `ip mroute` spell any source as 0.0.0.0


def _exact_route(entry: dict[str, Any], source: _Source, line: int, into: Declarations) -> None:
    src, group, iif, oifs = entry["source"], entry["group"], entry["iif"], entry["oifs"]
    if isinstance(iif, str) and is_wildcard(iif):
        raise _Bad(
            f"iif {iif} is a wildcard: an (S,G) route arrives on one interface (a template,"
            ' with source "*" or a prefix, may take a wildcard iif)',
            "iif",
        )
    wild = isinstance(oifs, list) and any(isinstance(n, str) and is_wildcard(n) for n in oifs)
    if wild:
        key = validate.route_key_of(src, group, entry.get("table"))
        iif = validate.interface(iif, "iif")
        _check_patterns(oifs, "oifs")
        if iif in oifs:
            raise _Bad(f"iif {iif} is also listed in oifs", "oifs")
        ports = Ports(iif, tuple(oifs))
    else:
        change = validate.add_change(src, group, iif, oifs, entry.get("table"))
        key, ports = change.key, change.ports
    previous = into.positions.get(key)
    if previous is not None:
        raise _Bad(
            f"the route {key[1]} -> {key[2]}{_table_text(key)} is declared twice (also at"
            f" {into.where(key)})",
            "group",
        )
    into.routes[key] = ports
    into.positions[key] = source.index << _LINE_SHIFT | line
    if wild:
        into.wild.add(key)


def _check_patterns(names: list[Any], key: str) -> None:
    """Wildcards: a valid name's start, then * or +."""
    if "" in names:
        validate.interfaces(names, key)  # says why
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise _Bad(f"{key} must be a list of interface names", key)
        if name in seen:
            raise _Bad(f"{key} names {name} more than once", key)
        seen.add(name)
        if is_wildcard(name):
            stem = name[:-1]
            if not stem:
                raise _Bad(f"{key}: a wildcard needs the start of a name, as in eth+ or vlan*", key)
            validate.interface(stem, key)
        else:
            validate.interface(name, key)
    if len(names) > validate.MAX_OIFS:
        validate.interfaces(names, key)  # says why


def _table_text(key: RouteKey) -> str:
    return "" if key[3] == DEFAULT_TABLE[key[0]] else f" in table {key[3]}"


def _network(value: Any, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise _Bad(f"{key} must be a string", key)
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise _Bad(f"{key} {value!r} is not an address or a prefix: {e}", key) from None


def _template(entry: dict[str, Any], src: Any, group: Any, where: str) -> Template:
    net = _network(group, "group")
    if not net.is_multicast:
        raise _Bad(f"group {group} is not a multicast address or prefix", "group")
    family = net.version
    if src in _ANY:
        source = ANY_SOURCE
    else:
        snet = _network(src, "source")
        if snet.version != family:
            raise _Bad(f"source {src} and group {group} are of different families", "source")
        if snet.is_multicast:
            raise _Bad(f"source {src} is not a unicast address or prefix", "source")
        source = str(snet)
    iif = entry["iif"]
    if not isinstance(iif, str):
        raise _Bad("iif must be an interface name (a string)", "iif")
    _check_patterns([iif], "iif")
    oifs = entry["oifs"]
    if not isinstance(oifs, list) or not oifs:
        raise _Bad("oifs must be a non-empty list of interface names", "oifs")
    _check_patterns(oifs, "oifs")
    if iif in oifs:
        raise _Bad(f"iif {iif} is also listed in oifs", "oifs")
    table = validate.table_of(entry.get("table"), family)
    # What mfcctl refuses too (a link-local group range...): as the controller will apply it.
    # (its source and group in the canonical text `show` gives them, as 239.1.1.1 for a /32)
    key = validate.template_key_of(source, str(net), iif.rstrip("".join(WILDCARDS)) or "lo", table)
    return Template(family, key[1], key[2], iif, tuple(oifs), table, where)


def _parse_join(
    entry: dict[str, Any], source: _Source, index: int, into: Declarations, problems: list[str]
) -> None:
    try:
        _fields(entry, JOIN_KEYS, ("interface", "group"))
        name = entry["interface"]
        if not isinstance(name, str):
            raise _Bad("interface must be an interface name (a string)", "interface")
        _check_patterns([name], "interface")
        net = _network(entry["group"], "group")
        if not net.is_multicast:
            raise _Bad(f"group {entry['group']} is not a multicast address or prefix", "group")
        src = entry.get("source")
        if src is not None:
            address = _network(src, "source")
            if (
                address.version != net.version
                or address.is_multicast
                or address.prefixlen != (address.max_prefixlen)
            ):
                raise _Bad(
                    f"source {src} must be a unicast {family_text(net.version)} address", "source"
                )
            src = str(address.network_address)
        group = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        # What mfcctl join refuses too (a link-local group, too many groups), as applied.
        groups.join_keys(name.rstrip("".join(WILDCARDS)), group, src)
        where = source.at(source.entry_line("join", index))
        for other in into.joins:
            if (other.interface, other.group, other.source) == (name, group, src):
                raise _Bad(f"this join is declared twice (also at {other.where})", "group")
        into.joins.append(Join(net.version, name, group, src, where))
    except (_Bad, MfcdError) as e:
        problems.append(_locate(source, "join", index, e))


def _parse_interface(
    entry: dict[str, Any], source: _Source, index: int, into: Declarations, problems: list[str]
) -> None:
    try:
        _fields(entry, INTERFACE_KEYS, ("name",))
        name = entry["name"]
        if not isinstance(name, str):
            raise _Bad("name must be an interface name (a string)", "name")
        validate.one_interface(name, "name")
        threshold = entry.get("threshold")
        if threshold is not None:
            try:
                validate.threshold(threshold)
            except MfcdError as e:
                raise _Bad(str(e), "threshold") from None
        mrdisc = entry.get("mrdisc")
        if mrdisc is not None and not isinstance(mrdisc, bool):
            raise _Bad("mrdisc must be true or false", "mrdisc")
        where = source.at(source.entry_line("interface", index))
        if "table" in entry:
            _table_setting(entry, name, threshold, where, into)
            return
        other = into.interfaces.get(name)
        if other is not None:
            raise _Bad(f"interface {name} is declared twice (also at {other.where})", "name")
        into.interfaces[name] = InterfaceSetting(name, threshold, mrdisc, where)
    except (_Bad, MfcdError) as e:
        problems.append(_locate(source, "interface", index, e))


def _table_setting(
    entry: dict[str, Any], name: str, threshold: int | None, where: str, into: Declarations
) -> None:
    """An [[interface]] with a table: the interface's threshold in that table only."""
    if "mrdisc" in entry:
        raise _Bad(
            "mrdisc is per interface, not per table (it sends its advertisements on the"
            " link): set it in an [[interface]] without table",
            "mrdisc",
        )
    if threshold is None:
        raise _Bad(
            "an [[interface]] with a table sets its threshold there: give threshold", "table"
        )
    try:
        table = validate.table_of(entry["table"], 4)  # (thresholds act on IPv4 entries only)
    except MfcdError as e:
        raise _Bad(str(e), "table") from None
    other = into.table_interfaces.get((name, table))
    if other is not None:
        raise _Bad(
            f"interface {name} is declared twice for table {table} (also at {other.where})",
            "table",
        )
    into.table_interfaces[(name, table)] = InterfaceSetting(name, threshold, None, where, table)


_PARSERS = {"route": _parse_route, "join": _parse_join, "interface": _parse_interface}


# --- checks across declarations -----------------------------------------------------------------


def check(into: Declarations, problems: list[str]) -> None:
    """What only the whole set of declarations shows: VIFs per table, overlapping templates."""
    _check_vifs(into, problems)
    _check_templates(into, problems)


_FEW_PORTS = 1000  # distinct Ports values up to which _check_vifs first counts them all


def _check_vifs(into: Declarations, problems: list[str]) -> None:
    """At most 32 VIFs per family and table, counted over the declared interface names
    (a wildcard counts when it is expanded, at run time)."""
    names: dict[tuple[int, int], set[str]] = {}  # (family, table) -> interface names
    reported: set[tuple[int, int]] = set()

    def count(family: int, table: int, interfaces: Iterable[str], where: Callable[[], str]) -> None:
        seen = names.setdefault((family, table), set())
        for name in interfaces:
            if name not in seen and not is_wildcard(name):
                seen.add(name)
                if len(seen) > MAXVIFS and (family, table) not in reported:
                    reported.add((family, table))
                    problems.append(
                        f"{where()}: route: {family_text(family)} table {table} would need more"
                        f" than {MAXVIFS} VIFs (the kernel's limit): the routes declared so far"
                        f" name {len(seen)} interfaces"
                    )

    values = into.routes.values()
    distinct = dict(zip(map(id, values), values, strict=True)).values()
    if len(distinct) <= _FEW_PORTS:  # (the usual case: a few combinations of interfaces)
        named = {n for ports in distinct for n in ports.interfaces}
        named.update(n for t in into.templates for n in (t.iif, *t.oifs))
        if len(named) <= MAXVIFS:
            return  # no table can name more: no pass over the routes
    # Routes share their Ports values: each distinct one is counted once, at its first route
    # (found a column at a time: a loop over 100,000 routes took a fifth of a start's read).
    keys = list(into.routes)
    shared = list(
        zip(
            map(itemgetter(0), keys),
            map(itemgetter(3), keys),
            map(id, into.routes.values()),
            strict=True,
        )
    )
    first = dict(zip(reversed(shared), reversed(keys), strict=True))  # each one's first route
    for key in map(first.__getitem__, dict.fromkeys(shared)):  # in the order of the routes
        count(key[0], key[3], into.routes[key].interfaces, partial(into.where, key))
    for t in into.templates:
        count(t.family, t.table, (t.iif, *t.oifs), partial(str, t.where))


def _check_templates(into: Declarations, problems: list[str]) -> None:
    """Two templates for the same iif and table whose (source, group) ranges overlap with
    neither inside the other: no longest match decides between them. Also a template
    declared twice. Each problem is told at the later of the two, in the files' order."""
    templates = into.templates
    by_iif: dict[tuple[int, int, str], list[int]] = {}
    for i, t in enumerate(templates):
        by_iif.setdefault((t.family, t.table, t.iif), []).append(i)
    found: list[tuple[int, int, str]] = []  # (the later's index, the earlier's, problem)
    for indexes in by_iif.values():
        found += _clashes([templates[i] for i in indexes], indexes)
    problems += [problem for _, _, problem in sorted(found)]


_Prefix = tuple[int, int]  # (the network as an int, its length); a length of -1 is any source


def _prefix(text: str) -> _Prefix:
    if text == ANY_SOURCE:
        return (0, -1)  # (inside nothing, and everything inside it, /0 included)
    net = ipaddress.ip_network(text)
    return (int(net.network_address), net.prefixlen)


def _clashes(templates: list[Template], indexes: list[int]) -> list[tuple[int, int, str]]:
    """_check_templates for the templates of one family, table and iif (`indexes`: their
    places in the files' order). CIDR ranges are either disjoint or nested, so two ranges
    of (source, group) overlap with neither inside the other only when one's source range
    is strictly inside the other's and its group range strictly holds the other's: for
    each source, its strict supernets among the sources declared, and for each group of
    such a supernet, its strict supernets among the groups of the more specific source,
    by prefix length. Near linear, where comparing every pair took seconds for a few
    thousand templates (such as (*,G) lines an smcroute.conf carries)."""
    bits = 32 if templates[0].family == 4 else 128
    parsed = [(_prefix(t.source), _prefix(t.group)) for t in templates]
    by_source: dict[_Prefix, dict[_Prefix, list[int]]] = {}
    for k, (src, grp) in enumerate(parsed):
        by_source.setdefault(src, {}).setdefault(grp, []).append(k)
    found = [
        _pair(templates, indexes, later, earlier, "twice")
        for groups_ in by_source.values()
        for ks in groups_.values()
        for n, later in enumerate(ks)
        for earlier in ks[:n]
    ]
    source_lengths = sorted({length for _, length in by_source})
    for inner, inner_groups in by_source.items():
        group_lengths = sorted({length for _, length in inner_groups})
        for outer in _supernets(inner, source_lengths, by_source, bits):
            for (net, length), outer_ks in by_source[outer].items():
                for longer in _supernets((net, length), group_lengths, inner_groups, bits):
                    for a in inner_groups[longer]:  # a: the source inside, the group holding
                        found += [_pair(templates, indexes, a, b, "crossed") for b in outer_ks]
    return found


def _supernets(
    prefix: _Prefix, lengths: list[int], present: Iterable[_Prefix], bits: int
) -> Iterator[_Prefix]:
    """The prefixes of `present` (of the lengths given) that strictly hold `prefix`."""
    net, length = prefix
    for shorter in lengths:
        if shorter >= length:
            return
        host = bits - shorter  # (a length of -1, any source, holds every source prefix)
        candidate = (0, -1) if shorter < 0 else (net >> host << host, shorter)
        if candidate in present:
            yield candidate


def _pair(
    templates: list[Template], indexes: list[int], a: int, b: int, kind: str
) -> tuple[int, int, str]:
    """The problem of templates a and b (places in `templates`), told at the later one."""
    later, earlier = (a, b) if indexes[a] > indexes[b] else (b, a)
    t, other = templates[later], templates[earlier]
    if kind == "twice":
        problem = (
            f"{t.where}: route: the template {t.source} -> {t.group} on {t.iif} is"
            f" declared twice (also at {other.where})"
        )
    else:
        problem = (
            f"{t.where}: route: the template {t.source} -> {t.group} on {t.iif}"
            f" overlaps {other.source} -> {other.group} (at {other.where}) and neither"
            " is inside the other: split one so that one is more specific"
        )
    return indexes[later], indexes[earlier], problem


# --- differences --------------------------------------------------------------------------------


@dataclass(slots=True)
class Declared:
    """What a reload changes in one kind of declaration: the entries added and removed, and
    those whose identity stays with another value (a template's oifs)."""

    added: list[Any] = field(default_factory=list)
    removed: list[Any] = field(default_factory=list)
    changed: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Diff:
    """What a reload changes: the exact routes, the interface settings, the templates and
    the joins (the controller applies them; templates and joins it compares with the
    running intents too, so wildcards follow the interfaces)."""

    added: list[RouteKey] = field(default_factory=list)
    removed: list[RouteKey] = field(default_factory=list)
    changed: list[RouteKey] = field(default_factory=list)
    unchanged: int = 0
    thresholds: dict[str, int | None] = field(default_factory=dict)  # name -> new (None: unset)
    # (name, table) -> new threshold of that table only (None: unset)
    table_thresholds: dict[tuple[str, int], int | None] = field(default_factory=dict)
    mrdisc: dict[str, bool | None] = field(default_factory=dict)  # name -> new (None: unset)
    templates: Declared = field(default_factory=Declared)  # of Template
    joins: Declared = field(default_factory=Declared)  # of Join


def diff(old: Declarations, new: Declarations) -> Diff:
    """The difference between the running declarations and those just read. O(routes):
    each route's declared interfaces are one shared value, compared by identity first."""
    result = Diff()
    if new is old:
        result.unchanged = len(new.routes)
        return result
    old_routes = old.routes
    added, changed = result.added, result.changed
    for key, ports in new.routes.items() if old_routes else ():
        before = old_routes.get(key)
        if before is None:
            added.append(key)
        elif before is not ports and before != ports:
            changed.append(key)
    if not old_routes:  # (the start: every route is added)
        added += new.routes
    result.unchanged = len(new.routes) - len(added) - len(changed)
    new_routes = new.routes
    if len(old_routes) + len(added) != len(new_routes):
        result.removed = [key for key in old_routes if key not in new_routes]
    old_th, new_th = old.thresholds(), new.thresholds()
    for name in old_th.keys() | new_th.keys():
        if old_th.get(name) != new_th.get(name):
            result.thresholds[name] = new_th.get(name)
    old_tt, new_tt = old.table_thresholds(), new.table_thresholds()
    for setting in old_tt.keys() | new_tt.keys():
        if old_tt.get(setting) != new_tt.get(setting):
            result.table_thresholds[setting] = new_tt.get(setting)
    old_md, new_md = old.mrdisc(), new.mrdisc()
    for name in old_md.keys() | new_md.keys():
        if old_md.get(name) != new_md.get(name):
            result.mrdisc[name] = new_md.get(name)
    result.templates = _listed(old.templates, new.templates, _template_id)
    result.joins = _listed(old.joins, new.joins, _join_id)
    return result


def _template_id(t: Template) -> tuple[Any, ...]:
    return (t.family, t.source, t.group, t.table, t.iif)


def _join_id(j: Join) -> tuple[Any, ...]:
    return (j.interface, j.group, j.source)


def _listed(old: list[Any], new: list[Any], identity: Callable[[Any], Any]) -> Declared:
    """Entries added, removed and changed (same identity, other value), `where` aside."""
    before = {identity(item): item for item in old}
    after = {identity(item): item for item in new}
    out = Declared()
    for ident, item in after.items():
        was = before.get(ident)
        if was is None:
            out.added.append(item)
        elif was[:-1] != item[:-1]:
            out.changed.append(item)
    out.removed = [item for ident, item in before.items() if ident not in after]
    return out


class Waiting(NamedTuple):
    """The declared routes and templates that wait for interfaces that do not exist:
    pending (their iif is missing) and degraded (an oif only), how many of each are
    templates (a warning names them apart from the routes), and the interfaces each kind
    waits for."""

    pending: int  # routes and templates
    degraded: int
    pending_for: list[str]
    degraded_for: list[str]
    pending_templates: int  # of `pending`, the templates
    degraded_templates: int

    @property
    def missing(self) -> list[str]:
        return sorted({*self.pending_for, *self.degraded_for})


def waiting(
    combinations: Mapping[Ports, int], templates: Iterable[Template], links: Collection[str]
) -> Waiting:
    """Which of the declared routes (`combinations`: how many routes have each Ports, as
    Counter(Declarations.routes.values()) counts them, at C speed) and templates wait for
    interfaces not in `links` (a wildcard oif waits for one it matches, when none exists:
    a typo such as `vlna*` is seen; a wildcard iif waits for none)."""
    counts = [0, 0, 0, 0]  # pending, degraded, and of them the templates
    names: tuple[set[str], set[str]] = (set(), set())
    routes = ((ports, n, False) for ports, n in combinations.items())
    declared = chain(routes, ((Ports(t.iif, t.oifs), 1, True) for t in templates))
    for ports, n, template in declared:
        missing = [name for name in ports.interfaces if name not in links and not is_wildcard(name)]
        missing += [
            name
            for name in ports.oifs
            if is_wildcard(name) and not any(matches(name, m) and m != ports.iif for m in links)
        ]
        if missing:
            kind = 0 if ports.iif in missing else 1
            counts[kind] += n
            counts[kind + 2] += n * template
            names[kind].update(missing)
    pending, degraded = sorted(names[0]), sorted(names[1])
    return Waiting(counts[0], counts[1], pending, degraded, counts[2], counts[3])
