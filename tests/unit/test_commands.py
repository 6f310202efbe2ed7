"""Tests for mfcd.commands: one response line per request, stable error codes, no half changes."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import batchfile, diagnosis, protocol, validate
from mfcd import commands as commands_module
from mfcd.commands import Commands, Peer, _reaching, tell
from mfcd.controller import Controller
from mfcd.diagnosis import Rules
from mfcd.events import EventBus
from mfcd.model import RUN_MIN, AddRoute, Change, DelRoute, Ports, SetThreshold
from mfcd.netlink import MRule
from tests.unit.conftest import FakeKernel, FakeState, observable

PEER = Peer(pid=4242, uid=0, gid=0)
ROUTE = {"source": "10.0.0.1", "group": "239.1.1.1", "iif": "a", "oifs": ["b"]}
KEY = {"source": "10.0.0.1", "group": "239.1.1.1"}


def make_commands(families: tuple[int, ...] = (4, 6)) -> Commands:
    ctl = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        ctl.link_up(name, ifindex)
    commands = Commands(ctl, families)
    assert ask(commands, "mfc.add", ROUTE)["ok"]
    return commands


@pytest.fixture
def commands() -> Commands:
    """Interfaces a, b, c exist and ROUTE is installed."""
    return make_commands()


def answer(commands: Commands, line: bytes) -> dict[str, Any]:
    """Send one raw line; check the response is one line of JSON; return it decoded."""
    raw = commands.handle(line, PEER)
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    response = json.loads(raw)
    assert isinstance(response, dict)
    assert response["v"] == protocol.PROTOCOL_VERSION
    assert isinstance(response["ok"], bool)
    if not response["ok"]:
        error = response["error"]
        assert error["code"] in protocol.ERROR_EXIT
        assert isinstance(error["message"], str)
        assert "\n" not in error["message"]
    return response


def ask(commands: Commands, cmd: str, args: Any, **envelope: Any) -> dict[str, Any]:
    msg = {"v": 1, "id": 7, "cmd": cmd, "args": args, **envelope}
    return answer(commands, json.dumps(msg).encode())


def snapshot(commands: Commands) -> tuple[Any, ...]:
    kernel, state = commands.controller.kernel, commands.controller.state
    assert isinstance(kernel, FakeKernel)
    assert isinstance(state, FakeState)
    joins = commands.controller.joins
    model = (dict(joins.wanted), dict(joins.joined), dict(joins.refused), dict(joins.mrdisc))
    return observable(commands.controller.router), kernel.view(), list(state.records), model


def error_of(response: dict[str, Any]) -> tuple[str, str | None]:
    assert response["ok"] is False, response
    return response["error"]["code"], response["error"].get("field")


# --- envelopes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"{",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"ping"',
        b"null",
        b"1e999",
        b'{"v": 1, "cmd": "ping", "id": ' + b"9" * 5000 + b"}",
        b"[" * 100_000,
        b'{"a":' * 100_000,
    ],
    ids=lambda b: repr(b[:20]),
)
def test_lines_that_are_not_json_objects_are_bad_requests(commands: Commands, line: bytes) -> None:
    before = snapshot(commands)
    assert error_of(answer(commands, line)) == ("bad_request", None)
    assert snapshot(commands) == before


@pytest.mark.parametrize(
    ("msg", "code", "field"),
    [
        ({"v": 2, "cmd": "ping"}, "unsupported_version", None),
        ({"cmd": "ping"}, "unsupported_version", None),
        ({"v": "1", "cmd": "ping"}, "unsupported_version", None),
        ({"v": 1e999, "cmd": "ping"}, "unsupported_version", None),
        ({"v": 1, "cmd": "reboot"}, "bad_request", "cmd"),
        ({"v": 1}, "bad_request", "cmd"),
        ({"v": 1, "cmd": ["ping"]}, "bad_request", "cmd"),
        ({"v": 1, "cmd": "ping", "extra": True}, "bad_request", None),
        ({"v": 1, "cmd": "ping", "args": []}, "bad_request", "args"),
        ({"v": 1, "cmd": "ping", "args": None}, "bad_request", "args"),
        ({"v": 1, "cmd": "ping", "dry_run": "yes"}, "bad_request", "dry_run"),
        ({"v": 1, "cmd": "ping", "dry_run": 1}, "bad_request", "dry_run"),
        ({"v": 1, "cmd": "ping", "id": [1]}, "bad_request", "id"),
        ({"v": 1, "cmd": "ping", "id": True}, "bad_request", "id"),
        ({"v": 1, "cmd": "ping", "id": 1.5}, "bad_request", "id"),
        ({"v": 1, "cmd": "ping", "args": {"x": 1}}, "bad_request", "x"),
        ({"v": 1, "cmd": "show", "args": {"stats": "yes"}}, "bad_request", "stats"),
        ({"v": 1, "cmd": "sync"}, "bad_request", None),  # no kernel observer in this mfcd
    ],
)
def test_bad_envelopes(
    commands: Commands, msg: dict[str, Any], code: str, field: str | None
) -> None:
    before = snapshot(commands)
    assert error_of(answer(commands, json.dumps(msg).encode())) == (code, field)
    assert snapshot(commands) == before


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_1(commands: Commands, version: Any) -> None:
    response = answer(commands, json.dumps({"v": version, "cmd": "ping"}).encode())
    assert response["ok"] is False, f"version {version!r} was accepted"
    assert response["error"]["code"] in ("unsupported_version", "bad_request")


@pytest.mark.parametrize("request_id", [0, "abc", 10**30, None])
def test_the_id_is_echoed(commands: Commands, request_id: Any) -> None:
    assert ask(commands, "ping", {}, id=request_id)["id"] == request_id
    assert ask(commands, "nope", {}, id=request_id)["id"] == request_id


@pytest.mark.parametrize(
    "result",
    [{}, {"a": 1}, {"a": [1, "x"], "b": {"c": None}}],
)
def test_encoded_members_are_spliced_into_the_result(result: dict[str, Any]) -> None:
    members = {"routes": [{"source": "10.0.0.1", "oifs": ["b"]}], "z": 'q"uote'}
    encoded = {k: protocol.Encoded(json.dumps(v)) for k, v in members.items()}
    line = protocol.encode_result(9, {**result, **encoded})
    assert line.endswith(b"}}\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "id": 9, "ok": True, "result": {**result, **members}}


def test_ping_and_show(commands: Commands) -> None:
    result = ask(commands, "ping", {})["result"]
    assert (result["protocol"], result["families"]) == (1, ["ipv4", "ipv6"])
    shown = ask(commands, "show", {"stats": True})["result"]
    assert [(r["source"], r["state"]) for r in shown["routes"]] == [("10.0.0.1", "installed")]
    assert [v["interface"] for v in shown["vifs"]] == ["a", "b"]


# --- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "args", "code", "field"),
    [
        ("mfc.add", dict(ROUTE, source=5), "invalid_argument", "source"),
        ("mfc.add", dict(ROUTE, source="10.0.0.300"), "invalid_argument", "source"),
        ("mfc.add", dict(ROUTE, group="224.0.0.5"), "invalid_argument", "group"),
        ("mfc.add", dict(ROUTE, oifs="b"), "invalid_argument", "oifs"),
        ("mfc.add", dict(ROUTE, oifs=[{"name": "b"}]), "invalid_argument", "oifs"),
        ("mfc.add", dict(ROUTE, iif={"a": [[[]]]}), "invalid_argument", "iif"),
        ("mfc.add", dict(ROUTE, ttl=1), "bad_request", "ttl"),
        ("mfc.add", {"source": "10.0.0.1"}, "bad_request", "group"),
        ("mfc.add", dict(ROUTE, oifs=["a"]), "invalid_argument", "oifs"),
        ("mfc.del", {"source": "10.0.0.9", "group": "239.1.1.1"}, "not_found", None),
        ("mfc.del", dict(ROUTE), "bad_request", "iif"),
        ("vif.set", {"interface": "b", "threshold": 10**100}, "invalid_argument", "threshold"),
        ("vif.set", {"interface": "b", "threshold": 1e308}, "invalid_argument", "threshold"),
        ("vif.set", {"interface": "b", "threshold": True}, "invalid_argument", "threshold"),
        ("vif.set", {"interface": "b b", "threshold": 2}, "invalid_argument", "interface"),
        ("vif.set", {"interface": "b"}, "bad_request", "threshold"),
        ("vif.set", {"interface": "b", "mrdisc": True, "table": 100}, "invalid_argument", "table"),
        (
            "vif.set",
            {"interface": "b", "threshold": 5, "mrdisc": True, "table": 100},
            "invalid_argument",
            "table",
        ),
        ("vif.set", {"interface": "b", "threshold": 5, "table": 0}, "invalid_argument", "table"),
        ("vif.set", {"interface": "b", "threshold": 5, "table": []}, "invalid_argument", "table"),
        (
            "vif.set",
            {"interface": "b", "threshold": 0, "table": 9},
            "invalid_argument",
            "threshold",
        ),
        (
            "vif.set",
            {"interface": "b", "threshold": "x", "table": 9},
            "invalid_argument",
            "threshold",
        ),
        ("batch", {"ops": "add"}, "bad_request", "ops"),
        ("batch", {"ops": [["add"]]}, "bad_request", None),
        ("batch", {"ops": [dict(ROUTE, op="replace")]}, "bad_request", "op"),
        ("batch", {"ops": [dict(ROUTE, op="add", source=[])]}, "invalid_argument", "source"),
        ("batch", {}, "bad_request", None),
        ("batch", {"ops": [], "text": ""}, "bad_request", None),
        ("batch", {"text": ["mfc del --source 10.0.0.1 --group 239.1.1.1"]}, "bad_request", "text"),
        ("batch", {"text": "mfc show"}, "syntax_error", None),
        ("mfc.oif.add", {**KEY, "oifs": ["c"], "iif": "a"}, "bad_request", "iif"),
        ("mfc.oif.add", {**KEY, "oifs": []}, "invalid_argument", "oifs"),
        ("mfc.oif.add", {**KEY, "oifs": ["a"]}, "invalid_argument", "oifs"),  # the iif
        ("mfc.oif.add", {**KEY, "oifs": ["c", "c"]}, "invalid_argument", "oifs"),
        ("mfc.oif.add", {**KEY, "source": "10.0.0.9", "oifs": ["c"]}, "not_found", None),
        ("mfc.oif.del", {**KEY, "oifs": ["c"]}, "invalid_argument", "oifs"),  # not an oif
        ("mfc.oif.del", {**KEY, "oifs": ["b"]}, "invalid_argument", "oifs"),  # the last one
        ("mfc.oif.del", {**KEY, "source": "0.0.0.0", "oifs": ["b"]}, "invalid_argument", "source"),
        ("batch", {"ops": [{**KEY, "op": "oif_add", "oifs": ["c"], "x": 1}]}, "bad_request", "x"),
        (
            "batch",
            {"text": "mfc oif del --source 10.0.0.1 --group 239.1.1.1 --oifs b"},
            "invalid_argument",
            "oifs",
        ),
        (
            "batch",
            {"text": "mfc add --source 10.0.0.2 --group 239.1.1.1 --iif a --oifs a"},
            "invalid_argument",
            "oifs",
        ),
    ],
)
def test_bad_arguments_change_nothing(
    commands: Commands, cmd: str, args: dict[str, Any], code: str, field: str | None
) -> None:
    before = snapshot(commands)
    assert error_of(ask(commands, cmd, args)) == (code, field)
    assert snapshot(commands) == before


def test_the_protocols_command_list_is_what_mfcd_serves(commands: Commands) -> None:
    assert set(protocol.COMMANDS) == set(commands.table) | set(commands.deferred)
    assert len(protocol.COMMANDS) == len(set(protocol.COMMANDS))
    for cmd in protocol.COMMANDS:  # each is known (its empty args may still be wrong)
        message = ask(commands, cmd, {}, dry_run=True).get("error", {}).get("message", "")
        assert "unknown command" not in message
    assert "unknown command" in ask(commands, "mfc.show", {})["error"]["message"]


def test_a_bad_op_rejects_the_whole_batch_and_is_named(commands: Commands) -> None:
    before = snapshot(commands)
    good = dict(ROUTE, op="add", source="10.0.0.2")
    bad = dict(ROUTE, op="add", group="10.0.0.3")
    response = ask(commands, "batch", {"ops": [good, good, bad]})
    assert error_of(response) == ("invalid_argument", "group")
    assert response["error"]["op"] == 3 and "line" not in response["error"]
    assert response["error"]["message"].startswith("group 10.0.0.3 ")  # no "op 3:" in it
    assert snapshot(commands) == before


BATCH_TEXT = """\
# two adds, a comment, a blank line and a del
mfc add --source 10.0.0.2 --group 239.1.1.1 --iif a --oifs b,c

