"""Tests for mfcd.state: the checksummed, numbered journal, torn tails, corruption, snapshots,
version 1 files, the lock, and a state file deleted, replaced or planted behind mfcd's back."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import state, validate
from mfcd.errors import StateError
from mfcd.model import AddRoute, Change, DelRoute, Route, RouteKey, SetThreshold
from mfcd.state import (
    HEADER,
    HEADER_V1,
    SNAPSHOT_CHUNK,
    Loaded,
    SnapshotNeeded,
    StateFile,
    change_op,
    encode_changes,
    encode_record,
    route_op,
)


def routes_of(loaded: Loaded) -> dict[RouteKey, Route]:
    return {route.key: route for route in loaded.route_list()}


R1 = Route(4, "10.0.0.1", "239.1.1.1", "eth0", ("eth1", "eth2"), 253)
R2 = Route(6, "2001:db8::1", "ff0e::1", "eth1", ("eth0",), 254)


def line(body: bytes, crc: int | None = None) -> bytes:
    """A journal line with a correct checksum unless `crc` is given."""
    return b"%08x %s\n" % (zlib.crc32(body) if crc is None else crc, body)


def saved(routes: list[Route]) -> list[list[Any]]:
    return [[r.family, r.source, r.group, r.iif, list(r.oifs)] for r in routes]


def rec(seq: int, **record: Any) -> bytes:
    """A version 2 record: its sequence number first, as mfcd writes it."""
    return encode_record({"seq": seq, **record})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.journal"


@pytest.fixture
def journal(path: Path) -> bytes:
    """A journal on disk: a snapshot with R1 (seq 1), then one change adding R2 and a
    threshold (seq 2)."""
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([R1], {"eth1": 3})
    sf.append([AddRoute.of(R2), SetThreshold("eth0", 7)])
    sf.close()
    return path.read_bytes()


def reload(path: Path) -> tuple[StateFile, state.Loaded]:
    sf = StateFile(str(path))
    return sf, sf.load()


def refused(path: Path, data: bytes) -> str:
    """Why loading `data` fails; the file must be left exactly as it was."""
    path.write_bytes(data)
    with pytest.raises(StateError) as info:
        reload(path)
    assert path.read_bytes() == data
    return str(info.value)


def test_missing_file_loads_empty_and_first_append_creates_it(path: Path) -> None:
    sf, loaded = reload(path)
    assert (loaded.routes, loaded.thresholds) == ({}, {})
    assert not path.exists()
    sf.append([AddRoute.of(R1)])
    sf.close()
    _, loaded = reload(path)
    assert routes_of(loaded) == {R1.key: R1}
    assert path.read_bytes().startswith(HEADER)


def test_round_trip(path: Path, journal: bytes) -> None:
    sf, loaded = reload(path)
    assert routes_of(loaded) == {R1.key: R1, R2.key: R2}
    assert loaded.thresholds == {"eth1": 3, "eth0": 7}
    assert loaded.ops_since_snapshot == 2
    assert sf.ops_since_snapshot == 2
    sf.append([DelRoute(R1.key)])
    sf.close()
    _, loaded = reload(path)
    assert routes_of(loaded) == {R2.key: R2}
    assert loaded.ops_since_snapshot == 3


def test_thresholds_of_one_table_are_journaled_and_kept_by_a_snapshot(path: Path) -> None:
    sf = StateFile(str(path))
    sf.load()
    sf.append([SetThreshold("eth0", 7, 100), SetThreshold("eth1", 4, 100)])
    sf.append([SetThreshold("eth1", 0, 100), SetThreshold("eth0", 3)])  # (0: removed)
    sf.close()
    assert rec(3, ops=[["threshold", "eth1", 0, 100], ["threshold", "eth0", 3]]) in (
        path.read_bytes() + b"\n"
    )
    sf, loaded = reload(path)
    assert (loaded.table_thresholds, loaded.thresholds) == ({("eth0", 100): 7}, {"eth0": 3})
    sf.write_snapshot([], {}, {"table_thresholds": [["eth0", 100, 7]]})
    sf.close()
    assert b'"table_thresholds":[["eth0",100,7]]' in path.read_bytes()
    assert reload(path)[1].table_thresholds == {("eth0", 100): 7}


def test_a_file_written_before_tables_had_thresholds_loads_unchanged(path: Path) -> None:
    # The lines of an mfcd before per-table thresholds: a snapshot without
    # "table_thresholds", a threshold op of three fields (every table).
    path.write_bytes(
        HEADER
        + line(b'{"seq":1,"snapshot":{"routes":[],"thresholds":{"eth1":3},"count":0}}')
        + line(b'{"seq":2,"ops":[["threshold","eth0",7]]}')
    )
    _, loaded = reload(path)
    assert (loaded.thresholds, loaded.table_thresholds) == ({"eth1": 3, "eth0": 7}, {})


@pytest.mark.parametrize(
    "op",
    [["threshold", "eth0", 7, 0], ["threshold", "eth0", 256, 100], ["threshold", "eth0", 7, "x"]],
)
def test_a_bad_threshold_of_one_table_is_corruption(path: Path, op: list[Any]) -> None:
    data = HEADER + rec(1, snapshot={"routes": [], "thresholds": {}, "count": 0}) + rec(2, ops=[op])
    assert "line 3 is corrupt" in refused(path, data)


def test_snapshot_replaces_earlier_ops(path: Path, journal: bytes) -> None:
    sf, _ = reload(path)
    sf.write_snapshot([R2], {})
    assert sf.ops_since_snapshot == 0
    sf.append([AddRoute.of(R1)])
    sf.close()
    data = path.read_bytes()
    assert data.count(b"\n") == 3  # header, snapshot, one change
    _, loaded = reload(path)
    assert routes_of(loaded) == {R2.key: R2, R1.key: R1}
    assert (loaded.thresholds, loaded.ops_since_snapshot) == ({}, 1)


def test_write_snapshot_leaves_no_temporary_file(path: Path, journal: bytes) -> None:
    sf, _ = reload(path)
    sf.write_snapshot([R1, R2], {"eth0": 2})
    sf.close()
    assert sorted(os.listdir(path.parent)) == [path.name]
    # Numbered on from the journal it replaces: a line copied from that one does not fit.
    assert path.read_bytes() == HEADER + rec(
        3,
        snapshot={
            "routes": [
                [4, "10.0.0.1", "239.1.1.1", "eth0", ["eth1", "eth2"]],
                [6, "2001:db8::1", "ff0e::1", "eth1", ["eth0"]],
            ],
            "thresholds": {"eth0": 2},
            "count": 2,
        },
    )


def test_a_failed_snapshot_keeps_the_old_journal_whole(
    path: Path, journal: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    sf, _ = reload(path)
    fds = len(os.listdir("/proc/self/fd"))

    def refuse(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(StateError, match="cannot write the state file: Input/output error"):
        sf.write_snapshot([R2], {})
    monkeypatch.undo()
    assert path.read_bytes() == journal
    # Neither the temporary file nor its descriptor may be left behind.
    leaked = len(os.listdir("/proc/self/fd")) - fds
    assert (sorted(os.listdir(path.parent)), leaked) == ([path.name], 0)
    sf.append([DelRoute(R2.key)])  # the journal still takes changes
    sf.close()
    assert routes_of(reload(path)[1]) == {R1.key: R1}


def test_torn_tail_is_ignored_and_cut_before_the_next_append(path: Path, journal: bytes) -> None:
    torn = rec(3, ops=[["del", *R1.key]])[:-5]
    path.write_bytes(journal + torn)
    sf, loaded = reload(path)
    assert loaded.torn_tail
    assert loaded.good_length == len(journal)
    assert R1.key in loaded.routes  # the unacknowledged delete never happened
    sf.append([SetThreshold("eth2", 9)])
    sf.close()
    assert path.read_bytes() == journal + rec(3, ops=[["threshold", "eth2", 9]])
    assert reload(path)[1].thresholds["eth2"] == 9


def test_a_complete_record_without_newline_is_the_last_change(path: Path, journal: bytes) -> None:
    """Its newline goes with the next record: a crash leaves the last change without it."""
    last = rec(3, ops=[["del", *R1.key]])
    path.write_bytes(journal + last[:-1])
    sf, loaded = reload(path)
    assert (loaded.torn_tail, loaded.unterminated) == (False, True)
    assert (loaded.seq, loaded.good_length) == (3, len(journal) + len(last) - 1)
    assert R1.key not in loaded.routes
    sf.append([SetThreshold("eth2", 9)])  # the newline first, then the record
    assert path.read_bytes() == journal + last + rec(4, ops=[["threshold", "eth2", 9]])[:-1]
    sf.close()  # a stop writes the last newline
    assert path.read_bytes() == journal + last + rec(4, ops=[["threshold", "eth2", 9]])
    assert reload(path)[1].thresholds["eth2"] == 9


def test_a_snapshot_taking_the_journals_place_ends_it_with_its_newline(path: Path) -> None:
    """Should the rename not survive a crash, the old journal is whole for any release."""
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([R1], {})
    sf.append([DelRoute(R1.key)])
    old = path.with_name("old.journal")
    os.link(path, old)  # the journal's inode, which the snapshot's rename takes the path from
    assert not old.read_bytes().endswith(b"\n")
    sf.write_snapshot([R2], {})
    assert old.read_bytes().endswith(b'"ops":[["del",4,"10.0.0.1","239.1.1.1"]]}\n')
    assert path.read_bytes().endswith(b"\n")
    sf.close()


def test_a_complete_last_record_that_a_torn_write_follows_is_kept(
    path: Path, journal: bytes
) -> None:
    """The next write, torn, may have lost the newline it began with: the record before it
    was synced before that write began, so it counts, and the rest is cut off."""
    last = rec(3, ops=[["del", *R1.key]])[:-1]
    for torn in (b"\0" * 300, rec(4, ops=[["threshold", "eth2", 9]])[:-4], b"}" * 3):
        path.write_bytes(journal + last + torn)
        sf, loaded = reload(path)
        assert (loaded.torn_tail, loaded.unterminated, loaded.seq) == (True, True, 3)
        assert R1.key not in loaded.routes and "eth2" not in loaded.thresholds
        assert path.stat().st_size == len(journal + last)  # the torn write cut off
        sf.append([SetThreshold("eth2", 1)])
        sf.close()
        assert path.read_bytes() == journal + last + b"\n" + rec(4, ops=[["threshold", "eth2", 1]])


def test_a_bad_checksum_is_corruption_with_a_newline_and_torn_without(
    path: Path, journal: bytes
) -> None:
    """A line gets its newline only once it is on disk: with it, a bad checksum is damage."""
    bad = line(b'{"seq":3,"ops":[["del",4,"10.0.0.1","239.1.1.1"]]}', crc=0x12345678)
    assert "line 4 is corrupt (checksum mismatch)" in refused(path, journal + bad)
    path.write_bytes(journal + bad[:-1])
    _, loaded = reload(path)
    assert (loaded.torn_tail, loaded.seq, loaded.good_length) == (True, 2, len(journal))
    assert R1.key in loaded.routes


def test_the_last_changes_cut_at_every_byte_are_there_whole_or_not_at_all(path: Path) -> None:
    """As a crash leaves the file (no stop, so no last newline), cut anywhere in its last two
    changes: each is in the loaded routes whole or not at all, and the next append and
    start go on from there."""
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([R1], {})
    start = path.stat().st_size
    sf.append([DelRoute(R1.key), AddRoute.of(R2)])
    middle = path.stat().st_size
    sf.append([SetThreshold("eth0", 5), AddRoute.of(R1)])
    data = path.read_bytes()
    os.close(sf._fd)  # type: ignore[arg-type]  # a crash: no stop, the last newline unwritten
    sf._fd = None
    sf.close()
    first: tuple[set[RouteKey], dict[str, int]] = ({R2.key}, {})
    both = ({R1.key, R2.key}, {"eth0": 5})
    for cut in range(start, len(data) + 1):
        path.write_bytes(data[:cut])
        sf, loaded = reload(path)
        got = (set(loaded.routes), loaded.thresholds)
        if cut < middle:
            assert got == ({R1.key}, {}), cut
        elif cut <= middle + 1:  # the first whole, with or without the newline of the next
            assert got == first, cut
        else:
            assert got == (both if cut == len(data) else first), cut
        sf.append([SetThreshold("eth9", 1)])
        sf.close()
        _, again = reload(path)
        assert (set(again.routes), again.thresholds) == (got[0], {**got[1], "eth9": 1}), cut


@pytest.mark.parametrize("cut", [1, 5], ids=["newline", "more"])
def test_a_snapshot_cut_short_is_corrupt_and_the_file_left_alone(path: Path, cut: int) -> None:
    # The first record is a snapshot, written whole and renamed into place: never a torn
    # append, so its routes must not be dropped as one.
    sf = StateFile(str(path))
    sf.write_snapshot([R1, R2], {})
    sf.close()
    data = path.read_bytes()[:-cut]
    path.write_bytes(data)
    with pytest.raises(StateError, match="line 2 is corrupt"):
        StateFile(str(path)).load()
    assert path.read_bytes() == data


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (line(b'{"seq":4,"ops":[]}', crc=0x12345678), "checksum mismatch"),
        (line(b'{"seq":4,"ops":[["add",4'), "line 5 is corrupt"),
        (line(b"\xff\xfe"), "line 5 is corrupt"),
        (b"not a record\n", "line 5 is corrupt"),
        (b"\n", "line 5 is corrupt"),
        (line(b"[1,2]"), "no sequence number"),
        (line(b"7"), "no sequence number"),
        (line(b'{"ops":[]}'), "line 5 is corrupt (no sequence number)"),
        (line(b'{"seq":"4","ops":[]}'), "no sequence number"),
        (line(b'{"seq":4,"neither":1}'), "line 5 is corrupt"),
        (line(b'{"seq":4,"ops":[["add",4,"10.0.0.9"]]}'), "line 5 is corrupt"),
        (line(b'{"seq":4,"ops":[["move",1]]}'), "unknown op 'move'"),
        (line(b'{"seq":4,"ops":[5]}'), "line 5 is corrupt"),
        (line(b'{"seq":4,"ops":[[]]}'), "line 5 is corrupt"),
        (rec(4, snapshot={"routes": [], "count": 0}), "a snapshot after the first record"),
        (rec(4, routes=[]), "route record outside a snapshot"),
        (rec(4, routes=[[4, "10.0.0.9", "239.1.1.9", "eth0", ["eth1"]]]), "outside a snapshot"),
        # A gap is a lost record, a repeat one copied or replayed.
        (rec(5, ops=[]), "line 5 is corrupt (sequence number 5 after 3: 1 record missing)"),
        (rec(7, ops=[]), "sequence number 7 after 3: 3 records missing"),
        (rec(3, ops=[]), "sequence number 3 after 3: a record repeated or copied from earlier"),
        (rec(1, ops=[]), "sequence number 1 after 3: a record repeated"),
    ],
)
def test_corrupt_line_names_file_and_line_and_leaves_the_file_alone(
    path: Path, journal: bytes, bad: bytes, reason: str
) -> None:
    message = refused(path, journal + rec(3, ops=[]) + bad + rec(5, ops=[]))
    assert str(path) in message
    assert reason in message
    assert "the file was left untouched" in message


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (rec(1, snapshot={"routes": [[4]], "count": 1}), "line 2 is corrupt"),
        (rec(1, snapshot={"count": 0}), "line 2 is corrupt"),
        (rec(1, snapshot=5), "malformed snapshot"),
        (rec(1, snapshot={"routes": [], "thresholds": [], "count": 0}), "line 2 is corrupt"),
        (rec(1, snapshot={"routes": []}), "malformed snapshot (no route count)"),
        (rec(1, snapshot={"routes": [], "count": -1}), "no route count"),
        (rec(1, snapshot={"routes": [], "count": "0"}), "no route count"),
        (rec(1, snapshot={"count": 0, "chunks": 0}), "malformed snapshot"),
        (rec(1, snapshot={"count": 0, "chunks": True}), "malformed snapshot"),
        (rec(1, snapshot={"count": 0, "chunks": "1"}), "malformed snapshot"),
        (rec(1, snapshot={"count": 0, "chunks": 1, "routes": []}), "malformed snapshot"),
        # Announces two route records; the next line is an ops record.
        (rec(1, snapshot={"count": 5, "chunks": 2}), "line 2 is corrupt (incomplete snapshot"),
        (rec(1, snapshot={"routes": saved([R1]), "count": 2}), "says it holds 2 routes, it has 1"),
        (rec(1, snapshot={"routes": saved([R1, R1]), "count": 2}), "holds 2 routes, it has 1"),
        (rec(1, ops=[]), "line 2 is corrupt (the first record is not a snapshot)"),
        (rec(1, routes=[]), "route record outside a snapshot"),
        (encode_record({"snapshot": {"routes": [], "count": 0}}), "no sequence number"),
        (rec(0, snapshot={"routes": [], "count": 0}), "no sequence number"),
    ],
)
def test_a_bad_snapshot_is_corrupt(path: Path, bad: bytes, reason: str) -> None:
    message = refused(path, HEADER + bad + rec(2, ops=[]))
    assert message.startswith(f"{path}: line 2 is corrupt (")
    assert reason in message


@pytest.mark.parametrize("head", [b"mfcd-state 3\n", b"garbage\n", b"\n", b"mfcd-state 2"])
def test_bad_header_is_corruption(path: Path, head: bytes) -> None:
    data = head + rec(1, ops=[])
    path.write_bytes(data)
    with pytest.raises(StateError, match="not an mfcd state file") as info:
        reload(path)
    assert str(path) in str(info.value)
    assert "line 1" in str(info.value)
    assert path.read_bytes() == data


def test_append_cost_does_not_depend_on_the_number_of_routes(tmp_path: Path) -> None:
    changes: list[Change] = [AddRoute.of(R1), SetThreshold("eth1", 4)]
    ops = [route_op(R1), ["threshold", "eth1", 4]]
    # After a snapshot of one line (seq 1), and of three (seq 1 to 3).
    for count, record in ((1, rec(2, ops=ops)), (2000, rec(4, ops=ops))):
        path = tmp_path / f"journal-{count}"
        sf = StateFile(str(path))
        sf.load()
        routes = [
            Route(4, f"10.{n >> 8}.{n & 255}.1", "239.1.1.1", "a", ("b",), 253)
            for n in range(count)
        ]
        sf.write_snapshot(routes, {})
        size = path.stat().st_size
        sf.append(changes)
        assert path.stat().st_size == size + len(record) - 1  # its newline comes later
        assert path.read_bytes()[size:] == record[:-1]
        sf.close()


def test_an_append_is_one_write_and_one_fdatasync(
    path: Path, journal: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's newline goes with the next record: one sync a record, counted in syncs."""
    sf, _ = reload(path)
    calls: list[str] = []
    real_write, real_sync = os.write, os.fdatasync

    def write(fd: int, data: Any) -> int:
        calls.append("write")
        return real_write(fd, data)

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_sync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    for ttl in range(1, 4):
        sf.append([SetThreshold("eth0", ttl)])
    assert calls == ["write", "fdatasync"] * 3
    assert sf.syncs == 3
    monkeypatch.undo()
    sf.close()
    assert reload(path)[1].thresholds["eth0"] == 3


