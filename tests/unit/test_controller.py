"""Tests for mfcd.controller: all-or-nothing changes across model, kernel and journal."""

from __future__ import annotations

import pytest

from mfcd import controller, metrics
from mfcd.controller import Controller, KernelView
from mfcd.errors import KernelError, NotFound, StateError, VifLimit
from mfcd.model import (
    MAXVIFS,
    RUN_MIN,
    AddRoute,
    Change,
    DelMfc,
    DelRoute,
    Ports,
    Route,
    RouteKey,
    RouteStatus,
    SetThreshold,
)
from mfcd.state import Loaded, route_op
from tests.unit.conftest import FakeKernel, FakeState, MfcEntry, observable

LINKS = {"a": 1, "b": 2, "c": 3, "d": 4}


def r4(n: int, iif: str, *oifs: str) -> Route:
    return Route(4, f"10.0.0.{n}", "239.1.1.1", iif, oifs, 253)


def controller_with(*names: str, state: FakeState | None = None) -> Controller:
    """A controller whose interfaces `names` exist (ifindex = position + 1)."""
    ctl = Controller(FakeKernel(), state or FakeState())
    for ifindex, name in enumerate(names, 1):
        ctl.link_up(name, ifindex)
    return ctl


@pytest.fixture
def ctl() -> Controller:
    """Interfaces a-d exist; two routes are installed and journaled."""
    ctl = controller_with(*LINKS)
    ctl.change([AddRoute.of(r4(1, "a", "b")), AddRoute.of(r4(2, "b", "a", "c"))])
    return ctl


def fake(ctl: Controller) -> tuple[FakeKernel, FakeState]:
    assert isinstance(ctl.kernel, FakeKernel)
    assert isinstance(ctl.state, FakeState)
    return ctl.kernel, ctl.state


# A change that touches every kind of step: new VIF, new entry, replace, delete, release.
MIXED: list[Change] = [
    AddRoute.of(r4(3, "c", "d")),
    AddRoute.of(r4(1, "a", "c")),
    DelRoute(r4(2, "b").key),
    SetThreshold("d", 7),
]


def test_change_applies_kernel_then_journal(ctl: Controller) -> None:
    kernel, state = fake(ctl)
    steps = ctl.change(MIXED).steps
    assert kernel.applied[-len(steps) :] == [s.op for s in steps]
    assert state.records[-1] == [
        route_op(r4(3, "c", "d")),
        route_op(r4(1, "a", "c")),
        ["del", 4, "10.0.0.2", "239.1.1.1"],
        ["threshold", "d", 7],
    ]
    assert set(kernel.mfcs) == {r4(1, "a").key, r4(3, "a").key}


def plan_length(ctl: Controller) -> int:
    return len(ctl.change(MIXED, dry_run=True).steps)