add --source 2001:db8::2 --group ff3e::1 --iif a --oifs b
mfc del --source 10.0.0.1 --group 239.1.1.1
"""


def test_a_batch_text_is_one_transaction(commands: Commands) -> None:
    result = ask(commands, "batch", {"text": BATCH_TEXT})["result"]
    assert result["changes"] == 3
    assert "plan" not in result
    router = commands.controller.router
    assert set(router.routes) == {
        (4, "10.0.0.2", "239.1.1.1", 253),
        (6, "2001:db8::2", "ff3e::1", 254),
    }
    state = commands.controller.state
    assert isinstance(state, FakeState)
    assert state.records[-1] == [
        ["add", 4, "10.0.0.2", "239.1.1.1", "a", ["b", "c"]],
        ["add", 6, "2001:db8::2", "ff3e::1", "a", ["b"]],
        ["del", 4, "10.0.0.1", "239.1.1.1"],
    ]


@pytest.mark.parametrize(
    ("bad", "code", "message"),
    [
        ("mfc add --source 10.0.0.3 --group 239.1.1.1 --iif a", "syntax_error", "needs --oifs"),
        ("mfc add --source 10.0.0.3 --group 10.0.0.4 --iif a --oifs b", "invalid_argument",
         "not a multicast address"),
        ("mfc del --source 10.0.0.9 --group 239.1.1.1", "not_found", "no route"),
    ],
)  # fmt: skip
def test_a_bad_line_of_a_batch_text_rejects_it_all_and_is_named_by_its_line(
    commands: Commands, bad: str, code: str, message: str
) -> None:
    before = snapshot(commands)
    response = ask(commands, "batch", {"text": BATCH_TEXT + "\n" + bad + "\n"})
    assert error_of(response)[0] == code
    assert response["error"]["line"] == 7 and "op" not in response["error"]
    assert message in response["error"]["message"]
    assert "line" not in response["error"]["message"]
    assert snapshot(commands) == before


@pytest.mark.parametrize("form", ["text", "ops"])
def test_a_batch_of_one_change_names_it_too(commands: Commands, form: str) -> None:
    gone = {"op": "del", "source": "10.0.0.9", "group": "239.1.1.1"}
    text = "# nothing else\n\nmfc del --source 10.0.0.9 --group 239.1.1.1\n"
    response = ask(commands, "batch", {"text": text} if form == "text" else {"ops": [gone]})
    assert error_of(response)[0] == "not_found"
    assert response["error"] == {
        "code": "not_found",
        "message": "no route for source 10.0.0.9 group 239.1.1.1",
        **({"line": 3} if form == "text" else {"op": 1}),
    }


def test_a_disabled_family_is_an_invalid_argument() -> None:
    commands = make_commands(families=(4,))
    v6 = {"source": "2001:db8::1", "group": "ff0e::1", "iif": "a", "oifs": ["b"]}
    assert error_of(ask(commands, "mfc.add", v6)) == ("invalid_argument", "source")
    assert ask(commands, "ping", {})["result"]["families"] == ["ipv4"]


def test_dry_run_reports_the_plan(commands: Commands) -> None:
    before = snapshot(commands)
    args = dict(ROUTE, source="10.0.0.2", oifs=["c"])
    result = ask(commands, "mfc.add", args, dry_run=True)["result"]
    assert result["dry_run"] is True
    assert [p["action"] for p in result["plan"]] == ["add_vif", "add_mfc"]
    assert snapshot(commands) == before
    result = ask(commands, "mfc.add", args)["result"]
    assert (result["dry_run"], result["state"]) == (False, "installed")


def test_a_dry_runs_plan_names_the_interfaces_of_its_routes(commands: Commands) -> None:
    args = dict(ROUTE, source="10.0.0.2", oifs=["b", "c"])
    plan = ask(commands, "mfc.add", args, dry_run=True)["result"]["plan"]
    (mfc,) = [p for p in plan if p["action"] == "add_mfc"]
    assert (mfc["iif"], mfc["oif_names"]) == ("a", ["b", "c"])
    assert len(mfc["oifs"]) == 2 and mfc["parent"] not in mfc["oifs"]  # (VIF numbers too)


@pytest.mark.parametrize("cmd", ["mfc.add", "batch"])
def test_a_changes_plan_names_the_interfaces_of_its_routes_as_a_dry_run_does(
    commands: Commands, cmd: str
) -> None:
    """mfcctl -v shows the plan of a change made as -n shows the one it would make: an add
    that takes a VIF (the general path), one that takes none (the one-route lane) and a
    batch's (with --verbose)."""

    def plan(source: str, oifs: list[str], dry_run: bool) -> list[dict[str, Any]]:
        route = dict(ROUTE, source=source, oifs=oifs)
        if cmd == "batch":
            text = f"mfc add --source {source} --group 239.1.1.1 --iif a --oifs {','.join(oifs)}"
            response = ask(commands, "batch", {"text": text, "plan": True}, dry_run=dry_run)
        else:
            response = ask(commands, "mfc.add", route, dry_run=dry_run)
        return [p for p in response["result"]["plan"] if p["action"] == "add_mfc"]

    for source, oifs in (("10.0.0.2", ["b", "c"]), ("10.0.0.3", ["c"])):  # (c: a VIF, then none)
        (planned,) = plan(source, oifs, dry_run=True)
        (made,) = plan(source, oifs, dry_run=False)
        assert (made["iif"], made["oif_names"]) == ("a", oifs)
        assert made == planned  # (the VIF numbers too)


