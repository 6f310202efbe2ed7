"""Learned entries: (S,G) entries the kernel asks for, installed from templates.

An entry is installed when the kernel reports a packet with no entry (NOCACHE upcall),
re-pointed on a wrong interface, expired when idle, flushed.

Learning happens on the event loop as soon as the upcall is read: the kernel holds the
first packets of the flow (up to 4, for about 10 s) on an unresolved entry and forwards
them when the entry is added. A learned entry is part of the realization (model.Router
keeps it as a route of origin "learned"), never of the state file: after a restart the
traffic teaches it again. So learning is one model transaction and one kernel write, with
no journal and no fsync.

The kernel sends one NOCACHE upcall per unresolved (S,G) and then stays quiet for its
~10 s life. An upcall no template matches is remembered for that long (bounded: RECENT_MAX,
oldest first out), so that a template added while the traffic flows is matched against
it at once instead of after the kernel's entry expires. Nothing is put in the kernel for
unmatched traffic (no "stop filter" entry that would block a flow forever), except when
the templates of exactly one other interface match it and send it out of its arrival
interface: then that entry is learned, so that the flow is forwarded when it comes from
the other interface (see _learn_for_its_iif).

Idle expiry reads the packet counters of learned entries only, a slice per tick (10 a
second): every learned entry is looked at about four times per idle timeout, so a tick
costs O(learned / (timeout / 4) * interval) probes, never O(all routes), and removes at
most the entries of its slice.

Flushing every learned entry, and letting go of the entries of a template being deleted,
reuse the expiry's steps: STEP entries at a time, each step its own model transaction
and kernel write, yielded so that the daemon serves clients between two slices
(slices.run_sliced). Between two steps each entry is either learned (in the model and
the kernel) or gone from both; a step the kernel refuses is rolled back on its own, its
entries stay learned (logged), and the work goes on with the next step.

Monitor subscribers (events.EventBus) are told of each entry learned and each removed
("expired", with why: idle, flush, template_deleted or _changed); with no subscriber this
costs one test per learned or removed batch, and nothing is built.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from mfcd import templates as tpl
from mfcd.dataplane import Dataplane, Upcall, by_table, execute
from mfcd.errors import KernelError
from mfcd.events import EventBus
from mfcd.model import RouteKey, Router, Step
from mfcd.protocol import FAMILY_NAMES
from mfcd.templates import TemplateKey

log = logging.getLogger("mfcd")

UNRESOLVED_LIFE = 10.0  # seconds the kernel keeps an unresolved entry (and stays quiet about it)
RECENT_MAX = 10_000  # unmatched upcalls remembered at most
DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about learned entries dropped
STEP = 64  # learned entries an expiry step reads and removes between two turns of the loop


def _where(upcall: Upcall) -> tuple[int, int, str, str, int]:
    return upcall.family, upcall.table, upcall.source, upcall.group, upcall.vif


# A learned entry as an event tells of it: its key, template and iif (None: not known).
_Told = tuple[RouteKey, TemplateKey | None, str | None]


class RouterHolder(Protocol):
    """What the learner needs of the controller: its router (replaced at a failed restore)."""

    router: Router


class Learner:
    def __init__(
        self,
        controller: RouterHolder,
        plane: Dataplane,
        idle_timeout: float = 60.0,
        max_learned: int = 100_000,
        *,
        clock: Callable[[], float] = time.monotonic,
        events: EventBus | None = None,
    ) -> None:
        self.controller = controller
        self.plane = plane
        self.idle_timeout = idle_timeout  # 0: learned entries never expire
        self.max_learned = max_learned
        self.clock = clock
        self.since: dict[RouteKey, float] = {}  # when each learned entry was learned
        # Per learned entry: its packet count when last read, and since when it has that count.
        self.seen: dict[RouteKey, tuple[int, float]] = {}
        # Unmatched upcalls: (family, table, source, group) -> (arrival VIF, when).
        self.recent: OrderedDict[tuple[int, int, str, str], tuple[int, float]] = OrderedDict()
        self.events = events if events is not None else EventBus()  # monitor subscribers
        # Since start-up ("expired": idle only); metrics.Registry.entries may be this Counter.
        self.counts: Counter[str] = Counter(
            {"learned": 0, "dropped": 0, "expired": 0, "unmatched": 0, "repointed": 0}
        )
        self._cycle: list[RouteKey] = []  # the learned entries of the expiry pass under way
        self._position = 0
        self.retired: set[TemplateKey] = set()  # templates being deleted: see retiring()
        self._dropped_unlogged = 0
        self._dropped_logged_at = -math.inf
        # The templates and those holding VIFs, as of the last retry of `recent`.
        self._templates: tuple[dict[TemplateKey, Any], dict[TemplateKey, None]] = ({}, {})

    @property
    def router(self) -> Router:
        return self.controller.router

    @property
    def interval(self) -> float:
        """Seconds between two ticks: 0.1 (a quarter of a shorter idle timeout), so that a
        tick's slice stays small: at 100,000 learned entries and a 60 s timeout, 667
        counters read, about a millisecond."""
        if self.idle_timeout <= 0:
            return 1.0
        return min(0.1, max(0.025, self.idle_timeout / 4))

    # --- upcalls ---------------------------------------------------------------------------------

    def on_upcalls(self, upcalls: Iterable[Upcall]) -> int:
        """Learn from NOCACHE upcalls and re-point on WRONGVIF ones; how many were learned."""
        learned = 0
        for upcall in upcalls:
            if upcall.kind == "nocache":
                learned += self._learn(_where(upcall), remember=True)
            elif upcall.kind == "wrongvif":
                self._repoint(upcall)
        return learned

    def _learn(self, where: tuple[int, int, str, str, int], remember: bool) -> int:
        """Learn the entry of one packet (family, table, source, group, arrival VIF)."""
        family, table, source, group, vif = where
        router = self.router
        if self.retired and router.match(*where) in self.retired:
            # Its template is going (retiring): matched again once it is gone (after_change).
            if remember:
                self._remember(family, table, source, group, vif)
            return 0
        if len(router.learned) >= self.max_learned and router.would_learn(*where):
            self._dropped()  # (checked without a transaction: a flood comes here often)
            return 0
        router.begin()
        try:
            template, steps = router.learn(family, table, source, group, vif)
            execute(self.plane, steps)
        except Exception as e:  # never leave the transaction open; a refusal is logged
            router.rollback()
            log.error("learning %s -> %s: %s", source, group, e)
            self.counts["dropped"] += 1  # (the kernel refused: not learned, like past the limit)
            return 0
        router.commit()
        key = (family, source, group, table)
        if not steps:
            if remember and key not in router.routes:  # no template, or one still pending
                self._remember(family, table, source, group, vif)
                if template is None:
                    return self._learn_for_its_iif(family, table, source, group, vif)
            return 0
        now = self.clock()
        self.since[key] = now
        self.seen[key] = (-1, now)
        self.counts["learned"] += 1
        self.recent.pop((family, table, source, group), None)
        if self.events.subscribers and template is not None:
            self._tell("learned", [(key, template, router.routes[key].iif)])
        return 1  # (not logged: a flood of new flows would flood the log)

    def _learn_for_its_iif(self, family: int, table: int, source: str, group: str, vif: int) -> int:
        """A packet no template of its arrival interface matches, whose (S,G) the templates of
        exactly one other interface match, and that interface's template sends the flow out
        of the arrival interface: learn that template's entry now. Two routers on one LAN
        forwarding the same source each see the other's copy first (smcroute's issue #143);
        while the kernel's unresolved entry lives (~10 s) it sends no upcall for the packets
        of the (S,G) from the right interface, so they would be lost until then. The entry
        forwards only from that interface: the copies keep being dropped."""
        router = self.router
        homes = []
        for name, best in router.template_index().match_each(family, table, source, group):
            other = router.vifs.get((family, table, name))
            if other is not None and other.vifi != vif and other.ifindex is not None:
                homes.append((other.vifi, best))  # (a wildcard iif has no VIF: not considered)
        if len(homes) != 1:
            return 0
        (home, best), arrival = homes[0], router.slots[(family, table)][vif]
        if arrival not in router.templates[best].oifs:
            return 0
        return self._learn((family, table, source, group, home), remember=False)

    def _repoint(self, upcall: Upcall) -> None:
        router = self.router
        if self.retired and router.match(*_where(upcall)) in self.retired:
            return  # not to a template being deleted
        router.begin()
        try:
            steps = router.repoint(
                upcall.family, upcall.table, upcall.source, upcall.group, upcall.vif
            )
            execute(self.plane, steps)
        except Exception as e:
            router.rollback()
            log.error("re-pointing %s -> %s: %s", upcall.source, upcall.group, e)
            return
        router.commit()
        if steps:
            self.counts["repointed"] += 1
            log.info(
                "learned entry %s -> %s now arrives on VIF %d: re-pointed",
                upcall.source,
                upcall.group,
                upcall.vif,
            )

    def _remember(self, family: int, table: int, source: str, group: str, vif: int) -> None:
        self.counts["unmatched"] += 1
        key = (family, table, source, group)
        self.recent.pop(key, None)
        self.recent[key] = (vif, self.clock())
        if len(self.recent) > RECENT_MAX:
            self.recent.popitem(last=False)

    def _dropped(self) -> None:
        self.counts["dropped"] += 1
        self._dropped_unlogged += 1
        now = self.clock()
        if now - self._dropped_logged_at >= DROP_LOG_INTERVAL:
            log.warning(
                "max_learned (%d) reached: %d new flows not learned since the last report",
                self.max_learned,
                self._dropped_unlogged,
            )
            self._dropped_logged_at = now
            self._dropped_unlogged = 0

    def after_change(self) -> int:
        """After a client's change or an interface event: if the templates changed (or one
        took its VIFs), match them against the unmatched upcalls of the last
        UNRESOLVED_LIFE seconds; how many were learned."""
        router = self.router
        unlearned = router.take_unlearned()
        now = (router.templates, router.holding)
        if now == self._templates:
            return 0
        old = self._templates[0]
        self._templates = (dict(router.templates), dict(router.holding))
        self._let_go(old, unlearned)
        self._forget_recent(self.clock())
        learned = 0
        for (family, table, source, group), (vif, _) in list(self.recent.items()):
            learned += self._learn((family, table, source, group, vif), remember=False)
        return learned

    def _let_go(
        self, old: dict[TemplateKey, Any], unlearned: dict[RouteKey, tuple[TemplateKey, str]]
    ) -> None:
        """Forget the learned entries a change of templates removed (model.Router._rematch)
        and tell subscribers why, each with the template and iif it had (`unlearned`, as
        Router.take_unlearned gave them): O(learned entries), but templates change seldom."""
        router = self.router
        gone = [key for key in self.since if key not in router.learned]
        for key in gone:
            del self.since[key]
            self.seen.pop(key, None)
        if not gone or not self.events.subscribers:
            return
        deleted = [t for t in old if t not in router.templates]
        by_reason: dict[str, list[_Told]] = {}
        for key in gone:
            if key in router.routes:  # a route took its place: its route.add event says so
                continue
            had = unlearned.get(key)
            template, iif = had if had is not None else _deleted_match(key, deleted)
            reason = "template_deleted" if template in deleted else "template_changed"
            by_reason.setdefault(reason, []).append((key, template, iif))
        for reason, told in by_reason.items():
            self._tell("expired", told, reason=reason)

    def _forget_recent(self, now: float) -> None:
        recent = self.recent
        while recent:
            key, (_, when) = next(iter(recent.items()))
            if now - when < UNRESOLVED_LIFE:
                break
            del recent[key]

    # --- expiry and flush --------------------------------------------------------------------

    def tick(self) -> int:
        """One slice of the idle expiry, at once; how many expired."""
        return sum(self.ticking())

    def ticking(self) -> Iterator[int]:
        """One slice of the idle expiry (run every `interval` seconds), STEP entries at a
        time: yields how many of each step expired, so that the caller can serve others
        between two steps."""
        now = self.clock()
        self._forget_recent(now)
        if self.idle_timeout <= 0 or (not self.router.learned and not self.since):
            return
        if self._position >= len(self._cycle):
            self._start_cycle()
        period = max(self.interval, self.idle_timeout / 4)
        size = math.ceil(len(self._cycle) * self.interval / period) if self._cycle else 0
        chunk = self._cycle[self._position : self._position + size]
        self._position += size
        for start in range(0, len(chunk), STEP):
            learned = self.router.learned  # (read again: others may have run meanwhile)
            keys = []
            for key in chunk[start : start + STEP]:
                if key in learned:
                    keys.append(key)
                elif key in self.since:  # flushed, its template gone, or now an API route
                    del self.since[key]
                    self.seen.pop(key, None)
            idle = self._idle(keys, now)
            if idle:
                self.counts["expired"] += self._remove(idle, "idle")
            yield len(idle)

    def _start_cycle(self) -> None:
        """The entries of the next expiry pass: those the learner learned (a key list, one
        copy; the entries removed meanwhile by other means are let go of as it meets them)."""
        self._cycle = list(self.since)
        self._position = 0

    def _idle(self, keys: list[RouteKey], now: float) -> list[RouteKey]:
        """The entries among `keys` whose packet counter has not moved for idle_timeout."""
        idle = []
        for (family, table), some in by_table(keys).items():
            try:
                found = self.plane.counters(family, table, [(k[1], k[2]) for k in some]).entries
            except KernelError as e:
                log.error("reading the counters of learned entries failed: %s", e)
                continue
            for key, counters in zip(some, found, strict=True):
                packets = counters.packets if counters is not None else -1
                last = self.seen.get(key)
                if last is None or last[0] != packets:
                    self.seen[key] = (packets, now)
                elif now - last[1] >= self.idle_timeout:
                    idle.append(key)
        return idle

    def flush(self) -> int:
        """Remove every learned entry now; how many."""
        return sum(self.flushing())

    def flushing(self) -> Iterator[int]:
        """Remove every learned entry, STEP at a time (see the module's docstring): yields
        how many each step removed. Entries learned meanwhile came after the flush: they
        stay. Logs the total at the end."""
        keys = list(self.router.learned)
        flushed = 0
        for start in range(0, len(keys), STEP):
            learned = self.router.learned  # (read again: others may have run meanwhile)
            removed = self._remove([k for k in keys[start : start + STEP] if k in learned], "flush")
            flushed += removed
            yield removed
        if flushed:
            log.info("removed %d learned entries (flush)", flushed)

    def retiring(self, template: TemplateKey, steps: list[Step] | None = None) -> Iterator[int]:
        """Before `template` is deleted, let go of the entries learned from it STEP at a
        time (see the module's docstring): each goes to the next best template of its
        interface or out of the kernel, as Router.del_template does in one transaction
        (seconds at 100,000 entries). Meanwhile no entry is learned or re-pointed to it;
        the flows it would have taken are remembered and matched again once it is gone
        (after_change). Yields how many entries each step let go; the kernel steps taken
        are added to `steps`. The template itself stays: the caller deletes it."""
        self.retired.add(template)
        try:
            keys = self.router.learned_from(template)
            for start in range(0, len(keys), STEP):
                yield self._rematch(keys[start : start + STEP], template, steps)
        finally:
            self.retired.discard(template)

    def rematching(self, keys: list[RouteKey]) -> Iterator[int]:
        """Point these learned entries at their best template again, STEP at a time: those
        retiring() re-pointed, when the template's deletion then failed."""
        for start in range(0, len(keys), STEP):
            yield self._rematch(keys[start : start + STEP], None, None)

    def _rematch(
        self, keys: list[RouteKey], retiring: TemplateKey | None, taken: list[Step] | None
    ) -> int:
        """One step of retiring() (the `keys` still learned from `retiring`, matched with
        the templates not retired) or of rematching() (the `keys` still learned)."""
        router = self.router
        if retiring is None:
            keys = [k for k in keys if k in router.learned]
            index = router.template_index()
        else:
            keys = [k for k in keys if router.learned.get(k) == retiring]
            index = tpl.Index(t for t in router.templates if t not in self.retired)
        told = self._gone(keys) if self.events.subscribers else None
        router.begin()
        try:
            steps = router.rematch_entries(keys, index)
            execute(self.plane, steps)
        except Exception as e:
            router.rollback()
            log.error("matching learned entries to their templates again failed: %s", e)
            return 0
        router.commit()
        if taken is not None:
            taken += steps
        gone = {k for k in keys if k not in router.learned}
        for key in gone:
            self.since.pop(key, None)
            self.seen.pop(key, None)
            router.unlearned.pop(key, None)  # (told here, from _gone: not by after_change)
        if told:
            told = [t for t in told if t[0] in gone]
            self._tell("expired", told, reason="template_deleted")
        return len(keys)

    def _remove(self, keys: list[RouteKey], why: str) -> int:
        router = self.router
        told = self._gone(keys) if self.events.subscribers else None
        router.begin()
        steps: list[Step] = []
        try:
            for key in keys:
                steps += router.unlearn(key)
            execute(self.plane, steps)
        except Exception as e:
            router.rollback()
            log.error("removing learned entries (%s) failed: %s", why, e)
            return 0
        router.commit()
        unlearned = router.unlearned  # (told here, from _gone: not by after_change)
        for key in keys:
            self.since.pop(key, None)
            self.seen.pop(key, None)
            unlearned.pop(key, None)
        if told:
            self._tell("expired", told, reason=why)
        return len(keys)

    def _gone(self, keys: Iterable[RouteKey]) -> list[_Told]:
        """What an `expired` event says of learned entries about to go: template and iif."""
        learned, routes = self.router.learned, self.router.routes
        return [(k, learned[k], routes[k].iif) for k in keys if k in learned and k in routes]

    def _tell(self, kind: str, entries: list[_Told], **extra: str) -> None:
        """Tell monitor subscribers of learned entries (past full buffers: counted only)."""
        bus = self.events
        for index, ((family, source, group, table), template, iif) in enumerate(entries):
            if bus.saturated():
                bus.drop(len(entries) - index)
                return
            fields: dict[str, Any] = {"family": FAMILY_NAMES[family], "table": table}
            fields.update(source=source, group=group)
            if template is not None:  # (unknown after a template change: see _let_go)
                fields["iif"] = iif
                _, t_source, t_group, _, t_iif = template
                fields["template"] = {"source": t_source, "group": t_group, "iif": t_iif}
            bus.emit(kind, **fields, **extra)


def _deleted_match(
    key: RouteKey, deleted: list[TemplateKey]
) -> tuple[TemplateKey | None, str | None]:
    """The best of the `deleted` templates that matches a learned entry gone with no record
    of its own template (an entry an api route had taken before it went): its iif too."""
    family, source, group, table = key
    was = [t for t in deleted if t[0] == family and t[3] == table and tpl.matches(t, source, group)]
    if not was:
        return None, None
    template = max(was, key=tpl.specificity)
    return template, template[4]
