"""Tests for the memory of large tables (issue 12, "Large tables again" in
docs/benchmarks.md): the installed routes are a view of `routes`, not a second dict, and
kept right through transactions and rollbacks; a batch text's AddRoutes do not leave a
hole beside every route once the batch is over; a journal record's adds, read together,
keep their order with the other ops."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from mfcd.commands import Commands
from mfcd.controller import Controller
from mfcd.model import (
    AddRoute,
    DelRoute,
    Entry,
    Placed,
    Ports,
    RouteKey,
    Router,
    SetThreshold,
    Step,
)
from mfcd.state import StateFile

from .conftest import FakeKernel, FakeState, observable, router_with_links, run

SRC = str(Path(__file__).resolve().parents[2] / "src")


def key(n: int) -> RouteKey:
    return (4, "198.18.0.1", f"239.17.{n >> 8}.{n & 255}", 253)


def counted(router: Router) -> int:
    return sum(1 for k in router.routes if k in router.installed)


def test_one_dict_holds_the_routes_and_their_entries() -> None:
    router = router_with_links("eth0", "eth1")
    ports = router.ports("eth0", ("eth1",))
    router.begin()
    for n in range(5_000):
        router.add(key(n), ports)
    router.commit()
    # Every dict the router holds with a slot per route: `routes` alone.
    big = [v for v in vars(router).values() if isinstance(v, dict) and len(v) >= 5_000]
    assert big == [router.routes]
    assert len(router.installed) == 5_000
    assert list(router.installed) == list(router.routes)  # all installed: iterated as routes
    entry = router.installed[key(7)]
    assert isinstance(entry, Entry) and entry == router.installed.get(key(7))
    value = router.routes[key(7)]
    assert value == ports and value.__class__ is Placed  # equal to its Ports, as a tuple
    assert router.route(key(7)).oifs == ("eth1",)
    # One shared value for every route with the same interfaces and entry.
    assert len({id(v) for v in router.routes.values()}) == 1


def test_the_view_follows_deletes_pending_routes_replacements_and_rollbacks() -> None:
    router = router_with_links("eth0", "eth1", "eth2")
    ports = router.ports("eth0", ("eth1",))
    for n in range(10):
        run(router, router.add, key(n), ports)
    run(router, router.add, key(10), router.ports("gone", ("eth0",)))  # pending
    run(router, router.del_route, key(3))
    run(router, router.add, key(4), router.ports("eth0", ("eth1", "eth2")))  # replaced
    assert key(10) in router.routes and key(10) not in router.installed
    assert router.installed.get(key(10)) is None and router.installed.get(key(3)) is None
    assert len(router.installed) == counted(router) == 9
    assert set(router.installed) == set(router.routes) - {key(10)}
    before = observable(router)
    router.begin()
    router.add(key(20), ports)  # direct
    router.add(key(4), ports)  # replaced again
    router.del_route(key(5))
    router.add(key(10), ports)  # a pending route installed
    assert len(router.installed) == counted(router) == 10
    router.rollback()
    assert observable(router) == before
    assert len(router.installed) == counted(router) == 9
    # A route losing an interface stays installed (degraded); deleted, it goes.
    run(router, router.link_down, "eth2")
    assert key(4) in router.installed and router.status(key(4)).state == "degraded"
    run(router, router.del_route, key(4))
    assert len(router.installed) == counted(router) == 8


def test_a_rollback_keeps_the_installed_count_without_counting_again() -> None:
    """Dry runs and refused changes end in a rollback: counting the installed routes again
    after each would walk every route on the loop (46 ms at 1,000,000)."""
    router = router_with_links("eth0", "eth1", "eth2")
    ports = router.ports("eth0", ("eth1",))
    for n in range(10):
        run(router, router.add, key(n), ports)
    run(router, router.add, key(10), router.ports("gone", ("eth0",)))  # pending
    changes: list[tuple[Callable[..., object], tuple[object, ...]]] = [
        (router.add, (key(20), ports)),  # direct install
        (router.add, (key(4), router.ports("eth0", ("eth1", "eth2")))),  # replaced
        (router.del_route, (key(5),)),
        (router.add, (key(10), ports)),  # a pending route installed
        (router.link_down, ("eth1",)),
    ]
    for change, args in changes:
        router.begin()
        change(*args)
        router.rollback()
        assert router._installed_n == counted(router) == 10
    steps: list[Step] = []
    router.begin()
    assert router.add_direct(key(30), ports, steps)
    router.rollback()
    assert router._installed_n == counted(router) == 10


def test_a_placed_value_given_back_as_ports_is_not_taken_as_installed() -> None:
    """Someone may keep a route's value (a Placed) and add it back later, e.g. to put a
    route back after a failed change: it is shared as its plain Ports."""
    router = router_with_links("eth0", "eth1")
    run(router, router.add, key(1), router.ports("eth0", ("eth1",)))
    kept = router.routes[key(1)]
    run(router, router.del_route, key(1))
    assert router.share(kept).__class__ is not Placed
    run(router, router.keep, key(1), kept)
    assert key(1) in router.routes and key(1) not in router.installed
    assert len(router.installed) == 0


MALLOC_PROBE = """
import sys, tempfile
sys.path.insert(0, {bench!r})
import memory
from mfcd.commands import Commands, Peer
from mfcd.state import StateFile
with tempfile.TemporaryDirectory() as tmp:
    state = StateFile(tmp + "/state.journal")
    state.load()
    ctl = memory.controller(state)
    text = memory.batch_text(60_000, False)
    Commands(ctl, (4, 6)).batch({{"text": text}}, False, Peer(1, 0, 0))
    del text
    sys._debugmallocstats()
    state.close()
