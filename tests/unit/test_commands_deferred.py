"""Tests for the commands the server completes itself (diagnose, monitor) and for the events
changes tell monitor subscribers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mfcd.commands import Commands, Deferred
from mfcd.protocol import Stream
from tests.unit.test_commands import PEER, ROUTE, ask, make_commands
from tests.unit.test_request_types import VALUES


def dispatch(commands: Commands, cmd: str, args: dict[str, Any]) -> bytes | Deferred:
    line = json.dumps({"v": 1, "id": 9, "cmd": cmd, "args": args}).encode()
    response = commands.settle(commands.submit(line, PEER))
    assert not isinstance(response, Stream)
    return response


def error_of(response: bytes | Deferred) -> dict[str, Any]:
    assert isinstance(response, bytes)
    message = json.loads(response)
    assert message["ok"] is False
    error: dict[str, Any] = message["error"]
    return error


def test_monitor_is_a_subscription() -> None:
    response = dispatch(make_commands(), "monitor", {})
    assert isinstance(response, Deferred)
    assert (response.request_id, response.subscribe, response.answer) == (9, True, None)


def test_deferred_commands_are_refused_outside_the_server() -> None:
    response = ask(make_commands(), "monitor", {})
    assert response["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({}, "group"),
        ({"group": "198.18.0.1"}, "group"),
        ({"group": "239.1.1.1", "source": "239.0.0.1"}, "source"),
        ({"group": "239.1.1.1", "seconds": 60}, "seconds"),
        ({"group": "239.1.1.1", "seconds": True}, "seconds"),
        ({"group": "239.1.1.1", "table": 0}, "table"),
        ({"group": "239.1.1.1", "colour": "red"}, "colour"),
    ],
)
def test_diagnose_arguments_are_checked_before_anything_runs(
    args: dict[str, Any], field: str | None
) -> None:
    error = error_of(dispatch(make_commands(), "diagnose", args))
    assert error["code"] in ("bad_request", "invalid_argument")
    assert error.get("field") == field


def test_diagnose_of_a_disabled_family_is_refused() -> None:
    commands = make_commands(families=(4,))
    error = error_of(dispatch(commands, "diagnose", {"group": "ff3e::1"}))
    assert "IPv6 is disabled" in error["message"]


def test_diagnose_without_a_route_answers_later_with_a_failed_checklist() -> None:
    commands = make_commands()
    deferred = dispatch(commands, "diagnose", {"group": "239.9.9.9", "seconds": 0.1})
    assert isinstance(deferred, Deferred) and deferred.answer is not None
    response = json.loads(asyncio.run(deferred.answer()))
    assert response["id"] == 9
    result = response["result"]
    assert result["verdict"] == "failed"
    assert result["flows"][0]["route"] is None
    assert result["flows"][0]["checks"][0]["check"] == "route"


def diagnosed(commands: Commands, args: dict[str, Any]) -> dict[str, Any]:
    deferred = dispatch(commands, "diagnose", {**args, "seconds": 0.1})
    assert isinstance(deferred, Deferred) and deferred.answer is not None
    result: dict[str, Any] = json.loads(asyncio.run(deferred.answer()))["result"]
    return result


def test_diagnose_without_a_table_finds_the_route_in_its_table() -> None:
    """The trial's case: the flow's route is in table 100; without --table diagnose said no
    route matched and told to add one. With a table that holds none: which tables do."""
    commands = make_commands()
    assert ask(commands, "mfc.add", {**ROUTE, "group": "239.1.1.7", "table": 100})["ok"]
    flow = {"source": ROUTE["source"], "group": "239.1.1.7"}
    result = diagnosed(commands, flow)
    assert result["table"] is None
    assert [f["route"]["table"] for f in result["flows"]] == [100]
    # Both tables hold one: each is walked, the default table's first.
    assert ask(commands, "mfc.add", {**ROUTE, "group": "239.1.1.7"})["ok"]
    assert [f["route"]["table"] for f in diagnosed(commands, flow)["flows"]] == [253, 100]
    assert [f["route"]["table"] for f in diagnosed(commands, {"group": "239.1.1.7"})["flows"]] == [
        253,
        100,
    ]
    # A table given: that table's only, as before.
    result = diagnosed(commands, {**flow, "table": 100})
    assert (result["table"], [f["route"]["table"] for f in result["flows"]]) == (100, [100])
    assert ask(commands, "mfc.del", {**flow})["ok"]
    [route] = diagnosed(commands, {**flow, "table": "default"})["flows"][0]["checks"]
    assert route["status"] == "failed"
    assert route["fix"].startswith("table 100 has one: diagnose with --table 100")


def test_changes_tell_subscribers_one_event_per_route() -> None:
    commands = make_commands()
    sub = commands.events.subscribe(lambda: None)
    assert ask(commands, "mfc.add", {**ROUTE, "group": "239.1.1.2", "oifs": ["b", "zz"]})["ok"]
    assert ask(commands, "mfc.del", {"source": ROUTE["source"], "group": "239.1.1.2"})["ok"]
    assert ask(commands, "vif.set", {"interface": "b", "threshold": 5})["ok"]
    assert ask(commands, "mfc.add", ROUTE, dry_run=True)["ok"]  # a dry run tells nobody
    events = sub.take()
    assert [e["event"] for e in events] == ["route.add", "route.del", "threshold"]
    added = events[0]
    assert (added["family"], added["table"], added["group"], added["origin"]) == (
        "ipv4",
        253,
        "239.1.1.2",
        "api",
    )
    assert (added["iif"], added["oifs"], added["state"]) == ("a", ["b", "zz"], "degraded")
    assert events[2]["threshold"] == 5


@pytest.mark.parametrize("field", ["group", "source", "table", "seconds", "other"])
def test_diagnose_fields_of_every_json_type_never_fail_inside(field: str) -> None:
    commands = make_commands()
    for value in VALUES:
        args = {"group": "239.1.1.1", "source": "10.0.0.1", field: value}
        response = dispatch(commands, "diagnose", args)
        if isinstance(response, bytes):
            assert error_of(response)["code"] in ("bad_request", "invalid_argument"), args
        for args in ({"group": "239.1.1.1", field: value}, {field: value}):
            response = dispatch(commands, "monitor", args)
            assert isinstance(response, bytes)
            assert error_of(response)["code"] == "bad_request"


def test_a_batch_larger_than_the_buffer_is_told_in_part_and_counted_in_full() -> None:
    commands = make_commands()
    sub = commands.events.subscribe(lambda: None, limit=3)
    ops = [{"op": "add", **ROUTE, "group": f"239.1.2.{n}"} for n in range(10)]
    assert ask(commands, "batch", {"ops": ops})["ok"]
    events = sub.take()
    assert [e["group"] for e in events[:3]] == ["239.1.2.0", "239.1.2.1", "239.1.2.2"]
    assert events[3]["event"] == "gap"
    assert events[3]["dropped"] == 7


def test_an_add_that_replaces_a_route_or_template_says_what_it_was() -> None:
    commands = make_commands()
    sub = commands.events.subscribe(lambda: None)
    route = {**ROUTE, "group": "239.1.1.3"}
    template = {"group": "239.4.0.0/16", "iif": "a", "oifs": ["b", "c"]}
    assert ask(commands, "mfc.add", route)["ok"]  # (the one-route lane)
    assert ask(commands, "mfc.add", {**route, "oifs": ["b", "c"]})["ok"]
    assert ask(commands, "batch", {"ops": [{"op": "add", **route, "iif": "c"}]})["ok"]
    assert ask(commands, "mfc.add", template)["ok"]
    assert ask(commands, "mfc.add", {**template, "oifs": ["c"]})["ok"]
    events = sub.take()
    assert [(e["event"], e.get("was")) for e in events] == [
        ("route.add", None),
        ("route.add", {"iif": "a", "oifs": ["b"]}),
        ("route.add", {"iif": "a", "oifs": ["b", "c"]}),
        ("template.add", None),
        ("template.add", ["b", "c"]),
    ]
    assert (events[2]["iif"], events[2]["oifs"]) == ("c", ["b"])
    assert events[4]["oifs"] == ["c"]


def test_a_batch_that_changes_a_route_twice_tells_each_change_as_its_line_made_it() -> None:
    """Lines for the same route in one batch: each event has its own line's interfaces and
    state, and says that it replaced what the line before it made (not what was there
    before the batch); a template added twice, too."""
    commands = make_commands()
    route = {**ROUTE, "group": "239.1.1.5"}
    where = {"source": route["source"], "group": route["group"]}
    template = {"group": "239.4.0.0/16", "iif": "a"}
    assert ask(commands, "mfc.add", route)["ok"]  # a -> b before the batch
    sub = commands.events.subscribe(lambda: None)
    ops = [
        {"op": "add", **route, "oifs": ["b", "zz"]},
        {"op": "add", **route, "oifs": ["c"]},
        {"op": "del", **where},
        {"op": "add", **route, "iif": "zz"},
        {"op": "add", **template, "oifs": ["b"]},
        {"op": "add", **template, "oifs": ["c"]},
    ]
    assert ask(commands, "batch", {"ops": ops})["ok"]
    told = [
        (e["event"], e.get("iif"), e.get("oifs"), e.get("state"), e.get("was")) for e in sub.take()
    ]
    assert told == [
        ("route.add", "a", ["b", "zz"], "degraded", {"iif": "a", "oifs": ["b"]}),
        ("route.add", "a", ["c"], "installed", {"iif": "a", "oifs": ["b", "zz"]}),
        ("route.del", None, None, None, None),
        ("route.add", "zz", ["b"], "pending", None),
        ("template.add", "a", ["b"], "installed", None),
        ("template.add", "a", ["c"], "installed", ["b"]),
    ]


def test_a_template_with_a_wildcard_iif_is_told_as_given_when_added_and_replaced() -> None:
    commands = make_commands()
    commands.controller.link_up("up1", 21)
    sub = commands.events.subscribe(lambda: None)
    template = {"group": "239.4.0.0/16", "iif": "up+", "oifs": ["b"]}
    assert ask(commands, "mfc.add", template)["ok"]
    assert ask(commands, "mfc.add", {**template, "oifs": ["b", "c"]})["ok"]
    assert ask(commands, "mfc.del", {"group": "239.4.0.0/16", "iif": "up+"})["ok"]
    told = [(e["event"], e["iif"], e.get("oifs"), e.get("state"), e.get("was")) for e in sub.take()]
    assert told == [
        ("template.add", "up+", ["b"], "installed", None),
        ("template.add", "up+", ["b", "c"], "installed", ["b"]),
        ("template.del", "up+", None, None, None),
    ]