def test_a_failed_append_is_cut_back_and_reported(
    path: Path, journal: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    sf, _ = reload(path)

    def fail(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(StateError, match="No space left on device"):
        sf.append([DelRoute(R1.key)])
    monkeypatch.undo()
    assert path.read_bytes() == journal
    assert sf.ops_since_snapshot == 2
    sf.append([DelRoute(R2.key)])
    sf.close()
    assert routes_of(reload(path)[1]) == {R1.key: R1}


def test_unreadable_path_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read the state file"):
        StateFile(str(tmp_path)).load()  # a directory


# --- snapshots in several lines ------------------------------------------------------------------


def many(count: int) -> list[Route]:
    """`count` distinct routes over a few interface combinations, both families."""
    routes = []
    for n in range(count):
        if n % 7 == 6:
            routes.append(Route(6, f"2001:db8::{n:x}", "ff0e::2", "eth1", ("eth0",), 254))
        else:
            oifs = ("eth1", "eth2") if n % 2 else ("eth3",)
            routes.append(Route(4, f"10.{n >> 8}.{n & 255}.1", "239.2.2.2", "eth0", oifs, 253))
    return routes


def chunked(path: Path, count: int = 2500, thresholds: dict[str, int] | None = None) -> bytes:
    """A state file holding a snapshot of `many(count)`, as write_snapshot writes it."""
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot(many(count), thresholds or {})
    sf.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    "count", [0, 1, SNAPSHOT_CHUNK - 1, SNAPSHOT_CHUNK, SNAPSHOT_CHUNK + 1, 2500]
)
def test_snapshot_round_trip_in_bounded_lines(path: Path, count: int) -> None:
    routes = many(count)
    data = chunked(path, count, {"eth1": 5})
    records = data[len(HEADER) :].splitlines()
    if count <= SNAPSHOT_CHUNK:  # one record
        snap = {"routes": saved(routes), "thresholds": {"eth1": 5}, "count": count}
        assert data == HEADER + rec(1, snapshot=snap)
        last = 1
    else:
        parts = -(-count // SNAPSHOT_CHUNK)
        snap = {"thresholds": {"eth1": 5}, "count": count, "chunks": parts}
        expected = [rec(1, snapshot=snap)]
        for n, start in enumerate(range(0, count, SNAPSHOT_CHUNK), 2):
            expected.append(rec(n, routes=saved(routes[start : start + SNAPSHOT_CHUNK])))
        assert data == HEADER + b"".join(expected)
        assert len(records) == 1 + parts
        last = 1 + parts
    sf, loaded = reload(path)
    assert loaded.route_list() == routes  # in order
    assert loaded.thresholds == {"eth1": 5}
    assert (loaded.ops_since_snapshot, sf.ops_since_snapshot) == (0, 0)
    assert (loaded.good_length, loaded.torn_tail) == (len(data), False)
    assert (loaded.version, loaded.seq) == (2, last)
    sf.close()


def test_write_snapshot_takes_any_iterable(path: Path) -> None:
    routes = many(SNAPSHOT_CHUNK + 5)
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot(iter(routes), {})
    sf.close()
    other = path.with_name("other")
    sf = StateFile(str(other))
    sf.load()
    sf.write_snapshot({r.key: r for r in routes}.values(), {})
    sf.close()
    assert path.read_bytes() == other.read_bytes()
    assert reload(path)[1].route_list() == routes


def test_a_single_record_snapshot_of_any_size_still_loads(path: Path) -> None:
    """Version 1 files written before snapshots were split: one snapshot line, however many
    routes."""
    routes = many(2500)
    snapshot = {"snapshot": {"routes": saved(routes), "thresholds": {"eth2": 4}}}
    v1 = HEADER_V1 + encode_record(snapshot) + encode_record({"ops": [["del", *R1.key]]})
    path.write_bytes(v1)
    sf, loaded = reload(path)
    assert loaded.route_list() == routes
    assert (loaded.thresholds, loaded.ops_since_snapshot) == ({"eth2": 4}, 1)
    sf.close()


def test_ops_after_a_chunked_snapshot_count_alone(path: Path) -> None:
    routes = many(2500)
    chunked(path)
    sf, _ = reload(path)
    assert sf.ops_since_snapshot == 0
    sf.append([AddRoute.of(R1)])
    sf.append([DelRoute(routes[1500].key), SetThreshold("eth3", 2)])
    sf.close()
    sf, loaded = reload(path)
    assert (loaded.ops_since_snapshot, sf.ops_since_snapshot) == (3, 3)
    expected = {r.key: r for r in routes if r is not routes[1500]}
    expected[R1.key] = R1
    assert routes_of(loaded) == expected
    assert loaded.thresholds == {"eth3": 2}
    sf.close()


def test_a_snapshot_after_ops_starts_over(path: Path, journal: bytes) -> None:
    """In version 1, a snapshot record further down (mfcd never wrote one there) replaces
    what precedes it; in version 2 it is corruption (test_corrupt_line...)."""
    routes = many(1500)
    snapshot = v1_chunked(many(1500))
    ops = encode_record({"ops": [route_op(R2)]})
    path.write_bytes(
        HEADER_V1 + v1_chunked([R1]) + ops + snapshot + encode_record({"ops": [route_op(R1)]})
    )
    _, loaded = reload(path)
    assert routes_of(loaded) == {**{r.key: r for r in routes}, R1.key: R1}
    assert (loaded.thresholds, loaded.ops_since_snapshot) == ({}, 1)


def v1_chunked(routes: list[Route]) -> bytes:
    """A version 1 snapshot: no sequence numbers, no route count, chunked above 1,000."""
    if len(routes) <= SNAPSHOT_CHUNK:
        return encode_record({"snapshot": {"routes": saved(routes), "thresholds": {}}})
    parts = -(-len(routes) // SNAPSHOT_CHUNK)
    lines = [encode_record({"snapshot": {"thresholds": {}, "chunks": parts}})]
    for start in range(0, len(routes), SNAPSHOT_CHUNK):
        lines.append(encode_record({"routes": saved(routes[start : start + SNAPSHOT_CHUNK])}))
    return b"".join(lines)


def snapshot_lines(path: Path) -> list[bytes]:
    """The lines of a 2,500-route state file: header, snapshot, then 3 route records."""
    lines = chunked(path).splitlines(keepends=True)
    assert len(lines) == 5
    return lines


@pytest.mark.parametrize(
    ("keep", "extra", "reason"),
    [
        # The last route record is gone: the file ends early.
        (4, b"", "2 found before the end of the file"),
        # Gone, and an acknowledged change follows where it should be.
        (4, rec(4, ops=[route_op(R1)]), "2 found before line 5"),
        # A second snapshot where a route record should be.
        (3, rec(3, snapshot={"routes": [], "count": 0}), "1 found before line 4"),
        # Only part of the last one: not a torn append (snapshots are never appended to).
        (4, rec(4, routes=[])[:-1], "2 found before an incomplete last line"),
    ],
)
def test_a_snapshot_missing_route_records_is_corrupt(
    path: Path, keep: int, extra: bytes, reason: str
) -> None:
    lines = snapshot_lines(path)
    message = refused(path, b"".join(lines[:keep]) + extra)  # never cut, unlike a torn append
    assert message.startswith(f"{path}: line 2 is corrupt (incomplete snapshot: 3 route records")
    assert reason in message


def test_a_bad_route_record_names_its_line_and_snapshot(path: Path) -> None:
    lines = snapshot_lines(path)
    lines[3] = b"0" + lines[3][1:]
    path.write_bytes(b"".join(lines))
    with pytest.raises(StateError) as info:
        reload(path)
    assert "line 4 is corrupt (checksum mismatch; it is route record 2 of 3 of the snapshot on" in (
        str(info.value)
    )


def test_a_malformed_route_in_a_route_record_is_corrupt(path: Path) -> None:
    lines = snapshot_lines(path)
    lines[4] = rec(4, routes=[[4, "10.9.9.9", "239.1.1.1", "eth0", ["eth0"]]])
    path.write_bytes(b"".join(lines))
    with pytest.raises(
        StateError, match=r"line 5 is corrupt \(malformed route; it is route record"
    ):
        reload(path)


def test_torn_tail_after_a_chunked_snapshot(path: Path) -> None:
    data = chunked(path)
    sf, _ = reload(path)
    sf.append([AddRoute.of(R1)])
    sf.close()
    journal = path.read_bytes()
    path.write_bytes(journal + rec(6, ops=[["del", *R1.key]])[:-3])
    sf, loaded = reload(path)
    assert loaded.torn_tail
    assert (loaded.good_length, loaded.ops_since_snapshot) == (len(journal), 1)
    assert len(loaded.routes) == 2501
    sf.append([SetThreshold("eth2", 9)])
    sf.close()
    assert path.read_bytes() == journal + rec(6, ops=[["threshold", "eth2", 9]])
    assert path.read_bytes().startswith(data)


def test_a_snapshot_that_fails_midway_leaves_the_old_journal(
    path: Path, journal: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    sf, _ = reload(path)
    fds = len(os.listdir("/proc/self/fd"))
    write = os.write
    writes = 0

    def fail_third(fd: int, data: Any) -> int:
        nonlocal writes
        writes += 1
        if writes == 3:  # header, snapshot record, then the first route record
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(os, "write", fail_third)
    with pytest.raises(StateError, match="cannot write the state file: No space left on device"):
        sf.write_snapshot(many(SNAPSHOT_CHUNK * 2), {})
    monkeypatch.undo()
    assert writes == 3

    def routes() -> Iterator[Route]:
        yield from many(SNAPSHOT_CHUNK * 2)
        raise RuntimeError("no more")

    with pytest.raises(RuntimeError, match="no more"):
        sf.write_snapshot(routes(), {})
    leaked = len(os.listdir("/proc/self/fd")) - fds
    assert (sorted(os.listdir(path.parent)), leaked) == ([path.name], 0)
    assert path.read_bytes() == journal
    sf.append([DelRoute(R2.key)])
    sf.close()
    assert routes_of(reload(path)[1]) == {R1.key: R1}


@pytest.mark.parametrize("enabled", [True, False])
def test_parse_leaves_the_garbage_collector_as_it_found_it(path: Path, enabled: bool) -> None:
    good = chunked(path)
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        assert len(state.parse(good).routes) == 2500
        assert gc.isenabled() == enabled
        with pytest.raises(StateError):
            state.parse(good[:-1] + b"x\n")
        assert gc.isenabled() == enabled
    finally:
        if was:
            gc.enable()


NAMES = st.sampled_from(["eth0", "eth1", "r0", "br-lan.10", "a+b@c", "x_y-z"])
ADDRESSES = {
    4: (["10.0.0.1", "198.18.255.254"], ["239.1.1.1", "232.0.0.9"]),
    6: (["2001:db8::1", "fd00::a"], ["ff3e::1:2", "ff05::db8:0:1"]),
}


@st.composite
def adds(draw: st.DrawFn) -> AddRoute:
    sources, groups = ADDRESSES[draw(st.sampled_from([4, 6]))]
    names = draw(st.lists(NAMES, min_size=2, max_size=4, unique=True))
    args: dict[str, Any] = {
        "source": draw(st.sampled_from(sources)),
        "group": draw(st.sampled_from(groups)),
        "table": draw(st.sampled_from([None, "default", 100, 99_999_999])),
    }
    return AddRoute.of(validate.route({**args, "iif": names[0], "oifs": names[1:]}))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            adds(),
            st.just(DelRoute((6, "2001:db8::1", "ff3e::1:2", 254))),
            st.builds(SetThreshold, NAMES, st.integers(1, 255)),
        ),
        max_size=6,
    ),
    st.integers(1, 2**53),
)
def test_changes_are_encoded_as_json_encodes_their_ops(changes: list[Any], seq: int) -> None:
    expected = encode_record({"seq": seq, "ops": [change_op(c) for c in changes]})
    assert encode_changes(changes, seq) == expected


# --- damage the issue met: each is refused, the file left as it is --------------------------


@pytest.fixture
def history(path: Path) -> list[bytes]:
    """The lines of a state file: header, a 2,500-route snapshot (seq 1-4, lines 2-5), then
    four changes (seq 5-8, lines 6-9): add R1, add R2, del R1, a threshold."""
    chunked(path)
    sf, _ = reload(path)
    sf.append([AddRoute.of(R1)])
    sf.append([AddRoute.of(R2)])
    sf.append([DelRoute(R1.key)])
    sf.append([SetThreshold("eth1", 4)])
    sf.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 9
    return lines


def without_route(line: bytes) -> bytes:
    """A route record with its last route left out, checksummed again."""
    record = json.loads(line.split(b" ", 1)[1])
    return rec(record["seq"], routes=record["routes"][:-1])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda lines: b"", "the state file is empty (0 bytes)"),
        (lambda lines: lines[0], "line 2 is corrupt (the file ends after its header"),
        (
            lambda lines: b"".join(lines[:6] + lines[7:]),  # add R2 gone
            "line 7 is corrupt (sequence number 7 after 5: 1 record missing)",
        ),
        (
            lambda lines: b"".join([*lines, lines[5]]),  # add R1 replayed after its del
            "line 10 is corrupt (sequence number 5 after 8: a record repeated or copied",
        ),
        (
            lambda lines: b"".join(lines[:3] + lines[4:]),  # a route record of the snapshot
            "line 4 is corrupt (sequence number 4 after 2: 1 record missing; it is route"
            " record 2 of 3",
        ),
        (
            lambda lines: b"".join([*lines[:3], without_route(lines[3]), *lines[4:]]),
            "line 2 is corrupt (the snapshot says it holds 2500 routes, it has 2499)",
        ),
        (
            # Cut in the middle of a line, then the rest of an older line: the torn line's
            # number must be the next one.
            lambda lines: b"".join(lines[:7]) + lines[5][:-9],
            "line 8 is corrupt (an incomplete last line with sequence number 5 after 6)",
        ),
    ],
    ids=["empty", "header-only", "middle-record", "replayed", "route-record", "count", "torn-seq"],
)
def test_damage_is_refused_and_the_file_left_untouched(
    path: Path, history: list[bytes], damage: Any, reason: str
) -> None:
    message = refused(path, damage(history))
    assert message.startswith(f"{path}: ")
    assert reason in message
    assert message.endswith(
        "the file was left untouched — repair or move it away, then start mfcd again"
    )
    assert "\n" not in message


