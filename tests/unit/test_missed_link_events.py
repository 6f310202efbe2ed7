"""Interface events missed (a netlink overrun, ENOBUFS on the link monitor) are made of a
fresh dump of the interfaces and applied and told as if they had been read: monitor
subscribers get the same `link` and `route.state` events (after a `lost` one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mfcd import netlink
from mfcd.config import Config
from mfcd.controller import Controller
from mfcd.daemon import Daemon
from mfcd.dataplane import Events, LinkChange, link_changes
from mfcd.learning import Learner
from mfcd.model import AddRoute, Ports
from tests.unit.conftest import FakeKernel, FakeState

ROUTES = {
    (4, "198.18.0.2", "239.1.1.1", 253): Ports("a", ("b",)),  # b deleted: degraded
    (4, "198.18.0.2", "239.1.1.2", 253): Ports("b", ("a",)),  # its iif deleted: pending
    (4, "198.18.0.2", "239.1.1.3", 253): Ports("d", ("a",)),  # d created: installed
    (4, "198.18.0.2", "239.1.1.4", 253): Ports("a", ("c",)),  # c renamed e: degraded
}
# What happened meanwhile, as the kernel says it: b deleted, c renamed e, d created.
HAPPENED = [
    LinkChange("del", "b", 2, False),
    LinkChange("new", "e", 3, True),
    LinkChange("new", "d", 4, True),
]
AFTER = [netlink.Link(1, "a", True), netlink.Link(3, "e", True), netlink.Link(4, "d", True)]


def told(monkeypatch: pytest.MonkeyPatch, overrun: bool) -> list[dict[str, Any]]:
    """The events of HAPPENED, read, or missed and found by the dump that follows."""
    monkeypatch.setattr(netlink, "dump_links", lambda: AFTER)

    async def run() -> list[dict[str, Any]]:
        daemon = Daemon(Config(), None, {})
        ctl = daemon.controller = Controller(FakeKernel(), FakeState())
        daemon.learner = Learner(ctl, ctl.kernel)
        daemon._sync_tables = lambda: None  # type: ignore[method-assign] # (no real tables)
        ctl.sliced, ctl.on_reissued = True, daemon._tell_states  # (as the daemon runs it)
        for name, ifindex in (("a", 1), ("b", 2), ("c", 3)):
            ctl.link_up(name, ifindex)
        ctl.change([AddRoute(key, ports) for key, ports in ROUTES.items()])
        sub = daemon.events.subscribe(lambda: None)
        daemon._on_link_events(Events([], [] if overrun else HAPPENED, overrun))
        await asyncio.sleep(0)  # (the entries written again, if any: told by then)
        assert ctl.router.links == {"a": 1, "e": 3, "d": 4}
        return [{k: v for k, v in e.items() if k != "time"} for e in sub.take()]

    return asyncio.run(run())


def test_missed_interface_events_are_told_as_if_they_had_been_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = told(monkeypatch, overrun=False)
    missed = told(monkeypatch, overrun=True)
    assert missed[0] == {"event": "link", "action": "lost", "interface": None, "ifindex": None}
    assert missed[1:] == read
    states = {e["group"]: e["state"] for e in read if e["event"] == "route.state"}
    assert states == {
        "239.1.1.1": "degraded",
        "239.1.1.2": "pending",
        "239.1.1.3": "installed",
        "239.1.1.4": "degraded",
    }
    links = [(e["action"], e["interface"]) for e in read if e["event"] == "link"]
    assert links == [("del", "b"), ("del", "c"), ("new", "e"), ("new", "d")]


def test_the_events_missed_are_deletions_then_renames_then_new_interfaces() -> None:
    known = {"a": 1, "b": 2, "c": 3, "r": 5}
    dump = [
        LinkChange("new", "a", 1),  # unchanged: no event
        LinkChange("new", "r", 7),  # r deleted (5 gone), another r created
        LinkChange("new", "c", 2),  # b renamed c ...
        LinkChange("new", "x", 3),  # ... once c was renamed x (the dump does not say so)
        LinkChange("new", "n", 8),
    ]
    assert link_changes(known, dump) == [
        LinkChange("del", "r", 5, False),
        LinkChange("new", "x", 3),
        LinkChange("new", "c", 2),
        LinkChange("new", "r", 7),
        LinkChange("new", "n", 8),
    ]
    assert link_changes(known, [LinkChange("new", n, i) for n, i in known.items()]) == []
