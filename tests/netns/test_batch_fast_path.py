"""End to end: a batch of 2,000 routes, IPv4 (read as columns and written as runs of MFC
entries, see batchscan.pieces and Router.add_run) and IPv6 (line by line), in two tables
each, lands in the kernel whole; the same batch with one route mfcd must refuse (it would
need a 33rd VIF) once the first runs are in the kernel leaves nothing there. Lines of
several oifs (`--oifs r1,r2`, `--oifs r2 r3`) go the same way and forward to each oif."""

from __future__ import annotations

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import Mfcd
from tests.netns.kernel_tables import in_kernel

ROUTES = 500  # per family and table
TABLE = "100"
DUMMIES = [f"d{i}" for i in range(32)]  # with r0, one interface more than a table's 32 VIFs


def lines(family: int, table: str | None) -> str:
    """ROUTES usual batch lines, sources and groups all distinct."""
    tail = f" --table {table}" if table else ""
    out = []
    for n in range(ROUTES):
        if family == 4:
            source, group = f"198.18.{n >> 8}.{n & 255 or 1}", f"239.3.{n >> 8}.{n & 255}"
        else:
            source, group = f"2001:db8::{n + 1:x}", f"ff3e::3:{n:x}"
        out.append(f"mfc add --source {source} --group {group} --iif r0 --oifs r1{tail}\n")
    return "".join(out)


BATCH = lines(4, None) + lines(4, TABLE) + lines(6, None) + lines(6, TABLE)


def vifs(lab: Lab, family: int) -> list[str]:
    """The VIFs of the family's default table (/proc lists only those)."""
    name = "ip_mr_vif" if family == 4 else "ip6_mr_vif"
    done = lab.exec(lab.router, "cat", f"/proc/net/{name}")
    return done.stdout.splitlines()[1:]


@pytest.mark.lab(receivers=1)
def test_a_large_mixed_batch_lands_in_every_table(lab: Lab, mfcd: Mfcd) -> None:
    assert '"added": 2000' in mfcd.ok("batch", "-", "-o", "json", stdin=BATCH)
    counts = [in_kernel(lab, 4, "253"), in_kernel(lab, 4, TABLE)]
    counts += [in_kernel(lab, 6, "254"), in_kernel(lab, 6, TABLE)]
    assert counts == [ROUTES] * 4
    shown = lab.ip(lab.router, "-4", "mroute", "show", "table", TABLE)
    assert "(198.18.1.243,239.3.1.243)" in shown and "Iif: r0" in shown and "Oifs: r1" in shown
    assert len(mfcd.show()["routes"]) == 2000
    mfcd.stop()  # and they come back from the journal
    mfcd.start()
    assert [in_kernel(lab, 4, "253"), in_kernel(lab, 6, TABLE)] == [ROUTES, ROUTES]


@pytest.mark.lab(receivers=1)
def test_a_batch_with_one_refused_route_leaves_nothing(lab: Lab, mfcd: Mfcd) -> None:
    """The refused route comes after 2,000 others, some of them written to the kernel
    already (a chunk at a time): the kernel ends as it began, every table empty."""
    for a, b in zip(DUMMIES[::2], DUMMIES[1::2], strict=True):  # (veth pairs: no dummy module)
        lab.ip(lab.router, "link", "add", a, "type", "veth", "peer", "name", b)
        lab.ip(lab.router, "link", "set", a, "up")
        lab.ip(lab.router, "link", "set", b, "up")
    wide = ",".join(DUMMIES[:30])  # r0, r1 (the batch's) and these: the table's 32 VIFs
    refused = (
        f"mfc add --source 198.18.9.1 --group 239.4.0.1 --iif r0 --oifs {wide}\n"
        f"mfc add --source 198.18.9.2 --group 239.4.0.2 --iif r0 --oifs {DUMMIES[30]}\n"
    )
    before = [in_kernel(lab, 4, "253"), in_kernel(lab, 6, "254"), len(vifs(lab, 4))]
    result = mfcd.ctl("batch", "-", stdin=BATCH + refused)
    assert result.returncode != 0
    assert (
        "stdin:2002: cannot add 1 new IPv4 VIF (d30): only 0 of the 32 VIFs of table 253 are free"
        in result.stderr
    ), result.stderr
    assert before == [0, 0, 0]
    for family, table in ((4, "253"), (4, TABLE), (6, "254"), (6, TABLE)):
        assert in_kernel(lab, family, table) == 0, (family, table)
    assert vifs(lab, 4) == [] and vifs(lab, 6) == []
    assert mfcd.show()["routes"] == []
    # The same batch without the refused route is taken whole afterwards.
    assert '"added": 2000' in mfcd.ok("batch", "-", "-o", "json", stdin=BATCH)
    assert in_kernel(lab, 4, TABLE) == ROUTES


def several_oifs(first: int, count: int, oifs: str) -> str:
    """`count` lines of the sender's flow to groups 239.5.x.y from `first` on, on `oifs`."""
    return "".join(
        f"mfc add --source 198.18.0.2 --group 239.5.{n >> 8}.{n & 255} --iif r0 --oifs {oifs}\n"
        for n in range(first, first + count)
    )


@pytest.mark.lab(receivers=3)
def test_lines_of_several_oifs_forward_to_each_oif(lab: Lab, mfcd: Mfcd) -> None:
    """1,500 lines of two oifs, comma- then space-separated, on two sets of oifs (read as
    runs of columns): every entry in the kernel with its oifs, packets forwarded to exactly
    the oifs of their line, and the same after a restart from the journal."""
    batch = several_oifs(0, 700, "r1,r2") + several_oifs(700, 800, "r2 r3")
    assert '"added": 1500' in mfcd.ok("batch", "-", "-o", "json", stdin=batch)
    vif = {name: number for number, name in kernel_tables.vifs(lab, 4).items()}
    first, second = frozenset([vif["r1"], vif["r2"]]), frozenset([vif["r2"], vif["r3"]])
    for restarted in (False, True):
        if restarted:
            mfcd.stop()
            mfcd.start()
            vif = {name: number for number, name in kernel_tables.vifs(lab, 4).items()}
            first, second = frozenset([vif["r1"], vif["r2"]]), frozenset([vif["r2"], vif["r3"]])
        entries = kernel_tables.mfc(lab, 4)
        assert len(entries) == 1500
        assert entries[("198.18.0.2", "239.5.0.0")] == (vif["r0"], first)
        assert entries[("198.18.0.2", "239.5.2.187")] == (vif["r0"], first)  # the 700th
        assert entries[("198.18.0.2", "239.5.2.188")] == (vif["r0"], second)
        assert sorted(map(len, (oifs for _, oifs in entries.values()))) == [2] * 1500
        counts = lab.probe("239.5.1.7")
        assert [counts[ns] for ns in lab.rx] == [5, 5, 0]
        counts = lab.probe("239.5.5.1")
        assert [counts[ns] for ns in lab.rx] == [0, 5, 5]
