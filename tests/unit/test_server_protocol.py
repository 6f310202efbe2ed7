"""The control socket's connections read as an asyncio.Protocol: requests sent together, cut
anywhere, or followed by the end of the client's stream are each answered, in order."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mfcd import server as server_module
from mfcd.commands import Deferred
from tests.unit.test_group_commit import add, request
from tests.unit.test_server_deadline import serving


async def lines(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    """Every line until the end of the stream, decoded."""
    data = await asyncio.wait_for(reader.read(), 5)
    return [json.loads(line) for line in data.splitlines()]


async def exchange(
    tmp_path: Path, send: Callable[[asyncio.StreamWriter], Awaitable[None]]
) -> list[dict[str, Any]]:
    """Serve, let `send` write to one connection, close its end: every answer, decoded."""
    server, sock_path = await serving(tmp_path)
    reader, writer = await asyncio.open_unix_connection(sock_path)
    await send(writer)
    writer.write_eof()
    answers = await lines(reader)
    writer.close()
    await server.stop()
    return answers


def test_requests_sent_together_then_the_end_of_the_stream_are_all_answered(
    tmp_path: Path,
) -> None:
    """A client that pipelines changes (each waits for its group's sync) and pings, then
    closes its end: every request is answered in order, then mfcd closes the connection."""

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(add(1) + request(2, "ping") + b"\n\n" + add(3) + add(4) + request(5, "ping"))

    answers = asyncio.run(exchange(tmp_path, send))
    assert [(a["id"], a["ok"]) for a in answers] == [(i, True) for i in range(1, 6)]
    assert answers[0]["result"]["state"] == "installed"


def test_a_request_cut_into_single_bytes_is_answered(tmp_path: Path) -> None:
    async def send(writer: asyncio.StreamWriter) -> None:
        for byte in add(7):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)

    answers = asyncio.run(exchange(tmp_path, send))
    assert [(a["id"], a["ok"]) for a in answers] == [(7, True)]


def test_a_client_that_sends_while_its_request_waits_is_read_no_further_than_the_limit(
    tmp_path: Path,
) -> None:
    """What a client sends while its last request is under way waits unread; past twice
    STREAM_LIMIT its socket is not read any more (until that request is answered), and
    what it sent is then handled as ever."""

    async def scenario() -> tuple[list[dict[str, Any]], bool]:
        server, sock_path = await serving(tmp_path)
        commands = server.commands
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        # A request answered later (as diagnose is): the connection is busy until then.
        real = commands.deferred["diagnose"]

        def slow(request_id: Any, args: dict[str, Any], peer: Any) -> Any:
            async def answer() -> bytes:
                await gate
                return b'{"v":1,"id":%d,"ok":true,"result":{}}\n' % request_id

            return Deferred(request_id, answer=answer)

        commands.deferred["diagnose"] = slow
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, sock_path)
        await loop.sock_sendall(sock, request(1, "diagnose", group="239.1.1.1"))
        await asyncio.sleep(0.1)
        pings = b"".join(request(i, "ping") for i in range(2, 3002))  # about 120 kB
        pings += b" " * (4 * server_module.STREAM_LIMIT) + b"\n"
        sending = loop.create_task(loop.sock_sendall(sock, pings))
        await asyncio.sleep(0.3)
        connection = next(iter(server._clients))
        # (the read that crosses the limit takes at most what one recv gives: 256 KiB)
        limit = 2 * server_module.STREAM_LIMIT + 256 * 1024
        paused = not connection.reading and connection.unread_size <= min(limit, len(pings) - 1)
        gate.set_result(None)
        await asyncio.wait_for(sending, 5)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
            if not chunk:
                break
            data += chunk
        sock.close()
        commands.deferred["diagnose"] = real
        await server.stop()
        return [json.loads(line) for line in data.splitlines()], paused

    answers, paused = asyncio.run(scenario())
    assert paused
    assert [a["id"] for a in answers] == list(range(1, 3002))
    assert all(a["ok"] for a in answers)


def test_work_answered_later_goes_on_when_its_client_goes_away(tmp_path: Path) -> None:
    """A request answered later (a reload, a flush in slices, diagnose) is not cut short by
    its client leaving: its work ends as it would have, and nobody else notices."""

    async def scenario() -> tuple[bool, dict[str, Any]]:
        server, sock_path = await serving(tmp_path)
        commands = server.commands
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        finished = []

        def slow(request_id: Any, args: dict[str, Any], peer: Any) -> Any:
            async def answer() -> bytes:
                await gate
                finished.append(True)
                return b'{"v":1,"id":%d,"ok":true,"result":{}}\n' % request_id

            return Deferred(request_id, answer=answer)

        commands.deferred["diagnose"] = slow
        _reader, writer = await asyncio.open_unix_connection(sock_path)
        writer.write(request(1, "diagnose", group="239.1.1.1"))
        await asyncio.sleep(0.1)
        writer.close()  # gone before its answer
        await asyncio.sleep(0.1)
        gate.set_result(None)
        await asyncio.sleep(0.1)
        other_reader, other = await asyncio.open_unix_connection(sock_path)
        other.write(request(2, "ping"))
        pong = json.loads(await asyncio.wait_for(other_reader.readline(), 5))
        other.close()
        await server.stop()
        return bool(finished), pong

    finished, pong = asyncio.run(scenario())
    assert finished
    assert pong["ok"] and pong["id"] == 2


def test_stop_winds_down_the_task_of_a_client_gone_before_closing_the_controller(
    tmp_path: Path,
) -> None:
    """A reload whose client went away still runs its clean-up before stop closes the
    controller (its `finally` would otherwise run on a closed kernel and journal)."""
    events: list[str] = []

    async def scenario() -> None:
        server, path = await serving(tmp_path)

        async def reloader(dry_run: bool) -> dict[str, Any]:
            try:
                await asyncio.sleep(30)
            finally:
                events.append("reload wound down")
            return {}

        server.commands.reloader = reloader
        close = server.commands.controller.close

        def closing() -> None:
            events.append("controller closed")
            close()

        server.commands.controller.close = closing  # type: ignore[method-assign]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.sendall(request(0, "ping") + request(1, "reload"))
        await asyncio.sleep(0.1)
        sock.close()  # gone while its reload runs (the ping's answer unread: a reset)
        await asyncio.sleep(0.1)
        await server.stop()
        events.append("stop returned")

    asyncio.run(scenario())
    assert events == ["reload wound down", "controller closed", "stop returned"]


def test_a_monitor_notices_its_client_closing_after_the_socket_was_paused(
    tmp_path: Path,
) -> None:
    """A client sends a change (its sync slow), `monitor`, then more than the read limit
    and closes its end: the paused socket is read again once the monitor starts, so the
    end is seen and the subscription dropped."""

    async def scenario() -> int:
        server, path = await serving(tmp_path)
        state = server.commands.controller.state
        append = state.append

        def slow_append(changes: Any, runs: Any = ()) -> Any:
            time.sleep(0.5)
            return append(changes, runs)

        state.append = slow_append  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, path)
        await loop.sock_sendall(sock, add(1) + request(2, "monitor"))
        await asyncio.sleep(0.1)  # the add waits for its (slow) sync
        await loop.sock_sendall(sock, b" " * (400 * 1024))  # over the limit: paused
        await asyncio.sleep(1.0)  # the monitor has started
        sock.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.5)
        subscribers = len(server.commands.events.subscribers)
        sock.close()
        await server.stop()
        return subscribers

    assert asyncio.run(scenario()) == 0


def test_a_monitor_cancelled_by_the_stop_leaves_no_task_behind(tmp_path: Path) -> None:
    """A monitor waiting for events when mfcd stops: the stop cancels it, and its wait for
    the next event goes with it (a task left pending is destroyed at the loop's end)."""

    async def scenario() -> list[asyncio.Task[Any]]:
        server, path = await serving(tmp_path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(request(1, "monitor"))
        assert json.loads(await asyncio.wait_for(reader.readline(), 5))["ok"]
        await asyncio.sleep(0.05)  # the monitor waits for an event
        await server.stop()
        await asyncio.sleep(0)  # cancelled tasks run to their end
        writer.close()
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(scenario()) == []
