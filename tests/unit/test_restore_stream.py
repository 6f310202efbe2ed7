"""Tests for a restore streamed from the state file's read (controller.RestoreStream): the
same model and kernel as reading the whole file first, whatever the file's records do
after the routes streamed (delete, replace, change a threshold, add wildcards); a kernel
refusal while the file is read, and a corrupt line after routes went in."""

from __future__ import annotations

import gc
import json
import logging
import sys
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import wildcards
from mfcd.controller import Controller, RestoreStream
from mfcd.errors import StateError
from mfcd.model import AddRoute, Change, DelRoute, Ports, Route, RouteKey, SetThreshold
from mfcd.state import HEADER, _snapshot_records, change_op, encode_record, parse

from .conftest import FakeKernel, FakeState, observable
from .test_restore_runs import LINKS, key, statuses

COMBOS = [
    Ports("a", ("b",)),
    Ports("b", ("a", "c")),
    Ports("c", ("d",)),
    Ports("a", ("x",)),  # x does not exist: pending
]


def state_file(
    snapshot: dict[RouteKey, Ports], changes: list[list[Change]], spaced: bool = False
) -> bytes:
    """A version 2 file: a snapshot (chunked above 1,000 routes), then one record a change;
    `spaced`: the changes' records written with spaces, as by hand (mfcd writes none)."""
    routes = [Route(f, s, g, *p, t) for (f, s, g, t), p in snapshot.items()]
    lines = list(_snapshot_records(routes, {"b": 3}, 1))
    seq = len(lines)
    for change in changes:
        seq += 1
        record = {"seq": seq, "ops": [change_op(c) for c in change]}
        if spaced:
            body = json.dumps(record).replace('["', '[ "').encode()
            lines.append(b"%08x %s\n" % (zlib.crc32(body), body))
        else:
            lines.append(encode_record(record))
    return HEADER + b"".join(lines)


def restored(data: bytes, first: int | None, kernel: FakeKernel | None = None) -> Controller:
    """A controller restored from `data`: streamed (handing over every `first` routes), or
    with None the file read whole first."""
    ctl = Controller(kernel or FakeKernel(), FakeState())
    if first is None:
        ctl.restore(parse(data), LINKS)
        return ctl
    stream = RestoreStream(ctl, LINKS, first=first)
    loaded = parse(data, stream=stream)
    ctl.restore(loaded, LINKS, stream)
    return ctl


def by_device(kernel: Any) -> tuple[set[Any], dict[RouteKey, Any]]:
    """The kernel's VIFs and entries by device rather than VIF number."""
    vifs = {(f, t, ifindex) for (f, t, _), ifindex in kernel.vifs.items()}
    entries = {
        k: (
            kernel.vifs.get((k[0], k[3], e.parent)),
            # (IPv6 entries have an oif set, no TTLs: a threshold changes IPv4's only)
            {kernel.vifs[(k[0], k[3], v)]: ttl if k[0] == 4 else 1 for v, ttl in e.ttls.items()},
        )
        for k, e in kernel.mfcs.items()
    }
    return vifs, entries


def assert_same(streamed: Controller, whole: Controller, *, numbered: bool) -> None:
    """The same routes, states and kernel; with `numbered` the same VIF numbers too (a file
    that only adds routes is streamed in its own order)."""
    assert statuses(streamed.router) == statuses(whole.router)
    assert by_device(streamed.kernel) == by_device(whole.kernel)
    assert streamed.router.thresholds == whole.router.thresholds
    if numbered:
        assert observable(streamed.router) == observable(whole.router)
        got, want = streamed.kernel, whole.kernel
        assert isinstance(got, FakeKernel) and isinstance(want, FakeKernel)
        assert got.view() == want.view()


def snapshot_of(sizes: list[tuple[int, int]]) -> dict[RouteKey, Ports]:
    routes: dict[RouteKey, Ports] = {}
    for family, combo, size in [(4 + 2 * (i % 2), c, n) for i, (c, n) in enumerate(sizes)]:
        for _ in range(size):
            routes[key(family, len(routes), None)] = COMBOS[combo]
    return routes


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 700)), min_size=1, max_size=4),
    adds=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 300)), max_size=3),
    first=st.integers(1, 900),
)
def test_a_file_of_new_routes_streams_to_the_restore_of_the_whole_file(
    sizes: list[tuple[int, int]], adds: list[tuple[int, int]], first: int
) -> None:
    """A snapshot (up to 2,800 routes: chunked) and changes that only add new routes:
    handed over as read, the very model, VIF numbers and kernel of a restore of the
    whole file."""
    snapshot = snapshot_of(sizes)
    n = len(snapshot)
    changes: list[list[Change]] = []
    for combo, size in adds:
        changes.append(
            [AddRoute(key(4, n + i, 7 if combo == 2 else None), COMBOS[combo]) for i in range(size)]
        )
        n += size
    data = state_file(snapshot, changes)
    stream_ctl = restored(data, first)
    assert_same(stream_ctl, restored(data, None), numbered=True)