TEMPLATE = {"group": "239.4.2.0/24", "iif": "a", "oifs": ["b"]}


def test_a_dry_runs_plan_lists_the_templates_it_adds_changes_and_removes(
    commands: Commands,
) -> None:
    def plan(cmd: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        result = ask(commands, cmd, args, dry_run=True)["result"]
        return [p for p in result["plan"] if p["action"].endswith("_template")]

    (add,) = plan("mfc.add", TEMPLATE)
    assert add == {
        "action": "add_template",
        "family": "ipv4",
        "source": "*",
        "group": "239.4.2.0/24",
        "table": 253,
        "iif": "a",
        "oifs": ["b"],
    }
    assert ask(commands, "mfc.add", TEMPLATE)["ok"]
    assert plan("mfc.add", TEMPLATE) == []  # (the same again: nothing changes)
    (change,) = plan("mfc.add", dict(TEMPLATE, oifs=["c"]))
    assert (change["action"], change["oifs"], change["was"]) == ("change_template", ["c"], ["b"])
    (remove,) = plan("mfc.del", {"group": "239.4.2.0/24"})
    assert (remove["action"], remove["iif"], remove["was"]) == ("remove_template", "a", ["b"])
    text = "add --group 239.5.0.0/16 --iif a --oifs b\n"
    (batch,) = plan("batch", {"text": text})
    assert (batch["action"], batch["group"]) == ("add_template", "239.5.0.0/16")


def test_a_degraded_route_says_why_and_names_what_is_missing(commands: Commands) -> None:
    result = ask(commands, "mfc.add", dict(ROUTE, oifs=["b", "zz"]))["result"]
    assert (result["state"], result["reason"]) == ("degraded", "waiting for zz")
    assert result["missing"] == ["zz"]
    assert [step["action"] for step in result["plan"]] == ["replace_mfc"]  # in the kernel now
    assert "missing" not in ask(commands, "mfc.add", ROUTE)["result"]


def test_a_pending_route_says_why_and_names_what_is_missing(commands: Commands) -> None:
    result = ask(commands, "mfc.add", dict(ROUTE, iif="yy", oifs=["b", "zz"]))["result"]
    assert (result["state"], result["reason"]) == ("pending", "waiting for yy, zz")
    assert result["missing"] == ["yy", "zz"]


def oifs_of(commands: Commands, source: str = "10.0.0.1") -> tuple[str, ...]:
    return commands.controller.router.routes[(4, source, "239.1.1.1", 253)].oifs


def test_oif_add_and_del_change_one_oif_and_journal_the_whole_route(commands: Commands) -> None:
    result = ask(commands, "mfc.oif.add", {**KEY, "oifs": ["c"]})["result"]
    assert [step["action"] for step in result["plan"]] == ["add_vif", "replace_mfc"]
    assert result["state"] == "installed"
    assert oifs_of(commands) == ("b", "c")
    assert ask(commands, "mfc.oif.add", {**KEY, "oifs": ["b"]})["result"]["plan"] == []
    ask(commands, "mfc.oif.del", {**KEY, "oifs": ["b"]})
    assert oifs_of(commands) == ("c",)
    state = commands.controller.state
    assert isinstance(state, FakeState)
    assert state.records[-2:] == [
        [["add", 4, "10.0.0.1", "239.1.1.1", "a", ["b", "c"]]],
        [["add", 4, "10.0.0.1", "239.1.1.1", "a", ["c"]]],
    ]


def test_oif_add_of_a_missing_interface_makes_the_route_degraded(commands: Commands) -> None:
    result = ask(commands, "mfc.oif.add", {**KEY, "oifs": ["zz"]})["result"]
    assert (result["state"], result["missing"]) == ("degraded", ["zz"])
    assert [step["action"] for step in result["plan"]] == ["replace_mfc"]  # still forwards to b


def test_oif_changes_dry_run_changes_nothing(commands: Commands) -> None:
    before = snapshot(commands)
    result = ask(commands, "mfc.oif.add", {**KEY, "oifs": ["c"]}, dry_run=True)["result"]
    assert [step["action"] for step in result["plan"]] == ["add_vif", "replace_mfc"]
    assert snapshot(commands) == before


@pytest.mark.parametrize("form", ["text", "ops"])
def test_oif_changes_in_a_batch_build_on_the_changes_before_them(
    commands: Commands, form: str
) -> None:
    text = """\
mfc add --source 10.0.0.2 --group 239.1.1.1 --iif a --oifs b
mfc oif add --source 10.0.0.2 --group 239.1.1.1 --oifs c
mfc oif del --source 10.0.0.2 --group 239.1.1.1 --oifs b
mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs c
mfc del --source 10.0.0.1 --group 239.1.1.1
"""
    ops = [batchfile.line_op(line.split()) for line in text.splitlines()]
    result = ask(commands, "batch", {"text": text} if form == "text" else {"ops": ops})["result"]
    assert (result["added"], result["deleted"], result["updated"]) == (1, 1, 3)
    assert (result["pending"], result["degraded"]) == (0, 0)
    assert commands.controller.router.routes == {
        (4, "10.0.0.2", "239.1.1.1", 253): Ports("a", ("c",)),
    }


def test_an_oif_change_after_its_route_is_deleted_in_the_batch_is_not_found(
    commands: Commands,
) -> None:
    before = snapshot(commands)
    text = """\
mfc del --source 10.0.0.1 --group 239.1.1.1
mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs c
"""
    response = ask(commands, "batch", {"text": text})
    assert error_of(response) == ("not_found", None)
    assert response["error"]["message"] == "no route for source 10.0.0.1 group 239.1.1.1"
    assert response["error"]["line"] == 2
    assert snapshot(commands) == before


def test_a_batch_counts_its_pending_and_degraded_routes_and_names_the_missing_interfaces(
    commands: Commands,
) -> None:
    """Pending: the iif is missing (not installed); degraded: an oif is (installed)."""
    text = """\
mfc add --source 10.0.0.2 --group 239.1.1.1 --iif a --oifs b,r9
mfc add --source 10.0.0.3 --group 239.1.1.1 --iif r8 --oifs b
mfc add --source 10.0.0.3 --group 239.1.1.1 --iif r8 --oifs b
mfc add --source 10.0.0.4 --group 239.1.1.1 --iif a --oifs r7
mfc del --source 10.0.0.4 --group 239.1.1.1
mfc add --source 10.0.0.5 --group 239.1.1.1 --iif a --oifs c
mfc add --source 10.0.0.6 --group 239.1.1.1 --iif a --oifs b,r9
"""
    result = ask(commands, "batch", {"text": text})["result"]
    assert (result["added"], result["deleted"], result["updated"]) == (6, 1, 0)
    assert (result["pending"], result["degraded"], result["missing"]) == (1, 2, ["r8", "r9"])
    router = commands.controller.router
    assert (4, "10.0.0.6", "239.1.1.1", 253) in router.installed
    result = ask(commands, "batch", {"text": text}, dry_run=True)["result"]
    assert "pending" not in result and "degraded" not in result


def test_a_batchs_runs_are_counted_degraded_a_run_at_a_time(commands: Commands) -> None:
    """Runs on interfaces that all exist are not looked into, even with a VIF reserved for
    a missing interface elsewhere; a run on a missing oif is degraded, route by route."""
    n = 2 * RUN_MIN
    ask(commands, "mfc.add", dict(ROUTE, source="10.0.9.9", oifs=["b", "zz"]))  # (zz reserved)

    def lines(first: int, oifs: str) -> str:
        return "".join(
            f"mfc add --source 10.1.{i // 200}.{i % 200 + 1} --group 239.1.1.1 --iif a"
            f" --oifs {oifs}\n"
            for i in range(first, first + n)
        )

    result = ask(commands, "batch", {"text": lines(0, "b")})["result"]
    assert (result["added"], result["pending"], result["degraded"]) == (n, 0, 0)
    result = ask(commands, "batch", {"text": lines(n, "yy")})["result"]  # (forwards nowhere)
    assert (result["added"], result["pending"], result["degraded"]) == (n, 0, n)
    assert result["missing"] == ["yy"]
    assert len(commands.controller.router.installed) == 2 * n + 2


# --- fuzzing -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ("source", "group", "iif", "oifs", "interface", "threshold", "stats", "ops", "op")
field_values = st.one_of(
    json_values,
    st.sampled_from(["10.0.0.1", "10.0.0.2", "239.1.1.1", "224.0.0.1", "2001:db8::1", "ff0e::1"]),
    st.sampled_from(["a", "b", "c", "x", ".", "a b"]),
    st.lists(st.sampled_from(["a", "b", "c", "x", "a"]), max_size=3),
)
arg_objects = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=5)
envelopes = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None])},
    optional={
        "id": json_values,
        "cmd": st.sampled_from([*protocol.COMMANDS, "nope"]) | json_values,
        "args": arg_objects
        | st.fixed_dictionaries({"ops": st.lists(arg_objects, max_size=3)})
        | json_values,
        "dry_run": st.booleans() | json_values,
    },
)


