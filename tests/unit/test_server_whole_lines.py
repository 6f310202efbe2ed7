"""A request that arrives as one whole line in one read, with nothing before it, is taken
from the chunk itself (Connection.data_received) rather than through the connection's
buffer (_arrived, _line); and a connection answered with nothing more to read starts the
wait for its next request without looking again (settled). Both are the general path in
fewer steps: over random sequences of what clients send (whole lines, lines cut anywhere
or sent together, blank lines, lines over the limit, bad ones, the end of the stream), a
server with them and one without (every chunk through _arrived, every answer through
_next) give the same response bytes in the same order, the same connection states
(deadline running, reading, buffered bytes), model, kernel entries, journal and log lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from mfcd import server as server_module
from mfcd.server import Connection, Server, bind_control_socket
from tests.unit.conftest import FakeKernel, FakeState, observable
from tests.unit.test_group_commit import make_commands, request

CLIENTS = 3
SEEDS = 40


class Taking(Connection):
    """The connection under test, counting the chunks its whole-line path took."""

    taken = 0

    def _arrived(self, data: bytes) -> None:
        Taking.taken -= 1
        super()._arrived(data)

    def data_received(self, data: bytes) -> None:
        Taking.taken += 1
        super().data_received(data)


class General(Connection):
    """Every chunk through the buffer, every answer through _next: the general path."""

    def data_received(self, data: bytes) -> None:
        self._arrived(data)

    def settled(self, answer: Any) -> None:
        if self.closed:
            return
        try:
            self._respond(answer, True)
        except Exception:
            self.close()
            return
        self._next()


def random_line(rng: random.Random, limit: int) -> bytes:
    """A request line: mostly a change or a ping, now and then a bad or blank one."""
    kind = rng.randrange(12)
    rid = rng.randrange(1000)
    group = f"239.1.1.{rng.randrange(1, 6)}"
    if kind <= 4:
        oifs = rng.choice([["b"], ["c"], ["b", "c"], ["x"]])
        return request(rid, "mfc.add", source="10.0.0.1", group=group, iif="a", oifs=oifs)
    if kind <= 6:
        return request(rid, "mfc.del", source="10.0.0.1", group=group)
    if kind == 7:
        return request(rid, "ping")
    if kind == 8:
        return rng.choice([b"\n", b"  \n", b"\t \r\n"])  # blank: no answer
    if kind == 9:
        return rng.choice([b"{bad\n", b"[1]\n", b'{"v":1,"id":1}\n', b"\xff\xfe\n", b" {}\n"])
    if kind == 10:
        return request(rid, "ping") + b" " * rng.choice([limit - 40, limit + 1, limit + 50])
    return request(rid, "show")


def random_script(rng: random.Random, limit: int) -> list[list[tuple[str, bytes]]]:
    """For each client, what it does: ("send", bytes) or ("wait", b"") until mfcd is idle."""
    scripts = []
    for _ in range(CLIENTS):
        steps: list[tuple[str, bytes]] = []
        for _ in range(rng.randrange(4, 14)):
            how = rng.randrange(6)
            line = random_line(rng, limit)
            if how <= 2:  # one whole line, its answer awaited: the usual client
                steps += [("send", line), ("wait", b"")]
            elif how == 3:  # several together
                more = b"".join(random_line(rng, limit) for _ in range(rng.randrange(1, 3)))
                steps += [("send", line + more), ("wait", b"")]
            elif how == 4:  # cut somewhere
                cut = rng.randrange(len(line) + 1)
                steps += [("send", line[:cut]), ("wait", b""), ("send", line[cut:])]
            else:  # its answer not awaited: the next comes while it may wait for its sync
                steps += [("send", line)]
        steps.append(("eof" if rng.randrange(2) else "wait", b""))
        scripts.append(steps)
    return scripts


async def idle(server: Server) -> None:
    """Until mfcd has read, handled and answered what was sent (twice in a row, apart)."""
    controller = server.commands.controller
    calm = 0
    for _ in range(2000):
        await asyncio.sleep(0.001)
        quiet = (
            controller.group is None
            and controller.syncing is None
            and not server._tasks
            and not any(c.busy for c in server._clients)
        )
        calm = calm + 1 if quiet else 0
        if calm >= 3:
            return


def states(server: Server, connections: list[Connection | None]) -> list[Any]:
    return [
        None
        if c is None
        else (
            c.closed,
            c.busy,
            bool(c.buffer.deadline),
            c.reading,
            c.unread_size,
            bytes(c.buffer.data),
            c.buffer.counted,
            c.eof,
        )
        for c in connections
    ] + [server.buffered]


async def run(
    tmp_path: Path, kind: type[Connection], scripts: list[list[tuple[str, bytes]]], limit: int
) -> dict[str, Any]:
    sock_path = str(tmp_path / f"{kind.__name__}.sock")
    state = FakeState()
    commands = make_commands(state)
    server = Server(commands, sock_path, 30.0, max_request_bytes=limit)
    server.connection = kind
    await server.start(bind_control_socket(sock_path, "", 0o600))
    loop = asyncio.get_running_loop()
    socks = []
    connections: list[Connection | None] = []
    for _ in scripts:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, sock_path)
        socks.append(sock)
        await idle(server)
        connections.append(list(server._clients)[-1])
    received = [bytearray() for _ in scripts]

    async def read(i: int) -> None:
        with contextlib.suppress(OSError):
            while chunk := await loop.sock_recv(socks[i], 1 << 16):
                received[i] += chunk

    readers = [loop.create_task(read(i)) for i in range(len(scripts))]
    seen = []
    # The clients take turns, one step each.
    for turn in range(max(map(len, scripts))):
        for i, steps in enumerate(scripts):
            if turn >= len(steps):
                continue
            what, data = steps[turn]
            try:
                if what == "send":
                    await loop.sock_sendall(socks[i], data)
                    # (one client's data at a time: which requests of different clients
                    # share a group, or come first, would be the machine's timing)
                    await idle(server)
                elif what == "eof":
                    socks[i].shutdown(socket.SHUT_WR)
                else:
                    await idle(server)
                    seen.append(states(server, connections))
            except OSError:
                pass  # (disconnected after a refusal: what it sends goes nowhere)
    await idle(server)
    seen.append(states(server, connections))
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    for sock in socks:
        sock.close()
    await server.stop()
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    return {
        "received": [bytes(r) for r in received],
        "states": seen,
        "model": observable(commands.controller.router),
        "kernel": kernel.view(),
        # (the changes in the order journaled; how they were grouped is timing)
        "journal": [op for record in state.records for op in record],
    }


def logged_run(
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    kind: type[Connection],
    scripts: list[list[tuple[str, bytes]]],
    limit: int,
) -> dict[str, Any]:
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="mfcd")
    result = asyncio.run(run(tmp_path, kind, scripts, limit))
    result["log"] = [_SECONDS.sub("in N s", r.getMessage()) for r in caplog.records]
    return result


_SECONDS = re.compile(r"in \d+\.\d+ s")  # (how long something took: not compared)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_whole_lines_are_the_general_path(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    limit = rng.choice([800, 1000, 1 << 20])
    scripts = random_script(rng, limit)
    Taking.taken = 0
    fast = logged_run(caplog, tmp_path, Taking, scripts, limit)
    taken = Taking.taken
    general = logged_run(caplog, tmp_path, General, scripts, limit)
    for key in fast:
        assert (key, fast[key]) == (key, general[key])
    # (the first seeds' answers, decoded: the comparison is of something)
    assert any(b'"ok":true' in r for r in fast["received"])
    if seed == 0:
        assert taken > 0


def test_the_whole_line_path_is_taken_for_a_client_that_waits_for_each_answer(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The usual client: every request taken whole, and the wait for the next begins."""
    scripts = [[("send", request(i, "ping")), ("wait", b"")] for i in range(5)]
    flat = [[step for script in scripts for step in script]]
    Taking.taken = 0
    result = logged_run(caplog, tmp_path, Taking, flat, 1 << 20)
    assert Taking.taken == 5
    assert [json.loads(line)["id"] for line in result["received"][0].splitlines()] == list(range(5))
    # (after each answer: not busy, a deadline running, nothing buffered)
    assert all(s[0] == (False, False, True, True, 0, b"", 0, False) for s in result["states"])


