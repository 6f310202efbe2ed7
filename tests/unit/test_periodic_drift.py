"""Tests for the periodic drift check's pure parts: what a tick of drift_check_interval
checks (mfcd.daemon.periodic_check) and how the status line tells the last repair."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from types import SimpleNamespace

from mfcd.config import Config
from mfcd.controller import Controller
from mfcd.daemon import PERIODIC_FULL_ROUTES, Daemon, periodic_check
from mfcd.model import AddRoute, Route
from mfcd.views import last_repairs
from tests.unit.conftest import FakeKernel, FakeState


def test_a_tick_dumps_the_table_of_few_routes_and_probes_above() -> None:
    assert periodic_check(5, 2, 5, running=False) == "full"
    full = PERIODIC_FULL_ROUTES
    assert periodic_check(full, 2, full, running=False) == "full"
    big = PERIODIC_FULL_ROUTES + 1
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
        asked: list[tuple[float, set[str] | None, bool, bool]] = []
        daemon._resync_later = lambda delay, touched=None, full=False, periodic=False: asked.append(  # type: ignore[method-assign]
            (delay, touched, full, periodic)
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
        assert asked == [(0.0, None, True, True)]  # every route, with the dump (one route)
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

    async def probes(touched: set[str] | None, quiet: bool) -> None:
        done.append(("probes", touched, quiet))

    daemon._check_probes = probes  # type: ignore[method-assign]

    def later(
        delay: float, touched: set[str] | None = None, full: bool = False, periodic: bool = False
    ) -> None:
        done.append(("later", full))

    daemon._resync_later = later  # type: ignore[method-assign]
    return daemon, done


def test_a_periodic_dump_that_the_routes_outran_probes_instead_of_blocking(
    monkeypatch: object,
) -> None:
    """An event's or a start's full check defers, then dumps on the loop (seconds without an
    answer at 100,000 routes); the periodic one, which nothing urges, probes at once."""
    daemon, done = _racing_daemon(monkeypatch)
    asyncio.run(daemon._check_full(urgent=False, quiet=True))
    assert done == [("probes", None, True)]
    daemon, done = _racing_daemon(monkeypatch)
    asyncio.run(daemon._check_full())
    assert done == [("later", True)]


def test_what_asked_for_a_check_decides_its_log_level_and_whether_it_may_block() -> None:
    async def check() -> None:
        daemon = Daemon(Config(drift_check_interval=300.0), None, {})
        ctl = daemon.controller = Controller(FakeKernel(), FakeState())
        ctl.link_up("a", 1)
        ctl.link_up("b", 2)
        ctl.change([AddRoute.of(Route(4, "198.18.0.2", "239.1.1.1", "a", ("b",), 253))])
        asked: list[tuple[object, ...]] = []

        async def full(urgent: bool = True, quiet: bool = False) -> None:
            asked.append(("full", urgent, quiet))

        async def probes(touched: set[str] | None, quiet: bool) -> None:
            asked.append(("probes", touched, quiet))

        daemon._check_full = full  # type: ignore[method-assign]
        daemon._check_probes = probes  # type: ignore[method-assign]
        daemon._tick()  # the tick alone: quiet, and its dump may not block
        daemon._resync_later(1.0, set())  # a postponement (a check running) changes nothing
        await daemon._check_drift()
        assert asked == [("full", False, True)]
        daemon._tick()
        daemon._resync_later(0.5, {"a"})  # an interface event before the check starts
        await daemon._check_drift()
        assert asked[-1] == ("full", False, False)  # loud now; still the tick's dump
        daemon._resync_later(0.0, full=True)  # a start that found the tables in use
        daemon._tick()
        await daemon._check_drift()
        assert asked[-1] == ("full", True, False)
        for handle in (daemon._resync, daemon._periodic):
            if handle is not None:
                handle.cancel()

    asyncio.run(check())


def test_a_tick_with_nothing_to_compare_still_counts_as_a_check() -> None:
    """The example alert fires when the last check's timestamp stops moving: an idle daemon
    (no route, no VIF) checks nothing but must not look like one whose checks stopped."""

    async def check() -> None:
        daemon = Daemon(Config(drift_check_interval=300.0), None, {})
        daemon.controller = Controller(FakeKernel(), FakeState())
        assert daemon.registry.drift_checked_at is None
        daemon._tick()
        assert daemon.registry.drift_checked_at is not None
        assert daemon._periodic is not None
        daemon._periodic.cancel()

    asyncio.run(check())
