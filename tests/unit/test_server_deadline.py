"""The control socket's deadline for a complete request: one timer per connection, moved on
by each request, and a stop while a request is awaited is still a stop, not a timeout."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from mfcd.server import Server, bind_control_socket
from tests.unit.conftest import FakeState
from tests.unit.test_group_commit import add, make_commands, request

TIMEOUT = 0.3  # client_timeout of these tests, in seconds


async def serving(tmp_path: Path) -> tuple[Server, str]:
    sock_path = str(tmp_path / "mfcd.sock")
    server = Server(make_commands(FakeState()), sock_path, TIMEOUT, max_request_bytes=1 << 20)
    await server.start(bind_control_socket(sock_path, "", 0o600))
    return server, sock_path


async def answer(reader: asyncio.StreamReader) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 5))
    return decoded


def test_requests_that_keep_coming_are_never_timed_out(tmp_path: Path) -> None:
    """Each request gives the next one client_timeout again, for as long as they come."""

    async def scenario() -> list[bool]:
        server, sock_path = await serving(tmp_path)
        reader, writer = await asyncio.open_unix_connection(sock_path)
        oks = []
        for i in range(12):  # 12 x 0.1 s: four times the timeout
            writer.write(add(i) if i % 2 else request(i, "ping"))
            oks.append((await answer(reader))["ok"])
            await asyncio.sleep(TIMEOUT / 3)
        writer.close()
        await server.stop()
        return oks

    assert asyncio.run(scenario()) == [True] * 12


def test_a_request_not_complete_in_time_is_a_timeout(tmp_path: Path) -> None:
    """Measured from when mfcd waits for it: blank lines and a partial line do not extend
    it, and the client is disconnected with `timeout`."""

    async def scenario() -> tuple[dict[str, Any], bytes, float]:
        server, sock_path = await serving(tmp_path)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_unix_connection(sock_path)
        began = loop.time()  # (mfcd's wait for the next request begins after this)
        writer.write(request(1, "ping"))
        assert (await answer(reader))["ok"]
        for _ in range(2):  # half the timeout
            writer.write(b"\n")
            await asyncio.sleep(TIMEOUT / 4)
        writer.write(b'{"v": 1, "cmd": "pi')
        refused = await answer(reader)
        took = loop.time() - began
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await server.stop()
        return refused, rest, took

    refused, rest, took = asyncio.run(scenario())
    assert refused["error"]["code"] == "timeout"
    assert "no complete request within 0.3 s" in refused["error"]["message"]
    assert rest == b""  # disconnected
    assert TIMEOUT <= took < TIMEOUT + 2


def test_a_stop_while_a_request_is_awaited_is_not_a_timeout(tmp_path: Path) -> None:
    """A client waiting quietly gets no `timeout` error when mfcd stops: it is disconnected."""

    async def scenario() -> bytes:
        server, sock_path = await serving(tmp_path)
        reader, writer = await asyncio.open_unix_connection(sock_path)
        writer.write(request(1, "ping"))
        assert (await answer(reader))["ok"]
        await server.stop()
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return rest

    assert asyncio.run(scenario()) == b""