def check_one(commands: Commands, line: bytes) -> None:
    before = snapshot(commands)
    response = answer(commands, line)
    if not response["ok"]:
        assert response["error"]["code"] != "internal_error", response
        assert snapshot(commands) == before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes(line: bytes) -> None:
    check_one(make_commands(), line)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_fuzz_json_values(value: Any) -> None:
    check_one(make_commands(), json.dumps(value).encode())


@settings(max_examples=250, deadline=None)
@given(envelopes)
def test_fuzz_requests(msg: dict[str, Any]) -> None:
    check_one(make_commands(), json.dumps(msg).encode())


def test_vif_set_to_the_default_clears_the_setting_and_is_journaled_as_that(
    commands: Commands,
) -> None:
    ask(commands, "vif.set", {"interface": "b", "threshold": 5})
    assert ask(commands, "vif.show", {})["result"]["settings"] == [
        {"interface": "b", "threshold": 5, "mrdisc": False, "threshold_origin": "api"}
    ]
    result = ask(commands, "vif.set", {"interface": "b", "threshold": 1})["result"]
    assert [step["action"] for step in result["plan"]] == ["reissue_mfc"]
    assert ask(commands, "vif.show", {})["result"]["settings"] == []
    state = commands.controller.state
    assert isinstance(state, FakeState)
    assert state.records[-1] == [["threshold", "b", 1]]
    # A journal replayed at start may hold the default as a setting: it is shown as none.
    commands.controller.router.thresholds["c"] = 1
    assert ask(commands, "vif.show", {})["result"]["settings"] == []


