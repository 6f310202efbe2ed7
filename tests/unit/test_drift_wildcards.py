"""Interfaces the drift check finds (its fresh dump, when their events were missed or could
not be read) are followed by wildcards, config and runtime ones, as after their events."""

from __future__ import annotations

import asyncio

from mfcd import validate
from mfcd.config import Config
from mfcd.controller import Controller
from mfcd.daemon import Daemon
from mfcd.dataplane import LinkChange
from mfcd.declarations import Declarations, diff
from mfcd.model import Ports
from tests.unit.conftest import FakeKernel, FakeState
from tests.unit.test_declarations import parse

DECLARED = (4, "198.18.0.2", "239.1.1.1", 253)
RUNTIME = (4, "198.18.0.2", "239.1.1.2", 253)


def test_interfaces_the_drift_check_finds_are_followed_by_wildcards() -> None:
    declared, problems = parse(
        '[[route]]\nsource = "198.18.0.2"\ngroup = "239.1.1.1"\niif = "a"\noifs = ["b", "vlan*"]\n'
    )
    assert problems == []

    async def check() -> None:
        daemon = Daemon(Config(), None, {}, declared)
        ctl = daemon.controller = Controller(FakeKernel(), FakeState())
        links = {"a": 1, "b": 2, "vlan1": 3}
        for name, ifindex in links.items():
            ctl.link_up(name, ifindex)
        ctl.apply_declared(declared, diff(Declarations(), declared))
        ctl.change([validate.add_change(RUNTIME[1], RUNTIME[2], "a", ["vlan*"])])
        routes = ctl.router.routes
        assert routes[DECLARED] == Ports("a", ("b", "vlan1"))
        assert routes[RUNTIME] == Ports("a", ("vlan1",))
        # vlan2 came and vlan1 went, and mfcd heard of neither: the check's dump says so.
        daemon._sync_links([LinkChange("new", n, i) for n, i in (("a", 1), ("b", 2), ("vlan2", 4))])
        assert routes[DECLARED] == Ports("a", ("b", "vlan2"))
        assert routes[RUNTIME] == Ports("a", ("vlan2",))
        assert ctl.router.installed[RUNTIME].oifs == ctl.router.installed[DECLARED].oifs[1:]

    asyncio.run(check())