@pytest.mark.parametrize("cut", [2, 9, 40])
def test_a_line_cut_short_at_the_end_is_a_torn_change(
    path: Path, history: list[bytes], cut: int
) -> None:
    """What nothing in the file can tell from a crash mid-append: the last line cut short.
    The change it held is dropped, as an unacknowledged one would be (documented)."""
    data = b"".join(history)[:-cut]
    path.write_bytes(data)
    sf, loaded = reload(path)
    assert loaded.torn_tail
    assert (loaded.seq, loaded.thresholds) == (7, {})
    assert loaded.good_length == len(b"".join(history[:8]))
    sf.append([SetThreshold("eth2", 1)])  # numbered 8, as the dropped one was
    sf.close()
    assert path.read_bytes() == b"".join(history[:8]) + rec(8, ops=[["threshold", "eth2", 1]])


def test_a_clean_cut_at_the_end_cannot_be_detected(path: Path, history: list[bytes]) -> None:
    """The one loss the format cannot see (documented): whole last records gone."""
    path.write_bytes(b"".join(history[:7]))
    _, loaded = reload(path)
    assert not loaded.torn_tail
    assert set(loaded.routes) == {*(r.key for r in many(2500)), R1.key, R2.key}


# --- version 1 files ---------------------------------------------------------------------------


