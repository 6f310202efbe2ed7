"""Shared fakes for the unit tests: a kernel that forwards like Linux, an in-memory journal."""

from __future__ import annotations

import copy
import errno
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from mfcd import netlink
from mfcd.dataplane import (
    Counters,
    Events,
    Observation,
    ObservedEntry,
    ObservedVif,
    SgCounters,
    Upcall,
    VifCounters,
    undo,
)
from mfcd.errors import KernelError, StateError
from mfcd.model import (
    DEFAULT_TABLE,
    RUNS,
    AddMfc,
    AddMfcRun,
    AddRoute,
    AddVif,
    Change,
    DelMfc,
    DelMfcRun,
    DelVif,
    KernelOp,
    Ports,
    Route,
    RouteKey,
    Router,
    Step,
    run_ops,
)
from mfcd.state import Op, RunOfAdds, SnapshotNeeded, change_op
from mfcd.templates import TemplateKey

# What a packet from (S,G) does in the kernel: the device it must arrive on (None: no VIF there)
# and the (device, TTL threshold) pairs it leaves on.
Forwarding = tuple[int | None, frozenset[tuple[int, int]]]


@dataclass
class MfcEntry:
    parent: int
    ttls: dict[int, int]  # vif index -> TTL threshold, as the kernel kept them at write time


