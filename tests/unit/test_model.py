"""Tests for mfcd.model: VIF allocation, step order, pending/degraded routes, transactions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd.dataplane import execute, undo
from mfcd.errors import InvalidArgument, MfcdError, NotFound, VifLimit
from mfcd.model import (
    DEFAULT_TABLE,
    DEFAULT_THRESHOLD,
    MAXVIFS,
    NO_SETTING,
    AddMfc,
    AddVif,
    DelMfc,
    DelVif,
    Ports,
    Route,
    Router,
    Step,
)
from tests.unit.conftest import FakeKernel, check_undo, observable, router_with_links, run

GROUP4 = "239.1.1.1"
GROUP6 = "ff0e::1"


def r4(n: int, iif: str, *oifs: str) -> Route:
    return Route(4, f"10.0.0.{n}", GROUP4, iif, oifs, 253)


def r6(n: int, iif: str, *oifs: str) -> Route:
    return Route(6, f"2001:db8::{n}", GROUP6, iif, oifs, 254)


def actions(steps: list[Step]) -> list[str]:
    return [s.action for s in steps]


def vif_ops(steps: list[Step], kind: type[AddVif | DelVif]) -> list[tuple[int, str]]:
    """(index, interface) of the steps that add (AddVif) or delete (DelVif) a VIF, in order."""
    return [(op.vifi, op.interface) for s in steps if isinstance(op := s.op, kind)]


def vifi(router: Router, name: str, family: int = 4, table: int | None = None) -> int:
    vif = router.vif_of(family, name, table)
    assert vif is not None, f"no VIF for {name}"
    return vif.vifi


def check_invariants(router: Router) -> None:
    """What must hold between transactions, whatever happened before."""
    for slots in router.slots.values():
        names = [n for n in slots if n is not None]
        assert len(names) == len(set(names)), "two VIFs for one interface"
        assert names, "a table with no VIF keeps no slots"
    for (family, table, name), vif in router.vifs.items():
        assert (vif.family, vif.table, vif.interface) == (family, table, name)
        assert router.slots[(family, table)][vif.vifi] == name
        users = {
            k
            for k in router.installed
            if k[0] == family and k[3] == table and name in router.routes[k].interfaces
        }
        assert vif.refs == len(users), f"VIF {name} refs {vif.refs} != routes using it {users}"
        assert vif.ifindex == router.links.get(name)
    for (family, table), slots in router.slots.items():
        for slot in slots:
            if slot is not None:
                assert (family, table, slot) in router.vifs
    assert set(router.installed) <= set(router.routes)
    for key, entry in router.installed.items():
        route = router.routes[key]
        assert entry.parent == vifi(router, route.iif, key[0], key[3])
        assert {v for v, _ in entry.oifs} == {vifi(router, n, key[0], key[3]) for n in route.oifs}
    for key in router.routes:
        if key not in router.installed:
            route = router.routes[key]
            missing = {n for n in route.interfaces if n not in router.links}
            waiting = {n for n, keys in router.waiting.items() if key in keys}
            # It waits for some missing interface (link_up re-checks them all), never a present one.
            assert waiting <= missing, f"{key} waits for {waiting}, misses only {missing}"
            assert bool(waiting) == bool(missing) or key in router.blocked


# --- VIF allocation ------------------------------------------------------------------------------


def test_vifs_are_allocated_lowest_free_first() -> None:
    router = router_with_links("a", "b", "c", "d", "e")
    steps = run(router, router.add_route, r4(1, "a", "b", "c"))
    assert vif_ops(steps, AddVif) == [
        (0, "a"),
        (1, "b"),
        (2, "c"),
    ]
    run(router, router.add_route, r4(2, "a", "d"))
    assert vifi(router, "d") == 3
    steps = run(router, router.del_route, (4, "10.0.0.1", GROUP4, 253))
    assert vif_ops(steps, DelVif) == [(1, "b"), (2, "c")]
    steps = run(router, router.add_route, r4(3, "e", "b"))
    assert vif_ops(steps, AddVif) == [
        (1, "e"),
        (2, "b"),
    ]
    check_invariants(router)


def test_preferred_slots_number_vifs_as_a_table_taken_over_does() -> None:
    # The previous mfcd's table: a at 2, b at 0, gone at 1 (no route names it any more).
    router = router_with_links("a", "b", "c", "d")
    router.prefer_slots(
        {(4, 253, 2): "a", (4, 253, 0): "b", (4, 253, 1): "gone", (6, 254, 5): None}
    )
    steps = run(router, router.add_route, r4(1, "a", "b", "c"))
    # c is new: the lowest index no other interface prefers (1 stays free for "gone").
    assert vif_ops(steps, AddVif) == [(2, "a"), (0, "b"), (3, "c")]
    # Once every free index but a preferred one is taken, that one is used all the same.
    router.prefer_slots({(4, 253, i): f"x{i}" for i in range(32)})
    assert vif_ops(run(router, router.add_route, r4(2, "a", "d")), AddVif) == [(1, "d")]
    # Other tables and families are numbered as always.
    assert vif_ops(run(router, router.add_route, r6(1, "b", "a")), AddVif) == [(0, "b"), (1, "a")]
    router.prefer_slots({})
    assert router.preferred == {}
    check_invariants(router)


def test_avoided_slots_are_left_free_until_prefer_slots_ends_it() -> None:
    # A table taken over: the restore claimed a at 0 and b at 1; the kernel's VIFs 2 and 3
    # (one with its device unknown, as in an IPv6 table other than the default) are left
    # for the drift check to remove, and the entries sending to them with them.
    router = router_with_links("a", "b", "c", "d")
    run(router, router.add_route, r4(1, "a", "b"))
    router.avoid_slots([(4, 253, 0), (4, 253, 1), (4, 253, 2), (4, 253, 3)])
    # A new interface meanwhile would receive their traffic at 2 or 3: it takes 4.
    assert vif_ops(run(router, router.add_route, r4(2, "a", "c")), AddVif) == [(4, "c")]
    # Other tables and families are numbered as always.
    assert vif_ops(run(router, router.add_route, r6(1, "b", "a")), AddVif) == [(0, "b"), (1, "a")]
    # The drift check removed them: the lowest free index again.
    router.prefer_slots({})
    assert router.avoided == {}
    assert vif_ops(run(router, router.add_route, r4(3, "a", "d")), AddVif) == [(2, "d")]
    check_invariants(router)


def test_families_allocate_vifs_independently() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    steps = run(router, router.add_route, r6(1, "b", "a"))
    assert vif_ops(steps, AddVif) == [(0, "b"), (1, "a")]
    assert {s.op.family for s in steps} == {6}
    assert (vifi(router, "a", 6), vifi(router, "a", 4)) == (1, 0)


def test_routes_share_vifs_and_the_last_user_releases_them() -> None:
    router = router_with_links("a", "b", "c")
    first = run(router, router.add_route, r4(1, "a", "b"))
    second = run(router, router.add_route, r4(2, "b", "a", "c"))
    assert actions(first) == ["add_vif", "add_vif", "add_mfc"]
    assert actions(second) == ["add_vif", "add_mfc"]  # only c is new
    assert len(router.vifs) == 3
    a = router.vif_of(4, "a")
    assert a is not None
    assert a.refs == 2  # r4(1, "a") and r4(2, "a")

    steps = run(router, router.del_route, r4(1, "a").key)
    assert actions(steps) == ["del_mfc"]  # a and b are still used by the second route
    steps = run(router, router.del_route, r4(2, "a").key)
    assert actions(steps) == ["del_mfc", "del_vif", "del_vif", "del_vif"]
    assert sorted(vif_ops(steps, DelVif)) == [(0, "a"), (1, "b"), (2, "c")]
    assert router.vifs == {}
    assert (4, 253) not in router.slots  # the table's last VIF is gone


def test_an_interface_never_gets_two_vifs() -> None:
    router = router_with_links("a", "b", "c")
    for n, (iif, *oifs) in enumerate([("a", "b"), ("b", "a"), ("c", "a", "b"), ("a", "c")]):
        run(router, router.add_route, r4(n, iif, *oifs))
    assert sorted(n for n in router.slots[(4, 253)] if n is not None) == ["a", "b", "c"]
    check_invariants(router)


# --- step order ----------------------------------------------------------------------------------


def test_vifs_are_added_before_the_entry_and_released_after_its_deletion() -> None:
    router = router_with_links("a", "b", "c")
    steps = run(router, router.add_route, r4(1, "a", "b", "c"))
    assert actions(steps) == ["add_vif", "add_vif", "add_vif", "add_mfc"]
    entry = steps[-1].op
    assert entry == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 1), (2, 1)), 253)
    assert steps[-1].undo == DelMfc(4, "10.0.0.1", GROUP4, 253)

    steps = run(router, router.del_route, (4, "10.0.0.1", GROUP4, 253))
    assert actions(steps) == ["del_mfc", "del_vif", "del_vif", "del_vif"]
    assert steps[0].undo == entry


def test_replace_writes_one_entry_and_releases_only_unused_vifs() -> None:
    router = router_with_links("a", "b", "c", "d")
    run(router, router.add_route, r4(1, "a", "b", "c"))
    run(router, router.add_route, r4(2, "d", "b"))  # keeps b in use after the replace
    before = router.entry(r4(1, "a").key)

    steps = run(router, router.add_route, r4(1, "a", "c", "d"))
    assert actions(steps) == ["replace_mfc"]  # d already has a VIF, b is still used by route 2
    assert steps[0].undo == before
    assert steps[0].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((2, 1), (3, 1)), 253)

    steps = run(router, router.add_route, r4(1, "a", "d"))
    assert actions(steps) == ["replace_mfc", "del_vif"]
    assert vif_ops(steps, DelVif) == [(2, "c")]
    check_invariants(router)


def test_a_replace_releases_the_old_route_s_vifs_in_its_order() -> None:
    # In the old route's order, not a set's (which changes with the hash seed): the plan
    # shown and the kernel's writes are the same from one run of mfcd to the next.
    oifs = ("o7", "o2", "o5", "o0", "o3", "o6", "o1", "o4")
    router = router_with_links("a", *oifs, "g")
    run(router, router.add_route, r4(1, "a", *oifs))
    steps = run(router, router.add_route, r4(1, "a", "g"))
    assert actions(steps) == ["add_vif", "replace_mfc", *["del_vif"] * len(oifs)]
    assert [name for _, name in vif_ops(steps, DelVif)] == list(oifs)


def test_replace_with_a_new_interface_adds_its_vif_first() -> None:
    router = router_with_links("a", "b", "c")
    run(router, router.add_route, r4(1, "a", "b"))
    steps = run(router, router.add_route, r4(1, "a", "c"))
    assert actions(steps) == ["add_vif", "replace_mfc", "del_vif"]
    assert (steps[0].op, steps[2].op) == (AddVif(4, 2, "c", 3, 1, 253), DelVif(4, 1, "b", 253))


def test_adding_the_same_route_again_changes_nothing() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    before = observable(router)
    assert run(router, router.add_route, r4(1, "a", "b")) == []
    assert observable(router) == before


def test_deleting_an_unknown_route_raises_not_found() -> None:
    router = Router()
    router.begin()
    with pytest.raises(NotFound):
        router.del_route((4, "10.0.0.1", GROUP4, 253))


# --- pending and degraded routes -----------------------------------------------------------------


def test_pending_route_is_installed_when_its_iif_appears() -> None:
    router = router_with_links("a")
    assert run(router, router.add_route, r4(1, "x", "a")) == []
    status = router.status(r4(1, "a").key)
    assert (status.state, status.missing) == ("pending", ("x",))
    assert status.reason == "waiting for x"
    assert router.vifs == {}  # nothing is reserved for a pending route

    steps = run(router, router.link_up, "x", 7)
    assert actions(steps) == ["add_vif", "add_vif", "add_mfc"]
    assert steps[0].op == AddVif(4, 0, "x", 7, DEFAULT_THRESHOLD, 253)
    assert router.status(r4(1, "a").key).state == "installed"
    assert router.waiting == {}
    check_invariants(router)


def test_a_route_whose_iif_and_an_oif_are_missing_is_pending_then_degraded() -> None:
    router = router_with_links("a")
    assert run(router, router.add_route, r4(1, "x", "a", "y")) == []
    status = router.status(r4(1, "a").key)
    assert (status.state, status.missing, status.reason) == (
        "pending",
        ("x", "y"),
        "waiting for x, y",
    )

    steps = run(router, router.link_up, "x", 7)  # the iif: installed, y's index reserved
    assert actions(steps) == ["add_vif", "add_vif", "add_mfc"]
    assert steps[2].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 1), (2, 1)), 253)
    status = router.status(r4(1, "a").key)
    assert (status.state, status.missing) == ("degraded", ("y",))
    assert router.waiting == {}
    check_invariants(router)


def test_a_route_added_with_a_missing_oif_is_degraded_with_its_index_reserved() -> None:
    """The same state an installed route is in once that oif is deleted: it forwards out of
    the oifs that exist, whether mfcd restarted in between or not."""
    router = router_with_links("a", "b")
    steps = run(router, router.add_route, r4(1, "a", "b", "x"))
    assert actions(steps) == ["add_vif", "add_vif", "add_mfc"]  # no VIF for x in the kernel
    assert steps[2].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 1), (2, 1)), 253)
    status = router.status(r4(1, "a").key)
    assert (status.state, status.missing, status.reason) == ("degraded", ("x",), "waiting for x")
    x = router.vif_of(4, "x")
    assert x is not None and (x.vifi, x.ifindex, x.refs) == (2, None, 1)
    assert router.waiting == {}

    # Another interface does not get index 2 while the entry refers to it.
    run(router, router.link_up, "c", 9)
    run(router, router.add_route, r4(3, "c", "a"))
    assert vifi(router, "c") == 3

    steps = run(router, router.link_up, "x", 42)  # as after a deletion: VIF added, re-issued
    assert actions(steps) == ["readd_vif", "reissue_mfc"]
    assert steps[0].op == AddVif(4, 2, "x", 42, DEFAULT_THRESHOLD, 253)
    assert steps[1].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 1), (2, 1)), 253)
    assert router.status(r4(1, "a").key).state == "installed"
    check_invariants(router)


def test_a_degraded_route_is_the_same_after_an_oif_deletion_and_after_a_fresh_add() -> None:
    """What a restart does: the model built again from the routes with the interface gone
    holds what the model that saw the deletion holds (same VIF indexes, entries, states)."""
    routes = [r4(1, "a", "b", "c"), r6(2, "a", "c", "b"), r4(3, "b", "c")]
    lived = router_with_links("a", "b", "c")
    for route in routes:
        run(lived, lived.add_route, route)
    run(lived, lived.link_down, "c")
    fresh = router_with_links("a", "b")
    for route in routes:
        run(fresh, fresh.add_route, route)
    assert dict(fresh.installed) == dict(lived.installed)
    assert fresh.vifs == lived.vifs and fresh.slots == lived.slots
    for route in routes:
        assert fresh.status(route.key) == lived.status(route.key)
        assert fresh.status(route.key).state == "degraded"
    assert actions(run(fresh, fresh.link_up, "c", 5)) == actions(run(lived, lived.link_up, "c", 5))
    assert dict(fresh.installed) == dict(lived.installed)


def test_a_route_that_cannot_reserve_an_index_for_its_missing_oif_is_refused() -> None:
    """Trial 14 F8: a route whose missing oifs would need more VIFs than are free is
    refused with vif_limit, as the same route with its oifs there is (it was accepted,
    pending with "all 32 are in use" when 4 were), and nothing changes."""
    names = [f"e{i}" for i in range(4)]
    router = router_with_links(*names)
    run(router, router.add_route, r4(1, "e0", *names[1:]))  # 4 VIFs in use
    missing = [f"w{i}" for i in range(29)]
    before = observable(router)
    router.begin()
    with pytest.raises(VifLimit) as raised:
        router.add_route(r4(2, "e0", *missing))
    router.rollback()
    message = str(raised.value)
    assert "cannot add 29 new IPv4 VIFs (w0, w1, w2, w3 and 25 more)" in message
    assert "only 28 of the 32 VIFs of table 253 are free" in message
    assert observable(router) == before
    assert r4(2, "e0").key not in router.routes and router.blocked == {}
    # The same with the iif missing too (no VIF is taken while it is: refused all the same).
    router.begin()
    with pytest.raises(VifLimit, match="cannot add 30 new IPv4 VIFs"):
        router.add_route(r4(3, "x", *missing))
    router.rollback()
    assert observable(router) == before
    # One that fits is accepted, degraded (its oifs reserved).
    run(router, router.add_route, r4(4, "e0", *missing[:28]))
    assert router.status(r4(4, "e0").key).state == "degraded"
    check_invariants(router)


def test_a_template_whose_iif_is_missing_is_refused_when_it_could_not_get_its_vifs() -> None:
    names = [f"e{i}" for i in range(4)]
    router = router_with_links(*names)
    run(router, router.add_route, r4(1, "e0", *names[1:]))
    key = (4, "*", "239.9.0.0/16", 253, "x")
    router.begin()
    with pytest.raises(VifLimit, match="only 28 of the 32 VIFs of table 253 are free"):
        router.add_template(key, Ports("x", tuple(f"w{i}" for i in range(28))))
    router.rollback()
    assert key not in router.templates
    run(router, router.add_template, key, Ports("x", tuple(f"w{i}" for i in range(27))))
    assert router.status(key).state == "pending"


def test_link_down_degrades_keeps_the_index_and_link_up_readds_it() -> None:
    router = router_with_links("a", "b", "c")
    run(router, router.add_route, r4(1, "a", "b"))
    entry = router.entry(r4(1, "a").key)

    assert run(router, router.link_down, "b") == []  # the kernel removed the VIF itself
    status = router.status(r4(1, "a").key)
    assert (status.state, status.missing) == ("degraded", ("b",))
    b = router.vif_of(4, "b")
    assert b is not None
    assert (b.vifi, b.ifindex) == (1, None)
    assert router.slots[(4, 253)][1] == "b"

    # Another interface must not get index 1 while the entry still refers to it.
    run(router, router.add_route, r4(2, "c", "a"))
    assert vifi(router, "c") == 2

    steps = run(router, router.link_up, "b", 42)
    assert actions(steps) == ["readd_vif", "reissue_mfc"]
    assert steps[0].op == AddVif(4, 1, "b", 42, DEFAULT_THRESHOLD, 253)
    assert steps[0].undo == DelVif(4, 1, "b", 253)
    assert steps[1].op == entry
    assert steps[1].undo == entry
    assert router.status(r4(1, "a").key).state == "installed"
    check_invariants(router)


def test_link_up_with_the_same_ifindex_is_a_no_op() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    assert run(router, router.link_up, "b", 2) == []


def test_deleting_a_degraded_route_frees_the_index_without_del_vif() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    run(router, router.link_down, "b")
    steps = run(router, router.del_route, r4(1, "a").key)
    assert actions(steps) == ["del_mfc", "del_vif"]
    assert vif_ops(steps, DelVif) == [(0, "a")]
    assert (4, 253) not in router.slots  # both indexes free: the table holds no VIF
    check_invariants(router)


def test_rename_releases_the_vif_in_the_kernel_and_keeps_the_index() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    steps = run(router, router.link_down, "b", False)
    assert steps == [
        Step(DelVif(4, 1, "b", 253), AddVif(4, 1, "b", 2, DEFAULT_THRESHOLD, 253), "del_vif")
    ]
    assert router.status(r4(1, "a").key).state == "degraded"
    assert router.slots[(4, 253)][1] == "b"


def test_vif_limit_is_32_per_family() -> None:
    names = [f"e{i}" for i in range(MAXVIFS + 1)]
    router = router_with_links(*names)
    run(router, router.add_route, r4(1, names[0], *names[1:MAXVIFS]))
    run(router, router.add_route, r6(1, names[0], *names[1:MAXVIFS]))  # IPv6 has its own 32
    before = observable(router)
    router.begin()
    with pytest.raises(
        VifLimit, match=r"1 new IPv4 VIF \(e32\): only 0 of the 32 VIFs of table 253 are"
    ):
        router.add_route(r4(2, names[0], names[MAXVIFS]))
    router.rollback()
    assert observable(router) == before


def test_route_blocked_by_the_vif_limit_is_installed_once_an_index_is_free() -> None:
    names = [f"e{i}" for i in range(MAXVIFS)]
    router = router_with_links(*names)
    run(router, router.add_route, r4(2, "x", names[1]))  # pending (its iif), room enough
    run(router, router.add_route, r4(1, names[0], *names[1:]))  # then the table fills
    assert run(router, router.link_up, "x", 99) == []  # link events never fail
    status = router.status(r4(2, "x").key)
    assert (status.state, status.missing) == ("pending", ())
    # (how many it needs and how many are free: not "all 32 are in use" whatever the count)
    assert status.reason == "no free VIF: needs 1 new IPv4 VIF in table 253, 0 of the 32 are free"
    run(router, router.add_route, r4(1, names[0], *names[1:-1]))  # frees the last index
    steps = run(router, router.retry_blocked)
    assert actions(steps) == ["add_vif", "add_mfc"]
    assert router.blocked == {}
    check_invariants(router)


def test_set_threshold_reissues_ipv4_entries_with_the_new_ttl() -> None:
    router = router_with_links("a", "b", "c")
    run(router, router.add_route, r4(1, "a", "b", "c"))
    run(router, router.add_route, r6(1, "a", "b"))
    before = router.entry(r4(1, "a").key)
    steps = run(router, router.set_threshold, "b", 5)
    assert actions(steps) == ["reissue_mfc"]
    assert steps[0].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 5), (2, 1)), 253)
    assert steps[0].undo == before
    assert run(router, router.set_threshold, "b", 5) == []
    assert run(router, router.set_threshold, "unused", 9) == []
    assert router.threshold("unused") == 9


@pytest.mark.parametrize("ttl", [0, 256, -1])
def test_set_threshold_rejects_out_of_range(ttl: int) -> None:
    router = Router()
    router.begin()
    with pytest.raises(InvalidArgument):
        router.set_threshold("a", ttl)


def test_setting_the_default_threshold_removes_the_setting() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, Route(4, "10.0.0.1", "239.1.1.1", "a", ("b",), 253))
    run(router, router.set_threshold, "b", 5)
    steps = run(router, router.set_threshold, "b", DEFAULT_THRESHOLD)
    assert [step.action for step in steps] == ["reissue_mfc"]
    assert router.thresholds == {}
    assert router.threshold("b") == DEFAULT_THRESHOLD


def test_new_vifs_use_the_interface_threshold() -> None:
    router = router_with_links("a", "b")
    run(router, router.set_threshold, "b", 64)
    steps = run(router, router.add_route, r4(1, "a", "b"))
    assert steps[1].op == AddVif(4, 1, "b", 2, 64, 253)
    assert steps[2].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 64),), 253)


def test_a_threshold_of_one_table_wins_there_and_only_there() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    in_100 = Route(4, "10.0.0.1", GROUP4, "a", ("b",), 100)
    run(router, router.add_route, in_100)
    run(router, router.set_threshold, "b", 5)  # every table: both entries rewritten
    steps = run(router, router.set_threshold, "b", 9, 100)
    assert [s.op for s in steps] == [AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 9),), 100)]
    assert (router.threshold("b", 100), router.threshold("b", 253)) == (9, 5)
    # The every-table setting changes the tables without one of their own only.
    steps = run(router, router.set_threshold, "b", 7)
    assert [s.op for s in steps] == [AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 7),), 253)]
    # 1 in a table is a setting of its own (it wins over 7 there) ...
    steps = run(router, router.set_threshold, "b", 1, 100)
    assert [s.op for s in steps] == [AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 1),), 100)]
    assert router.table_thresholds == {("b", 100): 1}
    # ... and removing it gives the table the every-table one back.
    steps = run(router, router.set_threshold, "b", NO_SETTING, 100)
    assert [s.op for s in steps] == [AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 7),), 100)]
    assert router.table_thresholds == {}
    assert run(router, router.set_threshold, "b", NO_SETTING, 100) == []


def test_a_new_vif_of_a_table_uses_that_tables_threshold() -> None:
    router = router_with_links("a", "b")
    run(router, router.set_threshold, "b", 64, 100)
    steps = run(router, router.add_route, Route(4, "10.0.0.1", GROUP4, "a", ("b",), 100))
    assert steps[1].op == AddVif(4, 1, "b", 2, 64, 100)
    assert steps[2].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 64),), 100)
    steps = run(router, router.add_route, r4(1, "a", "b"))  # the default table: no setting
    assert steps[2].op == AddMfc(4, "10.0.0.1", GROUP4, 0, ((1, 1),), 253)


@pytest.mark.parametrize("ttl", [256, -1])
def test_a_threshold_of_one_table_out_of_range_is_refused(ttl: int) -> None:
    router = Router()
    router.begin()
    with pytest.raises(InvalidArgument):
        router.set_threshold("a", ttl, 100)


def test_changes_need_an_open_transaction() -> None:
    router = router_with_links("a")
    router.add_route(r4(1, "x", "a"))  # pending: no savepoint needed, recorded nowhere
    with pytest.raises(RuntimeError):
        router.link_up("x", 5)
    router.begin()
    with pytest.raises(RuntimeError):
        router.begin()


# --- undo of every step --------------------------------------------------------------------------


def test_every_step_undo_inverts_its_op() -> None:
    router = router_with_links("a", "b", "c", "d")
    kernel = FakeKernel()
    plans: list[tuple[Any, ...]] = [
        (router.add_route, r4(1, "a", "b", "c")),
        (router.add_route, r6(1, "a", "b")),
        (router.add_route, r4(1, "a", "c", "d")),
        (router.set_threshold, "c", 9),
        (router.link_down, "d", False),
        (router.link_up, "d", 11),
        (router.del_route, (6, "2001:db8::1", GROUP6, 254)),
        (router.del_route, (4, "10.0.0.1", GROUP4, 253)),
    ]
    seen: set[str] = set()
    for method, *args in plans:
        steps = run(router, method, *args)
        for step in steps:
            match step.op, step.undo:
                case AddVif(f, v, n, _, _), DelVif(f2, v2, n2):
                    assert (f, v, n) == (f2, v2, n2)
                case DelVif(f, v, n), AddVif(f2, v2, n2, _, _):
                    assert (f, v, n) == (f2, v2, n2)
                case AddMfc(f, s, g, _, _), DelMfc(f2, s2, g2):
                    assert (f, s, g) == (f2, s2, g2)
                case AddMfc(f, s, g, _, _), AddMfc(f2, s2, g2, _, _):
                    assert (f, s, g) == (f2, s2, g2)
                case DelMfc(f, s, g), AddMfc(f2, s2, g2, _, _):
                    assert (f, s, g) == (f2, s2, g2)
                case _:
                    pytest.fail(f"{step.action}: {step.undo} does not invert {step.op}")
            seen.add(step.action)
        check_undo(kernel, steps)
        assert undo(kernel, []) == []
        execute(kernel, steps)
    assert seen == {"add_vif", "del_vif", "add_mfc", "replace_mfc", "del_mfc", "readd_vif"} | {
        "reissue_mfc"
    }


# --- property tests ------------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")
SOURCES = {4: ("10.0.0.1", "10.0.0.2", "10.0.0.3"), 6: ("2001:db8::1", "2001:db8::2")}
GROUPS = {4: ("239.1.1.1", "239.2.2.2"), 6: ("ff0e::1", "ff05::2")}


@st.composite
def routes(draw: st.DrawFn) -> Route:
    family = draw(st.sampled_from((4, 6)))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=4, unique=True))
    source = draw(st.sampled_from(SOURCES[family]))
    group = draw(st.sampled_from(GROUPS[family]))
    table = draw(st.sampled_from((DEFAULT_TABLE[family], 100)))
    return Route(family, source, group, names[0], tuple(names[1:]), table)


Action = tuple[Any, ...]
route_changes = st.one_of(
    st.tuples(st.just("add"), routes()),
    st.tuples(st.just("del"), routes()),
    st.tuples(st.just("threshold"), st.sampled_from(NAMES), st.integers(1, 4)),
    st.tuples(
        st.just("threshold"), st.sampled_from(NAMES), st.integers(0, 3), st.sampled_from((100,))
    ),
)
link_events = st.one_of(
    st.tuples(st.just("up"), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("down"), st.sampled_from(NAMES), st.booleans()),
)


def perform(router: Router, action: Action) -> list[Step]:
    match action:
        case ("add", Route() as route):
            return router.add_route(route)
        case ("del", Route() as route):
            return router.del_route(route.key)
        case ("threshold", str(name), int(ttl)):
            return router.set_threshold(name, ttl)
        case ("threshold", str(name), int(ttl), int(table)):  # (ttl 0: NO_SETTING)
            return router.set_threshold(name, ttl, table)
        case ("up", str(name), int(ifindex)):
            return router.link_up(name, ifindex)
        case ("down", str(name), bool(dropped)):
            return router.link_down(name, dropped)
    raise AssertionError(f"unknown action {action}")


def transaction(router: Router, todo: list[Action]) -> list[Step] | None:
    """Perform `todo` in one transaction; None (rolled back) when the model refuses one."""
    router.begin()
    steps: list[Step] = []
    try:
        for action in todo:
            steps += perform(router, action)
    except MfcdError:
        router.rollback()
        return None
    return steps


@settings(max_examples=300, deadline=None)
@given(
    committed=st.lists(st.one_of(route_changes, link_events), max_size=15),
    rolled_back=st.lists(st.one_of(route_changes, link_events), min_size=1, max_size=15),
)
def test_rollback_restores_everything(committed: list[Action], rolled_back: list[Action]) -> None:
    router = Router()
    for action in committed:
        if transaction(router, [action]) is not None:
            router.commit()
    before = observable(router)
    if transaction(router, rolled_back) is not None:
        router.rollback()
    assert observable(router) == before
    router.begin()  # the transaction is closed
    router.rollback()


@dataclass
class World:
    """The netns the model is told about: devices (name -> ifindex) and the kernel's tables."""

    kernel: FakeKernel = field(default_factory=lambda: FakeKernel(set()))
    devices: dict[str, int] = field(default_factory=dict)
    next_ifindex: int = 1

    def link_event(self, router: Router, name: str, kind: str, dropped: bool) -> list[Step]:
        assert self.kernel.devices is not None
        if kind == "up":
            if name in self.devices:
                return []
            ifindex = self.devices[name] = self.next_ifindex
            self.next_ifindex += 1
            self.kernel.devices.add(ifindex)
            return run(router, router.link_up, name, ifindex)
        if name not in self.devices:
            return []
        ifindex = self.devices.pop(name)
        if dropped:  # deleted: the kernel drops its VIFs; else renamed away, still a device
            self.kernel.devices.discard(ifindex)
            self.kernel.device_gone(ifindex)
        return run(router, router.link_down, name, dropped)

    def check(self, router: Router) -> None:
        """The kernel forwards every installed route exactly as the model says, and nothing else."""
        kernel = self.kernel
        assert router.links == self.devices
        present = {(v.family, v.table, v.vifi): v.ifindex for v in router.iter_vifs() if v.ifindex}
        assert kernel.vifs == present
        assert set(kernel.mfcs) == set(router.installed)
        for key, entry in router.installed.items():
            route = router.routes[key]
            family = key[0]
            table = key[3]
            assert kernel.mfcs[key].parent == vifi(router, route.iif, family, table)
            oifs = frozenset(
                (self.devices[n], router.threshold(n, table) if family == 4 else 0)
                for n in route.oifs
                if n in self.devices
            )
            assert kernel.forwarding(key) == (self.devices.get(route.iif), oifs), route
            if family == 4:  # IPv6 entries have no TTLs (struct mf6cctl holds a MIF set)
                ttls = {vifi(router, n, 4, table): router.threshold(n, table) for n in route.oifs}
                assert dict(entry.oifs) == ttls, f"the model's record of {route} is stale"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.lists(route_changes, min_size=1, max_size=3), link_events),
        max_size=30,
    )
)
def test_kernel_forwards_what_the_model_says(events: list[Any]) -> None:
    router = Router()
    world = World()
    for event in events:
        if isinstance(event, tuple):
            _, name, arg = event
            steps = world.link_event(router, name, event[0], arg if event[0] == "down" else True)
        else:
            planned = transaction(router, event)
            if planned is None:
                continue
            steps = planned
            router.commit()
        check_undo(world.kernel, steps)
        execute(world.kernel, steps)
        if router.blocked and any(isinstance(s.op, DelVif) for s in steps):
            execute(world.kernel, run(router, router.retry_blocked))
        check_invariants(router)
        world.check(router)


