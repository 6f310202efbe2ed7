"""Group commit with the sync in a thread: requests go on being handled, and form the next
group, while the journal's thread writes and syncs a group; each is answered only after
its own sync, and a failed sync refuses its group and the one formed on top of it."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mfcd import gathering
from mfcd.commands import Answer, Commands
from mfcd.model import Change
from mfcd.server import Server, bind_control_socket
from mfcd.state import RunOfAdds
from tests.unit.conftest import FakeKernel, FakeState, observable
from tests.unit.test_group_commit import PEER, add, make_commands, request, settled

WAIT = 10.0  # seconds a step may take before the test gives up (a hang, not a timing)


@dataclass
class SlowState(FakeState):
    """A journal whose appends wait until the test lets them through (`disk`), like a slow
    sync; it notes which thread appended each record."""

    disk: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    appending: threading.Event = field(default_factory=threading.Event)
    threads: list[str] = field(default_factory=list)

    def append(self, changes: Sequence[Change], runs: Sequence[RunOfAdds] = ()) -> None:
        self.appending.set()
        assert self.disk.acquire(timeout=WAIT), "the test never let the append through"
        self.threads.append(threading.current_thread().name)
        super().append(changes, runs)


def started(commands: Commands, state: SlowState) -> None:
    """Hand the group formed so far to the journal's thread and wait until it appends."""
    state.appending.clear()
    assert commands.controller.start_sync() is not None
    assert state.appending.wait(WAIT)


def two_groups() -> tuple[SlowState, Commands, Answer, Answer]:
    """A change whose group the journal's thread holds, and one in the group formed after it."""
    state = SlowState()
    commands = make_commands(state)
    first = commands.submit(add(1), PEER)
    started(commands, state)
    return state, commands, first, commands.submit(add(2), PEER)


def test_requests_form_the_next_group_while_the_thread_syncs_one() -> None:
    state = SlowState()
    commands = make_commands(state)
    controller = commands.controller
    first = [commands.submit(add(i), PEER) for i in (1, 2, 3)]
    started(commands, state)
    syncing = controller.syncing
    assert syncing is not None and all(a.group is syncing for a in first)
    assert controller.start_sync() is None  # one record at a time: the journal keeps order

    second = [commands.submit(add(i), PEER) for i in (4, 5)]  # the loop is not held
    forming = controller.group
    assert forming is not None and forming is not syncing
    assert all(a.group is forming for a in second)
    assert not syncing.done and not forming.done and state.records == []
    assert not controller.compaction_due()  # a snapshot must not hold what is not durable

    state.disk.release()
    commands.finish_sync()
    assert syncing.done and syncing.error is None and not forming.done
    assert [settled(commands, a)["ok"] for a in first] == [True] * 3

    started(commands, state)
    state.disk.release()
    commands.finish_sync()
    assert forming.done and forming.error is None
    assert [settled(commands, a)["ok"] for a in second] == [True] * 2
    assert [len(r) for r in state.records] == [3, 2]
    assert all(name.startswith("mfcd-journal") for name in state.threads)
    controller.close()


def test_a_failed_sync_in_the_thread_refuses_its_group_and_the_one_formed_on_top() -> None:
    state = SlowState()
    commands = make_commands(state)
    controller = commands.controller
    state.disk.release()  # a first route, durable
    assert json.loads(commands.handle(add(1), PEER))["ok"]
    kernel = controller.kernel
    assert isinstance(kernel, FakeKernel)
    model, kernel_view, records = observable(controller.router), kernel.view(), state.records[:]

    first = [commands.submit(add(2), PEER), commands.submit(add(1, ("b", "c")), PEER)]
    started(commands, state)
    second: list[Answer] = [
        commands.submit(add(2, ("c",)), PEER),  # changes a route of the group being synced
        commands.submit(request(9, "vif.set", interface="b", threshold=7), PEER),
        commands.submit(request(10, "ping"), PEER),  # changes nothing
    ]
    state.fail = True
    state.disk.release()
    commands.finish_sync()

    codes = [settled(commands, a).get("error", {}).get("code") for a in first + second]
    assert codes == ["state_error"] * 4 + [None]
    assert controller.group is None and controller.syncing is None
    assert observable(controller.router) == model
    assert kernel.view() == kernel_view
    assert state.records == records
    controller.close()


def test_a_flush_waits_for_the_thread_and_journals_the_next_group_after_it() -> None:
    state, commands, first, second = two_groups()
    state.disk.release(2)  # the thread's record, then the flush's own
    commands.flush()
    assert first.group is not None and first.group.done
    assert second.group is not None and second.group.done
    assert settled(commands, first)["ok"] and settled(commands, second)["ok"]
    assert [r[0][3] for r in state.records] == ["239.1.0.1", "239.1.0.2"]  # in order
    commands.controller.close()


