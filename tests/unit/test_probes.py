"""Tests for the pure parts of mfcd.probes: the packet filter, header parsing, samples."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import socket
import struct
from typing import Any

import pytest

from mfcd import netlink, probes
from mfcd.controller import Controller
from mfcd.dataplane import execute
from mfcd.diagnosis import Intent, KernelEntry, Query, Rules
from mfcd.model import AddRoute, AddTemplate, Ports, Route
from mfcd.netlink import MRule
from mfcd.probes import Packet
from tests.unit.conftest import FakeKernel, FakeState, router_with_links, run
from tests.unit.test_diagnosis import INTENT

SOURCE, GROUP = "198.18.0.2", "239.3.0.78"


def run_bpf(program: list[tuple[int, int, int, int]], packet: bytes) -> int:
    """Classic BPF as the kernel runs the three instructions bpf_program uses."""
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == probes._LD_W_ABS:
            if k + 4 > len(packet):
                return 0  # the kernel drops a packet a load runs past
            acc = struct.unpack_from("!I", packet, k)[0]
            pc += 1
        elif code == probes._JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == probes._RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def ipv4(source: str, group: str, ttl: int) -> bytes:
    header = bytearray(20)
    header[0], header[8], header[9] = 0x45, ttl, 17
    header[12:16] = socket.inet_aton(source)
    header[16:20] = socket.inet_aton(group)
    return bytes(header) + b"payload"


def ipv6(source: str, group: str, hops: int) -> bytes:
    header = bytearray(40)
    header[0], header[6], header[7] = 0x60, 17, hops
    header[8:24] = socket.inet_pton(socket.AF_INET6, source)
    header[24:40] = socket.inet_pton(socket.AF_INET6, group)
    return bytes(header)


@pytest.mark.parametrize(
    ("source", "packet", "accepted"),
    [
        ("198.18.0.2", ipv4("198.18.0.2", "239.1.1.1", 8), True),
        ("198.18.0.2", ipv4("198.18.0.3", "239.1.1.1", 8), False),
        ("198.18.0.2", ipv4("198.18.0.2", "239.1.1.2", 8), False),
        (None, ipv4("198.18.0.3", "239.1.1.1", 8), True),
        (None, ipv4("198.18.0.3", "239.1.1.9", 8), False),
        ("198.18.0.2", b"\x45" * 10, False),
    ],
)
def test_ipv4_filter(source: str | None, packet: bytes, accepted: bool) -> None:
    program = probes.bpf_program(4, "239.1.1.1", source)
    assert (run_bpf(program, packet) == probes.SNAP) == accepted
    assert run_bpf(program, packet) in (0, probes.SNAP)


@pytest.mark.parametrize(
    ("source", "packet", "accepted"),
    [
        ("2001:db8::2", ipv6("2001:db8::2", "ff3e::1", 8), True),
        ("2001:db8::2", ipv6("2001:db8::3", "ff3e::1", 8), False),
        ("2001:db8::2", ipv6("2001:db8::2", "ff3e::1:1", 8), False),
        (None, ipv6("2001:db8::7", "ff3e::1", 8), True),
        # Differs only in the last word of the source: every word is compared.
        ("2001:db8::2", ipv6("2001:db8::1:0:0:2", "ff3e::1", 8), False),
    ],
)
def test_ipv6_filter(source: str | None, packet: bytes, accepted: bool) -> None:
    program = probes.bpf_program(6, "ff3e::1", source)
    assert (run_bpf(program, packet) == probes.SNAP) == accepted


def test_parse_packet() -> None:
    assert probes.parse_packet(4, ipv4("198.18.0.2", "239.1.1.1", 1)) == ("198.18.0.2", 1)
    assert probes.parse_packet(6, ipv6("2001:db8::2", "ff3e::1", 64)) == ("2001:db8::2", 64)
    assert probes.parse_packet(4, b"short") is None
    assert probes.parse_packet(6, ipv4("198.18.0.2", "239.1.1.1", 1)) is None


def test_sample_of_keeps_one_source_by_interface() -> None:
    packets = [
        Packet("r0", "198.18.0.2", 8),
        Packet("r0", "198.18.0.2", 7),
        Packet("r2", "198.18.0.2", 1),
        Packet("r0", "198.18.0.9", 3),
    ]
    sample = probes.sample_of(packets, "198.18.0.2", 2.0)
    assert sample.arrivals == {"r0": 2, "r2": 1}
    assert sample.ttls == {"r0": (8, 7), "r2": (1,)}
    assert sample.error == ""


@pytest.mark.parametrize(
    ("source", "arrivals"),
    [
        ("*", {"r0": 3, "r1": 1}),
        ("198.18.0.0/24", {"r0": 2}),
        ("2001:db8::/32", {"r1": 1}),
    ],
)
def test_sample_of_a_template_prefix_keeps_its_sources(
    source: str, arrivals: dict[str, int]
) -> None:
    packets = [
        Packet("r0", "198.18.0.2", 8),
        Packet("r0", "198.18.0.9", 7),
        Packet("r0", "198.19.0.2", 6),
        Packet("r1", "2001:db8::2", 5),
    ]
    assert probes.sample_of(packets, source, 2.0).arrivals == arrivals


def test_read_rules_names_the_looked_up_tables_the_kernel_does_not_have(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules = [
        MRule(50, "lookup", 77, iif="r0"),
        MRule(60, "lookup", 100, iif="r0"),
        MRule(70, "lookup", 0, l3mdev=True),
        MRule(32767, "lookup", 253),
    ]
    asked: list[tuple[int, int]] = []

    def table_exists(family: int, table: int) -> bool:
        asked.append((family, table))
        return table == 100

    monkeypatch.setattr(netlink, "dump_mrules", lambda family: rules)
    monkeypatch.setattr(netlink, "table_exists", table_exists)
    # (an l3mdev rule: which interfaces are in a VRF is read too)
    monkeypatch.setattr(netlink, "dump_vrf_members", lambda: frozenset({"r9"}))
    assert probes.read_rules(4) == Rules(
        tuple(rules), missing=frozenset({77}), in_vrf=frozenset({"r9"})
    )
    # Not the default table (always there), nor an l3mdev rule's (no table of its own).
    assert sorted(asked) == [(4, 77), (4, 100)]

    def refused(family: int, table: int) -> bool:
        raise netlink.NetlinkError(errno.EPERM, "table lookup")

    monkeypatch.setattr(netlink, "table_exists", refused)
    result = probes.read_rules(4)
    assert result.rules == () and result.error.startswith("cannot tell which of their tables")


def test_read_rules_reads_vrf_members_only_for_an_l3mdev_rule_and_says_when_it_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused() -> frozenset[str]:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(netlink, "table_exists", lambda family, table: True)
    monkeypatch.setattr(netlink, "dump_vrf_members", refused)
    plain = [MRule(32767, "lookup", 253)]
    monkeypatch.setattr(netlink, "dump_mrules", lambda family: plain)
    assert probes.read_rules(4) == Rules(tuple(plain))  # (no dump of the links at all)
    vrf = [MRule(1000, "lookup", 0, l3mdev=True), *plain]
    monkeypatch.setattr(netlink, "dump_mrules", lambda family: vrf)
    assert probes.read_rules(4) == Rules(tuple(vrf), in_vrf=None)  # not known: said so


def test_fed_says_what_mfcd_has_on_the_iif_in_the_other_tables() -> None:
    """diagnose's mrule fix that takes an iif's traffic from a table says what mfcd has
    there (trial 14 F7): the routes the iif's VIF carries and the templates on the iif."""
    router = router_with_links("r0", "r1", "r2")
    run(router, router.add_route, Route(4, "198.18.1.2", "239.1.1.1", "r1", ("r2",), 100))
    run(router, router.add_route, Route(4, "198.18.1.2", "239.1.1.2", "r1", ("r2",), 100))
    run(router, router.add_template, (4, "*", "239.2.0.0/16", 100, "r1"), Ports("r1", ("r2",)))
    run(router, router.add_route, Route(4, "198.18.1.2", "239.1.1.1", "r1", ("r2",), 253))
    intent = Intent("route", 4, "198.18.1.2", "239.1.1.1", 253, "r1", ("r2",), "installed", "")
    assert probes._fed(router, intent) == {100: (2, 1)}
    assert probes._fed(router, dataclasses.replace(intent, iif="r0")) == {}


