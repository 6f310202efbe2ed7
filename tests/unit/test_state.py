"""Tests for mfcd.state: the checksummed journal, torn tails, corruption, snapshots."""

from __future__ import annotations

import errno
import gc
import os
import zlib
from collections.abc import Iterator
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
    SNAPSHOT_CHUNK,
    Loaded,
    StateFile,
    change_op,
    encode_changes,
    encode_record,
    route_op,
)


def routes_of(loaded: Loaded) -> dict[RouteKey, Route]:
    return {route.key: route for route in loaded.route_list()}


R1 = Route(4, "10.0.0.1", "239.1.1.1", "eth0", ("eth1", "eth2"))
R2 = Route(6, "2001:db8::1", "ff0e::1", "eth1", ("eth0",))


def line(body: bytes, crc: int | None = None) -> bytes:
    """A journal line with a correct checksum unless `crc` is given."""
    return b"%08x %s\n" % (zlib.crc32(body) if crc is None else crc, body)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.journal"


@pytest.fixture
def journal(path: Path) -> bytes:
    """A journal on disk: a snapshot with R1, then one change adding R2 and a threshold."""
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([R1], {"eth1": 3})
    sf.append([AddRoute.of(R2), SetThreshold("eth0", 7)])
    sf.close()
    return path.read_bytes()


def reload(path: Path) -> tuple[StateFile, state.Loaded]:
    sf = StateFile(str(path))
    return sf, sf.load()


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
    assert path.read_bytes() == HEADER + encode_record(
        {
            "snapshot": {
                "routes": [
                    [4, "10.0.0.1", "239.1.1.1", "eth0", ["eth1", "eth2"]],
                    [6, "2001:db8::1", "ff0e::1", "eth1", ["eth0"]],
                ],
                "thresholds": {"eth0": 2},
            }
        }
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
    torn = encode_record({"ops": [["del", *R1.key]]})[:-5]
    path.write_bytes(journal + torn)
    sf, loaded = reload(path)
    assert loaded.torn_tail
    assert loaded.good_length == len(journal)
    assert R1.key in loaded.routes  # the unacknowledged delete never happened
    sf.append([SetThreshold("eth2", 9)])
    sf.close()
    assert path.read_bytes() == journal + encode_record({"ops": [["threshold", "eth2", 9]]})
    assert reload(path)[1].thresholds["eth2"] == 9


def test_a_complete_record_without_newline_is_still_torn(path: Path, journal: bytes) -> None:
    path.write_bytes(journal + encode_record({"ops": [["del", *R1.key]]}).rstrip(b"\n"))
    _, loaded = reload(path)
    assert loaded.torn_tail
    assert R1.key in loaded.routes


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
        (line(b'{"ops":[]}', crc=0x12345678), "checksum mismatch"),
        (line(b'{"ops":[["add",4'), "line 5 is corrupt"),
        (line(b"\xff\xfe"), "line 5 is corrupt"),
        (b"not a record\n", "line 5 is corrupt"),
        (b"\n", "line 5 is corrupt"),
        (line(b"[1,2]"), "line 5 is corrupt"),
        (line(b"7"), "line 5 is corrupt"),
        (line(b'{"neither":1}'), "line 5 is corrupt"),
        (line(b'{"ops":[["add",4,"10.0.0.9"]]}'), "line 5 is corrupt"),
        (line(b'{"ops":[["move",1]]}'), "unknown op 'move'"),
        (line(b'{"ops":[5]}'), "line 5 is corrupt"),
        (line(b'{"ops":[[]]}'), "line 5 is corrupt"),
        (line(b'{"snapshot":{"routes":[[4]]}}'), "line 5 is corrupt"),
        (line(b'{"snapshot":{}}'), "line 5 is corrupt"),
        (line(b'{"snapshot":5}'), "malformed snapshot"),
        (line(b'{"snapshot":{"routes":[],"thresholds":[]}}'), "line 5 is corrupt"),
        (line(b'{"snapshot":{"chunks":0}}'), "malformed snapshot"),
        (line(b'{"snapshot":{"chunks":true}}'), "malformed snapshot"),
        (line(b'{"snapshot":{"chunks":"1"}}'), "malformed snapshot"),
        (line(b'{"snapshot":{"chunks":1,"routes":[]}}'), "malformed snapshot"),
        # Announces two route records; the next line is an ops record.
        (line(b'{"snapshot":{"chunks":2}}'), "line 5 is corrupt (incomplete snapshot"),
        (line(b'{"routes":[]}'), "route record outside a snapshot"),
        (line(b'{"routes":[[4,"10.0.0.9","239.1.1.9","eth0",["eth1"]]]}'), "outside a snapshot"),
    ],
)
def test_corrupt_line_names_file_and_line_and_leaves_the_file_alone(
    path: Path, journal: bytes, bad: bytes, reason: str
) -> None:
    data = journal + line(b'{"ops":[]}') + bad + line(b'{"ops":[]}')
    path.write_bytes(data)
    with pytest.raises(StateError) as info:
        reload(path)
    assert str(path) in str(info.value)
    assert reason in str(info.value)
    assert path.read_bytes() == data


