"""End to end: group commit with the sync in a thread, against the real mfcd. Twenty clients
on their own connections add routes as fast as they are answered; mfcd is killed (-9) in
the middle; every change a client was told succeeded is back after the restart, and the
changes did share syncs."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from mfcd import state
from tests.netns.conftest import Mfcd

CLIENTS = 20
SECONDS = 2.0  # the clients' load before the kill


def group(client: int, n: int) -> str:
    return f"239.{10 + client}.{n >> 8 & 255}.{n & 255}"


async def client(path: str, number: int, acknowledged: set[str]) -> None:
    """Add routes one after the other, each once the one before is answered, until mfcd is
    gone; note the groups of those answered ok."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        for n in range(1 << 16):
            name = group(number, n)
            args = {"source": "198.18.0.2", "group": name, "iif": "r0", "oifs": ["r1"]}
            request = {"v": 1, "id": n, "cmd": "mfc.add", "args": args}
            writer.write(json.dumps(request).encode() + b"\n")
            line = await reader.readline()
            if not line:
                return  # mfcd was killed: this change may or may not have been kept
            response = json.loads(line)
            assert response["ok"], response
            acknowledged.add(name)
    except ConnectionError:
        return
    finally:
        writer.close()


def test_every_acknowledged_change_of_concurrent_clients_survives_a_kill(mfcd: Mfcd) -> None:
    acknowledged: set[str] = set()
    assert mfcd.proc is not None
    victim = mfcd.proc

    async def load() -> None:
        clients = [
            asyncio.create_task(client(mfcd.socket, c, acknowledged)) for c in range(CLIENTS)
        ]
        await asyncio.sleep(SECONDS)
        victim.send_signal(signal.SIGKILL)  # in the middle of syncs and requests
        await asyncio.wait_for(asyncio.gather(*clients), 30)

    asyncio.run(load())
    mfcd.stop(signal.SIGKILL)  # (reaped)
    loaded = state.parse(Path(mfcd.state_file).read_bytes(), mfcd.state_file)
    records = loaded.seq - 1  # the records after the first, the empty snapshot
    assert len(acknowledged) > CLIENTS
    mfcd.start()
    found = {r["group"] for r in mfcd.show()["routes"]}
    assert acknowledged <= found, f"lost: {sorted(acknowledged - found)[:10]}"
    # One sync for the changes that arrived together: fewer records than changes.
    assert records < len(found), (records, len(found))
    assert "ERROR" not in mfcd.log