# --- the kernel's entry beside mfcd's ----------------------------------------------------------


def test_the_kernels_entry_is_named_beside_mfcds_and_missing_vifs_found() -> None:

    kernel = FakeKernel()
    kernel.names = {1: "r0", 2: "r1", 3: "r2"}  # the VIFs' devices, as /proc names them
    ctl = Controller(kernel, FakeState())
    for ifindex, name in enumerate(("r0", "r1", "r2"), 1):
        ctl.link_up(name, ifindex)
    route = Route(4, INTENT.source, INTENT.group, "r0", ("r1", "r2"), 253)
    ctl.change([AddRoute.of(route)])
    router = ctl.router
    assert probes._kernel_entry(router, INTENT, kernel.observe(4, 253)) == KernelEntry(
        ("r0", ("r1", "r2")), ("r0", ("r1", "r2"))
    )
    vifs = {ifindex: v for (_, _, v), ifindex in kernel.vifs.items()}
    kernel.foreign_add(route.key, vifs[1], {vifs[2]: 1, 9: 1})  # r1 only, and a stray VIF
    del kernel.vifs[(4, 253, vifs[3])]  # r2's VIF deleted behind mfcd's back
    seen = kernel.observe(4, 253)
    assert probes._kernel_entry(router, INTENT, seen) == KernelEntry(
        ("r0", ("r1",)), ("r0", ("r1", "r2")), static=True, missing_vifs=("r2",)
    )
    assert probes._kernel_entry(router, INTENT, None) is None