def test_a_state_file_replaced_during_the_threads_sync_is_written_back_with_both_groups() -> None:
    state, commands, first, second = two_groups()
    state.moved = "state.journal was replaced by another file while mfcd was running"
    state.disk.release()
    commands.finish_sync()
    assert settled(commands, first)["ok"] and settled(commands, second)["ok"]
    assert state.records == []
    routes = {route.group for route in state.snapshots[-1][0]}
    assert routes == {"239.1.0.1", "239.1.0.2"}  # the snapshot holds both groups
    assert commands.controller.group is None
    commands.controller.close()


def test_the_server_answers_others_while_the_thread_syncs(tmp_path: Path) -> None:
    """Through the real server and sockets: a ping is answered while a change's sync is held
    back, a change sent meanwhile waits for a sync of its own, and both changes are answered
    once their syncs are done."""
    state = SlowState()
    commands = make_commands(state, grouping=False)  # the server turns it on

    async def scenario() -> list[dict[str, Any]]:
        sock_path = str(tmp_path / "mfcd.sock")
        server = Server(commands, sock_path, client_timeout=10, max_request_bytes=1 << 20)
        await server.start(bind_control_socket(sock_path, "", 0o600))
        (r1, w1), (r2, w2), (r3, w3) = [
            await asyncio.open_unix_connection(sock_path) for _ in range(3)
        ]
        w1.write(add(1))
        await asyncio.to_thread(state.appending.wait, WAIT)  # its sync is under way
        state.appending.clear()
        w2.write(request(2, "ping"))
        pong = json.loads(await asyncio.wait_for(r2.readline(), WAIT))
        w3.write(add(3))
        await asyncio.sleep(0.1)
        assert commands.controller.group is not None  # the next group, waiting for its turn
        state.disk.release()
        first = json.loads(await asyncio.wait_for(r1.readline(), WAIT))
        await asyncio.to_thread(state.appending.wait, WAIT)
        assert [len(r) for r in state.records] == [1]
        state.disk.release()
        third = json.loads(await asyncio.wait_for(r3.readline(), WAIT))
        for writer in (w1, w2, w3):
            writer.close()
        await server.stop()
        return [pong, first, third]

    answers = asyncio.run(scenario())
    assert [(a["ok"], a["id"]) for a in answers] == [(True, 2), (True, 1), (True, 3)]
    assert [len(r) for r in state.records] == [1, 1]


def test_a_groups_changes_are_logged_once_with_its_verdict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = SlowState()
    commands = make_commands(state)
    caplog.set_level(logging.INFO, logger="mfcd")
    for i in (1, 2, 3):
        commands.submit(add(i), PEER)
    started(commands, state)
    assert not any("mfc.add" in r.message for r in caplog.records)  # not durable yet
    state.disk.release()
    commands.finish_sync()
    logged = [r.message for r in caplog.records if "mfc.add" in r.message]
    assert len(logged) == 1 and logged[0].startswith("3 changes, one sync: ")
    assert all(f"group=239.1.0.{i}" in logged[0] for i in (1, 2, 3))

    caplog.clear()
    commands.submit(add(4), PEER)
    started(commands, state)
    state.fail = True
    state.disk.release()
    commands.finish_sync()
    logged = [r.message for r in caplog.records if "group=239.1.0.4" in r.message]
    assert len(logged) == 1 and logged[0].startswith("undone, the sync failed: ")
    commands.controller.close()


def test_the_next_sync_waits_for_the_clients_just_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real server: three clients in a group being synced, two more waiting in
    the next; once the three are answered and send again, the next sync takes all five
    (started at once, it would take two, and the three would need a sync of their own)."""
    monkeypatch.setattr(gathering, "HOLD_MAX", WAIT)  # only the clients' return ends it
    state = SlowState()
    commands = make_commands(state, grouping=False)  # the server turns it on

    async def scenario() -> None:
        sock_path = str(tmp_path / "mfcd.sock")
        server = Server(commands, sock_path, client_timeout=10, max_request_bytes=1 << 20)
        await server.start(bind_control_socket(sock_path, "", 0o600))
        clients = [await asyncio.open_unix_connection(sock_path) for _ in range(5)]
        for i, (_, writer) in enumerate(clients[:3]):
            writer.write(add(i))
        await asyncio.to_thread(state.appending.wait, WAIT)
        state.appending.clear()
        for i, (_, writer) in enumerate(clients[3:], 3):
            writer.write(add(i))
        await asyncio.sleep(0.2)  # (the journal's thread is held for as long)
        state.disk.release()
        for i, (reader, writer) in enumerate(clients[:3]):
            assert json.loads(await asyncio.wait_for(reader.readline(), WAIT))["ok"]
            writer.write(add(10 + i))
        await asyncio.to_thread(state.appending.wait, WAIT)
        state.disk.release()
        for reader, _ in clients:
            assert json.loads(await asyncio.wait_for(reader.readline(), WAIT))["ok"]
        for _, writer in clients:
            writer.close()
        await server.stop()

    asyncio.run(scenario())
    assert [len(r) for r in state.records] == [3, 5]