OPS = st.sampled_from(("add", "replace", "del", "threshold"))


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 400)), min_size=1, max_size=3),
    ops=st.lists(st.tuples(OPS, st.integers(0, 3), st.integers(0, 10**6)), max_size=12),
    per_record=st.integers(1, 4),
    first=st.integers(1, 500),
    spaced=st.booleans(),
)
def test_records_that_delete_replace_or_set_thresholds_end_up_as_the_whole_file(
    sizes: list[tuple[int, int]],
    ops: list[tuple[str, int, int]],
    per_record: int,
    first: int,
    spaced: bool,
) -> None:
    """After routes were streamed, records that delete or replace some of them (or ones
    not streamed yet), add new ones and change thresholds: the model and kernel put right
    at the end hold what a restore of the whole file does. (A threshold op as mfcd writes
    it stops the stream before it starts; `spaced` ones are found only when read.)"""
    snapshot = snapshot_of(sizes)
    keys = list(snapshot)
    n = len(keys)
    flat: list[Change] = []
    for op, combo, pick in ops:
        old = keys[pick % len(keys)]
        if op == "add":
            flat.append(AddRoute(key(4, n, None), COMBOS[combo]))
            keys.append(key(4, n, None))
            n += 1
        elif op == "replace":
            flat.append(AddRoute(old, COMBOS[combo]))
        elif op == "del":
            flat.append(DelRoute(old))
        else:
            flat.append(SetThreshold("abcd"[combo], 1 + pick % 5))
    changes = [flat[i : i + per_record] for i in range(0, len(flat), per_record)]
    data = state_file(snapshot, changes, spaced)
    assert_same(restored(data, first), restored(data, None), numbered=False)


def test_a_file_of_new_routes_is_streamed_whole() -> None:
    """The stream hands the routes over as they are read, `first` or more at a time,
    and the kernel gets them in runs."""
    snapshot = snapshot_of([(0, 2500)])
    changes: list[list[Change]] = [
        [AddRoute(key(6, 3000 + i, None), COMBOS[1]) for i in range(900)]
    ]
    data = state_file(snapshot, changes)
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    stream = RestoreStream(ctl, LINKS, first=1000)
    loaded = parse(data, stream=stream)
    assert stream.started and stream.clean
    # (1,000 and 1,000 handed over, then 500 + 900: all of them before the end)
    assert len(ctl.router.routes) == 3400 and not stream.keys
    ctl.restore(loaded, LINKS, stream)
    assert len(ctl.router.installed) == 3400
    assert sum(kernel.runs) == 3400 - 2  # (each combination's first route on its own)


def test_a_short_file_is_restored_whole_without_streaming() -> None:
    data = state_file(snapshot_of([(0, 300)]), [])
    ctl = Controller(FakeKernel(), FakeState())
    stream = RestoreStream(ctl, LINKS, first=1000)
    loaded = parse(data, stream=stream)
    assert not stream.started and ctl.router.routes == {}
    ctl.restore(loaded, LINKS, stream)
    assert len(ctl.router.installed) == 300


def test_a_wildcard_route_stops_the_stream_and_is_expanded_at_the_end() -> None:
    """A record of routes whose oifs name a wildcard: its pattern is not installed as
    read; the end of the file expands it over the interfaces that exist."""
    snapshot = snapshot_of([(0, 1200)])
    wild: list[Change] = [
        AddRoute(key(4, 5000 + i, None), wildcards.pattern("c", ("a*",))) for i in range(150)
    ]
    data = state_file(snapshot, [wild])
    links = {**LINKS, "a1": 5, "a2": 6}
    ctl = Controller(FakeKernel(), FakeState())
    stream = RestoreStream(ctl, links, first=100)
    ctl.restore(parse(data, stream=stream), links, stream)
    assert not stream.clean
    plain = Controller(FakeKernel(), FakeState())
    plain.restore(parse(data), links)
    assert_same(ctl, plain, numbered=False)
    assert ctl.router.routes[key(4, 5000, None)] == Ports("c", ("a", "a1", "a2"))


