"""Every field of every command, given every JSON type: a clean refusal, never internal_error."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from mfcd import protocol
from mfcd.commands import Commands
from tests.unit.conftest import FakeKernel
from tests.unit.test_commands import ROUTE, answer, make_commands, snapshot

# One value of each JSON type, and the edges of each: what json.loads can hand a command.
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    10**30,
    1.5,
    1e308,
    "",
    "a",
    "x" * 100,
    "10.0.0.1",
    [],
    [None],
    ["a"],
    [[]],
    {},
    {"a": 1},
]

ADD_OP = dict(ROUTE, op="add", source="10.0.0.2")
DEL_OP = {"op": "del", "source": "10.0.0.1", "group": "239.1.1.1"}
OIF_ADD_OP = {"op": "oif_add", "source": "10.0.0.2", "group": "239.1.1.1", "oifs": ["c"]}
OIF_DEL_OP = {"op": "oif_del", "source": "10.0.0.2", "group": "239.1.1.1", "oifs": ["b"]}
JOIN_OP = {"op": "join", "interface": "c", "group": "ff3e::1", "source": "2001:db8::1"}
LEAVE_OP = {"op": "leave", "interface": "a", "group": "239.3.3.2"}
# A valid request of each command; each test below breaks one part of one of them.
VALID: dict[str, dict[str, Any]] = {
    "ping": {},
    "show": {"stats": True},
    "vif.show": {"stats": True},
    "sync": {"full": True},
    "mfc.add": dict(ROUTE, source="10.0.0.2"),
    "mfc.del": {"source": "10.0.0.1", "group": "239.1.1.1"},
    "vif.set": {"interface": "b", "threshold": 4},
    "mfc.oif.add": {"source": "10.0.0.1", "group": "239.1.1.1", "oifs": ["c"]},
    "mfc.oif.del": {"source": "10.0.0.3", "group": "239.1.1.1", "oifs": ["b"]},
    "batch": {"ops": [ADD_OP, OIF_ADD_OP, OIF_DEL_OP, DEL_OP, JOIN_OP, LEAVE_OP], "plan": True},
    "join": {"interface": "b", "group": "239.2.2.0/30", "source": "10.0.0.9"},
    "leave": {"interface": "a", "group": "239.3.3.3"},
    "group.show": {},
    "flush": {},
}
TEXT_BATCH = {"text": "mfc add --source 10.0.0.2 --group 239.1.1.1 --iif a --oifs b\n"}
# diagnose and monitor are answered by the server: test_commands_deferred.py checks them;
# reload takes no arguments and needs the daemon (tests/unit/test_declarations.py, netns).
assert set(VALID) == set(protocol.COMMANDS) - {"diagnose", "monitor", "reload"}

Where = tuple[str | int, ...]  # where a value sits inside the request


def paths(value: Any, prefix: Where = ()) -> list[Where]:
    """Every member and element of a request, nested ones too."""
    found: list[Where] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, member in items:
        found.append((*prefix, key))
        if isinstance(member, (dict, list)):
            found.extend(paths(member, (*prefix, key)))
    return found


def request(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "id": 7, "cmd": cmd, "args": args, "dry_run": False}


CASES = [
    (cmd, where)
    for cmd, args in [*VALID.items(), ("batch", TEXT_BATCH)]
    for where in paths(request(cmd, args))
]


def fresh_commands() -> Commands:
    """ROUTE, and a route to 10.0.0.3 with two oifs, are installed; sync sees an empty kernel."""
    commands = make_commands()
    two_oifs = {"source": "10.0.0.3", "group": "239.1.1.1", "iif": "a", "oifs": ["b", "c"]}
    assert answer(commands, json.dumps(request("mfc.add", two_oifs)).encode())["ok"]
    joins = {"interface": "a", "group": "239.3.3.2/31"}
    assert answer(commands, json.dumps(request("join", joins)).encode())["ok"]
    commands.plane = FakeKernel()  # an empty one
    return commands


def copy_at(msg: dict[str, Any], where: Where) -> tuple[dict[str, Any], Any, str | int]:
    """A deep copy of `msg`, the member of it holding `where`, and the key there."""
    msg = copy.deepcopy(msg)
    *parents, last = where
    holder: Any = msg
    for key in parents:
        holder = holder[key]
    return msg, holder, last


def replaced(msg: dict[str, Any], where: Where, value: Any) -> dict[str, Any]:
    msg, holder, last = copy_at(msg, where)
    holder[last] = value
    return msg


def removed(msg: dict[str, Any], where: Where) -> dict[str, Any]:
    msg, holder, last = copy_at(msg, where)
    del holder[last]
    return msg


def check(commands: Commands, msg: dict[str, Any]) -> None:
    before = snapshot(commands)
    response = answer(commands, json.dumps(msg).encode())
    if not response["ok"]:
        assert response["error"]["code"] != "internal_error", (msg, response)
        assert snapshot(commands) == before, msg


def test_the_valid_requests_are_valid() -> None:
    for cmd, args in [*VALID.items(), ("batch", TEXT_BATCH)]:
        response = answer(fresh_commands(), json.dumps(request(cmd, args)).encode())
        assert response["ok"], (cmd, response)


@pytest.mark.parametrize(("cmd", "where"), CASES, ids=str)
def test_every_field_with_every_json_type(cmd: str, where: Where) -> None:
    args = TEXT_BATCH if where[:2] == ("args", "text") else VALID[cmd]
    msg = request(cmd, args)
    for value in VALUES:
        check(fresh_commands(), replaced(msg, where, value))
    check(fresh_commands(), removed(msg, where))


@pytest.mark.parametrize("cmd", sorted(VALID))
@pytest.mark.parametrize("field", ["source", "group", "iif", "oifs", "ops", "text", "interface"])
def test_unexpected_fields_of_every_type(cmd: str, field: str) -> None:
    for value in VALUES:
        args = dict(VALID[cmd])
        args[field] = value
        check(fresh_commands(), request(cmd, args))


def test_batch_text_null_is_a_bad_request() -> None:
    response = answer(make_commands(), b'{"v":1,"id":1,"cmd":"batch","args":{"text":null}}')
    assert response["error"]["code"] == "bad_request"
    assert response["error"]["field"] == "text"


@pytest.mark.parametrize("form", ["mfc.add", "ops", "text"])
def test_a_huge_oif_list_is_refused_before_any_other_work(form: str) -> None:
    """40,002 names once held the daemon for 18.8 s (a quadratic duplicate check)."""
    oifs = [f"e{i}" for i in range(40_002)]
    if form == "mfc.add":
        msg = request("mfc.add", dict(ROUTE, oifs=oifs))
    elif form == "ops":
        msg = request("batch", {"ops": [dict(ADD_OP, oifs=oifs)]})
    else:
        line = f"mfc add --source 10.0.0.2 --group 239.1.1.1 --iif a --oifs {','.join(oifs)}"
        msg = request("batch", {"text": line})
    commands = make_commands()
    before = snapshot(commands)
    started = time.monotonic()
    response = answer(commands, json.dumps(msg).encode())
    assert time.monotonic() - started < 1.0
    assert response["error"]["code"] == "invalid_argument"
    assert "names 40002 interfaces" in response["error"]["message"]
    assert "at most 32 interfaces" in response["error"]["message"]
    assert snapshot(commands) == before


def test_an_error_quoting_a_huge_value_stays_short() -> None:
    msg = request("batch", {"ops": [{"op": "x" * 1_000_000}]})
    response = answer(make_commands(), json.dumps(msg).encode())
    assert response["error"]["code"] == "bad_request"
    assert len(response["error"]["message"]) <= 1000