def test_a_join_of_the_group_on_the_iif_counts_any_source_or_the_flows() -> None:

    assert probes._joined(INTENT, [("r0", INTENT.group, "*")])
    assert probes._joined(INTENT, [("r0", INTENT.group, INTENT.source)])
    assert not probes._joined(INTENT, [("r1", INTENT.group, "*"), ("r0", "239.9.9.9", "*")])


def test_diagnose_reads_only_tables_mfcd_holds_vifs_in_and_none_owned() -> None:
    """Reading an IPv6 table sets MRT6_TABLE, which would create a table a rule's lookup
    then sends traffic to; an owned table's entries are another router's, not drift."""
    router = router_with_links("r0", "r1", "r2")
    run(router, router.add_route, Route(6, "2001:db8::2", "ff3e::1", "r1", ("r2",), 100))
    run(router, router.add_route, Route(4, "198.18.1.2", "239.1.1.1", "r1", ("r2",), 253))
    assert probes._readable(router, 6, frozenset()) == {100}
    assert probes._readable(router, 6, frozenset({100})) == frozenset()
    assert probes._readable(router, 4, frozenset({100})) == {253}
    assert 300 not in probes._readable(router, 6, frozenset())  # (a table with no VIF)


def test_a_flow_learned_while_sampling_is_judged_learned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender that starts during diagnose's window is learned then (trial 15 F13): the
    flow is judged by its learned entry, not by the template that had learned nothing."""
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    for ifindex, name in enumerate(("r0", "r1", "r2"), 1):
        ctl.link_up(name, ifindex)
    template = (4, "*", "239.3.0.0/24", 253, "r0")
    ctl.change([AddTemplate(template, Ports("r0", ("r1", "r2")))])
    router = ctl.router
    vif = router.vif_of(4, "r0", 253)
    assert vif is not None

    def sampled(query: Query, *args: object) -> tuple[Any, ...]:
        # The first packet of the flow arrives while sampling: mfcd learns its entry.
        execute(kernel, run(router, lambda: router.learn(4, 253, SOURCE, GROUP, vif.vifi)[1]))
        packets = [Packet("r0", SOURCE, 8)] * 7
        return packets, "", {}, {}, Rules(), {}

    monkeypatch.setattr(probes, "_machine_facts", sampled)
    monkeypatch.setattr(probes, "route_back", lambda family, source: None)
    result = asyncio.run(probes.diagnose(router, kernel, Query(4, GROUP, None, None, 0.1)))
    [flow] = result["flows"]
    assert flow["route"]["source"] == SOURCE and flow["route"]["learned"]
    learned = [c for c in flow["checks"] if c["check"] == "learned"]
    assert learned == [
        {
            "check": "learned",
            "status": "passed",
            "detail": f"an entry for ({SOURCE}, {GROUP}) is learned from it",
        }
    ]