@pytest.mark.parametrize("nth", [1, 3, 4, 40, 1500])
def test_a_kernel_refusal_while_the_file_is_read_restores_route_by_route(nth: int) -> None:
    """The kernel refuses an operation of a run handed over while the file is read: what
    went in is undone, nothing more is handed over, and the end restores every route one
    at a time, as a restore of the whole file does."""
    data = state_file(snapshot_of([(0, 2500)]), [])
    kernel = FakeKernel(fail_at=nth)
    ctl = Controller(kernel, FakeState())
    stream = RestoreStream(ctl, LINKS, first=1000)
    loaded = parse(data, stream=stream)
    assert stream.failed is not None and ctl.router.routes == {} and ctl.refused_at_start
    assert kernel.mfcs == {} and kernel.vifs == {}
    ctl.restore(loaded, LINKS, stream)
    assert {s[0] for s in statuses(ctl.router).values()} == {"installed"}
    assert len(ctl.router.installed) == 2500 and len(kernel.mfcs) == 2500


def test_a_corrupt_line_after_routes_went_in_takes_them_out() -> None:
    """Line 4 is damaged after 2,000 routes were handed over: the read fails as it
    would, and abandon_stream leaves neither entries nor VIFs in the kernel."""
    lines = state_file(snapshot_of([(0, 2500)]), []).split(b"\n")
    lines[4] = lines[4].replace(b"198.18", b"198.19", 1)  # (its checksum no longer matches)
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    stream = RestoreStream(ctl, LINKS, first=1000)
    with pytest.raises(StateError, match="line 5 is corrupt"):
        parse(b"\n".join(lines), stream=stream)
    assert stream.started and len(kernel.mfcs) == 2000
    ctl.abandon_stream(stream)
    assert kernel.mfcs == {} and kernel.vifs == {} and ctl.router.routes == {}


def test_a_threshold_op_in_the_journal_reads_the_file_whole_first() -> None:
    """A threshold changed after the snapshot would rewrite every IPv4 route handed over
    on its interface: such a file is not streamed (one write a route, as before)."""
    data = state_file(snapshot_of([(0, 2500)]), [[SetThreshold("b", 5)]])
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    stream = RestoreStream(ctl, LINKS, first=1000)
    loaded = parse(data, stream=stream)
    assert not stream.started
    ctl.restore(loaded, LINKS, stream)
    assert len(kernel.mfcs) == 2500 and len(kernel.applied) == 2500 + 2
    assert {ttl for e in kernel.mfcs.values() for ttl in e.ttls.values()} == {5}


def test_routes_moved_to_a_new_interface_at_the_vif_limit_go_in_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """All 32 VIFs in use by the routes handed over, then a record moves every route of
    one interface to another: the file needs 32 VIFs, as the restore of the whole file
    does; the old ones are deleted before the moved ones go back, so the VIFs suffice and
    nothing is restored route by route."""
    caplog.set_level(logging.WARNING)
    links = {f"e{i}": i + 1 for i in range(32)} | {"o": 100, "f": 101}
    snapshot = {key(4, i, None): Ports(f"e{i % 31}", ("o",)) for i in range(310)}
    moved: list[Change] = [
        AddRoute(k, Ports("f", ("o",))) for k, p in snapshot.items() if p.iif == "e0"
    ]
    data = state_file(snapshot, [moved])
    ctl = Controller(FakeKernel(), FakeState())
    stream = RestoreStream(ctl, links, first=100)
    ctl.restore(parse(data, stream=stream), links, stream)
    assert stream.started and not stream.clean
    whole = Controller(FakeKernel(), FakeState())
    whole.restore(parse(data), links)
    assert_same(ctl, whole, numbered=False)
    assert "restoring all routes at once failed" not in caplog.text


def test_a_refusal_while_the_file_is_read_keeps_nothing_of_it_alive() -> None:
    """The refusal kept by the stream holds no traceback (its frames held the file's bytes
    and routes), nor the undo of what was taken back: with the cyclic collector off and
    frozen, as at start, nothing of the read outlives it."""
    data = state_file(snapshot_of([(0, 2500)]), [])
    base = sys.getrefcount(data)
    ctl = Controller(FakeKernel(fail_at=4), FakeState())
    collecting = gc.isenabled()
    gc.disable()
    try:
        stream = RestoreStream(ctl, LINKS, first=1000)
        loaded = parse(data, stream=stream)
        ctl.restore(loaded, LINKS, stream)
        assert stream.failed == "injected failure"
        assert stream.steps == [] and stream.undo == []
        del loaded, stream
        assert sys.getrefcount(data) == base
    finally:
        if collecting:
            gc.enable()
