"""A large change is journaled as several records, replayed as one: all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfcd import state
from mfcd.errors import StateError
from mfcd.model import AddRoute, Change, DelRoute, Ports, Route, RouteKey
from mfcd.state import StateFile, encode_record

OPS = 4  # ops per record in these tests
BEFORE = Route(4, "10.0.0.1", "239.1.1.1", "eth0", ("eth1",), 253)


@pytest.fixture(autouse=True)
def small_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "RECORD_OPS", OPS)


def bulk(count: int) -> list[Change]:
    """`count` adds, and the delete of BEFORE among them."""
    changes: list[Change] = [
        AddRoute.of(Route(4, "10.0.1.1", f"239.2.0.{i}", "eth0", ("eth1",), 253))
        for i in range(count - 1)
    ]
    changes.insert(count // 2, DelRoute(BEFORE.key))
    return changes


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line.split(b" ", 1)[1]) for line in path.read_bytes().splitlines()[1:]]


def keys(path: Path) -> tuple[set[RouteKey], bool]:
    """The routes a start finds in the file, and whether it dropped a torn tail."""
    loaded = StateFile(str(path)).load()
    return set(loaded.routes), loaded.torn_tail


def journal_with_bulk(path: Path, count: int) -> tuple[int, StateFile]:
    """BEFORE in a snapshot, then a bulk change of `count` ops: the length before it."""
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([BEFORE], {})
    start = path.stat().st_size
    sf.append(bulk(count))
    return start, sf


def test_a_change_larger_than_a_record_takes_several_and_replays_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    _, sf = journal_with_bulk(path, 2 * OPS + 1)
    assert sf.syncs == 3  # one a record, its newline written with the next
    sf.append(bulk(2))  # a small change after it: one record
    sf.close()
    got = records(path)[1:]
    assert [(r.get("parts"), r.get("part"), len(r["ops"])) for r in got] == [  # type: ignore[arg-type]
        (3, None, OPS),
        (None, 2, OPS),
        (None, 3, 1),
        (None, None, 2),
    ]
    assert [r["seq"] for r in got] == [2, 3, 4, 5]
    routes, torn = keys(path)
    assert not torn
    assert routes == {c.key for c in bulk(2 * OPS + 1) if isinstance(c, AddRoute)}


def test_a_large_change_cut_anywhere_is_not_there_at_all(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    start, sf = journal_with_bulk(path, 3 * OPS)
    sf.close()
    data = path.read_bytes()
    whole = {c.key for c in bulk(3 * OPS) if isinstance(c, AddRoute)}
    for cut in range(start, len(data) + 1):
        path.write_bytes(data[:cut])
        routes, torn = keys(path)
        if cut >= len(data) - 1:  # whole, with or without the newline mfcd writes at a stop
            assert (routes, torn) == (whole, False)
        else:
            assert routes == {BEFORE.key}, cut  # all or nothing
            assert torn == (cut > start)
        if cut > start:  # the next start cuts the change off before appending
            sf = StateFile(str(path))
            sf.load()
            if cut < len(data) - 1:
                assert path.stat().st_size == start
            sf.close()


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([{"parts": 3}, {"part": 2}, {}], "a change ends after part 2 of 3"),
        ([{"part": 2}], "part 2 of a change where it does not belong"),
        ([{"parts": 2}, {"part": 3}], "part 3 of a change where it does not belong"),
        ([{"parts": 2}, {"parts": 2}, {"part": 2}], "a change begins after part 1 of 2"),
        ([{"parts": 1}], "malformed record"),
    ],
)
def test_parts_out_of_place_are_corruption(
    tmp_path: Path, parts: list[dict[str, int]], reason: str
) -> None:
    path = tmp_path / "state.journal"
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([BEFORE], {})
    sf.close()
    op = ["del", 4, BEFORE.source, BEFORE.group]
    extra = b"".join(encode_record({"seq": n, **p, "ops": [op]}) for n, p in enumerate(parts, 2))
    path.write_bytes(path.read_bytes() + extra)
    with pytest.raises(StateError, match=reason):
        StateFile(str(path)).load()


def test_a_compaction_writes_a_large_change_made_meanwhile_in_parts(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    sf = StateFile(str(path))
    sf.load()
    sf.write_snapshot([BEFORE], {})
    job = sf.start_compaction({BEFORE.key: Ports(BEFORE.iif, BEFORE.oifs)}, {})
    sf.append(bulk(2 * OPS))
    job.write()
    assert sf.finish_compaction(job)
    sf.close()
    assert [r.get("parts") for r in records(path)[1:]] == [2, None]
    assert keys(path) == ({c.key for c in bulk(2 * OPS) if isinstance(c, AddRoute)}, False)
