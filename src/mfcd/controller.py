"""Applies validated changes all-or-nothing: model plan, then kernel, then the durable journal.

The controller owns the order that makes a change safe: the model computes the
kernel steps inside a transaction; the data plane (dataplane.Dataplane) applies them
and dataplane.execute undoes a partial application; the journal records the change
durably; only then is the model transaction committed and the client answered.  If any stage fails,
every earlier stage is undone, so memory, kernel and state file never disagree.
Kernel and state file are injected, so all of this is unit-tested with fakes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from mfcd import views
from mfcd.dataplane import (
    Dataplane,
    execute,
    missing,
    rewrite,
)
from mfcd.dataplane import undo as undo_ops
from mfcd.errors import KernelError, MfcdError, StateError, VifLimit
from mfcd.model import (
    DEFAULT_TABLE,
    AddRoute,
    AddTemplate,
    Change,
    DelRoute,
    DelTemplate,
    KernelEntry,
    KernelOp,
    PendingKey,
    Ports,
    Route,
    RouteKey,
    Router,
    SetThreshold,
    Step,
)
from mfcd.state import Loaded, RouteView, SnapshotNeeded
from mfcd.templates import TemplateKey

log = logging.getLogger("mfcd")


CHUNK = 1024  # changes planned and applied at a time


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC during bulk work.

    A large batch allocates millions of small acyclic objects; every generational pass
    would rescan all the routes alive (about 40% of the time of a 100,000-route batch).
    Nothing here forms reference cycles, so plain reference counting frees everything.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class KernelView:
    """What the kernel holds now: VIFs as (family, table, index) -> device name; MFC entries
    as model.KernelEntry, or None when the MFC was not read (a dump of a large table costs
    minutes: then each route's entry is probed instead, see Controller.sync); `tables` are
    the (family, table) that were read (None: every table the model uses)."""

    vifs: dict[tuple[int, int, int], str]
    mfc: dict[RouteKey, KernelEntry] | None
    tables: frozenset[tuple[int, int]] | None = None


def observe(
    plane: Dataplane,
    families: Iterable[int],
    full: bool = True,
    tables: Iterable[tuple[int, int]] = (),
) -> KernelView:
    """What the default tables of `families` and the other `tables` hold now, as a
    KernelView: the VIFs, and with `full` every MFC entry (a dump that costs minutes at
    1,000,000 entries; without it the MFC is None and Controller.sync probes the model's
    entries one by one instead). Another IPv6 table than the default is not read: the kernel
    does not list its VIFs (docs/kernel.md), so sync probes its entries instead."""
    families = tuple(families)
    wanted = {(family, DEFAULT_TABLE[family]) for family in families}
    wanted |= {(f, t) for f, t in tables if f in families and (f == 4 or t == DEFAULT_TABLE[f])}
    vifs: dict[tuple[int, int, int], str] = {}
    mfc: dict[RouteKey, KernelEntry] | None = {} if full else None
    for family, table in sorted(wanted):
        seen = plane.observe(family, table, entries=full)
        vifs.update(((family, table, vifi), vif.device) for vifi, vif in seen.vifs.items())
        if mfc is not None and seen.entries is not None:
            for (source, group), entry in seen.entries.items():
                mfc[(family, source, group, table)] = (entry.iif, entry.oifs)
    return KernelView(vifs, mfc, frozenset(wanted))


class StateLike(Protocol):
    ops_since_snapshot: int

    def append(self, changes: Sequence[Change]) -> None: ...
    def write_snapshot(
        self,
        routes: Iterable[Route],
        thresholds: dict[str, int],
        templates: dict[TemplateKey, Ports] | None = None,
    ) -> None: ...
    def replaced(self) -> str | None: ...


@dataclass(slots=True)
class Outcome:
    """What a change did (or in a dry run would do): kernel operations counted by action,
    and the steps themselves when they were asked for."""

    counts: Counter[str] = field(default_factory=Counter)
    steps: list[Step] = field(default_factory=list)


class Controller:
    def __init__(self, kernel: Dataplane, state: StateLike, router: Router | None = None) -> None:
        self.kernel = kernel
        self.state = state
        self.router = router or Router()
        # Called when the kernel may no longer match the model (a rollback it refused).
        self.on_drift: Callable[[], None] | None = None

    # --- start-up --------------------------------------------------------------------------------

    def restore(self, loaded: Loaded, links: dict[str, int]) -> None:
        """Install the saved routes for the interfaces that exist; the others stay pending."""
        with gc_paused():
            self._restore(loaded, links)

    def _restore(self, loaded: Loaded, links: dict[str, int]) -> None:
        # All at once and without an undo log (it would hold several entries per route, the
        # largest allocation of a start-up), CHUNK steps at a time: if anything fails, the
        # kernel's part is undone and the model starts over, one route at a time.
        router = self.router
        router.begin(undo=False)
        undo: list[KernelOp | None] = []
        try:
            router.thresholds.update(loaded.thresholds)
            steps: list[Step] = []
            for name, ifindex in links.items():
                steps += router.link_up(name, ifindex)
            for key, ports in loaded.routes.items():
                steps += router.restore(key, ports)
                if len(steps) >= CHUNK:
                    self._execute_into(steps, undo)
                    steps = []
            for tkey, ports in loaded.templates.items():
                router.keep_template(tkey, ports)
                steps += router.try_install(tkey)
            self._execute_into(steps, undo)
        except (KernelError, VifLimit) as e:
            self._report_undo_failures(
                [*getattr(e, "undo_failures", []), *undo_ops(self.kernel, undo)]
            )
            self.router = Router()
            log.warning("restoring all routes at once failed (%s); restoring one by one", e)
            self._restore_one_by_one(loaded, links)
            return
        router.commit()

    def _execute_into(self, steps: list[Step], undo: list[KernelOp | None]) -> None:
        """Apply steps; add what undoes them to `undo` (if one fails, the kernel undid them)."""
        execute(self.kernel, steps)
        undo += [step.undo for step in steps]

    def _restore_one_by_one(self, loaded: Loaded, links: dict[str, int]) -> None:
        router = self.router
        router.begin()
        router.thresholds.update(loaded.thresholds)
        for name, ifindex in links.items():
            router.note_link(name, ifindex)
        for key, ports in loaded.routes.items():
            router.keep(key, ports)
        for tkey, ports in loaded.templates.items():
            router.keep_template(tkey, ports)
        router.commit()
        for key in loaded.routes:
            self._install_or_park(key, f"restore {key[1]} -> {key[2]}")
        for tkey in loaded.templates:
            self._install_or_park(tkey, f"restore template {tkey[1]} -> {tkey[2]}")

    # --- client changes --------------------------------------------------------------------------

    def change(
        self,
        changes: Sequence[Change],
        dry_run: bool = False,
        keep_steps: bool = True,
        numbered: bool = False,
    ) -> Outcome:
        """Apply changes as one transaction: the kernel operations taken (or planned), counted,
        and with keep_steps also listed.  A change the model refuses is named in the error
        (its `op`, counted from 1) when there are several, or with `numbered` (a batch of one).

        Changes are planned and applied CHUNK at a time, so a batch of 100,000 routes never
        holds more than a chunk's steps: what the kernel must undo if a later change fails
        is kept as the undo operations alone.
        """
        router = self.router
        router.begin()
        outcome = Outcome()
        undo: list[KernelOp | None] = []  # what undoes each step applied so far, in order
        try:
            for start in range(0, len(changes), CHUNK):
                steps = self._plan_chunk(changes, start, numbered or len(changes) > 1)
                outcome.counts.update(step.action for step in steps)
                if keep_steps:
                    outcome.steps += steps
                if not dry_run:
                    self._execute_into(steps, undo)
            if dry_run or not router.changed():
                # Nothing to do (the same route again, an empty batch): no journal record.
                router.rollback()
                return outcome
            self._record(changes)
        except BaseException as e:
            # What is in the kernel comes out again, newest first (a chunk the kernel refused
            # has already undone its own part).
            failures = [*getattr(e, "undo_failures", []), *undo_ops(self.kernel, undo)]
            router.rollback()
            self._report_undo_failures(failures)
            raise
        router.commit()
        # A change that freed a VIF index (even one whose interface is gone, so no DelVif
        # step) lets routes waiting for one in.
        if router.blocked and any(router.has_free_vif(k[0], k[3]) for k in router.blocked):
            self.retry_pending(list(router.blocked))
        return outcome

    def _plan_chunk(self, changes: Sequence[Change], start: int, numbered: bool) -> list[Step]:
        router = self.router
        add_direct = router.add_direct
        steps: list[Step] = []
        for index in range(start, min(start + CHUNK, len(changes))):
            change = changes[index]
            try:
                # A new route on interfaces that have VIFs: nearly every route of a bulk load,
                # so tried first, with the fewest calls.
                if change.__class__ is AddRoute and add_direct(change[0], change[1], steps):
                    continue
                steps += self._plan(change)
            except MfcdError as e:
                if numbered:  # say which op of a batch failed
                    e.op = index + 1
                raise
        return steps

    def _plan(self, change: Change) -> list[Step]:
        router = self.router
        match change:
            case AddRoute(key, ports):
                return router.add(key, router.share(ports))
            case DelRoute(key):
                return router.del_route(key)
            case SetThreshold(interface, threshold):
                return router.set_threshold(interface, threshold)
            case AddTemplate(key, ports):
                return router.add_template(key, ports)
            case DelTemplate(key):
                return router.del_template(key)

    def _report_undo_failures(self, failures: Sequence[KernelError]) -> None:
        """A rollback the kernel refused leaves it out of step with the model: log, then repair."""
        for failure in failures:
            log.error("rollback incomplete, kernel and mfcd disagree: %s", failure)
        if failures and self.on_drift is not None:
            self.on_drift()

    def compaction_due(self) -> bool:
        """Whether the journal should be compacted into a snapshot now."""
        # Once the journal holds as many ops as there are routes (and at least 10,000), so
        # compaction's O(routes) cost is spread over O(routes) changes.
        return self.state.ops_since_snapshot >= max(10_000, len(self.router.routes))

    def maybe_compact(self) -> None:
        """Compact the state file here and now if it is due (the daemon instead writes the
        snapshot in a thread: see Daemon._compact)."""
        # The change is already durable in the journal, so a failed compaction only costs space.
        if self.compaction_due():
            try:
                self.compact()
            except StateError as e:
                log.error("compacting the state file failed (the journal keeps growing): %s", e)

    def compact(self) -> None:
        router = self.router
        self.state.write_snapshot(
            RouteView(router.persistent_routes()),
            dict(router.thresholds),
            templates=dict(router.templates),
        )

    def _record(self, changes: Sequence[Change]) -> None:
        """Make a change durable: appended to the journal or, if the state file was deleted or
        replaced behind mfcd's back, in a whole snapshot written there again."""
        try:
            self.state.append(changes)
        except SnapshotNeeded as e:
            # The model already holds the change (uncommitted), so the snapshot has it; if the
            # snapshot fails too, the change is refused and rolled back like any other.
            self._write_back(str(e))

    def keep_state_file(self) -> None:
        """Write the state file again if it was deleted or replaced while mfcd runs, so that
        a restart finds the routes even if no change came since (the daemon calls this
        every second)."""
        reason = self.state.replaced()
        if reason is not None:
            self._write_back(reason)

    def _write_back(self, reason: str) -> None:
        log.warning("%s; writing all %d routes there again", reason, len(self.router.routes))
        self.compact()

    # --- interface events ------------------------------------------------------------------------

    def link_up(self, interface: str, ifindex: int) -> list[Step]:
        """An interface exists: each family's VIF, then each waiting route, on its own.

        Separate transactions, so that one refusal (say, a route of a disabled family)
        does not keep the interface's other routes from coming back.
        """
        router = self.router
        router.begin()
        changed = router.note_link(interface, ifindex)
        router.commit()
        if not changed:
            return []
        started = time.monotonic()
        what = f"interface {interface} up"
        steps: list[Step] = []
        for vif in router.vifs_named(interface):
            steps += self._apply_quietly(what, router.revive_vif, vif.family, vif.table, interface)
        for key in router.waiting_for(interface):
            steps += self._install_or_park(key, what)
        if steps:
            log.info(
                "%s (ifindex %d): %s",
                what,
                ifindex,
                views.summarize(steps, time.monotonic() - started),
            )
        return steps

    def retry_pending(self, keys: Sequence[PendingKey]) -> list[Step]:
        """Try to install pending routes, each in its own transaction."""
        started = time.monotonic()
        steps: list[Step] = []
        for key in keys:
            steps += self._install_or_park(key, "install pending route")
        if steps:
            log.info("pending routes: %s", views.summarize(steps, time.monotonic() - started))
        return steps

    def _install_or_park(self, key: PendingKey, what: str) -> list[Step]:
        """Install a pending route; if the kernel refuses, keep it pending with the reason."""
        outcome = self._attempt(what, self.router.try_install, key)
        if not isinstance(outcome, str):
            return outcome
        if len(key) == 4 and key in self.router.routes:
            route = self.router.route(key)
            self.router.begin()
            self.router.park(route, f"the kernel refused it ({outcome}); mfcctl sync retries")
            self.router.commit()
        return []

    def link_down(self, interface: str, kernel_dropped_vif: bool = True) -> list[Step]:
        router = self.router
        vifs = router.vifs_named(interface)
        if interface in router.links and vifs:
            routes = sum(vif.refs for vif in vifs)
            log.info("interface %s gone: %d routes degraded until it is back", interface, routes)
        return self._apply_quietly(
            f"interface {interface} gone", self.router.link_down, interface, kernel_dropped_vif
        )

    def link_event(self, kind: str, interface: str, ifindex: int) -> list[Step]:
        """Apply one rtnetlink link event ("new" or "del")."""
        links = self.router.links
        if kind == "del":
            return self.link_down(interface) if links.get(interface) == ifindex else []
        steps: list[Step] = []
        renamed_from = next((n for n, i in links.items() if i == ifindex and n != interface), None)
        if renamed_from is not None:
            steps += self.link_down(renamed_from, kernel_dropped_vif=False)
        return steps + self.link_up(interface, ifindex)

    def sync_links(self, links: dict[str, int]) -> list[Step]:
        """Bring the model's view of interfaces in line with a fresh dump (after a missed event)."""
        steps: list[Step] = []
        present = set(links.values())
        for name, ifindex in [(n, i) for n, i in self.router.links.items() if n not in links]:
            # Gone under this name but its device still exists: renamed, so the kernel still
            # has the VIF (on the renamed device) and mfcd must remove it.
            steps += self.link_down(name, kernel_dropped_vif=ifindex not in present)
        for name, ifindex in links.items():
            steps += self.link_event("new", name, ifindex)
        return steps

    def sync(self, view: KernelView, dry_run: bool = False) -> list[dict[str, Any]]:
        """Repair drift between the kernel's tables and the model; report each repair.

        Then routes still pending for want of a VIF or after a kernel refusal are retried:
        a repair may have removed what stood in their way (a VIF another program added).

        With `view.mfc` None the MFC is not compared as a whole: each installed route's entry
        is probed (O(1) each) and re-added if missing, and the others are written again in
        place (the kernel keeps their counters), which corrects a wrong iif or oif set the
        probe cannot see. Entries mfcd does not own are then neither found nor removed.
        """
        started = time.monotonic()
        router = self.router
        if view.mfc is not None:
            report = self.repair(router.repair(view.vifs, view.mfc, view.tables), dry_run)
            # Tables that could not be read (IPv6 other than the default): probe their entries.
            read = view.tables
            if read is not None:
                unread = [k for k in router.installed if (k[0], k[3]) not in read]
                report += self.check_entries(unread, dry_run)
        else:
            report, readded = self.repair_vifs(view.vifs, dry_run, view.tables)
            stale = set(router.users(readded))
            report += self.check_entries(list(router.installed), dry_run, stale)
        if not dry_run:
            retried = self.retry_pending([*router.blocked, *router.refused])
            report += map(views.describe_step, retried)
            log.info(
                "sync: %d repairs, %d routes checked%s in %.2f s",
                len(report),
                len(router.installed),
                "" if view.mfc is not None else " by probe (foreign entries not looked for)",
                time.monotonic() - started,
            )
        return report

    def repair(self, steps: Sequence[Step], dry_run: bool = False) -> list[dict[str, Any]]:
        """Apply repair steps one by one (a refused one is reported with its error)."""
        report = []
        for step in steps:
            error: KernelError | None = None
            if not dry_run:
                try:
                    execute(self.kernel, [step])
                except KernelError as e:
                    error = e
                    log.warning("sync: %s failed: %s", views.step_text(step), e)
                else:
                    log.debug("sync: repaired: %s", views.step_text(step))
            report.append(views.repair(step, error))
        return report

    def repair_vifs(
        self,
        kernel_vifs: dict[tuple[int, int, int], str],
        dry_run: bool = False,
        tables: AbstractSet[tuple[int, int]] | None = None,
    ) -> tuple[list[dict[str, Any]], set[tuple[int, int, str]]]:
        """Make the kernel's VIFs match the model's in `tables` (None: all): the repairs, and
        the (family, table, interface) of each VIF added back (its routes' entries must be
        written again)."""
        steps, readded = self.router.repair_vifs(kernel_vifs, tables)
        return self.repair(steps, dry_run), readded

    def check_entries(
        self,
        keys: Sequence[RouteKey],
        dry_run: bool = False,
        stale: AbstractSet[RouteKey] = frozenset(),
        rewrite_all: bool = True,
    ) -> list[dict[str, Any]]:
        """Probe the kernel's entry of each installed route in `keys`; write entries again.

        The repairs are the entries found missing, and those in `stale` (known to need
        writing); unless `dry_run` they are written. With `rewrite_all` every entry is
        written again, missing or not: MRT_ADD_MFC replaces in place and keeps the
        counters, and only a write corrects an entry whose iif or oifs differ, which a
        probe (SIOCGETSGCNT) cannot see. O(len(keys)): a few microseconds a route.
        """
        router = self.router
        installed = router.installed
        keys = [key for key in keys if key in installed]
        wanted = set(missing(self.kernel, keys))
        wanted.update(key for key in keys if key in stale)
        failed: dict[RouteKey, KernelError] = {}
        if not dry_run:
            writes = keys if rewrite_all else [key for key in keys if key in wanted]
            for op, error in rewrite(self.kernel, (router.entry(key) for key in writes)):
                failed[(op.family, op.source, op.group, op.table)] = error
        report = []
        for key in keys:
            if key not in wanted and key not in failed:
                continue
            step = Step(router.entry(key), None, "reissue_mfc")
            refused = failed.get(key)
            if refused is not None:
                log.warning("sync: %s failed: %s", views.step_text(step), refused)
            elif not dry_run:
                log.debug("sync: repaired: %s", views.step_text(step))
            report.append(views.repair(step, refused))
        return report

    def _apply_quietly(self, what: str, method: Any, *args: Any) -> list[Step]:
        """Run a model method as its own transaction; log instead of raising (no client waits)."""
        outcome = self._attempt(what, method, *args)
        return [] if isinstance(outcome, str) else outcome

    def _attempt(self, what: str, method: Any, *args: Any) -> list[Step] | str:
        """Run a model method as its own transaction: its steps, or why it failed (logged)."""
        router = self.router
        router.begin()
        try:
            steps: list[Step] = method(*args)
            execute(self.kernel, steps)
        except Exception as e:  # never leave the transaction open, whatever went wrong
            router.rollback()
            log.error("%s: %s", what, e)
            self._report_undo_failures(getattr(e, "undo_failures", []))
            return str(e)
        router.commit()
        if log.isEnabledFor(logging.DEBUG):  # callers log a summary at info
            for step in steps:
                log.debug("%s: %s", what, views.step_text(step))
        return steps
