"""The one-route transaction (Controller.change_one, taken by a single `mfc add`/`mfc del`
while group commit is on) is the general one (Controller.change) in fewer steps: over random
sequences of requests, interface events, kernel refusals and failed syncs, two daemons, one
with it and one without, give the same responses and hold the same model, kernel entries,
journal and log."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd.commands import Commands, Peer
from mfcd.controller import Controller
from mfcd.model import AddRoute, DelRoute, Ports
from tests.unit.conftest import FakeKernel, FakeState, observable
from tests.unit.test_group_commit import request

PEER = Peer(pid=1, uid=0, gid=0)
LINKS = {"a": 1, "b": 2, "c": 3, "d": 4}  # "d" comes and goes; "e" never exists

groups = st.sampled_from([f"239.1.1.{n}" for n in range(1, 6)])
names = st.sampled_from(["a", "b", "c", "d", "e"])
route = st.tuples(groups, st.sampled_from(["10.0.0.1", "10.0.0.2"]))
steps = st.one_of(
    st.tuples(st.just("add"), route, names, st.lists(names, min_size=1, max_size=3)),
    st.tuples(st.just("del"), route),
    st.tuples(st.just("dry"), route, names),  # a dry run: the general path in both
    st.tuples(st.just("ttl"), names, st.sampled_from([1, 5])),
    st.tuples(st.just("flush")),
    st.tuples(st.just("fail_sync")),
    st.tuples(st.just("fail_kernel")),
    st.tuples(st.just("link"), st.booleans()),
)


class Daemon:
    """Commands over the fakes; `one`: with the one-route transaction, else without."""

    def __init__(self, one: bool) -> None:
        self.kernel, self.state = FakeKernel(), FakeState()
        self.controller = Controller(self.kernel, self.state)
        for name, ifindex in LINKS.items():
            self.controller.link_up(name, ifindex)
        self.controller.grouping = True
        self.commands = Commands(self.controller, (4, 6))
        self.taken = 0  # requests change_one took
        if one:
            real = self.controller.change_one

            def counted(change: AddRoute | DelRoute) -> Any:
                try:
                    outcome = real(change)
                except Exception:
                    self.taken += 1  # (it raised the request's error)
                    raise
                self.taken += outcome is not None
                return outcome

            self.controller.change_one = counted  # type: ignore[method-assign]
        else:
            self.controller.change_one = lambda change: None  # type: ignore[method-assign]
        self.answers: list[Any] = []
        self.responses: list[bytes] = []

    def submit(self, line: bytes) -> None:
        self.answers.append(self.commands.submit(line, PEER))
        if self.controller.group is None:  # answered at once (an error, a dry run)
            self.settle()

    def settle(self) -> None:
        for answer in self.answers:
            response = self.commands.settle(answer)
            assert isinstance(response, bytes)
            self.responses.append(response)
        self.answers.clear()

    def flush(self) -> None:
        self.commands.flush()
        self.settle()

    def step(self, n: int, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "add":
            (group, source), iif, oifs = step[1:]
            self.submit(request(n, "mfc.add", source=source, group=group, iif=iif, oifs=oifs))
        elif kind == "del":
            group, source = step[1]
            self.submit(request(n, "mfc.del", source=source, group=group))
        elif kind == "dry":
            (group, source), iif = step[1:]
            line = request(n, "mfc.add", source=source, group=group, iif=iif, oifs=["b"])
            self.submit(line.replace(b'"args"', b'"dry_run": true, "args"'))
        elif kind == "ttl":
            self.submit(request(n, "vif.set", interface=step[1], threshold=step[2]))
        elif kind == "flush":
            self.flush()
        elif kind == "fail_sync":
            self.state.fail = True
            self.flush()
            self.state.fail = False
        elif kind == "fail_kernel":
            self.kernel.fail_at = self.kernel.calls + 1  # the next kernel operation fails
        elif kind == "link":
            self.flush()
            if step[1]:
                self.controller.link_up("d", LINKS["d"])
            else:
                self.controller.link_down("d")

    def seen(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "router": observable(self.controller.router),
            "version": self.controller.router.version,
            "mfcs": {k: (e.parent, e.ttls) for k, e in self.kernel.mfcs.items()},
            "vifs": dict(self.kernel.vifs),
            "applied": list(self.kernel.applied),
            "records": self.state.records,
            "group": None if self.controller.group is None else self.controller.group.changes,
            "deferrals": self.controller.deferrals,
        }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=40))
def test_one_route_transactions_are_the_general_ones(sequence: list[tuple[Any, ...]]) -> None:
    general, one = Daemon(one=False), Daemon(one=True)
    for n, step in enumerate(sequence):
        general.step(n, step)
        one.step(n, step)
        assert one.seen() == general.seen(), step
    general.flush()
    one.flush()
    assert one.seen() == general.seen()


def test_it_takes_single_adds_and_deletes_and_logs_as_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a test that passes without it: single adds and dels take it, a route replaced,
    deleted, pending or refused too; the group's log line is the same."""
    logs = []
    for one in (False, True):
        daemon = Daemon(one)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mfcd"):
            daemon.step(1, ("add", ("239.1.1.1", "10.0.0.1"), "a", ["b"]))
            daemon.step(2, ("add", ("239.1.1.1", "10.0.0.1"), "a", ["b", "c"]))  # replaced
            daemon.step(3, ("add", ("239.1.1.2", "10.0.0.1"), "a", ["e"]))  # pending
            daemon.step(4, ("del", ("239.1.1.3", "10.0.0.1")))  # not found
            daemon.step(5, ("flush",))
            daemon.step(6, ("del", ("239.1.1.1", "10.0.0.1")))
            daemon.step(7, ("fail_kernel",))
            daemon.step(8, ("add", ("239.1.1.4", "10.0.0.1"), "a", ["b"]))  # refused
            daemon.step(9, ("flush",))
        logs.append([r.getMessage() for r in caplog.records])
        if one:
            assert daemon.taken == 6
            assert b'"code":"kernel_error"' in daemon.responses[-1]
    assert logs[0] == logs[1]
    assert any(line.startswith("3 changes, one sync: ") for line in logs[1])