@pytest.mark.parametrize("head", [b"mfcd-state 2\n", b"garbage\n", b"\n", b"mfcd-state 1"])
def test_bad_header_is_corruption(path: Path, head: bytes) -> None:
    data = head + line(b'{"ops":[]}')
    path.write_bytes(data)
    with pytest.raises(StateError, match="not an mfcd state file") as info:
        reload(path)
    assert str(path) in str(info.value)
    assert "line 1" in str(info.value)
    assert path.read_bytes() == data


def test_append_cost_does_not_depend_on_the_number_of_routes(tmp_path: Path) -> None:
    changes: list[Change] = [AddRoute.of(R1), SetThreshold("eth1", 4)]
    record = encode_record({"ops": [route_op(R1), ["threshold", "eth1", 4]]})
    for count in (1, 2000):
        path = tmp_path / f"journal-{count}"
        sf = StateFile(str(path))
        sf.load()
        routes = [
            Route(4, f"10.{n >> 8}.{n & 255}.1", "239.1.1.1", "a", ("b",)) for n in range(count)
        ]
        sf.write_snapshot(routes, {})
        size = path.stat().st_size
        sf.append(changes)
        assert path.stat().st_size == size + len(record)
        assert path.read_bytes()[size:] == record
        sf.close()


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


def test_parse_of_nothing_is_empty() -> None:
    loaded = state.parse(b"")
    assert (loaded.routes, loaded.good_length, loaded.torn_tail) == ({}, 0, False)


# --- snapshots in several lines ------------------------------------------------------------------


def many(count: int) -> list[Route]:
    """`count` distinct routes over a few interface combinations, both families."""
    routes = []
    for n in range(count):
        if n % 7 == 6:
            routes.append(Route(6, f"2001:db8::{n:x}", "ff0e::2", "eth1", ("eth0",)))
        else:
            oifs = ("eth1", "eth2") if n % 2 else ("eth3",)
            routes.append(Route(4, f"10.{n >> 8}.{n & 255}.1", "239.2.2.2", "eth0", oifs))
    return routes


