"""The route engine's one kernel interface: the Dataplane protocol and all-or-nothing execution.

The protocol, its values and the all-or-nothing execution on top of it do no I/O.

The interface
-------------
A data plane holds the multicast routing tables, each named by (family, table) where
`table` is the kernel's table number (model.DEFAULT_TABLE: 253 for IPv4, 254 for IPv6).
It has exactly four operations, and one record:

- `apply(ops)`: apply model.KernelOps in order, each in the table it names. On the first
  failure it raises KernelError with `applied` set to how many ops went in before it, and
  for a run (model.AddMfcRun, DelMfcRun: one call per route) `partial` set to how many of
  its routes went in before the one refused; it never undoes anything (that is `execute`,
  below, in the core). A table another multicast router owns refuses every operation
  that names it, as the kernel's MRT_INIT does: KernelError with operation "MRT_INIT",
  errno EADDRINUSE and `table` set (see table_owned).
- `observe(family, table, entries=True)`: what one table holds now, as an Observation:
  its VIFs (index -> device, ifindex, counters) and, with `entries`, its MFC entries
  ((source, group) -> iif, oifs with TTLs, counters). Reading every entry costs more than
  linear time in the kernel (minutes at 1,000,000): without `entries` only the VIFs.
  The real Kernel reads the VIFs of a default table from /proc, those of another IPv4
  table by netlink, and those of another IPv6 table by probing each index (the kernel
  lists no such MIFs, nor names their devices: device None).
- `counters(family, table, entries=(), vifs=())`: per-(S,G) and per-VIF counters, one
  O(1) probe each, in the order asked; None for an entry or VIF the table does not hold.
- `events()`: what the kernel reported since the last call (upcalls of every table,
  interface changes), read without blocking and bounded per call, so a flood cannot
  starve the caller: call again while the source stays readable.
- `owned_tables()`: the tables another multicast router owns, each with the refusal of
  its last MRT_INIT (EADDRINUSE), as the data plane found them: a table enters at a
  refusal and leaves when an operation naming it gets in (the other router is gone).
  The one record of owned tables: the controller and diagnose read it, nothing else
  keeps one (Router.unavailable is a copy for the length of one batch).

kernel.Kernel (with netlink.py) is the only real implementation; tests/unit/conftest.py's
FakeKernel implements the same protocol with Linux's rules. How a caller waits for events
is not part of the protocol: the real Kernel names its file descriptors (`Kernel.fds()`),
and the daemon calls `events()` whenever one is readable.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

from mfcd.errors import KernelError
from mfcd.model import (
    DEFAULT_TABLE,
    RUNS,
    KernelOp,
    RouteKey,
    Step,
    renamed_from,
    run_head,
    run_tail,
)

# Upcall kinds: IGMPMSG_NOCACHE / MRT6MSG_NOCACHE (a packet with no entry),
# IGMPMSG_WRONGVIF / MRT6MSG_WRONGMIF (a packet on the wrong interface, only with
# MRT_ASSERT or MRT_PIM), IGMPMSG_WHOLEPKT / MRT6MSG_WHOLEPKT (PIM register, whole packet).
UpcallKind = Literal["nocache", "wrongvif", "wholepkt"]
UPCALL_KINDS: tuple[UpcallKind, ...] = ("nocache", "wrongvif", "wholepkt")


class SgCounters(NamedTuple):
    packets: int
    bytes: int
    wrong_if: int


class VifCounters(NamedTuple):
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int


class ObservedVif(NamedTuple):
    device: str | None  # None where the kernel does not say (an IPv6 table but the default)
    ifindex: int | None  # None where the kernel does not say (IPv6)
    counters: VifCounters


class ObservedEntry(NamedTuple):
    iif: int | None  # ifindex; None when the parent is not a VIF
    oifs: dict[int, int]  # oif ifindex -> TTL threshold
    counters: SgCounters
    # MFC_STATIC: written through another socket than the table's owner. Such an entry
    # outlives the owner's close, and an in-place MRT_ADD_MFC keeps the flag (docs/kernel.md).
    static: bool = False


class Observation(NamedTuple):
    family: int
    table: int
    vifs: dict[int, ObservedVif]  # VIF index -> VIF
    entries: dict[tuple[str, str], ObservedEntry] | None  # None: not read


class Counters(NamedTuple):
    entries: list[SgCounters | None]  # in the order asked; None: no such entry
    vifs: list[VifCounters | None]  # in the order asked; None: no such VIF


class Upcall(NamedTuple):
    """A message from a table's mroute socket about one packet."""

    kind: UpcallKind
    family: int
    table: int
    source: str
    group: str
    vif: int  # the VIF index the packet arrived on