"""


def test_a_batch_leaves_no_hole_beside_each_route_it_added() -> None:
    """pymalloc keeps a pool while one block of it is in use: had the batch's AddRoutes
    (64-byte blocks, freed once it is over) been made between the routes' group strings
    (64-byte blocks for good), a block would stay free beside every route."""
    bench = str(Path(SRC).parent / "bench")
    probe = textwrap.dedent(MALLOC_PROBE.format(bench=bench))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split() for line in result.stderr.splitlines()]
    (row,) = [r for r in rows if len(r) == 5 and r[1] == "64" and r[0].isdigit()]
    in_use, free = int(row[3]), int(row[4])
    assert in_use >= 60_000  # the group strings
    assert free < 6_000, f"{free} free 64-byte blocks beside {in_use}"


def test_a_records_adds_read_together_keep_their_order_with_other_ops(tmp_path: Path) -> None:
    """A record's runs of adds are read by one call each (a start's hot loop); a delete or
    a setting between them still applies where it stands."""
    a, b = key(1), key(2)
    ports = Ports("eth0", ("eth1",))
    other = Ports("eth0", ("eth2",))
    sf = StateFile(str(tmp_path / "state.journal"))
    sf.load()
    sf.append(
        [
            AddRoute(a, ports),
            AddRoute(b, ports),
            DelRoute(a),
            SetThreshold("eth1", 5),
            AddRoute(a, other),
            DelRoute(b),
            AddRoute(key(3), ports),
        ]
    )
    sf.close()
    loaded = StateFile(str(tmp_path / "state.journal")).load()
    assert loaded.routes == {a: other, key(3): ports}
    assert loaded.thresholds == {"eth1": 5}
    assert loaded.ops_since_snapshot == 7


def test_a_batch_texts_changes_keep_the_order_of_its_lines() -> None:
    """Runs of adds become AddRoutes when the run ends (see _AddRun): every other line,
    joins included, still comes where it stands."""
    ctl = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        ctl.link_up(name, ifindex)
    commands = Commands(ctl, (4, 6))
    add = "add --source 10.0.0.1 --group 239.1.1.{} --iif a --oifs b"
    text = "\n".join(
        [
            add.format(1),
            add.format(2),
            "join --interface c --group 239.2.2.2",
            add.format(3),
            "oif add --source 10.0.0.1 --group 239.1.1.3 --oifs c",
            add.format(4),
            "leave --interface c --group 239.2.2.2",
            "del --source 10.0.0.1 --group 239.1.1.1",
            add.format(5),
        ]
    )
    changes, deleted, updated, _ = commands._read_text(text)
    kinds = [type(change).__name__ for change in changes]
    assert kinds == [
        "AddRoute",
        "AddRoute",
        "Join",
        "AddRoute",
        "AddRoute",  # the oif add: route 3 with oifs b and c
        "AddRoute",
        "Leave",
        "DelRoute",
        "AddRoute",
    ]
    assert changes[4].ports.oifs == ("b", "c")  # type: ignore[union-attr]
    assert (deleted, updated) == (1, 1)