def test_the_whole_line_limit_is_the_line_limit_and_free_bytes() -> None:
    commands = make_commands(FakeState())
    assert Server(commands, "x", 1.0, 100).whole_line == 101
    big = Server(commands, "x", 1.0, 1 << 20).whole_line
    assert big == server_module.FREE_BYTES


def test_changes_that_keep_coming_are_never_timed_out(tmp_path: Path) -> None:
    """A client whose every request is a change taken whole (each waits for its group's
    sync): each gives the next one client_timeout again, as a ping does."""
    timeout = 0.3

    async def scenario() -> list[bool]:
        sock_path = str(tmp_path / "mfcd.sock")
        server = Server(make_commands(FakeState()), sock_path, timeout, 1 << 20)
        await server.start(bind_control_socket(sock_path, "", 0o600))
        reader, writer = await asyncio.open_unix_connection(sock_path)
        oks = []
        for i in range(8):  # 8 x 0.15 s: four times the timeout
            await asyncio.sleep(timeout / 2)
            group = f"239.1.1.{i + 1}"
            writer.write(request(i, "mfc.add", source="10.0.0.1", group=group, iif="a", oifs=["b"]))
            oks.append(json.loads(await asyncio.wait_for(reader.readline(), 5))["ok"])
        writer.close()
        await server.stop()
        return oks

    assert asyncio.run(scenario()) == [True] * 8
