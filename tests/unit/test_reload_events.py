"""A reload's monitor events say what its slices replaced as they applied them: a client's
change between two slices (served while the reload runs) is what the reload replaced."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mfcd import config
from mfcd.controller import Controller, Outcome
from mfcd.daemon import Daemon
from mfcd.declarations import Declarations, Diff
from mfcd.learning import Learner
from mfcd.model import AddRoute, AddTemplate, Ports
from tests.unit.conftest import FakeKernel, FakeState

ROUTE = (4, "198.18.0.2", "239.1.1.1", 253)
TEMPLATE = (4, "*", "239.4.0.0/16", 253, "a")
FILES = """\
[[route]]
source = "198.18.0.2"
group = "239.1.1.1"
iif = "a"
oifs = ["c"]

[[route]]
group = "239.4.0.0/16"
iif = "a"
oifs = ["c"]
"""


def test_what_a_reload_replaced_is_what_its_slice_found_not_what_was_there_first(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mfc_daemon.conf"
    path.write_text(FILES)

    async def reload() -> list[dict[str, Any]]:
        mfcd = Daemon(config.Config(), str(path), {})
        ctl = mfcd.controller = Controller(FakeKernel(), FakeState())
        mfcd.learner = Learner(ctl, ctl.kernel)
        mfcd._sync_tables = lambda: None  # type: ignore[method-assign] # (no real tables)
        for ifindex, name in enumerate(("a", "b", "c", "d"), 1):
            ctl.link_up(name, ifindex)
        # An api route and template, which the files take over, as the reload begins.
        ctl.change([AddRoute(ROUTE, Ports("a", ("b",))), AddTemplate(TEMPLATE, Ports("a", ("b",)))])
        real = ctl.declared_slices

        def slices(new: Declarations, diff: Diff, outcome: Outcome) -> Iterator[int]:
            work = real(new, diff, outcome)
            yield next(work)
            # A client served between two slices changes both before the reload gets to them.
            ctl.change(
                [AddRoute(ROUTE, Ports("a", ("d",))), AddTemplate(TEMPLATE, Ports("a", ("d",)))]
            )
            yield from work

        ctl.declared_slices = slices  # type: ignore[method-assign]
        sub = mfcd.events.subscribe(lambda: None)
        await mfcd.reload_config()
        return sub.take()

    told = asyncio.run(reload())
    added = {e["event"]: e for e in told if e["event"] in ("route.add", "template.add")}
    route, template = added["route.add"], added["template.add"]
    assert (route["origin"], route["oifs"], route["was"]) == (
        "config",
        ["c"],
        {"iif": "a", "oifs": ["d"]},
    )
    assert (template["origin"], template["oifs"], template["was"]) == ("config", ["c"], ["d"])
    assert told[-1]["event"] == "reload"
