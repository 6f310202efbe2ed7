"""Tests for mfcd.views: what show, vif.show, group.show, results and sync reports show."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import random
from collections import Counter
from collections.abc import Iterable

import pytest

from mfcd import views
from mfcd.controller import Controller
from mfcd.dataplane import Counters as Read
from mfcd.dataplane import LinkChange, SgCounters, VifCounters
from mfcd.declarations import Waiting
from mfcd.diagnosis import Check, Intent, Query
from mfcd.errors import KernelError
from mfcd.groups import ANY_SOURCE, JoinKey, Joins, MembershipOp
from mfcd.model import AddRoute, Change, DelRoute, Ports, Route, SetThreshold, Step
from mfcd.protocol import Encoded
from mfcd.views import Views, _address_order, describe_step
from tests.unit.test_controller import LINKS, controller_with, r4


@pytest.fixture
def ctl() -> Controller:
    """Interfaces a-d exist; two routes are installed."""
    ctl = controller_with(*LINKS)
    ctl.change([AddRoute.of(r4(1, "a", "b")), AddRoute.of(r4(2, "b", "a", "c"))])
    return ctl


class Counters:
    """Counters as the kernel would give them: every route and VIF has counted some packets."""

    def counters(
        self,
        family: int,
        table: int,
        entries: Iterable[tuple[str, str]] = (),
        vifs: Iterable[int] = (),
    ) -> Read:
        return Read(
            [SgCounters(packets=len(source), bytes=1000, wrong_if=1) for source, _ in entries],
            [VifCounters(packets_in=vifi, packets_out=2, bytes_in=3, bytes_out=4) for vifi in vifs],
        )


# --- show ----------------------------------------------------------------------------------------


def test_show_sorts_routes_by_family_group_and_source_as_numbers() -> None:
    ctl = controller_with(*LINKS)
    shows = Views(ctl.kernel)
    wanted = [
        (4, "10.0.0.9", "239.1.1.2", 253),
        (4, "10.0.0.10", "239.1.1.2", 253),  # after .9: numbers, not text
        (4, "9.0.0.1", "239.1.1.10", 253),
        (4, "10.0.0.1", "239.1.1.10", 253),
        (4, "10.0.0.1", "239.2.0.0", 253),
        (6, "2001:db8::9", "ff3e::2", 254),
        (6, "2001:db8::1:0", "ff3e::2", 254),
        (6, "2001:db8::1", "ff3e::10", 254),
    ]
    ports = Ports("a", ("b",))
    ctl.change([AddRoute(key, ports) for key in reversed(wanted)])
    shows.show(ctl.router)
    ctl.change([AddRoute((4, "10.0.0.5", "239.1.1.1", 253), ports)])  # a later change: sorted again
    wanted.insert(0, (4, "10.0.0.5", "239.1.1.1", 253))
    for encoded in (False, True):
        routes = shows.show(ctl.router, encoded=encoded)["routes"]
        shown = json.loads(routes) if encoded else routes
        families = {"ipv4": 4, "ipv6": 6}
        shown_keys = [(families[r["family"]], r["source"], r["group"], r["table"]) for r in shown]
        assert shown_keys == wanted


def test_show_of_another_router_is_not_the_order_kept_for_the_first(ctl: Controller) -> None:
    shows = Views(ctl.kernel)
    assert len(shows.show(ctl.router)["routes"]) == 2
    other = controller_with(*LINKS)  # the same version and number of routes, other routes
    other.change([AddRoute.of(r4(7, "a", "b")), AddRoute.of(r4(8, "a", "c"))])
    assert other.router.version == ctl.router.version
    assert [r["source"] for r in shows.show(other.router)["routes"]] == ["10.0.0.7", "10.0.0.8"]


@pytest.mark.parametrize("stats", [False, True])
def test_show_encodes_its_routes_as_json_would(ctl: Controller, stats: bool) -> None:
    shows = Views(Counters())
    ctl.change(
        [
            AddRoute.of(Route(6, "2001:db8::1", "ff3e::1", "a", ("b", "c"), 254)),
            AddRoute.of(r4(3, "a", "zz")),  # pending
        ]
    )
    for healthy in (True, False):
        if not healthy:
            ctl.link_down("c")  # degrades the routes using c: every route takes the slow path
        shown = shows.show(ctl.router, stats=stats)
        encoded = shows.show(ctl.router, stats=stats, encoded=True)
        assert isinstance(encoded["routes"], Encoded)
        assert encoded["routes"] == json.dumps(shown["routes"], separators=(",", ":"))
        assert {k: v for k, v in encoded.items() if k != "routes"} == {
            k: v for k, v in shown.items() if k != "routes"
        }


def test_show_tells_each_routes_state_and_what_it_waits_for(ctl: Controller) -> None:
    ctl.change([AddRoute.of(r4(3, "zz", "a"))])
    ctl.link_down("c")
    routes = {r["source"]: r for r in Views(ctl.kernel).show(ctl.router)["routes"]}
    assert routes["10.0.0.1"] == {
        "family": "ipv4",
        "table": 253,
        "source": "10.0.0.1",
        "group": "239.1.1.1",
        "iif": "a",
        "oifs": ["b"],
        "state": "installed",
        "origin": "api",
    }
    assert (routes["10.0.0.2"]["state"], routes["10.0.0.2"]["missing"]) == ("degraded", ["c"])
    assert (routes["10.0.0.3"]["state"], routes["10.0.0.3"]["reason"]) == (
        "pending",
        ctl.router.status(r4(3, "a").key).reason,
    )


def test_stats_come_from_the_counters_reader_for_what_the_kernel_holds(ctl: Controller) -> None:
    ctl.change([AddRoute.of(r4(3, "zz", "a"))])  # pending: the kernel has no counters for it
    shown = Views(Counters()).show(ctl.router, stats=True)
    stats = {r["source"]: r["stats"] for r in shown["routes"]}
    assert stats["10.0.0.2"] == {"packets": 8, "bytes": 1000, "wrong_if": 1}
    assert stats["10.0.0.3"] == {"packets": 0, "bytes": 0, "wrong_if": 0}
    vif = shown["vifs"][1]
    assert vif["stats"] == {
        "packets_in": vif["vif"],
        "packets_out": 2,
        "bytes_in": 3,
        "bytes_out": 4,
    }
    assert all("stats" not in v for v in Views(Counters()).show(ctl.router)["vifs"])


def test_vif_show_lists_the_vifs_and_the_settings_other_than_the_default(ctl: Controller) -> None:
    ctl.change([SetThreshold("b", 16), SetThreshold("zz", 3)])
    ctl.change([SetThreshold("zz", 1)])  # back to the default: no setting
    shown = Views(ctl.kernel).vif_show(ctl.router)
    assert shown["settings"] == [
        {"interface": "b", "threshold": 16, "mrdisc": False, "threshold_origin": "api"}
    ]
    assert [(v["interface"], v["threshold"], v["routes"]) for v in shown["vifs"]] == [
        ("a", 1, 2),
        ("b", 16, 2),
        ("c", 1, 1),
    ]
    assert (shown["schema"], shown["max_vifs"]) == (views.SHOW_SCHEMA, 32)


# --- plans, results, reports and log text --------------------------------------------------------


def test_a_step_is_described_by_what_it_does(ctl: Controller) -> None:
    plan = ctl.change([AddRoute.of(r4(3, "c", "d"))], dry_run=True).steps
    assert [describe_step(step) for step in plan] == [
        {"action": "add_vif", "family": "ipv4", "table": 253, "vif": 3, "interface": "d"},
        {
            "action": "add_mfc",
            "family": "ipv4",
            "table": 253,
            "source": "10.0.0.3",
            "group": "239.1.1.1",
            "parent": 2,
            "oifs": [3],
        },
    ]
    assert views.step_text(plan[0]) == "action=add_vif family=ipv4 table=253 vif=3 interface=d"


def test_a_repair_the_kernel_refused_carries_its_error(ctl: Controller) -> None:
    step = Step(ctl.router.entry(r4(1, "a").key), None, "reissue_mfc")
    assert views.repair(step) == describe_step(step)
    refused = KernelError("MRT_ADD_MFC failed: no buffer space", "MRT_ADD_MFC", errno.ENOBUFS)
    assert views.repair(step, refused) == {
        **describe_step(step),
        "error": "MRT_ADD_MFC failed: no buffer space",
    }


def test_a_summary_counts_routes_and_operations(ctl: Controller) -> None:
    steps = ctl.change([AddRoute.of(r4(3, "c", "d"))], dry_run=True).steps
    assert views.summarize(steps, 0.25) == "1 routes affected (add_mfc 1, add_vif 1) in 0.25 s"


def test_a_change_result_says_the_state_of_the_route_added(ctl: Controller) -> None:
    key = r4(3, "zz", "a").key
    outcome = ctl.change([AddRoute.of(r4(3, "zz", "a"))])
    result = views.change_result(
        ctl.router, changes=1, counts=outcome.counts, steps=outcome.steps, dry_run=False, added=key
    )
    assert result == {
        "dry_run": False,
        "changes": 1,
        "kernel_operations": {},
        "plan": [],
        "state": "pending",
        "reason": ctl.router.status(key).reason,
        "missing": ["zz"],
    }
    counts = Counter({"add_mfc": 2})
    batch = views.change_result(ctl.router, changes=2, counts=counts, steps=None, dry_run=True)
    assert batch == {"dry_run": True, "changes": 2, "kernel_operations": {"add_mfc": 2}}


def test_a_plan_names_the_interfaces_of_its_routes_as_they_are_at_each_step(
    ctl: Controller,
) -> None:
    """A change's plan names the iif and oifs of each MFC step beside their VIF numbers,
    applied (`mfcctl -v`) as in a dry run (`-n`): a VIF one change frees and gives another
    interface is named for each as it is at that step."""
    changes: list[Change] = [
        AddRoute.of(r4(3, "a", "c")),  # on VIF 2 (c) ...
        DelRoute(r4(3, "a", "c").key),
        DelRoute(r4(2, "b", "a", "c").key),  # ... which this frees ...
        AddRoute.of(r4(4, "a", "d")),  # ... and d takes
    ]

    def named(dry_run: bool) -> list[tuple[str, int, list[int], str, list[str]]]:
        outcome = ctl.change(changes, dry_run=dry_run, numbered=True)
        result = views.change_result(
            ctl.router, changes=4, counts=outcome.counts, steps=outcome.steps, dry_run=dry_run
        )
        return [
            (s["action"], s["parent"], s["oifs"], s["iif"], s["oif_names"])
            for s in result["plan"]
            if "parent" in s
        ]

    expected = [("add_mfc", 0, [2], "a", ["c"]), ("add_mfc", 0, [2], "a", ["d"])]
    assert named(dry_run=True) == expected
    assert named(dry_run=False) == expected
    assert ctl.router.slots[(4, 253)][2] == "d"


def test_the_sort_key_orders_by_family_table_group_and_source_as_numbers() -> None:
    # (one int per key, made from packed fields: it must order as the tuple of the numbers)
    rng = random.Random(12)
    keys = []
    for _ in range(2000):
        family = rng.choice((4, 6))
        table = rng.choice((1, 100, 253, 254, 2**32 - 1))
        if family == 4:
            source = str(ipaddress.IPv4Address(rng.getrandbits(32)))
            group = str(
                ipaddress.IPv4Address(rng.choice((0xE0000000, 0xEF000000)) | rng.getrandbits(8))
            )
        else:
            source = str(ipaddress.IPv6Address(rng.getrandbits(128)))
            group = str(ipaddress.IPv6Address(0xFF3E << 112 | rng.getrandbits(9)))
        keys.append((family, source, group, table))

    def numbers(key: tuple[int, str, str, int]) -> tuple[int, int, int, int]:
        family, source, group, table = key
        address = ipaddress.ip_address
        return family, table, int(address(group)), int(address(source))

    assert sorted(keys, key=_address_order()) == sorted(keys, key=numbers)


# --- group joins ---------------------------------------------------------------------------------


def joins_of(*wanted: tuple[JoinKey, str], links: dict[str, int]) -> Joins:
    joins = Joins()
    joins.begin()
    for key, origin in wanted:
        joins.join(key, origin, links)
    joins.commit()
    return joins


def test_the_start_up_line_of_joins_counts_them_all_and_by_origin() -> None:
    keys = [(name, f"239.5.1.{k}", ANY_SOURCE) for k, name in enumerate("aazz")]
    origins = ("api", "config", "api", "config")
    joins = joins_of(*zip(keys, origins, strict=True), links={"a": 5})
    assert views.joins_joined(joins) == "2 of 4 joined (saved: 1 of 2, config files: 1 of 2)"
    assert views.joins_joined(joins_of((keys[1], "config"), links={})) == (
        "0 of 1 joined (config files: 0 of 1)"
    )


def test_group_show_lists_each_join_in_show_order_with_its_state_and_origin() -> None:
    waiting = ("zz", "239.5.0.3", ANY_SOURCE)
    ssm = ("a", "ff3e::1", "2001:db8::1")
    asm = ("a", "239.5.0.2", ANY_SOURCE)
    joins = joins_of((waiting, "config"), (ssm, "config"), (asm, "api"), links={"a": 5})
    joins.begin()
    joins.park(asm, "the kernel refused it (No buffer space)")
    joins.set_mrdisc("a", True)
    joins.commit()
    shown = views.group_show(joins, lambda key: ("vlan*", *key[1:]) if key == ssm else None)
    assert json.dumps(shown) == json.dumps(
        {
            "groups": [
                {
                    "interface": "a",
                    "family": "ipv4",
                    "group": "239.5.0.2",
                    "source": "*",
                    "state": "pending",
                    "origin": "api",
                    "reason": "the kernel refused it (No buffer space)",
                },
                {
                    "interface": "a",
                    "family": "ipv6",
                    "group": "ff3e::1",
                    "source": "2001:db8::1",
                    "state": "joined",
                    "origin": "config",
                    "interface_pattern": "vlan*",
                },
                {
                    "interface": "zz",
                    "family": "ipv4",
                    "group": "239.5.0.3",
                    "source": "*",
                    "state": "pending",
                    "origin": "config",
                    "reason": "waiting for zz",
                },
            ],
            "mrdisc": ["a"],
        }
    )
    assert "interface_pattern" not in str(views.group_show(joins))  # (no wildcard joins)


def test_a_joins_result_counts_the_waiting_joins_and_their_missing_interfaces() -> None:
    keys = [("a", "239.5.0.1", ANY_SOURCE), ("zz", "239.5.0.1", ANY_SOURCE)]
    joins = joins_of(*((k, "api") for k in keys), links={"a": 5})
    assert views.join_states(joins, keys[:1], {"a"}) == {
        "joins": 1,
        "pending": 0,
        "state": "joined",
    }
    assert json.dumps(views.join_states(joins, keys, {"a"})) == json.dumps(
        {
            "joins": 2,
            "pending": 1,
            "state": "pending",
            "reason": "waiting for zz",
            "missing": ["zz"],
        }
    )


def test_a_membership_operation_is_planned_as_a_join_or_leave_of_its_family() -> None:
    leave = MembershipOp(False, ("a", "ff3e::1", "2001:db8::1"), 5)
    assert json.dumps(views.describe_membership(leave)) == json.dumps(
        {
            "action": "leave",
            "family": "ipv6",
            "interface": "a",
            "group": "ff3e::1",
            "source": "2001:db8::1",
        }
    )
    join = MembershipOp(True, ("a", "239.5.0.1", ANY_SOURCE), 5)
    assert views.describe_membership(join)["action"] == "join"
    assert views.describe_membership(join)["family"] == "ipv4"


def test_a_batchs_counts_name_joins_only_when_it_had_some_and_pending_unless_a_dry_run() -> None:
    routes = views.batch_counts(
        changes=10, deleted=2, updated=3, joined=0, left=0, pending=(1, 2, ["zz"])
    )
    assert json.dumps(routes) == json.dumps(
        {"added": 5, "deleted": 2, "updated": 3, "pending": 1, "degraded": 2, "missing": ["zz"]}
    )
    both = views.batch_counts(changes=10, deleted=2, updated=3, joined=1, left=1, pending=None)
    assert json.dumps(both) == json.dumps(
        {"added": 3, "deleted": 2, "updated": 3, "joined": 1, "left": 1}
    )


def test_show_stats_learning_part_has_the_limits_then_the_counts() -> None:
    counts = Counter({"learned": 4, "dropped": 1})
    assert json.dumps(views.learning_stats(3, 100, 300.0, counts)) == json.dumps(
        {"entries": 3, "max_learned": 100, "idle_timeout": 300.0, "learned": 4, "dropped": 1}
    )


# --- diagnose ------------------------------------------------------------------------------------


def test_diagnose_shows_each_flows_route_and_checks_with_a_verdict_for_each_and_all() -> None:
    intent = Intent("template", 6, "2001:db8::1", "ff3e::1", 254, "a", ("b",), "installed", "")
    intent = dataclasses.replace(intent, template=("*", "ff3e::/16"), learned=True)
    good = [Check("route", "passed", "matches"), Check("iif", "passed", "a is up", "", "a")]
    bad = [Check("route", "failed", "no route matches", "add one")]
    query = Query(6, "ff3e::1", None, 254, 1.0)
    shown = views.diagnose_result(query, 1.0, [(intent, good), (None, bad)])
    route = {
        "kind": "template",
        "family": "ipv6",
        "table": 254,
        "source": "2001:db8::1",
        "group": "ff3e::1",
        "iif": "a",
        "oifs": ["b"],
        "state": "installed",
        "origin": "api",
        "template": {"source": "*", "group": "ff3e::/16"},
        "learned": True,
    }
    checks = [
        {"check": "route", "status": "passed", "detail": "matches"},
        {"check": "iif", "status": "passed", "detail": "a is up", "interface": "a"},
    ]
    refused = {"check": "route", "status": "failed", "detail": "no route matches", "fix": "add one"}
    assert json.dumps(shown) == json.dumps(
        {
            "group": "ff3e::1",
            "source": None,
            "table": 254,
            "seconds": 1.0,
            "verdict": "failed",
            "flows": [
                {"route": route, "verdict": "ok", "checks": checks},
                {"route": None, "verdict": "failed", "checks": [refused]},
            ],
        }
    )


def test_interface_settings_name_each_setting_and_where_it_comes_from() -> None:
    declared = views.Settings(thresholds={"c": 9, "d": 1}, mrdisc={"e": False, "b": True})
    shown = views.interface_settings({"a": 5, "c": 9, "z": 1}, ["a", "b"], declared)
    assert shown == [
        # the API's threshold and mrdisc
        {
            "interface": "a",
            "threshold": 5,
            "mrdisc": True,
            "threshold_origin": "api",
            "mrdisc_origin": "api",
        },
        {"interface": "b", "threshold": 1, "mrdisc": True, "mrdisc_origin": "config"},
        {"interface": "c", "threshold": 9, "mrdisc": False, "threshold_origin": "config"},
        # declared as the defaults: still the files' settings
        {"interface": "d", "threshold": 1, "mrdisc": False, "threshold_origin": "config"},
        {"interface": "e", "threshold": 1, "mrdisc": False, "mrdisc_origin": "config"},
    ]  # (z: a threshold back to the default is no setting)


def test_link_events_tell_a_monitor_new_change_and_del() -> None:
    """The kernel says RTM_NEWLINK for every change of state: a veth created comes as three,
    one deleted as a NEWLINK (it went down) then a DELLINK. A monitor is told `new` only
    for an interface it did not know under that name and index; a rename as the deletion
    of the old name, then the new one (as the routes that name either see it)."""
    events = [
        LinkChange("new", "r9", 12, False),  # created
        LinkChange("new", "r9", 12, True),  # set up
        LinkChange("new", "r9", 12, True),  # carrier
        LinkChange("new", "r9", 12, False),  # set down before its deletion
        LinkChange("del", "r9", 12, False),
        LinkChange("new", "r9", 13, False),  # created again: another index
        LinkChange("new", "r1", 3, True),  # known already
        LinkChange("new", "r1", 3, False),  # set down (to be renamed)
        LinkChange("new", "up1", 3, False),  # r1 renamed up1
        LinkChange("new", "up1", 3, True),  # set up
    ]
    told = views.link_events({"r1": 3}, events)
    assert [(e["action"], e["interface"], e["ifindex"]) for e in told] == [
        ("new", "r9", 12),
        ("change", "r9", 12),
        ("change", "r9", 12),
        ("change", "r9", 12),
        ("del", "r9", 12),
        ("new", "r9", 13),
        ("change", "r1", 3),
        ("change", "r1", 3),
        ("del", "r1", 3),
        ("new", "up1", 3),
        ("change", "up1", 3),
    ]
    assert told[8] == {
        "action": "del",
        "interface": "r1",
        "ifindex": 3,
        "up": False,
        "renamed_to": "up1",
    }
    assert told[9] == {
        "action": "new",
        "interface": "up1",
        "ifindex": 3,
        "up": False,
        "renamed_from": "r1",
    }
    assert [e["up"] for e in told[:4]] == [False, True, True, False]
    assert not any("renamed_to" in e or "renamed_from" in e for e in told[:8] + told[10:])


@pytest.mark.parametrize(
    ("waiting", "would", "text"),
    [
        (Waiting(0, 0, [], [], 0, 0), False, ""),
        (
            Waiting(1, 1, ["r7"], ["rX"], 0, 0),
            False,
            "1 route is pending (waiting for r7) and 1 degraded (waiting for rX): no such"
            " interfaces (yet)",
        ),
        (
            Waiting(0, 2, [], ["r9"], 0, 0),
            False,
            "2 routes are degraded (waiting for r9): no such interface (yet)",
        ),
        (
            Waiting(10000, 0, ["r1", "r2", "r3", "r4", "r5"], [], 0, 0),
            True,
            "10000 routes would be pending (waiting for r1, r2, r3 and 2 more): no such"
            " interfaces (yet)",
        ),
        # Templates are templates, not routes; a mix names both.
        (
            Waiting(2, 1, ["r7"], ["rX"], 2, 1),
            False,
            "2 templates are pending (waiting for r7) and 1 degraded (waiting for rX): no such"
            " interfaces (yet)",
        ),
        (
            Waiting(1, 2, ["r7"], ["rX"], 0, 1),
            False,
            "1 route is pending (waiting for r7) and 1 route and 1 template degraded (waiting"
            " for rX): no such interfaces (yet)",
        ),
        (
            Waiting(3, 1, ["r7"], ["rX"], 1, 0),
            True,
            "2 routes and 1 template would be pending (waiting for r7) and 1 route degraded"
            " (waiting for rX): no such interfaces (yet)",
        ),
        (
            Waiting(1, 1, ["r7"], ["rX"], 0, 1),
            False,
            "1 route is pending (waiting for r7) and 1 template degraded (waiting for rX): no"
            " such interfaces (yet)",
        ),
        (
            Waiting(0, 1, [], ["rX"], 0, 1),
            False,
            "1 template is degraded (waiting for rX): no such interface (yet)",
        ),
    ],
)
def test_what_the_declared_routes_wait_for_is_one_short_line(
    waiting: Waiting, would: bool, text: str
) -> None:
    """However many routes wait for the same interfaces, one line names them (3 at most);
    templates are counted as templates."""
    assert views.waiting_text(waiting, would=would) == text