def test_link_events_reach_the_kernel_through_the_world() -> None:
    # A fixed scenario for the simulation above: degrade, rename, re-create.
    router = Router()
    world = World()
    for name in ("a", "b", "c"):
        execute(world.kernel, world.link_event(router, name, "up", True))
    changes: list[list[Action]] = [
        [("add", r4(1, "a", "b", "c"))],
        [("threshold", "c", 3)],
        [("add", r6(1, "b", "a"))],
    ]
    for change in changes:
        steps = transaction(router, change)
        assert steps is not None
        execute(world.kernel, steps)
        router.commit()
        world.check(router)
    execute(world.kernel, world.link_event(router, "b", "down", True))
    world.check(router)
    # Written while b has no VIF: the kernel drops b from the entry for good, until re-issued.
    execute(world.kernel, run(router, router.set_threshold, "b", 2))
    world.check(router)
    execute(world.kernel, world.link_event(router, "c", "down", False))
    world.check(router)
    for name in ("b", "c"):
        execute(world.kernel, world.link_event(router, name, "up", True))
        world.check(router)
    assert world.kernel.forwarding(r4(1, "a").key) == (1, frozenset({(4, 2), (5, 3)}))


# --- repair: what `mfcctl sync` does from what the kernel holds ---------------------------------


