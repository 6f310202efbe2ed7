"""Group joins as intents: the joins wanted, which the kernel holds, and why others wait (pure).

A join asks the kernel for an IGMP (IPv4) or MLD (IPv6) membership of a group on an
interface, for any source (ASM, source "*") or for one source (SSM), so that an
upstream router or an IGMP/MLD snooping switch sends the group's traffic out of the
port toward us.  The model keeps the joins wanted (each with its origin, see
`model.ORIGINS`) and the ifindex each one is joined on now; a join whose interface
does not exist is *pending* and is joined when the interface appears.  Joins need no
address on the interface, IPv4 or IPv6 (docs/kernel.md), so nothing else waits.

Like model.Router, every mutation returns the kernel operations it needs
(`MembershipOp`s) and happens inside a transaction that `rollback()` undoes.  The
kernel side is membership.Memberships.

This module also turns a join's arguments into join keys: ranges (`239.1.1.0/28`)
expand to one join per address, at most MAX_EXPANSION per command.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Container, Iterable
from typing import Any, NamedTuple

from mfcd.errors import InvalidArgument, NotFound

ANY_SOURCE = "*"  # the source of an ASM join
# (interface, group, source or ANY_SOURCE), addresses in canonical text form.
JoinKey = tuple[str, str, str]
MAX_EXPANSION = 1024  # joins one command (or one batch line) may expand to
ORIGIN_API = "api"
ORIGIN_CONFIG = "config"
MRDISC_INTERVAL = 20  # seconds between Multicast Router Advertisements (RFC 4286's default)
MRDISC_RANGE = (4, 180)  # RFC 4286's MaxAdvertisementInterval bounds


class Join(NamedTuple):
    """Join a group on an interface (idempotent)."""

    key: JoinKey
    origin: str = ORIGIN_API


class Leave(NamedTuple):
    """Leave a group joined before (not_found if it was not)."""

    key: JoinKey


class SetMrdisc(NamedTuple):
    """Send (or stop sending) Multicast Router Advertisements on an interface (RFC 4286)."""

    interface: str
    on: bool


class MembershipOp(NamedTuple):
    """One kernel call: join (True) or leave (False) `key`'s group on the interface `ifindex`."""

    join: bool
    key: JoinKey
    ifindex: int

    @property
    def inverse(self) -> MembershipOp:
        return MembershipOp(not self.join, self.key, self.ifindex)


class JoinStatus(NamedTuple):
    state: str  # joined | pending
    reason: str  # empty when joined


def family_of(key: JoinKey) -> int:
    return 6 if ":" in key[1] else 4


def sort_key(key: JoinKey) -> tuple[str, int, bytes, int, bytes]:
    """Order for show: interface, family, group, then ASM before the sources in address order."""
    group = ipaddress.ip_address(key[1])
    source = b"" if key[2] == ANY_SOURCE else ipaddress.ip_address(key[2]).packed
    return (key[0], group.version, group.packed, len(source), source)


_MISSING: Any = object()


