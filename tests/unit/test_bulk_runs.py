"""Tests for the bulk kernel/model API: Router.add_run against add_direct route by route,
runs through the fake kernel (a failure in the middle of a run rolled back by the core's
execute/undo), and the packing of a run's shared structure."""

from __future__ import annotations

import errno
import random
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import kernel
from mfcd.dataplane import execute, undo
from mfcd.errors import KernelError
from mfcd.model import (
    RUNS,
    AddMfc,
    AddMfcRun,
    DelMfc,
    DelMfcRun,
    Ports,
    RouteKey,
    Router,
    Step,
    run_head,
    run_ops,
    run_size,
    run_tail,
)

from .conftest import FakeKernel, observable, router_with_links, run


def expand_steps(steps: Iterable[Step]) -> list[Step]:
    """The steps with each run step made one step per route, as `add_direct` would have
    made them: what the route-by-route path's steps are held equal to."""
    out: list[Step] = []
    for step in steps:
        op = step.op
        if op.__class__ not in RUNS:
            out.append(step)
            continue
        undo = step.undo
        undos = run_ops(undo) if undo.__class__ in RUNS else [undo] * run_size(op)
        out += [Step(o, u, step.action) for o, u in zip(run_ops(op), undos, strict=True)]
    return out


def count_actions(steps: Iterable[Step]) -> Counter[str]:
    """Steps counted by action, a run step once per route (what a summary reports)."""
    counts: Counter[str] = Counter()
    for step in steps:
        counts[step.action] += run_size(step.op)
    return counts


LINKS = ("eth0", "eth1", "eth2", "eth3")


def key4(n: int, table: int = 253) -> RouteKey:
    return (4, f"198.18.{n // 256}.{n % 256}", f"239.16.{n // 256}.{n % 256}", table)


def key6(n: int, table: int = 254) -> RouteKey:
    return (6, f"2001:db8::{n:x}", f"ff3e::{n:x}", table)


def with_vifs(*ports: Ports, family: int = 4, table: int | None = None) -> Router:
    """A router with LINKS up whose VIFs for `ports` exist (one route each holds them)."""
    router = router_with_links(*LINKS)
    for i, p in enumerate(ports):
        key = key4(60000 + i) if family == 4 else key6(60000 + i)
        if table is not None:
            key = (*key[:3], table)
        run(router, router.add, key, router.share(p))
    return router


def state(router: Router) -> dict[str, object]:
    """What a router holds, with each VIF's reference count."""
    seen = observable(router)
    seen["refs"] = {k: v.refs for k, v in router.vifs.items()}
    seen["installed_n"] = len(router.installed)
    return seen


# --- Router.add_run against add_direct ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    family=st.sampled_from((4, 6)),
    table=st.sampled_from((None, 7)),
    runs=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(1, 40)), min_size=1, max_size=6
    ),
)
def test_add_run_is_add_direct_of_each_key(
    family: int, table: int | None, runs: list[tuple[int, int, int]]
) -> None:
    """Runs of routes on a few combinations (some whose VIFs do not exist yet: refused, and
    then added route by route, as a caller falls back): the same model and the same kernel
    writes as add_direct of every key in order."""
    combos = [
        Ports("eth0", ("eth1",)),
        Ports("eth1", ("eth0", "eth2")),
        Ports("eth2", ("eth3",)),  # eth3 has no VIF until a route adds it
        Ports("eth3", ("eth0", "eth1", "eth2")),
    ]
    a = with_vifs(combos[0], combos[1], family=family, table=table)
    b = with_vifs(combos[0], combos[1], family=family, table=table)
    fa, fb = FakeKernel(), FakeKernel()
    n = 0
    for combo, _, size in runs:
        make = key4 if family == 4 else key6
        keys = [make(n + i) if table is None else (*make(n + i)[:3], table) for i in range(size)]
        n += size
        ports_a, ports_b = a.share(combos[combo]), b.share(combos[combo])
        a.begin()
        steps_a: list[Step] = []
        if not a.add_run(keys, ports_a, steps_a):
            assert steps_a == [] and len(a._log.entries) == 0  # type: ignore[union-attr]
            for k in keys:
                steps_a += a.add(k, ports_a)
        a.commit()
        b.begin()
        steps_b: list[Step] = []
        for k in keys:
            if not b.add_direct(k, ports_b, steps_b):
                steps_b += b.add(k, ports_b)
        b.commit()
        assert expand_steps(steps_a) == steps_b
        assert count_actions(steps_a) == count_actions(steps_b)
        execute(fa, steps_a)
        execute(fb, steps_b)
    assert state(a) == state(b)
    assert fa.view() == fb.view()
    assert fa.applied == fb.applied


