"""Root-only checks of mfcd.kernel.Kernel (the real data plane) in private network namespaces.

Python 3.11 has no os.setns, so each check runs as a child `ip netns exec NS python3 -c ...`
that imports mfcd from src/ and prints JSON; the namespaces are always deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

SRC = str(Path(__file__).resolve().parents[2] / "src")
PRELUDE = textwrap.dedent(
    """
    import json, socket, subprocess
    from mfcd.errors import KernelError
    from mfcd.kernel import Kernel
    from mfcd.model import AddMfc, AddVif, DelMfc, DelVif
    r0, r1 = socket.if_nametoindex("r0"), socket.if_nametoindex("r1")
    def mroute(family, *table):
        return subprocess.run(["ip", family, "mroute", "show", *table], capture_output=True,
                              text=True, check=True).stdout
    """
)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mfcdtest-k-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip = ["ip", "-n", name, "link"]
        subprocess.run([*ip, "add", "r0", "type", "veth", "peer", "name", "r1"], check=True)
        for dev in ("r0", "r1", "lo"):
            subprocess.run([*ip, "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_py(ns: str, code: str) -> Any:
    """Run PRELUDE + code in `ns`; return the JSON value of its `out`."""
    script = PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_an_op_naming_another_table_opens_it_and_close_table_empties_it(netns: str) -> None:
    out = run_py(
        netns,
        """
        k = Kernel([4, 6])
        out = {}
        ops = [AddVif(4, 0, "r0", r0, 1, 100), AddVif(4, 1, "r1", r1, 1, 100),
               AddMfc(4, "198.18.0.2", "239.5.0.1", 0, ((1, 1),), 100),
               AddVif(6, 0, "r0", r0, 1, 200), AddVif(6, 1, "r1", r1, 1, 200),
               AddMfc(6, "2001:db8::2", "ff3e::5:1", 0, ((1, 1),), 200)]
        k.apply(ops)
        out["tables"] = sorted(k.sockets)
        out["shown4"] = mroute("-4", "table", "100")
        out["shown6"] = mroute("-6", "table", "200")
        out["default4"] = mroute("-4")
        c = k.counters(4, 100, [("198.18.0.2", "239.5.0.1"), ("198.18.0.2", "239.5.0.9")], [1, 5])
        out["counters"] = [c.entries[0] is not None, c.entries[1], c.vifs[0] is not None, c.vifs[1]]
        out["in_default"] = k.counters(4, 253, [("198.18.0.2", "239.5.0.1")]).entries
        out["observe"] = [sorted(k.observe(4, 253).vifs), k.observe(6, 254).entries]
        seen = k.observe(4, 100)
        out["vifs100"] = {i: [v.device, v.ifindex == (r0, r1)[i]] for i, v in seen.vifs.items()}
        out["entries100"] = {f"{s},{g}": [e.iif == r0, e.oifs == {r1: 1}]
                             for (s, g), e in seen.entries.items()}
        seen = k.observe(6, 200)  # MIFs probed: counters, no device
        out["vifs200"] = {i: [v.device, v.ifindex] for i, v in seen.vifs.items()}
        out["entries200"] = {f"{s},{g}": [e.iif == r0, e.oifs == {r1: 1}]
                             for (s, g), e in seen.entries.items()}
        k.apply([DelVif(6, 0, "r0", 200)])
        out["vifs200_left"] = sorted(k.observe(6, 200, entries=False).vifs)
        k.close_table(4, 100)
        k.close_table(6, 200)
        out["after"] = [mroute("-4", "table", "100"), mroute("-6", "table", "200")]
        out["left"] = sorted(k.sockets)
        k.close()
        """,
    )
    assert out["tables"] == [[4, 100], [4, 253], [6, 200], [6, 254]]
    assert "(198.18.0.2,239.5.0.1)" in out["shown4"].replace(" ", "")
    assert "(2001:db8::2,ff3e::5:1)" in out["shown6"].replace(" ", "")
    assert "239.5.0.1" not in out["default4"]
    assert out["counters"] == [True, None, True, None]
    assert out["in_default"] == [None]  # SIOCGETSGCNT is per table
    assert out["observe"] == [[], {}]
    assert out["vifs100"] == {"0": ["r0", True], "1": ["r1", True]}  # netlink VIF dump
    assert out["entries100"] == {"198.18.0.2,239.5.0.1": [True, True]}
    assert out["vifs200"] == {"0": [None, None], "1": [None, None]}
    assert out["entries200"] == {"2001:db8::2,ff3e::5:1": [True, True]}
    assert out["vifs200_left"] == [1]
    assert out["after"] == ["", ""]
    assert out["left"] == [[4, 253], [6, 254]]


def test_a_refused_op_reports_how_many_went_in_and_a_disabled_family_is_refused(
    netns: str,
) -> None:
    out = run_py(
        netns,
        """
        k = Kernel([4])
        out = {}
        try:
            k.apply([AddVif(4, 0, "r0", r0, 1, 253), AddVif(4, 1, "r1", r1, 1, 253),
                     DelMfc(4, "198.18.0.2", "239.5.0.1", 253), AddVif(4, 2, "r1", r1, 1, 253)])
        except KernelError as e:
            out["refused"] = [e.operation, e.errno, e.applied]
        out["vifs"] = sorted(k.observe(4, 253).vifs)  # no undo in the data plane
        try:
            k.apply([AddVif(6, 0, "r0", r0, 1, 254)])
        except KernelError as e:
            out["v6"] = [str(e), e.applied]
        k.close()
        """,
    )
    assert out["refused"] == ["MRT_DEL_MFC", 2, 2]  # ENOENT after two VIFs went in
    assert out["vifs"] == [0, 1]
    assert out["v6"] == ["IPv6 is disabled in the configuration", 0]


def test_single_route_ops_write_what_a_run_of_them_writes(netns: str) -> None:
    """One AddMfc applied alone (the single change's path: an open table looked up, its
    IPv4 thresholds packed once per oif set) writes the entry a run writes, in IPv4 and
    IPv6, in the default table and another, for an oif set seen first and again; a route
    refused alone is refused with nothing applied."""
    out = run_py(
        netns,
        """
        from mfcd.model import AddMfcRun
        k = Kernel([4, 6])
        out = {}
        for family, table in ((4, 253), (4, 100), (6, 254)):
            k.apply([AddVif(family, 0, "r0", r0, 1, table), AddVif(family, 1, "r1", r1, 3, table)])
        def entries(family, table):
            return {sg: (e.iif, e.oifs) for sg, e in k.observe(family, table).entries.items()}
        for family, table, source, groups in (
            (4, 253, "198.18.0.2", ["239.5.0.%d" % n for n in (1, 2, 3)]),
            (4, 100, "198.18.0.2", ["239.5.0.%d" % n for n in (1, 2, 3)]),
            (6, 254, "2001:db8::2", ["ff3e::5:%d" % n for n in (1, 2, 3)]),
        ):
            oifs = ((1, 7),)
            for group in groups:  # one at a time, as single changes come
                k.apply((AddMfc(family, source, group, 0, oifs, table),))
            alone = entries(family, table)
            for group in groups:
                k.apply((DelMfc(family, source, group, table),))
            keys = tuple((family, source, group, table) for group in groups)
            k.apply([AddMfcRun(family, table, 0, oifs, keys)])
            run = entries(family, table)
            out[f"{family}/{table}"] = [sorted(alone.items()) == sorted(run.items()), len(alone)]
        try:  # a parent >= MAXVIFS
            k.apply((AddMfc(4, "198.18.0.2", "239.5.0.9", 40, ((1, 1),), 253),))
        except KernelError as e:
            out["refused"] = [e.operation, e.applied]
        k.close()
        """,
    )
    assert out == {
        "4/253": [True, 3],
        "4/100": [True, 3],
        "6/254": [True, 3],
        "refused": ["MRT_ADD_MFC", 0],
    }


def test_a_table_kept_by_one_kernel_is_adopted_by_the_next_and_others_released(netns: str) -> None:
    out = run_py(
        netns,
        """
        import os
        class Keeper:  # systemd's fd store: a duplicate of each fd kept, by name
            def __init__(self):
                self.held, self.log = [], []
            def keep(self, name, fd):
                self.held.append((name, os.dup(fd)))
                self.log.append(["keep", name])
                return True
            def drop(self, name):
                self.log.append(["drop", name])
                for n, fd in self.held:
                    if n == name:
                        os.close(fd)
                self.held = [(n, fd) for n, fd in self.held if n != name]
        veth = ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"]
        subprocess.run(veth, check=True)
        subprocess.run(["ip", "link", "set", "d0", "up"], check=True)
        d0 = socket.if_nametoindex("d0")
        keeper, out = Keeper(), {}
        k = Kernel([4, 6], keeper=keeper)
        k.apply([AddVif(4, 0, "r0", r0, 1, 253), AddVif(4, 1, "r1", r1, 1, 253),
                 AddMfc(4, "198.18.0.2", "239.5.0.1", 0, ((1, 1),), 253),
                 AddVif(6, 0, "r0", r0, 1, 254), AddVif(6, 1, "r1", r1, 1, 254),
                 AddMfc(6, "2001:db8::2", "ff3e::5:1", 0, ((1, 1),), 254),
                 AddVif(4, 0, "r0", r0, 1, 100)])
        k.close_table(4, 100)
        out["first"] = keeper.log
        k.close()  # stored: no MRT_DONE, the keeper's copies hold the tables
        out["after_close"] = [mroute("-4"), mroute("-6")]
        plain = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        passed = [(os.dup(plain.fileno()), "mrt4-100"), (os.dup(udp.fileno()), "mrt4-253"),
                  (os.dup(udp.fileno()), "unknown")]
        passed += [(os.dup(fd), name) for name, fd in keeper.held]
        keeper.log = []
        k2 = Kernel([4], keeper=keeper, passed=passed)  # IPv6 disabled now
        out["second"] = keeper.log
        out["adopted"] = k2.adopted
        out["kept"] = sorted(k2.sockets[(4, 253)].kept.items())
        out["v6_released"] = mroute("-6")
        # The VIF on its device stays (no EADDRINUSE), the one at 1 is replaced by d0.
        k2.apply([AddVif(4, 0, "r0", r0, 1, 253), AddVif(4, 1, "d0", d0, 1, 253),
                  AddMfc(4, "198.18.0.2", "239.5.0.1", 0, ((1, 1),), 253)])
        out["vifs"] = {i: v.device for i, v in k2.observe(4, 253, entries=False).vifs.items()}
        out["entry"] = mroute("-4")
        k2.close()
        out["after_k2"] = mroute("-4")
        for _, fd in keeper.held:
            os.close(fd)
        out["after_store"] = mroute("-4")
        out["r"] = [r0, r1]
        """,
    )
    r0, r1 = out["r"]
    assert out["first"] == [
        ["keep", "mrt4-253"],
        ["keep", "mrt6-254"],
        ["keep", "mrt4-100"],
        ["drop", "mrt4-100"],
    ]
    assert "239.5.0.1" in out["after_close"][0] and "ff3e::5:1" in out["after_close"][1]
    # The plain raw socket owns no table, the UDP one is no raw socket, "unknown" is no name
    # of mfcd's, IPv6 is disabled: each released (dropped); mrt4-253 adopted, kept again
    # as the UDP socket's drop took its name out of the store.
    assert out["second"] == [
        ["drop", "mrt4-100"],
        ["drop", "mrt4-253"],
        ["drop", "unknown"],
        ["drop", "mrt6-254"],
        ["keep", "mrt4-253"],
    ]
    assert out["adopted"] == [[4, 253]]
    assert out["kept"] == [[0, r0], [1, r1]]
    assert out["v6_released"].strip() == ""  # MRT_DONE on the released IPv6 table
    assert out["vifs"] == {"0": "r0", "1": "d0"}
    assert "239.5.0.1" in out["entry"]
    assert "239.5.0.1" in out["after_k2"]  # k2 stored it too: its close leaves the table
    assert out["after_store"].strip() == ""  # the store's close, the last: flushed


def test_an_adopted_ipv6_table_other_than_the_default_gets_its_mifs_added_again(netns: str) -> None:
    # The kernel names no device for such a MIF: it cannot be kept, so it is deleted and
    # added again (the entries through it then written again, as the restore does).
    out = run_py(
        netns,
        """
        import os
        class Keeper:
            held = {}
            def keep(self, name, fd):
                self.held[name] = os.dup(fd)
                return True
            def drop(self, name):
                os.close(self.held.pop(name))
        keeper, out = Keeper(), {}
        k = Kernel([6], keeper=keeper)
        k.apply([AddVif(6, 0, "r0", r0, 1, 200), AddVif(6, 1, "r1", r1, 1, 200),
                 AddMfc(6, "2001:db8::2", "ff3e::5:1", 0, ((1, 1),), 200)])
        k.close()
        k2 = Kernel([6], keeper=keeper, passed=[(os.dup(fd), n) for n, fd in keeper.held.items()])
        out["adopted"] = k2.adopted
        out["kept"] = sorted(k2.sockets[(6, 200)].kept.items())
        k2.apply([AddVif(6, 0, "r0", r0, 1, 200), AddVif(6, 1, "r1", r1, 1, 200),
                  AddMfc(6, "2001:db8::2", "ff3e::5:1", 0, ((1, 1),), 200)])
        out["mifs"] = sorted(k2.observe(6, 200, entries=False).vifs)
        out["entry"] = mroute("-6", "table", "200")
        k2.close_table(6, 200)
        out["held"] = sorted(keeper.held)
        k2.close()
        for fd in keeper.held.values():
            os.close(fd)
        """,
    )
    assert out["adopted"] == [[6, 254], [6, 200]] or out["adopted"] == [[6, 200], [6, 254]]
    assert out["kept"] == [[0, None], [1, None]]
    assert out["mifs"] == [0, 1]
    assert "ff3e::5:1" in out["entry"] and "r1" in out["entry"]
    assert out["held"] == ["mrt6-254"]  # close_table dropped mrt6-200 from the store
