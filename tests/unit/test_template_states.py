"""Trial 14 F10: an interface event that changes a template's state is told to monitor
subscribers as `template.state` (routes get `route.state`), degraded and back."""

from __future__ import annotations

import asyncio
from typing import Any

from mfcd.config import Config
from mfcd.controller import Controller
from mfcd.daemon import Daemon
from mfcd.dataplane import Events, LinkChange
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