@settings(max_examples=80, deadline=None)
@given(
    family=st.sampled_from((4, 6)),
    size=st.integers(3, 60),
    held=st.sampled_from(("first", "two", "another", "first, keyed longer", "first, keyed other")),
)
def test_a_run_keyed_by_a_dict_is_the_run_of_its_keys(family: int, size: int, held: str) -> None:
    """add_keyed_run (a restore's whole table as the dict of the keys) makes the same model,
    in the same order, and the same step as add_run of the keys: when the model holds the
    table's first route or two (which added the VIFs) and the dict holds them and the keys
    (the dict is copied whole), and when the model holds another route or the dict holds
    other keys (it is ignored)."""
    make = key4 if family == 4 else key6
    every = [make(i) for i in range(size + 1)]
    first = 2 if held == "two" else 1
    keys = every[first:size]
    keyed = dict.fromkeys(every[:size], Ports("r9", ("r8",)))
    if held == "first, keyed longer":
        keyed = dict.fromkeys(every, Ports("r9", ("r8",)))
    elif held == "first, keyed other":
        keyed = dict.fromkeys([every[0], *every[2 : size + 1]], Ports("r9", ("r8",)))
    combo = Ports("eth0", ("eth1",))
    a, b = router_with_links(*LINKS), router_with_links(*LINKS)
    if held == "another":
        a, b = with_vifs(combo, family=family), with_vifs(combo, family=family)
    a.begin()
    b.begin()
    steps_a, steps_b = a.add(every[0], a.share(combo)), b.add(every[0], b.share(combo))
    if first == 2:
        assert a.add_direct(every[1], a.share(combo), steps_a)
        assert b.add_direct(every[1], b.share(combo), steps_b)
    assert a.add_run(keys, a.share(combo), steps_a)
    assert b.add_keyed_run(keys, b.share(combo), steps_b, keyed)
    assert steps_a == steps_b
    assert list(a.routes.items()) == list(b.routes.items())
    assert state(a) == state(b)
    a.rollback()
    b.rollback()
    assert state(a) == state(b)


def test_add_run_makes_one_step_and_one_undo_log_entry() -> None:
    ports = Ports("eth0", ("eth1", "eth2"))
    router = with_vifs(ports)
    keys = [key4(n) for n in range(100)]
    router.begin()
    steps: list[Step] = []
    assert router.add_run(keys, router.share(ports), steps)
    assert router._log is not None and len(router._log.entries) == 1
    router.commit()
    [step] = steps
    entry = router.installed[keys[0]]
    assert step == Step(
        AddMfcRun(4, 253, entry.parent, entry.oifs, keys), DelMfcRun(4, 253, keys), "add_mfc"
    )
    assert step.op.keys is keys  # type: ignore[union-attr]
    assert all(router.routes[k] is router.routes[keys[0]] for k in keys)  # one shared value


def test_add_run_refuses_and_changes_nothing() -> None:
    ports = Ports("eth0", ("eth1",))
    router = with_vifs(ports)
    shared = router.share(ports)
    known = next(iter(router.routes))
    cases: list[tuple[str, list[RouteKey], Ports]] = [
        ("empty", [], shared),
        ("a key known already", [key4(1), known, key4(2)], shared),
        ("the same key twice", [key4(1), key4(2), key4(1)], shared),
        ("two tables", [key4(1), key4(2, table=9)], shared),
        ("two families", [key4(1), key6(2, table=253)], shared),
        ("an interface without VIF", [key4(1)], router.share(Ports("eth0", ("eth3",)))),
        ("an interface that does not exist", [key4(1)], router.share(Ports("eth0", ("nope",)))),
    ]
    for why, keys, p in cases:
        before, order = state(router), list(router.routes.items())
        router.begin()
        steps: list[Step] = []
        assert not router.add_run(keys, p, steps), why
        assert steps == [] and not router.changed(), why
        router.commit()
        assert state(router) == before, why
        assert list(router.routes.items()) == order, why  # (the routes' order too)
    steps = []
    assert not router.add_run([key4(1)], shared, steps)  # no transaction open


