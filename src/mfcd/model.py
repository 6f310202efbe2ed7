"""The routing model: desired routes, VIF allocation and the kernel operations they need (no I/O).

Theory of operation
-------------------
The daemon keeps *desired* routes, one per (family, source, group, table).  A route is
*installed* when every interface it names exists: the model then holds a VIF for
each of those interfaces and an MFC entry in the kernel.  A route whose iif does not
exist is *pending*; it is installed the moment its iif appears.  A route installed
while an oif it names does not exist, or whose oif disappears after, is
*degraded*: the MFC entry is in the kernel and forwards out of the oifs that exist,
and the VIF index of each missing interface is reserved for its name (a Vif with no
ifindex: the kernel has no VIF there, having removed it with its device or never had
it), so that when the interface appears the VIF is added at that index and the entry
is re-issued.  A route whose iif disappears is pending again, as one restored while
its iif is missing: its entry stays in the kernel, forwarding nothing (no VIF
receives for it), with the iif's VIF index reserved, so that forwarding resumes the
moment the iif returns.  Which state a route is in therefore depends only on which
interfaces exist, never on their history: a restart does not change what is
forwarded.  A VIF index is never handed to another interface while an entry refers
to it.

Every mutating method returns the kernel operations (`Step`s, each paired with
the operation that undoes it) in the order the kernel needs them: VIFs before
the MFC entries that use them (the kernel silently drops an oif that is not yet
a VIF), and MFC entries removed before their VIFs are released.

Mutations happen inside a transaction: `begin()` starts an undo log, `rollback()`
restores every dict, set and field that changed, `commit()` drops the log.  The
log records only what changed, so a transaction costs O(its own changes), never
O(number of routes).  A VIF counts the installed routes that use it; the routes
themselves are found by a scan, which only rare events (an interface re-created,
a threshold changed, a repair) need.

Memory layout: a router holds 100,000s of routes, so per route it keeps only its
key (family, source, group, table) and, in `routes`, a reference to a value shared by every
route with the same interfaces (`Ports`) and, once installed, the same kernel entry
(`Placed`: its Ports with its `Entry`). `installed` is a view of the installed routes in
`routes`, not a second dict: one dict of 1,000,000 routes is 40 MiB.  `Route` and the
kernel operations are built when asked for.  Values are NamedTuples rather than frozen
dataclasses: they are as immutable, and a bulk load builds several per route, where a
frozen dataclass costs three times as much to make.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

from mfcd import templates as tpl
from mfcd.errors import InvalidArgument, NotFound, VifLimit
from mfcd.groups import Join, Leave, SetMrdisc
from mfcd.protocol import DEFAULT_TABLE as DEFAULT_TABLE  # noqa: PLC0414 (re-exported)
from mfcd.protocol import family_text
from mfcd.templates import TemplateKey

MAXVIFS = 32  # linux/mroute.h MAXVIFS, linux/mroute6.h MAXMIFS
# Who asked for an intent: mfcctl or JSON ("api"), the configuration file ("config"), or the
# kernel's upcalls through a template ("learned"). Only "api" intents are saved.
ORIGINS = ("api", "config", "learned")
DEFAULT_THRESHOLD = 1  # forward a packet whose TTL is above 1, i.e. any packet that may be routed
# A SetThreshold of one table with this threshold removes that table's setting (the table
# then uses the every-table one). Never a threshold: the kernel's ttls 0 means "not an oif".
NO_SETTING = 0

# (family 4|6, source, group, table), addresses in canonical text form; `table` is the kernel's
# multicast routing table number (DEFAULT_TABLE[family] unless the route names another). It is
# last so that a key is also the fields of the DelMfc that removes its entry.
RouteKey = tuple[int, str, str, int]
TableKey = tuple[int, int]  # (family, table): one kernel table, with its own 32 VIFs
# An MFC entry as netlink reports it: (iif ifindex or None, {oif ifindex: ttl}).
KernelEntry = tuple[int | None, dict[int, int]]
# What may wait for an interface or a VIF index: a route, or a template (model.TemplateKey).
PendingKey = RouteKey | TemplateKey
Oifs = tuple[tuple[int, int], ...]  # (vif index, TTL threshold), sorted by vif index


class Ports(NamedTuple):
    """The interfaces of a route; one shared instance per distinct combination."""

    iif: str
    oifs: tuple[str, ...]  # distinct, and never the iif (validate.route guarantees it)

    @property
    def interfaces(self) -> tuple[str, ...]:
        return (self.iif, *self.oifs)


def renamed_from(links: Mapping[str, int], interface: str, ifindex: int) -> str | None:
    """The name an interface (`interface`, `ifindex`, as an RTM_NEWLINK names it) had in
    `links` under another name, if it was renamed (the kernel keeps its index); else None."""
    return next((n for n, i in links.items() if i == ifindex and n != interface), None)


class Route(NamedTuple):
    """A desired (S,G) route: packets from `source` to `group` arriving on `iif` leave on `oifs`."""

    family: int
    source: str
    group: str
    iif: str
    oifs: tuple[str, ...]  # distinct, and never the iif (validate.route guarantees it)
    table: int

    @property
    def key(self) -> RouteKey:
        return (self.family, self.source, self.group, self.table)

    @property
    def interfaces(self) -> tuple[str, ...]:
        return (self.iif, *self.oifs)


class Entry(NamedTuple):
    """What the kernel holds for an installed route; one shared instance per distinct entry."""

    parent: int
    oifs: Oifs


class Placed(Ports):
    """An installed route's value in `Router.routes`: its interfaces (equal to its Ports, as
    a tuple) with the kernel entry written for it; one shared instance per combination."""

    # (A tuple subclass cannot have slots; the instances are few, their __dict__ is no cost.)
    ports: Ports  # the shared plain Ports
    entry: Entry


def _placed(ports: Ports, entry: Entry) -> Placed:
    value: Placed = _new(Placed, ports)
    value.ports = ports
    value.entry = entry
    return value


class Installed(Mapping["RouteKey", Entry]):
    """The installed routes and their entries: a view of `Router.routes` (see Placed)."""

    __slots__ = ("_router",)

    def __init__(self, router: Router) -> None:
        self._router = router

    def __getitem__(self, key: RouteKey) -> Entry:
        value = self._router.routes[key]
        if value.__class__ is not Placed:
            raise KeyError(key)
        return value.entry

    def __contains__(self, key: object) -> bool:
        return self._router.routes.get(key).__class__ is Placed  # type: ignore[call-overload]

    def get(self, key: RouteKey, default: Any = None) -> Any:
        value = self._router.routes.get(key)
        return value.entry if value.__class__ is Placed else default

    def __iter__(self) -> Iterator[RouteKey]:
        routes = self._router.routes
        if self._router.installed_count() == len(routes):
            return iter(routes)  # every route installed, the usual case: at C speed
        return (key for key, value in routes.items() if value.__class__ is Placed)

    def __len__(self) -> int:
        return self._router.installed_count()

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[RouteKey, Entry]:
        """A copy of what it shows now (a dict), not of the router behind it."""
        return dict(self.items())


# --- kernel operations -------------------------------------------------------------------------


# Each operation names the multicast routing table it applies to (the kernel's table number)
# as its last field.


class AddVif(NamedTuple):
    family: int
    vifi: int
    interface: str
    ifindex: int
    threshold: int
    table: int


class DelVif(NamedTuple):
    family: int
    vifi: int
    interface: str
    table: int


class AddMfc(NamedTuple):
    """Write an MFC entry; the kernel replaces an existing (S,G) in place, keeping its counters."""

    family: int
    source: str
    group: str
    parent: int
    oifs: Oifs
    table: int


class DelMfc(NamedTuple):
    family: int
    source: str
    group: str
    table: int


class AddMfcRun(NamedTuple):
    """Write the MFC entries of many routes of one table that share one entry (a bulk load):
    the same as an AddMfc per key, in order, with the kernel's structure packed once."""

    family: int
    table: int
    parent: int
    oifs: Oifs
    keys: Sequence[RouteKey]  # distinct, each of this family and table; never changed after


class DelMfcRun(NamedTuple):
    """Remove the MFC entries of many routes of one table: a DelMfc per key, in order."""

    family: int
    table: int
    keys: Sequence[RouteKey]


# A run's undo is a run over the same keys in the same order: when the kernel took only the
# first i routes of a run, the undo of those is the undo run's first i (run_head).
KernelOp = AddVif | DelVif | AddMfc | DelMfc | AddMfcRun | DelMfcRun
RUNS = (AddMfcRun, DelMfcRun)
# Fewer routes than this on one combination go one by one (add_direct): a run's own
# objects, its packed structure and its kernel call cost more than it saves on a few
# routes, say when each line of a file alternates between two upstream interfaces.
RUN_MIN = 16
_Run = AddMfcRun | DelMfcRun


def run_ops(op: _Run) -> list[AddMfc | DelMfc]:
    """The operations a run stands for, one per route, in order."""
    if op.__class__ is AddMfcRun:
        family, table, parent, oifs, keys = op
        return [AddMfc(family, k[1], k[2], parent, oifs, table) for k in keys]
    return [_new(DelMfc, key) for key in op.keys]


def run_head(op: _Run, n: int) -> _Run:
    """The run of the first n routes of `op` (what a kernel that stopped there applied)."""
    return op._replace(keys=op.keys[:n])


def run_tail(op: _Run, n: int) -> _Run:
    """The run of the routes of `op` after the first n."""
    return op._replace(keys=op.keys[n:])


def run_size(op: KernelOp) -> int:
    """How many kernel calls an operation stands for: a run's routes, else one."""
    return len(op.keys) if op.__class__ in RUNS else 1


class Step(NamedTuple):
    """One kernel operation, the operation that undoes it, and what it means for a reader."""

    op: KernelOp
    undo: KernelOp | None  # None: nothing to restore (repairs of what the model does not own)
    # add_vif, del_vif, add_mfc, replace_mfc, del_mfc, readd_vif, reissue_mfc, readd_mfc
    action: str