def _in_sync(
    router: Router,
) -> tuple[dict[tuple[int, int, int], str | None], dict[Any, Any]]:
    """The kernel's view when it holds exactly what the model wants."""
    vifs: dict[tuple[int, int, int], str | None] = {
        (v.family, v.table, v.vifi): v.interface
        for v in router.iter_vifs()
        if v.ifindex is not None
    }
    mfc = {key: router.expected(key) for key in router.installed}
    return vifs, mfc


def test_repair_finds_nothing_when_the_kernel_agrees_even_with_an_iif_gone() -> None:
    router = router_with_links("a", "b", "c")
    run(router, router.add_route, r4(1, "a", "b", "c"))
    run(router, router.link_down, "a")  # degraded: the kernel reports no iif, oifs still there
    vifs, mfc = _in_sync(router)
    assert mfc[r4(1, "a").key] == (None, {2: 1, 3: 1})
    assert router.repair(vifs, mfc) == []


def test_repair_re_adds_a_missing_vif_and_reissues_its_entries() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    vifs, mfc = _in_sync(router)
    del vifs[(4, 253, 1)]
    steps = router.repair(vifs, mfc)
    assert actions(steps) == ["readd_vif", "reissue_mfc"]
    assert vif_ops(steps, AddVif) == [(1, "b")]