def test_a_threshold_of_one_table_is_shown_journaled_and_removed_alone(
    commands: Commands,
) -> None:
    in_100 = dict(ROUTE, table=100)
    assert ask(commands, "mfc.add", in_100)["ok"]
    ask(commands, "vif.set", {"interface": "b", "threshold": 5})
    result = ask(commands, "vif.set", {"interface": "b", "threshold": 9, "table": 100})["result"]
    assert [step["action"] for step in result["plan"]] == ["reissue_mfc"]
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    ttls = {key[3]: mfc.ttls for key, mfc in kernel.mfcs.items()}
    assert ttls == {253: {1: 5}, 100: {1: 9}}
    shown = ask(commands, "vif.show", {})["result"]
    assert shown["settings"] == [
        {"interface": "b", "threshold": 5, "mrdisc": False, "threshold_origin": "api"},
        {"interface": "b", "table": 100, "threshold": 9, "threshold_origin": "api"},
    ]
    assert {(v["table"], v["interface"]): v["threshold"] for v in shown["vifs"]} == {
        (253, "a"): 1,
        (253, "b"): 5,
        (100, "a"): 1,
        (100, "b"): 9,
    }
    state = commands.controller.state
    assert isinstance(state, FakeState)
    assert state.records[-1] == [["threshold", "b", 9, 100]]
    # `default` with a table removes that table's setting only: the every-table 5 again.
    ask(commands, "vif.set", {"interface": "b", "threshold": "default", "table": 100})
    assert state.records[-1] == [["threshold", "b", 0, 100]]
    assert {key[3]: mfc.ttls for key, mfc in kernel.mfcs.items()} == {253: {1: 5}, 100: {1: 5}}
    assert [s.get("table") for s in ask(commands, "vif.show", {})["result"]["settings"]] == [None]


def test_vif_show_says_where_each_setting_comes_from_and_lists_mrdisc(
    commands: Commands,
) -> None:
    from tests.unit.test_declarations import apply  # noqa: PLC0415 (its config helpers)

    apply(commands.controller, '[[interface]]\nname = "b"\nthreshold = 16\nmrdisc = true\n')
    ask(commands, "vif.set", {"interface": "c", "mrdisc": True})
    ask(commands, "vif.set", {"interface": "a", "threshold": 3})
    assert ask(commands, "vif.show", {})["result"]["settings"] == [
        {"interface": "a", "threshold": 3, "mrdisc": False, "threshold_origin": "api"},
        {
            "interface": "b",
            "threshold": 16,
            "mrdisc": True,
            "threshold_origin": "config",
            "mrdisc_origin": "config",
        },
        {"interface": "c", "threshold": 1, "mrdisc": True, "mrdisc_origin": "api"},
    ]


def test_sync_reads_the_whole_table_only_when_small_or_asked(
    commands: Commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    kernel.names = {1: "a", 2: "b", 3: "c"}
    commands.plane = kernel
    assert ask(commands, "sync", {})["result"]["full"] is True  # 1 route: the dump is cheap
    monkeypatch.setattr(commands_module, "FULL_SYNC_ROUTES", 0)
    result = ask(commands, "sync", {})["result"]
    assert result == {"dry_run": False, "repairs": [], "full": False}
    assert ask(commands, "sync", {"full": True})["result"]["full"] is True
    assert ask(commands, "sync", {"full": 1})["error"]["code"] == "bad_request"
    asked = [entries for _family, _table, entries in kernel.observed]
    assert asked == [True, True, False, False, True, True]  # IPv4 and IPv6 each time


def test_a_sync_counts_its_repairs_for_metrics_but_a_dry_run_does_not(
    commands: Commands,
) -> None:
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    kernel.names = {1: "a", 2: "b", 3: "c"}
    commands.plane = kernel
    kernel.mfcs.clear()  # the route's entry removed behind mfcd's back
    registry = commands.registry
    assert len(ask(commands, "sync", {}, dry_run=True)["result"]["repairs"]) == 1
    assert registry.drift_checked_at is None and not registry.drift_repairs
    before = time.time()
    ask(commands, "sync", {})
    assert registry.drift_repairs == {"reissue_mfc": 1}
    assert registry.drift_checked_at is not None and registry.drift_checked_at >= before
    ask(commands, "sync", {})  # nothing to repair: a check all the same
    assert registry.drift_repairs == {"reissue_mfc": 1}
    assert registry.last_repairs is not None and registry.last_repairs[1] == {"reissue_mfc": 1}


def test_ping_reports_the_upcalls_counted_by_kind(commands: Commands) -> None:
    assert ask(commands, "ping", {})["result"]["upcalls"] == {
        "nocache": 0,
        "wrongvif": 0,
        "wholepkt": 0,
    }
    commands.upcalls.update(["nocache", "nocache", "wrongvif"])
    assert ask(commands, "ping", {})["result"]["upcalls"] == {
        "nocache": 2,
        "wrongvif": 1,
        "wholepkt": 0,
    }


# --- tables ---------------------------------------------------------------------------------------


def test_a_route_names_its_table_by_number_or_name_and_show_tells_it(
    commands: Commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "_table_names", {"studio": 100, "main": 254})
    other = {**ROUTE, "iif": "c", "oifs": ["a"], "table": "studio"}
    result = ask(commands, "mfc.add", other)["result"]
    assert [(s["action"], s["table"]) for s in result["plan"]] == [
        ("add_vif", 100),
        ("add_vif", 100),
        ("add_mfc", 100),
    ]
    shown = ask(commands, "show", {})["result"]
    # By family, then table: table 100 before the default table 253.
    assert [(r["table"], r["iif"]) for r in shown["routes"]] == [(100, "c"), (253, "a")]
    only = ask(commands, "show", {"table": 100})["result"]
    assert [r["iif"] for r in only["routes"]] == ["c"]
    assert {v["table"] for v in only["vifs"]} == {100}
    assert ask(commands, "mfc.add", {**ROUTE, "source": "2001:db8::1", "group": "ff3e::1"})["ok"]
    vifs = ask(commands, "vif.show", {"table": "default"})["result"]["vifs"]  # both families'
    assert [(v["interface"], v["table"]) for v in vifs] == [
        ("a", 253),
        ("b", 253),
        ("a", 254),
        ("b", 254),
    ]
    vifs = ask(commands, "vif.show", {"table": 254})["result"]["vifs"]
    assert [(v["interface"], v["family"]) for v in vifs] == [("a", "ipv6"), ("b", "ipv6")]
    assert ask(commands, "mfc.del", {"source": "2001:db8::1", "group": "ff3e::1"})["ok"]
    # The same (S,G) in another table is another route: deleting one leaves the other.
    assert ask(commands, "mfc.del", {**KEY, "table": 100})["ok"]
    assert set(commands.controller.router.routes) == {(4, "10.0.0.1", "239.1.1.1", 253)}
    code = error_of(ask(commands, "mfc.del", {**KEY, "table": 100}))
    assert code == ("not_found", None)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (0, "out of range"),
        (2**32, "out of range"),
        ("nosuch", "not a table name"),
        (True, "must be a number or a table name"),
        ([100], "must be a number or a table name"),
    ],
)
def test_a_bad_table_is_refused_and_changes_nothing(
    commands: Commands, table: Any, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "_table_names", {"studio": 100})
    before = snapshot(commands)
    response = ask(commands, "mfc.add", {**ROUTE, "table": table})
    assert error_of(response) == ("invalid_argument", "table")
    assert words in response["error"]["message"]
    assert snapshot(commands) == before


