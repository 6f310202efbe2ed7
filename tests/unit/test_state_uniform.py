"""The state file reader's fast path for saved routes that share family, table and
interfaces (state._add_uniform) against its general loop: the same routes, key for key and
in the same order, or the same error, for mixed and damaged inputs."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import state
from mfcd.errors import MfcdError
from mfcd.model import AddRoute, Ports, Route, RouteKey

GOOD_ROUTE = [4, "198.18.0.1", "239.20.0.1", "r0", ["r1"]]

# Values a saved route's fields may hold in a damaged (but checksummed) file.
ODD: st.SearchStrategy[Any] = st.sampled_from(
    [None, 4.0, True, 253.0, "4", [], {}, ["r1"], "r0", 0, -1, 2**40, "x" * 3]
)


@st.composite
def routes(draw: st.DrawFn) -> list[Any]:
    """Saved routes, mostly of one shape, some with another family, table, interfaces, or a
    field damaged; a table on all or on none."""
    n = draw(st.integers(0, 40))
    family = draw(st.sampled_from([4, 6]))
    table = draw(st.sampled_from([None, 253, 254, 7, 2**32 - 1, 0]))
    iif, oifs = draw(st.sampled_from([("r0", ["r1"]), ("r1", ["r0", "r2"]), ("r2", ["r3*"])]))
    out = []
    for i in range(n):
        source = f"198.18.0.{draw(st.integers(0, 5))}" if family == 4 else f"2001:db8::{i % 4}"
        group = f"239.20.0.{draw(st.integers(0, 30))}" if family == 4 else f"ff3e::{i:x}"
        route: list[Any] = [family, source, group, iif, list(oifs)]
        if table is not None:
            route.append(table)
        if draw(st.integers(0, 30)) == 0:  # now and then another combination or a damage
            field = draw(st.integers(0, len(route) - 1))
            route[field] = draw(st.one_of(ODD, st.sampled_from([6, "r9", ["r0"], 100])))
        if draw(st.integers(0, 60)) == 0:
            route = route[:-1] if draw(st.booleans()) else [*route, 5]
        out.append(route)
    return out


def read(saved: list[Any], at: int, uniform: bool) -> tuple[list[tuple[RouteKey, Ports]], str]:
    """What _add_routes makes of `saved` (prefixed with "add" when at == 1) on top of a
    route already there: the routes in order, or the error."""
    routes: dict[RouteKey, Ports] = {(4, "198.18.0.1", "239.20.0.1", 253): Ports("r9", ("r8",))}
    rows = [["add", *r] for r in saved] if at else saved
    old = state._UNIFORM_MIN
    state._UNIFORM_MIN = 1 if uniform else 10**9
    try:
        state._add_routes(routes, rows, at)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, MfcdError) as e:
        return [], f"{type(e).__name__}: {e}"
    finally:
        state._UNIFORM_MIN = old
    return list(routes.items()), ""


@settings(max_examples=400, deadline=None)
@given(saved=routes(), at=st.sampled_from([0, 1]))
def test_the_fast_path_reads_what_the_loop_reads(saved: list[Any], at: int) -> None:
    fast, slow = read(saved, at, True), read(saved, at, False)
    assert fast == slow
    for (k1, v1), (k2, v2) in zip(fast[0], slow[0], strict=True):
        assert [type(f) for f in k1] == [type(f) for f in k2]  # (4.0 == 4, True == 1)
        assert type(v1) is type(v2)


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.__setitem__(0, 4.0),
        lambda r: r.__setitem__(0, True),
        lambda r: r.append(253.0),
        lambda r: r.__setitem__(1, 17),
        lambda r: r.__setitem__(3, ["r0"]),
        lambda r: r.__setitem__(4, "r1"),
        lambda r: r.__setitem__(4, [["r1"]]),
    ],
)
def test_one_damaged_route_among_many_is_read_as_the_loop_reads_it(damage: Any) -> None:
    saved = [[*GOOD_ROUTE[:2], f"239.20.1.{i}", "r0", ["r1"]] for i in range(100)]
    if damage is not None:
        damage(saved[57])
    assert read(saved, 0, True) == read(saved, 0, False)


def test_a_uniform_list_takes_the_fast_path_and_shares_one_ports() -> None:
    saved = [[4, f"198.18.0.{i % 3}", f"239.20.2.{i}", "r0", ["r1", "r2"], 7] for i in range(100)]
    routes: dict[RouteKey, Ports] = {}
    assert state._add_uniform(routes, saved, 0)
    assert len(routes) == 100 and len({id(p) for p in routes.values()}) == 1
    assert {k[3] for k in routes} == {7}
    assert len({id(k[1]) for k in routes}) == 3  # sources share their strings


# --- records of uniform routes read without json (state._uniform_record) -------------------------


def parsed(data: bytes, fast: bool) -> tuple[Any, ...]:
    """parse() of a whole file with or without the uniform record reader: what it loaded
    (routes in order, with their key and value types), or its error."""
    old = state._UNIFORM_BYTES
    state._UNIFORM_BYTES = 0 if fast else 10**12
    try:
        loaded = state.parse(data, "f")
    except MfcdError as e:
        return ("error", str(e))
    finally:
        state._UNIFORM_BYTES = old
    routes = [(k, tuple(map(type, k)), v, type(v)) for k, v in loaded.routes.items()]
    return (
        routes,
        loaded.ops_since_snapshot,
        loaded.seq,
        loaded.good_length,
        loaded.torn_tail,
        loaded.unterminated,
    )


def batch_file(routes: list[AddRoute], parts: int = 1) -> bytes:
    """A state file: an empty snapshot, then one change of these adds (in `parts` records)."""
    data = state.HEADER + state.encode_record({"seq": 1, "snapshot": {"routes": [], "count": 0}})
    if parts == 1:
        return data + state.encode_changes(routes, 2)
    size = -(-len(routes) // parts)
    old = state.RECORD_OPS
    state.RECORD_OPS = size
    try:
        return data + b"".join(state.encode_parts(routes, 2))
    finally:
        state.RECORD_OPS = old


def adds(n: int, family: int, table: int | None, sources: int, tag: int) -> list[AddRoute]:
    """n adds on r0 -> r1 in `table` (None: the family's default), from `sources` sources,
    each to its own group (`tag` the group's second-to-last part)."""
    table_value = table or (253 if family == 4 else 254)
    return [
        AddRoute(
            (
                family,
                f"198.18.0.{i % sources}" if family == 4 else f"2001:db8::{i % sources:x}",
                f"239.{tag}.0.{i}" if family == 4 else f"ff3e::{tag}:{i:x}",
                table_value,
            ),
            Ports("r0", ("r1",)),
        )
        for i in range(n)
    ]


def edit_record(lines: list[bytes], at: int, edit: Callable[[bytes], bytes | None]) -> None:
    """Put edit(body) in place of the body of one record of a file's lines (picked by `at`),
    checksummed again (None: the record stays as it was)."""
    line = 2 + at % (len(lines) - 3) if len(lines) > 3 else 2
    body = edit(lines[line].split(b" ", 1)[1])
    if body is not None:
        lines[line] = b"%08x %s" % (zlib.crc32(body), body)


TEXTS = st.sampled_from(
    [
        '"r1"',
        '"r\\u0031"',  # an escape: json reads it
        ' "r1"',  # whitespace
        '"r1" ',
        '"r0"',  # the iif as an oif: malformed
        '"eth*"',
        '"' + "x" * 20 + '"',  # too long for an interface name
        '"r\x01"',  # a control character: json refuses it
        '"r1","r2"',
        "",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 60),
    family=st.sampled_from([4, 6]),
    table=st.sampled_from([None, 7, 2**32 - 1]),
    parts=st.integers(1, 3),
    edits=st.lists(st.tuples(st.integers(0, 10**6), TEXTS), max_size=2),
    cut=st.integers(0, 40),
)
def test_a_uniform_record_is_read_as_json_reads_it(
    n: int, family: int, table: int | None, *, parts: int, edits: list[tuple[int, str]], cut: int
) -> None:
    """Batch records of n adds on one combination, some with the text of one oif list
    replaced (another combination, escapes, whitespace, bad names) and checksummed again,
    the file maybe cut short: the same routes, counters and errors both ways."""
    data = batch_file(adds(n, family, table, 7, 21), min(parts, n))
    lines = data.split(b"\n")
    for at, text in edits:

        def oifs_replaced(body: bytes, at: int = at, text: str = text) -> bytes | None:
            spots = [i for i in range(len(body)) if body.startswith(b'["r1"]', i)]
            if not spots:
                return None
            spot = spots[at % len(spots)]
            return body[:spot] + b"[" + text.encode() + b"]" + body[spot + 6 :]

        edit_record(lines, at, oifs_replaced)
    data = b"\n".join(lines)
    if cut:
        data = data[: max(len(state.HEADER) + 1, len(data) - cut)]
    fast = parsed(data, True)
    assert fast == parsed(data, False)
    if not cut and not edits:
        assert len(fast[0]) == n  # (not an error)


@pytest.mark.parametrize("count", [state.SNAPSHOT_CHUNK - 1, 2 * state.SNAPSHOT_CHUNK + 5])
def test_a_snapshot_of_uniform_routes_is_read_as_json_reads_it(count: int, tmp_path: Any) -> None:
    routes = [
        Route(4, f"198.18.1.{i % 9}", f"239.22.{i // 256}.{i % 256}", "r0", ("r1", "r2"), 9)
        for i in range(count)
    ]
    sf = state.StateFile(str(tmp_path / "s"))
    sf.load()
    sf.write_snapshot(routes, {})
    sf.close()
    data = (tmp_path / "s").read_bytes()
    assert parsed(data, True) == parsed(data, False)
    assert len(parsed(data, True)[0]) == count


def test_the_uniform_reader_takes_a_batchs_records() -> None:
    adds = [
        AddRoute((4, "198.18.0.1", f"239.23.0.{i}", 253), Ports("r0", ("r1",))) for i in range(200)
    ]
    body = state.encode_changes(adds, 5).split(b" ", 1)[1].rstrip(b"\n")
    record = state._uniform_record(body)
    assert record is not None and record["seq"] == 5 and len(record["ops"]) == 200
    assert record["ops"].sources == ["198.18.0.1"] * 200


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({str(i): ["x"] for i in range(16)}, "not enough values to unpack"),
        (5, "'int' object is not iterable"),
        (None, "'NoneType' object is not iterable"),
        ("x" * 20, "not enough values to unpack"),
    ],
)
def test_a_snapshot_whose_routes_are_not_a_list_is_corrupt_for_the_loops_reason(
    value: Any, reason: str, tmp_path: Any
) -> None:
    """Routes that are no list (a hand-edited file with its checksum made again) are left
    to the loop, which names what is wrong, as before the fast path."""
    path = tmp_path / "state"
    record = {"seq": 1, "snapshot": {"count": 0, "routes": value}}
    path.write_bytes(state.HEADER + state.encode_record(record))
    with pytest.raises(MfcdError, match=reason):
        state.StateFile(str(path)).load()