def test_repair_moves_a_vif_that_points_at_another_device() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    vifs, mfc = _in_sync(router)
    vifs[(4, 253, 1)] = "b-renamed"  # the device was renamed and the event missed
    steps = router.repair(vifs, mfc)
    assert actions(steps) == ["del_vif", "readd_vif", "reissue_mfc"]
    assert vif_ops(steps, DelVif) == [(1, "b-renamed")] and vif_ops(steps, AddVif) == [(1, "b")]


def test_repair_removes_what_the_model_does_not_own() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    vifs, mfc = _in_sync(router)
    vifs[(4, 253, 5)] = "x"
    stray = (4, "10.9.9.9", GROUP4, 253)
    mfc[stray] = (1, {2: 1})
    mfc[r4(1, "a").key] = (1, {})  # our entry lost its oif
    steps = router.repair(vifs, mfc)
    assert sorted(actions(steps)) == ["del_mfc", "del_vif", "reissue_mfc"]
    assert vif_ops(steps, DelVif) == [(5, "x")]
    assert [s.op for s in steps if s.action == "del_mfc"] == [DelMfc(*stray)]


def test_repair_takes_an_unnamed_vif_for_its_own_and_removes_an_unnamed_stray() -> None:
    # Another IPv6 table than the default: the kernel says which MIF indexes exist, not
    # their devices (None).
    router = router_with_links("a", "b", "c")
    run(router, router.add_route, Route(6, "2001:db8::1", "ff3e::1", "a", ("b", "c"), 100))
    vifs, mfc = _in_sync(router)
    unnamed: dict[tuple[int, int, int], str | None] = dict.fromkeys(vifs)
    assert router.repair(unnamed, mfc) == []
    del unnamed[(6, 100, 1)]  # b's MIF removed behind mfcd's back
    unnamed[(6, 100, 7)] = None  # another program's MIF
    steps = router.repair(unnamed, mfc)
    assert actions(steps) == ["readd_vif", "del_vif", "reissue_mfc"]
    assert vif_ops(steps, AddVif) == [(1, "b")] and vif_ops(steps, DelVif) == [(7, "?")]