@settings(max_examples=200, deadline=None)
@given(
    held=st.lists(st.integers(0, 60), max_size=30, unique=True),
    gone=st.lists(st.integers(0, 60), max_size=10),
    keys=st.lists(st.integers(0, 90), min_size=1, max_size=40),
)
def test_a_run_s_keys_go_into_the_routes_as_the_three_passes_put_them(
    held: list[int], gone: list[int], keys: list[int]
) -> None:
    """add_run's one probe a key (model._insert_new) against the three passes it replaced
    (a dict of the keys, a check that none is held, an update): the same answer and the
    same routes in the same order, whether the keys are new, held, deleted before (the
    dict's holes) or given twice."""
    ports = Ports("eth0", ("eth1",))
    router = with_vifs(ports)
    shared = router.share(ports)
    for n in held:
        router.routes[key4(1_000 + n)] = shared
    for n in gone:
        router.routes.pop(key4(1_000 + n), None)
    run = [key4(1_000 + n) for n in keys]
    expected = dict(router.routes)
    new = dict.fromkeys(run, shared)
    took = len(new) == len(run) and expected.keys().isdisjoint(new.keys())
    if took:
        expected.update(new)
    router.begin()
    steps: list[Step] = []
    assert router.add_run(run, shared, steps) == took
    router.commit()
    assert list(router.routes.items()) == list(expected.items())


class _FullAfter(dict[RouteKey, Ports]):
    """A routes dict whose memory runs out at its `room`-th new key."""

    room = 0

    def setdefault(self, key: RouteKey, default: Ports) -> Ports:
        if key not in self:
            self.room -= 1
            if self.room < 0:
                raise MemoryError
        return super().setdefault(key, default)


@pytest.mark.parametrize("room", [0, 1, 7, 19])
def test_a_run_that_runs_out_of_memory_leaves_the_routes_as_they_were(room: int) -> None:
    # Its undo is logged only once the keys are in: a run cut short by the dict's growth
    # takes out what it put in before the error goes on.
    ports = Ports("eth0", ("eth1",))
    router = with_vifs(ports)
    shared = router.share(ports)
    routes = _FullAfter((key4(1_000 + n), shared) for n in range(5))
    routes.room = room
    before = list(routes.items())
    router.routes = routes
    router.begin()
    with pytest.raises(MemoryError):
        router.add_run([key4(n) for n in range(20)], shared, [])
    assert list(router.routes.items()) == before


def test_rollback_of_add_run_mixed_with_other_changes_restores_all() -> None:
    ports = Ports("eth0", ("eth1",))
    router = with_vifs(ports)
    before = state(router)
    router.begin()
    steps: list[Step] = []
    assert router.add_run([key4(n) for n in range(50)], router.share(ports), steps)
    router.add(key4(50), router.ports("eth0", ("eth1", "eth2")))  # a new VIF: not direct
    router.del_route(key4(7))
    assert router.add_run([key4(n) for n in range(51, 60)], router.share(ports), steps)
    router.rollback()
    assert state(router) == before


def test_add_run_with_undo_off_then_commit() -> None:
    """A restore's transaction records nothing: the run still counts and installs."""
    ports = Ports("eth0", ("eth1",))
    router = with_vifs(ports)
    router.begin(undo=False)
    steps: list[Step] = []
    assert router.add_run([key4(n) for n in range(10)], router.share(ports), steps)
    router.commit()
    assert len(router.installed) == 11
    assert [v.refs for v in router.iter_vifs()] == [11, 11]


# --- runs through the fake kernel: all or nothing ------------------------------------------------


