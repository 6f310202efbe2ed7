"""A streamed show: the same JSON as show, made a slice of routes at a time while it is written,
with other clients served in between, and read by mfcctl as it arrives."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfcd import cli, protocol, views
from mfcd.commands import Commands, Peer
from mfcd.controller import Controller
from mfcd.model import AddRoute, DelRoute, Ports, RouteKey
from mfcd.server import Server, bind_control_socket
from tests.unit.conftest import FakeKernel, FakeState

PEER = Peer(1, 0, 0)


def make_controller(routes: int) -> Controller:
    """Interfaces a, b, c; `routes` routes of both families, in no particular order, and
    one pending route (on the missing interface z)."""
    ctl = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        ctl.link_up(name, ifindex)
    changes = []
    for i in reversed(range(routes)):
        n = (i * 7919) % routes  # shuffled
        if n % 5:
            key: RouteKey = (4, f"10.{n % 3}.{n >> 8 & 255}.{n & 255}", f"239.1.{n % 4}.1", 253)
        else:
            key = (6, f"2001:db8::{n:x}", f"ff3e::{n % 3:x}", 254)
        changes.append(AddRoute(key, Ports("a", ("b", "c") if n % 2 else ("b",))))
    changes.append(AddRoute((4, "10.9.9.9", "239.9.9.9", 253), Ports("a", ("z",))))
    ctl.change(changes)
    return ctl


def streamed_parts(ctl: Controller, table: int | None = None) -> Iterator[str]:
    routes = views.Views(ctl.kernel).show(ctl.router, streamed=True, table=table)["routes"]
    assert isinstance(routes, protocol.Streamed)
    return routes.parts


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(views, "SLICE", 7)
    return 7


@pytest.mark.parametrize("table", [None, 254])
def test_a_streamed_show_is_shows_json_a_slice_at_a_time(small_slices: int, table: Any) -> None:
    ctl = make_controller(100)
    ctl.link_down("c")  # degraded routes take the slow path
    plain = views.Views(ctl.kernel).show(ctl.router, table=table)["routes"]
    parts = list(streamed_parts(ctl, table))
    assert "".join(parts) == json.dumps(plain, separators=(",", ":"))
    # No part holds more than a slice of routes (each route has one "family").
    assert max(part.count('"family"') for part in parts) <= small_slices
    assert "" in parts  # pauses while sorting: other clients are served


def test_routes_deleted_while_streaming_are_left_out(small_slices: int) -> None:
    ctl = make_controller(60)
    expected = views.Views(ctl.kernel).show(ctl.router)["routes"]
    parts = streamed_parts(ctl)
    text = ""
    while '"family"' not in text:  # the sort is done, the first routes are out
        text += next(parts)
    gone = [(4 if r["family"] == "ipv4" else 6, r["source"], r["group"], r["table"])
            for r in expected[-10:]]  # fmt: skip
    ctl.change([DelRoute(key) for key in gone])
    routes = json.loads(text + "".join(parts))
    assert routes == expected[:-10]


def start_server(commands: Commands, path: str) -> tuple[asyncio.AbstractEventLoop, Server]:
    """The real server on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    server = Server(commands, path, client_timeout=30, max_request_bytes=1 << 20)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start(bind_control_socket(path, "", 0o600)))
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    return loop, server


def stop_server(loop: asyncio.AbstractEventLoop, server: Server) -> None:
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def test_other_clients_are_served_while_a_show_waits_to_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "SLICE", 500)  # a part: about 100 kB
    commands = Commands(make_controller(20_000), (4, 6))
    full = commands.handle(protocol.encode_request("show", {}, 1), PEER)
    path = str(tmp_path / "mfcd.sock")
    loop, server = start_server(commands, path)
    try:
        slow = cli.Client(path)
        sock = slow._connect()
        sock.sendall(protocol.encode_request("show", {}, 1))
        first = sock.recv(1000)  # and nothing more for now
        other = cli.Client(path)
        assert other.call("ping", {})["protocol"] == 1  # answered while the show waits
        held = asyncio.run_coroutine_threadsafe(_held(server), loop).result(10)
        # Only the part being written and what the transport buffers, of a 2.3 MB response.
        assert held < 256 * 1024 < len(full) // 8
        data = first
        while not data.endswith(b"\n"):
            data += sock.recv(1 << 20)
        assert data == full
        slow.close()
        other.close()
    finally:
        stop_server(loop, server)


