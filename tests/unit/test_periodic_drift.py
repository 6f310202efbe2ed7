"""Tests for the periodic drift check's pure parts: what a tick of drift_check_interval
checks (mfcd.daemon.periodic_check) and how the status line tells the last repair."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from types import SimpleNamespace

from mfcd.commands import FULL_SYNC_ROUTES
from mfcd.config import Config
from mfcd.controller import Controller
from mfcd.daemon import Daemon, periodic_check
from mfcd.model import AddRoute, Route
from mfcd.views import last_repairs
from tests.unit.conftest import FakeKernel, FakeState


def test_a_tick_dumps_the_table_while_sync_would_and_probes_above() -> None:
    assert periodic_check(5, 2, 5, running=False) == "full"
    assert periodic_check(FULL_SYNC_ROUTES, 2, FULL_SYNC_ROUTES, running=False) == "full"
    big = FULL_SYNC_ROUTES + 1
    assert periodic_check(big, 2, big, running=False) == "probe"
    # Installed routes decide (a dump costs what the kernel holds), not pending ones.
    assert periodic_check(big, 2, 3, running=False) == "full"


def test_a_tick_is_skipped_while_a_check_runs_and_on_an_idle_daemon() -> None:
    assert periodic_check(5, 2, 5, running=True) is None
    assert periodic_check(0, 0, 0, running=False) is None  # nothing to compare
    # VIFs without routes (a template's) are still checked; so are pending routes.
    assert periodic_check(0, 2, 0, running=False) == "full"
    assert periodic_check(3, 0, 0, running=False) == "full"


def test_the_status_line_tells_when_and_what_the_last_repair_was() -> None:
    text = last_repairs(1800000000.7, Counter({"reissue_mfc": 2, "readd_vif": 1}))
    assert text == "drift repaired at 2027-01-15 08:00:00 UTC (readd_vif 1, reissue_mfc 2)"


def test_the_timer_ticks_at_the_interval_and_a_reload_restarts_it() -> None:
    async def check() -> None:
        loop = asyncio.get_running_loop()
        daemon = Daemon(Config(drift_check_interval=300.0), None, {})
        ctl = daemon.controller = Controller(FakeKernel(), FakeState())
        asked: list[tuple[float, set[str] | None, bool]] = []
        daemon._resync_later = lambda delay, touched=None, full=False: asked.append(  # type: ignore[method-assign]
            (delay, touched, full)
        )
        daemon._schedule_checks()
        assert daemon._periodic is not None
        assert 299 < daemon._periodic.when() - loop.time() <= 300
        daemon._tick()  # no route, no VIF: nothing to check, the next tick still comes
        assert asked == [] and daemon._periodic is not None
        ctl.link_up("a", 1)
        ctl.link_up("b", 2)
        ctl.change([AddRoute.of(Route(4, "198.18.0.2", "239.1.1.1", "a", ("b",), 253))])
        daemon._tick()
        assert asked == [(0.0, None, True)]  # every route, with the dump (one route)
        # A reload that changes the interval starts it again; 0 stops it.
        daemon.serving, daemon.learner = True, SimpleNamespace()  # type: ignore[assignment]
        daemon._apply_settings(Config(drift_check_interval=10.0), {})
        assert 9 < daemon._periodic.when() - loop.time() <= 10
        daemon._apply_settings(Config(drift_check_interval=0.0), {})
        assert daemon._periodic is None

    level = logging.getLogger().level  # (_apply_settings sets log_level's)
    try:
        asyncio.run(check())
    finally:
        logging.getLogger().setLevel(level)


def _racing_daemon(monkeypatch: object) -> tuple[Daemon, list[object]]:
    """A daemon whose table dump sees the routes change while it runs (a busy client), with
    what its full check then does recorded instead of done."""
    daemon = Daemon(Config(), None, {})
    ctl = daemon.controller = Controller(FakeKernel(), FakeState())
    daemon.kernel = SimpleNamespace(families=(4,))  # type: ignore[assignment]
    done: list[object] = []

    def racing(*_: object) -> object:
        ctl.router.version += 1
        return SimpleNamespace()

    monkeypatch.setattr("mfcd.daemon.dumped_links", lambda: [])  # type: ignore[attr-defined]
    monkeypatch.setattr("mfcd.daemon.observe", racing)  # type: ignore[attr-defined]
    daemon._sync_links = lambda links: None  # type: ignore[method-assign]

    async def probes(touched: set[str] | None, periodic: bool) -> None:
        done.append(("probes", touched, periodic))

    daemon._check_probes = probes  # type: ignore[method-assign]
    daemon._resync_later = lambda delay, touched=None, full=False: done.append(  # type: ignore[method-assign]
        ("later", full)
    )
    return daemon, done


def test_a_periodic_dump_that_the_routes_outran_probes_instead_of_blocking(
    monkeypatch: object,
) -> None:
    """An event's or a start's full check defers, then dumps on the loop (seconds without an
    answer at 100,000 routes); the periodic one, which nothing urges, probes at once."""
    daemon, done = _racing_daemon(monkeypatch)
    asyncio.run(daemon._check_full(periodic=True))
    assert done == [("probes", None, True)]
    daemon, done = _racing_daemon(monkeypatch)
    asyncio.run(daemon._check_full())
    assert done == [("later", True)]


def test_a_periodic_check_asked_alone_is_quiet_and_an_event_makes_it_loud() -> None:
    async def check() -> None:
        daemon = Daemon(Config(drift_check_interval=300.0), None, {})
        ctl = daemon.controller = Controller(FakeKernel(), FakeState())
        ctl.link_up("a", 1)
        ctl.link_up("b", 2)
        ctl.change([AddRoute.of(Route(4, "198.18.0.2", "239.1.1.1", "a", ("b",), 253))])
        daemon._tick()
        assert daemon._periodic_only
        daemon._resync_later(0.5, {"a"})  # an interface event before the check starts
        assert not daemon._periodic_only
        for handle in (daemon._resync, daemon._periodic):
            assert handle is not None
            handle.cancel()

    asyncio.run(check())