def test_tracked_links_are_the_interfaces_routes_use_or_wait_for() -> None:
    router = router_with_links("a", "b", "c")
    run(router, router.add_route, r4(1, "a", "b"))
    run(router, router.add_route, r4(2, "a", "z"))  # pending: waits for z
    tracked = router.tracked_links()
    assert tracked == {"a": 1, "b": 2, "z": None}
    # An interface no route names comes and goes: nothing the kernel's tables depend on.
    run(router, router.link_up, "x", 9)
    run(router, router.link_down, "c")
    assert router.tracked_links() == tracked
    run(router, router.link_up, "z", 10)  # the pending route's interface appears
    assert router.tracked_links() == {"a": 1, "b": 2, "z": 10}
    run(router, router.link_down, "b")  # deleted: its VIF index stays reserved for it
    assert router.tracked_links() == {"a": 1, "b": None, "z": 10}


def test_version_counts_the_transactions_that_changed_something() -> None:
    router = router_with_links("a", "b")
    version = router.version
    run(router, router.add_route, r4(1, "a", "b"))
    assert router.version == version + 1
    run(router, router.add_route, r4(1, "a", "b"))  # the same route again: no change
    run(router, router.link_up, "a", 1)  # an interface already known
    assert router.version == version + 1
    router.begin()
    router.add_route(r4(2, "a", "b"))
    router.rollback()  # rolled back: nothing changed
    assert router.version == version + 1


