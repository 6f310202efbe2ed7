"""Multicast router discovery, the pure parts: messages, checksum, schedule, the setting."""

from __future__ import annotations

import itertools
import random
import struct

import pytest

from mfcd import config, mrdisc
from mfcd.errors import ConfigError


def test_an_advertisement_is_rfc_4286s_eight_bytes() -> None:
    packet = mrdisc.message(mrdisc.ADVERTISEMENT, 20)
    assert len(packet) == 8
    assert packet[0] == 0x30 and packet[1] == 20 and packet[4:] == bytes(4)
    assert mrdisc.checksum(packet) == 0  # a correct checksum sums to all ones
    assert mrdisc.message(mrdisc.SOLICITATION, 20)[:2] == b"\x31\x00"
    assert mrdisc.message(mrdisc.TERMINATION)[:2] == b"\x32\x00"


def test_the_checksum_is_rfc_1071s() -> None:
    # The example of RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (after the
    # carry), whose complement is 220d.
    assert mrdisc.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert mrdisc.checksum(b"\x01") == ~0x0100 & 0xFFFF  # an odd length is padded


def ip_packet(payload: bytes, options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 0, 0, 0, 1, 2, 0, bytes(4), bytes(4))
    return header + options + payload


def test_solicitations_are_recognised_with_or_without_ip_options() -> None:
    solicit = mrdisc.message(mrdisc.SOLICITATION)
    assert mrdisc.solicitation_in(ip_packet(solicit))
    assert mrdisc.solicitation_in(ip_packet(solicit, mrdisc.ROUTER_ALERT))
    assert not mrdisc.solicitation_in(ip_packet(mrdisc.message(mrdisc.ADVERTISEMENT, 20)))
    assert not mrdisc.solicitation_in(b"\x45" + bytes(10))


def test_the_schedule() -> None:
    rng = random.Random(7)
    delays = mrdisc.initial_delays(rng)
    assert len(delays) == mrdisc.MAX_INITIAL == 3 and delays[0] == 0.0
    assert all(0 <= b - a <= 2.0 for a, b in itertools.pairwise(delays))
    for _ in range(100):
        assert 19.5 <= mrdisc.next_delay(20, rng) <= 20


@pytest.mark.parametrize("value", ["3", "181", "4.5", "true"])
def test_mrdisc_interval_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="mrdisc_interval"):
        config.parse(f"mrdisc_interval = {value}\n")
    assert config.parse("mrdisc_interval = 4\n").mrdisc_interval == 4
    assert config.Config().mrdisc_interval == 20