def test_a_version_1_file_loads_and_is_rewritten_before_the_first_change(path: Path) -> None:
    v1 = HEADER_V1 + v1_chunked(many(1500)) + encode_record({"ops": [route_op(R1)]})
    path.write_bytes(v1)
    sf, loaded = reload(path)
    assert (loaded.version, loaded.ops_since_snapshot) == (1, 1)
    assert set(loaded.routes) == {*(r.key for r in many(1500)), R1.key}
    assert sf.needs_snapshot
    assert path.read_bytes() == v1  # loading never writes
    with pytest.raises(SnapshotNeeded, match="older format"):
        sf.append([AddRoute.of(R2)])
    assert path.read_bytes() == v1
    sf.write_snapshot(loaded.route_list(), loaded.thresholds)
    sf.append([AddRoute.of(R2)])
    sf.close()
    assert path.read_bytes().startswith(HEADER)
    _, again = reload(path)
    assert (again.version, again.seq) == (2, 4)
    assert set(again.routes) == {*loaded.routes, R2.key}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (HEADER_V1, "line 2 is corrupt (the file ends after its header"),
        (HEADER_V1 + encode_record({"snapshot": {"routes": []}})[:-1], "line 2 is corrupt"),
        (HEADER_V1 + line(b'{"ops":[]}', crc=1), "checksum mismatch"),
    ],
)
def test_a_damaged_version_1_file_is_refused(path: Path, data: bytes, reason: str) -> None:
    path.write_bytes(data)
    with pytest.raises(StateError, match=re.escape(reason)):
        reload(path)
    assert path.read_bytes() == data