def test_users_are_the_installed_routes_on_any_of_the_interfaces() -> None:
    router = router_with_links("a", "b", "c", "d")
    for route in (r4(1, "a", "b"), r4(2, "c", "a"), r4(3, "c", "d"), r4(4, "z", "a")):
        run(router, router.add_route, route)
    assert router.users([(4, 253, "a")]) == [r4(1, "a").key, r4(2, "a").key]  # not the pending one
    assert router.users([(4, 253, "b"), (4, 253, "d")]) == [r4(1, "a").key, r4(3, "a").key]
    assert router.users([(6, 254, "a")]) == [] and router.users([]) == []


# --- tables ---------------------------------------------------------------------------------------


def in_table(route: Route, table: int) -> Route:
    return route._replace(table=table)


def test_each_table_has_its_own_vifs_and_an_interface_may_be_a_vif_in_several() -> None:
    router = router_with_links("a", "b", "c")
    default, other = r4(1, "a", "b"), in_table(r4(1, "c", "a"), 100)  # the same (S,G)
    run(router, router.add_route, default)
    steps = run(router, router.add_route, other)
    assert [(s.action, s.op.table) for s in steps] == [
        ("add_vif", 100),
        ("add_vif", 100),
        ("add_mfc", 100),
    ]
    assert vif_ops(steps, AddVif) == [(0, "c"), (1, "a")]  # indexes of table 100's own
    assert (vifi(router, "a"), vifi(router, "a", 4, 100)) == (0, 1)
    assert set(router.routes) == {default.key, other.key}
    assert router.tables() == {(4, 253), (4, 100)}
    check_invariants(router)
    # Deleting the last route of table 100 releases its VIFs there only.
    steps = run(router, router.del_route, other.key)
    assert [(s.action, s.op.table) for s in steps] == [
        ("del_mfc", 100),
        ("del_vif", 100),
        ("del_vif", 100),
    ]
    assert router.tables() == {(4, 253)}
    assert router.status(default.key).state == "installed"
    check_invariants(router)