def test_what_it_does_not_cover_is_left_to_the_general_transaction() -> None:
    daemon = Daemon(one=True)
    controller = daemon.controller
    key = (4, "10.0.0.1", "239.1.1.1", 253)
    add = AddRoute(key, Ports("a", ("b",)))
    controller.grouping = False
    assert controller.change_one(add) is None
    controller.grouping = True
    controller.router.origins[key] = "learned"
    assert controller.change_one(add) is None
    del controller.router.origins[key]
    controller.reloading = frozenset({key})
    assert controller.change_one(DelRoute(key)) is None
    controller.reloading = frozenset()
    controller.wild_routes[key] = Ports("a", ("b",))
    assert controller.change_one(add) is None
    assert daemon.taken == 0 and controller.group is None and not controller.router.routes


def test_a_route_entry_alone_leaves_on_change_to_its_groups_sync() -> None:
    """The daemon's after-change work (tables to watch or close, templates, status,
    compaction) runs once per group for route entries written or deleted, at once for a
    change that adds a VIF (a table may have been opened), and after every sync."""
    daemon = Daemon(one=True)
    calls: list[str] = []
    daemon.commands.on_change = lambda: calls.append("changed")
    daemon.step(1, ("add", ("239.1.1.1", "10.0.0.1"), "a", ["b"]))  # VIFs a, b added
    assert calls == ["changed"]
    daemon.step(2, ("add", ("239.1.1.2", "10.0.0.1"), "a", ["b"]))  # an entry alone
    daemon.step(3, ("del", ("239.1.1.2", "10.0.0.1")))
    assert calls == ["changed"]
    daemon.flush()
    assert calls == ["changed", "changed"]
    daemon.step(4, ("add", ("239.1.1.3", "10.0.0.1"), "a", ["c"]))  # VIF c added
    assert calls == ["changed"] * 3
    assert daemon.taken == 4


def test_the_after_change_work_left_to_a_sync_runs_when_the_controller_flushes_alone() -> None:
    """A group concluded by Controller.flush directly (the daemon's state file keeper and
    compaction) still gets the after-change work its single-route changes left to it, once
    the daemon calls Commands.flushed; and none is owed after that."""
    daemon = Daemon(one=True)
    calls: list[str] = []
    daemon.commands.on_change = lambda: calls.append("changed")
    daemon.step(1, ("add", ("239.1.1.1", "10.0.0.1"), "a", ["b"]))  # VIFs a, b added
    daemon.commands.flush()
    calls.clear()
    daemon.step(2, ("add", ("239.1.1.2", "10.0.0.1"), "a", ["b"]))  # an entry alone
    assert calls == []
    daemon.commands.controller.flush()  # as daemon._keep_state_file and _compact do
    daemon.commands.flushed()
    assert calls == ["changed"]
    daemon.commands.flushed()
    assert calls == ["changed"]
