"""Group commit: the changes of requests handled together are journaled with one sync, each
answered only once it is durable, and all refused (and undone) if that sync fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from mfcd import state as state_module
from mfcd.commands import Answer, Commands, Peer
from mfcd.controller import GROUP_MAX_CHANGES, Controller, StateLike
from mfcd.server import Server, bind_control_socket
from mfcd.state import StateFile
from tests.unit.conftest import FakeKernel, FakeState, observable

PEER = Peer(pid=1, uid=0, gid=0)
CLIENTS = 20


def make_commands(state: StateLike, grouping: bool = True) -> Commands:
    controller = Controller(FakeKernel(), state)
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        controller.link_up(name, ifindex)
    controller.grouping = grouping
    return Commands(controller, (4, 6))


def request(request_id: int, cmd: str, **args: Any) -> bytes:
    return json.dumps({"v": 1, "id": request_id, "cmd": cmd, "args": args}).encode() + b"\n"


def add(request_id: int, oifs: tuple[str, ...] = ("b",)) -> bytes:
    group = f"239.1.{request_id >> 8}.{request_id & 255}"
    return request(request_id, "mfc.add", source="10.0.0.1", group=group, iif="a", oifs=list(oifs))


def settled(commands: Commands, answer: Answer) -> dict[str, Any]:
    """The response an answer gets once its group is flushed, decoded."""
    response = commands.settle(answer)
    assert isinstance(response, bytes)
    decoded: dict[str, Any] = json.loads(response)
    return decoded


def journal(path: Path) -> list[dict[str, Any]]:
    """The records of a state file after its header, decoded."""
    lines = path.read_bytes().splitlines()[1:]
    return [json.loads(line.split(b" ", 1)[1]) for line in lines]


def open_state(path: Path) -> StateFile:
    state = StateFile(str(path))
    state.lock()
    state.load()
    return state


def test_requests_handled_together_are_journaled_with_one_sync(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    state = open_state(path)
    commands = make_commands(state)
    assert json.loads(commands.handle(add(0), PEER))["ok"]  # a group of one: durable at once
    syncs, records = state.syncs, len(journal(path))
    assert syncs == 1  # one write and one fdatasync a record

    answers = [commands.submit(add(i), PEER) for i in range(1, CLIENTS + 1)]
    group = answers[0].group
    assert group is not None and not group.done
    assert all(a.group is group and a.changed for a in answers)
    assert state.syncs == syncs  # nothing synced (nor answered) yet
    commands.flush()

    assert state.syncs == syncs + 1  # the 20 changes cost what one did
    responses = [settled(commands, a) for a in answers]
    assert [(r["ok"], r["id"]) for r in responses] == [(True, i) for i in range(1, CLIENTS + 1)]
    records_now = journal(path)
    assert len(records_now) == records + 1
    assert len(records_now[-1]["ops"]) == CLIENTS
    state.close()
    assert len(state_module.parse(path.read_bytes()).routes) == CLIENTS + 1


def test_without_grouping_each_request_costs_its_own_sync(tmp_path: Path) -> None:
    state = open_state(tmp_path / "state.journal")
    commands = make_commands(state, grouping=False)
    for i in range(CLIENTS):
        answer = commands.submit(add(i), PEER)
        assert answer.group is None
        assert settled(commands, answer)["ok"]
    assert state.syncs == CLIENTS
    state.close()


def test_clients_whose_requests_arrive_together_cost_one_sync(tmp_path: Path) -> None:
    """Through the real server and real sockets: 20 connections, one request each, written
    before the server's loop looks at them."""
    path = tmp_path / "state.journal"
    state = open_state(path)
    commands = make_commands(state, grouping=False)  # the server turns it on

    async def scenario() -> list[dict[str, Any]]:
        sock_path = str(tmp_path / "mfcd.sock")
        server = Server(commands, sock_path, client_timeout=10, max_request_bytes=1 << 20)
        await server.start(bind_control_socket(sock_path, "", 0o600))
        clients = [await asyncio.open_unix_connection(sock_path) for _ in range(CLIENTS)]
        for i, (reader, writer) in enumerate(clients):  # each served once: its task waits
            writer.write(request(1000 + i, "ping"))
            assert json.loads(await reader.readline())["ok"]
        before = state.syncs
        for i, (_, writer) in enumerate(clients):
            writer.write(add(i))
        answers = [json.loads(await reader.readline()) for reader, _ in clients]
        assert state.syncs == before + 1
        for _, writer in clients:
            writer.close()
        await server.stop()
        return answers

    answers = asyncio.run(scenario())
    assert [(a["ok"], a["id"]) for a in answers] == [(True, i) for i in range(CLIENTS)]
    assert len(journal(path)[-1]["ops"]) == CLIENTS
    state.close()


def test_a_failed_sync_refuses_every_change_of_the_group_and_undoes_it() -> None:
    state = FakeState()
    commands = make_commands(state)
    router = commands.controller.router
    assert json.loads(commands.handle(add(1), PEER))["ok"]
    assert json.loads(commands.handle(add(2), PEER))["ok"]
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    model, kernel_view, records = observable(router), kernel.view(), list(state.records)

    answers: list[Answer] = [
        commands.submit(add(3), PEER),  # a new route
        commands.submit(add(1, ("b", "c")), PEER),  # another oif for an existing one
        commands.submit(request(4, "mfc.del", source="10.0.0.1", group="239.1.0.2"), PEER),
        commands.submit(request(5, "vif.set", interface="b", threshold=9), PEER),
        commands.submit(add(3, ("c",)), PEER),  # the new route again, changed
        commands.submit(request(6, "ping"), PEER),  # changes nothing
    ]
    assert len(router.routes) == 2 and router.thresholds == {"b": 9}  # applied already
    state.fail = True
    commands.flush()

    codes = [settled(commands, a).get("error", {}).get("code") for a in answers]
    assert codes == ["state_error"] * 5 + [None]
    assert observable(router) == model
    assert kernel.view() == kernel_view
    assert state.records == records


def test_a_large_request_is_journaled_after_the_group_it_follows() -> None:
    state = FakeState()
    commands = make_commands(state)
    small = commands.submit(add(1), PEER)
    ops = [
        {
            "op": "add",
            "source": "10.0.0.2",
            "group": f"239.2.{i >> 8}.{i & 255}",
            "iif": "a",
            "oifs": ["b"],
        }
        for i in range(GROUP_MAX_CHANGES + 1)
    ]
    large = commands.submit(request(2, "batch", ops=ops), PEER)
    assert small.group is not None and small.group.done  # synced before the batch
    assert large.group is None  # journaled on its own, synced before its answer
    assert [len(r) for r in state.records] == [1, GROUP_MAX_CHANGES + 1]
    assert settled(commands, small)["ok"] and settled(commands, large)["ok"]


def test_a_dry_run_in_a_group_is_answered_as_it_is() -> None:
    state = FakeState()
    commands = make_commands(state)
    change = commands.submit(add(1), PEER)
    dry = commands.submit(
        json.dumps(
            {
                "v": 1,
                "id": 2,
                "cmd": "mfc.del",
                "dry_run": True,
                "args": {"source": "10.0.0.1", "group": "239.1.0.1"},
            }
        ).encode(),
        PEER,
    )
    assert dry.group is change.group and not dry.changed
    state.fail = True
    commands.flush()
    assert settled(commands, change)["error"]["code"] == "state_error"
    assert settled(commands, dry)["ok"]