def test_a_table_too_large_for_its_family_is_refused_in_a_request_or_a_batch_line(
    commands: Commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel takes IPv4 tables below 10**9 and IPv6 tables below 10**8: refused here, one
    # line naming the limit, not later as a kernel error.
    monkeypatch.setattr(validate, "_table_names", {"big": 100_000_000})
    v6 = {"source": "2001:db8::1", "group": "ff3e::1", "iif": "a", "oifs": ["b"]}
    before = snapshot(commands)
    for args, limit in (
        ({**ROUTE, "table": 10**9}, "999999999"),
        ({**v6, "table": 10**8}, "99999999"),
        ({**v6, "table": "big"}, "99999999"),
    ):
        response = ask(commands, "mfc.add", args)
        assert error_of(response) == ("invalid_argument", "table")
        assert limit in response["error"]["message"]
        assert "\n" not in response["error"]["message"]
    for line in (
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif c --oifs a --table 1000000000\n",
        "mfc add --source 2001:db8::1 --group ff3e::1 --iif c --oifs a --table 100000000\n",
    ):
        response = ask(
            commands,
            "batch",
            {"text": "mfc add --source 10.0.0.9 --group 239.1.1.1 --iif c --oifs a\n" + line},
        )
        assert error_of(response)[0] == "invalid_argument"
        assert response["error"]["line"] == 2
        assert "out of range for IPv" in response["error"]["message"]
    assert snapshot(commands) == before
    assert ask(commands, "mfc.add", {**ROUTE, "table": 999_999_999})["ok"]
    assert ask(commands, "mfc.add", {**v6, "table": 99_999_999})["ok"]


def test_batch_lines_and_ops_take_a_table(commands: Commands) -> None:
    text = (
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif c --oifs a --table 100\n"
        "mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs b --table 100\n"
    )
    assert ask(commands, "batch", {"text": text})["ok"]
    ops = [{"op": "oif_del", **KEY, "oifs": ["a"], "table": 100}]
    assert ask(commands, "batch", {"ops": ops})["ok"]
    router = commands.controller.router
    assert router.routes[(4, "10.0.0.1", "239.1.1.1", 100)] == Ports("c", ("b",))
    assert router.routes[(4, "10.0.0.1", "239.1.1.1", 253)] == Ports("a", ("b",))


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        ("mfc.add", dict(ROUTE, oifs=["b", ""])),
        ("mfc.add", {"group": "239.2.0.0/16", "iif": "a", "oifs": ["", "b*"]}),
        ("mfc.oif.add", {**KEY, "oifs": [""]}),
        ("mfc.oif.del", {**KEY, "oifs": ["b", ""]}),
        ("batch", {"ops": [dict(ROUTE, op="add", oifs=["", "c"])]}),
    ],
)
def test_an_empty_oif_name_in_a_request_is_refused_with_the_one_message(
    commands: Commands, cmd: str, args: dict[str, Any]
) -> None:
    before = snapshot(commands)
    response = ask(commands, cmd, args)
    assert error_of(response) == ("invalid_argument", "oifs")
    assert response["error"]["message"].startswith("oifs has an empty interface name (as in r1,,r2")
    assert snapshot(commands) == before


@pytest.mark.parametrize("name", ["r+", "r*", "vlan*"])
@pytest.mark.parametrize("setting", [{"threshold": 3}, {"mrdisc": True}])
def test_vif_set_refuses_a_wildcard_with_one_message(
    commands: Commands, name: str, setting: dict[str, Any]
) -> None:
    before = snapshot(commands)
    response = ask(commands, "vif.set", {"interface": name, **setting})
    assert error_of(response) == ("invalid_argument", "interface")
    assert response["error"]["message"] == (
        f"interface {name} is a wildcard (a name ending in * or +): an interface setting names"
        " one interface; set each interface on its own"
    )
    assert snapshot(commands) == before


def test_vif_set_of_a_missing_interface_says_so_and_applies_when_it_appears(
    commands: Commands,
) -> None:
    result = ask(commands, "vif.set", {"interface": "r8", "threshold": 3})["result"]
    assert result["missing"] == ["r8"]
    assert "missing" not in ask(commands, "vif.set", {"interface": "b", "threshold": 2})["result"]
    dry = ask(commands, "vif.set", {"interface": "r9", "threshold": 3}, dry_run=True)["result"]
    assert "missing" not in dry
    # The warning's promise: once r8 appears, a route out of it uses the threshold.
    ctl = commands.controller
    ctl.link_up("r8", 8)
    assert ask(commands, "mfc.add", dict(ROUTE, oifs=["r8"]))["ok"]
    kernel = ctl.kernel
    assert isinstance(kernel, FakeKernel)
    vif = next(v for (f, t, v), ifindex in kernel.vifs.items() if ifindex == 8)
    assert kernel.mfcs[(4, "10.0.0.1", "239.1.1.1", 253)].ttls == {vif: 3}