def test_a_failure_in_the_middle_of_a_run_is_rolled_back() -> None:
    """Steps before the run, the run refused at its 31st route: the kernel holds none of
    them afterwards, and the error says how far the run got."""
    ports = Ports("eth0", ("eth1",))
    router = router_with_links(*LINKS)
    router.begin()
    steps = router.add(key4(1000), router.share(ports))  # two VIFs and an entry
    assert router.add_run([key4(n) for n in range(100)], router.share(ports), steps)
    fake = FakeKernel(fail_at=len(steps) - 1 + 31)
    before = fake.view()
    with pytest.raises(KernelError) as caught:
        execute(fake, steps)
    router.rollback()
    assert caught.value.applied == len(steps) - 1
    assert caught.value.partial == 30
    assert caught.value.undo_failures == []
    assert fake.view() == before
    assert fake.mfcs == {} and fake.vifs == {}


@pytest.mark.parametrize("at", [1, 2, 50, 99, 100])
def test_a_run_refused_at_any_route_leaves_nothing(at: int) -> None:
    ports = Ports("eth0", ("eth1",))
    router = with_vifs(ports)
    fake = FakeKernel()
    fake.apply([router.entry(k) for k in router.installed])  # what the router holds already
    held = dict(fake.mfcs)
    router.begin()
    steps: list[Step] = []
    keys = [key4(n) for n in range(100)]
    assert router.add_run(keys, router.share(ports), steps)
    entry = router.installed[keys[0]]
    fake.refuse = {AddMfc(4, keys[at - 1][1], keys[at - 1][2], entry.parent, entry.oifs, 253)}
    with pytest.raises(KernelError) as caught:
        execute(fake, steps)
    router.rollback()
    assert (caught.value.applied, caught.value.partial) == (0, at - 1)
    assert fake.mfcs == held


def test_undo_goes_on_past_a_refused_route_of_a_run() -> None:
    """Undoing a run whose delete the kernel refuses for one route still removes the others,
    and reports the one refused."""
    keys = [key4(n) for n in range(10)]
    fake = FakeKernel()
    fake.apply([AddMfcRun(4, 253, 0, (), keys)])
    assert len(fake.mfcs) == 10
    fake.refuse = {DelMfc(*keys[3]), DelMfc(*keys[9])}
    failures = undo(fake, [None, DelMfcRun(4, 253, keys), None])
    assert [e.operation for e in failures] == ["DelMfc", "DelMfc"]
    assert set(fake.mfcs) == {keys[3], keys[9]}


def test_run_helpers() -> None:
    keys = [key4(n) for n in range(5)]
    add = AddMfcRun(4, 253, 1, ((2, 1),), keys)
    assert run_ops(add) == [AddMfc(4, k[1], k[2], 1, ((2, 1),), 253) for k in keys]
    assert run_ops(DelMfcRun(4, 253, keys)) == [DelMfc(*k) for k in keys]
    assert run_head(add, 2) == add._replace(keys=keys[:2])
    assert run_tail(DelMfcRun(4, 253, keys), 2) == DelMfcRun(4, 253, keys[2:])
    steps = [Step(add, DelMfcRun(4, 253, keys), "add_mfc"), Step(DelMfc(*keys[0]), None, "del")]
    assert count_actions(steps) == {"add_mfc": 5, "del": 1}
    assert len(expand_steps(steps)) == 6


# --- packing a run's structure once ---------------------------------------------------------------


# An MFC entry of either family: its parent VIF and its oifs with their TTL thresholds.
ENTRIES = {
    "family": st.sampled_from((4, 6)),
    "parent": st.integers(0, 31),
    "oifs": st.dictionaries(st.integers(0, 31), st.integers(1, 255), max_size=8),
    "data": st.data(),
}


def layout_and_whole(
    family: int, parent: int, oifs: dict[int, int]
) -> tuple[tuple[bytes, bytes, bytes], Callable[[str, str], bytes]]:
    """An entry's run layout (mfc_layout) and what packs one route's whole structure with
    it: pack_mfcctl (IPv4) or pack_mf6cctl (IPv6)."""
    sorted_oifs = tuple(sorted(oifs.items()))
    if family == 4:
        ttls = kernel.pack_ttls(sorted_oifs)
        return kernel.mfc_layout(4, parent, ttls), partial(
            kernel.pack_mfcctl, parent=parent, ttls=ttls
        )
    return kernel.mfc_layout(6, parent, sorted_oifs), partial(
        kernel.pack_mf6cctl, parent=parent, oifs=sorted_oifs
    )


