"""Trial 14 F10: an interface event that changes a template's state is told to monitor
subscribers as `template.state` (routes get `route.state`), degraded and back; F9: a
wildcard that cannot follow the interfaces is logged once per change."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mfcd.config import Config
from mfcd.controller import Controller
from mfcd.daemon import Daemon
from mfcd.dataplane import Events, LinkChange
from mfcd.errors import VifLimit
from mfcd.learning import Learner
from mfcd.model import AddTemplate, Ports
from tests.unit.conftest import FakeKernel, FakeState

TEMPLATE = (4, "*", "239.2.0.0/16", 253, "a")
OTHER = (4, "*", "239.3.0.0/16", 253, "b")  # names neither interface that changes


def told(*happened: list[LinkChange]) -> list[list[dict[str, Any]]]:
    """The template.state events of each list of link events, in turn."""

    async def run() -> list[list[dict[str, Any]]]:
        daemon = Daemon(Config(), None, {})
        ctl = daemon.controller = Controller(FakeKernel(), FakeState())
        daemon.learner = Learner(ctl, ctl.kernel)
        daemon._sync_tables = lambda: None  # type: ignore[method-assign] # (no real tables)
        for name, ifindex in (("a", 1), ("b", 2), ("c", 3)):
            ctl.link_up(name, ifindex)
        ctl.change(
            [AddTemplate(TEMPLATE, Ports("a", ("b", "c"))), AddTemplate(OTHER, Ports("b", ("a",)))]
        )
        sub = daemon.events.subscribe(lambda: None)
        out = []
        for links in happened:
            daemon._on_link_events(Events([], links, False))
            await asyncio.sleep(0)
            out.append(
                [
                    {k: v for k, v in e.items() if k != "time"}
                    for e in sub.take()
                    if e["event"] == "template.state"
                ]
            )
        return out

    return asyncio.run(run())


def test_a_template_degraded_and_back_is_told() -> None:
    gone, back = told([LinkChange("del", "c", 3, False)], [LinkChange("new", "c", 7, True)])
    key = {"family": "ipv4", "table": 253, "source": "*", "group": "239.2.0.0/16", "iif": "a"}
    assert gone == [
        {"event": "template.state", **key, "state": "degraded", "reason": "waiting for c"}
    ]
    assert back == [{"event": "template.state", **key, "state": "installed", "reason": ""}]


def test_a_template_whose_iif_goes_is_told_pending() -> None:
    (gone,) = told([LinkChange("del", "a", 1, False)])
    states = {(e["group"], e["state"]) for e in gone}
    # (239.3: iif b, oif a gone: degraded; 239.2: its iif gone: pending)
    assert states == {("239.2.0.0/16", "pending"), ("239.3.0.0/16", "degraded")}


def test_a_wildcard_that_cannot_follow_is_logged_once_per_change(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 14 F9: 7 identical ERROR lines for one burst of interface events."""
    daemon = Daemon(Config(), None, {})
    ctl = daemon.controller = Controller(FakeKernel(), FakeState())
    errors = iter(["cannot add 1 new IPv4 VIF (d29)"] * 3 + ["cannot add 2 new IPv4 VIFs"])

    def follow(names: object = None) -> None:
        raise VifLimit(next(errors))

    monkeypatch.setattr(ctl, "follow_wildcards", follow)
    with caplog.at_level(logging.ERROR):
        for _ in range(4):
            daemon._follow_wildcards()
    told = [r.getMessage() for r in caplog.records if "wildcard oifs" in r.getMessage()]
    assert len(told) == 2 and told[1].endswith("cannot add 2 new IPv4 VIFs")