# --- requested changes -------------------------------------------------------------------------


class AddRoute(NamedTuple):
    """Add or replace a route, given as its key and shared interfaces (a batch holds 100,000s)."""

    key: RouteKey
    ports: Ports

    @classmethod
    def of(cls, route: Route) -> AddRoute:
        return cls(route.key, Ports(route.iif, route.oifs))


class DelRoute(NamedTuple):
    key: RouteKey


class SetThreshold(NamedTuple):
    """An interface's TTL threshold: in every table (`table` None), or in one table only,
    where it overrides the every-table setting (`threshold` NO_SETTING removes it)."""

    interface: str
    threshold: int
    table: int | None = None


class AddTemplate(NamedTuple):
    """Add or replace a template (its oifs; the iif is part of its key)."""

    key: TemplateKey
    ports: Ports


class DelTemplate(NamedTuple):
    key: TemplateKey


# What a client asks for; journaled as it is. Joins and mrdisc go to groups.Joins, not Router.
Change = AddRoute | DelRoute | SetThreshold | AddTemplate | DelTemplate | Join | Leave | SetMrdisc


@dataclass(slots=True)
class Vif:
    """A VIF (IPv4) or MIF (IPv6) the model owns; ifindex is None while its interface is absent."""

    family: int
    vifi: int
    interface: str
    ifindex: int | None
    table: int
    refs: int = 0  # installed routes that use it (as iif or oif)


@dataclass(frozen=True, slots=True)
class RouteStatus:
    state: str  # installed | degraded | pending
    missing: tuple[str, ...]  # interfaces that do not exist now
    reason: str  # empty when installed


_INSTALLED = RouteStatus("installed", (), "")
_Direct = tuple[tuple[Vif, ...], Entry, Placed]
VifKey = tuple[
    int, int, str
]  # (family, table, interface)  # what add_direct needs to know of a Ports
_MISSING: Any = object()
_T = TypeVar("_T")
_FAMILY, _TABLE = itemgetter(0), itemgetter(3)  # of a RouteKey
_new = tuple.__new__
_DICT, _SET, _SLOT, _KEYS = range(4)  # kinds of undo-log entries (_KEYS: see set_origins)
_RUN = 5  # the routes add_run installed at once (not 4 or 6: see _ROUTE_KEY_FAMILIES)
# A route the direct path installed is logged as its key alone, (family, ...): a family (4 or
# 6) is never one of the kinds above. The key already exists, so a bulk load's log costs one
# list slot per route instead of one more 72-byte tuple per route until the commit.
_ROUTE_KEY_FAMILIES = (4, 6)


_K = TypeVar("_K")
_V = TypeVar("_V")
# The learned entries of one group (Router._learned_at): the key of the only one, or a set.
_Entries = RouteKey | set[RouteKey]


class _Counting(dict[_K, _V]):
    """A dict that counts the calls that may change it (`changes`), whoever makes them:
    the direct path's cache of VIFs and entries (Router._direct) holds only while neither
    `vifs` nor `thresholds` has changed since it was filled, and start-up (and tests)
    write `thresholds` directly, not through _set. Reads are the dict's own."""

    __slots__ = ("changes",)

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def __setitem__(self, key: _K, value: _V) -> None:
        self.changes += 1
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: _K) -> None:
        self.changes += 1
        dict.__delitem__(self, key)

    def pop(self, *args: Any) -> Any:
        self.changes += 1
        return dict.pop(self, *args)

    def popitem(self) -> tuple[_K, _V]:
        self.changes += 1
        return dict.popitem(self)

    def setdefault(self, key: _K, default: Any = None) -> Any:
        if key not in self:  # (a key it holds is read, not changed)
            self.changes += 1
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.changes += 1
        dict.update(self, *args, **kwargs)

    def clear(self) -> None:
        self.changes += 1
        dict.clear(self)

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]
        self.changes += 1
        return dict.__ior__(self, other)


class _UndoLog:
    """Records the old value of every dict slot, set member and attribute a transaction changes."""

    __slots__ = ("entries", "recording", "router")

    def __init__(self, router: Router, recording: bool = True) -> None:
        self.router = router  # whose direct installs the route-key entries undo
        self.recording = recording  # False: nothing is kept and there is no rollback
        self.entries: list[tuple[int, Any, Any, Any]] = []

    def rollback(self, to: int = 0) -> None:
        """Undo every change recorded after the first `to` entries."""
        entries = self.entries
        router = self.router
        routes = router.routes
        # Whether a Vif's field but `refs` is put back (an ifindex may be back as it was):
        # the direct path's cache then goes; a VIF or threshold put back is counted by
        # _Counting. A rollback of neither (a dry run, the same route again) keeps it.
        stale = not self.recording
        while len(entries) > to:
            entry = entries.pop()
            kind, target, key, old = entry
            if kind in _ROUTE_KEY_FAMILIES:  # a route the direct path installed: one entry
                router._undo_direct(entry)
            elif kind == _RUN:
                router._undo_run(key, old)
            elif kind == _DICT:
                if target is router.learned:  # (its indexes follow it: see _index_learned)
                    router._index_learned(key, target.get(key), None if old is _MISSING else old)
                elif target is router.templates:
                    router._index = None  # (made again when next asked for)
                elif target is routes and router._installed_n >= 0:
                    # The count stays exact: a dry run or a refused change ends in a
                    # rollback, and counting again walks every route (46 ms at 1,000,000).
                    was, now = old.__class__ is Placed, routes.get(key).__class__ is Placed
                    router._installed_n += was - now
                if old is _MISSING:
                    target.pop(key, None)
                else:
                    target[key] = old
            elif kind == _KEYS:  # the keys set at once, and the old values of those that had one
                if target is routes:
                    router._installed_n = -1  # (not done today) counted again when asked
                for k in key:
                    target.pop(k, None)
                target.update(old)
            elif kind == _SET:
                if old:
                    target.add(key)
                else:
                    target.discard(key)
            elif isinstance(target, list):  # list slot
                target[key] = old
            else:  # attribute
                if key != "refs" and target.__class__ is Vif:
                    stale = True
                setattr(target, key, old)
        if stale:
            router._forget_direct()


def _fills(
    routes: dict[RouteKey, Ports], keyed: dict[RouteKey, Ports], keys: Sequence[RouteKey]
) -> bool:
    """Whether `keyed` holds the few keys of `routes`, in order, and then `keys` (as far as
    its length, first and last keys tell; see Router.add_keyed_run)."""
    held = len(routes)
    if not keys or held > 4 or len(keyed) != held + len(keys):
        return False
    ahead = iter(keyed)
    return (
        [next(ahead) for _ in range(held)] == list(routes)
        and next(ahead) == keys[0]
        and next(reversed(keyed)) == keys[-1]
    )


def _insert_new(routes: dict[RouteKey, Ports], keys: Sequence[RouteKey], placed: Ports) -> bool:
    """Insert the keys, each with `placed`, if they are distinct and none is in `routes`;
    else leave `routes` as it was (its order too) and say False.

    One probe a key (setdefault mapped over them, in C): a dict of the keys, a check that
    none is held and an update were three hash passes, two of them into a dict of up to
    1,000,000 routes, whose cache misses grew faster than the routes. A key held or seen
    twice adds nothing, so fewer entries came than keys; those that came are the dict's
    last ones (insertion order), and popitem takes them out last first."""
    held = len(routes)
    try:
        deque(map(routes.setdefault, keys, repeat(placed)), 0)
    except MemoryError:  # (the dict's growth): the run's undo is not logged yet
        for _ in range(len(routes) - held):
            routes.popitem()
        raise
    added = len(routes) - held
    if added == len(keys):
        return True
    for _ in range(added):
        routes.popitem()
    return False