class LinkChange(NamedTuple):
    """An interface created or changed ("new") or deleted ("del")."""

    kind: Literal["new", "del"]
    name: str
    ifindex: int
    up: bool = True  # IFF_UP, the administrative state


def link_changes(known: Mapping[str, int], present: Iterable[LinkChange]) -> list[LinkChange]:
    """The link events that take the interfaces `known` (name -> ifindex) to those `present`
    (a fresh dump, each as its "new"): what events missed (an overrun) did, to be applied
    and told as if they had been read. First each deleted one (its index gone: one deleted
    and created again under its name is deleted, then new), then each renamed one (an index
    known under another name: before the new ones, one of which may take the old name),
    then each new one. A change of state alone (up, down) is not seen."""
    now = list(present)
    indexes = {link.ifindex for link in now}
    deleted = [LinkChange("del", n, i, False) for n, i in known.items() if i not in indexes]
    known_indexes = set(known.values())
    changed = [link for link in now if known.get(link.name) != link.ifindex]
    renamed = [link for link in changed if link.ifindex in known_indexes]
    held = {n: i for n, i in known.items() if i in indexes}  # (after the deletions)
    new = [link for link in changed if link.ifindex not in known_indexes]
    return deleted + _renames_in_order(renamed, held) + new


def _renames_in_order(renamed: list[LinkChange], held: dict[str, int]) -> list[LinkChange]:
    """Renames each after the one that frees its new name (c renamed x, then b renamed c),
    as the kernel made them; names swapped (no order does it) as they come. `held`: the
    interfaces before them, name -> ifindex (changed here)."""
    out: list[LinkChange] = []
    waiting = renamed
    while waiting:
        ready = [link for link in waiting if held.get(link.name, link.ifindex) == link.ifindex]
        ready = ready or waiting[:1]
        for link in ready:
            old = renamed_from(held, link.name, link.ifindex)
            if old is not None:
                del held[old]
            held[link.name] = link.ifindex
        out += ready
        waiting = [link for link in waiting if link not in ready]
    return out


class Events(NamedTuple):
    upcalls: list[Upcall]
    links: list[LinkChange]
    links_lost: bool  # interface events were lost (overrun): re-read every interface


class CountersReader(Protocol):
    """The part of a data plane that reads counters (all that show and stats need)."""

    def counters(
        self,
        family: int,
        table: int,
        entries: Iterable[tuple[str, str]] = (),
        vifs: Iterable[int] = (),
    ) -> Counters: ...


@runtime_checkable
class Dataplane(CountersReader, Protocol):
    def apply(self, ops: Sequence[KernelOp]) -> None: ...
    def observe(self, family: int, table: int, entries: bool = True) -> Observation: ...
    def events(self) -> Events: ...
    def owned_tables(self) -> Mapping[tuple[int, int], KernelError]: ...


# Changes in one transaction (a batch) from which its runs, however short, go to a data
# plane's writer (LaterDataplane.apply_later's `every_run`): a process started for fewer
# costs more than it saves. Also the length from which a restore's run goes to it.
LATER_MIN = 50_000


@runtime_checkable
class LaterDataplane(Dataplane, Protocol):
    """A data plane that can apply long runs while its caller goes on (kernel.Kernel's
    writer process): apply_later(ops) is apply(ops) whose KernelError may come from
    settle() instead, `applied` counting every op passed since the last settle()."""

    def apply_later(self, ops: Sequence[KernelOp], every_run: bool = False) -> None: ...
    def pending(self) -> bool: ...  # whether settle() has anything to wait for
    def settle(self) -> None: ...
    def release_writer(self) -> None: ...  # settle(), and end what writes for it until then


