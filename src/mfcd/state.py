"""The state file: an append-only, checksummed journal of route changes, compacted into snapshots.

Format (text, one record per line):

    mfcd-state 1
    <crc32 as 8 hex digits> <JSON record>
    ...

The file starts with a snapshot.  Up to SNAPSHOT_CHUNK routes, it is one record,
`{"snapshot": {"routes": [...], "thresholds": {...}}}`, a route being
`[family, source, group, iif, [oifs...]]`.  A larger snapshot is a record without
routes, `{"snapshot": {"thresholds": {...}, "chunks": K}}`, followed by exactly K
records `{"routes": [...]}` of at most SNAPSHOT_CHUNK routes each: a single line of
100,000 routes would make the reader build all their lists at once, and the memory
they took, scattered between the routes that stay, would never go back to the system.
A `{"routes": ...}` record anywhere else, or fewer than K of them, is corruption.

Each later record is one acknowledged change, `{"ops": [...]}`, where an op is
`["add", family, source, group, iif, [oifs...]]`, `["del", family, source, group]` or
`["threshold", interface, ttl]`.  A change is appended and fdatasync'ed before the
client is told it succeeded, so its cost does not grow with the number of routes.
When the journal has grown to about as many ops as there are routes, the daemon
writes a fresh snapshot to a temporary file, fsyncs it, renames it over the
journal and fsyncs the directory: compaction costs O(routes) once per O(routes)
changes, and a snapshot, however many lines it takes, is on disk whole or not at all.

A record is written and synced before its newline is, so a last line without its
newline is a write the daemon never acknowledged (it died mid-write); it is ignored
and cut off before the next append.  Anything else that
does not parse or whose checksum does not match is corruption: loading fails with
the file name, line and reason, and the file is never rewritten.  That includes a
snapshot that ends early, even in a line without its newline: snapshots are never
appended to, so its missing routes were acknowledged once and must not be dropped.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from mfcd import validate
from mfcd.errors import MfcdError, StateError
from mfcd.model import AddRoute, Change, DelRoute, Ports, Route, RouteKey, SetThreshold

HEADER = b"mfcd-state 1\n"
SNAPSHOT_CHUNK = 1000  # routes per snapshot line at most

Op = list[Any]


def route_op(route: Route) -> Op:
    return change_op(AddRoute.of(route))


def change_op(change: Change) -> Op:
    """How the journal spells a change."""
    match change:
        case AddRoute((family, source, group), (iif, oifs)):
            return ["add", family, source, group, iif, list(oifs)]
        case DelRoute((family, source, group)):
            return ["del", family, source, group]
        case SetThreshold(interface, threshold):
            return ["threshold", interface, threshold]


def encode_changes(changes: Sequence[Change]) -> bytes:
    """The journal record of one acknowledged change: `{"ops": [...]}`, checksummed.

    The same bytes as encode_record({"ops": [change_op(c) ...]}) (a test holds both to
    that), at a third of the cost for the 100,000 adds of a large batch: an add is
    formatted directly, with the JSON of its interfaces made once per combination.
    Addresses are validated and canonical (hex digits, dots, colons), so they need no
    escaping; interface names go through json.dumps all the same.
    """
    ports_json: dict[Ports, str] = {}
    parts = []
    for change in changes:
        if change.__class__ is AddRoute:
            (family, source, group), ports = change
            text = ports_json.get(ports)
            if text is None:
                text = json.dumps([ports.iif, list(ports.oifs)], separators=(",", ":"))[1:-1]
                ports_json[ports] = text
            parts.append(f'["add",{family},"{source}","{group}",{text}]')
        else:
            parts.append(json.dumps(change_op(change), separators=(",", ":")))
    body = ('{"ops":[' + ",".join(parts) + "]}").encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


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
    ops_since_snapshot: int = 0
    good_length: int = 0  # bytes up to the end of the last complete record
    torn_tail: bool = False

    def route_list(self) -> list[Route]:
        return [Route(*key, *ports) for key, ports in self.routes.items()]


# Interfaces of the routes read so far: (iif, *oifs) as saved -> (iif, oifs) checked and
# interned. Most routes share a handful of combinations, so each is checked once and every
# route using it shares the same Ports.
_seen_interfaces: dict[tuple[Any, ...], Ports] = {}


def _check_interfaces(combo: tuple[Any, ...], iif: Any, oifs: list[Any]) -> Ports:
    """The first route with these interfaces: check them, remember them as `combo`."""
    if not oifs or iif in oifs or len(set(oifs)) != len(oifs):
        raise ValueError("malformed route")
    validate.interface(iif, "iif")
    validate.interfaces(oifs, "oifs")
    checked = Ports(intern(iif), tuple([intern(n) for n in oifs]))
    if len(_seen_interfaces) < 65536:
        _seen_interfaces[combo] = checked
    return checked


def _add_routes(routes: dict[RouteKey, Ports], saved: list[Any]) -> None:
    """Add saved routes `[family, source, group, iif, [oifs]]`; the checksum vouches for the
    bytes, this for what the model assumes (the hot loop of every start)."""
    seen = _seen_interfaces
    for family, source, group, saved_iif, saved_oifs in saved:
        if (
            source.__class__ is not str
            or group.__class__ is not str
            or saved_oifs.__class__ is not list
            or family not in (4, 6)
        ):
            raise ValueError("malformed route")
        checked = seen.get((saved_iif, *saved_oifs))
        if checked is None:
            checked = _check_interfaces((saved_iif, *saved_oifs), saved_iif, saved_oifs)
        routes[family, source, group] = checked


def _apply(loaded: Loaded, op: Op) -> None:
    kind = op[0]
    if kind == "add":
        _add_routes(loaded.routes, [op[1:]])
    elif kind == "del":
        _, family, source, group = op
        loaded.routes.pop((family, source, group), None)
    elif kind == "threshold":
        _, name, ttl = op
        loaded.thresholds[validate.interface(name, "interface")] = validate.threshold(ttl)
    else:
        raise ValueError(f"unknown op {kind!r}")


def _corrupt(path: str, lineno: int, reason: object) -> StateError:
    return StateError(
        f"{path}: line {lineno} is corrupt ({reason}); the file was left untouched —"
        " repair or move it away, then start mfcd again"
    )


def parse(data: bytes, path: str = "state file") -> Loaded:
    """Replay a journal held in memory; raise StateError on corruption."""
    loaded = Loaded()
    if not data:
        return loaded
    if not data.startswith(HEADER):
        raise StateError(f"{path}: not an mfcd state file (line 1 is not {HEADER.decode()!r})")
    # Nothing read here forms a reference cycle, so the cyclic collector has nothing to
    # find; left on, it would walk the growing set of routes again and again (40% of the
    # time at 100,000 routes). Its next pass still looks at the new objects once, unless the
    # caller keeps it paused until gc.freeze().
    collecting = gc.isenabled()
    gc.disable()
    try:
        _replay(loaded, data, path)
    finally:
        if collecting:
            gc.enable()
    return loaded


def _replay(loaded: Loaded, data: bytes, path: str) -> None:
    routes = loaded.routes
    pos = len(HEADER)
    loaded.good_length = pos
    lineno = 1
    chunks = missing = 0  # route records the last snapshot announced, and of these not read
    snapshot_line = 0
    then = "the end of the file"
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            if pos == len(HEADER):
                # The first record is a snapshot, written whole before a rename: it cannot be
                # a torn append. Cutting it off would silently drop every route.
                raise _corrupt(path, lineno + 1, "the snapshot has no newline; it was cut short")
            loaded.torn_tail = True  # an unacknowledged write cut short by a crash
            then = "an incomplete last line"
            break
        lineno += 1
        try:
            crc, body = data[pos:end].split(b" ", 1)
            if int(crc, 16) != zlib.crc32(body):
                raise ValueError("checksum mismatch")
            record = json.loads(body)
            if missing:
                if record.__class__ is not dict or "routes" not in record:
                    then = f"line {lineno}"
                    break
                _add_routes(routes, record["routes"])
                missing -= 1
            elif "snapshot" in record:
                chunks = missing = _read_snapshot(loaded, record["snapshot"])
                snapshot_line = lineno
            elif "routes" in record:
                raise ValueError("route record outside a snapshot")
            else:
                for op in record["ops"]:
                    _apply(loaded, op)
                loaded.ops_since_snapshot += len(record["ops"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, MfcdError) as e:
            reason = str(e)
            if missing:  # say that the lines before this one are not enough
                part = chunks - missing + 1
                reason += f"; it is route record {part} of {chunks} of the snapshot on line"
                reason += f" {snapshot_line}"
            raise _corrupt(path, lineno, reason) from None
        pos = end + 1
        loaded.good_length = pos
    if missing:
        # Snapshots are written whole and never appended to: the routes of the missing
        # records were acknowledged once, so this is corruption, never a torn write.
        reason = (
            f"incomplete snapshot: {chunks} route records announced,"
            f" {chunks - missing} found before {then}"
        )
        raise _corrupt(path, snapshot_line, reason)


def _read_snapshot(loaded: Loaded, snap: Any) -> int:
    """Start over from a snapshot record; return how many route records must follow it."""
    if snap.__class__ is not dict:
        raise ValueError("malformed snapshot")
    loaded.routes.clear()
    loaded.thresholds = {
        validate.interface(name, "interface"): validate.threshold(ttl)
        for name, ttl in snap.get("thresholds", {}).items()
    }
    loaded.ops_since_snapshot = 0
    if "chunks" not in snap:
        _add_routes(loaded.routes, snap["routes"])
        return 0
    chunks = snap["chunks"]
    if chunks.__class__ is not int or chunks < 1 or "routes" in snap:
        raise ValueError("malformed snapshot")
    return int(chunks)


def _snapshot_records(routes: Iterable[Route], thresholds: dict[str, int]) -> Iterator[bytes]:
    """The lines of a snapshot, encoded one at a time: SNAPSHOT_CHUNK routes at most each."""
    saved = routes if isinstance(routes, list) else list(routes)
    size = SNAPSHOT_CHUNK
    if len(saved) <= size:
        yield encode_record({"snapshot": {"routes": _saved(saved), "thresholds": thresholds}})
        return
    chunks = -(-len(saved) // size)
    yield encode_record({"snapshot": {"thresholds": thresholds, "chunks": chunks}})
    for start in range(0, len(saved), size):
        yield encode_record({"routes": _saved(saved[start : start + size])})


def _saved(routes: list[Route]) -> list[list[Any]]:
    return [[r.family, r.source, r.group, r.iif, list(r.oifs)] for r in routes]


class StateFile:
    """The journal on disk; every write is durable when the call returns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._length = 0  # bytes of complete records: where the next append starts
        self.ops_since_snapshot = 0

    def load(self) -> Loaded:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return Loaded()
        except OSError as e:
            raise StateError(f"{self.path}: cannot read the state file: {e.strerror}") from None
        loaded = parse(data, self.path)
        self.ops_since_snapshot = loaded.ops_since_snapshot
        if loaded.good_length or data:
            self._open_for_append(loaded.good_length)
        return loaded

    def _open_for_append(self, good_length: int) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
            if size != good_length:
                os.ftruncate(fd, good_length)  # drop the torn, never-acknowledged tail
                os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            raise StateError(f"{self.path}: cannot open the state file: {e.strerror}") from None
        self._fd = fd
        self._length = good_length

    def append(self, changes: Sequence[Change]) -> None:
        """Durably record one change (one or many ops) before it is acknowledged."""
        if self._fd is None:
            self.write_snapshot([], {})
        assert self._fd is not None
        data = encode_changes(changes)
        try:
            # The record first, then its newline: a crash can tear a multi-page write in any
            # order, but a line that has its newline was whole on disk before the newline was
            # written. So a newline-terminated line with a bad checksum is real corruption,
            # and a torn write always shows as a last line without one.
            _write_all(self._fd, data[:-1])
            os.fdatasync(self._fd)
            _write_all(self._fd, b"\n")
            os.fdatasync(self._fd)
        except OSError as e:
            self._cut_back()
            raise StateError(f"{self.path}: cannot write the state file: {e.strerror}") from None
        self._length += len(data)
        self.ops_since_snapshot += len(changes)

    def _cut_back(self) -> None:
        """Drop a record whose write failed: the change is refused, so it must not replay.

        If even this fails, a partial line is ignored at the next start like after a crash;
        a complete one would replay a refused change, which is why we try.
        """
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._length)
        # Even if the truncation failed, the next record overwrites the refused one from here.
        with contextlib.suppress(OSError):
            os.lseek(self._fd, self._length, os.SEEK_SET)
            os.fdatasync(self._fd)

    def write_snapshot(self, routes: Iterable[Route], thresholds: dict[str, int]) -> None:
        """Replace the journal with one snapshot: temporary file, fsync, rename, fsync dir."""
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = f"{self.path}.tmp"
        fd = -1
        length = len(HEADER)
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            _write_all(fd, HEADER)
            for record in _snapshot_records(routes, thresholds):
                _write_all(fd, record)
                length += len(record)
            os.fsync(fd)
            os.rename(tmp, self.path)
        except BaseException as e:
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if isinstance(e, OSError):
                raise StateError(
                    f"{self.path}: cannot write the state file: {e.strerror}"
                ) from None
            raise
        # From the rename on, the new file is the journal: appending to the old, unlinked one
        # would lose changes. A failed directory fsync only risks the rename itself at a crash,
        # and the old journal holds the same routes.
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        with contextlib.suppress(OSError):
            _fsync_directory(directory)
        self._length = length
        self.ops_since_snapshot = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