class Joins:
    """The joins wanted, with the interface index each joined one is held on in the kernel."""

    def __init__(self) -> None:
        self.wanted: dict[JoinKey, str] = {}  # join -> origin
        self.joined: dict[JoinKey, int] = {}  # joins the kernel holds: join -> ifindex
        self.refused: dict[JoinKey, str] = {}  # pending because the kernel refused: why
        self.mrdisc: dict[str, None] = {}  # interfaces that send router advertisements
        self._undo: list[tuple[dict[Any, Any], Any, Any]] | None = None

    # --- transactions ----------------------------------------------------------------------------

    def begin(self) -> None:
        if self._undo is not None:
            raise RuntimeError("transaction already open")
        self._undo = []

    def commit(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        undo = self._undo or []
        while undo:
            d, key, old = undo.pop()
            if old is _MISSING:
                d.pop(key, None)
            else:
                d[key] = old
        self._undo = None

    def changed(self) -> bool:
        return bool(self._undo)

    def _set(self, d: dict[Any, Any], key: Any, value: Any) -> None:
        if self._undo is None:
            raise RuntimeError("join changes need an open transaction")
        if d.get(key, _MISSING) is value:
            return
        self._undo.append((d, key, d.get(key, _MISSING)))
        d[key] = value

    def _pop(self, d: dict[Any, Any], key: Any) -> None:
        if self._undo is None:
            raise RuntimeError("join changes need an open transaction")
        if key in d:
            self._undo.append((d, key, d.pop(key)))

    # --- changes ---------------------------------------------------------------------------------

    def join(self, key: JoinKey, origin: str, links: dict[str, int]) -> list[MembershipOp]:
        """Want a join; join it now if its interface exists. Joining again changes nothing,
        except that the config files take over a join the API made (origin "config")."""
        if key in self.wanted:
            if origin == ORIGIN_CONFIG and self.wanted[key] != origin:
                self._set(self.wanted, key, origin)
            return []
        self._set(self.wanted, key, origin)
        ifindex = links.get(key[0])
        if ifindex is None:
            return []
        self._set(self.joined, key, ifindex)
        return [MembershipOp(True, key, ifindex)]

    def leave(self, key: JoinKey) -> list[MembershipOp]:
        if key not in self.wanted:  # (in a batch too: the SSM hint of not_joined)
            raise not_joined([key], self.wanted, describe_key(key))
        self._pop(self.wanted, key)
        self._pop(self.refused, key)
        ifindex = self.joined.get(key)
        if ifindex is None:
            return []
        self._pop(self.joined, key)
        return [MembershipOp(False, key, ifindex)]

    def set_mrdisc(self, interface: str, on: bool) -> None:
        if on:
            self._set(self.mrdisc, interface, None)
        else:
            self._pop(self.mrdisc, interface)

    def link_up(self, interface: str, ifindex: int) -> list[MembershipOp]:
        """An interface exists (new, re-created or renamed to this name): join what waits for
        it. A membership still held on an older device of that name is left first."""
        ops = []
        for key in self.on(interface):
            held = self.joined.get(key)
            if held == ifindex:
                continue
            if held is not None:
                ops.append(MembershipOp(False, key, held))
            self._set(self.joined, key, ifindex)
            self._pop(self.refused, key)
            ops.append(MembershipOp(True, key, ifindex))
        return ops

    def link_down(self, interface: str) -> list[MembershipOp]:
        """An interface is gone (or renamed away): its joins wait for it again. The leaves let
        go of the sockets' records of the old device (the kernel keeps them, and they count
        toward a socket's limit); they may fail harmlessly."""
        ops = []
        for key in self.on(interface):
            held = self.joined.get(key)
            if held is not None:
                self._pop(self.joined, key)
                ops.append(MembershipOp(False, key, held))
        return ops

    def retry(self, links: dict[str, int]) -> list[MembershipOp]:
        """Join again what the kernel refused, on the interfaces that exist."""
        ops = []
        for key in list(self.refused):
            ifindex = links.get(key[0])
            if ifindex is not None:
                self._pop(self.refused, key)
                self._set(self.joined, key, ifindex)
                ops.append(MembershipOp(True, key, ifindex))
        return ops

    def refresh(self, interface: str) -> list[MembershipOp]:
        """Leave and join again the SSM groups joined on an interface (nothing changes here)."""
        return self.rejoin(self.on(interface))

    def ssm_joined(self, interfaces: Container[str]) -> list[tuple[JoinKey, int]]:
        """The SSM joins held on `interfaces`, with the ifindex of each."""
        return [
            (key, ifindex)
            for key, ifindex in self.joined.items()
            if key[2] != ANY_SOURCE and key[0] in interfaces
        ]

    def rejoin(self, keys: Iterable[JoinKey]) -> list[MembershipOp]:
        """Leave and join again those of the SSM joins `keys` still held (nothing changes
        here): the kernel lost their source, or may have (refresh)."""
        ops = []
        for key in keys:
            ifindex = self.joined.get(key)
            if ifindex is not None and key[2] != ANY_SOURCE:
                ops += [MembershipOp(False, key, ifindex), MembershipOp(True, key, ifindex)]
        return ops

    def ssm_interfaces(self) -> set[str]:
        """The interfaces with SSM groups joined."""
        return {key[0] for key in self.joined if key[2] != ANY_SOURCE}

    def park(self, key: JoinKey, reason: str) -> None:
        """Keep a join the kernel refused as pending, with the reason."""
        self._pop(self.joined, key)
        self._set(self.refused, key, reason)

    # --- queries ---------------------------------------------------------------------------------

    def on(self, interface: str) -> list[JoinKey]:
        return [key for key in self.wanted if key[0] == interface]

    def origin(self, key: JoinKey) -> str:
        return self.wanted[key]

    def status(self, key: JoinKey) -> JoinStatus:
        if key in self.joined:
            return JoinStatus("joined", "")
        if key in self.refused:
            return JoinStatus("pending", self.refused[key])
        return JoinStatus("pending", f"waiting for {key[0]}")

    def saved(self) -> list[list[str]]:
        """The joins a state file keeps: those of the API (config ones come from the file)."""
        return [list(key) for key, origin in self.wanted.items() if origin == ORIGIN_API]


class Retries:
    """When the refused joins are tried again, at the turns of a periodic check: at every turn
    while new refusals come or a retry joins some, then every 2, 4, ... turns up to `most`
    while the kernel refuses them all (each retry of thousands is as many system calls)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.every = 1  # turns between two retries
        self.left = 0  # turns to let pass before the next
        self.known: set[JoinKey] = set()  # the refused joins at the last turn

    def due(self, refused: Collection[JoinKey]) -> bool:
        """Whether this turn retries, `refused` being the joins refused now."""
        if not self.known.issuperset(refused):
            self.every, self.left = 1, 0  # (a new refusal: its cause may pass soon)
        self.known = set(refused)
        if not refused:
            return False
        if self.left:
            self.left -= 1
            return False
        return True

    def tried(self, joined: int) -> None:
        """A retry is over, having joined `joined` of them."""
        self.every = 1 if joined else min(2 * self.every, self.most)
        self.left = self.every - 1


def describe_key(key: JoinKey) -> str:
    interface, group, source = key
    what = f"group {group}" if source == ANY_SOURCE else f"source {source} group {group}"
    return f"{what} on {interface}"


def leaving(
    keys: list[JoinKey], joined: Collection[JoinKey], named: str
) -> tuple[list[JoinKey], list[JoinKey]]:
    """Of the joins a leave names (`named`: as the command gave them), those joined, to
    leave, and those not (a group of a prefix left before): leaving a prefix leaves what
    is still joined of it. None joined is not_found (see not_joined)."""
    left = [key for key in keys if key not in joined]
    if len(left) == len(keys):
        raise not_joined(keys, joined, named)
    if not left:
        return keys, []
    return [key for key in keys if key in joined], left


def not_joined(keys: list[JoinKey], joined: Iterable[JoinKey], named: str) -> NotFound:
    """The error of a leave none of whose joins is joined; when its group is joined on the
    interface for other sources (an SSM join left without --source, or the reverse), it
    says which and how to leave them, rather than leaving them (a leave names what it
    leaves, as smcroute's does)."""
    interface, asked = keys[0][0], {key[2] for key in keys}
    named_groups = {key[1] for key in keys}
    others = sorted(
        (k for k in joined if k[0] == interface and k[1] in named_groups and k[2] not in asked),
        key=sort_key,
    )
    message = f"{named} was not joined"
    if not others:
        return NotFound(message, field="group")
    if asked == {ANY_SOURCE}:
        message += " for any source"
    sources = list(dict.fromkeys(k[2] for k in others))  # (ASM first, then by address)
    ssm = [s for s in sources if s != ANY_SOURCE]
    if not ssm:
        how = "for any source: leave it without --source"
    elif sources == ssm and len(ssm) == 1:
        how = f"for source {ssm[0]} only (SSM): leave it with --source {ssm[0]}"
    else:
        more = f" and {len(ssm) - 3} more" if len(ssm) > 3 else ""
        listed = f"source{'s' if len(ssm) > 1 else ''} {', '.join(ssm[:3])}{more}"
        listed = f"any source and {listed}" if ANY_SOURCE in sources else listed
        how = (
            f"for {listed}: leave each with --source SOURCE (any source: without"
            " --source); mfcctl show groups lists them"
        )
    return NotFound(f"{message}; it is joined {how}", field="source")


# --- arguments ---------------------------------------------------------------------------------


def _addresses(
    text: Any, field: str, limit: int
) -> list[ipaddress.IPv4Address] | list[ipaddress.IPv6Address]:
    """An address, or every address of a prefix (`239.1.1.0/28`), refusing more than `limit`."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"{field} must be an address or a prefix (a string)", field=field)
    try:
        if "/" not in text:
            address = ipaddress.ip_address(text)
            if getattr(address, "scope_id", None) is not None:  # (Python 3.9+ takes "%zone")
                raise ValueError("a zone index has no place here: --interface says where")
            return [address]  # type: ignore[return-value]
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise InvalidArgument(
            f"{field} {text!r} is not an address or a prefix such as 239.1.1.0/28 ({e})",
            field=field,
        ) from None
    if net.num_addresses > limit:
        raise InvalidArgument(
            f"{field} {text} holds {net.num_addresses} addresses; one command joins at most"
            f" {MAX_EXPANSION} groups and sources: split it into smaller prefixes",
            field=field,
        )
    return list(net)  # type: ignore[return-value]


def _check_group(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if not address.is_multicast:
        net = "224.0.0.0/4" if address.version == 4 else "ff00::/8"
        raise InvalidArgument(f"group {address} is not a multicast address ({net})", "group")
    if address.version == 4 and address.packed[:3] == b"\xe0\x00\x00":
        raise InvalidArgument(
            f"group {address} is link-local (224.0.0.0/24): never routed, nothing to pull in",
            "group",
        )
    if address.version == 6 and address.packed[1] & 0x0F <= 2:
        what = {0: "reserved", 1: "interface-local", 2: "link-local"}[address.packed[1] & 0x0F]
        raise InvalidArgument(
            f"group {address} has {what} scope: never routed, nothing to pull in", "group"
        )


def _check_source(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise InvalidArgument(
            f"source {address} is not a unicast sender's address; leave --source out to"
            " join the group for any source",
            "source",
        )


def join_keys(interface: str, group: Any, source: Any = None) -> list[JoinKey]:
    """The joins one command names: every group of `group` for every source of `source`
    (None or "*": any source); refuses more than MAX_EXPANSION."""
    groups = _addresses(group, "group", MAX_EXPANSION)
    for address in groups:
        _check_group(address)
    if source is None or source == ANY_SOURCE:
        return [(interface, str(g), ANY_SOURCE) for g in groups]
    sources = _addresses(source, "source", MAX_EXPANSION)
    if sources[0].version != groups[0].version:
        raise InvalidArgument(
            f"source {source} and group {group} are of different address families", "source"
        )
    total = len(groups) * len(sources)
    if total > MAX_EXPANSION:
        raise InvalidArgument(
            f"{len(groups)} groups times {len(sources)} sources is {total} joins; one command"
            f" joins at most {MAX_EXPANSION}: split it up",
            field="group",
        )
    for address in sources:
        _check_source(address)
    return [(interface, str(g), str(s)) for g in groups for s in sources]