def test_vif_set_removing_a_setting_of_a_missing_interface_warns_of_nothing(
    commands: Commands,
) -> None:
    for setting in ({"threshold": "default"}, {"mrdisc": False}):
        result = ask(commands, "vif.set", {"interface": "r8", **setting})["result"]
        assert "missing" not in result
    result = ask(commands, "vif.set", {"interface": "r8", "threshold": 1, "table": 100})
    assert result["result"]["missing"] == ["r8"]  # (one table's 1 is a setting: it wins there)


def test_vif_set_of_a_threshold_warns_when_the_interface_carries_ipv6(
    commands: Commands,
) -> None:
    assert "warnings" not in ask(commands, "vif.set", {"interface": "b", "threshold": 5})["result"]
    v6 = {"source": "2001:db8::1", "group": "ff3e::1", "iif": "a", "oifs": ["b"]}
    assert ask(commands, "mfc.add", v6)["ok"]
    result = ask(commands, "vif.set", {"interface": "b", "threshold": 6})["result"]
    assert result["warnings"] == [
        "a threshold limits IPv4 only: b also forwards IPv6 routes (a VIF of IPv6 table 254),"
        " which it does not limit"
    ]
    assert "warnings" not in ask(commands, "vif.set", {"interface": "b", "mrdisc": True})["result"]
    removed = ask(commands, "vif.set", {"interface": "b", "threshold": "default"})["result"]
    assert "warnings" not in removed


def test_vif_show_gives_no_threshold_for_an_ipv6_vif_which_linux_ignores(
    commands: Commands,
) -> None:
    assert ask(commands, "vif.set", {"interface": "b", "threshold": 5})["ok"]
    v6 = {"source": "2001:db8::1", "group": "ff3e::1", "iif": "a", "oifs": ["b"]}
    assert ask(commands, "mfc.add", v6)["ok"]
    for cmd in ("vif.show", "show"):
        vifs = ask(commands, cmd, {})["result"]["vifs"]
        shown = {(v["family"], v["interface"]): v["threshold"] for v in vifs}
        assert shown == {
            ("ipv4", "a"): 1,
            ("ipv4", "b"): 5,
            ("ipv6", "a"): None,
            ("ipv6", "b"): None,
        }


def test_tell_gives_a_reloads_changes_their_origin_and_counts_what_no_buffer_holds(
    commands: Commands,
) -> None:
    bus = EventBus()
    sub = bus.subscribe(lambda: None, limit=3)
    router = commands.controller.router
    key = (4, "10.0.0.1", "239.1.1.1", 253)
    gone = (4, "10.0.0.9", "239.1.1.9", 253)  # (a route the reload removed: no origin left)
    many = (DelRoute((4, "10.0.0.9", f"239.2.0.{n}", 253)) for n in range(100_000))
    changes: list[Change] = [
        DelRoute(gone),
        AddRoute(key, router.routes[key]),
        SetThreshold("b", 5),
    ]
    tell(bus, router, itertools.chain(changes, many), 100_003, origin="config")
    told = sub.take()
    assert [(e["event"], e["origin"]) for e in told[:3]] == [
        ("route.del", "config"),
        ("route.add", "config"),
        ("threshold", "config"),
    ]
    assert told[3] == {"event": "gap", "time": told[3]["time"], "dropped": 100_000}


def test_tell_gives_a_threshold_of_one_table_the_value_that_table_uses_now(
    commands: Commands,
) -> None:
    bus = EventBus()
    sub = bus.subscribe(lambda: None, limit=3)
    router = commands.controller.router
    router.thresholds["b"] = 5  # (the every-table one, which a removed table setting leaves)
    tell(bus, router, [SetThreshold("b", 0, 100)], 1)
    [event] = sub.take()
    assert (event["table"], event["threshold"], event["origin"]) == (100, 5, "api")


def test_not_found_says_which_other_table_holds_the_route_or_template(
    commands: Commands,
) -> None:
    """On a router of several tables the usual reason a route is "not found" is a missing or
    extra --table: the message names the table that holds it."""
    route = {"source": "10.0.0.2", "group": "239.1.1.1"}  # (not ROUTE)
    assert ask(commands, "mfc.add", {**route, "iif": "a", "oifs": ["b"], "table": 100})["ok"]
    for cmd, args in (("mfc.del", route), ("mfc.oif.add", {**route, "oifs": ["c"]})):
        before = snapshot(commands)
        response = ask(commands, cmd, args)
        assert snapshot(commands) == before
        assert error_of(response) == ("not_found", None)
        assert response["error"]["message"] == (
            "no route for source 10.0.0.2 group 239.1.1.1; there is one in table 100 (--table 100)"
        )
    assert ask(commands, "mfc.add", {**route, "iif": "a", "oifs": ["b"]})["ok"]
    assert ask(commands, "mfc.del", {**route, "table": 7})["error"]["message"] == (
        "no route for source 10.0.0.2 group 239.1.1.1 in table 7;"
        " there is one in tables 100, 253 (say which with --table)"
    )
    assert ask(commands, "mfc.del", {**route, "table": 100})["ok"]
    assert ask(commands, "mfc.del", {**route, "table": 100})["error"]["message"] == (
        "no route for source 10.0.0.2 group 239.1.1.1 in table 100;"
        " there is one in the default table 253 (without --table)"
    )
    template = {"group": "239.2.0.0/16"}
    assert ask(commands, "mfc.add", {**template, "iif": "a", "oifs": ["b"], "table": 100})["ok"]
    assert ask(commands, "mfc.del", template)["error"]["message"] == (
        "no template source * group 239.2.0.0/16; there is one in table 100 (--table 100)"
    )
    # Named with its iif (trial 14 F12): the table that holds it, or the iif it has.
    assert ask(commands, "mfc.del", {**template, "iif": "a"})["error"]["message"] == (
        "no template source * group 239.2.0.0/16 iif a; there is one in table 100 (--table 100)"
    )
    assert ask(commands, "mfc.del", {**template, "iif": "c", "table": 100})["error"]["message"] == (
        "no template source * group 239.2.0.0/16 iif c in table 100;"
        " there is one with iif a (--iif a)"
    )
    assert ask(commands, "mfc.del", {**template, "iif": "c"})["error"]["message"] == (
        "no template source * group 239.2.0.0/16 iif c;"
        " there is one with iif a in table 100 (--table 100)"
    )
    # A route that exists nowhere else: the message as it always was.
    assert (
        ask(commands, "mfc.del", {"source": "10.0.0.9", "group": "239.1.1.1"})["error"]["message"]
        == "no route for source 10.0.0.9 group 239.1.1.1"
    )


