"""The state file's reader as a whole: its fast paths (records of uniform routes read by a
split, lists of them added in columns) against the general path (json, a route at a time),
over whole files of mixed records, cut short, damaged, or with their checksums made again;
and a restore's model built from the loaded routes without an undo log."""

from __future__ import annotations

import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import state
from mfcd.errors import MfcdError
from mfcd.groups import Join
from mfcd.model import (
    AddRoute,
    Change,
    DelRoute,
    Ports,
    Route,
    RouteKey,
    Router,
    SetThreshold,
    Step,
)

from .conftest import router_with_links

COMBOS = [Ports("r0", ("r1",)), Ports("r1", ("r0", "r2")), Ports("r2", ("r3*",))]


def route_key(family: int, n: int, table: int | None) -> RouteKey:
    """Route n of a small pool, so that adds replace and dels remove earlier routes."""
    if family == 4:
        return (4, f"198.18.0.{n % 7}", f"239.30.{n // 256}.{n % 256}", table or 253)
    return (6, f"2001:db8::{n % 7:x}", f"ff3e::30:{n:x}", table or 254)


@st.composite
def changes(draw: st.DrawFn) -> list[Change]:
    """One acknowledged change: a run of adds on one combination (what a batch writes),
    or a few ops of every kind mixed."""
    family = draw(st.sampled_from([4, 6]))
    table = draw(st.sampled_from([None, None, 7]))
    if draw(st.booleans()):
        ports = draw(st.sampled_from(COMBOS))
        start, n = draw(st.integers(0, 40)), draw(st.integers(1, 70))
        return [AddRoute(route_key(family, start + i, table), ports) for i in range(n)]
    out: list[Change] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 4))
        k = route_key(family, draw(st.integers(0, 60)), table)
        if kind <= 1:
            out.append(AddRoute(k, draw(st.sampled_from(COMBOS))))
        elif kind == 2:
            out.append(DelRoute(k))
        elif kind == 3:
            out.append(SetThreshold(draw(st.sampled_from(["r1", "r2"])), draw(st.integers(1, 9))))
        else:
            out.append(Join(("r1", f"239.31.0.{draw(st.integers(0, 3))}", "*"), "api"))
    return out


def snapshot_lines(routes: list[Route], chunk: int, seq: int) -> list[bytes]:
    """A snapshot of `routes` in records of `chunk` routes at most, as mfcd writes it."""
    old = state.SNAPSHOT_CHUNK
    state.SNAPSHOT_CHUNK = chunk
    try:
        return list(state._snapshot_records(routes, {"r1": 3}, seq))
    finally:
        state.SNAPSHOT_CHUNK = old


def state_file(snapshot: list[Route], chunk: int, later: list[list[Change]], ops: int) -> bytes:
    """A whole file: the snapshot, then each change in records of `ops` ops at most."""
    lines = snapshot_lines(snapshot, chunk, 1)
    seq = len(lines)
    old = state.RECORD_OPS
    state.RECORD_OPS = ops
    try:
        for change in later:
            for record in state.encode_parts(change, seq + 1):
                lines.append(record)
                seq += 1
    finally:
        state.RECORD_OPS = old
    return state.HEADER + b"".join(lines)


def loaded_or_error(data: bytes, fast: bool) -> tuple[Any, ...]:
    """parse() with every fast path on, down to the smallest record (fast), or with none
    (json and the route-by-route loop): all that it loaded, with the types of the keys'
    and values' fields, or its error."""
    sizes = state._UNIFORM_BYTES, state._UNIFORM_MIN
    state._UNIFORM_BYTES, state._UNIFORM_MIN = (0, 1) if fast else (10**12, 10**12)
    try:
        loaded = state.parse(data, "f")
    except MfcdError as e:
        return ("error", str(e))
    finally:
        state._UNIFORM_BYTES, state._UNIFORM_MIN = sizes
    routes = [(k, tuple(map(type, k)), v, type(v)) for k, v in loaded.routes.items()]
    return (
        routes,
        loaded.thresholds,
        list(loaded.joins),
        list(loaded.mrdisc),
        loaded.templates,
        loaded.ops_since_snapshot,
        loaded.seq,
        loaded.good_length,
        loaded.torn_tail,
        loaded.unterminated,
        loaded.version,
    )


BYTES = b'0[],"\\x \x01'  # what a changed byte becomes