def test_the_vif_limit_counts_the_new_vifs_needed_and_the_free_ones() -> None:
    """A route that needs more VIFs than are free says how many of each (not that all 32
    are in use when only 6 are), and changes nothing."""
    used = [f"u{i}" for i in range(6)]
    wanted = [f"d{i}" for i in range(30)]
    router = router_with_links(*used, *wanted)
    run(router, router.add_route, r4(1, used[0], *used[1:]))  # 6 VIFs in use
    before = observable(router)
    router.begin()
    with pytest.raises(VifLimit) as raised:
        router.add_route(r4(2, used[0], *wanted))  # 30 new, 26 free
    router.rollback()
    message = str(raised.value)
    assert "30 new IPv4 VIFs (d0, d1, d2, d3 and 26 more)" in message
    assert "only 26 of the 32 VIFs of table 253 are free" in message
    assert "in use" not in message and "earlier" not in message
    assert observable(router) == before


def test_a_request_that_runs_out_of_vifs_says_what_its_earlier_changes_took() -> None:
    """A batch (or reload) whose routes together need more VIFs than are free: the route
    that finds the table full says how many the request's earlier routes took."""
    names = [f"e{i}" for i in range(40)]
    router = router_with_links(*names)
    run(router, router.add_route, r4(1, "e0", "e1"))  # 2 in use
    before = observable(router)
    router.begin()
    router.add_route(r4(2, "e0", *names[2:22]))  # 20 more: 10 free
    with pytest.raises(VifLimit) as raised:
        router.add_route(r4(3, "e0", *names[22:40]))  # 18 more
    router.rollback()
    message = str(raised.value)
    assert "cannot add 18 new IPv4 VIFs" in message
    assert (
        "only 10 of the 32 VIFs of table 253 are free;"
        " earlier routes of this batch or reload took 20" in message
    )
    assert observable(router) == before