@pytest.mark.parametrize("form", ["text", "ops"])
def test_a_batch_table_is_that_of_the_lines_that_name_none(commands: Commands, form: str) -> None:
    """`batch --table 100`: every route and template line without --table goes to table 100
    (read as columns or line by line, IPv4 and IPv6), a line's own --table still counts, and
    joins (which have no table) are as they were."""
    usual = [f"mfc add --source 10.0.0.5 --group 239.3.0.{i} --iif a --oifs b" for i in range(40)]
    lines = [
        *usual,  # (read as one run of columns)
        "mfc add --source 10.0.0.5 --group 239.3.1.1 --iif a --oifs b --table 7",
        "mfc add --group 239.4.0.0/16 --iif a --oifs c",
        "mfc add --source 2001:db8::5 --group ff3e::5 --iif a --oifs b",
        "join --interface c --group 239.5.5.5",
    ]
    if form == "text":
        args: dict[str, Any] = {"text": "".join(line + "\n" for line in lines)}
    else:
        args = {"ops": [batchfile.line_op(batchfile.words(line)) for line in lines]}
    response = ask(commands, "batch", {**args, "table": 100})
    assert response["ok"], response
    router = commands.controller.router
    tables = Counter(key[3] for key in router.routes if key[1] != "10.0.0.1")
    assert tables == {100: 41, 7: 1}
    assert [key[3] for key in router.templates] == [100]
    assert (6, "2001:db8::5", "ff3e::5", 100) in router.routes
    assert commands.controller.joins.wanted  # the join, as without --table
    assert (4, "10.0.0.1", "239.1.1.1", 253) in router.routes  # ROUTE, untouched


def test_a_bad_batch_table_changes_nothing(commands: Commands) -> None:
    before = snapshot(commands)
    text = "mfc add --source 10.0.0.5 --group 239.3.0.1 --iif a --oifs b\n"
    response = ask(commands, "batch", {"text": text, "table": 0})
    assert error_of(response) == ("invalid_argument", "table")
    assert snapshot(commands) == before


def test_a_route_or_template_in_a_table_its_iifs_traffic_does_not_reach_is_warned_of(
    commands: Commands,
) -> None:
    """`--table main` for IPv4 (254, no rule goes there), or the default table for an iif
    an mrule steers to table 100: accepted, installed, forwarding nothing, and said
    nowhere (trial 14 F6). A warning, in `warnings`, the rules read once a request."""
    rules = Rules((MRule(0, "lookup", 100, iif="c"), MRule(32767, "lookup", 253)))
    read: list[int] = []

    def mrules(family: int) -> Rules:
        read.append(family)
        return rules

    commands.mrules = mrules
    to_main = "no multicast rule sends a's traffic to IPv4 table 254"
    steered = "no multicast rule sends c's traffic to IPv4's default table 253: c goes to table"
    route = {"source": "10.0.0.7", "group": "239.5.5.6", "iif": "a", "oifs": ["b"]}
    for envelope in ({"dry_run": True}, {}):  # (the dry run, then the one-route lane)
        response = ask(commands, "mfc.add", {**route, "table": 254}, **envelope)
        assert response["ok"]
        assert [w[: len(to_main)] for w in response["result"]["warnings"]] == [to_main]
    assert read == [4, 4]
    template = {"group": "239.6.0.0/16", "iif": "c", "oifs": ["b"]}
    response = ask(commands, "mfc.add", template)
    assert response["ok"] and response["result"]["warnings"][0].startswith(steered)
    # Where the rules send the iif's traffic: no warning.
    assert "warnings" not in ask(commands, "mfc.add", {**template, "table": 100})["result"]
    assert "warnings" not in ask(commands, "mfc.add", {**route, "group": "239.5.5.7"})["result"]
    # A batch: each table and iif once, however many routes have them.
    lines = [
        f"mfc add --table 254 --source 10.0.0.7 --group 239.7.0.{n} --iif a --oifs b"
        for n in range(50)
    ]
    lines += [f"mfc add --source 10.0.0.8 --group 239.7.1.{n} --iif c --oifs b" for n in range(50)]
    read.clear()
    result = ask(commands, "batch", {"text": "\n".join(lines)})["result"]
    assert result["added"] == 100
    assert [w[:40] for w in result["warnings"]] == [steered[:40], to_main[:40]]
    assert read == [4]
    ops = [{"op": "add", "source": "10.0.0.9", "group": "239.8.0.1", "iif": "c", "oifs": ["b"]}]
    assert ask(commands, "batch", {"ops": ops})["result"]["warnings"][0].startswith(steered)


def test_a_batch_counts_the_templates_among_what_it_added_and_deleted() -> None:
    """Trial 14 F16: a batch of 4 routes and 2 templates said "6 added"."""
    commands = make_commands()
    ops: list[dict[str, Any]] = [
        {"op": "add", "source": f"10.0.0.{n}", "group": "239.5.5.5", "iif": "a", "oifs": ["b"]}
        for n in range(4)
    ]
    ops += [{"op": "add", "group": f"239.{n}.0.0/16", "iif": "a", "oifs": ["c"]} for n in (7, 8)]
    result = ask(commands, "batch", {"ops": ops})["result"]
    assert (result["added"], result["templates_added"], result["templates_deleted"]) == (6, 2, 0)
    result = ask(commands, "batch", {"ops": ops[:4]})["result"]  # (routes alone: as before)
    assert "templates_added" not in result


def test_the_tables_a_batch_reaches_count_each_family_though_they_share_ports() -> None:
    ports = Ports("a", ("b",))
    changes: list[Any] = [
        AddRoute((4, "10.0.0.1", "239.1.1.1", 100), ports),
        AddRoute((6, "2001:db8::1", "ff3e::1", 100), ports),
    ]
    assert _reaching(changes, ()) == {(4, 100, "a"), (6, 100, "a")}


def test_a_single_add_under_the_same_rules_is_not_walked_again_unless_it_was_warned_of(
    commands: Commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = Rules((MRule(0, "lookup", 100, iif="c"), MRule(32767, "lookup", 253)))
    commands.mrules = lambda family: rules
    walked: list[object] = []
    unreached = diagnosis.unreached_warnings

    def counting(*args: Any, **kwargs: Any) -> list[str]:
        walked.append(args)
        return unreached(*args, **kwargs)

    monkeypatch.setattr(commands_module, "unreached_warnings", counting)
    for n in range(3):  # (the one-route lane)
        route = {"source": "10.0.0.7", "group": f"239.5.5.{n}", "iif": "a", "oifs": ["b"]}
        assert "warnings" not in ask(commands, "mfc.add", route)["result"]
    assert len(walked) == 1
    steered = {"source": "10.0.0.7", "group": "239.5.6.1", "iif": "c", "oifs": ["b"]}
    for n in range(2):  # warned of each time
        result = ask(commands, "mfc.add", {**steered, "group": f"239.5.6.{n}"})["result"]
        assert result["warnings"][0].startswith("no multicast rule sends c's traffic")
    rules = Rules((MRule(0, "lookup", 100, iif="a"), MRule(32767, "lookup", 253)))
    route = {"source": "10.0.0.7", "group": "239.5.5.9", "iif": "a", "oifs": ["b"]}
    assert ask(commands, "mfc.add", route)["result"]["warnings"]  # (the rules changed)