class FakeKernel:
    """The multicast tables of one netns, with Linux's rules: a dataplane.Dataplane.

    Like Linux (see docs/kernel.md): an MFC oif that is not a VIF when the entry is
    written is dropped for good; deleting a VIF (or its device) keeps the MFC entries, and the oif
    forwards again if the same VIF index is added back.  Adding a VIF index that is taken, deleting
    one that is free, adding a VIF for a device that does not exist or deleting an absent MFC entry
    fails as in Linux.  `fail_at=n` makes the n-th operation applied fail once; `refuse`
    makes every operation equal to one of its members fail (a run's routes count one each).
    Upcalls put in `upcalls` are returned by the next events().  Every table exists, as
    the real Kernel opens one when an operation first names it, but those in `owned`:
    another multicast router owns them, and every operation naming one is refused as the
    kernel refuses MRT_INIT then (EADDRINUSE, KernelError.table set), and owned_tables
    lists it until an operation naming it gets in.
    """

    def __init__(self, devices: set[int] | None = None, fail_at: int | None = None) -> None:
        self.vifs: dict[tuple[int, int, int], int] = {}  # (family, table, vifi) -> ifindex
        self.mfcs: dict[RouteKey, MfcEntry] = {}
        self.devices = devices  # ifindexes that exist; None: any
        self.fail_at = fail_at
        self.applied: list[KernelOp] = []
        self.calls = 0
        self.refuse: set[KernelOp] = set()
        self.names: dict[int, str] = {}  # ifindex -> device name, for observe()
        self.observed: list[tuple[int, int, bool]] = []  # observe() calls
        self.upcalls: list[Upcall] = []
        self.runs: list[int] = []  # the routes of each run applied (runs are applied whole)
        self.owned: set[tuple[int, int]] = set()  # (family, table) another router owns
        # What owned_tables says: the tables an operation found owned, until one gets in.
        self.found_owned: dict[tuple[int, int], KernelError] = {}
        # Entries another socket wrote (MFC_STATIC): as in Linux, mfcd's own rewrite in
        # place keeps the flag; only a delete clears it (docs/kernel.md, E).
        self.static: set[RouteKey] = set()

    def apply(self, ops: Sequence[KernelOp]) -> None:
        """A run (AddMfcRun, DelMfcRun) is one operation per route, as in Linux: `fail_at`
        and `refuse` can stop it at any route, and `applied` lists its routes' operations."""
        for done, op in enumerate(ops):
            try:
                if op.__class__ in RUNS:
                    self._apply_run(op)
                    self.runs.append(len(op.keys))
                else:
                    self._apply(op)
            except KernelError as e:
                e.applied = done
                raise

    def _apply_run(self, run: AddMfcRun | DelMfcRun) -> None:
        for partial, op in enumerate(run_ops(run)):
            try:
                self._apply(op)
            except KernelError as e:
                e.partial = partial
                raise

    def _apply(self, op: KernelOp) -> None:
        self.calls += 1
        if self.calls == self.fail_at or op in self.refuse:
            raise KernelError("injected failure", type(op).__name__, errno.ENOBUFS)
        where = (op.family, op.table)
        if where in self.owned:
            fam = "IPv4" if op.family == 4 else "IPv6"
            e = KernelError(
                f"another multicast router already owns {fam} multicast routing table"
                f" {op.table} (smcroute, ...): stop it first or use another table",
                "MRT_INIT",
                errno.EADDRINUSE,
            )
            e.table = where
            self.found_owned[where] = e
            raise e
        self.found_owned.pop(where, None)  # (as the real Kernel's table opens then)
        # Every table exists (the real Kernel opens one when an operation first names it).
        match op:
            case AddVif(family, vifi, _, ifindex, _, table):
                if (family, table, vifi) in self.vifs:
                    raise KernelError(f"VIF {vifi} exists", "MRT_ADD_VIF", errno.EADDRINUSE)
                if self.devices is not None and ifindex not in self.devices:
                    raise KernelError(f"no device {ifindex}", "MRT_ADD_VIF", errno.ENODEV)
                self.vifs[(family, table, vifi)] = ifindex
            case DelVif(family, vifi, _, table):
                if self.vifs.pop((family, table, vifi), None) is None:
                    raise KernelError(f"no VIF {vifi}", "MRT_DEL_VIF", errno.EADDRNOTAVAIL)
            case AddMfc(family, source, group, parent, oifs, table):
                ttls = {v: ttl for v, ttl in oifs if (family, table, v) in self.vifs}
                self.mfcs[(family, source, group, table)] = MfcEntry(parent, ttls)
            case DelMfc(family, source, group, table):
                if self.mfcs.pop((family, source, group, table), None) is None:
                    raise KernelError("no such entry", "MRT_DEL_MFC", errno.ENOENT)
                self.static.discard((family, source, group, table))
        self.applied.append(op)

    def foreign_add(self, key: RouteKey, parent: int, oifs: dict[int, int]) -> None:
        """Another program's MRT_ADD_MFC (a socket that is not the table's): the entry is
        static from now on."""
        self.mfcs[key] = MfcEntry(parent, dict(oifs))
        self.static.add(key)

    def observe(self, family: int, table: int, entries: bool = True) -> Observation:
        """VIF devices are named by `names`, else after their ifindex ("if7"); as in Linux,
        those of an IPv6 table other than the default are not named (None)."""
        self.observed.append((family, table, entries))
        zero_vif, zero_sg = VifCounters(0, 0, 0, 0), SgCounters(0, 0, 0)
        named = family == 4 or table == DEFAULT_TABLE[6]
        vifs = {
            vifi: ObservedVif(self.names.get(ifindex, f"if{ifindex}"), ifindex, zero_vif)
            if named
            else ObservedVif(None, None, zero_vif)
            for (f, t, vifi), ifindex in self.vifs.items()
            if f == family and t == table
        }
        if not entries:
            return Observation(family, table, vifs, None)
        mfc = {}
        for (f, source, group, t), entry in self.mfcs.items():
            if f == family and t == table:
                iif = self.vifs.get((family, t, entry.parent))
                oifs = {
                    self.vifs[(f, t, v)]: ttl
                    for v, ttl in entry.ttls.items()
                    if (f, t, v) in self.vifs
                }
                static = (f, source, group, t) in self.static
                mfc[(source, group)] = ObservedEntry(iif, oifs, zero_sg, static)
        return Observation(family, table, vifs, mfc)

    def counters(
        self,
        family: int,
        table: int,
        entries: Iterable[tuple[str, str]] = (),
        vifs: Iterable[int] = (),
    ) -> Counters:
        sg = [
            SgCounters(0, 0, 0) if (family, s, g, table) in self.mfcs else None for s, g in entries
        ]
        vif = [VifCounters(0, 0, 0, 0) if (family, table, v) in self.vifs else None for v in vifs]
        return Counters(sg, vif)

    def owned_tables(self) -> Mapping[tuple[int, int], KernelError]:
        return dict(self.found_owned)

    def events(self) -> Events:
        upcalls, self.upcalls = self.upcalls, []
        return Events(upcalls, [], False)

    def device_gone(self, ifindex: int) -> None:
        """A device was deleted: Linux removes its VIFs (NETDEV_UNREGISTER), keeps the MFC."""
        for key in [k for k, i in self.vifs.items() if i == ifindex]:
            del self.vifs[key]

    def forwarding(self, key: RouteKey) -> Forwarding:
        entry = self.mfcs[key]
        family, table = key[0], key[3]
        oifs = frozenset(
            (self.vifs[(family, table, v)], ttl if family == 4 else 0)
            for v, ttl in entry.ttls.items()
            if (family, table, v) in self.vifs
        )
        return self.vifs.get((family, table, entry.parent)), oifs

    def view(
        self,
    ) -> tuple[dict[tuple[int, int, int], int], dict[RouteKey, tuple[int, Forwarding]]]:
        """What forwarding depends on: the VIFs, and each entry's parent index and forwarding."""
        entries = {k: (e.parent, self.forwarding(k)) for k, e in self.mfcs.items()}
        return dict(self.vifs), entries

    def clone(self) -> FakeKernel:
        other = FakeKernel(self.devices)
        other.vifs = dict(self.vifs)
        other.mfcs = copy.deepcopy(self.mfcs)
        return other