class Router:
    """Desired routes of both families, the VIFs that serve them, and the interfaces that exist."""

    def __init__(self) -> None:
        # Each route's interfaces: a Placed (its Ports and its Entry) once installed.
        self.routes: dict[RouteKey, Ports] = {}
        self.installed = Installed(self)  # what the kernel holds for installed routes (a view)
        self._installed_n = 0  # len(installed), kept exact; -1: unknown, counted again when asked
        self.vifs: _Counting[VifKey, Vif] = _Counting()  # (see _direct)
        # VIF indexes per table: a table's list exists from its first VIF until its last goes.
        self.slots: dict[TableKey, list[str | None]] = {}
        self.links: dict[str, int] = {}  # interfaces that exist now: name -> ifindex
        # absent interface -> pending routes and templates naming it
        self.waiting: dict[str, set[PendingKey]] = {}
        self.blocked: dict[PendingKey, None] = {}  # pending only for want of a free VIF index
        # per-interface TTL threshold (IPv4 MFC ttls), in every table
        self.thresholds: _Counting[str, int] = _Counting()  # (see _direct)
        # (interface, table) -> the threshold of its VIF in that table only, which wins
        # over `thresholds` there (smcroute's are per table: one table per smcrouted)
        self.table_thresholds: _Counting[tuple[str, int], int] = _Counting()
        # Routes and templates pending because the kernel refused them: why.
        self.refused: dict[PendingKey, str] = {}
        # Tables the kernel refuses as a whole (another multicast router owns them), with
        # the reason: a route or template to install there is kept pending (refused) with
        # it instead, without asking the kernel. Not part of a transaction, and not a record
        # of its own: the data plane's owned_tables is that (it is what sees MRT_INIT
        # refused). This is its copy for one batch, because the model does no I/O and asks
        # no data plane: the controller fills it from that record when it applies many
        # intents at once (and with a table the kernel newly refuses, which the data plane
        # notes at the same refusal), and clears it after. The two cannot disagree during
        # the batch: a table leaves the record only when an operation there gets in, and
        # none is sent to a table listed here (see Controller._table_refusals).
        self.unavailable: dict[TableKey, str] = {}
        # Routes and templates whose wildcard oifs match interfaces they hold no VIF for
        # (the VIF table was full when they followed), or match none: those names and
        # patterns. Degraded, not installed (set by the controller as they follow: see
        # Controller.note_short; not part of a transaction).
        self.short: dict[PendingKey, tuple[str, ...]] = {}
        # Routes whose origin is not "api" (absent: "api"), see ORIGINS.
        self.origins: dict[RouteKey, str] = {}
        # Templates (mfcd.templates), and those holding VIFs on their interfaces: the kernel
        # sends upcalls only for packets arriving on a VIF.
        self.templates: dict[TemplateKey, Ports] = {}
        self.holding: dict[TemplateKey, None] = {}
        self.learned: dict[RouteKey, TemplateKey] = {}  # learned route -> its template
        # The learned entries by template, and by (family, table, iif) and group: what a
        # template's change can touch (_touched), without a scan of every learned entry. Both
        # are a function of `learned` alone, kept in step with it by _set, _pop and a
        # rollback (_index_learned); the iif is the template's, which is its entries' own
        # (each is written from its template's Ports, whose iif is the template key's). A
        # group with one entry holds that key, not a set of it (a set costs some 200 bytes:
        # at one source per group, as many as the entries).
        self._learned_of: dict[TemplateKey, set[RouteKey]] = {}
        self._learned_at: dict[tuple[int, int, str], dict[str, _Entries]] = {}
        # The learned entries removed since the learner last took them (take_unlearned), with
        # the template and iif they had: gone from the model once a change of templates is
        # applied, and what the monitor's `expired` event of each must name.
        self.unlearned: dict[RouteKey, tuple[TemplateKey, str]] = {}
        # Templates whose origin is not "api" (absent: "api"), like `origins` for routes.
        self.template_origins: dict[TemplateKey, str] = {}
        self._index: tpl.Index | None = None  # templates arranged for matching
        self._log: _UndoLog | None = None
        self.version = 0  # counts the transactions committed with a change
        # Where changes are recorded: the open log's entries, or None when nothing is
        # (no transaction, or one begun with undo=False).
        self._undo: list[tuple[int, Any, Any, Any]] | None = None
        # The shared Ports and Entry values (interning is only for memory: forgetting is safe).
        self._ports: dict[Ports, Ports] = {}
        self._entries: dict[Entry, Entry] = {}
        self._placed: dict[tuple[Ports, Entry], Placed] = {}
        # The direct path's VIFs and entry per family and Ports, kept across transactions
        # (a single route's add would work them out again each time): good while `vifs` and
        # `thresholds` have not changed since it was filled (`_direct_at`: their counts of
        # changes then, see _Counting) and no Vif's fields but `refs` have (only _assign
        # and a rollback write them: _assign clears it, a rollback that puts one back too).
        self._direct: dict[TableKey, dict[Ports, _Direct]] = {}
        self._direct_at = 0
        # Where a new VIF should go, per table and interface: the index its device has in a
        # table a restart took over (see prefer_slots); a hint, outside transactions.
        self.preferred: dict[TableKey, dict[str, int]] = {}
        # Indices no new VIF takes while it can take another: those of a table taken over
        # that the restore did not claim, until the drift check removes them (avoid_slots).
        self.avoided: dict[TableKey, set[int]] = {}

    # --- transactions ----------------------------------------------------------------------------

    def begin(self, undo: bool = True) -> None:
        """Start a transaction; with undo=False it records nothing and cannot roll back
        (start-up uses that on an empty model: on failure it starts over from scratch)."""
        if self._log is not None:
            raise RuntimeError("transaction already open")
        self._log = _UndoLog(self, recording=undo)
        self._undo = self._log.entries if undo else None

    def commit(self) -> None:
        if self._log is not None and (self._log.entries or not self._log.recording):
            self.version += 1
        self._log = self._undo = None

    def rollback(self) -> None:
        if self._log is not None:
            self._log.rollback()  # (which forgets the direct path's cache if it must)
        self._log = self._undo = None
        self._index = None
        if self.unlearned:  # (a dry run's: kept no longer than the entries it let go)
            learned = self.learned
            self.unlearned = {k: v for k, v in self.unlearned.items() if k not in learned}

    def _forget_direct(self) -> None:
        if self._direct:
            self._direct.clear()

    def changed(self) -> bool:
        """Whether the open transaction has changed anything so far."""
        return bool(self._undo)

    def _savepoint(self) -> int:
        if self._log is None:
            raise RuntimeError("model changes need an open transaction")
        return len(self._log.entries)

    def _set(self, d: dict[Any, Any], key: Any, value: Any) -> None:
        if d is self.vifs or d is self.thresholds or d is self.table_thresholds:
            self._forget_direct()
        elif d is self.templates:
            if self._index is not None and key not in d:
                self._index.add(key)  # (cheaper than making it again for the next match)
        elif d is self.learned:
            self._index_learned(key, d.get(key), value)
        if self._undo is not None:
            self._undo.append((_DICT, d, key, d.get(key, _MISSING)))
        d[key] = value

    def _pop(self, d: dict[Any, Any], key: Any) -> None:
        if d is self.vifs or d is self.thresholds or d is self.table_thresholds:
            self._forget_direct()
        elif d is self.templates:
            if self._index is not None:
                self._index.discard(key)
        elif d is self.learned and key in d:
            self._index_learned(key, d[key], None)
        if key in d:
            if self._undo is not None:
                self._undo.append((_DICT, d, key, d[key]))
            del d[key]

    def _add(self, s: set[Any], key: Any) -> None:
        if key not in s:
            if self._undo is not None:
                self._undo.append((_SET, s, key, False))
            s.add(key)

    def _discard(self, s: set[Any], key: Any) -> None:
        if key in s:
            if self._undo is not None:
                self._undo.append((_SET, s, key, True))
            s.discard(key)

    def _count(self, vif: Vif, delta: int) -> None:
        if self._undo is not None:
            self._undo.append((_SLOT, vif, "refs", vif.refs))
        vif.refs += delta

    def _assign(self, target: Any, key: Any, value: Any) -> None:
        if isinstance(target, Vif):
            self._forget_direct()
        old = target[key] if isinstance(target, list) else getattr(target, key)
        if self._undo is not None:
            self._undo.append((_SLOT, target, key, old))
        if isinstance(target, list):
            target[key] = value
        else:
            setattr(target, key, value)

    # --- queries ---------------------------------------------------------------------------------

    def ports(self, iif: str, oifs: tuple[str, ...]) -> Ports:
        """The shared Ports value for these interfaces."""
        return self.share(Ports(iif, oifs))

    def share(self, ports: Ports) -> Ports:
        """The shared Ports value equal to `ports` (from now on `ports` itself if new)."""
        if ports.__class__ is Placed:
            return ports.ports
        return _intern(self._ports, ports)

    def installed_count(self) -> int:
        """len(installed): kept up to date (counted again only if it was lost)."""
        if self._installed_n < 0:
            self._installed_n = sum(1 for v in self.routes.values() if v.__class__ is Placed)
        return self._installed_n

    def _place(self, key: RouteKey, entry: Entry) -> None:
        """Record the entry written for a route (held in `routes`) within the transaction."""
        ports = self.routes[key]
        if ports.__class__ is Placed:
            ports = ports.ports
        elif self._installed_n >= 0:
            self._installed_n += 1
        self._set(self.routes, key, self._share_placed(ports, entry))

    def _unplace(self, key: RouteKey) -> None:
        """Forget the entry of an installed route (it stays desired, now not installed)."""
        value = self.routes.get(key)
        if value.__class__ is Placed:
            if self._installed_n > 0:
                self._installed_n -= 1
            self._set(self.routes, key, value.ports)

    def _set_route(self, key: RouteKey, ports: Ports) -> None:
        """Set a route's interfaces, leaving whether it is installed (and its entry) alone."""
        ports = self.share(ports)
        old = self.routes.get(key)
        if old.__class__ is Placed:
            ports = self._share_placed(ports, old.entry)
        self._set(self.routes, key, ports)

    def _share_placed(self, ports: Ports, entry: Entry) -> Placed:
        shared = self._placed.get((ports, entry))
        if shared is None or shared.ports is not ports or shared.entry is not entry:
            if len(self._placed) >= 65536:  # only ever a cache, like _intern's
                self._placed.clear()
            shared = self._placed[(ports, entry)] = _placed(ports, entry)
        return shared

    def route(self, key: RouteKey) -> Route:
        iif, oifs = self.routes[key]
        return Route(key[0], key[1], key[2], iif, oifs, key[3])

    def iter_routes(self) -> Iterator[Route]:
        for (family, source, group, table), (iif, oifs) in self.routes.items():
            yield Route(family, source, group, iif, oifs, table)

    def entry(self, key: RouteKey) -> AddMfc:
        """The kernel operation that writes an installed route's entry."""
        return _write(key, self.installed[key])

    def status(self, key: PendingKey) -> RouteStatus:
        """A route's or a template's state (a template is installed while it holds its VIFs)."""
        if self.short and key in self.short:
            return self._short_status(key, self.short[key])
        return self._status(key)

    def _status(self, key: PendingKey) -> RouteStatus:
        if len(key) == 5:
            return self._template_status(key)
        ports = self.routes[key]
        links = self.links
        if ports.__class__ is Placed and ports[0] in links:  # (installed, as usual: in short)
            for name in ports[1]:
                if name not in links:
                    break
            else:
                return _INSTALLED
        missing = tuple(n for n in dict.fromkeys(ports.interfaces) if n not in links)
        if key in self.installed and ports[0] in links:
            if missing:
                return RouteStatus("degraded", missing, "waiting for " + ", ".join(missing))
            return RouteStatus("installed", (), "")
        # (its iif gone while installed: pending, as a start without it makes it; the entry
        # the kernel keeps forwards nothing, and the iif's VIF number stays reserved)
        return _not_installed(
            ports, missing, self.refused.get(key), partial(self._no_room, key[0], key[3], ports)
        )

    def _short_status(self, key: PendingKey, short: tuple[str, ...]) -> RouteStatus:
        """The state of a route or template with wildcard oifs that do not all reach the
        interfaces they match (see `short`): degraded, naming them, where it would be
        installed (or degraded for a missing oif)."""
        status = self._status(key)
        if status.state == "pending":
            return status
        unmatched = [n for n in short if n.endswith(("*", "+"))]
        without = [n for n in short if not n.endswith(("*", "+"))]
        why = [status.reason] if status.reason else []
        if without:
            why.append("no free VIF for " + ", ".join(without))
        if unmatched:
            why.append("no interface matches " + ", ".join(unmatched) + " yet")
        return RouteStatus("degraded", status.missing + tuple(unmatched), "; ".join(why))

    def state_with(self, ports: Ports) -> str:
        """The state a route of these interfaces has with the interfaces there are now:
        that of one a later change of the same transaction replaced or deleted (no
        interface comes or goes within one). Not seen: a VIF table full at the time."""
        links = self.links
        if ports[0] not in links:
            return "pending"
        for name in ports[1]:
            if name not in links:
                return "degraded"
        return "installed"

    def vif_of(self, family: int, interface: str, table: int | None = None) -> Vif | None:
        table = DEFAULT_TABLE[family] if table is None else table
        return self.vifs.get((family, table, interface))

    def iter_vifs(self) -> Iterator[Vif]:
        """Every VIF, by family, table and index."""
        for (family, table), slots in sorted(self.slots.items()):
            for name in slots:
                if name is not None:
                    yield self.vifs[(family, table, name)]

    def vifs_named(self, interface: str) -> list[Vif]:
        """The VIFs of an interface, in every family and table (32 per table at most)."""
        return [vif for vif in self.iter_vifs() if vif.interface == interface]

    def has_free_vif(self, family: int, table: int) -> bool:
        """Whether the table has a free VIF index (a table with no VIF yet has 32)."""
        slots = self.slots.get((family, table))
        return slots is None or None in slots

    def tables(self) -> set[TableKey]:
        """The tables that hold VIFs (and so may hold entries): the kernel tables in use."""
        return set(self.slots)

    def threshold(self, interface: str, table: int | None = None) -> int:
        """An interface's threshold: in `table` (its own setting there, if it has one), or
        its every-table setting (None)."""
        if table is not None and self.table_thresholds:
            ttl = self.table_thresholds.get((interface, table))
            if ttl is not None:
                return ttl
        return self.thresholds.get(interface, DEFAULT_THRESHOLD)

    def origin(self, key: RouteKey) -> str:
        """Where a route comes from: "api", "config" or "learned" (model.ORIGINS)."""
        return self.origins.get(key, "api")

    def set_origin(self, key: RouteKey, origin: str) -> None:
        """Record a route's origin within the transaction ("api": no entry)."""
        self._record_origin(self.origins, key, origin)

    def set_origins(self, keys: list[RouteKey], origin: str) -> None:
        """set_origin of many routes to one origin other than "api", with one undo-log entry
        (the 100,000 routes of a start with config routes: one each took a tenth of it)."""
        origins = self.origins
        if origins:
            keys = [k for k in keys if origins.get(k) != origin]  # (as _record_origin)
        if not keys:
            return
        if self._undo is not None:
            old = {k: origins[k] for k in keys if k in origins} if origins else {}
            self._undo.append((_KEYS, origins, keys, old))
        origins.update(dict.fromkeys(keys, origin))

    def _record_origin(self, origins: dict[Any, str], key: Any, origin: str) -> None:
        if origin == "api":
            self._pop(origins, key)
        elif origins.get(key) != origin:
            self._set(origins, key, origin)

    def template_origin(self, key: TemplateKey) -> str:
        """Where a template comes from: "api" or "config"."""
        return self.template_origins.get(key, "api")

    def set_template_origin(self, key: TemplateKey, origin: str) -> None:
        """Record a template's origin within the transaction ("api": no entry)."""
        self._record_origin(self.template_origins, key, origin)

    # --- route changes ---------------------------------------------------------------------------

    def add_route(self, route: Route) -> list[Step]:
        """Add or replace a route; raises VifLimit (leaving the transaction to roll back)."""
        return self.add(route.key, self.ports(route.iif, route.oifs))

    def add(self, key: RouteKey, ports: Ports) -> list[Step]:
        """`add_route` for a route given as its key and (shared) interfaces. A route learned
        from a template (or of another origin) becomes the API's: an exact route wins."""
        if self.origins and key in self.origins:
            self._pop(self.origins, key)
            self._pop(self.learned, key)
        return self._put(key, ports)

    def _put(self, key: RouteKey, ports: Ports) -> list[Step]:
        old = self.routes.get(key)
        if old is None:
            steps: list[Step] = []
            if self.add_direct(key, ports, steps):
                return steps
        elif old == ports:
            # (the same route again: one the kernel refused is tried again)
            return self.try_install(key) if key in self.refused else []
        else:
            self._forget_pending(key, old)
        links = self.links
        if ports.iif not in links:
            # A route that could not get its VIFs now is refused, as with its interfaces
            # there (a restore's or an interface event's may still end up blocked).
            held = old.interfaces if old is not None and key in self.installed else ()
            self._check_room(key[0], key[3], ports, frozenset(held))
            self._set_route(key, ports)
            steps = self._uninstall(key, old) if old is not None else []
            self._wait(key, [n for n in ports.interfaces if n not in links])
            return steps
        self._set_route(key, ports)
        # (a missing oif's VIF is reserved: a route that cannot have them all is refused,
        # as one whose oifs all exist is; only a restore or an interface event blocks)
        return self._install(key, ports, old)

    def add_direct(self, key: RouteKey, ports: Ports, steps: list[Step]) -> bool:
        """`add` of a route not yet known whose interfaces all have VIFs (its iif's up; an
        oif's may be reserved for a missing interface: the route is degraded), done
        directly, its step appended to `steps`; False (and nothing changed) for any other
        route: use `add`.

        Same result as `_set(routes)` + `_install(key, ports, None)` (the model tests run
        both), at a fraction of the cost, with one undo-log entry instead of four: bulk
        loads and restores spend most of their model time here.
        """
        if self._log is None or key in self.routes:
            return False
        family = key[0]
        table = key[3]
        known = self._direct_for(family, table, ports)
        if known is None:
            return False
        used, entry, placed = known
        for vif in used:
            vif.refs += 1
        self.routes[key] = placed
        if self._installed_n >= 0:
            self._installed_n += 1
        if self._undo is not None:
            self._undo.append(key)  # (see _ROUTE_KEY_FAMILIES)
        # tuple.__new__ directly: half the cost of the NamedTuples' own constructors.
        write = _new(AddMfc, (family, key[1], key[2], entry.parent, entry.oifs, table))
        steps.append(_new(Step, (write, _new(DelMfc, key), "add_mfc")))
        return True

    def add_run(self, keys: Sequence[RouteKey], ports: Ports, steps: list[Step]) -> bool:
        """`add_direct` of many routes on the same `ports` at once: all of one family and
        table, distinct, not yet known, their interfaces all with VIFs. Appends ONE step
        (an AddMfcRun, undone by a DelMfcRun over the same keys) and updates routes and VIF
        counts in bulk, with one undo-log entry; False (and nothing changed) otherwise: use
        add_direct or add per route. `keys` is kept in the step: do not change it after.

        The same model and the same kernel writes as add_direct of each key in order (the
        model tests compare both); a restore or a batch of 1,000,000 routes on a few
        combinations costs a few C-speed passes over the keys instead of a call each.
        """
        return self.add_keyed_run(keys, ports, steps, None)

    def add_keyed_run(
        self,
        keys: Sequence[RouteKey],
        ports: Ports,
        steps: list[Step],
        keyed: dict[RouteKey, Ports] | None,
    ) -> bool:
        """add_run, given (a restore's whole table) a dict whose keys are those the model
        holds, if any (a few at most: the table's first route, which added the VIFs), then
        `keys`, in order: the model's dict is then built from it whole, reusing its stored
        hashes (0.5 s less at 1,000,000 routes than inserting the keys one by one), and
        without an undo log (a restore) taken as built rather than copied (a table's worth
        of memory less at the peak). Any other `keyed` is ignored."""
        if self._log is None or not keys:
            return False
        family, table = keys[0][0], keys[0][3]
        if set(map(_FAMILY, keys)) != {family} or set(map(_TABLE, keys)) != {table}:
            return False
        known = self._direct_for(family, table, ports)
        if known is None:
            return False
        used, entry, placed = known
        routes = self.routes
        if keyed is not None and _fills(routes, keyed, keys):
            # (distinct, being a dict's, and not yet known: the model holds the ones before)
            new: dict[RouteKey, Ports] = dict.fromkeys(keyed, placed)
            new.update(routes)  # (the values of the routes held, in their places)
            if self._undo is None:
                # No undo log names the old dict (a restore's transaction): the model takes
                # the new one, sparing a copy of the table and the freeing of this one.
                self.routes = new
            else:
                routes.clear()
                routes.update(new)  # (into an empty dict: a copy, no insert per key)
        elif not _insert_new(routes, keys, placed):
            return False
        n = len(keys)
        for vif in used:
            vif.refs += n
        if self._installed_n >= 0:
            self._installed_n += n
        if self._undo is not None:
            self._undo.append((_RUN, None, keys, used))
        write = AddMfcRun(family, table, entry.parent, entry.oifs, keys)
        steps.append(Step(write, DelMfcRun(family, table, keys), "add_mfc"))
        return True

    def _undo_run(self, keys: Sequence[RouteKey], used: tuple[Vif, ...]) -> None:
        """Roll back `add_run`."""
        routes = self.routes
        for key in keys:
            del routes[key]
        if self._installed_n >= 0:
            self._installed_n -= len(keys)
        for vif in used:
            vif.refs -= len(keys)

    def _direct_for(self, family: int, table: int, ports: Ports) -> _Direct | None:
        """The VIFs, entry and shared Ports of a route on `ports` (see _direct_entry), from
        the cache when it has them."""
        at = self.vifs.changes + self.thresholds.changes + self.table_thresholds.changes
        if at != self._direct_at:  # (both only ever count up)
            self._direct_at = at
            self._direct.clear()
        direct = self._direct.get((family, table))
        known = direct.get(ports) if direct is not None else None
        return self._direct_entry(family, table, ports) if known is None else known

    def _direct_entry(self, family: int, table: int, ports: Ports) -> _Direct | None:
        """The VIFs, the entry and the shared Ports of a route on `ports`, if all its VIFs
        exist and its iif's is up (an oif's may be reserved for a missing interface: the
        route is degraded, as _install makes it)."""
        vifs = self.vifs
        iif = vifs.get((family, table, ports.iif))
        if iif is None or iif.ifindex is None:
            return None
        used = [iif]
        for name in ports.oifs:
            vif = vifs.get((family, table, name))
            if vif is None:
                return None
            used.append(vif)
        threshold = self.threshold
        oifs = [(vif.vifi, threshold(vif.interface, table)) for vif in used[1:]]
        if len(oifs) > 1:
            oifs.sort()
        entry = self._share_entry(used[0].vifi, tuple(oifs))
        known = (tuple(used), entry, self._share_placed(self.share(ports), entry))
        direct = self._direct.setdefault((family, table), {})
        if len(direct) < 4096:
            direct[ports] = known
        return known

    def _undo_direct(self, key: RouteKey) -> None:
        """Roll back `add_direct`."""
        family, table = key[0], key[3]
        placed = self.routes.pop(key)
        if placed.__class__ is Placed and self._installed_n > 0:
            self._installed_n -= 1
        for name in placed.interfaces:
            self.vifs[(family, table, name)].refs -= 1

    def restore(self, key: RouteKey, ports: Ports) -> list[Step]:
        """Add a saved route at start-up: install it if its iif exists (degraded if an oif
        does not), else leave it pending."""
        ports = self.share(ports)
        steps: list[Step] = []
        if self.add_direct(key, ports, steps):
            return steps
        self._set_route(key, ports)
        return self.try_install(key)

    def keep(self, key: RouteKey, ports: Ports) -> None:
        """Hold a route without installing it yet (try_install does that)."""
        self._set_route(key, ports)

    def keep_template(self, key: TemplateKey, ports: Ports) -> None:
        """Hold a template without taking its VIFs yet (try_install does that)."""
        self._set(self.templates, key, self.share(ports))

    def park(self, route: Route, reason: str) -> None:
        """Keep a route the kernel refused as pending; `mfcctl sync` tries it again."""
        key = route.key
        self._set_route(key, self.ports(route.iif, route.oifs))
        self._set(self.refused, key, reason)

    def park_template(self, key: TemplateKey, reason: str) -> None:
        """Keep a template the kernel refused (its VIFs) as pending; `mfcctl sync` tries it
        again, as it does routes."""
        if key in self.templates and key not in self.holding:
            self._set(self.refused, key, reason)

    def _refused_table(self, key: PendingKey) -> str | None:
        """Why the table of `key` is unavailable (see `unavailable`), None if it is not."""
        return self.unavailable.get((key[0], key[3])) if self.unavailable else None

    def del_route(self, key: RouteKey) -> list[Step]:
        source, group = key[1], key[2]
        ports = self.routes.get(key)
        if ports is None or key in self.learned:
            where = "" if key[3] == DEFAULT_TABLE[key[0]] else f" in table {key[3]}"
            learned = (
                "; that entry is learned from a template (`mfcctl flush` removes learned"
                " entries, `mfc del` of the template stops them)"
                if key in self.learned
                else ""
            )
            hint = "" if learned else self.elsewhere(key)
            raise NotFound(f"no route for source {source} group {group}{where}{learned}{hint}")
        self._forget_pending(key, ports)
        steps = self._uninstall(key, ports)  # (while `routes` holds its entry)
        self._pop(self.routes, key)
        return steps

    def set_threshold(self, interface: str, threshold: int, table: int | None = None) -> list[Step]:
        """Change the TTL threshold of an interface, in every table or in `table` only (see
        SetThreshold), and re-issue the IPv4 entries whose threshold that changes."""
        if table is not None:
            return self._set_table_threshold(interface, threshold, table)
        if not 1 <= threshold <= 255:
            raise InvalidArgument("threshold must be between 1 and 255", field="threshold")
        if self.threshold(interface) == threshold:
            return []
        if threshold == DEFAULT_THRESHOLD:
            self._pop(self.thresholds, interface)  # the default is no setting at all
        else:
            self._set(self.thresholds, interface, threshold)
        own = self.table_thresholds
        # (a table with its own setting keeps it: its entries do not change)
        return self._reissue_on(interface, lambda table: (interface, table) not in own)

    def _set_table_threshold(self, interface: str, threshold: int, table: int) -> list[Step]:
        if threshold != NO_SETTING and not 1 <= threshold <= 255:
            raise InvalidArgument("threshold must be between 1 and 255", field="threshold")
        key = (interface, table)
        if self.table_thresholds.get(key, NO_SETTING) == threshold:
            return []
        before = self.threshold(interface, table)
        if threshold == NO_SETTING:
            self._pop(self.table_thresholds, key)
        else:
            self._set(self.table_thresholds, key, threshold)
        if self.threshold(interface, table) == before:
            return []  # (the same value as the every-table one: no entry changes)
        return self._reissue_on(interface, lambda t: t == table)

    def _reissue_on(self, interface: str, tables: Callable[[int], bool]) -> list[Step]:
        """Re-issue the IPv4 entries using the interface's VIF in the tables chosen."""
        used = [
            (4, vif.table, interface)
            for vif in self.vifs_named(interface)
            if vif.family == 4 and tables(vif.table)
        ]
        if not used:
            return []
        return self._reissue(self.users(used))

    # --- templates and learned entries (see mfcd.templates) -------------------------------------

    def persistent_routes(self) -> dict[RouteKey, Ports]:
        """The routes the state file keeps: those of origin "api" (the configuration file's
        come from it at start, learned entries from the traffic)."""
        if not self.origins:
            return self.routes
        origins = self.origins
        return {key: ports for key, ports in self.routes.items() if key not in origins}

    def template_index(self) -> tpl.Index:
        if self._index is None:
            self._index = tpl.Index(self.templates)
        return self._index

    def add_template(self, key: TemplateKey, ports: Ports) -> list[Step]:
        """Add or replace a template: hold VIFs on its interfaces (pending while one is
        missing), then point the learned entries it now matches best at it. Raises VifLimit
        like add (leaving the transaction to roll back)."""
        assert ports.iif == key[4], "a template's iif is part of its key (see _learned_at)"
        ports = self.share(ports)
        old = self.templates.get(key)
        if old == ports:
            # (the same template again: one the kernel refused is tried again)
            return self._try_hold(key) if key in self.refused else []
        if old is not None:
            self._forget_pending(key, old)
        held = key in self.holding
        if held:
            self._pop(self.holding, key)
        self._set(self.templates, key, ports)
        steps = self._hold(key, ports, block=False)
        steps += self._rematch(key)
        if held and old is not None:
            steps += self._release_all(key[0], key[3], old)
        return steps

    def del_template(self, key: TemplateKey) -> list[Step]:
        """Delete a template: its learned entries go to the next best template of their
        interface, or out of the kernel; then its VIFs are released."""
        ports = self.templates.get(key)
        if ports is None:
            raise NotFound(f"no template {template_text(key)}{self.template_elsewhere(key)}")
        self._forget_pending(key, ports)
        self._pop(self.templates, key)
        self._pop(self.template_origins, key)
        held = key in self.holding
        if held:
            self._pop(self.holding, key)
        # Only the entries learned from it can change: for the others it was not the best.
        steps = self._rematch(key, deleted=True)
        if held:
            steps += self._release_all(key[0], key[3], ports)
        return steps

    def elsewhere(self, key: RouteKey) -> str:
        """For a message that no route `key` exists: where a route of its source and group
        is (on a router of several tables, the usual reason is a missing or extra --table),
        e.g. "; there is one in table 100 (--table 100)", or ""."""
        family, source, group, table = key
        routes, learned = self.routes, self.learned
        found = []
        for other in sorted({t for f, t in self.slots if f == family} - {table}):
            other_key = (family, source, group, other)
            if other_key in routes and other_key not in learned:
                found.append(other)
        return tables_hint(family, "one", found)

    def template_elsewhere(self, key: TemplateKey) -> str:
        """For a message that no template `key` exists: the iif the template of its prefixes
        in its table has ("; there is one with iif r1 (--iif r1)"), else the other tables
        that hold one (as elsewhere says), or ""."""
        family, source, group, table, iif = key
        iifs = [k[4] for k in self.templates_named(family, source, group, table)]
        if len(iifs) > 1:
            return f"; there are some with iif {', '.join(iifs)} (say which with --iif)"
        if iifs:
            return f"; there is one with iif {iifs[0]} (--iif {iifs[0]})"
        found = [k for k in self.templates if k[:3] == key[:3] and k[3] != table]
        same = [k[3] for k in found if k[4] == iif]
        if same:
            return tables_hint(family, "one", same)
        others = sorted({k[4] for k in found})
        with_iif = f" with iif {', '.join(others)}" if others else ""
        return tables_hint(family, f"one{with_iif}", (k[3] for k in found))

    def templates_named(
        self, family: int, source: str, group: str, table: int
    ) -> list[TemplateKey]:
        """The templates with these prefixes, of any iif."""
        return sorted(k for k in self.templates if k[:4] == (family, source, group, table))

    def learn(
        self, family: int, table: int, source: str, group: str, vif: int
    ) -> tuple[TemplateKey | None, list[Step]]:
        """A packet from `source` to `group` arrived on VIF `vif` with no entry (a NOCACHE
        upcall): learn its entry from the best template, if one matches and holds its VIFs.
        Returns the template (None: none matches) and the steps (none: nothing learned)."""
        best = self.match(family, table, source, group, vif)
        key = (family, source, group, table)
        if best is None or key in self.routes or best not in self.holding:
            return best, []  # no template; an exact route (or learned already); pending
        steps = self._put(key, self.templates[best])
        self._set(self.origins, key, "learned")
        self._set(self.learned, key, best)
        return best, steps

    def match(
        self, family: int, table: int, source: str, group: str, vif: int
    ) -> TemplateKey | None:
        """The best template for a packet that arrived on VIF `vif` (no change)."""
        name = self._vif_name(family, table, vif)
        if name is None:
            return None
        return self.template_index().match(family, table, name, source, group)

    def would_learn(self, family: int, table: int, source: str, group: str, vif: int) -> bool:
        """Whether `learn` would install an entry for this packet (no change)."""
        best = self.match(family, table, source, group, vif)
        return (
            best is not None
            and best in self.holding
            and (family, source, group, table) not in self.routes
        )

    def repoint(self, family: int, table: int, source: str, group: str, vif: int) -> list[Step]:
        """A learned entry's packets arrive on another VIF (WRONGVIF): if a template covers
        that interface, the entry is rewritten from it (its iif becomes that interface)."""
        key = (family, source, group, table)
        name = self._vif_name(family, table, vif)
        if name is None or key not in self.learned:
            return []
        best = self.template_index().match(family, table, name, source, group)
        if best is None or best not in self.holding or best == self.learned[key]:
            return []
        return self._point(key, best)

    def unlearn(self, key: RouteKey) -> list[Step]:
        """Remove a learned entry (idle, flushed, or its template gone)."""
        ports = self.routes.get(key)
        if ports is None or key not in self.learned:
            return []
        self._forget_pending(key, ports)
        steps = self._uninstall(key, ports)  # (while `routes` holds its entry)
        self.unlearned[key] = (self.learned[key], ports.iif)  # (a rollback leaves it learned)
        self._pop(self.routes, key)
        self._pop(self.origins, key)
        self._pop(self.learned, key)
        return steps

    def take_unlearned(self) -> dict[RouteKey, tuple[TemplateKey, str]]:
        """The learned entries removed since the last call (see `unlearned`), forgotten here."""
        unlearned, self.unlearned = self.unlearned, {}
        return unlearned

    def _vif_name(self, family: int, table: int, vif: int) -> str | None:
        slots = self.slots.get((family, table))
        if slots is None or not 0 <= vif < MAXVIFS:
            return None
        return slots[vif]

    def _rematch(self, key: TemplateKey, deleted: bool = False) -> list[Step]:
        """Point the learned entries a change of template `key` can touch at their best
        template now, or remove them: those learned from it when it is `deleted`, else those
        of its interface it contains (for any other it cannot be the best match, before or
        after). The same as matching every learned entry of its interface again (the model
        tests compare both), without a scan of them; in sorted order, as plans show them."""
        keys = self.learned_from(key) if deleted else self._touched(key)
        return self.rematch_entries(keys)

    def _touched(self, key: TemplateKey) -> list[RouteKey]:
        """The learned entries of a template's family, table and iif that it contains, sorted."""
        family, source, group, table, iif = key
        groups = self._learned_at.get((family, table, iif))
        if not groups:
            return []
        found: list[RouteKey] = []
        for entries in tpl.covered(tpl.prefix_of(group, family), groups):
            if isinstance(entries, set):
                found += entries
            else:
                found.append(entries)
        prefix = tpl.prefix_of(source, family)
        if prefix.length:
            number = tpl.address_number
            found = [k for k in found if tpl.contains(prefix, number(family, k[1]))]
        return sorted(found)

    def learned_from(self, template: TemplateKey) -> list[RouteKey]:
        """The entries learned from a template, sorted (an index lookup, not a scan)."""
        return sorted(self._learned_of.get(template, ()))

    def learned_count(self, template: TemplateKey) -> int:
        """How many entries are learned from a template."""
        return len(self._learned_of.get(template, ()))

    def _index_learned(
        self, key: RouteKey, old: TemplateKey | None, new: TemplateKey | None
    ) -> None:
        """Move a learned entry in the indexes of `learned` (see __init__) as its template
        goes from `old` to `new` (None: not learned). Called before `learned` changes, and
        by a rollback as it puts an old value back, so they always agree with it."""
        if old == new:
            return
        group = key[2]
        if old is not None:
            of = self._learned_of[old]
            of.discard(key)
            if not of:
                del self._learned_of[old]
            where = (old[0], old[3], old[4])
            groups = self._learned_at[where]
            entries = groups[group]
            if not isinstance(entries, set):  # (the key itself: the group's only entry)
                del groups[group]
                if not groups:
                    del self._learned_at[where]
            else:
                entries.discard(key)
                if len(entries) == 1:
                    groups[group] = next(iter(entries))
        if new is not None:  # (no setdefault: a set made for nothing costs each upcall)
            mine = self._learned_of.get(new)
            if mine is None:
                self._learned_of[new] = {key}
            else:
                mine.add(key)
            where = (new[0], new[3], new[4])
            by_group = self._learned_at.get(where)
            if by_group is None:
                self._learned_at[where] = {group: key}
            else:
                same = by_group.get(group)
                if same is None:
                    by_group[group] = key
                elif isinstance(same, set):
                    same.add(key)
                else:
                    by_group[group] = {same, key}

    def rematch_entries(
        self, keys: Iterable[RouteKey], index: tpl.Index | None = None
    ) -> list[Step]:
        """Point each of these learned entries at its best template in `index` (default:
        every template), or remove it. With an index that leaves out a template about to be
        deleted, its entries go a slice at a time before it does (learning.Learner.retiring)."""
        routes, learned, holding = self.routes, self.learned, self.holding
        steps: list[Step] = []
        for key in keys:
            if key not in learned:
                continue
            if index is None:  # (only now: a rollback drops it)
                index = self.template_index()
            family, source, group, table = key
            best = index.match(family, table, routes[key].iif, source, group)
            if best is None or best not in holding:
                steps += self.unlearn(key)
            else:
                steps += self._point(key, best)
        return steps

    def _point(self, key: RouteKey, template: TemplateKey) -> list[Step]:
        steps = self._put(key, self.templates[template])
        if self.learned[key] != template:
            self._set(self.learned, key, template)
        return steps

    def _try_hold(self, key: TemplateKey) -> list[Step]:
        ports = self.templates.get(key)
        if ports is None or key in self.holding:
            return []
        self._forget_pending(key, ports)
        steps = self._hold(key, ports, block=True)
        # Traffic that arrived meanwhile had no VIF to arrive on: nothing to rematch.
        return steps

    def _hold(self, key: TemplateKey, ports: Ports, block: bool) -> list[Step]:
        """Take a VIF on each interface of a template (pending while its iif is missing; a
        missing oif's is reserved, as for a route); with `block`, a full VIF table leaves
        it pending (blocked) instead of raising VifLimit."""
        links = self.links
        family, table = key[0], key[3]
        if ports.iif not in links:
            if not block:  # (refused if it could not get its VIFs now, as with its iif there)
                self._check_room(family, table, ports)
            self._wait(key, [n for n in ports.interfaces if n not in links])
            return []
        refused = self._refused_table(key)
        if refused is not None:
            self._set(self.refused, key, refused)
            return []
        savepoint = self._savepoint()
        steps: list[Step] = []
        try:
            self._check_room(family, table, ports)
            for name in ports.interfaces:
                vif = self.vifs.get((family, table, name))
                if vif is None:
                    steps += self._new_vif(family, table, name)
                else:
                    self._count(vif, 1)
        except VifLimit:
            assert self._log is not None
            if not block or not self._log.recording:
                raise
            self._log.rollback(savepoint)
            self._forget_direct()
            self._set(self.blocked, key, None)
            return []
        self._set(self.holding, key, None)
        return steps

    def _release_all(self, family: int, table: int, ports: Ports) -> list[Step]:
        steps: list[Step] = []
        for name in ports.interfaces:
            steps += self._release(family, table, name)
        return steps

    def _template_status(self, key: TemplateKey) -> RouteStatus:
        ports = self.templates[key]
        missing = tuple(n for n in dict.fromkeys(ports.interfaces) if n not in self.links)
        if key in self.holding and ports.iif in self.links:  # (its iif gone: pending, as above)
            if missing:
                return RouteStatus("degraded", missing, "waiting for " + ", ".join(missing))
            return RouteStatus("installed", (), "")
        return _not_installed(
            ports, missing, self.refused.get(key), partial(self._no_room, key[0], key[3], ports)
        )

    # --- interface events ------------------------------------------------------------------------

    def link_up(self, interface: str, ifindex: int) -> list[Step]:
        """An interface exists (new or re-created): re-add lost VIFs, install pending routes.

        Unlike client requests, nothing here fails: a route that cannot get a VIF
        stays pending (blocked) until a VIF index is freed.
        """
        if not self.note_link(interface, ifindex):
            return []
        steps: list[Step] = []
        for vif in self.vifs_named(interface):
            steps += self.revive_vif(vif.family, vif.table, interface)
        for key in self.waiting_for(interface):
            steps += self.try_install(key)
        return steps

    def note_link(self, interface: str, ifindex: int) -> bool:
        """Record that an interface exists; False if that was known already."""
        if self.links.get(interface) == ifindex:
            return False
        self._set(self.links, interface, ifindex)
        return True

    def revive_vif(
        self, family: int, table: int, interface: str, reissue: bool = True
    ) -> list[Step]:
        """Give a (re-)created interface its reserved VIF index back and re-issue its entries
        (without `reissue`, the caller writes them again itself: their Entry is unchanged,
        the VIF keeps its index)."""
        vif = self.vifs.get((family, table, interface))
        ifindex = self.links.get(interface)
        if vif is None or ifindex is None or vif.ifindex == ifindex:
            return []
        # The kernel dropped the VIF with the old device; add the same index for the new one
        # and re-issue its entries (an oif missing at write time is never restored).
        self._assign(vif, "ifindex", ifindex)
        threshold = self.threshold(interface, table)
        add = AddVif(family, vif.vifi, interface, ifindex, threshold, table)
        steps = [Step(add, DelVif(family, vif.vifi, interface, table), "readd_vif")]
        if not reissue:
            return steps
        return steps + self._reissue(self.users([(family, table, interface)]))

    def tracked_links(self) -> dict[str, int | None]:
        """The interfaces the routes depend on (those with VIFs, and those pending routes wait
        for), with their ifindex or None while absent: only a change of these can leave the
        kernel's tables behind the model; another interface coming or going cannot."""
        links = self.links
        names = {name for _, _, name in self.vifs} | self.waiting.keys()
        return {name: links.get(name) for name in names}

    def waiting_for(self, interface: str) -> list[PendingKey]:
        return sorted(self.waiting.get(interface, ()))

    def link_down(self, interface: str, kernel_dropped_vif: bool = True) -> list[Step]:
        """An interface is gone (deleted: the kernel already removed its VIF) or renamed away."""
        if interface not in self.links:
            return []
        self._pop(self.links, interface)
        steps: list[Step] = []
        for vif in self.vifs_named(interface):
            if vif.ifindex is None:
                continue
            if not kernel_dropped_vif:
                # Renamed: the device (and its VIF) still exist under another name; let go of it.
                family, table = vif.family, vif.table
                threshold = self.threshold(interface, table)
                undo = AddVif(family, vif.vifi, interface, vif.ifindex, threshold, table)
                steps.append(Step(DelVif(family, vif.vifi, interface, table), undo, "del_vif"))
            self._assign(vif, "ifindex", None)
        return steps

    def retry_blocked(self) -> list[Step]:
        """Install routes that were pending for want of a VIF index, now that some may be free."""
        steps: list[Step] = []
        for key in list(self.blocked):
            steps += self.try_install(key)
        return steps

    def repair(
        self,
        kernel_vifs: Mapping[tuple[int, int, int], str | None],
        kernel_mfc: dict[RouteKey, KernelEntry],
        tables: AbstractSet[TableKey] | None = None,
        static: AbstractSet[RouteKey] = frozenset(),
    ) -> list[Step]:
        """Steps that make the kernel match the model again, from what the kernel holds now.

        `kernel_vifs` maps (family, table, vif index) of every VIF in the kernel to the name
        of its device (None where the kernel does not name it: see repair_vifs);
        `kernel_mfc` maps each route key in the kernel to (iif ifindex or None, {oif
        ifindex: ttl}); `static` are its keys whose entry is MFC_STATIC (another socket
        wrote it).  `tables` are the (family, table) that were read (None: every table);
        the rest are left alone.  Nothing in the model changes: it is the truth being
        restored.

        A static entry of an installed route is deleted and added again ("readd_mfc": a
        DelMfc step, then the AddMfc), however it differs: an in-place write keeps the
        flag, and a static entry outlives mfcd's socket (docs/kernel.md). The gap is two
        back-to-back system calls: a packet arriving in it waits in the kernel's unresolved
        queue, which the add resolves and forwards. Other differences are written in place
        ("reissue_mfc", counters kept); entries that match cost nothing.
        """
        steps, readded = self.repair_vifs(kernel_vifs, tables)
        reissue = set(self.users(readded))
        for key, entry in self.installed.items():
            if tables is not None and (key[0], key[3]) not in tables:
                continue
            if key in static:
                steps.append(Step(_delete(key), None, "readd_mfc"))
                steps.append(Step(_write(key, entry), None, "readd_mfc"))
            elif key in reissue or kernel_mfc.get(key) != self.expected(key):
                steps.append(Step(_write(key, entry), None, "reissue_mfc"))
        for key in kernel_mfc.keys() - self.installed.keys():
            steps.append(Step(_delete(key), None, "del_mfc"))
        return steps

    def repair_vifs(
        self,
        kernel_vifs: Mapping[tuple[int, int, int], str | None],
        tables: AbstractSet[TableKey] | None = None,
    ) -> tuple[list[Step], set[VifKey]]:
        """The VIF part of `repair`: its steps, and the (family, table, interface) of each
        VIF it adds back, whose routes' entries must be written again (the kernel dropped
        their oifs on that VIF for good, or never had them).

        A VIF whose device the kernel does not name (an IPv6 table other than the default)
        is taken for mfcd's own where mfcd has one at its index, else removed (as "?")."""
        steps: list[Step] = []
        readded: set[VifKey] = set()
        seen = {(family, table) for family, table, _ in kernel_vifs} | self.slots.keys()
        for family, table in sorted(seen):
            if tables is not None and (family, table) not in tables:
                continue
            slots = self.slots.get((family, table), [None] * MAXVIFS)
            for vifi, name in enumerate(slots):
                vif = self.vifs[(family, table, name)] if name is not None else None
                present = (family, table, vifi) in kernel_vifs
                device = kernel_vifs.get((family, table, vifi))
                if present and (vif is None or vif.ifindex is None or device not in (None, name)):
                    # Not ours, or on another device (one renamed behind our back): remove it.
                    gone = DelVif(family, vifi, "?" if device is None else device, table)
                    steps.append(Step(gone, None, "del_vif"))
                    present = False
                if not present and vif is not None and vif.ifindex is not None:
                    threshold = self.threshold(vif.interface, table)
                    add = AddVif(family, vifi, vif.interface, vif.ifindex, threshold, table)
                    steps.append(Step(add, None, "readd_vif"))
                    readded.add((family, table, vif.interface))
        return steps, readded

    def users(self, interfaces: Iterable[VifKey]) -> list[RouteKey]:
        """Installed routes using any of these (family, table, interface) VIFs, in model order.

        One pass over the routes that decides once per distinct Ports value (100,000s of
        routes share a few): 0.3 s per million routes on a busy machine, so an event on one
        interface costs a scan, not a dump of the kernel's table.
        """
        wanted: dict[TableKey, set[str]] = {}
        for family, table, name in interfaces:
            vif = self.vifs.get((family, table, name))
            if vif is not None and vif.refs:  # else no installed route uses it: no scan
                wanted.setdefault((family, table), set()).add(name)
        if not wanted:
            return []
        installed = self.installed
        found: list[RouteKey] = []
        for (family, table), names in wanted.items():
            verdicts: dict[int, bool] = {}  # id(Ports) -> uses one of `names`
            for key, ports in self.routes.items():
                if key[0] != family or key[3] != table:
                    continue
                hit = verdicts.get(id(ports))
                if hit is None:
                    hit = verdicts[id(ports)] = not names.isdisjoint(ports.interfaces)
                if hit and key in installed:
                    found.append(key)
        return found

    def expected(self, key: RouteKey) -> KernelEntry:
        """How the kernel reports an installed route's entry (ifindexes, not VIF numbers)."""
        family, table = key[0], key[3]
        iif, route_oifs = self.routes[key]
        parent = self.vifs[(family, table, iif)].ifindex  # None: the kernel reports no iif either
        oifs = {}
        for name in route_oifs:
            ifindex = self.vifs[(family, table, name)].ifindex
            if ifindex is not None:  # the kernel hides oifs whose VIF is gone
                oifs[ifindex] = self.threshold(name, table) if family == 4 else 1
        return parent, oifs

    # --- internals -------------------------------------------------------------------------------

    def _share_entry(self, parent: int, oifs: Oifs) -> Entry:
        return _intern(self._entries, Entry(parent, oifs))

    def try_install(self, key: PendingKey) -> list[Step]:
        """Install a pending route (or template) if its interfaces exist and VIF indexes are
        free."""
        if len(key) == 5:
            return self._try_hold(key)
        ports = self.routes.get(key)
        if ports is None or key in self.installed:
            return []
        self._forget_pending(key, ports)
        links = self.links
        if ports.iif not in links:
            self._wait(key, [n for n in ports.interfaces if n not in links])
            return []
        return self._install_or_block(key, ports, None)

    def _install_or_block(self, key: RouteKey, ports: Ports, old: Ports | None) -> list[Step]:
        """_install, or, if the VIF table is full, leave the route pending (blocked) with
        what an installed `old` version used released."""
        savepoint = self._savepoint()
        try:
            return self._install(key, ports, old)
        except VifLimit:
            # Undo the VIFs this route had already taken, so other routes can still use them.
            assert self._log is not None
            if not self._log.recording:
                raise  # nothing to undo with: the caller starts over, recording
            self._log.rollback(savepoint)
            self._forget_direct()
            steps = self._uninstall(key, old)
            self._set(self.blocked, key, None)
            return steps

    def _wait(self, key: PendingKey, missing: Iterable[str]) -> None:
        for name in missing:
            waiters = self.waiting.get(name)
            if waiters is None:
                waiters = set()
                self._set(self.waiting, name, waiters)
            self._add(waiters, key)

    def _forget_pending(self, key: PendingKey, ports: Ports) -> None:
        self._pop(self.blocked, key)
        self._pop(self.refused, key)
        for name in ports.interfaces:
            waiters = self.waiting.get(name)
            if waiters is not None and key in waiters:
                self._discard(waiters, key)
                if not waiters:
                    self._pop(self.waiting, name)

    def _install(self, key: RouteKey, ports: Ports, old: Ports | None) -> list[Step]:
        """Write a route to the kernel, allocating VIFs first; release what `old` alone used."""
        family, table = key[0], key[3]
        previous = self.installed.get(key)
        if previous is None:
            refused = self._refused_table(key)
            if refused is not None:
                self._set(self.refused, key, refused)
                return []
        # Interfaces the installed old version already holds a reference on, in its order:
        # those it alone used are released in that order (a set's would change with the
        # hash seed, and with it the plan shown and the order of the kernel's writes).
        released = old.interfaces if old is not None and previous is not None else ()
        held = frozenset(released)
        steps: list[Step] = []
        vifs = self.vifs
        self._check_room(family, table, ports, held)
        for name in ports.interfaces:
            if name in held:
                continue
            vif = vifs.get((family, table, name))
            if vif is None:
                steps += self._new_vif(family, table, name)
            else:
                self._count(vif, 1)
        entry = self._entry(family, table, ports)
        if previous is None:
            steps.append(Step(_write(key, entry), _delete(key), "add_mfc"))
        else:
            steps.append(Step(_write(key, entry), _write(key, previous), "replace_mfc"))
        self._place(key, entry)
        for name in released:
            if name != ports.iif and name not in ports.oifs:
                steps += self._release(family, table, name)
        return steps

    def _uninstall(self, key: RouteKey, ports: Ports | None) -> list[Step]:
        previous = self.installed.get(key)
        if previous is None or ports is None:
            return []
        family, table = key[0], key[3]
        steps = [Step(_delete(key), _write(key, previous), "del_mfc")]
        self._unplace(key)
        for name in ports.interfaces:
            steps += self._release(family, table, name)
        return steps

    def _check_room(
        self, family: int, table: int, ports: Ports, held: AbstractSet[str] = frozenset()
    ) -> None:
        """Raise VifLimit, before any VIF is taken, when the interfaces of `ports` that have
        no VIF in the table yet (and are not in `held`) outnumber its free VIFs: the message
        then counts both, not just the first interface that found the table full."""
        vifs = self.vifs
        new = [n for n in ports.interfaces if n not in held and (family, table, n) not in vifs]
        if not new:
            return
        new = list(dict.fromkeys(new))
        slots = self.slots.get((family, table))
        free = MAXVIFS if slots is None else slots.count(None)
        if len(new) <= free:
            return
        fam = family_text(family)
        where = f" of table {table}"  # (always: the limit is per table)
        names = ", ".join(new[:4]) + (f" and {len(new) - 4} more" if len(new) > 4 else "")
        taken = self._taken_in_transaction(slots)
        earlier = f"; earlier routes of this batch or reload took {taken}" if taken else ""
        raise VifLimit(
            f"cannot add {len(new)} new {fam} VIF{'s' if len(new) > 1 else ''} ({names}):"
            f" only {free} of the {MAXVIFS} VIFs{where} are free{earlier}; delete routes on"
            " interfaces you no longer need first"
        )

    def _no_room(self, family: int, table: int, ports: Ports) -> str:
        """Why a route or template whose iif exists is pending (blocked): the VIFs it needs
        that the table has no free index for."""
        new = [n for n in dict.fromkeys(ports.interfaces) if (family, table, n) not in self.vifs]
        slots = self.slots.get((family, table))
        free = MAXVIFS if slots is None else slots.count(None)
        plural = "s" if len(new) != 1 else ""
        return (
            f"no free VIF: needs {len(new)} new {family_text(family)} VIF{plural} in table"
            f" {table}, {free} of the {MAXVIFS} are free"
        )

    def _taken_in_transaction(self, slots: list[str | None] | None) -> int:
        """How many of a table's VIF slots the open transaction took (0 when it records
        nothing): a batch or reload that fills the table says so. Only read on failure."""
        if slots is None or not self._undo:
            return 0
        taken = {
            vifi
            for kind, target, vifi, old in self._undo
            if kind == _SLOT and target is slots and old is None
        }
        return sum(1 for vifi in taken if slots[vifi] is not None)

    def prefer_slots(self, vifs: Mapping[tuple[int, int, int], str | None]) -> None:
        """Number new VIFs as the kernel's `vifs` ((family, table, vifi) -> device, None
        where unknown) are numbered, while they are free: a restart that took over the
        previous mfcd's tables then gives each interface the VIF it has there, and its
        entries stay valid (the kernel cannot move a VIF: another index means deleting
        and adding it, with its routes' entries written again). Empty: lowest free index."""
        self.preferred = {}
        self.avoided = {}
        for (family, table, vifi), device in vifs.items():
            if device is not None and 0 <= vifi < MAXVIFS:
                self.preferred.setdefault((family, table), {})[device] = vifi

    def avoid_slots(self, vifs: Iterable[tuple[int, int, int]]) -> None:
        """Give no new VIF an index of `vifs` ((family, table, vifi)) while another is free,
        whatever its device (prefer_slots({}) ends it). After the restore of a table taken
        over, these are its VIFs no route claimed: the kernel's entries still send to them
        until the full drift check removes both, and a new interface put at one of their
        indices would receive those entries' traffic meanwhile."""
        for family, table, vifi in vifs:
            self.avoided.setdefault((family, table), set()).add(vifi)

    def _free_slot(self, family: int, table: int, name: str, slots: list[str | None]) -> int:
        """The index a new VIF of `name` takes: its preferred one if free, else the lowest free
        one no other interface prefers, else the lowest free one (ValueError: none)."""
        prefer = self.preferred.get((family, table), {})
        avoided = self.avoided.get((family, table), set())
        if not prefer and not avoided:
            return slots.index(None)
        at = prefer.get(name)
        if at is not None and slots[at] is None:
            return at
        others = set(prefer.values()) | avoided
        for vifi, held in enumerate(slots):
            if held is None and vifi not in others:
                return vifi
        return slots.index(None)

    def _new_vif(self, family: int, table: int, name: str) -> list[Step]:
        slots = self.slots.get((family, table))
        if slots is None:
            slots = [None] * MAXVIFS
            self._set(self.slots, (family, table), slots)
        try:
            vifi = self._free_slot(family, table, name, slots)
        except ValueError:
            fam = family_text(family)
            where = f" of table {table}"
            raise VifLimit(
                f"cannot add {fam} VIF for {name}: all {MAXVIFS} VIFs{where} are in use;"
                " delete routes on other interfaces first"
            ) from None
        ifindex = self.links.get(name)
        vif = Vif(family, vifi, name, ifindex, table, refs=1)
        self._set(self.vifs, (family, table, name), vif)
        self._assign(slots, vifi, name)
        if ifindex is None:
            return []  # reserved for the interface: link_up adds it (revive_vif)
        add = AddVif(family, vifi, name, ifindex, self.threshold(name, table), table)
        return [Step(add, DelVif(family, vifi, name, table), "add_vif")]

    def _release(self, family: int, table: int, name: str) -> list[Step]:
        vif = self.vifs[(family, table, name)]
        if vif.refs > 1:
            self._count(vif, -1)
            return []
        self._pop(self.vifs, (family, table, name))
        slots = self.slots[(family, table)]
        self._assign(slots, vif.vifi, None)
        if slots.count(None) == MAXVIFS:
            self._pop(self.slots, (family, table))  # the table's last VIF: it is no longer used
        if vif.ifindex is None:
            return []  # the kernel removed it together with the interface
        undo = AddVif(family, vif.vifi, name, vif.ifindex, self.threshold(name, table), table)
        return [Step(DelVif(family, vif.vifi, name, table), undo, "del_vif")]

    def _entry(self, family: int, table: int, ports: Ports) -> Entry:
        vifs = self.vifs
        if self.table_thresholds:
            threshold = self.threshold
            oifs = [(vifs[(family, table, n)].vifi, threshold(n, table)) for n in ports.oifs]
        else:
            th = self.thresholds
            oifs = [
                (vifs[(family, table, n)].vifi, th.get(n, DEFAULT_THRESHOLD)) for n in ports.oifs
            ]
        if len(oifs) > 1:
            oifs.sort()
        return self._share_entry(vifs[(family, table, ports.iif)].vifi, tuple(oifs))

    def _reissue(self, keys: Iterable[RouteKey]) -> list[Step]:
        steps: list[Step] = []
        for key in sorted(keys):
            previous = self.installed[key]
            entry = self._entry(key[0], key[3], self.routes[key])
            self._place(key, entry)
            steps.append(Step(_write(key, entry), _write(key, previous), "reissue_mfc"))
        return steps