def damaged(data: bytes, how: int, at: int, byte: int) -> bytes:
    """The file with one damage: cut short anywhere, its last newline gone, a byte changed
    (with or without its line's checksum made again), a line dropped or repeated."""
    if how == 0:
        return data
    if how == 1:
        return data[: len(state.HEADER) + at % max(1, len(data) - len(state.HEADER))]
    if how == 2:
        return data.rstrip(b"\n")
    lines = data.split(b"\n")
    line = 1 + at % max(1, len(lines) - 2)
    if how in (3, 4):
        text = bytearray(lines[line])
        if not text:
            return data
        spot = 9 + byte % max(1, len(text) - 9) if how == 4 else byte % len(text)
        text[min(spot, len(text) - 1)] = BYTES[at % len(BYTES)]
        if how == 4 and len(text) > 9:  # the checksum made again: json or the split decides
            body = bytes(text[9:])
            text = bytearray(b"%08x " % zlib.crc32(body) + body)
        lines[line] = bytes(text)
    elif how == 5:
        del lines[line]
    else:
        lines.insert(line, lines[line])
    return b"\n".join(lines)


@settings(max_examples=300, deadline=None)
@given(
    family=st.sampled_from([4, 6]),
    snapshot=st.integers(0, 90),
    chunk=st.sampled_from([7, 30, 1000]),
    ports=st.sampled_from(COMBOS),
    mixed=st.booleans(),
    later=st.lists(changes(), max_size=4),
    ops=st.sampled_from([5, 25, 20_000]),
    how=st.integers(0, 6),
    at=st.integers(0, 10**6),
    byte=st.integers(0, 10**6),
)
def test_a_whole_file_is_read_by_the_fast_paths_as_by_json(
    family: int,
    snapshot: int,
    chunk: int,
    ports: Ports,
    *,
    mixed: bool,
    later: list[list[Change]],
    ops: int,
    how: int,
    at: int,
    byte: int,
) -> None:
    """A snapshot (one record, or chunks of uniform or mixed routes), then changes (batches
    in parts, mixed ops), then maybe one damage: what is loaded, counters and lengths
    included, or the error (its line and reason), is the same with and without the fast
    paths."""
    routes = [
        Route(f, source, group, *(COMBOS[i % 3] if mixed else ports), table)
        for i in range(snapshot)
        for f, source, group, table in [route_key(family, i, 7 if mixed and i % 5 == 0 else None)]
    ]
    data = damaged(state_file(routes, chunk, later, ops), how, at, byte)
    fast = loaded_or_error(data, True)
    assert fast == loaded_or_error(data, False)
    if how == 0:
        assert fast[0] != "error"


def test_the_fast_paths_are_taken_by_the_records_mfcd_writes() -> None:
    """(So that the test above compares two paths, not one with itself.)"""
    changes = [AddRoute(route_key(4, i, None), COMBOS[0]) for i in range(40)]
    body = state.encode_changes(changes, 2).split(b" ", 1)[1].rstrip(b"\n")
    sizes = state._UNIFORM_BYTES
    state._UNIFORM_BYTES = 0
    try:
        record = state._uniform_record(body)
    finally:
        state._UNIFORM_BYTES = sizes
    assert record is not None and record["ops"].__class__ is state._Uniform


def restored(keyed: dict[RouteKey, Ports], undo: bool) -> tuple[Router, list[Step]]:
    """A restore's model of a whole saved table of one combination: its first route (which
    adds the VIFs), then the others as one run keyed by the loaded dict."""
    router = router_with_links("r0", "r1")
    router.begin(undo=undo)
    keys = list(keyed)
    ports = router.share(keyed[keys[0]])
    steps: list[Step] = []
    if not router.add_direct(keys[0], ports, steps):
        steps += router.restore(keys[0], ports)
    assert router.add_keyed_run(keys[1:], ports, steps, keyed)
    return router, steps


def test_a_restore_without_undo_log_keeps_the_dict_its_keyed_run_builds() -> None:
    """Without an undo log (a restore) the model takes the dict built from the loaded one
    rather than copying it into its own: the same routes, in the same order, the same
    values and steps as with the copy; the loaded dict is left as it was."""
    keyed = {route_key(4, i, None): COMBOS[0] for i in range(500)}
    before = list(keyed.items())
    copied, copied_steps = restored(keyed, undo=True)
    taken, taken_steps = restored(keyed, undo=False)
    assert list(taken.routes.items()) == list(copied.routes.items())
    assert [type(v) for v in taken.routes.values()] == [type(v) for v in copied.routes.values()]
    assert taken_steps == copied_steps
    assert taken.routes is not keyed and list(keyed.items()) == before
    assert len(taken.installed) == 500
    taken.commit()
    assert taken.routes[route_key(4, 3, None)] is taken.routes[route_key(4, 0, None)]
