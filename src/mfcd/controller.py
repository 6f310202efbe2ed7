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
from collections.abc import (
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress, filterfalse, groupby, islice, repeat
from operator import countOf, is_, itemgetter, ne
from typing import Any, NamedTuple, Protocol

from mfcd import views, wildcards
from mfcd.dataplane import (
    LATER_MIN,
    Dataplane,
    LaterDataplane,
    execute,
    missing,
    rewrite,
    table_owned,
    undo_applied,
)
from mfcd.dataplane import undo as undo_ops
from mfcd.declarations import (
    Declarations,
    Diff,
    Template,
    join_intents,
    join_keys_of,
    place_of,
    template_intents,
    template_keys,
    template_patterns,
    template_unexpanded,
)
from mfcd.declarations import Join as DeclaredJoin
from mfcd.errors import (
    DeclaredInConfig,
    InvalidArgument,
    KernelError,
    MfcdError,
    NotFound,
    StateError,
    VifLimit,
)
from mfcd.groups import (
    ORIGIN_CONFIG,
    Join,
    JoinKey,
    Joins,
    Leave,
    MembershipOp,
    SetMrdisc,
    describe_key,
)
from mfcd.model import (
    DEFAULT_TABLE,
    DEFAULT_THRESHOLD,
    NO_SETTING,
    RUN_MIN,
    AddMfc,
    AddRoute,
    AddTemplate,
    Change,
    DelMfc,
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
    TableKey,
    renamed_from,
    template_text,
)
from mfcd.protocol import family_text
from mfcd.state import Loaded, RouteView, RunOfAdds, SnapshotNeeded
from mfcd.templates import TemplateKey
from mfcd.wildcards import (
    Pattern,
    expand,
    expansion_of,
    is_wildcard,
    matches,
    per_iif,
    touched,
)

log = logging.getLogger("mfcd")
_new = tuple.__new__  # a NamedTuple made without its own __new__: half the cost


_KEY, _PORTS, _GROUP = itemgetter(0), itemgetter(1), itemgetter(2)  # of an AddRoute, a key
_ACTION = itemgetter(2)  # of a Step
_FAMILY, _TABLE = itemgetter(0), itemgetter(3)  # of a RouteKey
CHUNK = 1024  # changes planned and applied at a time
# Routes whose entries reissue_slices() writes between two yields: small, as the daemon
# gives the loop a turn only once a slice has run slices.SLICE_SECONDS (a yield costs
# a generator resume, about a microsecond).
REISSUE_CHUNK = 50
# Declared route changes declared_slices() applies between two yields (the daemon gives the
# loop a turn once a slice has run slices.SLICE_SECONDS).
RELOAD_CHUNK = 100
# Changes of one request that may wait for a group's sync; a larger request (a bulk batch) is
# journaled on its own, after the group: its own work dwarfs a sync, and what it replaces
# need not be kept.
GROUP_MAX_CHANGES = CHUNK
# What a join the kernel refused says while pending: daemon.Daemon._check_joins tries it
# again on its own (every JOIN_CHECK_INTERVAL, less often while it keeps failing).
REJOIN_HINT = "mfcd tries it again by itself, mfcctl sync at once"


class gc_paused:  # noqa: N801 (used as the function it was: `with gc_paused():`)
    """Pause the cyclic GC during bulk work.

    A large batch allocates millions of small acyclic objects; every generational pass
    would rescan all the routes alive (about 40% of the time of a 100,000-route batch).
    Nothing here forms reference cycles, so plain reference counting frees everything.
    (A class, not a contextlib generator: every request enters it, and that costs a
    fifth as much.)
    """

    __slots__ = ("enabled",)

    def __enter__(self) -> None:
        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class KernelView:
    """What the kernel holds now: VIFs as (family, table, index) -> device name (None: the
    kernel does not name it, in an IPv6 table other than the default); MFC entries
    as model.KernelEntry, or None when the MFC was not read (a dump of a large table costs
    minutes: then each route's entry is probed instead, see Controller.sync); `tables` are
    the (family, table) that were read (None: every table the model uses)."""

    vifs: Mapping[tuple[int, int, int], str | None]
    mfc: dict[RouteKey, KernelEntry] | None
    tables: frozenset[tuple[int, int]] | None = None
    static: frozenset[RouteKey] = frozenset()  # keys of `mfc` whose entry is MFC_STATIC


def observe(
    plane: Dataplane,
    families: Iterable[int],
    full: bool = True,
    tables: Iterable[tuple[int, int]] = (),
) -> KernelView:
    """What the default tables of `families` and the other `tables` hold now, as a
    KernelView: the VIFs, and with `full` every MFC entry (a dump that costs minutes at
    1,000,000 entries; without it the MFC is None and Controller.sync probes the model's
    entries one by one instead)."""
    families = tuple(families)
    wanted = {(family, DEFAULT_TABLE[family]) for family in families}
    wanted |= {(f, t) for f, t in tables if f in families}
    vifs: dict[tuple[int, int, int], str | None] = {}
    mfc: dict[RouteKey, KernelEntry] | None = {} if full else None
    static: set[RouteKey] = set()
    for family, table in sorted(wanted):
        seen = plane.observe(family, table, entries=full)
        vifs.update(((family, table, vifi), vif.device) for vifi, vif in seen.vifs.items())
        if mfc is not None and seen.entries is not None:
            for (source, group), entry in seen.entries.items():
                mfc[(family, source, group, table)] = (entry.iif, entry.oifs)
                if entry.static:
                    static.add((family, source, group, table))
    return KernelView(vifs, mfc, frozenset(wanted), frozenset(static))


class RouteRun(NamedTuple):
    """changes[start : start + len(keys)] of a change: the AddRoutes of `keys` (one family
    and table) on one shared `ports`, which the model may take in one step (Router.add_run)
    when they are all new and their interfaces have VIFs, and the journal writes from the
    columns `sources` and `groups` (the keys' addresses, in order; empty: taken from the
    keys) without a step per route (state.RunOfAdds)."""

    start: int
    keys: list[RouteKey]
    ports: Ports
    sources: Sequence[str] = ()
    groups: Sequence[str] = ()


class StateLike(Protocol):
    ops_since_snapshot: int

    def append(self, changes: Sequence[Change], runs: Sequence[RunOfAdds] = ()) -> None: ...
    def write_snapshot(
        self,
        routes: Iterable[Route],
        thresholds: dict[str, int],
        extra: dict[str, Any] | None = None,
        templates: dict[TemplateKey, Ports] | None = None,
    ) -> None: ...
    def replaced(self) -> str | None: ...


# The routes and templates a change replaced, as they were (RouteKey or TemplateKey -> Ports):
# what monitor events say of them (`was`).
Replaced = dict[RouteKey | TemplateKey, Ports]

# What a request's changes replaced, to put back if their sync fails: each route's Ports
# before (None: there was none) and each interface's threshold before (None: no setting).
Before = tuple[dict[RouteKey, Ports | None], dict[str, int | None]]


@dataclass(slots=True, eq=False)
class Group:
    """Changes already in the model and the kernel whose journal record waits for one sync
    together (group commit): the changes of every request handled in one turn of the event
    loop. Once `done`, `error` says why the sync failed (None: they are durable)."""

    changes: list[Change] = field(default_factory=list)
    before: list[Before] = field(default_factory=list)  # one per change() deferred, in order
    done: bool = False
    error: MfcdError | None = None


@dataclass(slots=True)
class _Reissue:
    """An interface link_up gave its VIFs back to, whose routes' entries reissue_slices
    writes again: what its summary line will say."""

    ifindex: int
    started: float
    vifs: set[tuple[int, int, str]] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class Outcome:
    """What a change did (or in a dry run would do): kernel operations counted by action,
    and the steps themselves when they were asked for."""

    counts: Counter[str] = field(default_factory=Counter)
    steps: list[Step] = field(default_factory=list)
    memberships: list[MembershipOp] = field(default_factory=list)  # group joins and leaves
    # A reload's last slice, applied: its thresholds, mrdisc settings, templates and joins
    # (its routes are the diff's; the monitor is told of both).
    settings: list[Change] = field(default_factory=list)
    # A reload's routes and templates replaced, as each slice found them when it applied
    # them (a client's change between two slices included); None: not asked for (no one
    # subscribes to events, whose `was` says them).
    replaced: Replaced | None = None


@dataclass
class Takeovers:
    """What a reload takes over from the API, as it was before (reload plans name it), and
    the declared thresholds the interfaces already have (no change)."""

    routes: dict[RouteKey, Ports] = field(default_factory=dict)  # the api route's ports
    thresholds: dict[str, int] = field(default_factory=dict)  # the api threshold
    # (name, table) -> the api threshold of that table a declared one takes over
    table_thresholds: dict[tuple[str, int], int] = field(default_factory=dict)
    same_thresholds: set[str] = field(default_factory=set)
    mrdisc: set[str] = field(default_factory=set)  # interfaces of an api mrdisc setting
    same_mrdisc: set[str] = field(default_factory=set)
    # The declared templates and joins that take over api ones: a template with the api
    # template's oifs (None: it takes over several, its iif a wildcard).
    templates: dict[Template, tuple[str, ...] | None] = field(default_factory=dict)
    joins: set[DeclaredJoin] = field(default_factory=set)


class MembershipsLike(Protocol):
    """The kernel's group memberships (membership.Memberships)."""

    def apply(self, ops: Sequence[MembershipOp]) -> None: ...
    def one(self, op: MembershipOp) -> None: ...


class Controller:
    def __init__(
        self,
        kernel: Dataplane,
        state: StateLike,
        router: Router | None = None,
        members: MembershipsLike | None = None,
    ) -> None:
        self.kernel = kernel
        self.state = state
        self.router = router or Router()
        # Group joins: the model, and the kernel's memberships (None: the model only).
        self.joins = Joins()
        self._rejoined: set[JoinKey] = set()  # the SSM joins check_joins restored last time
        self.members = members
        self._member_ops: list[MembershipOp] = []  # planned by the change under way
        # Called when the kernel may no longer match the model (a rollback it refused).
        self.on_drift: Callable[[], None] | None = None
        # What the config files declare now (applied by apply_declared).
        self.declared = Declarations()
        # Group commit (the server turns it on): a small change is applied and answered only
        # after flush() has journaled it, with every other change of its group, in one sync.
        self.grouping = False
        self.group: Group | None = None  # the changes waiting for flush(), if any
        # The group a thread is journaling (start_sync), while the next one forms; only that
        # thread touches the state file until finish_sync has taken its verdict.
        self.syncing: Group | None = None
        self._written: Future[Exception | None] | None = None  # the thread's verdict
        self._writer: ThreadPoolExecutor | None = None  # the journal's thread, once needed
        self.on_synced: Callable[[Group], None] | None = None  # told each group's verdict
        self.deferrals = 0  # change() calls deferred so far: tells a request that waits
        self._reverting = False  # putting back a group whose sync failed: nothing to record
        # A bulk change was applied: once its request is gone, the memory it freed may go
        # back to the system (mfcd.heap).
        self.heap_release_due = False
        # Sliced re-creation (the daemon turns it on): link_up adds the VIF back at once and
        # leaves its routes' entries to reissue_slices(), which the daemon runs a slice at a
        # time with clients served in between; `reissues` are the VIFs waiting for it.
        self.sliced = False
        self.reissues: dict[str, _Reissue] = {}  # by interface name
        # Told the routes each slice wrote again (the daemon tells monitor subscribers their
        # state, as it does for the routes an interface event writes at once).
        self.on_reissued: Callable[[list[RouteKey]], None] | None = None
        # The routes a sliced reload (declared_slices) is changing, until it is done: an api
        # change to one of them is refused meanwhile.
        self.reloading: AbstractSet[RouteKey] = frozenset()
        # A sliced reload is under way (declared_slices), and interfaces came or went
        # meanwhile: the wildcards are followed once it is over (the daemon does).
        self.in_reload = False
        self.follow_due = False
        # Between two slices of a sliced reload, what the state file holds instead of what
        # the slices changed: the routes as they were before them, and the declarations
        # then in force (a snapshot written meanwhile must hold the same, see persistent).
        self.unjournaled: tuple[dict[RouteKey, tuple[Ports | None, str]], Declarations] | None
        self.unjournaled = None
        # Runtime routes and templates with wildcard oifs: their patterns (what the state
        # file keeps); the model holds their expansions (see mfcd.wildcards).
        self.wild_routes: dict[RouteKey, Ports] = {}
        self.wild_templates: dict[TemplateKey, Ports] = {}
        self.wild_joins: dict[JoinKey, None] = {}  # joins on a wildcard interface
        # Why each runtime wildcard that could not follow the interfaces last time failed
        # (by what it is): told again only when that changes, not at every interface event.
        self._follow_failed: dict[str, str] = {}
        # The runtime wildcards whose last follow failed, and whether the config files' last
        # did: followed again at the next interface event, whatever interface it is of.
        self._unfollowed: set[RouteKey | TemplateKey | JoinKey] = set()
        self._declared_unfollowed = False
        # Whether Router.short was worked out in full since the start (note_short): until
        # then, a note of a few patterns (an event's, a change's) works it all out.
        self._short_known = False
        # During the restore: the data plane's writer (see _restore_into), and the steps
        # handed to it that it has not said are in yet.
        self._later: LaterDataplane | None = None
        # The kernel refused part of the restore: the errors' tracebacks may have left
        # reference cycles through the reader's frames (the daemon collects them once).
        self.refused_at_start = False
        self._later_every = False  # (a long batch: its chunks' runs go to the writer too)
        self._noting_tables = False  # inside _table_refusals (see there)
        # The tables another router owns last logged, with how many intents were pending
        # then (see tell_owned).
        self._owned_told: dict[TableKey, int] = {}
        self._inflight: list[Step] = []

    # --- start-up --------------------------------------------------------------------------------

    def restore(
        self, loaded: Loaded, links: dict[str, int], stream: RestoreStream | None = None
    ) -> None:
        """Install the saved routes for the interfaces that exist; the others stay pending.
        `stream`: the restore_stream() the file's read was given (what it streamed is
        completed here)."""
        self._take_patterns(loaded, links)
        with gc_paused():
            if stream is not None and stream.started:
                self._finish_stream(stream, loaded, links)
            else:
                self._restore(loaded, links)

    def restore_stream(self, links: dict[str, int]) -> RestoreStream:
        """A hook for StateFile.load: the routes read so far go to the model and the kernel
        while the rest of the file is read (see RestoreStream); restore() completes it."""
        return RestoreStream(self, links)

    def abandon_stream(self, stream: RestoreStream) -> None:
        """The file's read failed (corrupt): take out of the kernel what was streamed."""
        if stream.started and stream.failed is None:
            self._take_back(stream.undo, [])
            self.router = Router()

    def _begin_restore(self, loaded: Loaded, links: dict[str, int]) -> list[Step]:
        """Open the restore's transaction on an empty model: the thresholds and the
        interfaces that exist; the steps to apply (none yet, as no route needs a VIF)."""
        router = self.router
        router.begin(undo=False)
        # Long runs go to the kernel's writer process while the model goes on (_restore_into);
        # all of it is waited for before the commit, and before any undo.
        kernel = self.kernel
        self._later = kernel if isinstance(kernel, LaterDataplane) else None
        router.thresholds.update(loaded.thresholds)
        router.table_thresholds.update(loaded.table_thresholds)
        steps: list[Step] = []
        for name, ifindex in links.items():
            steps += router.link_up(name, ifindex)
        return steps

    def _restore(self, loaded: Loaded, links: dict[str, int]) -> None:
        # All at once and without an undo log (it would hold several entries per route, the
        # largest allocation of a start-up): if anything fails, the kernel's part is undone
        # and the model starts over, one route at a time.
        undo: list[KernelOp | None] = []
        steps = self._begin_restore(loaded, links)

        def complete() -> None:
            # The routes a state file holds come in runs on one combination of interfaces
            # (a batch's, a snapshot's): each run goes to the model and the kernel at once
            # (Router.add_run), in the file's order, so VIFs are numbered as route by route.
            nonlocal steps
            for ports, keys in _runs(loaded.routes):
                whole = loaded.routes if len(keys) == len(loaded.routes) else None
                steps = self._restore_run(keys, ports, steps, undo, whole)
            self._end_restore(loaded, steps, undo)

        self._complete_restore(complete, loaded, links, undo)

    def _complete_restore(
        self,
        complete: Callable[[], None],
        loaded: Loaded,
        links: dict[str, int],
        undo: list[KernelOp | None],
    ) -> None:
        """Run `complete` (the rest of a restore all at once), then commit; if the kernel
        refuses or the VIFs run out, what went in is undone and the routes are restored
        one by one. The writer ends either way (settled by then)."""
        try:
            complete()
        except (KernelError, VifLimit) as e:
            self._restore_failed(e, undo)
            self._restore_one_by_one(loaded, links)
            return
        finally:
            self._end_later()
        self.router.commit()

    def _finish_stream(self, stream: RestoreStream, loaded: Loaded, links: dict[str, int]) -> None:
        """restore() of a file whose read streamed routes: the rest of them, or, if a record
        did more than add routes, what puts the model right (see _put_right)."""
        log.debug(
            "restore: %d routes were handed over while the state file was read%s",
            len(self.router.routes),
            "" if stream.clean else "; the file's later records are applied now",
        )
        if stream.clean:
            stream.hand_over(loaded)  # (the last ones read)
        if stream.failed is not None:  # (the kernel's part is undone, the model empty)
            self._restore_one_by_one(loaded, links)
            return
        steps, undo = stream.steps, stream.undo
        # (its runs' keys, freed once done: before the start gives the heap back, heap.release)
        stream.steps, stream.undo = [], []

        def complete() -> None:
            rest = steps if stream.clean else self._put_right(loaded, steps, undo)
            self._end_restore(loaded, rest, undo)

        self._complete_restore(complete, loaded, links, undo)

    def _put_right(
        self, loaded: Loaded, steps: list[Step], undo: list[KernelOp | None]
    ) -> list[Step]:
        """Make the model of a streamed restore hold what the file does: the routes handed
        over that a later record deleted or replaced are deleted (all of them first, so
        the VIFs only they used are free), the thresholds set, then the routes not in the
        model (the replaced ones among them) added in the file's order, as runs; return
        the steps still to apply."""
        router = self.router
        held, wanted = router.routes, loaded.routes
        # (C speed: the routes held whose saved interfaces differ or are gone)
        for key in list(compress(held, map(ne, map(wanted.get, held), held.values()))):
            steps += router.del_route(key)
            if len(steps) >= CHUNK:
                self._restore_into(steps, undo)
                steps = []
        for name in sorted({*router.thresholds, *loaded.thresholds}):
            threshold = loaded.thresholds.get(name, DEFAULT_THRESHOLD)
            if router.threshold(name) != threshold:
                steps += router.set_threshold(name, threshold)
        if router.thresholds != loaded.thresholds:  # (a saved 1 is kept, as _begin_restore does)
            router.thresholds.clear()
            router.thresholds.update(loaded.thresholds)
        for (name, table), threshold in sorted(loaded.table_thresholds.items()):
            steps += router.set_threshold(name, threshold, table)
        rest = list(filterfalse(held.__contains__, wanted))
        for ports, keys in _runs_of(rest, list(map(wanted.__getitem__, rest))):
            steps = self._restore_run(keys, ports, steps, undo)
        return steps

    def _end_restore(self, loaded: Loaded, steps: list[Step], undo: list[KernelOp | None]) -> None:
        """The templates, then every step applied and settled."""
        router = self.router
        for tkey, ports in loaded.templates.items():
            router.keep_template(tkey, ports)
            steps += router.try_install(tkey)
        self._restore_into(steps, undo)
        self._settle(undo)

    def _restore_failed(self, e: KernelError | VifLimit, undo: list[KernelOp | None]) -> None:
        """The restore all at once failed: its kernel part is undone, the model emptied."""
        self.refused_at_start = True
        self._take_back(undo, [*getattr(e, "undo_failures", [])])
        self.router = Router()
        # (its text: a log record that kept the error would keep its frames, the file's)
        log.warning("restoring all routes at once failed (%s); restoring one by one", str(e))

    def _take_back(self, undo: list[KernelOp | None], failures: list[KernelError]) -> None:
        """Undo what a restore applied (after waiting for what the writer has), and end the
        writer."""
        try:
            self._settle(undo)  # (a VifLimit with runs under way: they go in, then out)
        except KernelError as late:
            failures += late.undo_failures
        self._report_undo_failures([*failures, *undo_ops(self.kernel, undo)])
        self._end_later()  # (one by one: mfcd writes itself)

    def _restore_run(
        self,
        keys: list[RouteKey],
        ports: Ports,
        steps: list[Step],
        undo: list[KernelOp | None],
        whole: dict[RouteKey, Ports] | None = None,
    ) -> list[Step]:
        """Restore saved routes on the same interfaces: plan them into `steps` as a run
        when they can be one (after their first route, which adds the VIFs of a combination
        new to the model), and apply what is planned once it is a run or CHUNK steps;
        return the steps still to apply. `whole`: the saved routes, when these are all of
        them (the model's dict is built from it: see Router.add_keyed_run)."""
        router = self.router
        if len(keys) < RUN_MIN:
            return self._restore_by_table(keys, ports, steps, undo, runs=False)
        if not router.add_keyed_run(keys, ports, steps, whole):
            first, rest = keys[0], keys[1:]
            if not router.add_direct(first, ports, steps):
                steps += router.restore(first, ports)
            if rest and not router.add_keyed_run(rest, ports, steps, whole):
                return self._restore_by_table(rest, ports, steps, undo)
            if not rest:
                return steps
        self._restore_into(steps, undo)
        return []

    def _restore_by_table(
        self,
        keys: list[RouteKey],
        ports: Ports,
        steps: list[Step],
        undo: list[KernelOp | None],
        runs: bool = True,
    ) -> list[Step]:
        """_restore_run of routes that are not one run: a table at a time, each as a run,
        or as its first route and then a run, or route by route (pending ones, say, and
        all of them without `runs`)."""
        router = self.router
        tables: dict[tuple[int, int], list[RouteKey]] = {}
        for key in keys:
            tables.setdefault((key[0], key[3]), []).append(key)
        add_direct = router.add_direct  # (nearly every route: restore's first try, inline)
        for some in tables.values():
            if runs and router.add_run(some, ports, steps):
                continue
            for i, key in enumerate(some):
                if runs and i == 1 and router.add_run(some[1:], ports, steps):
                    break
                if not add_direct(key, ports, steps):
                    steps += router.restore(key, ports)
                if len(steps) >= CHUNK:
                    self._restore_into(steps, undo)
                    steps = []
        return steps

    def _take_patterns(self, loaded: Loaded, links: dict[str, int]) -> None:
        """Keep the saved routes' and templates' wildcard patterns; what is installed is
        their expansion over the interfaces that exist (no scan unless a pattern was read)."""
        if not wildcards.made:
            return
        for key, ports in loaded.routes.items():
            if ports.__class__ is Pattern:
                self.wild_routes[key] = ports
        for key in self.wild_routes:
            loaded.routes[key] = expand(loaded.routes[key], links)
        for tkey, ports in loaded.templates.items():
            if ports.__class__ is Pattern:
                self.wild_templates[tkey] = ports
        for tkey, ports in self.wild_templates.items():
            del loaded.templates[tkey]
            loaded.templates.update(self._template_expansion(tkey, ports, links))

    def restore_joins(self, loaded: Loaded) -> None:
        """Join the saved groups on the interfaces that exist; the others stay pending."""
        joins, links = self.joins, self.router.links
        self.wild_joins = {k: None for k in loaded.joins if is_wildcard(k[0])}
        keys = [e for k in loaded.joins for e in self._join_expansion(k, links)]
        joins.begin()
        ops = [op for key in keys for op in joins.join(key, "api", links)]
        for name in loaded.mrdisc:
            joins.set_mrdisc(name, True)
        joins.commit()
        self._carry_out(ops, "restore joins")
        if loaded.joins:
            # Only the state file's: the config files' joins come next (see the daemon's
            # line with the totals).
            log.info("saved joins: %d of %d joined", len(joins.joined), len(joins.wanted))

    def _carry_out(self, ops: Sequence[MembershipOp], what: str, again: bool = False) -> None:
        """Carry out membership ops the model already holds, one by one; a join the kernel
        refuses stays pending with the reason (no client waits for these). `again`: the ops
        retry joins refused before, whose refusal was logged then (a second is debug)."""
        if self.members is None:
            return
        for op in ops:
            try:
                self.members.one(op)
                log.debug("%s: %s", what, op)
            except KernelError as e:
                if op.join:
                    self.joins.begin()
                    self.joins.park(op.key, f"the kernel refused it ({e}); {REJOIN_HINT}")
                    self.joins.commit()
                    (log.debug if again else log.error)("%s: %s", what, e)
                else:
                    log.debug("%s: %s", what, e)

    def _members(
        self, what: str, method: Any, *args: Any, again: bool = False
    ) -> list[MembershipOp]:
        """Run a join model method as its own transaction, then carry out its ops."""
        self.joins.begin()
        try:
            ops: list[MembershipOp] = method(*args)
        except BaseException:
            self.joins.rollback()
            raise
        self.joins.commit()
        self._carry_out(ops, what, again)
        return ops

    def retry_refused_joins(self, running: Container[str]) -> int:
        """Join again the joins the kernel refused, on the interfaces in `running` (up, with
        a carrier): the cause may pass (a limit raised, memory freed) with no event to say
        so. Those joined now are logged; those refused again stay pending, said at debug
        level only (their first refusal was an error in the log). Returns how many joined."""
        links = {name: i for name, i in self.router.links.items() if name in running}
        ops = self._members("joins refused before", self.joins.retry, links, again=True)
        joined = sorted(op.key for op in ops if op.key in self.joins.joined)
        if joined:
            log.info(
                "joined %d groups the kernel had refused before: %s",
                len(joined),
                _some(describe_key(key) for key in joined),
            )
        return len(joined)

    def snapshot_extra(self) -> dict[str, Any]:
        """What a snapshot keeps besides routes and thresholds: the API's joins, mrdisc
        and thresholds of one table (`[[interface, table, ttl], ...]`)."""
        saved_declarations = self._saved_declarations()
        declared = saved_declarations.mrdisc()
        mrdisc = sorted(n for n in self.joins.mrdisc if n not in declared)
        declared_tables = saved_declarations.table_thresholds()
        table_thresholds = [
            [name, table, ttl]
            for (name, table), ttl in sorted(self.router.table_thresholds.items())
            if (name, table) not in declared_tables
        ]
        saved = self.joins.saved()
        if self.wild_joins:  # a wildcard join is saved as itself, not its expansions
            saved = [k for k in saved if self.join_owner((k[0], k[1], k[2])) is None]
            saved += [list(k) for k in self.wild_joins]
        return {"joins": saved, "mrdisc": mrdisc, "table_thresholds": table_thresholds}

    def _saved_declarations(self) -> Declarations:
        """The declarations the state file leaves out (those before a reload under way)."""
        return self.declared if self.unjournaled is None else self.unjournaled[1]

    def _join_expansion(self, key: JoinKey, links: Iterable[str]) -> list[JoinKey]:
        """The joins a join stands for: with a wildcard interface, one per existing
        interface it matches; else itself."""
        if not is_wildcard(key[0]):
            return [key]
        return [(name, key[1], key[2]) for name in sorted(links) if matches(key[0], name)]

    def expanded_joins(self, key: JoinKey) -> list[JoinKey]:
        """The runtime joins the model holds for a join on a wildcard interface (not those
        the config files took over: they own them)."""
        wanted = self.joins.wanted
        return [
            k
            for k, origin in wanted.items()
            if k[1:] == key[1:] and origin != ORIGIN_CONFIG and k != key and matches(key[0], k[0])
        ]

    def join_owner(self, key: JoinKey) -> JoinKey | None:
        """The runtime join on a wildcard interface that `key` is one of the expansions of."""
        for pattern_key in self.wild_joins:
            if (
                key[1:] == pattern_key[1:]
                and key != pattern_key
                and matches(pattern_key[0], key[0])
            ):
                return pattern_key
        return None

    def persistent_templates(self) -> dict[TemplateKey, Ports]:
        """The templates the state file keeps: the API's (config ones come from the files),
        a wildcard one as its pattern."""
        router = self.router
        origins = router.template_origins
        kept = {k: v for k, v in router.templates.items() if k not in origins}
        wild = self.wild_templates
        if not wild:
            return kept
        iifs = [k for k in wild if is_wildcard(k[4])]  # not their expansions, but them
        kept = {k: v for k, v in kept.items() if not any(expansion_of(k, p) for p in iifs)}
        return {**kept, **{k: v for k, v in wild.items() if k not in origins}}

    def _template_expansion(
        self, key: TemplateKey, ports: Ports, links: Iterable[str]
    ) -> dict[TemplateKey, Ports]:
        """The templates a runtime template with wildcards stands for: itself with its
        oifs expanded, or with a wildcard iif one per interface it matches (but those the
        config files declare: they own them)."""
        origins = self.router.template_origins
        expansion = {(*key[:4], p.iif): p for p in per_iif(ports, links)}
        return {k: p for k, p in expansion.items() if k not in origins} if origins else expansion

    def _expanded_now(self, key: TemplateKey) -> list[TemplateKey]:
        """The templates the model holds for a runtime template with wildcards (not those
        the config files took over)."""
        templates, origins = self.router.templates, self.router.template_origins
        if is_wildcard(key[4]):
            return [k for k in templates if expansion_of(k, key) and k not in origins]
        return [key] if key in templates else []

    def _execute_into(self, steps: list[Step], undo: list[KernelOp | None]) -> None:
        """Apply steps; add what undoes them to `undo` (if one fails, the kernel undid them)."""
        execute(self.kernel, steps)
        undo += [step.undo for step in steps]

    def _restore_into(self, steps: list[Step], undo: list[KernelOp | None]) -> None:
        """_execute_into for the restore: with a data plane that has a writer process, long
        runs are written by it while the restore goes on; _settle waits for them."""
        later = self._later
        if later is None:
            self._execute_into(steps, undo)
            return
        self._inflight += steps
        try:
            later.apply_later([step.op for step in steps], self._later_every)
        except KernelError as e:
            self._undo_inflight(later, e)
            raise
        if not later.pending():  # all of it went in already: no steps kept in flight (a
            self._settle(undo)  # long batch of short runs would keep every step till the end)

    def _settle(self, undo: list[KernelOp | None]) -> None:
        """Wait for the steps handed over by _restore_into, then add what undoes them to
        `undo`; if one failed, the ones that went in are undone and the error raised."""
        later = self._later
        if later is None or not self._inflight:
            return
        try:
            later.settle()
        except KernelError as e:
            self._undo_inflight(later, e)
            raise
        undo += [step.undo for step in self._inflight]
        self._inflight = []

    def _apply_planned(
        self,
        changes: Sequence[Change],
        runs: Sequence[RouteRun],
        numbered: bool,
        outcome: Outcome,
        keep_steps: bool,
        *,
        dry_run: bool,
        undo: list[KernelOp | None],
    ) -> None:
        """change()'s plan and kernel writes, a chunk at a time (see _planned). A long
        batch's chunks go to the kernel's writer process while the next ones are planned
        (_restore_into); all of them are waited for before this returns."""
        execute_into = self._execute_into
        if len(changes) >= LATER_MIN and not dry_run and isinstance(self.kernel, LaterDataplane):
            self._later, self._later_every = self.kernel, True
            execute_into = self._restore_into
        for steps in self._planned(changes, runs, numbered or len(changes) > 1, outcome):
            if keep_steps:
                outcome.steps += steps
            if not dry_run:
                execute_into(steps, undo)
        if self._later is not None:
            self._settle(undo)

    def _settle_before_undo(self, e: BaseException, undo: list[KernelOp | None]) -> BaseException:
        """On a failure with chunks still with the writer: wait for them, adding what went
        in to `undo`. The error to raise: a refusal of one of them came before `e` (a later
        chunk's, planned meanwhile), so it is that one, as without the writer."""
        if self._later is None:
            return e
        try:
            self._settle(undo)
        except KernelError as late:
            return late
        return e

    def _end_later(self) -> None:
        """The writer is not needed any more: it ends (after a failure, already settled)."""
        later, self._later, self._later_every = self._later, None, False
        self._inflight = []
        if later is not None:
            with contextlib.suppress(KernelError):
                later.release_writer()

    def _undo_inflight(self, plane: Dataplane, e: KernelError) -> None:
        steps, self._inflight = self._inflight, []
        undo_applied(plane, steps, e)

    def _restore_one_by_one(self, loaded: Loaded, links: dict[str, int]) -> None:
        router = self.router
        router.begin()
        router.thresholds.update(loaded.thresholds)
        router.table_thresholds.update(loaded.table_thresholds)
        for name, ifindex in links.items():
            router.note_link(name, ifindex)
        for key, ports in loaded.routes.items():
            router.keep(key, ports)
        for tkey, ports in loaded.templates.items():
            router.keep_template(tkey, ports)
        router.commit()
        with self._table_refusals():
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
        *,
        origin: str = "api",
        journal: Sequence[Change] | None = None,
        runs: Sequence[RouteRun] = (),
    ) -> Outcome:
        """Apply changes as one transaction: the kernel operations taken (or planned), counted,
        and with keep_steps also listed.  A change the model refuses is named in the error
        (its `op`, counted from 1) when there are several, or with `numbered` (a batch of one).

        Changes are planned and applied CHUNK at a time, so a batch of 100,000 routes never
        holds more than a chunk's steps: what the kernel must undo if a later change fails
        is kept as the undo operations alone.

        `origin` is where the changes come from: an "api" change to a route or threshold the
        config files declare is refused; the routes other origins add are marked with it.
        `journal` is what is written to the state file (default: the changes themselves).
        `runs` (in order, apart) are stretches of the changes that add new routes on one
        table and interfaces: each is planned as one step if the model takes it whole,
        else a route at a time like the others (see RouteRun).
        """
        router, joins = self.router, self.joins
        declared = self.declared
        if (
            origin == "api"
            and journal is None
            and not self._reverting
            and (wildcards.made or self.wild_routes or self.wild_templates or self.wild_joins)
            and self._touches_patterns(changes)
        ):
            return self._change_patterns(changes, dry_run, keep_steps, numbered)
        if (
            origin == "api"
            and not self._reverting
            and (
                router.origins
                or router.template_origins
                or declared.interfaces
                or declared.table_interfaces
                or declared.joins
                or self.reloading
            )
        ):
            self._refuse_declared(changes, numbered)
        # Only what is journaled as it is (the API's changes) may wait for a group's sync.
        before = self._deferrable(changes, dry_run, journal is None, journal == [])
        router.begin()
        joins.begin()
        self._member_ops = []
        outcome = Outcome()
        undo: list[KernelOp | None] = []  # what undoes each step applied so far, in order
        joined: list[MembershipOp] = []  # memberships changed in the kernel so far
        try:
            # (A plan lists each route's step: no runs then. The journal writes them all the
            # same: the runs' AddRoutes are those changes.)
            planned = () if keep_steps else runs
            self._apply_planned(
                changes, planned, numbered, outcome, keep_steps, dry_run=dry_run, undo=undo
            )
            # Group joins after the routes (their traffic then finds the routes in place).
            ops = self._member_ops
            if ops:  # (Counter.update of nothing costs a route change a few per cent)
                outcome.counts.update("join" if op.join else "leave" for op in ops)
            if keep_steps:
                outcome.memberships = ops
            if not dry_run and ops and self.members is not None:
                self.members.apply(ops)  # all or nothing
                joined = ops
            if origin != "api" or self._reverting:  # (putting back an api route: unmark it)
                self._mark(changes, origin)
            if dry_run or not (router.changed() or joins.changed() or journal):
                # Nothing to do (the same route again, an empty batch): no journal record.
                # (An api intent the config takes over as it is still leaves the state file.)
                router.rollback()
                joins.rollback()
                return outcome
            record = changes if journal is None else journal
            if before is not None:
                self._defer(changes, before)
            elif record and not self._reverting:
                self._record(record, runs if journal is None else ())
        except BaseException as e:
            # What is in the kernel comes out again, newest first (a chunk the kernel refused
            # has already undone its own part).
            error = self._settle_before_undo(e, undo)
            failures = [
                *getattr(error, "undo_failures", []),
                *self._unjoin(joined),
                *undo_ops(self.kernel, undo),
            ]
            router.rollback()
            joins.rollback()
            self._report_undo_failures(failures)
            if error is not e:  # (a refusal of the writer's came before it)
                raise error from e
            raise
        finally:
            if self._later is not None:
                self._end_later()
        router.commit()
        joins.commit()
        self._after_commit(len(changes))
        return outcome

    def change_one(self, change: AddRoute | DelRoute) -> Outcome | None:
        """`change([change])` of one api route (a client's `mfc add` or `mfc del`) while group
        commit is on, in fewer steps: the same model, kernel and group afterwards, the same
        outcome and errors (tests/unit/test_one_route.py holds them equal). None, with
        nothing done, for what it does not cover: a wildcard pattern, a route of another
        origin or one a reload is changing, no group commit, a group being put back; the
        caller then calls change()."""
        key = change.key
        router = self.router
        if (
            not self.grouping
            or self._reverting
            or key in router.origins  # (learned, or the config's: _refuse_declared, _before)
            or key in self.reloading
            or key in self.wild_routes
            or (change.__class__ is AddRoute and change.ports.__class__ is Pattern)
        ):
            return None
        before: Before = ({key: router.routes.get(key)}, {})  # (as _before)
        router.begin()
        steps: list[Step] = []
        applied: list[Step] = []
        try:
            # (as _plan_chunk, for one change that is no batch's)
            if change.__class__ is not AddRoute or not router.add_direct(key, change[1], steps):
                steps = self._plan(change)
            if steps:
                execute(self.kernel, steps)
                applied = steps
            if not router.changed():  # the same route again: no journal record
                router.rollback()
                return Outcome(_counted(steps), steps)
            self._defer((change,), before)
        except BaseException as e:
            undo = [step.undo for step in applied]
            failures = [*getattr(e, "undo_failures", []), *undo_ops(self.kernel, undo)]
            router.rollback()
            self._report_undo_failures(failures)
            raise
        router.commit()
        if router.blocked:  # (all _after_commit(1) looks at)
            self._after_commit(1)
        return Outcome(_counted(steps), steps)

    def _after_commit(self, size: int) -> None:
        """What follows a committed change of `size` changes."""
        router = self.router
        if size > GROUP_MAX_CHANGES:
            # A bulk load's routes live long, and the cyclic GC, paused while it ran, would
            # then walk them all in one go (a stall of 100s of ms at 1,000,000 routes), and
            # again and again: put them out of its reach, as start-up does.
            gc.freeze()
            self.heap_release_due = True  # (the daemon calls heap.release once answered)
        # A change that freed a VIF index (even one whose interface is gone, so no DelVif
        # step) lets routes waiting for one in.
        if router.blocked and any(router.has_free_vif(k[0], k[3]) for k in router.blocked):
            self.retry_pending(list(router.blocked))

    def _touches_patterns(self, changes: Sequence[Change]) -> bool:
        """Whether an api change adds a wildcard pattern or replaces or deletes one."""
        routes, templates = self.wild_routes, self.wild_templates
        if set(map(type, changes)) == {AddRoute}:  # a bulk load: looked at in C (2-3x faster)
            if Pattern in set(map(type, map(_PORTS, changes))):
                return True
            if not routes:
                return False
            groups = {key[2] for key in routes}  # strings: their hashes are kept, not tuples'
            if groups.isdisjoint(map(_GROUP, map(_KEY, changes))):
                return False
            return not routes.keys().isdisjoint(map(_KEY, changes))
        for change in changes:
            if isinstance(change, (AddRoute, AddTemplate)) and change.ports.__class__ is Pattern:
                return True
            if isinstance(change, (AddRoute, DelRoute)) and change.key in routes:
                return True
            if isinstance(change, (AddTemplate, DelTemplate)) and (
                change.key in templates or is_wildcard(change.key[4]) or self._owner(change.key)
            ):
                return True
            if isinstance(change, (Join, Leave)) and (
                is_wildcard(change.key[0]) or (self.wild_joins and self.join_owner(change.key))
            ):
                return True
        return False

    def _owner(self, key: TemplateKey) -> TemplateKey | None:
        """The runtime template with a wildcard iif that `key` is one of the expansions of."""
        for pattern_key in self.wild_templates:
            if is_wildcard(pattern_key[4]) and expansion_of(key, pattern_key):
                return pattern_key
        return None

    def _change_patterns(
        self, changes: Sequence[Change], dry_run: bool, keep_steps: bool, numbered: bool
    ) -> Outcome:
        """change() for api changes with wildcard patterns: the model gets each pattern's
        expansion over the interfaces that exist, the journal the patterns as given (never
        left to a group's sync: the patterns are set here, and put back if the change fails
        or is a dry run)."""
        links = self.router.links
        routes, templates = dict(self.wild_routes), dict(self.wild_templates)
        joins = dict(self.wild_joins)
        applied: list[Change] = []
        # The patterns the change adds, replaces or deletes: the only ones whose shortness
        # (note_short) it can change.
        touched_routes: list[RouteKey] = []
        touched_templates: list[TemplateKey] = []
        for change in changes:
            if isinstance(change, (AddRoute, DelRoute)):
                if routes.pop(change.key, None) is not None:
                    touched_routes.append(change.key)
            elif isinstance(change, (AddTemplate, DelTemplate)):
                templates.pop(change.key, None)
                touched_templates.append(change.key)
            if isinstance(change, AddRoute) and change.ports.__class__ is Pattern:
                routes[change.key] = change.ports
                touched_routes.append(change.key)
                now = self.router.share(expand(change.ports, links))
                applied.append(AddRoute(change.key, now))
            elif isinstance(change, (AddTemplate, DelTemplate)):
                applied += self._template_changes(change, templates, links)
            elif isinstance(change, (Join, Leave)):
                applied += self._join_changes(change, joins, links)
            else:
                applied.append(change)
        was = self.wild_routes, self.wild_templates, self.wild_joins
        # (set now: a snapshot written during the change has them)
        self.wild_routes, self.wild_templates, self.wild_joins = routes, templates, joins
        try:
            outcome = self.change(applied, dry_run, keep_steps, numbered, journal=list(changes))
        except BaseException:
            self.wild_routes, self.wild_templates, self.wild_joins = was
            raise
        finally:
            if dry_run:
                self.wild_routes, self.wild_templates, self.wild_joins = was
        if not dry_run:
            self.note_short(touched_routes, touched_templates)
        return outcome

    def _join_changes(
        self, change: Join | Leave, joins: dict[JoinKey, None], links: Iterable[str]
    ) -> list[Change]:
        """What an api join or leave with a wildcard interface makes of the model's joins
        (see _change_patterns); `joins` become the wildcard joins after it."""
        key = change.key
        if not is_wildcard(key[0]):
            owner = self.join_owner(key)
            if isinstance(change, Leave) and owner is not None:
                raise InvalidArgument(
                    f"{describe_key(key)} is one of the joins on {owner[0]}: leave that one"
                    f" (--interface '{owner[0]}')",
                    field="interface",
                )
            return [change]
        if isinstance(change, Leave):
            if key not in joins:
                raise NotFound(f"{describe_key(key)} was not joined")
            del joins[key]
            return [Leave(k) for k in self.expanded_joins(key)]
        joins[key] = None
        wanted = self.joins.wanted
        return [Join(k) for k in self._join_expansion(key, links) if k not in wanted]

    def _template_changes(
        self,
        change: AddTemplate | DelTemplate,
        templates: dict[TemplateKey, Ports],
        links: Iterable[str],
    ) -> list[Change]:
        """What an api template change with wildcards makes of the model's templates (see
        _change_patterns); `templates` become the patterns after it."""
        key = change.key
        owner = self._owner(key)
        if owner is not None and owner != key:
            raise InvalidArgument(
                f"template {template_text(key)} is one of those the template with iif"
                f" {owner[4]} stands for: change or delete that one (--iif '{owner[4]}')",
                field="iif",
            )
        if isinstance(change, DelTemplate):
            if is_wildcard(key[4]) and key not in self.wild_templates:
                raise NotFound(f"no template {template_text(key)}")
            return [DelTemplate(k) for k in self._expanded_now(key)]
        if change.ports.__class__ is not Pattern:
            return [change]
        templates[key] = change.ports
        wanted = self._template_expansion(key, change.ports, links)
        gone: list[Change] = [DelTemplate(k) for k in self._expanded_now(key) if k not in wanted]
        return gone + [AddTemplate(k, p) for k, p in wanted.items()]

    def shown_patterns(self) -> tuple[dict[RouteKey, Ports], dict[TemplateKey, Ports]]:
        """The wildcard interfaces as given (the config files' routes and templates, the
        runtime routes and templates) that show lists beside their expansion."""
        declared = self.declared
        routes = {key: declared.routes[key] for key in declared.wild}
        routes.update(self.wild_routes)
        templates = template_patterns(declared, self.router.links) if declared.templates else {}
        for key, ports in self.wild_templates.items():
            templates.update(dict.fromkeys(self._expanded_now(key), ports))
        return routes, templates

    def unexpanded_templates(self) -> dict[TemplateKey, tuple[Ports, str]]:
        """The wildcard templates, runtime and the config files', that stand for no template
        now (no interface matches their wildcard iif, or their oifs are wildcards that
        match none), by their key as given, with their interfaces as given and origin.
        The model holds nothing for them (nothing to install): show lists them from this."""
        links = self.router.links
        out = {
            key: (ports, "api")
            for key, ports in self.wild_templates.items()
            if not self._expanded_now(key)
        }
        if self.declared.templates:
            for key, ports in template_unexpanded(self.declared, links).items():
                out.setdefault(key, (ports, "config"))
        return out

    def follow_api_wildcards(self, names: Collection[str] | None = None) -> list[tuple[bool, str]]:
        """Re-expand the runtime routes and templates with wildcard oifs after interfaces
        came or went, each as a change of its own (nothing journaled: the patterns did not
        change). Each that changed is reported (True, line); one that cannot follow (the
        VIF table is full) keeps its oifs and is reported (False, why), so the others still
        follow. During a sliced reload, only noted (`follow_due`).

        `names`: the interfaces that came, went or were renamed (None: any may have). Only
        the patterns one of them matches are looked at, and those short of what they match
        or that failed to follow last time (a VIF freed may let them): 2,000 wildcard
        routes on a host of 200 interfaces cost nothing at each container's veth."""
        if self.in_reload:
            self.follow_due = True
            return []
        router = self.router
        links = router.links
        due = self._follow_filter(names)
        lines: list[tuple[bool, str]] = []
        todo: list[tuple[RouteKey | TemplateKey | JoinKey, str, str, list[Change]]] = []
        routes = [(k, p) for k, p in self.wild_routes.items() if due(k, p)]
        for key, ports in routes:
            now = router.share(expand(ports, links))
            if router.routes.get(key) != now:
                what = f"route {key[1]} -> {key[2]}: its wildcard oifs match"
                todo.append((key, what, ",".join(now.oifs) or "none", [AddRoute(key, now)]))
        templates = [(k, p) for k, p in self.wild_templates.items() if due(k, p)]
        for tkey, ports in templates:
            wanted = self._template_expansion(tkey, ports, links)
            changes: list[Change] = [
                DelTemplate(k) for k in self._expanded_now(tkey) if k not in wanted
            ]
            changes += [
                AddTemplate(k, p) for k, p in wanted.items() if router.templates.get(k) != p
            ]
            if changes:
                now_text = "; ".join(
                    f"iif {k[4]} oifs {','.join(p.oifs)}" for k, p in wanted.items()
                )
                what = f"template {template_text(tkey)}: now"
                todo.append((tkey, what, now_text or "none", changes))
        for jkey in self.wild_joins:
            if not due(jkey, Pattern(jkey[0], ())):
                continue
            on = self._join_expansion(jkey, links)
            had = self.expanded_joins(jkey)
            changes = [Leave(k) for k in had if k not in on]
            changes += [Join(k) for k in on if k not in self.joins.wanted]
            if changes:
                on_text = ",".join(k[0] for k in on) or "none"
                todo.append((jkey, f"{describe_key(jkey)}: now on", on_text, changes))
        failed: dict[str, str] = {}
        self._unfollowed = set()
        for followed, what, now_text, changes in todo:
            try:
                self.change(changes, keep_steps=False, journal=[])
            except MfcdError as e:
                line = failed[what] = f"{what} {now_text}, but {e}"
                if self._follow_failed.get(what) != line:  # (told once, not at each event)
                    lines.append((False, line))
                self._unfollowed.add(followed)
                continue
            lines.append((True, f"{what} {now_text}"))
        self._follow_failed = failed
        if names is None:
            self.note_short()
        else:
            self.note_short([k for k, _ in routes], [k for k, _ in templates])
        return lines

    def _follow_filter(
        self, names: Collection[str] | None
    ) -> Callable[[RouteKey | TemplateKey | JoinKey, Ports], bool]:
        """Whether a runtime pattern is to be followed after the interfaces `names` came or
        went (see follow_api_wildcards): any, if None or Router.short is not known yet."""
        if names is None or not self._short_known:
            return lambda key, ports: True
        short, unfollowed = self.router.short, self._unfollowed
        # (a template with a wildcard iif is short through the templates it stands for)
        short_templates = [k for k in short if len(k) == 5]

        def due(key: RouteKey | TemplateKey | JoinKey, ports: Ports) -> bool:
            return (
                key in short
                or key in unfollowed
                or touched(ports, names)
                or (len(key) == 5 and any(expansion_of(k, key) for k in short_templates))
            )

        return due

    def note_short(
        self, routes: Iterable[RouteKey] | None = None, templates: Iterable[TemplateKey] = ()
    ) -> None:
        """Note in the model (Router.short) which wildcard routes and templates, the runtime
        ones and the config files', do not reach every interface their wildcard oifs match
        (the VIF table was full when they followed), or match none: degraded, those named,
        rather than installed with no word of it.

        With `routes` (and `templates`), only those patterns are looked at again (those a
        change or an interface event touched): the others' note still holds, as neither
        what they match nor what the model holds of them changed. Without, all are."""
        router = self.router
        if routes is None or not self._short_known:
            short: dict[PendingKey, tuple[str, ...]] = {}
            patterns = dict(self.wild_routes)
            patterns.update((key, self.declared.routes[key]) for key in self.declared.wild)
            for key, ports in patterns.items():
                self._note_route_short(short, key, ports)
            for tkey, ports in self.wild_templates.items():
                self._note_template_short(short, tkey, ports)
            if self.declared.templates:
                self._note_declared_templates_short(short)
            router.short = short
            self._short_known = True
            return
        short = dict(router.short)  # (replaced whole, as above: few, the degraded ones)
        declared = self.declared
        for key in routes:
            short.pop(key, None)
            given = declared.routes[key] if key in declared.wild else self.wild_routes.get(key)
            if given is not None:
                self._note_route_short(short, key, given)
        for tkey in templates:
            for k in [k for k in short if len(k) == 5 and expansion_of(k, tkey)]:
                del short[k]
            given = self.wild_templates.get(tkey)
            if given is not None:
                self._note_template_short(short, tkey, given)
        if self.declared.templates:
            self._note_declared_templates_short(short)
        router.short = short

    def _note_route_short(
        self, short: dict[PendingKey, tuple[str, ...]], key: RouteKey, ports: Ports
    ) -> None:
        """note_short of one wildcard route (`ports`: its pattern)."""
        router = self.router
        held = router.routes.get(key)
        if held is not None:
            lacking = _lacking(ports, expand(ports, router.links), held, router.links)
            if lacking:
                short[key] = lacking

    def _note_template_short(
        self, short: dict[PendingKey, tuple[str, ...]], tkey: TemplateKey, ports: Ports
    ) -> None:
        """note_short of one runtime template with wildcards: of each it stands for."""
        router = self.router
        links = router.links
        for k, now in self._template_expansion(tkey, ports, links).items():
            held = router.templates.get(k)
            if held is not None:
                lacking = _lacking(ports, now, held, links)
                if lacking:
                    short[k] = lacking

    def _note_declared_templates_short(self, short: dict[PendingKey, tuple[str, ...]]) -> None:
        """note_short of the config files' templates with wildcards, of each they stand for:
        all again each time (few, and replanned at every interface event all the same)."""
        router = self.router
        links, origins = router.links, router.template_origins
        for k in [k for k in short if len(k) == 5 and k in origins]:
            del short[k]
        for k, given in template_patterns(self.declared, links).items():
            held = router.templates.get(k)
            if held is not None:
                pattern = Ports(k[4], given.oifs)  # (its iif: the one it expanded to)
                now = expand(Ports(k[4], tuple(n for n in given.oifs if n != k[4])), links)
                lacking = _lacking(pattern, now, held, links)
                if lacking:
                    short[k] = lacking

    def _refuse_declared(self, changes: Sequence[Change], numbered: bool) -> None:
        """Refuse a runtime change to a route, template, join or interface setting the config
        files declare: they own it, and the next reload would undo the change. Joining a
        group the files join changes nothing and is not refused. The error names the change
        (its `op`) as change() says."""
        for index, change in enumerate(changes):
            error = self._declared_error(change)
            if error is not None:
                if numbered or len(changes) > 1:
                    error.op = index + 1
                raise error

    def _declared_error(self, change: Change) -> DeclaredInConfig | None:
        """Why `change` is refused (see _refuse_declared), or None."""
        router, declared = self.router, self.declared
        again = "; change it there and reload (mfcctl reload)"
        if isinstance(change, SetThreshold) and change.table is not None:
            setting = declared.table_interfaces.get((change.interface, change.table))
            if setting is not None:
                return _declared_in(
                    f"the threshold of {setting.name} in table {change.table} is declared in"
                    f" {setting.where}{again}",
                    setting.where,
                    field="threshold",
                )
        elif isinstance(change, (SetThreshold, SetMrdisc)):
            setting = declared.interfaces.get(change.interface)
            what = "threshold" if isinstance(change, SetThreshold) else "mrdisc"
            if setting is not None and getattr(setting, what) is not None:
                return _declared_in(
                    f"the {what} of {setting.name} is declared in {setting.where}{again}",
                    setting.where,
                    field=what,
                )
        elif isinstance(change, (AddRoute, DelRoute)):
            key = change.key
            if router.origins.get(key) != "config" and key not in self.reloading:
                return None
            if key in declared.positions:
                where = declared.where(key)
                return _declared_in(
                    f"the route {key[1]} -> {key[2]} is declared in {where}{again}", where
                )
            return DeclaredInConfig(
                f"the route {key[1]} -> {key[2]} is being removed by the reload under way (the"
                " config files no longer declare it); retry once the reload is done"
            )
        elif isinstance(change, (AddTemplate, DelTemplate)):
            tkey = change.key
            if router.template_origins.get(tkey) == "config":
                _, where = template_intents(declared, router.links).get(tkey, (None, "?"))
                return _declared_in(
                    f"the template {template_text(tkey)} is declared in {where}{again}", where
                )
        elif isinstance(change, Leave) and self.joins.wanted.get(change.key) == ORIGIN_CONFIG:
            where = join_intents(declared, router.links).get(change.key, "?")
            return _declared_in(f"{describe_key(change.key)} is joined in {where}{again}", where)
        return None

    def _mark(self, changes: Sequence[Change], origin: str) -> None:
        """Record the origin of the routes these changes add (and forget that of those they
        delete)."""
        if origin != "api":
            # Runs of AddRoute (all 100,000 of a start) marked a run at one go, in order.
            for kind, run in groupby(changes, type):
                if kind is AddRoute:
                    self.router.set_origins(list(map(_KEY, run)), origin)
                else:
                    self._mark_each(run, origin)
            return
        self._mark_each(changes, origin)

    def _mark_each(self, changes: Iterable[Change], origin: str) -> None:
        set_origin = self.router.set_origin
        for change in changes:
            if isinstance(change, AddRoute):
                set_origin(change.key, origin)
            elif isinstance(change, DelRoute):
                set_origin(change.key, "api")
            elif isinstance(change, AddTemplate) and change.key in self.router.templates:
                self.router.set_template_origin(change.key, origin)

    # --- declared intents (the config files) ----------------------------------------------------

    def apply_declared(self, new: Declarations, diff: Diff, dry_run: bool = False) -> Outcome:
        """Make the config intents those of `new`, as one transaction: routes the files no
        longer declare go, thresholds change, routes added or changed are written; routes
        the diff finds unchanged are not touched (their kernel counters keep counting).

        One function per kind of intent builds its changes. Templates and joins are
        compared with the config ones running (few; wildcards expanded over the interfaces
        that exist). An api route, template, join or setting the files now declare is taken
        over: it is deleted from the state file.
        """
        if not dry_run:
            # Api changes waiting for their sync first: the takeovers below are built from
            # the model, which a failed sync would still change (putting those back).
            self.flush()
        journal: list[Change] = []  # what leaves the state file: api intents taken over
        changes: list[Change] = []
        changes += self._declared_removals(diff)
        changes += self._declared_thresholds(diff, journal)
        changes += self._declared_mrdisc(diff, journal)
        changes += self._declared_templates(new, journal)
        first = len(changes)
        changes += self._declared_routes(new, [*diff.added, *diff.changed], journal)
        runs = _route_runs(changes, first, len(changes))
        changes += self._declared_joins(new, journal)
        if dry_run:
            return self.change(changes, True, keep_steps=True, numbered=False, origin="config")
        # `new` rules from the change on: a snapshot written during it (the state file was
        # replaced) must leave out the thresholds and mrdisc settings the files now declare.
        old, self.declared = self.declared, new
        try:
            with self._table_refusals():
                outcome = self._change_declared(
                    changes, keep_steps=False, numbered=False, journal=journal, runs=runs
                )
        except BaseException:
            self.declared = old
            raise
        self._drop_taken_patterns()
        self.note_short()
        return outcome

    def _change_declared(self, changes: Sequence[Change], **kw: Any) -> Outcome:
        """change() of config intents (origin "config"), inside _table_refusals: when the
        kernel refuses a whole table (another multicast router owns it) that the batch did
        not know of yet, the transaction is undone and tried again with the intents of that
        table kept pending, refused with the kernel's reason, instead of failing for every
        table (an environmental refusal, not a fault of the files: mfcctl sync or reload
        tries them again). A table known to be owned when the batch began costs no such
        failed transaction: _table_refusals starts from the data plane's record."""
        unavailable = self.router.unavailable
        while True:
            try:
                return self.change(changes, origin="config", **kw)
            except KernelError as e:
                table = table_owned(e)
                if table is None or table in unavailable:
                    raise
                # (the data plane noted the refusal too: owned_tables says the same)
                unavailable[table] = _refused_reason(e)

    @contextlib.contextmanager
    def _table_refusals(self, tell: bool = True, retry: bool = False) -> Iterator[None]:
        """While many intents are applied at once (a start, a reload, an interface event, a
        retry): Router.unavailable holds the tables the kernel refuses as a whole (another
        multicast router owns them), and the intents of such a table are kept pending with
        the kernel's reason without asking it. It starts as the data plane's record
        (owned_tables), but for a `retry` (sync, reload: the other router may be gone, and
        the first intent of each table asks the kernel again), and takes the tables the
        kernel newly refuses during the batch. Cleared at the end (an api change then asks
        the kernel, which says why it refuses); with `tell`, what changed is logged
        (tell_owned)."""
        if self._noting_tables:
            yield
            return
        self._noting_tables = True
        unavailable = self.router.unavailable
        if not retry:
            unavailable.update(self._owned_reasons())
        try:
            yield
        finally:
            self._noting_tables = False
            unavailable.clear()
            if tell:
                self.tell_owned()

    def _owned_reasons(self) -> dict[TableKey, str]:
        """The tables another multicast router owns, as the data plane found them, with what
        an intent kept pending for one says."""
        return {t: _refused_reason(e) for t, e in self.kernel.owned_tables().items()}

    def tell_owned(self) -> None:
        """Log what changed in the tables another multicast router owns since last told: a
        WARNING when one becomes owned (with how many intents wait for it), an INFO when
        it is free again, a DEBUG when what is pending changed meanwhile. Called after each
        batch and client change, so not again for what was told: each interface event is a
        batch, and a flapping link would flood the journal. A table found free (an
        operation there got in) has its pending routes and templates installed at once,
        rather than at the next sync, reload or drift check."""
        now, told = self._owned_reasons(), self._owned_told
        if not now and not told:
            return
        refused = self.router.refused
        size = len(refused)  # (counting the pending intents is worth it only if it changed)
        self._owned_told = dict.fromkeys(now, size)
        for (family, table), reason in sorted(now.items()):
            if told.get((family, table)) == size:
                continue
            keys = [k for k, why in refused.items() if why == reason]
            routes = sum(1 for k in keys if len(k) == 4)
            log.log(
                logging.DEBUG if (family, table) in told else logging.WARNING,
                "%s table %d: %s; %s and %s there stay pending (mfcctl sync or reload tries"
                " them again)",
                family_text(family),
                table,
                reason.removeprefix("the kernel refused it (").partition("); mfcctl")[0],
                views.counted(routes, "route"),
                views.counted(len(keys) - routes, "template"),
            )
        freed = told.keys() - now.keys()
        for family, table in sorted(freed):
            log.info(
                "%s table %d: no other multicast router owns it any more; installing its"
                " pending routes and templates",
                family_text(family),
                table,
            )
        if freed:
            self.retry_pending([k for k in refused if (k[0], k[3]) in freed])

    def takeovers(self, diff: Diff) -> Takeovers:
        """What applying `diff` would take over from the API (before it is applied): the api
        routes, templates and joins the files now declare and the api thresholds and mrdisc
        settings they set; and the settings they give the value the interface has already."""
        router = self.router
        out = Takeovers()
        routes, origins = router.routes, router.origins
        if len(routes) > len(origins):  # (api routes there are: look the added ones up)
            for key in diff.added:
                ports = routes.get(key)
                if ports is not None and key not in origins:
                    out.routes[key] = ports
        running = self.declared.interfaces
        for name, threshold in diff.thresholds.items():
            was = router.thresholds.get(name)
            if was is not None and not (name in running and running[name].threshold is not None):
                out.thresholds[name] = was
            elif (was or DEFAULT_THRESHOLD) == (threshold or DEFAULT_THRESHOLD):
                out.same_thresholds.add(name)
        running_tables = self.declared.table_interfaces
        for setting, threshold in diff.table_thresholds.items():
            was = router.table_thresholds.get(setting)
            if was is not None and threshold is not None and setting not in running_tables:
                out.table_thresholds[setting] = was
        declared_mrdisc, on_now = self.declared.mrdisc(), self.joins.mrdisc
        for name, on in diff.mrdisc.items():
            if name in on_now and name not in declared_mrdisc:
                out.mrdisc.add(name)
            elif bool(on) == (name in on_now):
                out.same_mrdisc.add(name)
        self._taken_templates_and_joins(diff, out)
        return out

    def _taken_templates_and_joins(self, diff: Diff, out: Takeovers) -> None:
        """The templates and joins the files add that take over api ones (see takeovers):
        those _declared_templates and _declared_joins take over. (A declaration the files
        had already is the config's, over every interface it matches.)"""
        router = self.router
        templates, origins = router.templates, router.template_origins
        if len(templates) > len(origins):  # (api templates there are)
            for t in diff.templates.added:
                keys = template_keys(t, router.links)
                taken = [templates[k].oifs for k in keys if k in templates and k not in origins]
                if taken:
                    out.templates[t] = taken[0] if len(taken) == 1 else None
        wanted = self.joins.wanted
        for j in diff.joins.added if wanted else ():
            origins_now = (wanted.get(k, ORIGIN_CONFIG) for k in join_keys_of(j, router.links))
            if any(origin != ORIGIN_CONFIG for origin in origins_now):
                out.joins.add(j)

    def _drop_taken_patterns(self) -> None:
        """Forget the patterns of runtime routes and templates the config files took over."""
        origins, template_origins = self.router.origins, self.router.template_origins
        for key in [k for k in self.wild_routes if k in origins]:
            del self.wild_routes[key]
        for tkey in [k for k in self.wild_templates if k in template_origins]:
            del self.wild_templates[tkey]

    def declared_slices(self, new: Declarations, diff: Diff, outcome: Outcome) -> Iterator[int]:
        """apply_declared a slice at a time, for a reload with clients served in between:
        yields after each RELOAD_CHUNK route changes (how many), counting the kernel
        operations in `outcome`.

        Still all or nothing: each slice is a transaction of its own (model and kernel
        agree on every route between two slices), and if one fails, or the last one with
        the journal record of the api intents taken over, the slices before it are undone,
        a slice at a time too, and the error raised. Routes the files no longer declare go
        first, then those added or changed; thresholds, mrdisc, templates and joins are the
        last slice. Meanwhile an api change to a route the reload changes is refused
        (`reloading`); other changes, link events and learned entries go on. Wildcards
        are not followed meanwhile (`follow_due` says an interface came or went): the
        declarations in force change under the slices, and are put back if one fails."""
        self.in_reload = True
        try:
            yield from self._declared_slices(new, diff, outcome)
        finally:
            self.in_reload = False
            self.note_short()
            # Files of many routes were read (their text, the declarations: some 10s of MiB
            # at 100,000) and what the reload replaced is freed: a bulk change's release.
            if len(new.routes) + len(diff.removed) > GROUP_MAX_CHANGES:
                self.heap_release_due = True

    def _declared_slices(self, new: Declarations, diff: Diff, outcome: Outcome) -> Iterator[int]:
        self.flush()  # as apply_declared: takeovers are built from the model
        yield 0  # (at 100,000 routes each step below is worth a slice of its own)
        journal: list[Change] = []  # what leaves the state file: api intents taken over
        removals = self._declared_removals(diff)
        last = self._declared_thresholds(diff, journal)
        last += self._declared_mrdisc(diff, journal)
        last += self._declared_templates(new, journal)
        old, self.declared = self.declared, new
        self.reloading = {*diff.added, *diff.changed, *diff.removed}
        before: dict[RouteKey, tuple[Ports | None, str]] = {}  # what the slices replaced
        self.unjournaled = (before, old)
        try:
            yield 0
            keys = [*diff.added, *diff.changed]
            for start in range(0, len(removals) + len(keys), RELOAD_CHUNK):
                end = start + RELOAD_CHUNK
                chunk = removals[start:end]
                if end > len(removals):
                    added = keys[max(0, start - len(removals)) : end - len(removals)]
                    chunk += self._declared_routes(new, added, journal)
                self._remember(chunk, before, outcome.replaced)
                self._declared_slice(chunk, outcome, journal=[])
                yield len(chunk)
            last += self._declared_joins(new, journal)
            # The last slice journals the takeovers: a snapshot it writes instead is of `new`.
            self.unjournaled = None
            if outcome.replaced is not None:
                templates = self.router.templates  # (as they are now: clients changed some?)
                for change in last:
                    if isinstance(change, AddTemplate) and change.key in templates:
                        outcome.replaced[change.key] = templates[change.key]
            self._declared_slice(last, outcome, journal=journal)
            outcome.settings = last
            self.tell_owned()
        except GeneratorExit:  # mfcd stops: the state file never saw the slices
            self.declared, self.reloading, self.unjournaled = old, frozenset(), None
            raise
        except BaseException:
            self.declared, self.unjournaled = old, (before, old)
            try:  # (api changes to these routes stay refused until they are put back)
                yield from self._put_back(before)
            finally:
                self.reloading, self.unjournaled = frozenset(), None
            raise
        self._drop_taken_patterns()
        # What only the reload used goes, a part at a time: freeing 100,000s of objects
        # takes some 10 ms a kind.
        self.reloading = frozenset()
        yield 0
        del before
        yield 0
        del old

    def _declared_slice(
        self,
        changes: Sequence[Change],
        outcome: Outcome,
        journal: list[Change],
    ) -> None:
        """One slice of declared_slices, counted in `outcome` (see _change_declared: a table
        another router owns found by one slice is known to the next from the data plane's
        record; they are said once the reload is done)."""
        with self._table_refusals(tell=False):
            done = self._change_declared(changes, keep_steps=False, journal=journal)
        outcome.counts.update(done.counts)

    def _remember(
        self,
        changes: Sequence[Change],
        before: dict[RouteKey, tuple[Ports | None, str]],
        replaced: Replaced | None = None,
    ) -> None:
        """Note what each route the changes touch was before the first of them (see
        _put_back), and in `replaced` (unless None) the routes they replace as they are
        now, just before they are applied: what may have changed since the reload began."""
        routes, origins = self.router.routes, self.router.origins
        for change in changes:
            if isinstance(change, (AddRoute, DelRoute)) and change.key not in before:
                key = change.key
                before[key] = (routes.get(key), origins.get(key, "api"))
        if replaced is None:  # (nobody listens: not a step more for a reload of 100,000)
            return
        for change in changes:
            if isinstance(change, AddRoute) and change.key in routes:
                replaced[change.key] = routes[change.key]

    def _put_back(self, before: dict[RouteKey, tuple[Ports | None, str]]) -> Iterator[int]:
        """Undo the slices of a failed reload: each route as it was, with its origin,
        RELOAD_CHUNK at a time (yielding in between); nothing journaled, as the slices were
        not. A chunk the kernel refuses is put back one route at a time, and a route that
        still fails is logged and left to the drift check."""
        router = self.router
        items = list(before.items())
        for start in range(0, len(items), RELOAD_CHUNK):
            by_origin: dict[str, list[Change]] = {}
            for key, (ports, origin) in items[start : start + RELOAD_CHUNK]:
                if ports is None:
                    if key in router.routes:
                        by_origin.setdefault("api", []).append(DelRoute(key))
                elif router.routes.get(key) != ports or router.origins.get(key, "api") != origin:
                    by_origin.setdefault(origin, []).append(AddRoute(key, ports))
            for origin, changes in by_origin.items():
                self._put_back_chunk(changes, origin)
            yield len(by_origin)

    def _put_back_chunk(self, changes: list[Change], origin: str) -> None:
        try:
            self._reverting = True  # nothing recorded, nothing refused (only until it returns)
            try:
                self.change(changes, keep_steps=False, origin=origin, journal=[])
                return
            except MfcdError:
                pass
        finally:
            self._reverting = False
        self._put_back_each(changes, origin, "reload: ")

    def _put_back_each(self, changes: Sequence[Change], origin: str, why: str = "") -> None:
        """Apply changes that undo others, one by one (a refusal keeps the others from coming
        back), nothing recorded or refused; one the kernel still refuses is logged and left
        to the drift check."""
        self._reverting = True
        try:
            for change in changes:
                try:
                    self.change([change], keep_steps=False, origin=origin, journal=[])
                except MfcdError as e:
                    log.error("%sputting back %s failed: %s", why, change, e)
                    if self.on_drift is not None:
                        self.on_drift()
        finally:
            self._reverting = False

    def _declared_removals(self, diff: Diff) -> list[Change]:
        routes = self.router.routes
        return [DelRoute(key) for key in diff.removed if key in routes]

    def _declared_thresholds(self, diff: Diff, journal: list[Change]) -> list[Change]:
        changes: list[Change] = []
        running = self.declared.interfaces
        for name, threshold in sorted(diff.thresholds.items()):
            changes.append(SetThreshold(name, threshold or DEFAULT_THRESHOLD))
            was_declared = name in running and running[name].threshold is not None
            if name in self.router.thresholds and not was_declared:
                journal.append(SetThreshold(name, DEFAULT_THRESHOLD))  # an api setting taken over
        running_tables = self.declared.table_interfaces
        api_tables = self.router.table_thresholds
        for (name, table), threshold in sorted(diff.table_thresholds.items()):
            changes.append(SetThreshold(name, threshold or NO_SETTING, table))
            if (name, table) in api_tables and (name, table) not in running_tables:
                journal.append(SetThreshold(name, NO_SETTING, table))  # (as above)
        return changes

    def _declared_mrdisc(self, diff: Diff, journal: list[Change]) -> list[Change]:
        changes: list[Change] = []
        running = self.declared.mrdisc()
        for name, on in sorted(diff.mrdisc.items()):
            changes.append(SetMrdisc(name, bool(on)))
            if name in self.joins.mrdisc and name not in running:
                journal.append(SetMrdisc(name, False))  # an api setting taken over
        return changes

    def _declared_templates(self, new: Declarations, journal: list[Change]) -> list[Change]:
        """The config templates of `new` against those running: removals first (they free
        VIFs), then additions and changes; an api template declared now is taken over."""
        router = self.router
        wanted = template_intents(new, router.links)
        origins = router.template_origins
        changes: list[Change] = [
            DelTemplate(key) for key, o in origins.items() if o == "config" and key not in wanted
        ]
        for key, (ports, _) in wanted.items():
            if origins.get(key) == "config" and router.templates.get(key) == ports:
                continue
            changes.append(AddTemplate(key, ports))
            if key in router.templates and key not in origins:
                journal.append(DelTemplate(key))
        return changes

    def _declared_joins(self, new: Declarations, journal: list[Change]) -> list[Change]:
        """The config joins of `new` against those running; an api join is taken over."""
        wanted = join_intents(new, self.router.links)
        running = self.joins.wanted
        changes: list[Change] = [
            Leave(key) for key, o in running.items() if o == ORIGIN_CONFIG and key not in wanted
        ]
        for key in wanted:
            origin = running.get(key)
            if origin != ORIGIN_CONFIG:
                changes.append(Join(key, ORIGIN_CONFIG))
                if origin is not None:
                    journal.append(Leave(key))
        return changes

    def _declared_routes(
        self, new: Declarations, keys: Iterable[RouteKey], journal: list[Change]
    ) -> list[Change]:
        """The changes that add or change the routes `keys` as `new` declares them."""
        router = self.router
        routes, origins, links = router.routes, router.origins, router.links
        declared, wild, share = new.routes, new.wild, router.share
        if not wild:  # (100,000 at start: in C but for the few distinct values)
            keys = list(keys)
            if len(keys) == len(declared) and keys == list(declared):  # (a start: no lookups)
                values = list(declared.values())
            else:
                values = list(map(declared.__getitem__, keys))
            if routes:
                journal += [DelRoute(k) for k in keys if k in routes and k not in origins]
            if not values:
                return []
            if countOf(map(is_, values, repeat(values[0])), True) == len(values):
                # All on one declared value (the usual start): it is shared once.
                return list(map(_new, repeat(AddRoute), zip(keys, repeat(share(values[0])))))
            ids = list(map(id, values))
            by_id = {i: share(p) for i, p in dict(zip(ids, values, strict=True)).items()}
            values = list(map(by_id.__getitem__, ids))
            return list(map(_new, repeat(AddRoute), zip(keys, values, strict=True)))
        shared: dict[int, Ports] = {}  # id of the declared value -> the router's (few values)
        changes: list[Change] = []
        append = changes.append
        for key in keys:  # (100,000 at start: kept lean)
            ports = declared[key]
            if wild and key in wild:
                ports = share(expand(ports, links))
            else:
                value = shared.get(id(ports))
                if value is None:
                    value = shared[id(ports)] = share(ports)
                ports = value
            append(_new(AddRoute, (key, ports)))
            if key in routes and key not in origins:
                journal.append(DelRoute(key))  # an api route taken over
        return changes

    def follow_wildcards(self, names: Collection[str] | None = None) -> Outcome | None:
        """Re-plan the declared routes with wildcard oifs after interfaces came or went (None:
        nothing to change). Routes without wildcards are never looked at, nor (`names`: the
        interfaces that came, went or were renamed) those whose wildcards match none of
        them, unless short of what they match (see follow_api_wildcards)."""
        if self.in_reload:
            self.follow_due = True
            return None
        declared, router = self.declared, self.router
        if self._declared_unfollowed:  # (the last one failed: all again)
            names = None
        due = self._follow_filter(names)
        wild = [k for k in declared.wild if due(k, declared.routes[k])]
        changes: list[Change] = []
        journal: list[Change] = []
        for key in sorted(wild):
            ports = expand(declared.routes[key], router.links)
            if router.routes.get(key) != ports:
                changes.append(AddRoute(key, router.share(ports)))
        if declared.templates:
            changes += self._declared_templates(declared, journal)
        if any(is_wildcard(j.interface) for j in declared.joins):
            changes += self._declared_joins(declared, journal)
        if not changes:
            self._declared_unfollowed = False
            self.note_short(None if names is None else wild)
            return None
        self._declared_unfollowed = True
        try:
            # (as a start or reload: a table another router owns keeps its intents pending,
            # and the other tables' follow their interfaces all the same)
            with self._table_refusals():
                outcome = self._change_declared(changes, keep_steps=True, journal=journal)
            self._declared_unfollowed = False
            return outcome
        finally:
            self.note_short(None if names is None else wild)

    def persistent(self, copy: bool = True) -> tuple[dict[RouteKey, Ports], dict[str, int]]:
        """The routes and thresholds the state file holds: the "api" ones (the routes are
        the model's own dict if there are no others and no `copy` is asked for)."""
        router = self.router
        origins = router.origins
        if origins and router.routes.keys() <= origins.keys():  # (a start with config routes)
            routes = {}
        elif origins:
            routes = {k: v for k, v in router.routes.items() if k not in origins}
        else:
            routes = dict(router.routes) if copy else router.routes
        if self.wild_routes:  # a wildcard route is saved as its pattern
            wild = self.wild_routes
            routes = {**routes, **{k: v for k, v in wild.items() if k not in origins}}
        declared = self._saved_declarations().interfaces
        if self.unjournaled is not None:  # api routes a reload under way took over: kept
            wild = self.wild_routes
            before = self.unjournaled[0].items()
            kept = {k: wild.get(k, p) for k, (p, o) in before if o == "api" and p is not None}
            routes = {**routes, **kept}
        thresholds = {
            name: value
            for name, value in router.thresholds.items()
            if name not in declared or declared[name].threshold is None
        }
        return routes, thresholds

    def _deferrable(
        self, changes: Sequence[Change], dry_run: bool, own: bool, unrecorded: bool = False
    ) -> Before | None:
        """What `changes` replace, if their journal record may wait for the group's sync;
        None if they are journaled here and now (after the group, which is flushed first).
        `own`: the record is the changes themselves (not another origin's journal);
        `unrecorded`: nothing is journaled (a reload's slice, wildcards followed), so there
        is no order to keep and the group goes on forming: its sync is not waited for here."""
        if not self.grouping or self._reverting or dry_run or unrecorded:
            return None
        small = own and len(changes) <= GROUP_MAX_CHANGES
        before = _before(self.router, changes) if small else None
        if before is None:
            self.flush()  # the journal keeps the order in which changes were applied
        return before

    def _defer(self, changes: Sequence[Change], before: Before) -> None:
        group = self.group
        if group is None:
            group = self.group = Group()
        group.changes += changes
        group.before.append(before)
        self.deferrals += 1

    def flush(self) -> MfcdError | None:
        """Journal the group's changes in one record with one sync; if that fails, put the
        model and the kernel back as they were before them and say why (none of them may be
        acknowledged). None when they are durable, or there were none. A group a thread is
        journaling is concluded first (waiting for it): the journal keeps the order."""
        self.finish_sync()
        group, self.group = self.group, None
        if group is None:
            return None
        failure: Exception | None = None
        try:
            self._record(group.changes)
        except Exception as e:
            failure = e
        self._conclude([group], failure)
        return group.error

    def start_sync(self) -> Future[Exception | None] | None:
        """Hand the group formed so far to a thread that journals it (one record, one sync)
        while the loop goes on handling requests, which form the next group; the future is
        done once it is written, and finish_sync then gives its verdict. None if there is no
        group, or a thread is journaling one already (its finish_sync comes first)."""
        if self.syncing is not None or self.group is None:
            return None
        group, self.group = self.group, None
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mfcd-journal")
        self.syncing = group
        self._written = self._writer.submit(self._write, group.changes)
        return self._written

    def _write(self, changes: Sequence[Change]) -> Exception | None:
        """In the journal's thread: append the record; what went wrong, for finish_sync."""
        try:
            self.state.append(changes)
        except Exception as e:
            return e
        return None

    def finish_sync(self) -> None:
        """Conclude the group a thread journals (waiting for it if need be): answered once
        durable, or undone and refused. If its sync failed, the group formed meanwhile is
        refused with it: its changes were planned on top of the refused ones."""
        group, written = self.syncing, self._written
        if group is None or written is None:
            return
        self.syncing = self._written = None
        failure = written.result()
        groups = [group]
        if self.group is not None and failure is not None:
            groups.append(self.group)
            self.group = None
        if isinstance(failure, SnapshotNeeded):
            # The record went where no restart reads it: a snapshot of the model at the
            # path must hold it, and holds the next group's changes too (applied already).
            try:
                self._write_back(str(failure))
                failure = None
            except Exception as e:
                failure = e
        self._conclude(groups, failure)

    def _conclude(self, groups: list[Group], failure: Exception | None) -> None:
        """Give groups (oldest first) their verdict; after a failure, undo them newest first."""
        error = None
        if failure is not None:
            error = (
                failure
                if isinstance(failure, MfcdError)
                else StateError(f"internal error: {failure}")
            )
            log.error(
                "%s (refusing the %d changes waiting for it and putting them back)",
                error,
                sum(len(group.changes) for group in groups),
            )
        for group in reversed(groups):
            group.done, group.error = True, error
            if error is not None:
                self._revert(group)
        if self.on_synced is not None:
            for group in groups:
                self.on_synced(group)

    def close(self) -> None:
        """Conclude a group being journaled and stop the journal's thread."""
        self.finish_sync()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    def _revert(self, group: Group) -> None:
        """Undo a group's changes, newest first, as changes of their own (link events may
        have come in between, so an undo log of the model would not fit any more)."""
        routes: dict[RouteKey, Ports | None] = {}
        thresholds: dict[str, int | None] = {}
        for old_routes, old_thresholds in reversed(group.before):
            routes.update(old_routes)
            thresholds.update(old_thresholds)
        router = self.router
        undo: list[Change] = [
            SetThreshold(name, DEFAULT_THRESHOLD if ttl is None else ttl)
            for name, ttl in thresholds.items()
            if router.thresholds.get(name) != ttl
        ]
        undo += [
            DelRoute(key) if ports is None else AddRoute(key, ports)
            for key, ports in routes.items()
            if router.routes.get(key) != ports
        ]
        self._put_back_each(undo, "api")

    def _planned(
        self, changes: Sequence[Change], runs: Sequence[RouteRun], numbered: bool, outcome: Outcome
    ) -> Iterator[list[Step]]:
        """The steps of `changes`, planned and counted into `outcome` as they are (each route
        of a run's step counts as one operation), given out at every CHUNK changes and at
        the end, as route by route: a run is cut there, so the kernel takes the same chunks
        before a later change is planned, and a batch fails with the same error either way."""
        counts = outcome.counts
        steps: list[Step] = []  # planned, not given out yet
        more = 0  # routes their run steps stand for beyond one each (all add_mfc)
        done = 0  # changes planned so far
        end = CHUNK  # where the chunk being planned ends
        for run in (*runs, RouteRun(len(changes), [], Ports("", ()))):
            stop = run.start + len(run.keys)
            while done < stop:
                if done < run.start:  # the changes before the run
                    cut = min(run.start, end)
                    steps += self._plan_chunk(changes, done, numbered, cut)
                else:
                    cut = min(stop, end)
                    keys = run.keys[done - run.start : cut - run.start]
                    more += self._plan_piece(changes, done, keys, run.ports, numbered, steps=steps)
                done = cut
                if done == end:
                    _count(counts, steps, more)
                    yield steps
                    steps, more, end = [], 0, end + CHUNK
        if steps:
            _count(counts, steps, more)
            yield steps

    def _plan_piece(
        self,
        changes: Sequence[Change],
        start: int,
        keys: list[RouteKey],
        ports: Ports,
        numbered: bool,
        *,
        steps: list[Step],
    ) -> int:
        """Plan (into `steps`) the adds of `keys`, changes[start : start + len(keys)], in one
        step if the model takes them whole, else their first route on its own (a table's
        first, or on new interfaces: it adds VIFs) and the rest in one step, else route by
        route (not all new, say); how many routes the run steps stand for beyond one each."""
        if len(keys) > 1 and self.router.add_run(keys, ports, steps):
            return len(keys) - 1
        steps += self._plan_chunk(changes, start, numbered, start + 1)
        if len(keys) > 2 and self.router.add_run(keys[1:], ports, steps):
            return len(keys) - 2
        steps += self._plan_chunk(changes, start + 1, numbered, start + len(keys))
        return 0

    def _plan_chunk(
        self, changes: Sequence[Change], start: int, numbered: bool, stop: int | None = None
    ) -> list[Step]:
        router = self.router
        add_direct = router.add_direct
        steps: list[Step] = []
        end = len(changes) if stop is None else stop
        for index in range(start, min(start + CHUNK, end)):
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
            case SetThreshold(interface, threshold, table):
                return router.set_threshold(interface, threshold, table)
            case AddTemplate(key, ports):
                return router.add_template(key, ports)
            case DelTemplate(key):
                return router.del_template(key)
            case Join(key, origin):
                self._member_ops += self.joins.join(key, origin, router.links)
            case Leave(key):
                self._member_ops += self.joins.leave(key)
            case SetMrdisc(interface, on):
                self.joins.set_mrdisc(interface, on)
        return []

    def _unjoin(self, ops: Sequence[MembershipOp]) -> list[KernelError]:
        """Undo memberships a failed change made, newest first; the refusals."""
        failures = []
        for op in reversed(ops):
            try:
                assert self.members is not None
                self.members.one(op.inverse)
            except KernelError as e:
                failures.append(e)
        return failures

    def _report_undo_failures(self, failures: Sequence[KernelError]) -> None:
        """A rollback the kernel refused leaves it out of step with the model: log, then repair."""
        for failure in failures:
            log.error("rollback incomplete, kernel and mfcd disagree: %s", failure)
        if failures and self.on_drift is not None:
            self.on_drift()

    def compaction_due(self) -> bool:
        """Whether the journal should be compacted into a snapshot now."""
        # Once the journal holds as many ops as there are routes (and at least 10,000), so
        # compaction's O(routes) cost is spread over O(routes) changes. Never while a group
        # waits for its sync: the snapshot would hold changes that sync may still refuse.
        if self.group is not None or self.syncing is not None or self.reloading:
            return False
        return self.journal_long()

    def journal_long(self) -> bool:
        """Whether the journal has grown enough to be compacted (whatever waits)."""
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
        routes, thresholds = self.persistent(copy=False)
        self.state.write_snapshot(
            RouteView(routes),
            thresholds,
            self.snapshot_extra(),
            templates=self.persistent_templates(),
        )

    def _record(self, changes: Sequence[Change], runs: Sequence[RouteRun] = ()) -> None:
        """Make a change durable: appended to the journal (`runs` of it written from their
        columns) or, if the state file was deleted or replaced behind mfcd's back, in a
        whole snapshot written there again."""
        try:
            self.state.append(changes, runs)
        except SnapshotNeeded as e:
            # The model already holds the change (uncommitted), so the snapshot has it; if the
            # snapshot fails too, the change is refused and rolled back like any other.
            self._write_back(str(e))

    def keep_state_file(self) -> None:
        """Write the state file again if it was deleted or replaced while mfcd runs, so that
        a restart finds the routes even if no change came since (the daemon calls this
        every second)."""
        self.flush()  # a snapshot must not hold changes their sync may still refuse
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
        self._members(what, self.joins.link_up, interface, ifindex)
        steps: list[Step] = []
        for vif in router.vifs_named(interface):
            revive = router.revive_vif
            readded = self._apply_quietly(
                what, revive, vif.family, vif.table, interface, not self.sliced
            )
            if readded and self.sliced:
                job = self.reissues.setdefault(interface, _Reissue(ifindex, started))
                job.vifs.add((vif.family, vif.table, interface))
            steps += readded
        with self._table_refusals():
            for key in router.waiting_for(interface):
                steps += self._install_or_park(key, what)
        waiting = self.reissues.get(interface)
        if waiting is not None:
            waiting.counts.update(step.action for step in steps)  # said once its entries are
        elif steps:
            log.info(
                "%s (ifindex %d): %s",
                what,
                ifindex,
                views.summarize(steps, time.monotonic() - started),
            )
        return steps

    def reissue_slices(self) -> Iterator[int]:
        """Write again the kernel entries of the installed routes on the VIFs link_up added
        back (see `sliced`): the kernel dropped their oifs there for good. Yields after each
        REISSUE_CHUNK routes looked at (how many it wrote), so the caller can serve clients
        in between (slices.run_sliced). Each entry written is the model's as it is then: a
        route changed or deleted meanwhile stays as its change left it; if a VIF's interface
        is gone again, its routes are left to its next re-creation. The interface event's
        summary line is logged at the end, as link_up logs it when it does everything at
        once."""
        router = self.router
        debug = log.isEnabledFor(logging.DEBUG)
        while self.reissues:
            interface = next(iter(self.reissues))
            job = self.reissues.pop(interface)
            what = f"interface {interface} up"
            keys = list(router.routes)  # the keys themselves, not copies: about 8 MB a million
            yield 0
            for start in range(0, len(keys), REISSUE_CHUNK):
                live = {v for v in job.vifs if (vif := router.vifs.get(v)) and vif.ifindex}
                chunk = on_vifs(router, keys[start : start + REISSUE_CHUNK], live)
                for op, error in rewrite(self.kernel, (router.entry(key) for key in chunk)):
                    step = Step(op, None, "reissue_mfc")
                    log.warning("%s: %s failed: %s", what, views.step_text(step), error)
                    job.counts["refused"] += 1
                if debug:
                    for key in chunk:
                        step = Step(router.entry(key), None, "reissue_mfc")
                        log.debug("%s: %s", what, views.step_text(step))
                job.counts["reissue_mfc"] += len(chunk)
                if chunk and self.on_reissued is not None:
                    self.on_reissued(chunk)
                yield len(chunk)
            seconds = time.monotonic() - job.started
            summary = views.summarize_counts(job.counts, seconds)
            log.info("%s (ifindex %d): %s", what, job.ifindex, summary)
            if job.counts["refused"] and self.on_drift is not None:
                self.on_drift()

    def retry_pending(self, keys: Sequence[PendingKey]) -> list[Step]:
        """Try to install pending routes, each in its own transaction (a table another
        router owned asked again: a retry, see _table_refusals)."""
        started = time.monotonic()
        steps: list[Step] = []
        router = self.router
        unavailable, refused = router.unavailable, router.refused
        with self._table_refusals(retry=True):
            for key in keys:
                if unavailable and key in refused and (key[0], key[3]) in unavailable:
                    # Its table refused the first of its intents just now: the others stay
                    # refused as they are, without a transaction each (1,000,000 routes of
                    # an owned table cost seconds of event loop at every drift check).
                    continue
                steps += self._install_or_park(key, "install pending route")
        if steps:
            log.info("pending routes: %s", views.summarize(steps, time.monotonic() - started))
        return steps

    def retry_refused(self) -> list[Step]:
        """Try again the routes and templates the kernel refused (retry_pending)."""
        refused = self.router.refused
        return self.retry_pending(list(refused)) if refused else []

    def _install_or_park(self, key: PendingKey, what: str) -> list[Step]:
        """Install a pending route; if the kernel refuses, keep it pending with the reason."""
        outcome = self._attempt(what, self.router.try_install, key)
        if not isinstance(outcome, Exception):
            return outcome
        router = self.router
        reason = _refused_reason(outcome)
        table = table_owned(outcome)
        if table is not None and self._noting_tables:
            # (the others of its table are kept pending without asking: _table_refusals)
            router.unavailable[table] = reason
        router.begin()
        if len(key) == 4:
            if key in router.routes:
                router.park(router.route(key), reason)
        else:
            router.park_template(key, reason)
        router.commit()
        return []

    def link_down(self, interface: str, kernel_dropped_vif: bool = True) -> list[Step]:
        router = self.router
        vifs = router.vifs_named(interface)
        if interface in router.links and vifs:
            routes = sum(vif.refs for vif in vifs)
            log.info(
                "interface %s gone: %d routes pending (their iif) or degraded until it is back",
                interface,
                routes,
            )
        self._members(f"interface {interface} gone", self.joins.link_down, interface)
        return self._apply_quietly(
            f"interface {interface} gone", self.router.link_down, interface, kernel_dropped_vif
        )

    def link_admin(self, kind: str, interface: str, up: bool) -> None:
        """After a link event of an interface that is up, join its SSM groups again. Linux
        empties a group's source list when its interface goes down and does not restore it
        on up (docs/kernel.md); IPv6 may do so only when the carrier follows, which is
        another event. A leave and a join restore it; the kernel then sends two reports."""
        if kind == "new" and up and self.joins.wanted:
            self._members(f"interface {interface} up", self.joins.refresh, interface)

    def check_joins(self, lost: Iterable[JoinKey]) -> int:
        """Join again the SSM joins whose source the kernel no longer filters on (`lost`, as
        membership.lost_sources found them): disabling and enabling IPv6 on an interface
        empties its source lists with no link event at all. A leave and a join restore
        them, as after a link event. Returns how many."""
        ops = self._members("SSM joins checked", self.joins.rejoin, lost)
        keys = {op.key for op in ops}
        if keys - self._rejoined:  # (said once while the same ones keep losing it)
            log.info(
                "the kernel had lost the source of %d SSM joins (%s): joined them again",
                len(keys),
                _some(describe_key(key) for key in keys),
            )
        self._rejoined = keys
        return len(keys)

    def link_event(self, kind: str, interface: str, ifindex: int) -> list[Step]:
        """Apply one rtnetlink link event ("new" or "del")."""
        links = self.router.links
        if kind == "del":
            return self.link_down(interface) if links.get(interface) == ifindex else []
        steps: list[Step] = []
        old = renamed_from(links, interface, ifindex)
        if old is not None:
            steps += self.link_down(old, kernel_dropped_vif=False)
        return steps + self.link_up(interface, ifindex)

    def sync(
        self, view: KernelView, dry_run: bool = False, what: str = "sync", quiet: bool = False
    ) -> list[dict[str, Any]]:
        """Repair drift between the kernel's tables and the model; report each repair
        (logged as `what` did them: sync, or the daemon's full drift check; `quiet`: at
        debug when there was nothing to repair, as the periodic check does).

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
            steps = router.repair(view.vifs, view.mfc, view.tables, view.static)
            report = self.repair(steps, dry_run, view)
        else:
            report, readded = self.repair_vifs(view.vifs, dry_run, view.tables)
            stale = set(router.users(readded))
            report += self.check_entries(list(router.installed), dry_run, stale)
        if not dry_run:
            self._members("sync: retry joins", self.joins.retry, router.links)
            retried = self.retry_pending([*router.blocked, *router.refused])
            report += map(views.describe_step, retried)
            level = logging.WARNING if report and what != "sync" else logging.INFO
            log.log(
                logging.DEBUG if quiet and not report else level,
                "%s: %d repairs, %d routes checked%s in %.2f s",
                what,
                len(report),
                len(router.installed),
                "" if view.mfc is not None else " by probe (foreign entries not looked for)",
                time.monotonic() - started,
            )
        return report

    def repair(
        self, steps: Sequence[Step], dry_run: bool = False, view: KernelView | None = None
    ) -> list[dict[str, Any]]:
        """Apply repair steps one by one (a refused one is reported with its error).

        The DelMfc half of a "readd_mfc" gets no line of its own: the AddMfc after it
        reports both (and the delete's error, if any: the add is tried anyway, as an
        entry left static beats none). `view`, what the kernel held, says for each
        entry what was wrong with it (_drift)."""
        report = []
        carried: KernelError | None = None
        names: dict[int, str] | None = None  # ifindex -> interface, made once if needed
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
            if step.action == "readd_mfc" and isinstance(step.op, DelMfc):
                carried = error
                continue
            entry = views.repair(step, error or carried, self.router.slots)
            carried = None
            if view is not None and view.mfc is not None and isinstance(step.op, AddMfc):
                if names is None:
                    links = self.router.links.items()
                    names = {ifindex: name for name, ifindex in links if ifindex is not None}
                entry.update(self._drift(step.op, view, names))
            report.append(entry)
        return report

    def _drift(self, op: AddMfc, view: KernelView, names: Mapping[int, str]) -> dict[str, Any]:
        """What the kernel had instead of a repaired entry: `drift` (missing, different,
        static: written by another program, vif: a VIF it uses was added back) and the
        kernel's entry, its interfaces named by `names` (`kernel`)."""
        key = (op.family, op.source, op.group, op.table)
        had = None if view.mfc is None else view.mfc.get(key)
        if had is None:
            return {"drift": "missing"}
        router = self.router
        iif, oifs = had
        kernel = {
            "iif": None if iif is None else names.get(iif, f"ifindex {iif}"),
            "oifs": sorted(names.get(i, f"ifindex {i}") for i in oifs),
        }
        if key in view.static:
            return {"drift": "static", "kernel": kernel}
        return {"drift": "vif" if had == router.expected(key) else "different", "kernel": kernel}

    def repair_vifs(
        self,
        kernel_vifs: Mapping[tuple[int, int, int], str | None],
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
        gone = set(missing(self.kernel, keys))
        wanted = gone | {key for key in keys if key in stale}
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
            entry = views.repair(step, refused, router.slots)
            if key in wanted:  # (a probe sees only whether an entry is there)
                entry["drift"] = "missing" if key in gone else "vif"
            report.append(entry)
        return report

    def _apply_quietly(self, what: str, method: Any, *args: Any) -> list[Step]:
        """Run a model method as its own transaction; log instead of raising (no client waits)."""
        outcome = self._attempt(what, method, *args)
        return [] if isinstance(outcome, Exception) else outcome

    def _attempt(self, what: str, method: Any, *args: Any) -> list[Step] | Exception:
        """Run a model method as its own transaction: its steps, or what failed (logged)."""
        router = self.router
        router.begin()
        try:
            steps: list[Step] = method(*args)
            execute(self.kernel, steps)
        except Exception as e:  # never leave the transaction open, whatever went wrong
            router.rollback()
            # (a table another router owns: tell_owned says so once the batch is over)
            owned = self._noting_tables and table_owned(e) is not None
            log.log(logging.DEBUG if owned else logging.ERROR, "%s: %s", what, e)
            self._report_undo_failures(getattr(e, "undo_failures", []))
            return e
        router.commit()
        if log.isEnabledFor(logging.DEBUG):  # callers log a summary at info
            for step in steps:
                log.debug("%s: %s", what, views.step_text(step))
        return steps


def _declared_in(message: str, where: str, field: str | None = None) -> DeclaredInConfig:
    """The refusal of a change to what the config files declare at `where` (FILE:LINE, or
    "?" when unknown): its `file` and `line` say where, as a config_error's do."""
    file, line = place_of(f"{where}: ")
    return DeclaredInConfig(message, field, file=file, line=line)


def _refused_reason(e: Exception) -> str:
    """What a route or template the kernel refused says while pending."""
    return f"the kernel refused it ({e}); mfcctl sync retries"


_NEW_COUNTER = dict.__new__  # an empty Counter, as Counter() makes one


def _counted(steps: Sequence[Step]) -> Counter[str]:
    """Counter(step.action for step in steps), for the few steps of one route without
    Counter's own update (its Mapping check is a third of a single change's count)."""
    counts: Counter[str] = _NEW_COUNTER(Counter)  # (Counter() calls its update, in Python)
    for step in steps:
        action = step.action
        counts[action] = counts.get(action, 0) + 1
    return counts


def _count(counts: Counter[str], steps: list[Step], more: int) -> None:
    """Count steps by action into `counts`, in the order a route-by-route plan would have
    named them first (the JSON answer keeps it): `more` add_mfc for their runs' routes."""
    counts.update(map(_ACTION, steps))
    if more:
        counts["add_mfc"] += more


def _route_runs(changes: Sequence[Change], start: int, end: int) -> list[RouteRun]:
    """The RouteRuns of changes[start:end], AddRoutes all (the config's routes at start):
    each stretch of at least RUN_MIN on one shared Ports, family and table."""
    if end - start >= RUN_MIN:
        whole = _one_run(changes, start, end)
        if whole is not None:
            return [whole]
    runs = []
    at = start
    for _, same in groupby(islice(changes, start, end), _run_of):
        adds = list(same)
        if len(adds) >= RUN_MIN:
            first = adds[0]
            assert isinstance(first, AddRoute)
            runs.append(RouteRun(at, list(map(_KEY, adds)), first.ports))
        at += len(adds)
    return runs


def _one_run(changes: Sequence[Change], start: int, end: int) -> RouteRun | None:
    """_route_runs' one run when changes[start:end] all share their Ports, family and table
    (the usual start: every config route on one combination), found in C; else None."""
    adds = changes[start:end]
    first = adds[0]
    assert isinstance(first, AddRoute)
    ports, family, table = first.ports, first.key[0], first.key[3]
    if countOf(map(is_, map(_PORTS, adds), repeat(ports)), True) != len(adds):
        return None
    keys: list[RouteKey] = list(map(_KEY, adds))
    if countOf(map(_FAMILY, keys), family) != len(keys):
        return None
    if countOf(map(_TABLE, keys), table) != len(keys):
        return None
    return RouteRun(start, keys, ports)


def _run_of(change: Any) -> tuple[int, int, int]:
    """What an AddRoute shares with the others of its run: its Ports, family and table."""
    key = change[0]
    return id(change[1]), key[0], key[3]


def _runs(routes: dict[RouteKey, Ports]) -> Iterator[tuple[Ports, list[RouteKey]]]:
    """The routes in runs of one combination of interfaces, in order: each run's Ports and
    keys (all routes on one combination, the usual case: one pass at C speed)."""
    return _runs_of(routes, routes.values())


def _runs_of(
    keys: Iterable[RouteKey], ports: Collection[Ports]
) -> Iterator[tuple[Ports, list[RouteKey]]]:
    """_runs of routes given as their keys and, in the same order, their Ports."""
    if not ports:
        return
    first = next(iter(ports))
    if countOf(ports, first) == len(ports):
        yield first, list(keys)
        return
    for shared, run in groupby(zip(keys, ports, strict=True), _PORTS):
        yield shared, list(map(_KEY, run))


class RestoreStream:
    """A restore that starts while the state file is still read (state.RestoreStream,
    Controller.restore_stream): the routes of the records read so far go to the model and
    the kernel, runs at a time, so that the kernel's writer process writes them while the
    rest is read. That holds while every record only adds new routes (a snapshot's, a
    batch's). From the first record that deletes or replaces a route, changes a threshold
    or names a wildcard, nothing more is handed over; at the end of the file,
    Controller.restore puts the model right (_put_right). Nothing is handed over before
    `first` routes are read: a short file is restored all at once, as without a stream.

    A kernel refusal while the file is read undoes what went in (`failed`); restore() then
    restores route by route, as a restore all at once does."""

    def __init__(
        self, controller: Controller, links: dict[str, int], first: int = LATER_MIN
    ) -> None:
        self.controller = controller
        self.links = links
        self.first = first  # routes read before the first hand-over; then as many a time
        self.keys: list[RouteKey] = []  # routes read and not handed over yet, in order
        self.ports: list[Ports] = []  # and their interfaces
        self.steps: list[Step] = []  # planned and not yet applied
        self.undo: list[KernelOp | None] = []
        self.started = False  # the restore's transaction is open: routes went to the model
        self.clean = True  # every record read only added new routes
        self.failed: str | None = None  # why the kernel refused, if it did

    def took(self, loaded: Loaded, before: int, adds: int) -> None:
        if not self.clean:
            return
        routes = loaded.routes
        if adds < 0 or len(routes) != before + adds:
            self.clean = False  # (the routes read and not handed over: restore() does them)
            self.keys, self.ports = [], []
            return
        if adds:
            # The new ones are the dict's last: read back from its end (in the order of its
            # entries, without a lookup each).
            added = list(islice(reversed(routes), adds))
            added.reverse()
            self.keys += added
            ports = list(islice(reversed(routes.values()), adds))
            ports.reverse()
            self.ports += ports
        if len(self.keys) >= self.first:
            self.hand_over(loaded)

    def hand_over(self, loaded: Loaded) -> None:
        """The routes read so far to the model, and their steps to the kernel."""
        keys, ports, self.keys, self.ports = self.keys, self.ports, [], []
        controller = self.controller
        try:
            if not self.started:
                self.started = True
                self.steps = controller._begin_restore(loaded, self.links)
                controller._later_every = True  # (every run of a few hundred to the writer)
            for shared, run in _runs_of(keys, ports):
                if shared.__class__ is Pattern:  # (its expansion waits for the end: restore)
                    self.clean = False
                    return
                self.steps = controller._restore_run(run, shared, self.steps, self.undo)
        except (KernelError, VifLimit) as e:
            # (its text only: the error's tracebacks, its own and its context's, hold the
            # reader's frames, and through them the file and its routes)
            self.clean, self.failed = False, str(e)
            controller._restore_failed(e, self.undo)
            self.steps, self.undo = [], []


def _before(router: Router, changes: Sequence[Change]) -> Before | None:
    """What `changes` would replace in `router` (see Before); None if one of them is of a
    kind this does not know how to put back, or replaces a route of another origin (a
    learned entry: putting it back as an api route would save it), which is then journaled
    on its own, its rollback restoring the origin too."""
    routes: dict[RouteKey, Ports | None] = {}
    thresholds: dict[str, int | None] = {}
    origins = router.origins
    for change in changes:
        if isinstance(change, (AddRoute, DelRoute)):
            key = change.key
            if key in origins:
                return None
            if key not in routes:
                routes[key] = router.routes.get(key)
        elif isinstance(change, SetThreshold) and change.table is None:
            name = change.interface
            if name not in thresholds:
                thresholds[name] = router.thresholds.get(name)
        else:
            return None
    return routes, thresholds


def on_vifs(
    router: Router, keys: Sequence[RouteKey], vifs: AbstractSet[tuple[int, int, str]]
) -> list[RouteKey]:
    """The keys of installed routes that use one of `vifs` (family, table, interface): as
    Router.users, for a slice of the keys at a time."""
    if not vifs:
        return []
    routes, installed = router.routes, router.installed
    verdicts: dict[tuple[int, int, int], bool] = {}  # (family, table, id(ports)): uses one
    found = []
    for key in keys:
        ports = routes.get(key)
        if ports is None or key not in installed:
            continue
        where = (key[0], key[3], id(ports))
        hit = verdicts.get(where)
        if hit is None:
            hit = verdicts[where] = any((key[0], key[3], n) in vifs for n in ports.interfaces)
        if hit:
            found.append(key)
    return found


def _some(texts: Iterable[str], shown: int = 3) -> str:
    """The first few of the texts in order, and "..." if there are more: for a log line."""
    ordered = sorted(texts)
    return ", ".join(ordered[:shown]) + (", ..." if len(ordered) > shown else "")


def _lacking(pattern: Ports, now: Ports, held: Ports, links: Iterable[str]) -> tuple[str, ...]:
    """What a wildcard route or template (`pattern`, expanded to `now`) lacks as the model
    holds it (`held`): the interfaces its wildcards match that it has no VIF for, then the
    wildcards that match no interface (a missing oif of a kind: degraded, as a named one)."""
    names = list(links)
    without = [n for n in now.oifs if n not in held.oifs]
    unmatched = [
        n
        for n in pattern.oifs
        if is_wildcard(n) and not any(matches(n, m) and m != pattern.iif for m in names)
    ]
    return (*without, *unmatched)
