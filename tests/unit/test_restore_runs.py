"""Tests for Controller.restore through runs (Router.add_run): the same model and kernel as
restoring route by route, for mixed inputs; a kernel failure inside a run still falls back
to one route at a time."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import controller
from mfcd.controller import Controller
from mfcd.dataplane import execute
from mfcd.model import RUN_MIN, Ports, RouteKey, Router, Step
from mfcd.state import Loaded

from .conftest import FakeKernel, FakeState, observable

LINKS = {"a": 1, "b": 2, "c": 3, "d": 4}
COMBOS = [
    ("a", ("b",)),
    ("b", ("a", "c")),
    ("c", ("d",)),
    ("a", ("x",)),  # x does not exist: degraded, its VIF index reserved
    ("y", ("a", "b")),  # y (the iif) does not exist: pending
    ("c", ("b", "x")),  # degraded
    ("d", ("a", "b", "c")),
]


def key(family: int, n: int, table: int | None) -> RouteKey:
    if family == 4:
        return (4, f"198.18.{n // 250}.{n % 250 + 1}", f"239.18.{n // 256}.{n % 256}", table or 253)
    return (6, f"2001:db8::{n + 1:x}", f"ff3e::18:{n:x}", table or 254)


def by_route(loaded: Loaded, links: dict[str, int]) -> tuple[Router, FakeKernel]:
    """The general path a restore took before runs: each route in the file's order,
    add_direct or restore, one transaction without undo."""
    router, kernel = Router(), FakeKernel()
    router.begin(undo=False)
    router.thresholds.update(loaded.thresholds)
    steps: list[Step] = []
    for name, ifindex in links.items():
        steps += router.link_up(name, ifindex)
    for k, ports in loaded.routes.items():
        if not router.add_direct(k, ports, steps):
            steps += router.restore(k, ports)
    execute(kernel, steps)
    router.commit()
    return router, kernel


def statuses(router: Router) -> dict[RouteKey, tuple[str, str]]:
    return {k: (s.state, s.reason) for k in router.routes for s in [router.status(k)]}


@settings(max_examples=80, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.sampled_from((4, 6)),
            st.sampled_from((None, 7)),
            st.integers(0, len(COMBOS) - 1),
            st.integers(1, 30),
        ),
        min_size=1,
        max_size=8,
    ),
    shuffle=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_a_restore_through_runs_is_the_restore_route_by_route(
    runs: list[tuple[int, int | None, int, int]], shuffle: bool, seed: int
) -> None:
    """Routes of both families and two tables on a few combinations (one pending), in runs
    or shuffled, with equal Ports that are distinct objects: the same routes, VIF numbers,
    states, and kernel entries and VIFs as route by route."""
    routes: dict[RouteKey, Ports] = {}
    n = 0
    for family, table, combo, size in runs:
        iif, oifs = COMBOS[combo]
        for _ in range(size):
            routes[key(family, n, table)] = Ports(iif, oifs)  # a new object each time
            n += 1
    items = list(routes.items())
    if shuffle:
        random.Random(seed).shuffle(items)
    loaded = Loaded(routes=dict(items), thresholds={"b": 3})
    ctl = Controller(FakeKernel(), FakeState())
    ctl.restore(Loaded(routes=dict(items), thresholds={"b": 3}), LINKS)
    router, kernel = by_route(loaded, LINKS)
    assert observable(ctl.router) == observable(router)
    assert statuses(ctl.router) == statuses(router)
    assert {k: v.refs for k, v in ctl.router.vifs.items()} == {
        k: v.refs for k, v in router.vifs.items()
    }
    got = ctl.kernel
    assert isinstance(got, FakeKernel)
    assert got.view() == kernel.view()


def test_a_restore_writes_a_combination_as_one_run() -> None:
    """1,000 routes on one combination: the VIFs and the first route one by one, then the
    other 999 as one run."""
    routes = {key(4, n, None): Ports("a", ("b",)) for n in range(1000)}
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    ctl.restore(Loaded(routes=dict(routes)), LINKS)
    assert kernel.runs == [999]
    assert set(kernel.mfcs) == set(routes)
    assert len(ctl.router.installed) == 1000


@pytest.mark.parametrize("nth", [3, 4, 5, 500, 1002])
def test_a_kernel_failure_inside_a_restore_run_starts_over_route_by_route(nth: int) -> None:
    """The kernel refuses the nth operation (two VIFs, the first entry, then the run of 999):
    what went in is undone, then every route is restored one at a time."""
    routes = {key(4, n, None): Ports("a", ("b",)) for n in range(1000)}
    kernel = FakeKernel(fail_at=nth)
    ctl = Controller(kernel, FakeState())
    ctl.restore(Loaded(routes=dict(routes)), LINKS)
    assert all(ctl.router.status(k).state == "installed" for k in routes)
    assert set(kernel.mfcs) == set(routes)
    assert len(kernel.vifs) == 2
    # nth - 1 applied, the nth refused, nth - 1 undone, then 1,002 again one at a time.
    assert kernel.calls == nth + (nth - 1) + 1002


def test_routes_of_two_families_sharing_one_ports_are_restored_as_a_run_per_family(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Routes of two families sharing one Ports object, alternating in the file: one group
    of the file's order, which cannot be one run; it goes a family at a time, each as its
    first route and then a run, with the same outcome as route by route."""
    monkeypatch.setattr(controller, "CHUNK", 7)
    shared = Ports("a", ("b",))
    routes = {key(f, n, None): shared for n in range(50) for f in (4, 6)}
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    ctl.restore(Loaded(routes=dict(routes)), LINKS)
    assert kernel.runs == [49, 49]
    assert set(kernel.mfcs) == set(routes)
    router, reference = by_route(Loaded(routes=dict(routes)), LINKS)
    assert observable(ctl.router) == observable(router)
    assert kernel.view() == reference.view()


def test_routes_whose_combinations_alternate_are_restored_one_by_one_in_chunks() -> None:
    """Each route on another combination than the one before (two upstream interfaces taking
    turns): runs of one route would cost a kernel call each, so they go one by one, CHUNK
    steps to a kernel call, as before runs; a stretch of RUN_MIN routes is a run again."""
    alternating = {key(4, n, None): Ports("ab"[n % 2], ("c",)) for n in range(3000)}
    stretch = {key(4, n, None): Ports("d", ("c",)) for n in range(3000, 3000 + RUN_MIN)}
    kernel = FakeKernel()
    applies: list[int] = []
    apply = kernel.apply

    def counted(ops: Any) -> None:
        applies.append(len(ops))
        apply(ops)

    kernel.apply = counted  # type: ignore[method-assign]
    ctl = Controller(kernel, FakeState())
    ctl.restore(Loaded(routes={**alternating, **stretch}), LINKS)
    assert kernel.runs == [RUN_MIN - 1]  # the stretch's first route adds VIF d, then a run
    assert len(applies) <= 3000 // controller.CHUNK + 3
    assert set(kernel.mfcs) == {*alternating, *stretch}
    router, reference = by_route(Loaded(routes={**alternating, **stretch}), LINKS)
    assert observable(ctl.router) == observable(router)
    assert kernel.view() == reference.view()