async def _held(server: Server) -> int:
    return server._responses_held()


def test_mfcctl_writes_show_json_as_it_reads_it_and_as_before(tmp_path: Path) -> None:
    commands = Commands(make_controller(3_000), (4, 6))
    result = json.loads(commands.handle(protocol.encode_request("show", {}, 1), PEER))["result"]
    path = str(tmp_path / "mfcd.sock")
    loop, server = start_server(commands, path)
    try:
        out, err = io.StringIO(), io.StringIO()
        assert cli.main(["--socket", path, "-o", "json", "show"], stdout=out, stderr=err) == 0
        assert out.getvalue() == json.dumps(result) + "\n"  # what emit() writes
        out = io.StringIO()
        assert cli.main(["--socket", path, "-o", "json", "show", "--table", "9"], stdout=out) == 0
        assert json.loads(out.getvalue())["routes"] == []
    finally:
        stop_server(loop, server)


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_routes_changed_while_their_keys_are_copied_are_shown_as_they_are_then(
    monkeypatch: pytest.MonkeyPatch, attempts: int
) -> None:
    # A copy of the keys a few at a time (one step a part): a change between two parts
    # starts it again; after two such restarts it is made in one go (the third change
    # comes after it: its new route is not shown, its deleted one is left out).
    monkeypatch.setattr(views, "SLICE_SECONDS", 0.0)
    monkeypatch.setattr(views, "STEP", 1)  # 32 keys a part
    ctl = make_controller(200)
    parts = streamed_parts(ctl)
    routes = list(ctl.router.routes)
    for n in range(attempts):
        assert next(parts) == ""  # a part of the copy is made
        ctl.change([DelRoute(routes[n])])
        ctl.change([AddRoute((4, "10.7.7.7", f"239.7.7.{n}", 253), Ports("a", ("b",)))])
    expected = views.Views(ctl.kernel).show(ctl.router)["routes"]
    if attempts == 3:
        expected = [r for r in expected if r["group"] != "239.7.7.2"]
    assert json.loads("".join(parts)) == expected
    assert len(expected) == (201 if attempts < 3 else 200)


def test_the_cyclic_gc_is_paused_while_a_show_is_made_and_only_then() -> None:
    # (its passes walked the young copy of every key: 30-40 ms in one callback at 1,000,000)
    ctl = make_controller(50)
    assert gc.isenabled()
    parts = streamed_parts(ctl)
    next(parts)
    assert not gc.isenabled()
    "".join(parts)
    assert gc.isenabled()
    parts = streamed_parts(ctl)  # closed unfinished
    next(parts)
    parts.close()  # type: ignore[attr-defined]
    assert gc.isenabled()
    gc.disable()  # paused by someone else (a reload): left as it is
    try:
        "".join(streamed_parts(ctl))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_gc_runs_again_when_a_client_goes_away_in_the_middle_of_a_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "SLICE", 500)
    commands = Commands(make_controller(20_000), (4, 6))
    path = str(tmp_path / "mfcd.sock")
    loop, server = start_server(commands, path)
    try:
        sock = cli.Client(path)._connect()
        sock.sendall(protocol.encode_request("show", {}, 1))
        data = b""
        while b'"routes":[{' not in data:  # the show is under way, waiting for this client
            data += sock.recv(1000)
        assert not gc.isenabled()
        sock.close()
        deadline = time.monotonic() + 10
        while not gc.isenabled():
            assert time.monotonic() < deadline, "the GC stayed paused"
            time.sleep(0.01)
        assert cli.Client(path).call("ping", {})["protocol"] == 1
    finally:
        stop_server(loop, server)
        gc.enable()
