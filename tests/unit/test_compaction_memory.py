"""Tests for the compaction's copy of the routes: the thread that writes it also frees it,
a piece at a time, so that the event loop never spends the tens of ms of freeing it whole."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mfcd.model import Ports, RouteKey
from mfcd.state import SNAPSHOT_CHUNK, StateFile, route_columns

PORTS = Ports("eth0", ("eth1",))


def key(n: int) -> RouteKey:
    return (4, "198.18.0.1", f"239.16.{n >> 8}.{n & 255}", 253)


def test_the_writing_thread_frees_the_copy_it_wrote(tmp_path: Path) -> None:
    sf = StateFile(str(tmp_path / "state.journal"))
    sf.load()
    copy = {key(n): PORTS for n in range(25_000)}
    job = sf.start_compaction(copy, {})
    job.write()
    assert job.error is None
    assert job.routes == {} and copy == {}  # emptied, a piece at a time, by the thread
    assert sf.finish_compaction(job)
    sf.close()
    loaded = StateFile(str(tmp_path / "state.journal")).load()
    assert set(loaded.routes) == {key(n) for n in range(25_000)}


def mixed_routes(rng: random.Random, n: int) -> dict[RouteKey, Ports]:
    """Valid routes of both families, several tables, iifs and oif sets, in a random order."""
    routes: dict[RouteKey, Ports] = {}
    names = ["eth0", "eth1", "eth2", "br-x", "veth7"]
    while len(routes) < n:
        k = rng.randrange(1 << 16)
        iif = rng.choice(names)
        oifs = tuple(sorted(rng.sample([x for x in names if x != iif], rng.randrange(1, 4))))
        if rng.random() < 0.5:
            source, group = f"198.18.{k >> 8}.{k & 255}", f"239.{rng.randrange(256)}.0.{k & 255}"
            routes[(4, source, group, rng.choice([253, 253, 7, 100]))] = Ports(iif, oifs)
        else:
            source, group = f"2001:db8::{k:x}", f"ff3e::{rng.randrange(1 << 16):x}"
            routes[(6, source, group, rng.choice([254, 254, 9]))] = Ports(iif, oifs)
    return routes


@pytest.mark.parametrize("n", [0, 1, 700, SNAPSHOT_CHUNK, 2 * SNAPSHOT_CHUNK + 3])
def test_a_compaction_from_the_table_s_columns_writes_what_one_from_its_copy_writes(
    tmp_path: Path, n: int
) -> None:
    table = mixed_routes(random.Random(n), n)
    before = list(table.items())
    files = []
    for how in ("copy", "columns"):
        sf = StateFile(str(tmp_path / f"{how}.journal"))
        sf.load()
        routes = dict(table) if how == "copy" else route_columns(table)
        job = sf.start_compaction(routes, {"eth0": 3}, templates={})
        assert job.count == n
        job.write()
        assert job.error is None and job.routes == {}
        if how == "columns":
            assert routes == ([], [])  # emptied by the thread, a piece at a time
        assert sf.finish_compaction(job)
        sf.close()
        files.append((tmp_path / f"{how}.journal").read_bytes())
    assert files[0] == files[1]
    assert list(table.items()) == before  # the table itself is only read
    loaded = StateFile(str(tmp_path / "columns.journal")).load()
    assert list(loaded.routes.items()) == before