def test_the_vif_limit_is_per_table() -> None:
    names = [f"e{i}" for i in range(MAXVIFS + 1)]
    router = router_with_links(*names)
    run(router, router.add_route, r4(1, "e0", *names[1:MAXVIFS]))  # 32 VIFs: the default full
    with pytest.raises(VifLimit, match="only 0 of the 32 VIFs of table 253 are free"):
        run(router, router.add_route, r4(2, "e0", names[MAXVIFS]))
    run(router, router.add_route, in_table(r4(2, "e0", names[MAXVIFS]), 7))
    assert router.status(in_table(r4(2, "e0"), 7).key).state == "installed"
    with pytest.raises(VifLimit, match="only 30 of the 32 VIFs of table 7 are free"):
        run(router, router.add_route, in_table(r4(3, "e1", *names[2:]), 7))
    check_invariants(router)


def test_a_link_event_reaches_the_vifs_of_every_table() -> None:
    router = router_with_links("a", "b")
    run(router, router.add_route, r4(1, "a", "b"))
    run(router, router.add_route, in_table(r6(1, "b", "a"), 100))
    run(router, router.link_down, "b")
    steps = run(router, router.link_up, "b", 12)
    readded = [(s.op.family, s.op.table) for s in steps if s.action == "readd_vif"]
    assert sorted(readded) == [(4, 253), (6, 100)]
    check_invariants(router)