def _not_installed(
    ports: Ports, missing: tuple[str, ...], refused: str | None, no_room: Callable[[], str]
) -> RouteStatus:
    """The state of a route or template that is not installed: pending, and why
    (`no_room`: why it is blocked, asked only when that is the reason)."""
    if missing and ports.iif in missing:
        return RouteStatus("pending", missing, "waiting for " + ", ".join(missing))
    if refused is not None:
        return RouteStatus("pending", missing, refused)
    return RouteStatus("pending", missing, no_room())


def tables_hint(family: int, what: str, tables: Iterable[int]) -> str:
    """The end of a not_found message naming the other tables that hold what was asked for
    in one table, e.g. "; there is one in table 100 (--table 100)" ("" for none)."""
    found = sorted(set(tables))
    if not found:
        return ""
    if len(found) > 1:
        listed = ", ".join(map(str, found))
        return f"; there is {what} in tables {listed} (say which with --table)"
    if found[0] == DEFAULT_TABLE[family]:
        return f"; there is {what} in the default table {found[0]} (without --table)"
    return f"; there is {what} in table {found[0]} (--table {found[0]})"


def template_text(key: TemplateKey) -> str:
    """A template as messages name it: `source * group 239.1.1.1 iif r0 (in table N)`."""
    family, source, group, table, iif = key
    where = "" if table == DEFAULT_TABLE[family] else f" in table {table}"
    return f"source {source} group {group} iif {iif}{where}"


def _intern(table: dict[_T, _T], value: _T) -> _T:
    """The value equal to `value` kept in `table` (from now on `value` itself if new)."""
    shared = table.get(value)
    if shared is None:
        if len(table) >= 65536:  # only ever a cache: bound it under churn
            table.clear()
        shared = table[value] = value
    return shared


def _write(key: RouteKey, entry: Entry) -> AddMfc:
    return AddMfc(key[0], key[1], key[2], entry.parent, entry.oifs, key[3])


def _delete(key: RouteKey) -> DelMfc:
    return _new(DelMfc, key)