def test_a_version_1_torn_tail_is_still_torn(path: Path) -> None:
    v1 = HEADER_V1 + v1_chunked([R1])
    path.write_bytes(v1 + encode_record({"ops": [["del", *R1.key]]})[:-2])
    _, loaded = reload(path)
    assert (loaded.torn_tail, loaded.good_length, set(loaded.routes)) == (True, len(v1), {R1.key})


# --- a file deleted, renamed, replaced or changed while in use ----------------------------------


def delete(path: Path) -> str:
    path.unlink()
    return "was deleted or renamed while mfcd was running"


def rename(path: Path) -> str:
    path.rename(path.with_name("moved"))
    return "was deleted or renamed while mfcd was running"


def replace(path: Path) -> str:
    other = path.with_name("other")
    other.write_bytes(path.read_bytes())
    other.rename(path)
    return "was replaced by another file while mfcd was running"


def truncate(path: Path) -> str:
    os.truncate(path, 0)
    return "was changed while mfcd was running (0 bytes where mfcd left"


@pytest.mark.parametrize("meddle", [delete, rename, replace, truncate])
def test_an_append_to_a_file_not_where_mfcd_left_it_is_refused(
    path: Path, journal: bytes, meddle: Any
) -> None:
    sf, _ = reload(path)
    assert sf.replaced() is None
    reason = meddle(path)
    assert reason in (sf.replaced() or "")
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    with pytest.raises(SnapshotNeeded, match=re.escape(reason)):
        sf.append([DelRoute(R1.key)])
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before  # nothing written
    # The caller writes a whole snapshot at the path (the controller does); then appends go on.
    sf.write_snapshot([R2], {})
    assert sf.replaced() is None
    sf.append([AddRoute.of(R1)])
    sf.close()
    assert routes_of(reload(path)[1]) == {R2.key: R2, R1.key: R1}