def table_owned(e: BaseException) -> tuple[int, int] | None:
    """The (family, table) of a refusal because another multicast router owns the table
    (smcroute, pimd, ...: MRT_INIT gets EADDRINUSE), else None. Such a refusal is no fault
    of the routes: they stay pending until the table is free (mfcctl sync retries)."""
    if isinstance(e, KernelError) and e.table is not None and e.errno == errno.EADDRINUSE:
        return e.table
    return None


# --- all-or-nothing execution, on any data plane --------------------------------------------------


def execute(plane: Dataplane, steps: Sequence[Step]) -> None:
    """Apply every step; if one fails, undo the ones already applied and re-raise.

    A run step (model.AddMfcRun) the kernel took in part counts too: the routes of it that
    went in (KernelError.partial) are undone with the others. Failures of the undo itself
    are attached to the error as `undo_failures`.
    """
    try:
        # (one step, as a single change has: no comprehension, itself a function call)
        plane.apply((steps[0].op,) if len(steps) == 1 else [step.op for step in steps])
    except KernelError as e:
        undo_applied(plane, steps, e)
        raise


def undo_applied(plane: Dataplane, steps: Sequence[Step], e: KernelError) -> None:
    """Undo what of `steps` went in before the failure `e` (its `applied`, `partial`);
    failures of the undo itself go to e.undo_failures."""
    undos = [step.undo for step in steps[: e.applied]]
    failed = steps[e.applied].undo if e.partial and e.applied < len(steps) else None
    if failed is not None and failed.__class__ in RUNS:
        undos.append(run_head(failed, e.partial))
    e.undo_failures += undo(plane, undos)


def undo(plane: Dataplane, ops: Sequence[KernelOp | None]) -> list[KernelError]:
    """Apply the undo operations of applied steps, newest first (None: nothing to undo); go
    on past failures and return them (within a run too: its other routes are still undone)."""
    failures = []
    for undo_op in reversed(ops):
        op = undo_op
        while op is not None:
            try:
                plane.apply((op,))
                op = None
            except KernelError as e:
                failures.append(e)
                # A run stopped at its route e.partial: go on with the routes after it.
                rest = run_tail(op, e.partial + 1) if op.__class__ in RUNS else None
                op = rest if rest is not None and rest.keys else None
    return failures


_Op = TypeVar("_Op", bound=KernelOp)


def rewrite(plane: Dataplane, ops: Iterable[_Op]) -> list[tuple[_Op, KernelError]]:
    """Apply each operation on its own, with no undo (repairs); return the refused ones."""
    failures = []
    for op in ops:
        try:
            plane.apply((op,))
        except KernelError as e:
            failures.append((op, e))
    return failures


def by_table(keys: Iterable[RouteKey]) -> dict[tuple[int, int], list[RouteKey]]:
    """Route keys grouped by (family, table), in their order: a counters probe asks one
    table's socket at a time."""
    tables: dict[tuple[int, int], list[RouteKey]] = {}
    for key in keys:
        tables.setdefault((key[0], key[3]), []).append(key)
    return tables


def missing(plane: Dataplane, keys: Iterable[RouteKey]) -> list[RouteKey]:
    """The keys the data plane holds no entry for (each in its own table): one O(1)
    counters probe each, where a dump of the table grows faster than the table."""
    out = []
    for (family, table), some in by_table(keys).items():
        try:
            found = plane.counters(family, table, [(k[1], k[2]) for k in some])
        except KernelError:  # a disabled family: nothing of it is in the kernel
            out += some
            continue
        out += [key for key, c in zip(some, found.entries, strict=True) if c is None]
    return out


def sg_counters(
    plane: CountersReader, family: int, source: str, group: str, table: int | None = None
) -> SgCounters | None:
    """One (S,G) entry's counters in a table (None: the family's default; None: not there)."""
    table = DEFAULT_TABLE[family] if table is None else table
    try:
        return plane.counters(family, table, [(source, group)]).entries[0]
    except KernelError:
        return None


def vif_counters(
    plane: CountersReader, family: int, vifi: int, table: int | None = None
) -> VifCounters | None:
    """One VIF's counters in a table (None: the family's default; None: not there)."""
    table = DEFAULT_TABLE[family] if table is None else table
    try:
        return plane.counters(family, table, vifs=[vifi]).vifs[0]
    except KernelError:
        return None
