"""Tests for mfcd.state: the checksummed journal, torn tails, corruption, snapshots."""

from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path

import pytest

from mfcd import state
from mfcd.errors import StateError
from mfcd.model import Route
from mfcd.state import HEADER, StateFile, encode_record, route_op

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
    sf.append([route_op(R2), ["threshold", "eth0", 7]])
    sf.close()
    return path.read_bytes()


def reload(path: Path) -> tuple[StateFile, state.Loaded]:
    sf = StateFile(str(path))
    return sf, sf.load()


def test_missing_file_loads_empty_and_first_append_creates_it(path: Path) -> None:
    sf, loaded = reload(path)
    assert (loaded.routes, loaded.thresholds) == ({}, {})
    assert not path.exists()
    sf.append([route_op(R1)])
    sf.close()
    _, loaded = reload(path)
    assert loaded.routes == {R1.key: R1}
    assert path.read_bytes().startswith(HEADER)


def test_round_trip(path: Path, journal: bytes) -> None:
    sf, loaded = reload(path)
    assert loaded.routes == {R1.key: R1, R2.key: R2}
    assert loaded.thresholds == {"eth1": 3, "eth0": 7}
    assert loaded.ops_since_snapshot == 2
    assert sf.ops_since_snapshot == 2
    sf.append([["del", *R1.key]])
    sf.close()
    _, loaded = reload(path)
    assert loaded.routes == {R2.key: R2}
    assert loaded.ops_since_snapshot == 3


def test_snapshot_replaces_earlier_ops(path: Path, journal: bytes) -> None:
    sf, _ = reload(path)
    sf.write_snapshot([R2], {})
    assert sf.ops_since_snapshot == 0
    sf.append([route_op(R1)])
    sf.close()
    data = path.read_bytes()
    assert data.count(b"\n") == 3  # header, snapshot, one change
    _, loaded = reload(path)
    assert loaded.routes == {R2.key: R2, R1.key: R1}
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
    sf.append([["del", *R2.key]])  # the journal still takes changes
    sf.close()
    assert reload(path)[1].routes == {R1.key: R1}


def test_torn_tail_is_ignored_and_cut_before_the_next_append(path: Path, journal: bytes) -> None:
    torn = encode_record({"ops": [["del", *R1.key]]})[:-5]
    path.write_bytes(journal + torn)
    sf, loaded = reload(path)
    assert loaded.torn_tail
    assert loaded.good_length == len(journal)
    assert R1.key in loaded.routes  # the unacknowledged delete never happened
    sf.append([["threshold", "eth2", 9]])
    sf.close()
    assert path.read_bytes() == journal + encode_record({"ops": [["threshold", "eth2", 9]]})
    assert reload(path)[1].thresholds["eth2"] == 9


def test_a_complete_record_without_newline_is_still_torn(path: Path, journal: bytes) -> None:
    path.write_bytes(journal + encode_record({"ops": [["del", *R1.key]]}).rstrip(b"\n"))
    _, loaded = reload(path)
    assert loaded.torn_tail
    assert R1.key in loaded.routes


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
    ops = [route_op(R1), ["threshold", "eth1", 4]]
    record = encode_record({"ops": ops})
    for count in (1, 2000):
        path = tmp_path / f"journal-{count}"
        sf = StateFile(str(path))
        sf.load()
        routes = [
            Route(4, f"10.{n >> 8}.{n & 255}.1", "239.1.1.1", "a", ("b",)) for n in range(count)
        ]
        sf.write_snapshot(routes, {})
        size = path.stat().st_size
        sf.append(ops)
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
        sf.append([["del", *R1.key]])
    monkeypatch.undo()
    assert path.read_bytes() == journal
    assert sf.ops_since_snapshot == 2
    sf.append([["del", *R2.key]])
    sf.close()
    assert reload(path)[1].routes == {R1.key: R1}


def test_unreadable_path_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read the state file"):
        StateFile(str(tmp_path)).load()  # a directory


def test_parse_of_nothing_is_empty() -> None:
    loaded = state.parse(b"")
    assert (loaded.routes, loaded.good_length, loaded.torn_tail) == ({}, 0, False)