def test_a_failed_append_that_cannot_be_cut_back_is_not_appended_to(
    path: Path, journal: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused record left in the file: the next change writes a snapshot instead."""
    sf, _ = reload(path)

    def fail(fd: int, *args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    monkeypatch.setattr(os, "ftruncate", fail)
    with pytest.raises(StateError, match="Input/output error"):
        sf.append([DelRoute(R1.key)])
    monkeypatch.undo()
    with pytest.raises(SnapshotNeeded, match="was changed while mfcd was running"):
        sf.append([DelRoute(R2.key)])
    sf.close()


def test_a_file_deleted_while_a_record_is_written_needs_a_snapshot(
    path: Path, journal: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before an append cannot see what happens during it: a second one after."""
    sf, _ = reload(path)
    fdatasync = os.fdatasync

    def meanwhile(fd: int) -> None:
        fdatasync(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    monkeypatch.setattr(os, "fdatasync", meanwhile)
    with pytest.raises(SnapshotNeeded, match="was deleted or renamed while mfcd was running"):
        sf.append([DelRoute(R1.key)])
    monkeypatch.undo()
    sf.write_snapshot([R2], {})  # what the controller does: the change is in it
    sf.append([AddRoute.of(R1)])
    sf.close()
    _, loaded = reload(path)
    assert (routes_of(loaded), loaded.seq) == ({R2.key: R2, R1.key: R1}, 4)


# --- one owner ---------------------------------------------------------------------------------


def test_a_second_user_of_the_file_is_refused_with_the_holders_pid(path: Path) -> None:
    first = StateFile(str(path))
    first.lock()
    lock = Path(f"{path}.lock")
    assert lock.read_text() == f"{os.getpid()}\n"
    second = StateFile(str(path))
    with pytest.raises(StateError) as info:
        second.lock()
    assert str(info.value) == (
        f"{path} is in use by another mfcd (pid {os.getpid()}, which holds {lock});"
        " stop that one, or give this one its own state_file"
    )
    first.close()
    second.lock()  # released on close (and by the kernel when a process dies)
    second.close()
    assert lock.exists()


@pytest.mark.parametrize("meddle", [delete, replace])
def test_a_lock_file_removed_while_locked_is_locked_again(path: Path, meddle: Any) -> None:
    lock = Path(f"{path}.lock")
    first = StateFile(str(path))
    first.lock()
    assert first.keep_lock() is None
    meddle(lock)
    assert first.keep_lock() == (
        f"{lock} was deleted or replaced while mfcd was running; locked it again"
    )
    assert lock.read_text() == f"{os.getpid()}\n"
    with pytest.raises(StateError, match="is in use by another mfcd"):
        StateFile(str(path)).lock()
    first.close()


def test_a_lock_file_taken_by_another_meanwhile_is_reported(path: Path) -> None:
    first = StateFile(str(path))
    first.lock()
    Path(f"{path}.lock").unlink()
    second = StateFile(str(path))
    second.lock()
    with pytest.raises(StateError, match="is in use by another mfcd"):
        first.keep_lock()
    with pytest.raises(StateError, match="is in use by another mfcd"):
        first.keep_lock()  # still ours to close, still theirs
    first.close()
    second.close()


def test_a_lock_that_holds_no_pid_yet_says_so(path: Path) -> None:
    holder = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(StateError, match=r"\(pid unknown, which holds"):
            StateFile(str(path)).lock()
    finally:
        os.close(holder)


# --- symbolic links ----------------------------------------------------------------------------


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A file someone would like root to overwrite."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    return victim


def test_a_state_file_that_is_a_link_is_refused(path: Path, target: Path) -> None:
    path.symlink_to(target)
    with pytest.raises(StateError, match="it is a symbolic link, and mfcd follows none there"):
        reload(path)
    assert target.read_bytes() == b"precious\n"


def test_a_lock_file_that_is_a_link_is_refused(path: Path, target: Path) -> None:
    Path(f"{path}.lock").symlink_to(target)
    with pytest.raises(StateError, match="cannot open the state file's lock: it is a symbolic"):
        StateFile(str(path)).lock()
    assert target.read_bytes() == b"precious\n"


@pytest.mark.parametrize("dangling", [False, True])
def test_a_planted_temporary_link_is_removed_not_followed(
    path: Path, journal: bytes, target: Path, dangling: bool
) -> None:
    tmp = Path(f"{path}.tmp")
    if dangling:
        target.unlink()
    tmp.symlink_to(target)
    sf, _ = reload(path)
    sf.write_snapshot([R2], {})
    sf.close()
    assert not tmp.exists() and not tmp.is_symlink()
    assert target.exists() != dangling
    if not dangling:
        assert target.read_bytes() == b"precious\n"
    assert routes_of(reload(path)[1]) == {R2.key: R2}


def test_a_leftover_temporary_file_is_replaced(path: Path, journal: bytes) -> None:
    Path(f"{path}.tmp").write_bytes(b"half a snapshot")
    sf, _ = reload(path)
    sf.write_snapshot([R2], {})
    sf.close()
    assert sorted(os.listdir(path.parent)) == [path.name]
    assert routes_of(reload(path)[1]) == {R2.key: R2}


# --- compaction in a thread ------------------------------------------------------------------


def started(path: Path, routes: list[Route]) -> StateFile:
    """A journal holding `routes` (one snapshot, then each added again by a change), loaded."""
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot(routes, {})
    for route in routes:
        sf.append([AddRoute.of(route)])
    sf.close()
    sf = StateFile(str(path))
    sf.load()
    return sf


def as_ports(routes: list[Route]) -> dict[RouteKey, Any]:
    return {r.key: AddRoute.of(r).ports for r in routes}


def test_a_compaction_keeps_the_changes_journaled_while_it_was_written(path: Path) -> None:
    routes = many(2 * SNAPSHOT_CHUNK + 5)
    sf = started(path, routes)
    job = sf.start_compaction(as_ports(routes), {"eth0": 3})
    # Changes keep coming while the thread writes; they go to the journal as usual.
    sf.append([DelRoute(routes[0].key)])
    job.write()
    sf.append([AddRoute.of(R1), SetThreshold("eth1", 4)])
    assert sf.finish_compaction(job) is True
    assert sf.ops_since_snapshot == 3
    assert not os.path.exists(f"{path}.compact")
    sf.append([DelRoute(routes[1].key)])  # appends go on in the new file, numbered on
    sf.close()
    loaded = state.parse(path.read_bytes(), str(path))
    assert routes_of(loaded) == {r.key: r for r in [*routes[2:], R1]}
    assert loaded.thresholds == {"eth0": 3, "eth1": 4}
    assert loaded.ops_since_snapshot == 4


def test_a_snapshot_written_meanwhile_overtakes_a_compaction(path: Path) -> None:
    routes = many(10)
    sf = started(path, routes)
    job = sf.start_compaction(as_ports(routes), {})
    job.write()
    sf.write_snapshot([R2], {})  # e.g. the file was deleted and written back with a change
    assert sf.finish_compaction(job) is False
    assert not os.path.exists(f"{path}.compact")
    sf.close()
    assert routes_of(state.parse(path.read_bytes())) == {R2.key: R2}


def test_a_cancelled_compaction_leaves_the_journal_as_it_was(path: Path) -> None:
    routes = many(3 * SNAPSHOT_CHUNK)
    sf = started(path, routes)
    before = path.read_bytes()
    job = sf.start_compaction(as_ports(routes), {})
    job.cancel()  # before the thread's first record: it stops there
    job.write()
    assert sf.finish_compaction(job) is False
    assert not os.path.exists(f"{path}.compact")
    assert path.read_bytes() == before


def test_a_compaction_that_cannot_write_fails_and_changes_nothing(path: Path) -> None:
    routes = many(10)
    sf = started(path, routes)
    before = path.read_bytes()
    os.mkdir(f"{path}.compact")  # in the way: it cannot be replaced by a file
    job = sf.start_compaction(as_ports(routes), {})
    job.write()
    with pytest.raises(StateError, match="cannot write the state file"):
        sf.finish_compaction(job)
    assert path.read_bytes() == before
    sf.append([AddRoute.of(R1)])  # the journal still takes changes
    sf.close()
    assert R1.key in routes_of(state.parse(path.read_bytes()))


@pytest.mark.parametrize(
    ("error", "remedy"),
    [
        (errno.ENOSPC, "free space on its filesystem (df {dir}), then retry"),
        (errno.EROFS, "its filesystem is read-only: check the disk (dmesg), remount it"),
        (errno.EIO, "check the disk (dmesg), then retry"),
    ],
)
def test_a_change_the_disk_refuses_says_nothing_changed_and_what_to_do(
    path: Path, journal: bytes, monkeypatch: pytest.MonkeyPatch, error: int, remedy: str
) -> None:
    """Trial 15 F1: the line mfcctl prints says that the change was not made, and what to
    do (a full disk: free space, no restart needed)."""
    sf, _ = reload(path)

    def refuse(fd: int, data: Any) -> int:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "write", refuse)
    with pytest.raises(StateError) as e:
        sf.append([AddRoute.of(R1)])
    monkeypatch.undo()
    assert str(e.value).startswith(
        f"{path}: cannot write the state file: {os.strerror(error)}; nothing was changed; "
        + remedy.format(dir=path.parent)
    )
    assert e.value.code == "state_error"
    assert path.read_bytes() == journal


def test_a_lock_taken_by_another_mfcd_meanwhile_stops_every_write(path: Path) -> None:
    """Two daemons appending to one file would overwrite each other's changes: once another
    mfcd holds the lock, this one refuses every write, for good."""
    first = StateFile(str(path))
    first.lock()
    first.load()
    first.append([AddRoute.of(R1)])
    Path(f"{path}.lock").unlink()
    second = StateFile(str(path))
    second.lock()  # in the moment before the first one locks a new file
    data = path.read_bytes()
    with pytest.raises(StateError, match="refuses changes until it is restarted"):
        first.append([AddRoute.of(R2)])
    writes: list[Callable[[], None]] = [
        lambda: first.append([DelRoute(R1.key)]),
        lambda: first.write_snapshot([R2], {}),
        first.hold_lock,
    ]
    for write in writes:
        with pytest.raises(StateError, match="refuses changes until it is restarted"):
            write()
    assert path.read_bytes() == data
    second.close()
    with pytest.raises(StateError, match="refuses changes"):
        first.append([AddRoute.of(R2)])  # even once the other is gone: it may be back
    first.close()


def test_a_rename_whose_directory_sync_failed_is_synced_before_the_next_append(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sf = StateFile(str(path))
    sf.load()
    synced: list[str] = []
    failing = True

    def fsync_directory(directory: str) -> None:
        if failing:
            raise OSError(errno.EIO, "Input/output error")
        synced.append(directory)

    monkeypatch.setattr(state, "_fsync_directory", fsync_directory)
    sf.write_snapshot([R1], {})  # renamed into place; its directory not known durable
    with pytest.raises(StateError, match="cannot make the state file's directory durable"):
        sf.append([AddRoute.of(R2)])  # not acknowledged: a crash could undo the rename
    failing = False
    sf.append([AddRoute.of(R2)])
    assert synced == [str(path.parent)]
    sf.close()
    assert routes_of(state.parse(path.read_bytes())) == {R1.key: R1, R2.key: R2}


# --- tables ---------------------------------------------------------------------------------------

T4 = Route(4, "10.0.0.1", "239.1.1.1", "eth1", ("eth2",), 100)  # R1's (S,G) in table 100
T6 = Route(6, "2001:db8::1", "ff0e::1", "eth0", ("eth1",), 253)  # IPv4's default, not IPv6's


def test_routes_of_other_tables_round_trip_and_default_ones_are_written_as_before(
    path: Path,
) -> None:
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([R1, T4], {})
    sf.append([AddRoute.of(T6), AddRoute.of(R2)])
    sf.append([DelRoute(R1.key)])
    sf.close()
    _, loaded = reload(path)
    assert routes_of(loaded) == {T4.key: T4, T6.key: T6, R2.key: R2}
    text = path.read_text()
    # Only a route of another table carries its number; the default tables' records are
    # exactly those of the format without tables.
    assert '"239.1.1.1","eth1",["eth2"],100]' in text
    assert '"ff0e::1","eth0",["eth1"],253]' in text
    assert '["add",6,"2001:db8::1","ff0e::1","eth1",["eth0"]]' in text
    assert '["del",4,"10.0.0.1","239.1.1.1"]' in text


def test_a_file_without_tables_loads_into_the_default_tables(path: Path) -> None:
    path.write_bytes(
        HEADER
        + rec(1, snapshot={"routes": saved([R1]), "thresholds": {}, "count": 1})
        + rec(2, ops=[["add", 6, "2001:db8::1", "ff0e::1", "eth1", ["eth0"]]])
    )
    _, loaded = reload(path)
    assert set(loaded.routes) == {(4, "10.0.0.1", "239.1.1.1", 253), R2.key}


@pytest.mark.parametrize("table", [0, -1, 2**32, "100", None, 1.5])
def test_a_bad_table_number_is_corrupt(path: Path, table: Any) -> None:
    bad = [4, "10.0.0.1", "239.1.1.1", "eth0", ["eth1"], table]
    why = refused(path, HEADER + rec(1, snapshot={"routes": [bad], "thresholds": {}, "count": 1}))
    assert "malformed route" in why
