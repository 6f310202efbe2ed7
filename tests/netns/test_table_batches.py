"""End to end: a batch into another table, in the shape generated files have (each line
ending in `--table T`), which mfcd parses and journals as fast as a batch into the default
table (issue 12: two tables cost no more than twice one). The routes go to the kernel's
table T, and a restart reads them back from the journal into table T.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd
from tests.netns.kernel_tables import in_kernel

TABLE = "100"
ROUTES = 200  # per family and table


def lines(family: int, table: str | None, kind: str = "add") -> str:
    """Batch lines of the generated shape: ROUTES routes from one source, to groups 0..N."""
    source, group = (
        ("198.18.0.2", "239.2.{}.{}") if family == 4 else ("2001:db8::2", "ff3e::2:{}:{}")
    )
    tail = f" --table {table}" if table else ""
    ports = " --iif r0 --oifs r1,r2" if kind == "add" else ""
    return "".join(
        f"mfc {kind} --source {source} --group {group.format(n >> 8, n & 255)}{ports}{tail}\n"
        for n in range(ROUTES)
    )


@pytest.mark.lab(receivers=2)
def test_a_batch_into_another_table_reaches_that_table_and_survives_a_restart(
    lab: Lab, mfcd: Mfcd
) -> None:
    text = lines(4, None) + lines(4, TABLE) + lines(6, TABLE) + lines(6, "default")
    assert '"added": 800' in mfcd.ok("batch", "-", "-o", "json", stdin=text)

    def check() -> None:
        assert (in_kernel(lab, 4, TABLE), in_kernel(lab, 6, TABLE)) == (ROUTES, ROUTES)
        assert (in_kernel(lab, 4, "253"), in_kernel(lab, 6, "254")) == (ROUTES, ROUTES)
        tables = [(r["family"], r["table"]) for r in mfcd.show()["routes"]]
        assert sorted(set(tables)) == [("ipv4", 100), ("ipv4", 253), ("ipv6", 100), ("ipv6", 254)]
        assert len(tables) == 4 * ROUTES

    check()
    # The journal holds the table-100 adds with their table (formatted directly).
    journal = Path(mfcd.state_file).read_text()
    assert '["add",4,"198.18.0.2","239.2.0.7","r0",["r1","r2"],100]' in journal
    assert '["add",6,"2001:db8::2","ff3e::2:0:7","r0",["r1","r2"],100]' in journal
    mfcd.stop()
    mfcd.start()
    check()
    # The same shape deletes them from table 100 only.
    assert '"deleted": 400' in mfcd.ok(
        "batch", "-", "-o", "json", stdin=lines(4, TABLE, "del") + lines(6, TABLE, "del")
    )
    assert (in_kernel(lab, 4, TABLE), in_kernel(lab, 6, TABLE)) == (0, 0)
    assert (in_kernel(lab, 4, "253"), in_kernel(lab, 6, "254")) == (ROUTES, ROUTES)