@pytest.fixture(params=[1, 2, controller.CHUNK])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Changes are applied this many at a time (1 and 2: every failure spans chunks)."""
    monkeypatch.setattr(controller, "CHUNK", request.param)
    return int(request.param)


@pytest.mark.parametrize("nth", range(1, 7))
def test_failing_kernel_op_undoes_everything(ctl: Controller, nth: int, chunk: int) -> None:
    kernel, state = fake(ctl)
    assert nth <= plan_length(ctl)
    router_before, kernel_before = observable(ctl.router), kernel.clone()
    records = list(state.records)
    kernel.fail_at = kernel.calls + nth
    with pytest.raises(KernelError) as info:
        ctl.change(MIXED)
    assert info.value.undo_failures == []
    assert (kernel.vifs, kernel.mfcs) == (kernel_before.vifs, kernel_before.mfcs)
    assert observable(ctl.router) == router_before
    assert state.records == records


def test_a_change_the_model_refuses_in_a_later_chunk_undoes_the_earlier_ones(
    ctl: Controller, chunk: int
) -> None:
    kernel, state = fake(ctl)
    router_before, kernel_before = observable(ctl.router), kernel.clone()
    records = list(state.records)
    with pytest.raises(NotFound, match=r"^no route") as refused:
        ctl.change([*MIXED, DelRoute(r4(99, "a").key)])
    assert refused.value.op == 5
    assert (kernel.vifs, kernel.mfcs) == (kernel_before.vifs, kernel_before.mfcs)
    assert observable(ctl.router) == router_before
    assert state.records == records


def test_failing_journal_undoes_the_kernel(ctl: Controller, chunk: int) -> None:
    kernel, state = fake(ctl)
    router_before, kernel_before = observable(ctl.router), kernel.clone()
    records = list(state.records)
    state.fail = True
    with pytest.raises(StateError):
        ctl.change(MIXED)
    assert len(kernel.applied) > len(kernel_before.applied)  # it was applied, then undone
    assert (kernel.vifs, kernel.mfcs) == (kernel_before.vifs, kernel_before.mfcs)
    assert observable(ctl.router) == router_before
    assert state.records == records


def test_a_state_file_gone_behind_our_back_gets_a_snapshot_with_the_change(
    ctl: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    _, state = fake(ctl)
    records = list(state.records)
    state.moved = "state.journal was deleted or renamed while mfcd was running"
    ctl.change(MIXED)
    assert state.records == records  # nothing appended to the lost file
    routes, thresholds = state.snapshots[-1]
    assert {r.key: r for r in routes} == {r.key: r for r in ctl.router.iter_routes()}
    assert r4(3, "c", "d") in routes and thresholds == {"d": 7}  # the change is in it
    assert "was deleted or renamed while mfcd was running; writing all 2 routes there again" in (
        caplog.text
    )
    ctl.change([DelRoute(r4(3, "c").key)])  # and appends go on
    assert state.records[-1] == [["del", 4, "10.0.0.3", "239.1.1.1"]]


def test_a_change_whose_snapshot_fails_too_is_undone(ctl: Controller) -> None:
    kernel, state = fake(ctl)
    router_before, kernel_before = observable(ctl.router), kernel.clone()
    state.moved, state.fail_snapshot = "state.journal was deleted", True
    with pytest.raises(StateError, match="No space left on device"):
        ctl.change(MIXED)
    assert (kernel.vifs, kernel.mfcs) == (kernel_before.vifs, kernel_before.mfcs)
    assert observable(ctl.router) == router_before
    assert state.snapshots == []


def test_keep_state_file_writes_it_back_only_when_it_is_gone(
    ctl: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    _, state = fake(ctl)
    ctl.keep_state_file()
    assert state.snapshots == []
    state.moved = "state.journal was deleted or renamed while mfcd was running"
    ctl.keep_state_file()
    assert [sorted(r.key for r in routes) for routes, _ in state.snapshots] == [
        sorted(r.key for r in ctl.router.iter_routes())
    ]
    assert "writing all 2 routes there again" in caplog.text
    ctl.keep_state_file()
    assert len(state.snapshots) == 1


def test_vif_limit_changes_nothing() -> None:
    names = [f"e{i}" for i in range(MAXVIFS + 1)]
    ctl = controller_with(*names)
    kernel, state = fake(ctl)
    before = observable(ctl.router)
    with pytest.raises(VifLimit):
        ctl.change(
            [AddRoute.of(r4(1, names[0], *names[1:MAXVIFS])), AddRoute.of(r4(2, "e0", "e32"))]
        )
    assert (kernel.applied, state.records) == ([], [])
    assert observable(ctl.router) == before


def test_dry_run_returns_the_plan_and_changes_nothing(ctl: Controller) -> None:
    kernel, state = fake(ctl)
    before, applied, records = observable(ctl.router), list(kernel.applied), list(state.records)
    plan = ctl.change(MIXED, dry_run=True).steps
    assert [s.action for s in plan] == [
        "add_vif",
        "add_mfc",
        "replace_mfc",
        "del_mfc",
        "del_vif",
        "reissue_mfc",
    ]
    assert (kernel.applied, state.records) == (applied, records)
    assert observable(ctl.router) == before
    assert ctl.change(MIXED).steps == plan  # the real run does what the dry run said


def test_restore_installs_what_it_can_and_leaves_the_rest_pending() -> None:
    """A route whose oif is missing is degraded (in the kernel, its index reserved) as it
    was before the restart; one whose iif is missing is pending."""
    loaded = Loaded(
        routes={
            r.key: Ports(r.iif, r.oifs) for r in (r4(1, "a", "b"), r4(2, "a", "x"), r4(3, "y", "b"))
        },
        thresholds={"b": 5},
    )
    ctl = Controller(FakeKernel(), FakeState())
    ctl.restore(loaded, {"a": 1, "b": 2})
    kernel, state = fake(ctl)
    states = {k[1]: ctl.router.status(k).state for k in loaded.routes}
    assert states == {"10.0.0.1": "installed", "10.0.0.2": "degraded", "10.0.0.3": "pending"}
    assert set(kernel.mfcs) == {r4(1, "a").key, r4(2, "a").key}
    assert kernel.mfcs[r4(1, "a").key].ttls == {1: 5}
    x = ctl.router.vif_of(4, "x")
    assert x is not None and (x.vifi, x.ifindex) == (2, None)  # reserved, not in the kernel
    assert kernel.mfcs[r4(2, "a").key].ttls == {}  # (the kernel drops an oif with no VIF)
    assert state.records == []  # restoring is not a change
    steps = ctl.link_up("x", 9)
    assert [s.action for s in steps] == ["readd_vif", "reissue_mfc"]
    assert ctl.router.status(r4(2, "a").key).state == "installed"
    assert kernel.mfcs[r4(2, "a").key].ttls == {2: 1}
    steps = ctl.link_up("y", 10)
    assert [s.action for s in steps] == ["add_vif", "add_mfc"]
    assert ctl.router.status(r4(3, "a").key).state == "installed"


def saved_routes(count: int) -> dict[RouteKey, Ports]:
    """`count` IPv4 routes a -> b,c,d and `count` IPv6 routes a -> d,b (runs, when long)."""
    routes: dict[RouteKey, Ports] = {}
    for n in range(count):
        routes[(4, f"198.18.{n // 200}.{n % 200 + 1}", "239.1.1.1", 253)] = Ports(
            "a", ("b", "c", "d")
        )
    for n in range(count):
        routes[(6, f"2001:db8::{n + 1:x}", "ff3e::1", 254)] = Ports("a", ("d", "b"))
    return routes


@pytest.mark.parametrize("count", [1, 3 * RUN_MIN])
def test_a_restart_while_an_oif_is_missing_forwards_as_before_it(count: int) -> None:
    """The state file restored while d is missing gives what the daemon that saw d go holds:
    the same states, VIF numbers (d's reserved), entries and forwarding; d coming back then
    completes both alike. A long restore still goes in runs (one check a run)."""
    lived = Controller(FakeKernel(), FakeState())
    lived.restore(Loaded(routes=saved_routes(count)), LINKS)
    kernel, _ = fake(lived)
    kernel.device_gone(LINKS["d"])
    lived.link_down("d")
    restarted = Controller(FakeKernel(), FakeState())
    restarted.restore(Loaded(routes=saved_routes(count)), {"a": 1, "b": 2, "c": 3})
    again, _ = fake(restarted)
    states = {k: restarted.router.status(k) for k in restarted.router.routes}
    assert states == {k: lived.router.status(k) for k in lived.router.routes}
    assert {s.state for s in states.values()} == {"degraded"}
    assert restarted.router.vifs == lived.router.vifs
    assert restarted.router.slots == lived.router.slots
    assert dict(restarted.router.installed) == dict(lived.router.installed)
    assert again.view() == kernel.view()
    v4 = next(iter(saved_routes(count)))
    assert again.forwarding(v4) == (1, frozenset({(2, 1), (3, 1)}))  # b and c, not d
    if count > 1:
        assert max(again.runs) >= count - 1  # the routes after the first: one run
    lived.link_up("d", 9)
    restarted.link_up("d", 9)
    assert again.view() == kernel.view()
    assert again.forwarding(v4) == (1, frozenset({(2, 1), (3, 1), (9, 1)}))
    assert {restarted.router.status(k).state for k in restarted.router.routes} == {"installed"}


def test_a_restart_while_the_iif_is_missing_gives_the_state_the_daemon_that_saw_it_go_has() -> None:
    """A route whose iif was deleted while mfcd ran is pending, as the same route restored
    while its iif is missing: the state depends only on which interfaces exist. Either
    way nothing is forwarded; the daemon that saw it go keeps its entry (parent VIF gone,
    its index reserved), the restarted one has none; the iif's return installs both."""
    routes = {r.key: Ports(r.iif, r.oifs) for r in (r4(1, "a", "b", "c"), r4(2, "b", "a"))}
    lived = Controller(FakeKernel(), FakeState())
    lived.restore(Loaded(routes=routes), LINKS)
    kernel, _ = fake(lived)
    kernel.device_gone(LINKS["a"])
    lived.link_down("a")
    restarted = Controller(FakeKernel(), FakeState())
    restarted.restore(Loaded(routes=routes), {"b": 2, "c": 3, "d": 4})
    again, _ = fake(restarted)
    key, other = r4(1, "a").key, r4(2, "b").key
    for ctl in (lived, restarted):
        assert ctl.router.status(key) == RouteStatus("pending", ("a",), "waiting for a")
        assert ctl.router.status(other) == RouteStatus("degraded", ("a",), "waiting for a")
    assert metrics.route_counts(lived.router) == metrics.route_counts(restarted.router)
    assert kernel.forwarding(key) == (None, frozenset({(2, 1), (3, 1)}))  # no VIF receives
    assert key not in again.mfcs
    a = lived.router.vif_of(4, "a")
    assert a is not None and (a.vifi, a.ifindex) == (0, None)  # reserved for a
    for ctl, k in ((lived, kernel), (restarted, again)):
        ctl.link_up("a", 9)
        assert ctl.router.status(key).state == "installed"
        assert k.forwarding(key) == (9, frozenset({(2, 1), (3, 1)}))


@pytest.mark.parametrize("nth", [None, 1, 3])
def test_a_restore_gives_each_table_its_own_threshold(nth: int | None) -> None:
    """A state file's thresholds of one table (its snapshot's "table_thresholds") apply in
    that table, all at once and one route at a time (a kernel refusal first) alike."""
    in_100 = Route(4, "10.0.0.1", "239.1.1.1", "a", ("b",), 100)
    loaded = Loaded(
        routes={r.key: Ports(r.iif, r.oifs) for r in (r4(1, "a", "b"), in_100)},
        thresholds={"b": 5},
        table_thresholds={("b", 100): 9},
    )
    kernel = FakeKernel(fail_at=nth)
    ctl = Controller(kernel, FakeState())
    ctl.restore(loaded, LINKS)
    assert (kernel.mfcs[r4(1, "a").key].ttls, kernel.mfcs[in_100.key].ttls) == ({1: 5}, {1: 9})
    assert ctl.router.table_thresholds == {("b", 100): 9}
    assert ctl.snapshot_extra()["table_thresholds"] == [["b", 100, 9]]


@pytest.mark.parametrize("nth", range(1, 8))
def test_restore_falls_back_to_one_route_at_a_time(nth: int, chunk: int) -> None:
    routes = (r4(1, "a", "b"), r4(2, "c", "d"), r4(3, "a", "b", "c"))
    loaded = Loaded(routes={r.key: Ports(r.iif, r.oifs) for r in routes})
    kernel = FakeKernel(fail_at=nth)  # fails the first, all-at-once attempt only
    ctl = Controller(kernel, FakeState())
    ctl.restore(loaded, LINKS)
    assert all(ctl.router.status(k).state == "installed" for k in loaded.routes)
    assert set(kernel.mfcs) == set(loaded.routes)
    assert len(kernel.vifs) == 4
    # nth - 1 applied, the nth refused, nth - 1 undone, then all 7 again one route at a time.
    assert kernel.calls == nth + (nth - 1) + 7


def test_a_route_the_kernel_refuses_on_link_up_stays_pending_with_the_reason(
    ctl: Controller,
) -> None:
    kernel, _ = fake(ctl)
    ctl.router.begin()
    ctl.router.add_route(r4(5, "x", "a"))  # (pending: its iif is missing)
    ctl.router.commit()
    vifs_before = dict(kernel.vifs)
    kernel.fail_at = kernel.calls + 2
    assert ctl.link_up("x", 9) == []  # logged, not raised
    assert ctl.router.links["x"] == 9  # the interface exists, whatever the kernel said
    status = ctl.router.status(r4(5, "a").key)
    assert status.state == "pending" and "kernel refused" in status.reason
    assert kernel.vifs == vifs_before and r4(5, "a").key not in kernel.mfcs  # all undone
    # `mfcctl sync` retries it, and now it installs.
    ctl.sync(KernelView({}, {}))
    assert ctl.router.status(r4(5, "a").key).state == "installed"


@pytest.mark.parametrize(("already", "compacted"), [(9_998, False), (9_999, True)])
def test_compaction_once_the_journal_holds_enough_ops(
    ctl: Controller, already: int, compacted: bool
) -> None:
    _, state = fake(ctl)
    state.ops_since_snapshot = already
    ctl.change([AddRoute.of(r4(3, "c", "d"))])
    assert state.snapshots == []  # the change alone never compacts: the daemon asks after it
    ctl.maybe_compact()
    if compacted:
        assert state.snapshots == [(list(ctl.router.iter_routes()), {})]
        assert state.ops_since_snapshot == 0
    else:
        assert (state.snapshots, state.ops_since_snapshot) == ([], already + 1)


def test_compaction_threshold_grows_with_the_number_of_routes() -> None:
    ctl = controller_with("a", "b")
    _, state = fake(ctl)
    ctl.router.begin()
    for n in range(10_001):
        ctl.router.restore((4, f"10.{n >> 8}.{n & 255}.1", "239.9.9.9", 253), Ports("a", ("x",)))
    ctl.router.commit()
    state.ops_since_snapshot = 10_000
    ctl.change([AddRoute.of(r4(1, "a", "b"))])
    ctl.maybe_compact()
    assert state.snapshots == []  # 10,001 ops < 10,002 routes
    ctl.change([SetThreshold("b", 3)])
    ctl.maybe_compact()
    assert len(state.snapshots) == 1


def test_failed_compaction_does_not_fail_a_change_already_made(ctl: Controller) -> None:
    kernel, state = fake(ctl)
    state.ops_since_snapshot = 9_999
    state.fail_snapshot = True
    # The change is in the kernel and durable in the journal: reporting state_error ("nothing
    # was changed") would be false.
    steps = ctl.change([AddRoute.of(r4(3, "c", "d"))]).steps
    ctl.maybe_compact()  # logs the failure
    assert steps
    assert r4(3, "c").key in kernel.mfcs
    assert state.records[-1] == [route_op(r4(3, "c", "d"))]


@pytest.mark.parametrize("present", [True, False], ids=["oif-present", "oif-deleted"])
def test_blocked_route_is_installed_when_a_vif_index_is_freed(present: bool) -> None:
    names = [f"e{i}" for i in range(MAXVIFS)]
    ctl = controller_with(*names)
    big, small, blocked = r4(1, "e0", *names[1:-1]), r4(2, "e0", "e31"), r4(3, "x", "e1")
    ctl.change([AddRoute.of(blocked)])  # pending for its iif (a VIF table that could hold it)
    ctl.change([AddRoute.of(big), AddRoute.of(small)])  # 32 VIFs; `blocked` waits
    ctl.link_up("x", 99)
    assert "no free VIF" in ctl.router.status(blocked.key).reason
    if not present:  # deleted: the kernel drops its VIF; index 31 stays reserved for `small`
        kernel, _ = fake(ctl)
        kernel.device_gone(ctl.router.links["e31"])
        ctl.link_down("e31")
    ctl.change([DelRoute(small.key)])  # index 31 is free now, either way
    assert ctl.router.status(blocked.key).state == "installed"
    assert ctl.router.slots[(4, 253)][31] == "x"


def test_restore_with_more_interfaces_than_vifs_starts_over_and_leaks_no_vif() -> None:
    names = [f"e{i}" for i in range(MAXVIFS)]
    big, last, extra = r4(1, "e0", *names[1:-1]), r4(2, "e0", "e31"), r4(3, "e0", "x")
    loaded = Loaded(routes={r.key: Ports(r.iif, r.oifs) for r in (big, last, extra)})
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    ctl.restore(loaded, {name: i + 1 for i, name in enumerate([*names, "x"])})
    assert ctl.router.status(big.key).state == "installed"
    assert ctl.router.status(last.key).state == "installed"
    assert "no free VIF" in ctl.router.status(extra.key).reason
    assert len(kernel.vifs) == MAXVIFS and set(kernel.mfcs) == {big.key, last.key}
    assert ctl.router.slots[(4, 253)] == names  # every index serves a route; none leaked to `x`


def test_a_refused_rollback_is_logged_and_asks_for_a_repair(
    ctl: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    kernel, _ = fake(ctl)
    drift: list[bool] = []
    ctl.on_drift = lambda: drift.append(True)
    first = r4(7, "a", "b")
    kernel.refuse.add(DelMfc(*first.key))  # the undo of the first entry
    kernel.fail_at = kernel.calls + 2  # the second route's entry: the first one is undone
    with pytest.raises(KernelError):
        ctl.change([AddRoute.of(first), AddRoute.of(r4(8, "c", "d"))])
    assert drift == [True]
    assert "rollback incomplete" in caplog.text


def test_a_change_that_changes_nothing_writes_no_journal_record(ctl: Controller) -> None:
    kernel, state = fake(ctl)
    ctl.change([AddRoute.of(r4(9, "a", "b"))])
    records, calls = list(state.records), kernel.calls
    assert ctl.change([AddRoute.of(r4(9, "a", "b"))]).steps == []  # the same route again
    assert ctl.change([]).steps == []  # an empty batch
    assert state.records == records and kernel.calls == calls


# --- drift checks that grow with the routes checked, not with a dump of the kernel ------------


def _vifs_of(kernel: FakeKernel, ctl: Controller) -> dict[tuple[int, int, int], str]:
    """The kernel's VIFs as /proc names them (device names)."""
    names = {ifindex: name for name, ifindex in ctl.router.links.items()}
    return {key: names[ifindex] for key, ifindex in kernel.vifs.items()}


def test_probing_sync_re_adds_a_missing_entry_and_rewrites_the_others(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    one, two = r4(1, "a").key, r4(2, "b").key
    del kernel.mfcs[one]  # removed behind mfcd's back
    kernel.mfcs[two].ttls.clear()  # oifs lost: a probe cannot see this, a write repairs it
    kernel.mfcs[(4, "10.9.9.9", "239.9.9.9", 253)] = kernel.mfcs[two]  # foreign: not looked for
    before = kernel.view()
    report = ctl.sync(KernelView(_vifs_of(kernel, ctl), None), dry_run=True)
    assert [(r["action"], r["source"]) for r in report] == [("reissue_mfc", "10.0.0.1")]
    assert kernel.view() == before  # a dry run changes nothing

    report = ctl.sync(KernelView(_vifs_of(kernel, ctl), None))
    assert [(r["action"], r["source"]) for r in report] == [("reissue_mfc", "10.0.0.1")]
    assert kernel.forwarding(one) == (1, frozenset({(2, 1)}))
    assert kernel.forwarding(two) == (2, frozenset({(1, 1), (3, 1)}))
    assert (4, "10.9.9.9", "239.9.9.9", 253) in kernel.mfcs


def test_probing_sync_re_adds_a_vif_and_reports_the_entries_on_it(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    vifs = _vifs_of(kernel, ctl)
    lost = next(key for key, name in vifs.items() if name == "c")
    del kernel.vifs[lost], vifs[lost]
    report = ctl.sync(KernelView(vifs, None), dry_run=True)
    assert [r["action"] for r in report] == ["readd_vif", "reissue_mfc"]
    assert report[1]["source"] == "10.0.0.2"  # the route using c
    ctl.sync(KernelView(vifs, None))
    assert kernel.forwarding(r4(2, "b").key) == (2, frozenset({(1, 1), (3, 1)}))


def test_check_entries_looks_only_at_the_keys_given(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    one, two = r4(1, "a").key, r4(2, "b").key
    del kernel.mfcs[one], kernel.mfcs[two]
    report = ctl.check_entries([two, (4, "10.7.7.7", "239.1.1.1", 253)])  # the second: not a route
    assert [r["source"] for r in report] == ["10.0.0.2"]
    assert set(kernel.mfcs) == {two}


def test_a_rewrite_the_kernel_refuses_is_reported(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    kernel.fail_at = kernel.calls + 1
    report = ctl.check_entries(list(ctl.router.installed))
    assert len(report) == 1 and "injected failure" in report[0]["error"]


def test_interface_events_log_one_line_at_info(
    ctl: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    ctl.change(
        [AddRoute.of(Route(4, f"10.1.0.{n}", "239.1.1.1", "a", ("c",), 253)) for n in range(50)]
    )
    kernel, _ = fake(ctl)
    caplog.set_level("INFO", logger="mfcd")
    kernel.device_gone(3)
    ctl.link_down("c")
    ctl.link_up("c", 13)
    lines = [r.getMessage() for r in caplog.records]
    gone = "interface c gone: 51 routes pending (their iif) or degraded until it is back"
    assert lines[0] == gone
    assert lines[1].startswith("interface c up (ifindex 13): 51 routes affected")
    assert len(lines) == 2
    caplog.clear()
    caplog.set_level("DEBUG", logger="mfcd")
    kernel.device_gone(13)
    ctl.link_down("c")
    ctl.link_up("c", 14)
    assert sum("reissue_mfc" in r.getMessage() for r in caplog.records) == 51 + 1


def test_check_entries_without_rewrite_all_writes_only_missing_and_stale(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    one, two = r4(1, "a").key, r4(2, "b").key
    del kernel.mfcs[one]
    kernel.mfcs[two].ttls.clear()
    writes = len(kernel.applied)
    report = ctl.check_entries([one, two], rewrite_all=False)
    assert [r["source"] for r in report] == ["10.0.0.1"]
    assert len(kernel.applied) == writes + 1 and kernel.mfcs[two].ttls == {}
    ctl.check_entries([one, two], stale={two}, rewrite_all=False)
    assert kernel.forwarding(two) == (2, frozenset({(1, 1), (3, 1)}))


def test_sync_re_adds_an_entry_another_program_wrote_so_it_is_mfcds_again(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    kernel.names = {ifindex: name for name, ifindex in ctl.router.links.items()}
    one, two = r4(1, "a").key, r4(2, "b").key
    vifs = {i: v for (f, t, v), i in kernel.vifs.items()}  # ifindex -> VIF
    kernel.foreign_add(one, vifs[1], {vifs[3]: 1})  # oifs c instead of b: static now
    writes = len(kernel.applied)
    view = controller.observe(kernel, (4,), True)
    report = ctl.sync(view, dry_run=True)
    assert len(report) == 1 and len(kernel.applied) == writes
    assert report[0] | {"parent": 0, "oifs": []} == {
        "action": "readd_mfc",
        "family": "ipv4",
        "table": 253,
        "source": "10.0.0.1",
        "group": "239.1.1.1",
        "parent": 0,
        "oifs": [],
        "iif": "a",
        "oif_names": ["b"],
        "drift": "static",
        "kernel": {"iif": "a", "oifs": ["c"]},
    }
    ctl.sync(view)
    # deleted, then added: mfcd's own (not static), as the route says; `two` not written
    assert kernel.applied[writes:] == [
        DelMfc(4, "10.0.0.1", "239.1.1.1", 253),
        ctl.router.entry(one),
    ]
    assert one not in kernel.static
    assert kernel.forwarding(one) == (1, frozenset({(2, 1)}))
    assert kernel.forwarding(two) == (2, frozenset({(1, 1), (3, 1)}))


def test_sync_says_what_the_kernel_had_instead(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    kernel.names = {ifindex: name for name, ifindex in ctl.router.links.items()}
    one, two = r4(1, "a").key, r4(2, "b").key
    del kernel.mfcs[one]
    kernel.mfcs[two].ttls.popitem()  # one oif fewer, written by mfcd itself: not static
    report = ctl.sync(controller.observe(kernel, (4,), True), dry_run=True)
    assert [(r["source"], r["action"], r["drift"]) for r in report] == [
        ("10.0.0.1", "reissue_mfc", "missing"),
        ("10.0.0.2", "reissue_mfc", "different"),
    ]
    assert "kernel" not in report[0]
    assert report[1]["kernel"] == {"iif": "b", "oifs": ["a"]}
    assert (report[1]["iif"], report[1]["oif_names"]) == ("b", ["a", "c"])


# --- tables ---------------------------------------------------------------------------------------


def test_sync_reads_every_table_the_ipv6_ones_without_device_names(ctl: Controller) -> None:
    kernel, _ = fake(ctl)
    v4 = r4(1, "c", "a")._replace(table=100)
    v6 = Route(6, "2001:db8::1", "ff3e::1", "a", ("b",), 100)
    ctl.change([AddRoute.of(v4), AddRoute.of(v6)])
    assert ctl.router.tables() == {(4, 253), (4, 100), (6, 100)}
    kernel.names = {ifindex: name for name, ifindex in ctl.router.links.items()}
    view = controller.observe(kernel, (4, 6), True, ctl.router.tables())
    assert view.tables == frozenset({(4, 253), (4, 100), (6, 254), (6, 100)})
    assert {k: d for k, d in view.vifs.items() if k[:2] == (6, 100)} == {
        (6, 100, 0): None,  # Linux names no device of such a MIF
        (6, 100, 1): None,
    }
    assert ctl.sync(view, dry_run=True) == []
    # Each table loses a VIF, and IPv6 table 100 its entry, behind mfcd's back; another
    # program adds a MIF and an entry there. The default table is intact.
    for family, ifindex in ((4, 1), (6, 2)):  # a's VIF in IPv4 table 100, b's in IPv6's
        lost = next(k for k, i in kernel.vifs.items() if k[:2] == (family, 100) and i == ifindex)
        del kernel.vifs[lost]
    del kernel.mfcs[v6.key]
    kernel.vifs[(6, 100, 9)] = 3
    stray = (6, "2001:db8::9", "ff3e::9", 100)
    kernel.mfcs[stray] = MfcEntry(0, {9: 1})
    view = controller.observe(kernel, (4, 6), True, ctl.router.tables())
    report = ctl.sync(view)
    assert sorted((r["action"], r["family"], r["table"]) for r in report) == [
        ("del_mfc", "ipv6", 100),
        ("del_vif", "ipv6", 100),
        ("readd_vif", "ipv4", 100),
        ("readd_vif", "ipv6", 100),
        ("reissue_mfc", "ipv4", 100),
        ("reissue_mfc", "ipv6", 100),
    ]
    assert kernel.forwarding(v4.key) == (3, frozenset({(1, 1)}))
    assert kernel.forwarding(v6.key) == (1, frozenset({(2, 0)}))
    assert stray not in kernel.mfcs and (6, 100, 9) not in kernel.vifs
    assert kernel.forwarding(r4(1, "a").key) == (1, frozenset({(2, 1)}))  # untouched
