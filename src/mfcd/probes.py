"""What `mfcctl diagnose` reads from the machine: the read-only shell around diagnosis.py.

Interface state, sysctls, bridge settings, the route back to a source, the flow's packets
on the wire; the verdicts are the pure diagnosis.py's.

Nothing here changes anything: /proc and /sys are only read, the route lookup is an
RTM_GETROUTE (as `ip route get`), the multicast rules an RTM_GETRULE dump (as `ip mrule`),
and the packet sample is an AF_PACKET socket with a BPF filter that copies only the flow's
packets, for a few seconds at most. Sampling blocks, so `diagnose()` runs it in a thread:
the daemon keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from mfcd import diagnosis, netlink, protocol, views
from mfcd import templates as tpl
from mfcd.dataplane import (
    Dataplane,
    Observation,
    SgCounters,
    sg_counters,
    vif_counters,
)
from mfcd.diagnosis import (
    Counts,
    EntryNames,
    Facts,
    Intent,
    Interface,
    KernelEntry,
    Query,
    RouteBack,
    Rules,
    Sample,
)
from mfcd.errors import KernelError
from mfcd.groups import ANY_SOURCE, JoinKey
from mfcd.membership import interface_flags
from mfcd.model import DEFAULT_TABLE, Router
from mfcd.uapi import IFF_RUNNING, IFF_UP, SO_ATTACH_FILTER, SOCK_FILTER, SOCK_FPROG

PACKET_OUTGOING = 4  # a packet this host sends (the forwarded copies), <linux/if_packet.h>
ETH_P = {4: 0x0800, 6: 0x86DD}
MAX_PACKETS = 200  # sampled at most: enough for TTLs and arrival interfaces
STOP_CHECK = 0.2  # seconds between two looks at the stop flag while sampling
# Diagnoses read the machine in threads of their own, two at a time: a crowd of them waits
# here instead of holding the default executor's threads, which write the state file.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="diagnose")
SNAP = 64  # bytes of each packet copied: the IP header is all that is read
# Diagnose reads the kernel's entry for the flow from a dump of its table, which takes
# seconds beyond this many routes (minutes at 1,000,000): then it reads none.
DUMP_ROUTES = 100_000
# Classic BPF opcodes (<linux/filter.h>)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06


# --- the flow's packets ---------------------------------------------------------------------------


def bpf_program(family: int, group: str, source: str | None) -> list[tuple[int, int, int, int]]:
    """A classic BPF program accepting IP packets from `source` (None: any) to `group`,
    as a SOCK_DGRAM packet socket sees them (from the IP header on)."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    # Offsets of the source and destination addresses in the IPv4 / IPv6 header.
    src_at, dst_at = (12, 16) if family == 4 else (8, 24)
    words: list[tuple[int, int]] = []
    for address, at in ((group, dst_at), (source, src_at)):
        if address is None:
            continue
        raw = socket.inet_pton(af, address)
        words += [(at + i, int.from_bytes(raw[i : i + 4], "big")) for i in range(0, len(raw), 4)]
    program = []
    for index, (offset, value) in enumerate(words):
        # On a mismatch jump to the final "ret 0" (after the remaining pairs and "ret SNAP").
        left = len(words) - index - 1
        program += [(_LD_W_ABS, 0, 0, offset), (_JEQ_K, 0, 2 * left + 1, value)]
    return [*program, (_RET_K, 0, 0, SNAP), (_RET_K, 0, 0, 0)]


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(SOCK_FILTER.pack(*insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    fprog = SOCK_FPROG.pack(len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@dataclass(frozen=True, slots=True)
class Packet:
    interface: str  # where it arrived
    source: str
    ttl: int  # TTL or hop limit


def parse_packet(family: int, data: bytes) -> tuple[str, int] | None:
    """(source, TTL or hop limit) of an IP header; None if too short."""
    if family == 4:
        if len(data) < 20:
            return None
        return socket.inet_ntop(socket.AF_INET, data[12:16]), data[8]
    if len(data) < 40:
        return None
    return socket.inet_ntop(socket.AF_INET6, data[8:24]), data[7]


def sample_packets(
    family: int, group: str, source: str | None, seconds: float, stop: threading.Event
) -> tuple[list[Packet], str]:
    """The flow's packets arriving on any interface within `seconds` (MAX_PACKETS at most),
    and an error text when no sample could be taken. Blocks: run it in a thread; `stop`
    ends it early (mfcd stops)."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P[family]))
    except OSError as e:
        return [], f"cannot open a packet socket: {e.strerror} (mfcd needs CAP_NET_RAW)"
    packets: list[Packet] = []
    with sock:
        try:
            _attach(sock, bpf_program(family, group, source))
        except OSError as e:
            return [], f"cannot attach the packet filter: {e.strerror}"
        _drain(sock)  # what arrived before the filter was attached
        deadline = time.monotonic() + seconds
        while len(packets) < MAX_PACKETS:
            left = deadline - time.monotonic()
            if left <= 0 or stop.is_set():
                break
            sock.settimeout(min(left, STOP_CHECK))
            try:
                data, address = sock.recvfrom(SNAP)
            except TimeoutError:
                continue
            except OSError as e:
                return packets, f"reading packets failed: {e.strerror}"
            if address[2] == PACKET_OUTGOING:
                continue  # a copy mfcd's route forwards (or the router sends): not an arrival
            parsed = parse_packet(family, data)
            if parsed is not None:
                packets.append(Packet(address[0], *parsed))
    return packets, ""


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(SNAP)
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        sock.setblocking(True)


def is_prefix(source: str) -> bool:
    """Whether a flow's source is a template's prefix ("*", "198.18.0.0/16"), not an address."""
    return source == tpl.ANY or "/" in source


def sample_of(packets: Iterable[Packet], source: str, seconds: float, error: str = "") -> Sample:
    """The packets of one source (or of the sources of a template's prefix) as
    diagnosis.Sample."""
    arrivals: dict[str, int] = {}
    ttls: dict[str, list[int]] = {}
    of_flow = _within(source) if is_prefix(source) else source.__eq__
    for p in packets:
        if of_flow(p.source):
            arrivals[p.interface] = arrivals.get(p.interface, 0) + 1
            ttls.setdefault(p.interface, []).append(p.ttl)
    return Sample(seconds, arrivals, {n: tuple(t) for n, t in ttls.items()}, error)


def _within(prefix: str) -> Callable[[str], bool]:
    def within(address: str) -> bool:
        family = tpl.family_of(address)
        number = tpl.address_number(family, address)
        return tpl.contains(tpl.prefix_of(prefix, family), number)

    return within


# --- interfaces and sysctls -----------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _number(path: str) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def read_interface(family: int, name: str) -> Interface:
    """An interface's state, sysctls and bridge settings, as far as they can be read."""
    try:
        flags = interface_flags(name)
    except OSError:
        return Interface(name, True)
    if flags is None:
        return Interface(name, False)
    ip = protocol.FAMILY_NAMES[family]
    forwarding = _number(f"/proc/sys/net/{ip}/conf/{name}/mc_forwarding")
    rp_filter = None
    if family == 4:
        values = [_number(f"/proc/sys/net/ipv4/conf/{n}/rp_filter") for n in ("all", name)]
        # The kernel uses the larger of the two (ip-sysctl.rst).
        rp_filter = None if None in values else max(v for v in values if v is not None)
    bridge = f"/sys/class/net/{name}/bridge"
    snooping = querier = None
    if os.path.isdir(bridge):
        snooping_value = _number(f"{bridge}/multicast_snooping")
        snooping = None if snooping_value is None else bool(snooping_value)
        querier = bool(_number(f"{bridge}/multicast_querier"))
    return Interface(
        name,
        True,
        bool(flags & IFF_UP),
        bool(flags & IFF_RUNNING),
        None if forwarding is None else bool(forwarding),
        rp_filter,
        snooping,
        querier,
    )


def route_back(family: int, source: str) -> RouteBack:
    try:
        ifindex = netlink.route_get(family, source)
    except OSError as e:
        return RouteBack(None, f"route lookup failed: {e.strerror or e}")
    if ifindex is None:
        return RouteBack(None)
    try:
        return RouteBack(socket.if_indextoname(ifindex))
    except OSError:
        return RouteBack(f"ifindex {ifindex}")


def read_rules(family: int) -> Rules:
    """The family's multicast routing rules (`ip mrule` / `ip -6 mrule`), and which of the
    tables they look up the kernel does not have (their rules are passed over)."""
    try:
        rules = tuple(netlink.dump_mrules(family))
    except (OSError, ValueError) as e:
        return Rules((), f"dump failed: {getattr(e, 'strerror', None) or e}")
    # The default table is there from the namespace's start; the others only once named.
    named = {r.table for r in rules if r.action == "lookup" and r.table > 0}
    named.discard(DEFAULT_TABLE[family])
    try:
        missing = frozenset(t for t in named if not netlink.table_exists(family, t))
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        return Rules((), f"cannot tell which of their tables exist: {why}")
    in_vrf = None
    if any(r.l3mdev for r in rules):  # (the rule a VRF adds: which interfaces it takes)
        with contextlib.suppress(OSError, ValueError):  # (not known: the check says so)
            in_vrf = netlink.dump_vrf_members()
    return Rules(rules, missing=missing, in_vrf=in_vrf)


# How long the multicast rules read for a change's warning are taken as current (seconds).
# A client sending changes at full speed costs one read per interval (some 0.1-0.4 ms:
# the dump, and a lookup of each table the rules name), not one per request; a rule
# changed by `ip mrule` counts from mfcctl's next command on (mfcctl takes longer to start).
RULES_INTERVAL = 0.01


class RuleReader:
    """The multicast rules of each family (read_rules), read again once `interval` has
    passed since they were last read: what a change's warning (diagnosis.unreached) looks
    at."""

    def __init__(
        self,
        interval: float = RULES_INTERVAL,
        read: Callable[[int], Rules] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval, self._read, self._clock = interval, read, clock
        self._read_at: dict[int, tuple[float, Rules]] = {}

    def __call__(self, family: int) -> Rules:
        now = self._clock()
        known = self._read_at.get(family)
        if known is not None and now - known[0] < self._interval:
            return known[1]
        rules = (self._read or read_rules)(family)  # (read_rules as it is now: tests set it)
        self._read_at[family] = (now, rules)
        return rules


# --- the whole diagnosis --------------------------------------------------------------------------


Tables = dict[tuple[int, int], Observation]


def _machine_facts(
    query: Query,
    intents: list[Intent],
    stop: threading.Event,
    plane: Dataplane | None = None,
    readable: frozenset[int] = frozenset(),
) -> tuple[list[Packet], str, dict[str, Interface], dict[str, RouteBack], Rules, Tables]:
    """Everything read from the machine (blocking: in a thread); with `plane`, the VIFs
    and entries of the intents' tables that are `readable` (of those with a source: an
    (S,G) to look up)."""
    family = query.family
    tables: Tables = {}
    if plane is not None:
        wanted = {i.table for i in intents if not is_prefix(i.source)} & readable
        for table in sorted(wanted):
            with contextlib.suppress(KernelError):  # (the check is then left out)
                tables[(family, table)] = plane.observe(family, table)
    packets, error = sample_packets(family, query.group, query.source, query.seconds, stop)
    names = {n for intent in intents for n in (intent.iif, *intent.oifs)}
    interfaces = {n: read_interface(family, n) for n in names}
    backs = {}
    if family == 4:
        for intent in intents:
            if intent.source not in backs and not is_prefix(intent.source):
                backs[intent.source] = route_back(family, intent.source)
    # Every table's: a rule may also take the iif's traffic away from the default table
    # (and, with no route, says in which table to add one).
    rules = read_rules(family)
    return packets, error, interfaces, backs, rules, tables


async def diagnose(
    router: Router,
    counters: Dataplane,
    query: Query,
    left_out: Sequence[str] = (),
    *,
    owned: frozenset[int] = frozenset(),
    joined: Iterable[JoinKey] = (),
) -> dict[str, Any]:
    """Diagnose every intent matching the flow; the result of the `diagnose` command
    (`left_out`: the config files a start left out for an error, named when none matches;
    `owned`: the family's tables another multicast router owns; `joined`: the joins mfcd
    holds)."""
    family, group, source = query.family, query.group, query.source
    intents = diagnosis.matching_intents(router, query)
    elsewhere: tuple[int, ...] = ()
    if not intents and query.table is not None:
        others = diagnosis.matching_intents(router, replace(query, table=None))
        elsewhere = tuple(sorted({i.table for i in others}))
    before = [_counters(counters, i) for i in intents]
    vifs_before = [_sent(router, counters, i) for i in intents]
    started = time.monotonic()
    stop = threading.Event()
    plane = counters if len(router.installed) <= DUMP_ROUTES else None
    readable = _readable(router, query.family, owned)
    reading = asyncio.get_running_loop().run_in_executor(
        _executor, _machine_facts, query, intents, stop, plane, readable
    )
    try:
        packets, error, interfaces, backs, rules, tables = await asyncio.shield(reading)
    except asyncio.CancelledError:
        stop.set()  # mfcd stops: the thread ends within STOP_CHECK
        raise
    elapsed = round(time.monotonic() - started, 1)
    late = _learned_meanwhile(router, query, intents)
    if late:
        intents, before, vifs_before = _with_learned(intents, before, vifs_before, late)
        learned = [i for found in late.values() for i in found]
        await asyncio.get_running_loop().run_in_executor(
            _executor, _late_facts, learned, plane, readable, backs, tables
        )
    after = [_counters(counters, i) for i in intents]
    vifs_after = [_sent(router, counters, i) for i in intents]
    flows: list[tuple[Intent | None, list[diagnosis.Check]]] = []
    for index, (intent, old, new) in enumerate(zip(intents, before, after, strict=True)):
        counts = None
        if old is not None and new is not None:
            counts = Counts(
                elapsed, new.packets - old.packets, new.wrong_if - old.wrong_if, new.packets
            )
        sample = sample_of(packets, intent.source, elapsed, error)
        facts = Facts(
            family,
            intent.source,
            group,
            intent,
            interfaces,
            counts,
            sample,
            backs.get(intent.source),
            _difference(vifs_before[index], vifs_after[index]),
            rules,
            fed=_fed(router, intent),
            owned=owned,
            kernel=_kernel_entry(router, intent, tables.get((family, intent.table))),
            joined=_joined(intent, joined),
        )
        flows.append((intent, diagnosis.checklist(facts)))
    if not intents:
        sources = {p.source for p in packets}
        one = source if source is not None else (min(sources) if len(sources) == 1 else None)
        seen = sample_of(packets, one, elapsed, error) if one is not None else None
        # Without a source, the one sender seen (if just one) stands for it in the fix.
        facts = Facts(
            family,
            one,
            group,
            None,
            {},
            None,
            seen,
            None,
            rules=rules,
            elsewhere=elsewhere,
            left_out=tuple(left_out),
            owned=owned,
        )
        flows.append((None, diagnosis.checklist(facts)))
    return views.diagnose_result(query, elapsed, flows)


def _learned_meanwhile(
    router: Router, query: Query, intents: list[Intent]
) -> dict[int, list[Intent]]:
    """The entries learned while sampling from the templates that had learned nothing for
    the flow (a sender that started then, or came back after its entry expired), by the
    index of the template's intent: the flow is judged by them, as it is forwarded."""
    waiting = {i: intent for i, intent in enumerate(intents) if not intent.entry}
    if not waiting:
        return {}
    now = [i for i in diagnosis.matching_intents(router, query) if i.learned]
    late: dict[int, list[Intent]] = {}
    for index, intent in waiting.items():
        found = [
            i
            for i in now
            if (i.table, i.iif, i.template) == (intent.table, intent.iif, intent.template)
        ]
        if found:
            late[index] = found
    return late


def _with_learned(
    intents: list[Intent],
    before: list[SgCounters | None],
    vifs_before: list[dict[str, int]],
    late: dict[int, list[Intent]],
) -> tuple[list[Intent], list[SgCounters | None], list[dict[str, int]]]:
    """The intents with each template that learned meanwhile replaced by what it learned,
    their counters from zero (the entry is new) and the VIFs' as the template's."""
    out: tuple[list[Intent], list[SgCounters | None], list[dict[str, int]]] = ([], [], [])
    for index, intent in enumerate(intents):
        for now in late.get(index, [intent]):
            out[0].append(now)
            out[1].append(before[index] if now is intent else SgCounters(0, 0, 0))
            out[2].append(vifs_before[index])
    return out


def _late_facts(
    learned: list[Intent],
    plane: Dataplane | None,
    readable: frozenset[int],
    backs: dict[str, RouteBack],
    tables: Tables,
) -> None:
    """What _machine_facts read of the sampled intents, for the entries learned meanwhile
    (blocking: in a thread): the route back to each source, their table's entries."""
    for intent in learned:
        family, table = intent.family, intent.table
        if plane is not None and table in readable and (family, table) not in tables:
            with contextlib.suppress(KernelError):
                tables[(family, table)] = plane.observe(family, table)
        if family == 4 and intent.source not in backs:
            backs[intent.source] = route_back(family, intent.source)


def _fed(router: Router, intent: Intent) -> dict[int, tuple[int, int]]:
    """What mfcd has on the intent's iif in each other table of its family (Facts.fed):
    the routes its VIF there carries (as iif or oif, learned entries too: its count of
    users, less the templates that hold it; no scan of every route) and the templates
    with that iif."""
    family, iif = intent.family, intent.iif
    on_iif: Counter[int] = Counter()
    holding: Counter[int] = Counter()  # templates that hold the iif's VIF, by table
    for key, ports in router.templates.items():
        if key[0] == family and iif in ports.interfaces:
            on_iif[key[3]] += key[4] == iif
            holding[key[3]] += key in router.holding
    fed = {}
    for f, table in router.slots:
        vif = router.vif_of(family, iif, table) if f == family and table != intent.table else None
        routes = vif.refs - holding[table] if vif is not None else 0
        if routes > 0 or on_iif[table]:
            fed[table] = (max(routes, 0), on_iif[table])
    return fed


def _joined(intent: Intent, joined: Iterable[JoinKey]) -> bool:
    """Whether mfcd holds a join of the flow's group on its iif (any source, or its own)."""
    wanted = {(intent.iif, intent.group, ANY_SOURCE), (intent.iif, intent.group, intent.source)}
    return any(key in wanted for key in joined)


def _kernel_entry(router: Router, intent: Intent, seen: Observation | None) -> KernelEntry | None:
    """The kernel's entry for the intent's (S,G) and the VIFs it uses, beside mfcd's (None:
    the table was not read)."""
    if seen is None or seen.entries is None or is_prefix(intent.source):
        return None
    names = {ifindex: name for name, ifindex in router.links.items() if ifindex is not None}

    def named(iif: int | None, oifs: Iterable[int]) -> EntryNames:
        def name(ifindex: int) -> str:
            return names.get(ifindex, f"ifindex {ifindex}")

        return (None if iif is None else name(iif), tuple(sorted(map(name, oifs))))

    key = (intent.family, intent.source, intent.group, intent.table)
    wanted = named(*router.expected(key)) if key in router.installed else None
    found = seen.entries.get((intent.source, intent.group))
    had = None if found is None else named(found.iif, found.oifs)
    missing = []
    for interface in (intent.iif, *intent.oifs):
        vif = router.vif_of(intent.family, interface, intent.table)
        if vif is None or vif.ifindex is None:
            continue  # (no VIF wanted: the interface is missing, which other checks say)
        there = seen.vifs.get(vif.vifi)
        if there is None or there.device not in (None, interface):
            missing.append(interface)
    static = found is not None and found.static
    return KernelEntry(had, wanted, static, tuple(missing))


def _readable(router: Router, family: int, owned: frozenset[int]) -> frozenset[int]:
    """The tables of `family` whose kernel entries diagnose may read: those mfcd holds VIFs
    in, and none another router owns. Reading an IPv6 table sets MRT6_TABLE, which creates
    a table that does not exist (a rule's `lookup` of it then takes traffic the kernel
    passed over before), and an owned table's entries are the other router's, not drift."""
    return frozenset(t for f, t in router.slots if f == family and t not in owned)


def _counters(reader: Dataplane, intent: Intent) -> SgCounters | None:
    if intent.state not in {"installed", "degraded"} or not intent.entry:
        return None  # (a template with nothing learned: no entry)
    return sg_counters(reader, intent.family, intent.source, intent.group, intent.table)


def _sent(router: Router, reader: Dataplane, intent: Intent) -> dict[str, int]:
    """Packets out of each oif's VIF so far (an oif without a VIF, or gone, is left out)."""
    out = {}
    for oif in intent.oifs:
        vif = router.vif_of(intent.family, oif, intent.table)
        if vif is None or vif.ifindex is None:
            continue
        counters = vif_counters(reader, intent.family, vif.vifi, intent.table)
        if counters is not None:
            out[oif] = counters.packets_out
    return out


def _difference(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {n: after[n] - before[n] for n in after if n in before}