def saved(routes: list[Route]) -> list[list[Any]]:
    return [[r.family, r.source, r.group, r.iif, list(r.oifs)] for r in routes]


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
    if count <= SNAPSHOT_CHUNK:  # one record, as mfcd has always written it
        assert data == HEADER + encode_record(
            {"snapshot": {"routes": saved(routes), "thresholds": {"eth1": 5}}}
        )
    else:
        parts = -(-count // SNAPSHOT_CHUNK)
        expected = [encode_record({"snapshot": {"thresholds": {"eth1": 5}, "chunks": parts}})]
        for start in range(0, count, SNAPSHOT_CHUNK):
            rows = saved(routes[start : start + SNAPSHOT_CHUNK])
            expected.append(encode_record({"routes": rows}))
        assert data == HEADER + b"".join(expected)
        assert len(records) == 1 + parts
    sf, loaded = reload(path)
    assert loaded.route_list() == routes  # in order
    assert loaded.thresholds == {"eth1": 5}
    assert (loaded.ops_since_snapshot, sf.ops_since_snapshot) == (0, 0)
    assert (loaded.good_length, loaded.torn_tail) == (len(data), False)
    sf.close()


def test_write_snapshot_takes_any_iterable(path: Path) -> None:
    routes = many(SNAPSHOT_CHUNK + 5)
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot(iter(routes), {})
    from_iterator = path.read_bytes()
    sf.write_snapshot({r.key: r for r in routes}.values(), {})
    sf.close()
    assert path.read_bytes() == from_iterator
    assert reload(path)[1].route_list() == routes


def test_a_single_record_snapshot_of_any_size_still_loads(path: Path) -> None:
    """Files written before snapshots were split: one snapshot line, however many routes."""
    routes = many(2500)
    snapshot = {"snapshot": {"routes": saved(routes), "thresholds": {"eth2": 4}}}
    path.write_bytes(HEADER + encode_record(snapshot) + encode_record({"ops": [["del", *R1.key]]}))
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
    """A snapshot record further down (none is written there today) replaces what precedes it."""
    routes = many(1500)
    snapshot = chunked(path.with_name("other"), 1500)[len(HEADER) :]
    path.write_bytes(journal + snapshot + encode_record({"ops": [route_op(R1)]}))
    _, loaded = reload(path)
    assert routes_of(loaded) == {**{r.key: r for r in routes}, R1.key: R1}
    assert (loaded.thresholds, loaded.ops_since_snapshot) == ({}, 1)


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
        # A middle one is gone: the snapshot is one record short when it ends.
        ((0, 1, 2, 4), b"", "2 found before the end of the file"),
        # Gone, and an acknowledged change follows where it should be.
        (4, encode_record({"ops": [route_op(R1)]}), "2 found before line 5"),
        # A second snapshot where a route record should be.
        (3, encode_record({"snapshot": {"routes": []}}), "1 found before line 4"),
        # Only part of the last one: not a torn append (snapshots are never appended to).
        (4, encode_record({"routes": []})[:-1], "2 found before an incomplete last line"),
    ],
)
def test_a_snapshot_missing_route_records_is_corrupt(
    path: Path, keep: int | tuple[int, ...], extra: bytes, reason: str
) -> None:
    lines = snapshot_lines(path)
    kept = lines[:keep] if isinstance(keep, int) else [lines[n] for n in keep]
    data = b"".join(kept) + extra
    path.write_bytes(data)
    with pytest.raises(StateError) as info:
        reload(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 2 is corrupt (incomplete snapshot: 3 route records")
    assert reason in message
    assert path.read_bytes() == data  # never cut back, unlike a torn append


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
    lines[4] = encode_record({"routes": [[4, "10.9.9.9", "239.1.1.1", "eth0", ["eth0"]]]})
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
    path.write_bytes(journal + encode_record({"ops": [["del", *R1.key]]})[:-3])
    sf, loaded = reload(path)
    assert loaded.torn_tail
    assert (loaded.good_length, loaded.ops_since_snapshot) == (len(journal), 1)
    assert len(loaded.routes) == 2501
    sf.append([SetThreshold("eth2", 9)])
    sf.close()
    assert path.read_bytes() == journal + encode_record({"ops": [["threshold", "eth2", 9]]})
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
    args = {"source": draw(st.sampled_from(sources)), "group": draw(st.sampled_from(groups))}
    return AddRoute.of(validate.route({**args, "iif": names[0], "oifs": names[1:]}))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            adds(),
            st.just(DelRoute((6, "2001:db8::1", "ff3e::1:2"))),
            st.builds(SetThreshold, NAMES, st.integers(1, 255)),
        ),
        max_size=6,
    )
)
def test_changes_are_encoded_as_json_encodes_their_ops(changes: list[Any]) -> None:
    assert encode_changes(changes) == encode_record({"ops": [change_op(c) for c in changes]})
