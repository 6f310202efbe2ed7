"""The state file: an append-only, checksummed, numbered journal of route changes.

It is compacted into snapshots and has one owner at a time.

Format version 2 (text, one record per line):

    mfcd-state 2
    <crc32 as 8 hex digits> <JSON record>
    ...

Every record carries a sequence number, `"seq"`, its first key: one more than the record
before it.  A gap is a lost record, a repeat a copied or replayed one; both are corruption.
The numbers go on across compactions, so a line copied from an older file does not fit.

The file starts with a snapshot, which states its route count.  Up to SNAPSHOT_CHUNK routes,
it is one record, `{"seq": S, "snapshot": {"routes": [...], "thresholds": {...}, "count": N}}`,
a route being `[family, source, group, iif, [oifs...]]`, or
`[family, source, group, iif, [oifs...], table]` for a route of a table other than its
family's default (253 for IPv4, 254 for IPv6): files without tables load unchanged, into
the default tables.  An oif may be a wildcard (`"vlan*"`, see mfcd.wildcards): it is
saved as given, never as what it matched.  A larger snapshot is a record without routes,
`{"seq": S, "snapshot": {"thresholds": {...}, "count": N, "chunks": K}}`,
followed by exactly K records `{"seq": S+i, "routes": [...]}` of at most SNAPSHOT_CHUNK
routes each: a single line of 100,000 routes would make the reader build all their lists
at once, and the memory they took, scattered between the routes that stay, would never go
back to the system.  A `{"routes": ...}` record anywhere else, fewer than K of them, or a
route count other than N, is corruption; so is a snapshot anywhere but first, a file of
0 bytes and one that ends after its header (mfcd writes neither: a new file starts with
an empty snapshot).

Each later record is one acknowledged change, `{"seq": S, "ops": [...]}`, where an op is
`["add", family, source, group, iif, [oifs...]]`, `["del", family, source, group]` or
`["threshold", interface, ttl]`; an add or del of a route in another table than the
default ends with the table number. A threshold of one table only is
`["threshold", interface, ttl, table]` (ttl 0: that table's setting removed). Group joins
are `["join", interface, group, source]` and `["leave", ...]` (source "*" for any) and
`["mrdisc", interface, true|false]`; a snapshot keeps them as
`"joins": [[interface, group, source], ...]`, `"mrdisc": [...]` and the thresholds of one
table as `"table_thresholds": [[interface, table, ttl], ...]` beside the thresholds, left
out when empty (files without them load unchanged).
A change is appended and fdatasync'ed before the client is told it succeeded, so its
cost does not grow with the number of routes.
A change of more than RECORD_OPS ops (a bulk batch) takes K records of at most RECORD_OPS
ops, `{"seq": S, "parts": K, "ops": [...]}` then `{"seq": S+i, "part": i+1, "ops": [...]}`
for i = 1..K-1, replayed as one change, all or nothing: reading one record of 1,000,000
ops would build all of them at once.  If fewer than K-1 complete lines follow the first,
the change was cut short by a crash before it was acknowledged: it is dropped like a
torn last line.  A part anywhere else, or one missing before the next record, is
corruption.
When the journal has grown to about as many ops as there are routes, the daemon
writes a fresh snapshot to a temporary file, fsyncs it, renames it over the
journal and fsyncs the directory: compaction costs O(routes) once per O(routes)
changes, and a snapshot, however many lines it takes, is on disk whole or not at all.
The daemon writes it in a thread (`Compaction`) from a copy of the routes while the
journal keeps taking changes; those are appended to the new file, renumbered, just
before the rename.

An append is one write and one fdatasync: the newline that ends the record before it,
then the record without its own newline, which goes with the next record (or is written
when mfcd stops, or before a snapshot takes the journal's place).  So every newline is
written after the line it ends was synced: a newline-terminated line with a bad checksum
is corruption, never a torn write.  The last line, without newline, is a complete record
when its checksum matches (a torn next write may follow it, even without the newline it
began with: the longest start of the line that is a record counts).  A last line without
newline that holds no complete record is, most likely, a change a crash interrupted before
it was acknowledged: it is ignored and cut off before the next append.  Nothing in the
file proves it, though: a file cut short in the middle of a line looks the same, and so
does one cut cleanly at the end of a record (the one loss nothing here can detect; see
docs/state-file.md).  A torn line whose sequence number can be read must still be the
next one.  Anything else that does not parse, whose checksum does not match or whose
sequence number does not follow is corruption: loading fails with the file name, line
and reason, and the file is never rewritten.  That includes a snapshot that ends early,
even in a line without its newline: snapshots are written whole, each line with its
newline, and never appended to, so its missing routes were acknowledged once.
(Releases before this rule drop a last line without newline: see docs/state-file.md.)

Reading: a record of routes that all share family, table and interfaces (a batch's parts, a
snapshot's route records, as written) is read by one regular-expression split rather than
json (`_uniform_record`); anything else, or anything it does not take exactly, is read as
JSON, with the same result.

Streaming: a reader may be given a RestoreStream, told after each record what it added to
the routes (`took`), so that a start can write the routes read so far to the kernel while
the rest of the file is read (see controller.RestoreStream). It is only told; what the file
holds is still the Loaded that parse returns.

Version 1 (`mfcd-state 1`, written by earlier releases) is the same without sequence numbers
or route counts; it still loads, with none of their checks, and is rewritten in version 2
before the first change.

Ownership: the daemon holds an exclusive flock on `<path>.lock` (which holds its pid) for
its lifetime, so a second mfcd on the same file refuses to start; the kernel drops the lock
when the process dies, even by SIGKILL.  Before each append, and again once the record is
on disk, the path is checked to still lead to the open journal as mfcd left it: if it was
deleted, renamed, replaced or changed, the caller must write a whole snapshot there
(SnapshotNeeded) rather than acknowledge a record in a file nobody will read.  No state
file, temporary file or lock is opened through a symbolic link, and the temporary file is
created afresh (O_EXCL), never reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter
from sys import intern
from typing import Any, Protocol

from mfcd import address_sharing, groups, validate
from mfcd.errors import MfcdError, StateError
from mfcd.groups import Join, JoinKey, Leave, SetMrdisc
from mfcd.model import (
    DEFAULT_TABLE,
    NO_SETTING,
    AddRoute,
    AddTemplate,
    Change,
    DelRoute,
    DelTemplate,
    Ports,
    Route,
    RouteKey,
    SetThreshold,
)
from mfcd.templates import TemplateKey
from mfcd.wildcards import pattern

VERSION = 2
HEADER = b"mfcd-state 2\n"
HEADER_V1 = b"mfcd-state 1\n"  # still read; never written
SNAPSHOT_CHUNK = 1000  # routes per snapshot line at most
RECORD_OPS = 20_000  # ops per journal record at most: a larger change takes several
# Never follow a symbolic link to a state file: one planted in a directory others can write
# would turn the daemon's (root's) writes onto a file of the planter's choosing.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC

Op = list[Any]
log = logging.getLogger("mfcd")


class SnapshotNeeded(StateError):
    """The journal cannot take an append: the caller must write a whole snapshot instead.

    The path was deleted, renamed, replaced or changed behind mfcd's back, or the file is in
    an older format: a record appended there would be acknowledged and then never read.
    """


def route_op(route: Route) -> Op:
    return change_op(AddRoute.of(route))


def change_op(change: Change) -> Op:
    """How the journal spells a change."""
    match change:
        case AddRoute((family, source, group, table), (iif, oifs)):
            if table == DEFAULT_TABLE[family]:
                return ["add", family, source, group, iif, list(oifs)]
            return ["add", family, source, group, iif, list(oifs), table]
        case DelRoute((family, source, group, table)):
            if table == DEFAULT_TABLE[family]:
                return ["del", family, source, group]
            return ["del", family, source, group, table]
        case SetThreshold(interface, threshold, None):
            return ["threshold", interface, threshold]
        case SetThreshold(interface, threshold, table):
            return ["threshold", interface, threshold, table]
        case Join(key, _):
            return ["join", *key]
        case Leave(key):
            return ["leave", *key]
        case SetMrdisc(interface, on):
            return ["mrdisc", interface, on]
        case AddTemplate((family, source, group, table, iif), (_, oifs)):
            return ["template", family, source, group, iif, list(oifs), table]
        case DelTemplate((family, source, group, table, iif)):
            return ["untemplate", family, source, group, iif, table]


class RestoreStream(Protocol):
    """Told by the reader of a version 2 file, after each record it took, what the record
    did to `loaded.routes`: `adds` routes added by its "add" ops (or a snapshot's routes)
    with `before` routes held before it; `adds` is -1 for a record that deleted a route or
    changed a threshold. The routes added are new ones exactly when `len(loaded.routes)` is
    `before + adds` (they are then the last `adds` keys of the dict, in order)."""

    def took(self, loaded: Loaded, before: int, adds: int) -> None: ...


class RunOfAdds(Protocol):
    """changes[start : start + len(keys)] of a change are AddRoute(key, ports) for each of
    `keys`, all of one family and table; `sources` and `groups` are their keys' addresses
    in order, or empty (controller.RouteRun). The journal writes them from these columns,
    without a Python step per route (see encode_changes)."""

    @property
    def start(self) -> int: ...
    @property
    def keys(self) -> Sequence[RouteKey]: ...
    @property
    def ports(self) -> Ports: ...
    @property
    def sources(self) -> Sequence[str]: ...
    @property
    def groups(self) -> Sequence[str]: ...


def encode_parts(
    changes: Sequence[Change], seq: int, runs: Sequence[RunOfAdds] = ()
) -> Iterator[bytes]:
    """The records of one change numbered from `seq`: one, or K of RECORD_OPS ops at most
    (the first saying K, each other its place), encoded one at a time. `runs`: see
    encode_changes."""
    if len(changes) <= RECORD_OPS:
        yield encode_changes(changes, seq, runs=runs)
        return
    parts = -(-len(changes) // RECORD_OPS)
    first = 0  # the first run that reaches into the part
    for i in range(parts):
        low, high = i * RECORD_OPS, min((i + 1) * RECORD_OPS, len(changes))
        place = f'"parts":{parts:d},' if i == 0 else f'"part":{i + 1:d},'
        while first < len(runs) and runs[first].start + len(runs[first].keys) <= low:
            first += 1
        head = f'{{"seq":{seq + i:d},{place}"ops":['
        yield _encode(changes, low, high, head, runs=runs, first=first)


def encode_changes(
    changes: Sequence[Change], seq: int, part: str = "", runs: Sequence[RunOfAdds] = ()
) -> bytes:
    """The journal record of one acknowledged change: `{"seq": seq, "ops": [...]}`, checksummed.

    The same bytes as encode_record({"seq": seq, "ops": [change_op(c) ...]}) (a test holds
    both to that), at a third of the cost for the 100,000 adds of a large batch: an add is
    formatted directly, with the JSON of its interfaces made once per combination.
    Addresses are validated and canonical (hex digits, dots, colons), so they need no
    escaping; interface names go through json.dumps all the same.

    `runs` (in order, apart, within `changes`; see RunOfAdds) are stretches of adds on one
    table and Ports: their text is laid out from their columns between strings made once
    per run and joined with the rest, in C (a third of the cost again; a test holds the
    bytes equal to those made without them).
    """
    head = f'{{"seq":{seq:d},{part}"ops":['
    return _encode(changes, 0, len(changes), head, runs=runs, first=0)


SMALL_RUN = 16  # routes of a run in a record below which they are written as other adds


def _encode(
    changes: Sequence[Change],
    low: int,
    high: int,
    head: str,
    *,
    runs: Sequence[RunOfAdds],
    first: int,
) -> bytes:
    """The record `head` + changes[low:high]'s ops + `]}`, checksummed; runs[first:] are
    those that may reach into it. (The changes of a run are not even looked at: touching
    each object costs more than writing its text.)"""
    ports_json: dict[Ports, str] = {}
    texts = [head]
    done = low  # changes written so far
    for run in islice(runs, first, None):
        if run.start >= high:
            break
        begin, end = max(run.start, done), min(run.start + len(run.keys), high)
        if end - begin < SMALL_RUN:
            continue  # (as other adds: the same text, fewer steps)
        if begin > done:
            texts += ",".join(_op_texts(changes[done:begin], ports_json)), ","
        _add_run_texts(texts, run, begin - run.start, end - run.start, ports_json)
        texts.append(",")
        done = end
    if done < high:
        texts.append(",".join(_op_texts(changes[done:high], ports_json)))
    elif done > low:
        texts.pop()  # (the "," after the last run)
    texts.append("]}")
    body = "".join(texts).encode()
    # (bytes' % formatting of a large body costs four times the join's copy)
    return b"".join((b"%08x " % zlib.crc32(body), body, b"\n"))


def _ports_text(ports: Ports, ports_json: dict[Ports, str]) -> str:
    """`"iif",["oif",...]`: a Ports' JSON inside an op, made once per combination."""
    text = ports_json.get(ports)
    if text is None:
        text = json.dumps([ports.iif, list(ports.oifs)], separators=(",", ":"))[1:-1]
        ports_json[ports] = text
    return text


def _op_texts(changes: Sequence[Change], ports_json: dict[Ports, str]) -> list[str]:
    """Each change's op as JSON, an add formatted directly."""
    texts = []
    for change in changes:
        if change.__class__ is AddRoute:
            (family, source, group, table), ports = change
            text = ports_json.get(ports)
            if text is None:
                text = _ports_text(ports, ports_json)
            if table == DEFAULT_TABLE[family]:
                texts.append(f'["add",{family},"{source}","{group}",{text}]')
            else:  # (a batch into another table: as fast)
                texts.append(f'["add",{family},"{source}","{group}",{text},{table:d}]')
        else:
            texts.append(json.dumps(change_op(change), separators=(",", ":")))
    return texts


def _add_run_texts(
    texts: list[str], run: RunOfAdds, begin: int, end: int, ports_json: dict[Ports, str]
) -> None:
    """Append the ops of a run's routes begin..end-1 as strings that make them once joined:
    `["add",F,"` and then, a route each, its source, `","`, its group and
    `",PORTS],["add",F,"` (the last: `",PORTS]`), laid out by slice assignments, in C."""
    keys = run.keys
    count = end - begin
    family, _, _, table = keys[begin]  # (one family and table)
    sources, group_column = run.sources, run.groups
    if len(sources) != len(keys) or len(group_column) != len(keys):  # (none: from the keys)
        sources = [*map(_SOURCE, islice(keys, begin, end))]
        group_column = [*map(_GROUP, islice(keys, begin, end))]
    elif count < len(keys):  # (a run that goes on in another record)
        sources, group_column = sources[begin:end], group_column[begin:end]
    ports_text = _ports_text(run.ports, ports_json)
    start = f'["add",{family},"'
    other = "" if table == DEFAULT_TABLE[family] else f",{table:d}"  # (another table)
    finish = f'",{ports_text}{other}]'
    at = len(texts)
    texts += repeat('","', 4 * count + 1)
    texts[at] = start
    texts[at + 1 :: 4] = sources
    texts[at + 3 :: 4] = group_column
    texts[at + 4 :: 4] = repeat(f"{finish},{start}", count)
    texts[-1] = finish


_SOURCE, _GROUP = itemgetter(1), itemgetter(2)


def encode_record(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


@dataclass(slots=True)
class Loaded:
    """What a state file holds, replayed."""

    # Each route's key and interfaces, as the model keeps them (one Ports per combination):
    # the key tuples read here are the ones the model goes on using.
    routes: dict[RouteKey, Ports] = field(default_factory=dict)
    thresholds: dict[str, int] = field(default_factory=dict)
    # (interface, table) -> the interface's threshold in that table only (Router's)
    table_thresholds: dict[tuple[str, int], int] = field(default_factory=dict)
    templates: dict[TemplateKey, Ports] = field(default_factory=dict)
    ops_since_snapshot: int = 0
    good_length: int = 0  # bytes up to the end of the last complete record
    torn_tail: bool = False
    # The last complete record has no newline yet: the next append writes it first.
    unterminated: bool = False
    version: int = VERSION
    seq: int = 0  # sequence number of the last complete record (version 2)
    joins: dict[JoinKey, None] = field(default_factory=dict)  # the API's group joins
    mrdisc: dict[str, None] = field(default_factory=dict)  # interfaces sending advertisements

    def route_list(self) -> list[Route]:
        return [Route(f, s, g, *ports, t) for (f, s, g, t), ports in self.routes.items()]


# Interfaces of the routes read so far: (iif, *oifs) as saved -> (iif, oifs) checked and
# interned. Most routes share a handful of combinations, so each is checked once and every
# route using it shares the same Ports.
_seen_interfaces: dict[tuple[Any, ...], Ports] = {}


def _check_interfaces(combo: tuple[Any, ...], iif: Any, oifs: list[Any]) -> Ports:
    """The first route with these interfaces: check them, remember them as `combo`."""
    if not oifs or iif in oifs or len(set(oifs)) != len(oifs):
        raise ValueError("malformed route")
    validate.interface(iif, "iif")
    validate.interfaces(oifs, "oifs", wild=True)  # a wildcard oif is saved as written
    checked = pattern(intern(iif), tuple([intern(n) for n in oifs]))
    if len(_seen_interfaces) < 65536:
        _seen_interfaces[combo] = checked
    return checked


def _add_routes(routes: dict[RouteKey, Ports], saved: list[Any], at: int = 0) -> None:
    """Add saved routes `[family, source, group, iif, [oifs]]` (with a table number after
    the oifs for a route of a table other than the default), each starting at index `at`
    of its list (1: "add" ops); the checksum vouches for the bytes, this for what the model
    assumes (the hot loop of every start)."""
    # (a list only: anything else is left to the loop, which says what is wrong)
    if saved.__class__ is list and len(saved) >= _UNIFORM_MIN and _add_uniform(routes, saved, at):
        return
    seen = _seen_interfaces
    defaults = DEFAULT_TABLE
    # (routes that share a source or a group share its string)
    share_source, share_group = address_sharing.source, address_sharing.group
    for whole in saved:
        route = whole[at:] if at else whole
        if len(route) == 5:  # a route of a default table: nearly all of them, unpacked fastest
            family, source, group, saved_iif, saved_oifs = route
            rest = None
        else:
            family, source, group, saved_iif, saved_oifs, *rest = route
        if (
            source.__class__ is not str
            or group.__class__ is not str
            or saved_oifs.__class__ is not list
            or family not in (4, 6)
        ):
            raise ValueError("malformed route")
        table: int = defaults[family] if rest is None else _table(rest)
        checked = seen.get((saved_iif, *saved_oifs))
        if checked is None:
            checked = _check_interfaces((saved_iif, *saved_oifs), saved_iif, saved_oifs)
        routes[family, share_source(source), share_group(group), table] = checked


# Saved routes read by _add_uniform when they are at least this many: below, its passes cost
# more than the loop.
_UNIFORM_MIN = 16


def _add_uniform(routes: dict[RouteKey, Ports], saved: list[Any], at: int) -> bool:
    """_add_routes of routes that all have the same family, table and interfaces (a batch's,
    a snapshot's: nearly every route of a start), in a few passes at C speed instead of a
    loop; False, having changed nothing, for any other list: the loop reads it (and says
    what is wrong, if anything). The result is the loop's, key for key (tests compare)."""
    try:
        first = saved[0]
        size = at + 5 if len(first) == at + 5 else at + 6
        if set(map(len, saved)) != {size}:
            return False
        # (the interfaces first: a snapshot's records of mixed routes fail here, cheaply)
        iifs = list(map(itemgetter(at + 3), saved))
        oifs = list(map(itemgetter(at + 4), saved))
        if len(set(iifs)) != 1 or set(map(type, oifs)) != {list} or len(set(map(tuple, oifs))) != 1:
            return False
        families = list(map(itemgetter(at), saved))
        sources = list(map(itemgetter(at + 1), saved))
        groups = list(map(itemgetter(at + 2), saved))
        if (
            set(map(type, families)) != {int}
            or set(families) not in ({4}, {6})
            or set(map(type, sources)) != {str}
            or set(map(type, groups)) != {str}
        ):
            return False
        family = families[0]
        if size == at + 6:
            tables = list(map(itemgetter(at + 5), saved))
            if set(map(type, tables)) != {int} or len(set(tables)) != 1:
                return False
            table = _table(tables[:1])
        else:
            table = DEFAULT_TABLE[family]
    except (TypeError, KeyError, IndexError):  # not lists, or unhashable names: the loop says
        return False
    _put_uniform(routes, (family, table, iifs[0], oifs[0]), sources, groups)
    return True


def _put_uniform(
    routes: dict[RouteKey, Ports],
    shared: tuple[int, int, Any, list[Any]],
    sources: Sequence[str],
    groups: Sequence[str],
) -> None:
    """Add routes of one family, table, iif and oifs (`shared`, checked once) from their
    sources and groups, in order, as the loop of _add_routes would (a later route of a key
    replaces an earlier one's value and keeps its place)."""
    family, table, saved_iif, saved_oifs = shared
    checked = _seen_interfaces.get((saved_iif, *saved_oifs))
    if checked is None:
        checked = _check_interfaces((saved_iif, *saved_oifs), saved_iif, saved_oifs)
    keys = zip(
        repeat(family),
        address_sharing.sources(sources),
        address_sharing.groups(groups),
        repeat(table),
    )
    routes.update(zip(keys, repeat(checked)))


# --- records of uniform routes, read without json (see _uniform_record) -------------------------

_S = r'"([^"\\\x00-\x1f]*)"'  # a JSON string without escapes (mfcd writes addresses so)
_NAME = r'"[^"\\\x00-\x1f]*"'
# A record mfcd writes for a batch's part or a snapshot's routes: its envelope, and its
# first route (family, interfaces as JSON text, table if not the default).
_ENVELOPE = re.compile(
    r'\{"seq":(0|[1-9][0-9]*),(?:"(parts?)":(0|[1-9][0-9]*),)?"(ops|routes)":\[(.*)\]\}',
    re.DOTALL,
)
_FIRST = re.compile(
    r'\[(?:"add",)?([46]),'
    + _S
    + ","
    + _S
    + ",("
    + _NAME
    + r",\[(?:"
    + _NAME
    + "(?:,"
    + _NAME
    + r")*)?\])(?:,([1-9][0-9]{0,9}))?\]"
)
_UNIFORM_BYTES = 4096  # smaller records: json (a single change's record, say)
_patterns: dict[tuple[str, str, str, str], re.Pattern[str]] = {}


class _Uniform(list[Any]):
    """The routes of a record whose routes all share family, table and interfaces, as
    _uniform_record read them: as many items as routes (len() is the count), the sources
    and groups as lists, the rest once."""

    sources: list[str]
    groups: list[str]
    family: int
    table: int | None  # None: the family's default (the routes say none)
    interfaces: list[Any]  # [iif, [oifs]] as json reads them


def _uniform_record(body: bytes) -> dict[str, Any] | None:
    """json.loads(body) for a record of many routes that share family, table and interfaces
    (nearly every record of a start: a batch's parts, a snapshot's route records), read by
    one regular expression split at C speed instead of a list per route; None for any other
    record (json reads it). The result holds the same values json's would (tests compare)."""
    if len(body) < _UNIFORM_BYTES:
        return None
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    envelope = _ENVELOPE.fullmatch(text)
    if envelope is None:
        return None
    seq, place, number, kind, items = envelope.groups()
    first = _FIRST.match(items)
    if first is None or (kind == "ops") != items.startswith('["add",'):
        return None
    family, _, _, interfaces, table = first.groups()
    key = (kind, family, interfaces, table or "")
    pattern = _patterns.get(key)
    if pattern is None:
        prefix = '\\["add",' if kind == "ops" else "\\["
        suffix = "," + table if table else ""
        pattern = re.compile(
            prefix + family + "," + _S + "," + _S + "," + re.escape(interfaces + suffix) + "\\]"
        )
        if len(_patterns) < 64:
            _patterns[key] = pattern
    parts = pattern.split(items)
    count = len(parts) // 3
    if parts[0] or parts[-1] or parts[3:-1:3].count(",") != count - 1:
        return None  # another route among them: json reads the record
    routes = _Uniform(repeat(None, count))
    routes.sources, routes.groups = parts[1::3], parts[2::3]
    routes.family, routes.table = int(family), None if table is None else int(table)
    routes.interfaces = json.loads("[" + interfaces + "]")
    record: dict[str, Any] = {"seq": int(seq)}
    if place is not None:
        record[place] = int(number)
    record[kind] = routes
    return record


def _add_saved(routes: dict[RouteKey, Ports], saved: list[Any], at: int) -> None:
    """_add_routes, also of the routes of a _Uniform record."""
    if saved.__class__ is not _Uniform:
        _add_routes(routes, saved, at)
        return
    assert isinstance(saved, _Uniform)
    family = saved.family
    table = DEFAULT_TABLE[family] if saved.table is None else _table([saved.table])
    saved_iif, saved_oifs = saved.interfaces
    _put_uniform(routes, (family, table, saved_iif, saved_oifs), saved.sources, saved.groups)


def _add_templates(templates: dict[TemplateKey, Ports], saved: list[Any]) -> None:
    """Add saved templates `[family, source, group, iif, [oifs], table]`, validated like a
    request (they are few)."""
    for family, source, group, iif, oifs, table in saved:
        change = validate.template_change(source, group, iif, oifs, table)
        if change.key[0] != family:
            raise ValueError("malformed template")
        templates[change.key] = change.ports


def _table(rest: list[Any]) -> int:
    """The table number ending a saved route or op (absent: the family's default)."""
    if len(rest) != 1 or rest[0].__class__ is not int or not 0 < rest[0] < 2**32:
        raise ValueError("malformed route")
    return int(rest[0])


def _apply(loaded: Loaded, op: Op) -> None:
    kind = op[0]
    if kind == "add":
        _add_routes(loaded.routes, [op[1:]])
    elif kind == "del":
        _, family, source, group, *rest = op
        if family not in (4, 6):
            raise ValueError("malformed route")
        table = _table(rest) if rest else DEFAULT_TABLE[family]
        loaded.routes.pop((family, source, group, table), None)
    elif kind == "threshold":
        if len(op) == 4:  # of one table; ttl 0 (model.NO_SETTING) removes that setting
            _, name, ttl, table = op
            key = (validate.interface(name, "interface"), _table([table]))
            if ttl == NO_SETTING and ttl.__class__ is int:
                loaded.table_thresholds.pop(key, None)
            else:
                loaded.table_thresholds[key] = validate.threshold(ttl)
            return
        _, name, ttl = op
        loaded.thresholds[validate.interface(name, "interface")] = validate.threshold(ttl)
    elif kind == "join":
        loaded.joins[_join_key(op[1:])] = None
    elif kind == "leave":
        loaded.joins.pop(_join_key(op[1:]), None)
    elif kind == "mrdisc":
        _, name, on = op
        if on.__class__ is not bool:
            raise ValueError("malformed mrdisc op")
        if on:
            loaded.mrdisc[validate.interface(name, "interface")] = None
        else:
            loaded.mrdisc.pop(name, None)
    elif kind == "template":
        _add_templates(loaded.templates, [op[1:]])
    elif kind == "untemplate":
        _, family, source, group, iif, table = op
        loaded.templates.pop(validate.template_key_of(source, group, iif, table), None)
    else:
        raise ValueError(f"unknown op {kind!r}")


def _join_key(saved: Any) -> JoinKey:
    """A saved join `[interface, group, source or "*"]`, checked."""
    if saved.__class__ is not list or len(saved) != 3:
        raise ValueError("malformed join")
    interface, group, source = saved
    keys = groups.join_keys(validate.interface_or_wildcard(interface, "interface"), group, source)
    if len(keys) != 1 or "/" in group or "/" in source:
        raise ValueError("malformed join")
    return keys[0]


_LEFT_UNTOUCHED = "the file was left untouched — repair or move it away, then start mfcd again"


def _corrupt(path: str, lineno: int, reason: object) -> StateError:
    return StateError(f"{path}: line {lineno} is corrupt ({reason}); {_LEFT_UNTOUCHED}")


def parse(data: bytes, path: str = "state file", stream: RestoreStream | None = None) -> Loaded:
    """Replay a journal held in memory; raise StateError on corruption. `stream` is told
    what each record added (version 2 only: a version 1 file is rewritten first)."""
    if not data:
        # mfcd never leaves its file empty (a new one starts with an empty snapshot, renamed
        # into place whole), so this is a file truncated or overwritten by something else.
        raise StateError(
            f"{path}: the state file is empty (0 bytes); mfcd never writes an empty one, so"
            f" something truncated it; {_LEFT_UNTOUCHED}"
        )
    if data.startswith(HEADER):
        loaded = Loaded()
    elif data.startswith(HEADER_V1):
        loaded = Loaded(version=1)
        stream = None
    else:
        raise StateError(
            f"{path}: not an mfcd state file (line 1 is neither {HEADER.decode()!r}"
            f" nor {HEADER_V1.decode()!r})"
        )
    if stream is not None and _THRESHOLD_OP in data:
        # A threshold changed after the snapshot rewrites every IPv4 entry on its interface:
        # the routes handed over before it would be written twice (see RestoreStream).
        stream = None
    # Nothing read here forms a reference cycle, so the cyclic collector has nothing to
    # find; left on, it would walk the growing set of routes again and again (40% of the
    # time at 100,000 routes). Its next pass still looks at the new objects once, unless the
    # caller keeps it paused until gc.freeze().
    collecting = gc.isenabled()
    gc.disable()
    try:
        # (a source used again only after many others is still shared: see address_sharing)
        with address_sharing.bulk():
            _replay(loaded, data, path, stream)
    finally:
        if collecting:
            gc.enable()
    return loaded


_THRESHOLD_OP = b'["threshold",'  # as mfcd writes the op (one written otherwise is still read)


def _next_seq(record: Any, seq: int) -> int:
    """The sequence number of `record`, which must follow `seq` (0: the first record)."""
    got = record.get("seq") if record.__class__ is dict else None
    if got.__class__ is not int or got < 1:
        raise ValueError("no sequence number")
    if seq and got != seq + 1:
        if got <= seq:
            raise ValueError(
                f"sequence number {got} after {seq}: a record repeated or copied from earlier"
            )
        missing = got - seq - 1
        raise ValueError(
            f"sequence number {got} after {seq}: {missing} record{'s' * (missing > 1)} missing"
        )
    return int(got)


_TORN_SEQ = re.compile(rb'[0-9a-f]{8} \{"seq":([0-9]+)[,}]')


@dataclass(slots=True)
class _Snapshot:
    """The snapshot being read: its line, and what it announced."""

    line: int = 0
    chunks: int = 0  # route records announced
    missing: int = 0  # of these, not read yet
    count: int = -1  # routes it says it holds (version 2)
    # (Not of the snapshot: of a change written as several records.)
    part: int = 0  # the part of it read last (0: none under way)
    parts: int = 0  # how many it has


def _replay(loaded: Loaded, data: bytes, path: str, stream: RestoreStream | None) -> None:
    pos = len(HEADER)  # the same length in both versions
    loaded.good_length = pos
    if pos == len(data):
        # A new file is written with its (empty) snapshot in one go, so this one lost it.
        raise _corrupt(path, 2, "the file ends after its header, without a snapshot")
    lineno = 1
    snap = _Snapshot()
    then = "the end of the file"
    while pos < len(data):
        end = data.find(b"\n", pos)
        unterminated = end < 0
        if unterminated and lineno >= 2 and not snap.missing:
            end = _record_end(data, pos)  # the last record, its newline still to come?
        if end < 0:
            _torn_line(loaded, data[pos:], snap, path, lineno + 1)
            then = "an incomplete last line"
            break
        lineno += 1
        try:
            record = _record(data[pos:end])
            if not _whole(record, data, end):
                # A change of several records cut short by a crash: never acknowledged.
                loaded.torn_tail = True
                then = "an incomplete last change"
                break
            before = len(loaded.routes)
            adds = _take(loaded, record, snap, lineno, path)
            if adds is None:
                then = f"line {lineno}"
                break
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, MfcdError) as e:
            if isinstance(e, StateError):
                raise  # already says which line
            reason = str(e)
            if snap.missing:  # say that the lines before this one are not enough
                part = snap.chunks - snap.missing + 1
                reason += f"; it is route record {part} of {snap.chunks} of the snapshot on line"
                reason += f" {snap.line}"
            raise _corrupt(path, lineno, reason) from None
        if stream is not None:  # (outside the try: what it raises is not the file's fault)
            stream.took(loaded, 0 if "snapshot" in record else before, adds)
        if unterminated:
            loaded.good_length, loaded.unterminated = end, True
            loaded.torn_tail = end < len(data)  # a write a crash interrupted followed it
            break
        pos = end + 1
        loaded.good_length = pos
    if snap.missing:
        # Snapshots are written whole and never appended to: the routes of the missing
        # records were acknowledged once, so this is corruption, never a torn write.
        reason = (
            f"incomplete snapshot: {snap.chunks} route records announced,"
            f" {snap.chunks - snap.missing} found before {then}"
        )
        raise _corrupt(path, snap.line, reason)


def _record(line: bytes) -> Any:
    """The record a line holds, its checksum checked."""
    crc, body = line.split(b" ", 1)
    if int(crc, 16) != zlib.crc32(body):
        raise ValueError("checksum mismatch")
    return _uniform_record(body) or json.loads(body)


def _whole(record: Any, data: bytes, end: int) -> bool:
    """False for the first record of a change of K records that fewer than K-1 complete
    records follow (the file ends inside the change)."""
    parts = record.get("parts") if record.__class__ is dict else None
    if parts is None:
        return True
    if parts.__class__ is not int or parts < 2:
        raise ValueError("malformed record (parts)")
    if data[end : end + 1] != b"\n":
        return False  # the last line itself
    for left in range(parts - 1, 0, -1):
        start, end = end + 1, data.find(b"\n", end + 1)
        if end < 0:
            # The last part may be the last line, complete but without its newline.
            return left == 1 and _record_end(data, start) >= 0
    return True


def _record_end(data: bytes, start: int) -> int:
    """Where the complete record ends that the last line, data[start:] (no newline), begins
    with, or -1 if it holds none: each `}` may end one, and the checksum tells which.

    A torn append may leave the record before it followed by the rest of the write without
    the newline it began with; the record, synced before that write began, still counts.
    """
    head = data[start : start + 9]
    if len(head) < 9 or head[8:] != b" " or not _HEX8.fullmatch(head[:8]):
        return -1
    want, crc, at = int(head[:8], 16), 0, start + 9
    view = memoryview(data)
    while (brace := data.find(b"}", at)) >= 0:
        crc = zlib.crc32(view[at : brace + 1], crc)  # running: each byte is read once
        if crc == want:
            return brace + 1
        at = brace + 1
    return -1


_HEX8 = re.compile(rb"[0-9a-f]{8}")


def _torn_line(loaded: Loaded, tail: bytes, snap: _Snapshot, path: str, lineno: int) -> None:
    """A last line without its newline: most likely a change cut short by a crash."""
    if lineno == 2:
        # The first record is a snapshot, written whole before a rename: it cannot be a torn
        # append. Cutting it off would silently drop every route.
        raise _corrupt(path, lineno, "the snapshot has no newline; it was cut short")
    if loaded.version >= 2 and not snap.missing:
        # Its number, if it was written in full, must be the next one.
        match = _TORN_SEQ.match(tail)
        if match and int(match[1]) != loaded.seq + 1:
            reason = f"an incomplete last line with sequence number {int(match[1])}"
            raise _corrupt(path, lineno, f"{reason} after {loaded.seq}")
    loaded.torn_tail = True


def _take(loaded: Loaded, record: Any, snap: _Snapshot, lineno: int, path: str) -> int | None:
    """Replay one record; None if it ends a snapshot too early (reported by the caller),
    else the routes its "add" ops (or a snapshot's routes) added, -1 if it deleted a route
    or changed a threshold (see RestoreStream)."""
    numbered = loaded.version >= 2
    if numbered:
        loaded.seq = _next_seq(record, loaded.seq)
    if snap.missing:
        if record.__class__ is not dict or "routes" not in record:
            return None
        _add_saved(loaded.routes, record["routes"], 0)
        snap.missing -= 1
        adds = len(record["routes"])
    elif "snapshot" in record:
        if numbered and lineno != 2:
            raise ValueError("a snapshot after the first record")
        snap.chunks = snap.missing = _read_snapshot(loaded, record["snapshot"], numbered)
        snap.count = record["snapshot"]["count"] if numbered else -1
        snap.line = lineno
        adds = len(loaded.routes)
    elif "routes" in record:
        raise ValueError("route record outside a snapshot")
    elif numbered and lineno == 2:
        raise ValueError("the first record is not a snapshot")
    else:
        _next_part(record, snap)
        ops = record["ops"]
        loaded.ops_since_snapshot += len(ops)
        if ops.__class__ is _Uniform:  # (see _uniform_record)
            _add_saved(loaded.routes, ops, 1)
            return len(ops)
        return _take_ops(loaded, ops)
    if not snap.missing and snap.count >= 0 and len(loaded.routes) != snap.count:
        raise _counted_wrong(path, snap.line, snap.count, len(loaded.routes))
    return adds


def _take_ops(loaded: Loaded, ops: list[Any]) -> int:
    """Replay a change's ops; the routes its adds added, or -1 (see _take)."""
    adds: list[Any] = []  # a run of adds, read by one _add_routes (a start's hot loop)
    added = 0
    clean = True
    for op in ops:
        if op[0] == "add":
            adds.append(op)
            continue
        if adds:
            _add_routes(loaded.routes, adds, 1)
            added += len(adds)
            adds = []
        _apply(loaded, op)
        if op[0] in ("del", "threshold"):
            clean = False
    _add_routes(loaded.routes, adds, 1)
    return added + len(adds) if clean else -1


def _next_part(record: dict[str, Any], snap: _Snapshot) -> None:
    """Check that a change record comes where it must: the parts of a change of several
    records in order, with nothing between them."""
    part = record.get("part")
    if "parts" in record:
        if snap.part:
            raise ValueError(f"a change begins after part {snap.part} of {snap.parts} of another")
        snap.part, snap.parts = 1, record["parts"]
    elif part is not None:
        if part != snap.part + 1 or not snap.part:
            raise ValueError(f"part {part} of a change where it does not belong")
        snap.part = part
    elif snap.part:
        raise ValueError(f"a change ends after part {snap.part} of {snap.parts}")
    if snap.part == snap.parts:
        snap.part = snap.parts = 0


def _counted_wrong(path: str, lineno: int, count: int, found: int) -> StateError:
    return _corrupt(path, lineno, f"the snapshot says it holds {count} routes, it has {found}")


def _read_snapshot(loaded: Loaded, snap: Any, numbered: bool) -> int:
    """Start over from a snapshot record; return how many route records must follow it."""
    if snap.__class__ is not dict:
        raise ValueError("malformed snapshot")
    if numbered:
        count = snap.get("count")
        if count.__class__ is not int or count < 0:
            raise ValueError("malformed snapshot (no route count)")
    loaded.routes.clear()
    loaded.templates.clear()
    _add_templates(loaded.templates, snap.get("templates", []))
    loaded.thresholds = {
        validate.interface(name, "interface"): validate.threshold(ttl)
        for name, ttl in snap.get("thresholds", {}).items()
    }
    loaded.ops_since_snapshot = 0
    loaded.joins = dict.fromkeys(_join_key(saved) for saved in snap.get("joins", ()))
    loaded.mrdisc = dict.fromkeys(
        validate.interface(n, "interface") for n in snap.get("mrdisc", ())
    )
    loaded.table_thresholds = {
        (validate.interface(name, "interface"), _table([table])): validate.threshold(ttl)
        for name, table, ttl in snap.get("table_thresholds", ())
    }
    if "chunks" not in snap:
        _add_routes(loaded.routes, snap["routes"])
        return 0
    chunks = snap["chunks"]
    if chunks.__class__ is not int or chunks < 1 or "routes" in snap:
        raise ValueError("malformed snapshot")
    return int(chunks)


def _snapshot_records(
    routes: Iterable[Route],
    thresholds: dict[str, int],
    seq: int,
    extra: dict[str, Any] | None = None,
    templates: dict[TemplateKey, Ports] | None = None,
) -> Iterator[bytes]:
    """The lines of a snapshot numbered from `seq`, encoded one at a time: SNAPSHOT_CHUNK
    routes at most each. Sized `routes` (a list, a dict's values) are read a chunk at a
    time, so a large snapshot never holds every route's record at once. `extra` holds the
    snapshot's "joins" and "mrdisc" (left out when empty, as files without them are).
    Templates (few) go in the first record, as
    `"templates": [[family, source, group, iif, [oifs], table]]` (absent when there are
    none: files of earlier versions have none)."""
    sized = routes if isinstance(routes, Sized) else list(routes)
    size = SNAPSHOT_CHUNK
    count = len(sized)
    more = {k: v for k, v in (extra or {}).items() if v}
    snap: dict[str, Any]
    if count <= size:
        snap = {"routes": _saved(list(sized)), "thresholds": thresholds, "count": count, **more}
        _save_templates(snap, templates)
        yield encode_record({"seq": seq, "snapshot": snap})
        return
    chunks = -(-count // size)
    snap = {"thresholds": thresholds, "count": count, "chunks": chunks, **more}
    _save_templates(snap, templates)
    yield encode_record({"seq": seq, "snapshot": snap})
    it = iter(sized)
    for n in range(1, chunks + 1):
        yield encode_record({"seq": seq + n, "routes": _saved(list(islice(it, size)))})


def _save_templates(snap: dict[str, Any], templates: dict[TemplateKey, Ports] | None) -> None:
    if templates:
        snap["templates"] = [
            [family, source, group, iif, list(ports.oifs), table]
            for (family, source, group, table, iif), ports in sorted(templates.items())
        ]


def _saved(routes: list[Route]) -> list[list[Any]]:
    return [
        [r.family, r.source, r.group, r.iif, list(r.oifs)]
        if r.table == DEFAULT_TABLE[r.family]
        else [r.family, r.source, r.group, r.iif, list(r.oifs), r.table]
        for r in routes
    ]


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "it is a symbolic link, and mfcd follows none there; name the file itself"
    return e.strerror or str(e)


def _write_failed(path: str, e: OSError, outcome: str = "the file is as it was") -> StateError:
    """A write of the state file failed: what happened, what it left, and what to do."""
    return StateError(
        f"{path}: cannot write the state file: {_why(e)}; {outcome}; {_remedy(path, e)}"
    )


def _remedy(path: str, e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        directory = os.path.dirname(os.path.abspath(path))
        return f"free space on its filesystem (df {directory}), then retry"
    if e.errno == errno.EROFS:
        return (
            "its filesystem is read-only: check the disk (dmesg), remount it read-write, then retry"
        )
    if e.errno == errno.EIO:
        return "check the disk (dmesg), then retry"
    return "check the file and its directory, then retry"


class StateFile:
    """The journal on disk; every write is durable when the call returns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = f"{path}.lock"
        self._fd: int | None = None
        self._identity = (0, 0)  # device and inode of the journal _fd writes to
        self._lock_fd: int | None = None
        self._length = 0  # bytes of complete records: where the next append starts
        self._unterminated = False  # the last record's newline is to be written with the next
        self._seq = 0  # sequence number of the last record written
        self._fresh = False  # load() found no file: the first append may start one
        self._compaction: Compaction | None = None  # a snapshot being written in a thread
        self._lock_lost: str | None = None  # another mfcd took the lock: why nothing is written
        self._directory_unsynced = False  # the last rename into place is not known durable
        self.ops_since_snapshot = 0
        # Told the seconds each change took to become durable (for /metrics).
        self.on_sync: Callable[[float], None] | None = None
        self.syncs = 0  # fdatasyncs that appends made: what group commit saves

    @property
    def needs_snapshot(self) -> bool:
        """No journal of the current format to append to yet (no file, or version 1)."""
        return self._fd is None

    def lock(self) -> None:
        """Make this process the file's only user until it exits (or close()).

        An flock on `<path>.lock`, which then holds our pid for the message a second mfcd
        gives; the kernel releases it when the process ends, however it ends. The lock
        file stays: removing it would let a second daemon lock a new one while the first
        holds the old.
        """
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as e:
            raise StateError(
                f"{self.lock_path}: cannot open the state file's lock: {_why(e)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StateError(
                f"{self.path} is in use by another mfcd (pid {holder}, which holds"
                f" {self.lock_path}); stop that one, or give this one its own state_file"
            ) from None
        except OSError as e:
            os.close(fd)
            raise StateError(f"{self.lock_path}: cannot lock the state file: {_why(e)}") from None
        self._lock_fd = fd

    def keep_lock(self) -> str | None:
        """Lock a new `<path>.lock` if ours was deleted or replaced while mfcd runs (a second
        mfcd could otherwise lock that one); say so, or None if nothing happened. Raises
        StateError if another mfcd got there first."""
        if self._lock_fd is None:
            return None
        held = os.fstat(self._lock_fd)
        try:
            stat = os.stat(self.lock_path, follow_symlinks=False)
            if (stat.st_dev, stat.st_ino) == (held.st_dev, held.st_ino):
                return None
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StateError(f"{self.lock_path}: cannot check the lock: {_why(e)}") from None
        old, self._lock_fd = self._lock_fd, None
        try:
            self.lock()
        except StateError:
            self._lock_fd = old
            raise
        os.close(old)
        return f"{self.lock_path} was deleted or replaced while mfcd was running; locked it again"

    def hold_lock(self) -> None:
        """Refuse to write unless this process still holds the state file's lock.

        If `<path>.lock` was deleted or replaced, it is locked again; if another mfcd locked
        it first (in that moment, or since), two daemons would overwrite each other's
        changes, so this one refuses every write from then on, and says so.
        """
        if self._lock_lost is not None:
            raise StateError(self._lock_lost)
        try:
            relocked = self.keep_lock()
        except StateError as e:
            self._lock_lost = f"{e}; this mfcd refuses changes until it is restarted"
            raise StateError(self._lock_lost) from None
        if relocked is not None:
            log.warning("%s", relocked)

    def load(self, stream: RestoreStream | None = None) -> Loaded:
        """Read the file (see parse, which `stream` is given to)."""
        try:
            # Read and write through the same descriptor: the file appended to is the one read.
            fd = os.open(self.path, os.O_RDWR | _NOFOLLOW)
        except FileNotFoundError:
            self._fresh = True
            return Loaded()
        except OSError as e:
            raise StateError(f"{self.path}: cannot read the state file: {_why(e)}") from None
        try:
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            loaded = parse(data, self.path, stream)
            if loaded.version == VERSION:
                self._keep_for_append(fd, loaded)
        except OSError as e:
            os.close(fd)
            raise StateError(f"{self.path}: cannot read the state file: {_why(e)}") from None
        except BaseException:
            os.close(fd)
            raise
        if loaded.version != VERSION:
            os.close(fd)  # never appended to: needs_snapshot, rewritten whole first
        self.ops_since_snapshot = loaded.ops_since_snapshot
        return loaded

    def _keep_for_append(self, fd: int, loaded: Loaded) -> None:
        if os.fstat(fd).st_size != loaded.good_length:
            os.ftruncate(fd, loaded.good_length)  # drop the torn, never-acknowledged tail
            os.fsync(fd)
        os.lseek(fd, loaded.good_length, os.SEEK_SET)
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        self._length, self._seq = loaded.good_length, loaded.seq
        self._unterminated = loaded.unterminated

    def replaced(self) -> str | None:
        """Why the path no longer leads to the journal as mfcd left it, or None if it does."""
        return None if self._fd is None else self._moved(self._length)

    def _moved(self, length: int) -> str | None:
        """Why the path does not lead to our journal, `length` bytes long, or None."""
        try:
            stat = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return f"{self.path} was deleted or renamed while mfcd was running"
        except OSError as e:
            raise StateError(f"{self.path}: cannot check the state file: {_why(e)}") from None
        if (stat.st_dev, stat.st_ino) != self._identity:
            return f"{self.path} was replaced by another file while mfcd was running"
        if stat.st_size != length:
            return (
                f"{self.path} was changed while mfcd was running"
                f" ({stat.st_size} bytes where mfcd left {length})"
            )
        return None

    def append(self, changes: Sequence[Change], runs: Sequence[RunOfAdds] = ()) -> None:
        """Durably record one change (one or many ops) before it is acknowledged. `runs`:
        stretches of it written from their columns (see encode_changes).

        Raises SnapshotNeeded when the path no longer leads to the journal: the caller must
        write a whole snapshot (this change included) instead.
        """
        self.hold_lock()
        if self._directory_unsynced:
            self._sync_directory()
        if self._fd is None:
            if not self._fresh:
                raise SnapshotNeeded(f"{self.path} is in an older format; rewriting it")
            self.write_snapshot([], {})
        reason = self.replaced()
        if reason is not None:
            raise SnapshotNeeded(reason)
        assert self._fd is not None
        length = records = 0
        began = time.monotonic()
        newline = b"\n" if self._unterminated else b""
        try:
            # One write and one sync a record: the newline of the record before, then this
            # one without its own. A crash can tear a multi-page write in any order, but a
            # line that has its newline was whole on disk before the newline was written:
            # a newline-terminated line with a bad checksum is real corruption, and a torn
            # write shows in the last line. (A change of several records: the same, record
            # after record, each synced before the next.)
            for record in encode_parts(changes, self._seq + 1, runs):
                _write_all(self._fd, newline + record[:-1])
                os.fdatasync(self._fd)
                self.syncs += 1
                length, records = length + len(newline) + len(record) - 1, records + 1
                newline = b"\n"
        except OSError as e:
            self._cut_back()
            raise _write_failed(self.path, e, "nothing was changed") from None
        if self.on_sync is not None:
            self.on_sync(time.monotonic() - began)
        # Once more now that it is on disk: the file may have gone while it was written.
        try:
            reason = self._moved(self._length + length)
        except StateError:
            self._cut_back()  # refused, so it must not replay
            raise
        if reason is not None:
            # The record went to a file no restart reads: a snapshot at the path must hold it.
            raise SnapshotNeeded(reason)
        self._length += length
        self._unterminated = True
        self._seq += records
        self.ops_since_snapshot += len(changes)
        if self._compaction is not None:
            self._compaction.tail.append(changes)

    def _end_line(self) -> None:
        """Write the last record's newline, which would otherwise go with the next record: at
        a stop, and before a snapshot takes the journal's place, so that a file mfcd leaves
        ends in a newline (a release before this rule drops a last line without one)."""
        if self._fd is None or not self._unterminated or self._lock_lost is not None:
            return
        with contextlib.suppress(OSError, StateError):
            if self.replaced() is None:  # never into a file that is no longer as mfcd left it
                _write_all(self._fd, b"\n")
                self._length += 1
                self._unterminated = False
                os.fdatasync(self._fd)

    def _cut_back(self) -> None:
        """Drop a record whose write failed: the change is refused, so it must not replay.

        If even this fails, a partial line is ignored at the next start like after a crash;
        a complete one would replay a refused change, which is why we try.  (The next
        append finds the file longer than mfcd left it and writes a snapshot instead.)
        """
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._length)
        with contextlib.suppress(OSError):
            os.lseek(self._fd, self._length, os.SEEK_SET)
            os.fdatasync(self._fd)

    def write_snapshot(
        self,
        routes: Iterable[Route],
        thresholds: dict[str, int],
        extra: dict[str, Any] | None = None,
        templates: dict[TemplateKey, Ports] | None = None,
    ) -> None:
        """Replace the journal with one snapshot: temporary file, fsync, rename, fsync dir."""
        self.hold_lock()
        self._stale_compaction()  # this snapshot has everything a compaction under way has
        self._end_line()
        tmp = f"{self.path}.tmp"
        fd, length, seq = _write_snapshot_file(
            self.path, tmp, routes, thresholds, self._seq, extra=extra, templates=templates
        )
        try:
            os.rename(tmp, self.path)  # replaces a link at the path itself, never its target
        except OSError as e:
            _discard(fd, tmp)
            raise _write_failed(self.path, e) from None
        self._switch_to(fd, length, seq, ops=0)

    def start_compaction(
        self,
        routes: dict[RouteKey, Ports] | RouteColumns,
        thresholds: dict[str, int],
        extra: dict[str, Any] | None = None,
        templates: dict[TemplateKey, Ports] | None = None,
    ) -> Compaction:
        """Begin a snapshot of `routes` (a copy the caller will not change: a dict, or the
        smaller `route_columns` of one) that a thread writes with `Compaction.write` while the
        journal keeps taking changes; `finish_compaction` then adds those changes to it and
        puts it in the journal's place."""
        job = Compaction(self.path, routes, thresholds, self._seq, extra)
        job.templates = dict(templates or {})
        self._compaction = job
        return job

    def finish_compaction(self, job: Compaction) -> bool:
        """Append the changes recorded since the compaction began (renumbered after the
        snapshot), sync, and rename it over the journal. False if it was overtaken (a
        snapshot was written meanwhile, or it was cancelled): nothing changes then."""
        if self._compaction is job:
            self._compaction = None
        if job.error is not None or job.stale:
            job.discard()
            if job.error is not None and not job.stale:
                raise job.error
            return False
        try:
            self.hold_lock()
        except StateError:
            job.discard()
            raise
        fd, length, seq, ops = job.fd, job.length, job.seq, 0
        self._end_line()
        try:
            for changes in job.tail:
                for data in encode_parts(changes, seq + 1):
                    seq += 1
                    _write_all(fd, data)
                    length += len(data)
                ops += len(changes)
            os.fdatasync(fd)
            os.rename(job.tmp, self.path)
        except OSError as e:
            job.discard()
            raise _write_failed(self.path, e) from None
        job.fd = -1  # the journal's now
        self._switch_to(fd, length, seq, ops)
        return True

    def _switch_to(self, fd: int, length: int, seq: int, ops: int) -> None:
        """Make the snapshot just renamed to the path the journal appended to from now on."""
        # From the rename on, the new file is the journal: appending to the old, unlinked one
        # would lose changes. A failed directory fsync risks the rename itself at a crash:
        # the old journal holds the same routes now, but not the changes appended next, so
        # the next append syncs the directory first or is refused.
        if self._fd is not None:
            os.close(self._fd)
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        self._directory_unsynced = True
        with contextlib.suppress(StateError):
            self._sync_directory()
        self._length, self._unterminated = length, False
        self._seq = seq
        self.ops_since_snapshot = ops

    def _sync_directory(self) -> None:
        try:
            _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        except OSError as e:
            raise StateError(
                f"{self.path}: cannot make the state file's directory durable: {_why(e)}"
            ) from None
        self._directory_unsynced = False

    def _stale_compaction(self) -> None:
        if self._compaction is not None:
            self._compaction.stale = True
            self._compaction = None

    def close(self) -> None:
        if self._compaction is not None:
            self._compaction.cancel()
        self._end_line()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


RouteColumns = tuple[list[RouteKey], list[Ports]]  # a table's keys, and their ports in order


def route_columns(routes: dict[RouteKey, Ports]) -> RouteColumns:
    """A copy of `routes` as two lists: what a compaction writes from, 16 bytes a route where
    a copy of the dict takes about 42 (1,000,000 routes: 16 MiB, not 41, held for as long as
    the thread writes, seconds on a busy machine). Each list is built in one C call."""
    return list(routes), list(routes.values())


class Compaction:
    """A snapshot a thread writes while the event loop keeps serving (see start_compaction).

    The thread only writes its own temporary file from a copy of the routes; everything the
    journal and the loop share is touched in finish_compaction, on the loop.
    """

    def __init__(
        self,
        path: str,
        routes: dict[RouteKey, Ports] | RouteColumns,
        thresholds: dict[str, int],
        seq: int,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.extra = extra
        self.tmp = f"{path}.compact"  # not .tmp: a snapshot written back meanwhile uses that
        self.routes: dict[RouteKey, Ports] | RouteColumns = routes
        self.count = len(RouteView(routes))
        self.thresholds = thresholds
        self.fd = -1
        self.length = 0
        self.seq = seq  # of the snapshot's last record once written
        self.tail: list[Sequence[Change]] = []  # changes journaled meanwhile, in order
        self.templates: dict[TemplateKey, Ports] = {}
        self.stale = False  # overtaken by a snapshot written meanwhile: never renamed
        self.error: StateError | None = None
        self._cancelled = False

    def write(self) -> None:
        """The thread's part: the snapshot to the temporary file, synced; errors kept for
        finish_compaction (a thread must not raise them where nobody looks)."""
        routes = RouteView(self.routes)
        try:
            self.fd, self.length, self.seq = _write_snapshot_file(
                self.path,
                self.tmp,
                routes,
                self.thresholds,
                self.seq,
                extra=self.extra,
                cancelled=lambda: self._cancelled,
                templates=self.templates,
            )
        except StateError as e:
            self.error = e
        except Exception as e:  # (MemoryError, a bug): still the loop's to conclude, or
            # the journal would keep handing this job its changes until the next compaction
            self.error = StateError(f"writing the snapshot {self.tmp} failed: {e!r}")
        self._release()

    def _release(self) -> None:
        """Its memory goes back now, not when the job is dropped (on the event loop), and a
        piece at a time: freeing 1,000,000 routes in one call holds the GIL, and with it
        every client, for 20-40 ms."""
        copy, self.routes = self.routes, {}
        if isinstance(copy, dict):
            while copy:
                for _ in range(min(len(copy), 10_000)):
                    copy.popitem()
            return
        for column in copy:
            while column:
                del column[-10_000:]

    def cancel(self) -> None:
        """Stop the thread at its next record (mfcd is stopping); the file is removed."""
        self._cancelled = True
        self.stale = True

    def discard(self) -> None:
        if self.fd >= 0:
            _discard(self.fd, self.tmp)
            self.fd = -1


class RouteView(Sized, Iterable[Route]):
    """The routes of a key -> Ports dict (or its `route_columns`) as Routes, built as they
    are read: what a snapshot is written from, a chunk at a time, without a list of every
    route."""

    def __init__(self, routes: dict[RouteKey, Ports] | RouteColumns) -> None:
        self.routes = routes

    def __len__(self) -> int:
        routes = self.routes
        return len(routes) if isinstance(routes, dict) else len(routes[0])

    def __iter__(self) -> Iterator[Route]:
        routes = self.routes
        pairs = routes.items() if isinstance(routes, dict) else zip(*routes, strict=True)
        for (family, source, group, table), (iif, oifs) in pairs:
            yield Route(family, source, group, iif, oifs, table)


class _Cancelled(Exception):
    pass


def _write_snapshot_file(
    path: str,
    tmp: str,
    routes: Iterable[Route],
    thresholds: dict[str, int],
    seq: int,
    *,
    extra: dict[str, Any] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    templates: dict[TemplateKey, Ports] | None = None,
) -> tuple[int, int, int]:
    """Write a snapshot numbered after `seq` to a new file `tmp` and fsync it: its open
    descriptor, length and last sequence number. The caller renames it into place."""
    fd = -1
    length = len(HEADER)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(tmp)), exist_ok=True)
        fd = _create(tmp)
        _write_all(fd, HEADER)
        for record in _snapshot_records(routes, thresholds, seq + 1, extra, templates):
            if cancelled():
                raise _Cancelled
            _write_all(fd, record)
            length += len(record)
            seq += 1
        os.fsync(fd)
    except BaseException as e:
        if fd >= 0:
            _discard(fd, tmp)
        if isinstance(e, OSError):
            raise _write_failed(path, e) from None
        if isinstance(e, _Cancelled):
            raise StateError(f"{path}: cannot write the state file: cancelled") from None
        raise
    return fd, length, seq


def _discard(fd: int, tmp: str) -> None:
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _create(tmp: str) -> int:
    """A new, empty temporary file at `tmp`, whatever was there.

    A leftover (a crash during a compaction) is removed first: unlink removes a symbolic
    link, not its target. O_EXCL then refuses anything planted in between instead of
    opening it; the compaction fails and is tried again later.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o640)


def _read_pid(fd: int) -> str:
    """The pid a lock file holds, as text, or "unknown" (it may not be written yet)."""
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode("ascii").strip()))
    return "unknown"


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable."""
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