@settings(max_examples=300, deadline=None)
@given(**ENTRIES)
def test_a_layout_packs_like_the_whole_structure(
    family: int, parent: int, oifs: dict[int, int], data: st.DataObject
) -> None:
    """head + source + mid + group + tail is pack_mfcctl (IPv4) or pack_mf6cctl (IPv6)."""
    version: Literal[4, 6] = 4 if family == 4 else 6
    s = str(data.draw(st.ip_addresses(v=version)))
    g = str(data.draw(st.ip_addresses(v=version)))
    af = kernel._AF_INET if family == 4 else kernel._AF_INET6
    (head, mid, tail), whole = layout_and_whole(family, parent, oifs)
    assert head + kernel._pton(af, s) + mid + kernel._pton(af, g) + tail == whole(s, g)


@settings(max_examples=200, deadline=None)
@given(**ENTRIES)
def test_a_run_s_structures_are_the_whole_structures_route_by_route(
    family: int, parent: int, oifs: dict[int, int], data: st.DataObject
) -> None:
    """mfc_structs packs each key's structure as pack_mfcctl (IPv4) or pack_mf6cctl (IPv6)
    packs that route alone, in order, for any addresses and entry."""
    version: Literal[4, 6] = 4 if family == 4 else 6
    address = st.ip_addresses(v=version).map(str)
    pairs = data.draw(st.lists(st.tuples(address, address), max_size=40))
    keys = [(family, s, g, 253) for s, g in pairs]
    layout, whole = layout_and_whole(family, parent, oifs)
    assert kernel.mfc_structs(family, keys, layout) == [whole(s, g) for s, g in pairs]


@pytest.mark.parametrize("family", [4, 6])
def test_a_run_s_structures_refuse_what_a_route_alone_cannot_hold(family: int) -> None:
    """An address inet_pton refuses fails mfc_structs as it fails the route alone (mfc_run
    then writes the chunk route by route, which names the route)."""
    layout = kernel.mfc_layout(4, 0, bytes(32)) if family == 4 else kernel.mfc_layout(6, 0, ())
    good = "198.18.0.1" if family == 4 else "2001:db8::1"
    for bad in ("198.18.0.300", "2001:db8::1::2", "", "198.18.0.1 "):
        with pytest.raises(OSError):
            kernel.mfc_structs(
                family, [(family, good, good, 253), (family, bad, good, 253)], layout
            )


def test_a_restore_sized_mix_of_runs_and_single_routes_matches_route_by_route() -> None:
    """1,000 routes in random order over three combinations, grouped into runs by
    combination: the same kernel as route by route."""
    rng = random.Random(7)
    combos = [Ports("eth0", ("eth1",)), Ports("eth1", ("eth2",)), Ports("eth2", ("eth0", "eth1"))]
    routes = {key4(n): combos[rng.randrange(3)] for n in range(1000)}
    a, b = with_vifs(*combos), with_vifs(*combos)
    fa, fb = FakeKernel(), FakeKernel()
    groups: dict[Ports, list[RouteKey]] = {}
    for k, p in routes.items():
        groups.setdefault(p, []).append(k)
    a.begin()
    steps: list[Step] = []
    for p, keys in groups.items():
        assert a.add_run(keys, a.share(p), steps)
    a.commit()
    execute(fa, steps)
    b.begin()
    steps = []
    for k, p in routes.items():
        assert b.add_direct(k, b.share(p), steps)
    b.commit()
    execute(fb, steps)
    assert fa.mfcs == fb.mfcs
    assert state(a)["refs"] == state(b)["refs"]
    assert a.routes == b.routes


def test_a_kernel_error_without_partial_is_zero() -> None:
    e = KernelError("x", "MRT_ADD_MFC", errno.EEXIST)
    assert (e.applied, e.partial) == (0, 0)