def check_runs(changes: Sequence[Change], runs: Sequence[RunOfAdds]) -> None:
    """What the journal takes on trust of the runs it is given (state.RunOfAdds): in order and
    apart, each the AddRoutes of its keys on its Ports, of one family and table, with its
    columns (if any) the keys' sources and groups."""
    done = 0
    for run in runs:
        assert run.start >= done
        done = run.start + len(run.keys)
        assert list(changes[run.start : done]) == [AddRoute(key, run.ports) for key in run.keys]
        assert len({(key[0], key[3]) for key in run.keys}) <= 1
        if run.sources or run.groups:
            assert list(run.sources) == [key[1] for key in run.keys]
            assert list(run.groups) == [key[2] for key in run.keys]


@dataclass
class FakeState:
    """The journal in memory; `fail` makes every write raise StateError."""

    fail: bool = False
    fail_snapshot: bool = False
    records: list[list[Op]] = field(default_factory=list)
    snapshots: list[tuple[list[Route], dict[str, int]]] = field(default_factory=list)
    templates: dict[TemplateKey, Ports] = field(default_factory=dict)  # of the last snapshot
    ops_since_snapshot: int = 0
    moved: str | None = None  # why the file is not where mfcd left it (it then needs a snapshot)

    def append(self, changes: Sequence[Change], runs: Sequence[RunOfAdds] = ()) -> None:
        check_runs(changes, runs)
        if self.fail:
            raise StateError("state.journal: cannot write the state file: No space left on device")
        if self.moved is not None:
            raise SnapshotNeeded(self.moved)
        self.records.append([change_op(c) for c in changes])
        self.ops_since_snapshot += len(changes)

    def write_snapshot(
        self,
        routes: Iterable[Route],
        thresholds: dict[str, int],
        extra: dict[str, Any] | None = None,
        templates: dict[TemplateKey, Ports] | None = None,
    ) -> None:
        if self.fail_snapshot:
            raise StateError("state.journal: cannot write the state file: No space left on device")
        self.snapshots.append((list(routes), dict(thresholds)))
        self.templates = dict(templates or {})
        self.ops_since_snapshot = 0
        self.moved = None

    def replaced(self) -> str | None:
        return self.moved


def observable(router: Router) -> dict[str, Any]:
    """A deep copy of everything a Router holds that anyone can observe."""
    return copy.deepcopy(
        {
            "routes": router.routes,
            "installed": router.installed,
            "vifs": router.vifs,
            "slots": router.slots,
            "links": router.links,
            "waiting": router.waiting,
            "blocked": router.blocked,
            "thresholds": router.thresholds,
            "table_thresholds": router.table_thresholds,
        }
    )


def run(router: Router, steps_of: Any, *args: Any) -> list[Step]:
    """Call a Router method as one committed transaction."""
    router.begin()
    try:
        steps: list[Step] = steps_of(*args)
    except BaseException:
        router.rollback()
        raise
    router.commit()
    return steps


def router_with_links(*names: str, first_ifindex: int = 1) -> Router:
    """A Router that has seen `names` come up, with ifindexes first_ifindex, first_ifindex+1..."""
    router = Router()
    for ifindex, name in enumerate(names, first_ifindex):
        run(router, router.link_up, name, ifindex)
    return router


def check_undo(kernel: FakeKernel, steps: Sequence[Step]) -> None:
    """Failing after any prefix of `steps` and undoing it leaves `kernel` forwarding as before."""
    before = kernel.view()
    for done in range(len(steps) + 1):
        trial = kernel.clone()
        trial.apply([step.op for step in steps[:done]])
        assert undo(trial, [s.undo for s in steps[:done]]) == []
        assert trial.view() == before, f"undo of {steps[:done]} does not restore the kernel"


@pytest.fixture(autouse=True)
def no_rules_of_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests read none of the multicast rules (`ip mrule`) of the machine they run on
    (a reload's or --check-config's warning would depend on them): the dump fails, so no
    warning is given, unless a test gives rules of its own."""

    def dump_mrules(family: int) -> list[Any]:
        raise OSError(1, "not read in unit tests")

    monkeypatch.setattr(netlink, "dump_mrules", dump_mrules)