# Texts put in place of a source or a group in a record (the string's JSON text, quotes
# included): what the split reads and what it must leave to json.
ADDRESS_TEXTS = st.sampled_from(
    [
        '"198.18.0.9"',
        '"198.18.0.\\u0039"',  # an escape: json reads it
        '"198.18.0.9\\\\"',  # an escaped backslash
        '"198.18.\\"0.9"',  # an escaped quote
        '"198.18.0.9\x01"',  # a control character: json refuses it
        '"198.18.0.9\t"',
        '"é"',  # not ASCII: both read it
        '"x","y"',  # a field more
        '""',
        '"\\n"',
        '"198.18.0.9" ',  # whitespace between the fields
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 60),
    family=st.sampled_from([4, 6]),
    table=st.sampled_from([None, 7]),
    parts=st.integers(1, 3),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from([1, 2]), ADDRESS_TEXTS), max_size=3
    ),
)
def test_a_uniform_record_with_odd_addresses_is_read_as_json_reads_it(
    n: int, family: int, table: int | None, *, parts: int, edits: list[tuple[int, int, str]]
) -> None:
    """Batch records of n adds on one combination with the text of some sources or groups
    replaced (escapes, escaped quotes and backslashes, control characters, non-ASCII, a
    field more, whitespace) and checksummed again: the same routes or error both ways."""
    data = batch_file(adds(n, family, table, 5, 24), min(parts, n))
    lines = data.split(b"\n")
    for at, field, text in edits:

        def address_replaced(
            body: bytes, at: int = at, field: int = field, text: str = text
        ) -> bytes | None:
            ops = [i for i in range(len(body)) if body.startswith(b'["add",', i)]
            if not ops:
                return None
            start = ops[at % len(ops)]
            # the op's quotes: around "add", then the source's (field 1), the group's (2)
            quotes = [i for i in range(start, len(body)) if body[i : i + 1] == b'"'][:8]
            first, last = quotes[2 * field], quotes[2 * field + 1]
            return body[:first] + text.encode() + body[last + 1 :]

        edit_record(lines, at, address_replaced)
    data = b"\n".join(lines)
    fast = parsed(data, True)
    assert fast == parsed(data, False)
    if not edits:
        assert len(fast[0]) == n
