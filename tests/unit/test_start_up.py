"""Start-up checks that need no root: capabilities, the socket group's default, messages."""

from __future__ import annotations

import errno

import pytest

from mfcd import config, daemon, kernel
from mfcd.config import Config
from mfcd.errors import ConfigError

STATUS = "Name:\tmfcd\nCapInh:\t0000000000000000\nCapEff:\t{}\nCapBnd:\t000001ffffffffff\n"


@pytest.mark.parametrize(
    ("cap_eff", "missing"),
    [
        ("000001ffffffffff", []),  # root
        ("0000000000003000", []),  # the unit: CAP_NET_ADMIN (12) and CAP_NET_RAW (13)
        ("0000000000000000", ["CAP_NET_ADMIN", "CAP_NET_RAW"]),  # an ordinary user
        ("0000000000001000", ["CAP_NET_RAW"]),
        ("0000000000002000", ["CAP_NET_ADMIN"]),
    ],
)
def test_missing_capabilities(cap_eff: str, missing: list[str]) -> None:
    assert daemon.missing_capabilities(STATUS.format(cap_eff)) == missing


def test_no_capability_line_leaves_it_to_the_kernel() -> None:
    assert daemon.missing_capabilities("Name:\tmfcd\n") == []


def test_the_socket_group_is_unset_unless_named() -> None:
    assert Config().socket_group is None
    assert config.parse('socket_group = "mfc"\n').socket_group == "mfc"
    assert config.parse('socket_group = ""\n').socket_group == ""
    args = daemon.build_parser().parse_args(["--socket-group", "netops"])
    assert config.override(Config(), socket_group=args.socket_group).socket_group == "netops"
    assert config.override(Config(), socket_group=None).socket_group is None
    with pytest.raises(ConfigError, match="socket_group must be a str"):
        config.parse("socket_group = 1\n")


def test_a_socket_the_kernel_refuses_is_one_line() -> None:
    off = kernel._explain(6, 0, errno.EAFNOSUPPORT)
    assert off == "IPv6 is turned off in this kernel (ipv6.disable=1?): set ipv6 = false"
    denied = kernel._explain(4, 0, errno.EPERM)
    assert denied.startswith("a raw socket (IPv4) not permitted: mfcd needs CAP_NET_ADMIN")


def test_a_table_the_kernel_refuses_is_named() -> None:
    owned = kernel._explain(4, kernel.MRT_INIT, errno.EADDRINUSE, 100)
    assert owned.startswith(
        "another multicast router already owns IPv4 multicast routing table 100"
    )
    default = kernel._explain(6, kernel.MRT_INIT, errno.EADDRINUSE, 254)
    assert default.startswith("another multicast router already owns the IPv6 multicast routing")
    single = kernel._explain(6, kernel.MRT_TABLE, errno.ENOPROTOOPT, 100)
    assert "CONFIG_IPV6_MROUTE_MULTIPLE_TABLES is off" in single and "\n" not in single
