"""Wildcard oifs of runtime (api) routes and templates: validation, expansion in the model,
patterns in the journal and snapshots, following interfaces, show and the CLI's text."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from mfcd import cli, metrics, validate, wildcards
from mfcd import controller as controller_module
from mfcd.commands import Commands
from mfcd.controller import Controller, Outcome
from mfcd.daemon import moved
from mfcd.declarations import diff
from mfcd.errors import InvalidArgument, MfcdError, NotFound
from mfcd.groups import Join
from mfcd.model import MAXVIFS, Change, DelRoute, DelTemplate, Ports
from mfcd.state import StateFile
from mfcd.views import Views
from mfcd.wildcards import Pattern
from tests.unit.conftest import FakeKernel, FakeState
from tests.unit.test_commands import ask, error_of, make_commands, snapshot
from tests.unit.test_declarations import apply, parse, route

KEY = (4, "198.18.0.2", "239.1.1.1", 253)
OTHER = (4, "198.18.0.2", "239.1.1.2", 253)
TKEY = (4, "*", "239.2.0.0/16", 253, "a")


def controller(*names: str) -> Controller:
    ctl = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(names, 1):
        ctl.link_up(name, ifindex)
    return ctl


def add(ctl: Controller, oifs: list[str], key: tuple[int, str, str, int] = KEY) -> None:
    ctl.change([validate.add_change(key[1], key[2], "a", oifs)])


def gone(ctl: Controller, name: str) -> None:
    """An interface deleted: the kernel drops its VIFs, then mfcd hears of it."""
    kernel = ctl.kernel
    assert isinstance(kernel, FakeKernel)
    ifindex = ctl.router.links[name]
    kernel.device_gone(ifindex)
    ctl.link_event("del", name, ifindex)


def records(ctl: Controller) -> list[object]:
    state = ctl.state
    assert isinstance(state, FakeState)
    return list(state.records)


# --- validation ----------------------------------------------------------------------------------


def test_wildcard_oifs_validate_into_a_pattern_and_plain_ones_do_not() -> None:
    change = validate.add_change("198.18.0.2", "239.1.1.1", "a", ["b", "vlan*", "eth+"])
    assert change.ports.__class__ is Pattern
    assert change.ports == Ports("a", ("b", "vlan*", "eth+"))
    assert validate.add_change("198.18.0.2", "239.1.1.1", "a", ["b"]).ports.__class__ is Ports


@pytest.mark.parametrize(
    ("iif", "oifs", "says"),
    [
        ("a", ["*"], "a wildcard needs the start of a name"),
        ("a", ["+"], "a wildcard needs the start of a name"),
        ("a", ["vl an*"], "is not a valid interface name"),
        ("a", ["-x*"], "is not a valid interface name"),
        ("a", ["vlan*", "vlan*"], "names vlan* more than once"),
        ("eth*", ["b"], "iif eth* is a wildcard"),
        ("eth+", ["b"], "iif eth+ is a wildcard"),
    ],
)
def test_bad_wildcards_are_refused(iif: str, oifs: list[str], says: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate.add_change("198.18.0.2", "239.1.1.1", iif, oifs)
    assert says in str(info.value)


def test_a_template_takes_wildcard_oifs_and_a_wildcard_iif() -> None:
    change = validate.template_change(None, "239.2.0.0/16", "a", ["vlan*"])
    assert change.ports.__class__ is Pattern
    change = validate.template_change(None, "239.2.0.0/16", "vlan*", ["b"])
    assert change.ports.__class__ is Pattern and change.key[4] == "vlan*"
    with pytest.raises(InvalidArgument, match="a wildcard needs the start of a name"):
        validate.template_change(None, "239.2.0.0/16", "*", ["b"])


# --- the controller ------------------------------------------------------------------------------


def test_the_model_gets_the_expansion_and_the_journal_the_pattern() -> None:
    ctl = controller("a", "b", "vlan1", "vlan2", "other")
    add(ctl, ["b", "vlan*"])
    assert ctl.router.routes[KEY] == Ports("a", ("b", "vlan1", "vlan2"))
    assert ctl.wild_routes[KEY] == Ports("a", ("b", "vlan*"))
    assert records(ctl) == [[["add", 4, "198.18.0.2", "239.1.1.1", "a", ["b", "vlan*"]]]]
    routes, _ = ctl.persistent()
    assert routes[KEY] == Ports("a", ("b", "vlan*"))  # a snapshot keeps the pattern too


def test_a_wildcard_that_matches_nothing_yet_is_a_route_with_no_oifs_for_now() -> None:
    ctl = controller("a")
    add(ctl, ["vlan*"])
    assert ctl.router.routes[KEY] == Ports("a", ())
    assert ctl.router.status(KEY).state == "degraded"  # (in the kernel, forwarding nowhere)
    ctl.link_up("vlan7", 9)
    assert ctl.follow_api_wildcards() == [
        (True, "route 198.18.0.2 -> 239.1.1.1: its wildcard oifs match vlan7")
    ]
    assert ctl.router.routes[KEY] == Ports("a", ("vlan7",))
    assert ctl.router.status(KEY).state == "installed"


def test_interfaces_that_come_and_go_are_followed_without_a_journal_record() -> None:
    ctl = controller("a", "vlan1")
    add(ctl, ["vlan*"])
    kernel = ctl.kernel
    assert isinstance(kernel, FakeKernel)
    ctl.link_up("vlan2", 7)
    ctl.follow_api_wildcards()
    assert ctl.router.routes[KEY] == Ports("a", ("vlan1", "vlan2"))
    assert len(kernel.mfcs[KEY].ttls) == 2  # the kernel's entry forwards to both
    gone(ctl, "vlan1")
    ctl.follow_api_wildcards()
    assert ctl.router.routes[KEY] == Ports("a", ("vlan2",))
    assert len(records(ctl)) == 1  # only the add: following changes no intent
    assert ctl.follow_api_wildcards() == []  # nothing left to do


def test_a_route_that_cannot_follow_past_the_vif_limit_keeps_its_oifs_and_others_follow() -> None:
    names = ["a", *(f"x{i}" for i in range(MAXVIFS - 2))]
    ctl = controller(*names, "vlan1")
    add(ctl, ["vlan*"])  # a, vlan1
    add(ctl, [*names[1:], "y*"], OTHER)  # the other 30 VIFs: the table is full now
    ctl.link_up("vlan2", 100)
    ctl.link_up("y1", 101)
    lines = ctl.follow_api_wildcards()
    assert [ok for ok, _ in lines] == [False, False]
    assert "1 new IPv4 VIF (vlan2): only 0 of the 32 VIFs of table 253 are free" in lines[0][1]
    assert ctl.router.routes[KEY] == Ports("a", ("vlan1",))  # as it was
    # Trial 14 F9: degraded, naming what it lacks (it said installed, the log alone told)
    status = ctl.router.status(KEY)
    assert (status.state, status.reason) == ("degraded", "no free VIF for vlan2")
    assert ctl.follow_api_wildcards() == []  # the same failure again: told once, not at each event
    ctl.link_up("vlan3", 102)
    lines = ctl.follow_api_wildcards()  # a new failure is told
    assert [ok for ok, _ in lines] == [False]
    assert ctl.router.status(KEY).reason == "no free VIF for vlan2, vlan3"
    ctl.change([DelRoute(OTHER)])  # VIFs free again: the next interface event catches up
    assert [ok for ok, _ in ctl.follow_api_wildcards()] == [True]
    assert ctl.router.routes[KEY] == Ports("a", ("vlan1", "vlan2", "vlan3"))
    assert ctl.router.status(KEY).state == "installed"


def test_a_wildcard_that_matches_no_interface_is_degraded_and_said_on_add() -> None:
    """Trial 14 F9: `--oifs 'd+'` before any d* exists (or a typo such as 'vlna*') gave an
    installed route with no oif, and no word; now degraded, the wildcard among `missing`
    (mfcctl warns), installed once an interface it matches appears."""
    commands = Commands(controller("a", "b"), (4, 6))
    wild = {"source": KEY[1], "group": KEY[2], "iif": "a", "oifs": ["d+"]}
    result = ask(commands, "mfc.add", wild)["result"]
    assert result["state"] == "degraded"
    assert result["reason"] == "no interface matches d+ yet"
    assert result["missing"] == ["d+"]
    ctl = commands.controller
    ctl.link_up("d0", 9)
    ctl.follow_api_wildcards()
    assert ctl.router.status(KEY).state == "installed"
    # Beside a named oif that exists: degraded all the same (a typo is seen).
    result = ask(commands, "mfc.add", {**wild, "oifs": ["b", "vlna*"]})["result"]
    assert (result["state"], result["missing"]) == ("degraded", ["vlna*"])


def test_a_wildcard_short_of_vifs_is_counted_degraded_in_the_metrics() -> None:
    names = ["a", *(f"x{i}" for i in range(MAXVIFS - 2))]
    ctl = controller(*names, "vlan1")
    add(ctl, ["vlan*"])
    add(ctl, list(names[1:]), OTHER)
    ctl.link_up("vlan2", 100)
    ctl.follow_api_wildcards()
    counts = metrics.route_counts(ctl.router)
    assert (counts["degraded", "api"], counts["installed", "api"]) == (1, 1)


def test_del_forgets_the_pattern_and_a_plain_add_replaces_it() -> None:
    ctl = controller("a", "b", "vlan1")
    add(ctl, ["vlan*"])
    add(ctl, ["b"])
    assert KEY not in ctl.wild_routes and ctl.router.routes[KEY] == Ports("a", ("b",))
    add(ctl, ["vlan*"])
    ctl.change([DelRoute(KEY)])
    assert ctl.wild_routes == {} and KEY not in ctl.router.routes
    ctl.link_up("vlan2", 9)
    assert ctl.follow_api_wildcards() == []


def test_a_dry_run_or_a_refused_change_keeps_no_pattern() -> None:
    ctl = controller("a", "vlan1")
    outcome = ctl.change([validate.add_change(KEY[1], KEY[2], "a", ["vlan*"])], dry_run=True)
    assert outcome.counts["add_mfc"] == 1  # the plan of the expansion
    assert ctl.wild_routes == {} and ctl.router.routes == {}
    ctl.state.fail = True  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="No space left"):
        add(ctl, ["vlan*"])
    assert ctl.wild_routes == {} and ctl.router.routes == {}


def test_templates_with_wildcard_oifs_follow_too() -> None:
    ctl = controller("a", "vlan1")
    ctl.change([validate.template_change(None, "239.2.0.0/16", "a", ["vlan*"])])
    assert ctl.router.templates[TKEY] == Ports("a", ("vlan1",))
    assert ctl.persistent_templates()[TKEY] == Ports("a", ("vlan*",))
    ctl.link_up("vlan2", 9)
    ctl.follow_api_wildcards()
    assert ctl.router.templates[TKEY] == Ports("a", ("vlan1", "vlan2"))


TPAT = (4, "*", "239.2.0.0/16", 253, "up*")


def test_a_template_with_a_wildcard_iif_is_one_per_interface_and_follows_them() -> None:
    ctl = controller("up1", "up2", "b", "vlan1")
    ctl.change([validate.template_change(None, "239.2.0.0/16", "up*", ["b", "vlan*"])])
    one, two = (*TPAT[:4], "up1"), (*TPAT[:4], "up2")
    assert ctl.router.templates == {
        one: Ports("up1", ("b", "vlan1")),
        two: Ports("up2", ("b", "vlan1")),
    }
    assert records(ctl) == [[["template", 4, "*", "239.2.0.0/16", "up*", ["b", "vlan*"], 253]]]
    assert ctl.persistent_templates() == {TPAT: Ports("up*", ("b", "vlan*"))}
    ctl.link_up("up3", 9)
    gone(ctl, "up1")
    assert [ok for ok, _ in ctl.follow_api_wildcards()] == [True]
    assert set(ctl.router.templates) == {two, (*TPAT[:4], "up3")}
    # an expansion is changed or deleted through its wildcard template only
    with pytest.raises(InvalidArgument, match="--iif 'up\\*'"):
        ctl.change([DelTemplate(two)])
    shown = Views(_NoCounters()).show(  # type: ignore[arg-type]
        ctl.router, patterns=ctl.shown_patterns()
    )
    rows = [(t["iif"], t.get("iif_pattern"), t.get("oif_patterns")) for t in shown["routes"]]
    assert rows == [("up2", "up*", ["b", "vlan*"]), ("up3", "up*", ["b", "vlan*"])]
    ctl.change([DelTemplate(TPAT)])
    assert ctl.router.templates == {} and ctl.wild_templates == {}
    assert records(ctl)[-1] == [["untemplate", 4, "*", "239.2.0.0/16", "up*", 253]]
    with pytest.raises(NotFound):
        ctl.change([DelTemplate(TPAT)])


def test_a_restart_restores_the_pattern_and_installs_its_expansion(tmp_path: Path) -> None:
    path = str(tmp_path / "state.journal")
    sf = StateFile(path)
    sf.load()
    sf.write_snapshot([], {})
    sf.append([validate.add_change(KEY[1], KEY[2], "a", ["b", "vlan*"])])
    sf.close()
    loaded = StateFile(path).load()
    assert loaded.routes[KEY].__class__ is Pattern
    ctl = Controller(FakeKernel(), FakeState())
    ctl.restore(loaded, {"a": 1, "b": 2, "vlan3": 3, "c": 4})
    assert ctl.router.routes[KEY] == Ports("a", ("b", "vlan3"))
    assert ctl.wild_routes[KEY] == Ports("a", ("b", "vlan*"))
    assert ctl.router.status(KEY).state == "installed"
    template = validate.template_change(None, "239.2.0.0/16", "up*", ["vlan*"])
    sf = StateFile(path)
    sf.load()
    sf.append([template])
    sf.close()
    ctl = Controller(FakeKernel(), FakeState())
    ctl.restore(StateFile(path).load(), {"a": 1, "up1": 2, "vlan3": 3})
    assert ctl.router.templates == {(*TPAT[:4], "up1"): Ports("up1", ("vlan3",))}
    assert ctl.persistent_templates() == {TPAT: Ports("up*", ("vlan*",))}


def test_requests_take_wildcards_as_json_batch_ops_and_batch_lines() -> None:
    commands = make_commands()  # a, b, c; a route 10.0.0.1 -> 239.1.1.1 a -> b
    ctl = commands.controller
    ctl.link_up("vlan1", 11)
    route = {"source": "10.0.0.9", "group": "239.1.1.9", "iif": "a", "oifs": ["vlan*"]}
    key = (4, "10.0.0.9", "239.1.1.9", 253)
    dry = ask(commands, "mfc.add", route, dry_run=True)["result"]
    assert [s["action"] for s in dry["plan"]] == ["add_vif", "add_mfc"]  # vlan1's VIF, entry
    assert key not in ctl.router.routes
    assert ask(commands, "mfc.add", route)["ok"]
    assert ctl.router.routes[key] == Ports("a", ("vlan1",))
    text = "mfc add --source 10.0.0.8 --group 239.1.1.8 --iif a --oifs b,vlan+\n"
    assert ask(commands, "batch", {"text": text})["ok"]
    assert ctl.wild_routes[(4, "10.0.0.8", "239.1.1.8", 253)] == Ports("a", ("b", "vlan+"))
    op = dict(route, op="add", group="239.1.1.7")
    assert ask(commands, "batch", {"ops": [op]})["ok"]
    assert (4, "10.0.0.9", "239.1.1.7", 253) in ctl.wild_routes
    # oif add and del edit the pattern, not its expansion
    edit = {"source": "10.0.0.9", "group": "239.1.1.9", "oifs": ["b"]}
    assert ask(commands, "mfc.oif.add", edit)["ok"]
    assert ctl.wild_routes[key] == Ports("a", ("vlan*", "b"))
    assert ctl.router.routes[key] == Ports("a", ("b", "vlan1"))
    edit["oifs"] = ["vlan1"]
    assert error_of(ask(commands, "mfc.oif.del", edit)) == ("invalid_argument", "oifs")
    edit["oifs"] = ["vlan*"]
    assert ask(commands, "mfc.oif.del", edit)["ok"]
    assert key not in ctl.wild_routes and ctl.router.routes[key] == Ports("a", ("b",))
    # del names the route as always; show gives the patterns
    shown = ask(commands, "show", {})["result"]["routes"]
    assert [r.get("oif_patterns") for r in shown if r["group"] == "239.1.1.8"] == [["b", "vlan+"]]
    assert ask(commands, "mfc.del", {"source": "10.0.0.8", "group": "239.1.1.8"})["ok"]
    assert (4, "10.0.0.8", "239.1.1.8", 253) not in ctl.wild_routes


# --- show ----------------------------------------------------------------------------------------


class _NoCounters:
    def counters(self, *args: object) -> None:
        raise AssertionError("no counters asked for")


def test_show_gives_the_pattern_beside_the_expansion_and_the_cli_prints_both() -> None:
    ctl = controller("a", "b", "vlan1", "vlan2")
    add(ctl, ["b", "vlan*", "eth+"])
    add(ctl, ["b"], OTHER)
    shown = Views(_NoCounters()).show(  # type: ignore[arg-type]
        ctl.router, patterns=ctl.shown_patterns()
    )
    first, second = shown["routes"]
    assert first["oifs"] == ["b", "vlan1", "vlan2"]
    assert first["oif_patterns"] == ["b", "vlan*", "eth+"]
    assert "oif_patterns" not in second
    assert cli._oifs_text(first) == "b,vlan*(vlan1,vlan2),eth+()"
    assert cli._oifs_text(second) == "b"


def test_a_join_on_a_wildcard_interface_joins_each_match_and_follows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wildcards, "made", False)  # as in a new mfcd: no wildcard seen yet
    commands = make_commands()
    ctl = commands.controller
    ctl.link_up("vlan1", 21)
    ctl.link_up("vlan2", 22)
    answer = ask(commands, "join", {"interface": "vlan*", "group": "239.3.3.3"})["result"]
    assert (answer["joins"], answer["state"]) == (2, "joined")
    assert set(ctl.joins.joined) == {("vlan1", "239.3.3.3", "*"), ("vlan2", "239.3.3.3", "*")}
    assert records(ctl)[-1] == [["join", "vlan*", "239.3.3.3", "*"]]
    assert ctl.snapshot_extra()["joins"] == [["vlan*", "239.3.3.3", "*"]]
    shown = ask(commands, "group.show", {})["result"]["groups"]
    assert [(g["interface"], g.get("interface_pattern")) for g in shown] == [
        ("vlan1", "vlan*"),
        ("vlan2", "vlan*"),
    ]
    assert cli.format_groups({"groups": shown}).count("vlan*(vlan") == 2
    gone(ctl, "vlan1")
    ctl.link_up("vlan3", 23)
    assert [ok for ok, _ in ctl.follow_api_wildcards()] == [True]
    assert set(ctl.joins.wanted) == {("vlan2", "239.3.3.3", "*"), ("vlan3", "239.3.3.3", "*")}
    refused = ask(commands, "leave", {"interface": "vlan2", "group": "239.3.3.3"})
    assert error_of(refused) == ("invalid_argument", "interface")
    # a restart: the join comes back as the wildcard, over the interfaces there are then
    path = str(tmp_path / "state.journal")
    sf = StateFile(path)
    sf.load()
    sf.write_snapshot([], {}, ctl.snapshot_extra())
    sf.close()
    again = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("vlan7", "other"), 1):
        again.link_up(name, ifindex)
    again.restore_joins(StateFile(path).load())
    assert set(again.joins.wanted) == {("vlan7", "239.3.3.3", "*")}
    assert again.wild_joins == {("vlan*", "239.3.3.3", "*"): None}
    # leave names the wildcard
    assert ask(commands, "leave", {"interface": "vlan*", "group": "239.3.3.3"})["ok"]
    assert ctl.joins.wanted == {} and ctl.wild_joins == {}
    missing = ask(commands, "leave", {"interface": "vlan*", "group": "239.3.3.3"})
    assert error_of(missing)[0] == "not_found"


def test_requests_add_show_and_delete_a_template_with_a_wildcard_iif() -> None:
    commands = make_commands()
    ctl = commands.controller
    ctl.link_up("up1", 21)
    ctl.link_up("up2", 22)
    text = "mfc add --group 239.4.0.0/16 --iif up* --oifs b,c\n"
    assert ask(commands, "batch", {"text": text})["ok"]
    templates = [r for r in ask(commands, "show", {})["result"]["routes"] if r.get("template")]
    assert [(t["iif"], t["iif_pattern"], t["oifs"]) for t in templates] == [
        ("up1", "up*", ["b", "c"]),
        ("up2", "up*", ["b", "c"]),
    ]
    assert "oif_patterns" not in templates[0]  # no wildcard among the oifs
    lines = cli.format_templates(templates)
    assert "up*(up1)" in lines[2] and "up*(up2)" in lines[3]
    refused = ask(commands, "mfc.del", {"group": "239.4.0.0/16", "iif": "up1"})
    assert error_of(refused) == ("invalid_argument", "iif")
    assert ask(commands, "mfc.del", {"group": "239.4.0.0/16", "iif": "up*"})["ok"]
    assert ctl.router.templates == {} and ctl.wild_templates == {}


def test_the_scan_of_a_bulk_load_finds_a_pattern_or_a_wildcard_routes_key() -> None:
    ctl = controller("a", "b")
    plain = [validate.add_change("198.18.0.2", f"239.9.0.{i}", "a", ["b"]) for i in range(1, 50)]
    assert not ctl._touches_patterns(plain)
    wild = validate.add_change("198.18.0.2", "239.9.1.1", "a", ["vlan*"])
    assert ctl._touches_patterns([*plain, wild])  # all adds: the C path
    ctl.change([wild])
    assert not ctl._touches_patterns(plain)
    other = validate.add_change("198.18.0.3", "239.9.1.1", "a", ["b"])
    assert not ctl._touches_patterns([*plain, other])  # its group, another source
    again = validate.add_change("198.18.0.2", "239.9.1.1", "a", ["b"])
    assert ctl._touches_patterns([*plain, again])  # replaces the wildcard route
    assert ctl._touches_patterns([*plain, DelRoute(again.key)])  # the loop


def test_a_wildcard_join_leaves_alone_the_joins_the_config_files_own() -> None:
    ctl = controller("vlan1", "vlan2")
    apply(ctl, '[[join]]\ninterface = "vlan1"\ngroup = "239.3.3.3"\n')
    # (its interface read as a request's is: validate tells mfcd.wildcards one was seen)
    wildcard = validate.interface_or_wildcard("vlan*", "interface")
    ctl.change([Join((wildcard, "239.3.3.3", "*"))])
    assert ctl.joins.wanted == {
        ("vlan1", "239.3.3.3", "*"): "config",
        ("vlan2", "239.3.3.3", "*"): "api",
    }
    gone(ctl, "vlan1")
    gone(ctl, "vlan2")
    assert ctl.follow_api_wildcards() == [(True, "group 239.3.3.3 on vlan*: now on none")]
    assert ctl.joins.wanted == {("vlan1", "239.3.3.3", "*"): "config"}  # pending, as declared
    ctl.link_up("vlan1", 7)
    assert ctl.follow_api_wildcards() == []  # nothing to do: the config files join vlan1


def test_a_wildcard_iif_template_leaves_alone_the_templates_the_config_files_own() -> None:
    ctl = controller("up1", "up2", "b")
    apply(ctl, '[[route]]\ngroup = "239.2.0.0/16"\niif = "up1"\noifs = ["b"]\n')
    ctl.change([validate.template_change(None, "239.2.0.0/16", "up*", ["b"])])
    assert ctl.router.template_origins == {(*TPAT[:4], "up1"): "config"}
    assert set(ctl.router.templates) == {(*TPAT[:4], "up1"), (*TPAT[:4], "up2")}
    ctl.link_up("up3", 9)
    assert [ok for ok, _ in ctl.follow_api_wildcards()] == [True]
    assert set(ctl.router.templates) == {(*TPAT[:4], n) for n in ("up1", "up2", "up3")}
    ctl.change([DelTemplate(TPAT)])
    assert set(ctl.router.templates) == {(*TPAT[:4], "up1")}  # the declared one stays


@pytest.mark.parametrize("sliced", [False, True], ids=["at-start", "sliced-reload"])
def test_a_config_route_takes_over_a_runtime_wildcard_route_and_its_pattern_goes(
    sliced: bool,
) -> None:
    """Whether the files are applied whole (start) or a slice at a time (reload), a route
    they declare stops being a runtime wildcard route: its pattern no longer follows
    interfaces and is not saved."""
    ctl = controller("a", "b", "vlan1")
    add(ctl, ["vlan*"])
    assert KEY in ctl.wild_routes
    new, problems = parse(
        '[[route]]\nsource = "198.18.0.2"\ngroup = "239.1.1.1"\niif = "a"\noifs = ["b"]\n'
    )
    assert problems == []
    if sliced:
        list(ctl.declared_slices(new, diff(ctl.declared, new), Outcome()))
    else:
        ctl.apply_declared(new, diff(ctl.declared, new))
    assert KEY not in ctl.wild_routes
    assert ctl.router.origin(KEY) == "config"
    assert ctl.router.routes[KEY] == Ports("a", ("b",))
    ctl.link_up("vlan2", 9)  # no longer followed
    assert ctl.router.routes[KEY] == Ports("a", ("b",))


def test_a_wildcard_past_the_free_vifs_says_how_many_it_needs_and_how_many_are_free() -> None:
    """The user trial: 30 interfaces d0..d29, 6 VIFs in use; `--oifs 'd+'` said "cannot add
    IPv4 VIF for d6: all 32 VIFs are in use". Now: 30 needed, 26 free, nothing changed; a
    batch that runs out says what its earlier routes took."""
    names = ["r0", *(f"u{i}" for i in range(1, 6)), *(f"d{i}" for i in range(30))]
    commands = Commands(controller(*names), (4, 6))
    used = {"source": "198.18.0.3", "group": "239.20.0.2", "iif": "r0"}
    assert ask(commands, "mfc.add", {**used, "oifs": [f"u{i}" for i in range(1, 6)]})["ok"]
    before = snapshot(commands)
    wild = {"source": "198.18.0.2", "group": "239.20.0.1", "iif": "r0", "oifs": ["d+"]}
    response = ask(commands, "mfc.add", wild)
    assert error_of(response) == ("vif_limit", None)
    message = response["error"]["message"]
    assert "cannot add 30 new IPv4 VIFs (d0, d1, d10, d11 and 26 more)" in message
    assert "only 26 of the 32 VIFs of table 253 are free;" in message
    assert snapshot(commands) == before
    ops = [
        {
            **wild,
            "op": "add",
            "group": f"239.20.0.{10 + i}",
            "oifs": [f"d{j}" for j in range(10 * i, 10 * i + 10)],
        }
        for i in range(3)
    ]
    response = ask(commands, "batch", {"ops": ops})
    assert response["error"]["op"] == 3
    assert (
        "cannot add 10 new IPv4 VIFs (d20, d21, d22, d23 and 6 more): only 6 of the 32"
        in (response["error"]["message"])
    )
    assert "earlier routes of this batch or reload took 20" in response["error"]["message"]
    assert snapshot(commands) == before


def test_a_batch_counts_a_wildcard_that_matches_nothing_as_degraded() -> None:
    commands = Commands(controller("a", "b"), (4, 6))
    op = {"op": "add", "source": KEY[1], "group": KEY[2], "iif": "a", "oifs": ["vlna*"]}
    result = ask(commands, "batch", {"ops": [op]})["result"]
    assert (result["pending"], result["degraded"], result["missing"]) == (0, 1, ["vlna*"])


def test_a_template_whose_wildcard_oifs_match_nothing_is_pending_and_said_on_add() -> None:
    """Trial 14 F9, for templates: the add answered with no state (the model holds none of
    it until an interface matches), so mfcctl said nothing of a typo."""
    commands = Commands(controller("a", "b"), (4, 6))
    template = {"group": "239.9.0.0/16", "iif": "a", "oifs": ["vlna*"]}
    result = ask(commands, "mfc.add", template)["result"]
    assert (result["state"], result["reason"], result["missing"]) == (
        "pending",
        "no interface matches vlna* yet",
        ["vlna*"],
    )
    # With an oif that exists beside it: installed by it, degraded for the wildcard.
    result = ask(commands, "mfc.add", {**template, "oifs": ["b", "vlna*"]})["result"]
    assert (result["state"], result["missing"]) == ("degraded", ["vlna*"])


# --- following what an event touches (review 2026-12-03) ------------------------------------------

_FILLER = [f"x{i}" for i in range(MAXVIFS - 8)]  # plain oifs that leave a few VIFs free
_DECLARED = route("239.9.9.9", '"vlan*", "b"', "198.18.0.9")


def _twins() -> tuple[Controller, Controller]:
    """Two controllers alike: wildcard routes (the config files' too), templates with
    wildcard oifs and iif, and few free VIFs, so some fall short of what they match."""
    made = []
    for _ in range(2):
        ctl = controller("a", "b", "vlan1", "up1", *_FILLER)
        apply(ctl, _DECLARED)
        add(ctl, ["b", *_FILLER], (4, "198.18.0.3", "239.1.1.9", 253))
        for i, oifs in enumerate((["vlan*"], ["b", "vlan+", "eth*"], ["up*"], ["d+"])):
            add(ctl, oifs, (4, "198.18.0.2", f"239.1.1.{i}", 253))
        ctl.change([validate.template_change(None, "239.2.0.0/16", "up*", ["b", "vlan*"])])
        ctl.change([validate.template_change(None, "239.3.0.0/16", "a", ["eth*"])])
        made.append(ctl)
    return made[0], made[1]


def _declared_follow(ctl: Controller, names: set[str] | None) -> object:
    """follow_wildcards as the daemon sees it: nothing to do, steps, or an error."""
    try:
        outcome = ctl.follow_wildcards(names)
    except MfcdError as e:
        return str(e)
    return None if outcome is None else len(outcome.steps)


def _seen(ctl: Controller) -> tuple[object, ...]:
    router = ctl.router
    return dict(router.routes), dict(router.templates), dict(router.short), ctl.joins.wanted


@pytest.mark.parametrize("seed", range(6))
def test_following_only_the_patterns_an_event_touches_gives_what_following_all_gives(
    seed: int,
) -> None:
    """Interfaces come, go and are renamed; one controller follows the patterns the
    event's interfaces match (and those short or unfollowed), the other all of them:
    the routes, templates and what falls short (Router.short) stay the same, as do the
    lines said. A VIF freed by an interface no pattern matches lets a short one in."""
    fast, slow = _twins()
    assert _seen(fast) == _seen(slow)
    pick = random.Random(seed)
    names = ["vlan1", "vlan2", "vlan3", "vlan+x", "up1", "up2", "eth0", "d1", "veth7", "b"]
    names += _FILLER[:3]
    ifindex = 1000
    for _ in range(40):
        before = dict(fast.router.links)
        name = pick.choice(names)
        if name in before and pick.random() < 0.5:
            events = [("del", name, before[name])]
        elif name in before:  # renamed
            events = [("new", pick.choice(["vlan9", "veth8", "up7", "eth3"]), before[name])]
        else:
            ifindex += 1
            events = [("new", name, ifindex)]
        for ctl in (fast, slow):
            for kind, interface, index in events:
                if kind == "del":
                    kernel = ctl.kernel
                    assert isinstance(kernel, FakeKernel)
                    kernel.device_gone(index)
                ctl.link_event(kind, interface, index)
        touched = moved(before, fast.router.links)
        assert _declared_follow(fast, touched) == _declared_follow(slow, None)
        assert fast.follow_api_wildcards(touched) == slow.follow_api_wildcards()
        assert _seen(fast) == _seen(slow)
    assert fast.router.short  # (the filler left some short: the test saw both paths)


def test_a_pattern_change_notes_its_own_shortness_as_a_full_note_would() -> None:
    ctl, _ = _twins()
    for oifs, key in ((["vlan*", "d*"], KEY), (["b"], OTHER), (["e+"], OTHER), (["vlan*"], KEY)):
        add(ctl, oifs, key)
        noted = dict(ctl.router.short)
        ctl.note_short()  # all of them again
        assert ctl.router.short == noted
    ctl.change([DelRoute(KEY)])
    ctl.change([validate.template_change(None, "239.2.0.0/16", "up*", ["d*"])])
    noted = dict(ctl.router.short)
    ctl.note_short()
    assert ctl.router.short == noted
    assert KEY not in noted and OTHER in noted


def test_an_interface_no_pattern_matches_expands_none_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,000 wildcard routes on a host of 200 interfaces: a container's veth coming and
    going looked at every one of them, three times (review 2026-12-03)."""
    ctl = controller("a", "vlan1")
    for i in range(50):
        add(ctl, ["vlan*"], (4, "198.18.0.2", f"239.1.2.{i}", 253))
    ctl.note_short()
    expanded: list[object] = []
    real = wildcards.expand

    def counted(ports: Ports, links: object) -> Ports:
        expanded.append(ports)
        return real(ports, links)  # type: ignore[arg-type]

    monkeypatch.setattr(controller_module, "expand", counted)
    ctl.link_up("veth1", 50)
    assert ctl.follow_wildcards({"veth1"}) is None
    assert ctl.follow_api_wildcards({"veth1"}) == []
    assert expanded == []
    ctl.link_up("vlan2", 51)
    assert len(ctl.follow_api_wildcards({"vlan2"})) == 50
    assert ctl.router.routes[(4, "198.18.0.2", "239.1.2.7", 253)].oifs == ("vlan1", "vlan2")


def test_a_short_wildcard_route_elsewhere_leaves_a_batch_its_fast_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's count of pending and degraded routes looked at each of its routes as soon
    as any wildcard route anywhere fell short of an interface (review 2026-12-03): only the
    batch's own routes count, and the quick answer is the one the look gives."""
    commands = Commands(controller("a", "b"), (4, 6))
    ctl = commands.controller
    add(ctl, ["vlna*"])  # matches nothing: short (degraded)
    assert KEY in ctl.router.short
    plain: list[Change] = [
        validate.add_change("198.18.0.3", f"239.4.0.{i}", "a", ["b"]) for i in range(50)
    ]
    ctl.change(plain)
    rewild: list[Change] = [*plain[:3], validate.add_change(KEY[1], KEY[2], "a", ["vlna*", "b"])]
    ctl.change(rewild)
    looked: list[Ports] = []

    def interfaces(ports: Ports) -> tuple[str, ...]:
        looked.append(ports)
        return (ports.iif, *ports.oifs)

    monkeypatch.setattr(Ports, "interfaces", property(interfaces))

    def counts(changes: list[Change], slow: bool) -> tuple[int, int, list[str]]:
        # (an interface waited for, even by no route, takes the long way)
        ctl.router.waiting = {"zz": set()} if slow else {}
        return commands._pending(changes, [])

    assert counts(plain, False) == counts(plain, True) == (0, 0, [])
    assert len(looked) == 1  # the slow way's (one Ports shared by them all)
    assert counts(rewild, False) == counts(rewild, True) == (0, 1, ["vlna*"])


def test_show_lists_a_wildcard_template_that_matches_no_interface() -> None:
    """Trial finding: a template whose oifs are only a wildcard that matches no interface
    (`oifs = ["vlan*"]` before any vlan exists), or whose wildcard iif matches none, stands
    for no template in the model, and show left it out (JSON and text alike). Now listed
    with its state and what it waits for, and installed once an interface matches."""
    ctl = controller("a", "b")
    commands = Commands(ctl, (4, 6))
    ctl.change([validate.template_change(None, "239.2.0.0/16", "a", ["vlan*"])])
    apply(
        ctl,
        '[[route]]\ngroup = "239.3.0.0/16"\niif = "a"\noifs = ["vlan+"]\n'
        '[[route]]\ngroup = "239.4.0.0/16"\niif = "up*"\noifs = ["b"]\n',
    )
    shown = ask(commands, "show", {})["result"]["routes"]
    rows = {t["group"]: t for t in shown if t.get("template")}
    assert set(rows) == {"239.2.0.0/16", "239.3.0.0/16", "239.4.0.0/16"}
    api, config, iif = rows["239.2.0.0/16"], rows["239.3.0.0/16"], rows["239.4.0.0/16"]
    assert api["state"] == "degraded" and api["origin"] == "api"
    assert api["reason"] == "no interface matches vlan* yet"
    assert (api["iif"], api["oifs"], api["oif_patterns"], api["missing"]) == (
        "a",
        [],
        ["vlan*"],
        ["vlan*"],
    )
    assert (config["state"], config["origin"], config["missing"]) == (
        "degraded",
        "config",
        ["vlan+"],
    )
    assert (iif["state"], iif["iif"], iif["iif_pattern"]) == ("pending", "", "up*")
    assert iif["reason"] == "no interface matches up* yet" and iif["missing"] == ["up*"]
    text = "\n".join(cli.format_templates([api, config, iif]))
    assert "vlan*()  degraded (no interface matches vlan* yet)" in text
    assert "vlan+()  degraded (no interface matches vlan+ yet), config" in text
    assert re.search(r"up\*\(\) +b +pending \(no interface matches up\* yet\), config", text)
    assert iif["oifs"] == ["b"]
    # An interface each wildcard matches: the templates they stand for, installed.
    ctl.link_up("vlan1", 9)
    ctl.link_up("up1", 10)
    ctl.follow_api_wildcards()
    ctl.follow_wildcards()
    shown = ask(commands, "show", {})["result"]["routes"]
    rows = {t["group"]: t for t in shown if t.get("template")}
    assert [(t["iif"], t["oifs"], t["state"]) for t in rows.values()] == [
        ("a", ["vlan1"], "installed"),
        ("a", ["vlan1"], "installed"),
        ("up1", ["b"], "installed"),
    ]


def test_a_config_template_whose_wildcard_matches_nothing_is_degraded_as_a_runtime_one() -> None:
    """`oifs = ["b", "vlan*"]` in the config files with no vlan interface: degraded, as the
    same template added at run time is (it was shown installed), installed once one is."""
    ctl = controller("a", "b")
    commands = Commands(ctl, (4, 6))
    ctl.change([validate.template_change(None, "239.2.0.0/16", "a", ["b", "vlan*"])])
    apply(ctl, '[[route]]\ngroup = "239.3.0.0/16"\niif = "up*"\noifs = ["b", "vlan*"]\n')
    ctl.link_up("up1", 9)
    ctl.follow_wildcards()
    shown = ask(commands, "show", {})["result"]["routes"]
    rows = [(t["iif"], t["state"], t["reason"]) for t in shown if t.get("template")]
    assert rows == [
        ("a", "degraded", "no interface matches vlan* yet"),
        ("up1", "degraded", "no interface matches vlan* yet"),
    ]
    ctl.link_up("vlan1", 10)
    ctl.follow_api_wildcards(["vlan1"])  # (only what the event touches: see note_short)
    ctl.follow_wildcards(["vlan1"])
    shown = ask(commands, "show", {})["result"]["routes"]
    assert [t["state"] for t in shown if t.get("template")] == ["installed", "installed"]


def test_an_unexpanded_template_is_pending_only_while_its_iif_is_not_there() -> None:
    ctl = controller("up1", "b")
    commands = Commands(ctl, (4, 6))
    ctl.change([validate.template_change(None, "239.2.0.0/16", "up*", ["vlan*"])])
    ctl.change([validate.template_change(None, "239.3.0.0/16", "x", ["vlan*"])])
    shown = ask(commands, "show", {})["result"]["routes"]
    rows = [(t["iif"], t.get("iif_pattern"), t["state"], t["reason"]) for t in shown]
    assert rows == [
        ("", "up*", "degraded", "no interface matches vlan* yet"),
        ("x", None, "pending", "waiting for x; no interface matches vlan* yet"),
    ]
