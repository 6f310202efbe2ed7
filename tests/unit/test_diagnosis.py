"""Tests for mfcd.diagnosis: each failure class gives its verdict and one line saying what to do."""

from __future__ import annotations

import dataclasses

import pytest

from mfcd import diagnosis, validate, views
from mfcd.diagnosis import (
    Check,
    Counts,
    Facts,
    Intent,
    Interface,
    Query,
    RouteBack,
    Rules,
    Sample,
)
from mfcd.model import Ports
from mfcd.netlink import MRule
from tests.unit import test_templates as templates
from tests.unit.conftest import router_with_links, run

SOURCE, GROUP = "198.18.0.2", "239.1.1.1"
INTENT = Intent(
    "route", 4, SOURCE, GROUP, 253, "r0", ("r1", "r2"), "installed", "", "api", {"r1": 1, "r2": 1}
)
UP = {n: Interface(n, True, True, True, True, 0) for n in ("r0", "r1", "r2")}
HEALTHY = Facts(
    4,
    SOURCE,
    GROUP,
    INTENT,
    UP,
    Counts(2.0, 200, 0, 1000),
    Sample(2.0, {"r0": 190}, {"r0": (8,) * 190}),
    RouteBack("r0"),
    {"r1": 190, "r2": 190},
)


def check(facts: Facts, name: str) -> Check:
    found = [c for c in diagnosis.checklist(facts) if c.check == name]
    assert len(found) == 1, found
    return found[0]


def with_interface(facts: Facts, name: str, **changes: object) -> Facts:
    interfaces = dict(facts.interfaces)
    interfaces[name] = dataclasses.replace(interfaces[name], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(facts, interfaces=interfaces)


def test_a_healthy_flow_passes_every_check_in_path_order() -> None:
    checks = diagnosis.checklist(HEALTHY)
    assert [c.check for c in checks] == [
        "route",
        "state",
        "iif",
        "mc_forwarding",
        "arrival",
        "wrong_if",
        "rp_filter",
        "ttl",
        "counted",
        "oif",
        "oif",
        "sent",
        "bridge_snooping",
    ]
    assert {c.status for c in checks} == {"passed"}
    assert all(not c.fix for c in checks)
    assert diagnosis.verdict(checks) == "ok"


def test_every_failure_says_what_to_do_on_one_line() -> None:
    bad = dataclasses.replace(
        HEALTHY,
        counts=Counts(2.0, 0, 50, 0),
        sample=Sample(2.0, {"r2": 50}, {"r2": (1,) * 50}),
        route_back=RouteBack(None),
    )
    bad = with_interface(bad, "r0", rp_filter=1, mc_forwarding=False)
    bad = with_interface(bad, "r1", up=False)
    failed = [c for c in diagnosis.checklist(bad) if c.status == "failed"]
    assert len(failed) >= 5
    for c in failed:
        assert c.fix and "\n" not in c.fix and "\n" not in c.detail


def test_no_route_suggests_the_interface_the_flow_arrives_on() -> None:
    facts = Facts(4, SOURCE, GROUP, None, {}, None, Sample(2.0, {"r3": 10}, {"r3": (8,)}), None)
    checks = diagnosis.checklist(facts)
    assert [c.check for c in checks] == ["route"]
    assert checks[0].status == "failed"
    assert f"--source {SOURCE} --group {GROUP} --iif r3" in checks[0].fix
    assert diagnosis.verdict(checks) == "failed"


@pytest.mark.parametrize(
    ("state", "reason", "words"),
    [
        ("pending", "waiting for r9", "create r9"),
        ("degraded", "waiting for r2", "create r2 (or re-create it, if it went away)"),
        (
            "pending",
            "no free VIF: needs 1 new IPv4 VIF in table 253, 0 of the 32 are free",
            "free a VIF",
        ),
        ("degraded", "no free VIF for d29, d30", "free a VIF"),
        ("pending", "kernel refused: EINVAL", "mfcctl sync"),
        (
            "pending",
            "the kernel refused it (another multicast router already owns IPv4 multicast"
            " routing table 100 (smcroute, ...): stop it first); mfcctl sync retries",
            "stop the multicast router that owns the table",
        ),
    ],
)
def test_a_route_not_installed_says_why(state: str, reason: str, words: str) -> None:
    facts = dataclasses.replace(
        HEALTHY, intent=dataclasses.replace(INTENT, state=state, reason=reason)
    )
    c = check(facts, "state")
    assert (c.status, c.detail) == ("failed", f"{state}: {reason}")
    assert words in c.fix


def test_interfaces_missing_down_or_without_carrier() -> None:
    missing = dataclasses.replace(HEALTHY, interfaces={k: v for k, v in UP.items() if k != "r0"})
    assert check(missing, "iif").detail == "r0 does not exist"
    down = with_interface(HEALTHY, "r0", up=False)
    assert check(down, "iif").fix == "ip link set r0 up"
    no_carrier = with_interface(HEALTHY, "r0", running=False)
    assert "no carrier" in check(no_carrier, "iif").detail
    oif_down = with_interface(HEALTHY, "r2", up=False)
    oifs = [c for c in diagnosis.checklist(oif_down) if c.check == "oif"]
    assert [(c.interface, c.status) for c in oifs] == [("r1", "passed"), ("r2", "failed")]
    unknown = with_interface(HEALTHY, "r1", up=None)
    assert next(c.status for c in diagnosis.checklist(unknown) if c.check == "oif") == "unknown"


def test_mc_forwarding_off() -> None:
    c = check(with_interface(HEALTHY, "r0", mc_forwarding=False), "mc_forwarding")
    assert c.status == "failed"
    assert "mfcctl sync" in c.fix
    pending = dataclasses.replace(INTENT, state="pending", reason="waiting for r9")
    facts = dataclasses.replace(with_interface(HEALTHY, "r0", mc_forwarding=False), intent=pending)
    assert "see state" in check(facts, "mc_forwarding").fix
    assert check(with_interface(HEALTHY, "r0", mc_forwarding=None), "mc_forwarding").status == (
        "unknown"
    )


def test_nothing_arrives_asks_about_a_join() -> None:
    facts = dataclasses.replace(HEALTHY, sample=Sample(2.0), counts=Counts(2.0, 0, 0, 0))
    c = check(facts, "arrival")
    assert c.status == "failed"
    assert "join" in c.fix
    assert check(facts, "counted").status == "failed"
    assert check(facts, "ttl").status == "unknown"


def test_traffic_on_another_interface_is_named() -> None:
    facts = dataclasses.replace(
        HEALTHY,
        counts=Counts(2.0, 0, 40, 0),
        sample=Sample(2.0, {"r2": 40, "r1": 3}, {"r2": (8,)}),
    )
    arrival, wrong_if = check(facts, "arrival"), check(facts, "wrong_if")
    assert arrival.status == wrong_if.status == "failed"
    assert "--iif r2" in arrival.fix
    assert "rose by 40" in wrong_if.detail
    assert "arrives on r2" in wrong_if.detail


def test_wrong_if_without_a_sample_still_fails() -> None:
    facts = dataclasses.replace(HEALTHY, counts=Counts(2.0, 0, 4, 0), sample=None)
    c = check(facts, "wrong_if")
    assert c.status == "failed"
    assert "another interface" in c.detail
    assert check(facts, "arrival").status == "unknown"


def test_a_sample_that_failed_is_unknown_with_the_reason() -> None:
    facts = dataclasses.replace(HEALTHY, sample=Sample(0.0, error="no CAP_NET_RAW"))
    c = check(facts, "arrival")
    assert (c.status, c.detail) == ("unknown", "could not sample packets: no CAP_NET_RAW")


@pytest.mark.parametrize(
    ("mode", "back", "status"),
    [
        (0, RouteBack(None), "passed"),
        (1, RouteBack(None), "failed"),
        (2, RouteBack(None), "failed"),
        (1, RouteBack("r1"), "failed"),
        (2, RouteBack("r1"), "passed"),
        (1, RouteBack("r0"), "passed"),
        (1, RouteBack(None, "EPERM"), "unknown"),
    ],
)
def test_rp_filter_and_the_route_back(mode: int, back: RouteBack, status: str) -> None:
    facts = dataclasses.replace(with_interface(HEALTHY, "r0", rp_filter=mode), route_back=back)
    c = check(facts, "rp_filter")
    assert c.status == status
    if status == "failed":
        assert "rp_filter" in c.fix


def test_ipv6_has_no_rp_filter() -> None:
    intent = dataclasses.replace(INTENT, family=6, source="2001:db8::2", group="ff3e::1")
    facts = dataclasses.replace(HEALTHY, family=6, intent=intent, route_back=None)
    assert check(with_interface(facts, "r0", rp_filter=None), "rp_filter").status == "passed"


def test_ttl_at_the_threshold_is_not_forwarded() -> None:
    facts = dataclasses.replace(HEALTHY, sample=Sample(2.0, {"r0": 5}, {"r0": (1, 1, 1)}))
    c = check(facts, "ttl")
    assert c.status == "failed"
    assert "TTL 1" in c.detail
    assert "TTL >= 2" in c.fix


def test_nothing_sent_while_the_route_counts_points_at_ttl_and_oifs() -> None:
    facts = dataclasses.replace(HEALTHY, sent={"r1": 0, "r2": 12})
    c = check(facts, "sent")
    assert (c.status, c.detail) == (
        "failed",
        "no packet left by r1 in 2 s, although the route counted packets",
    )
    assert "ttl" in c.fix
    quiet = dataclasses.replace(facts, counts=Counts(2.0, 0, 0, 0))
    assert "nothing was counted" in check(quiet, "sent").detail
    assert check(dataclasses.replace(HEALTHY, sent={}), "sent").status == "unknown"
    assert check(dataclasses.replace(HEALTHY, sent=None), "sent").status == "unknown"
    assert "r1 190, r2 190" in check(HEALTHY, "sent").detail


def test_ttl_below_one_oifs_threshold_names_it() -> None:
    intent = dataclasses.replace(INTENT, thresholds={"r1": 1, "r2": 16})
    facts = dataclasses.replace(
        HEALTHY, intent=intent, sample=Sample(2.0, {"r0": 5}, {"r0": (8, 9)})
    )
    c = check(facts, "ttl")
    assert c.status == "failed"
    assert "not forwarded to r2 (threshold 16)" in c.detail
    assert ">= 17" in c.fix


def test_hop_limit_for_ipv6() -> None:
    intent = dataclasses.replace(INTENT, family=6, source="2001:db8::2", group="ff3e::1")
    facts = dataclasses.replace(
        HEALTHY, family=6, intent=intent, sample=Sample(2.0, {"r0": 2}, {"r0": (1,)})
    )
    assert "hop limit 1" in check(facts, "ttl").detail


def test_bridge_snooping_without_a_querier() -> None:
    """The trial's case: the stream reaches the receivers behind the bridge (a Linux bridge
    floods while it hears no querier); only a switch further on may prune it: unknown,
    with the advice, not a failure (exit status 8) for a healthy flow."""
    facts = with_interface(HEALTHY, "r1", snooping=True, querier=False)
    c = check(facts, "bridge_snooping")
    assert c.status == "unknown"
    assert "mcast_querier 1" in c.fix
    assert "floods the stream to every port while it hears no querier, 190 packets left by r1" in (
        c.detail
    )
    assert diagnosis.verdict(diagnosis.checklist(facts)) == "unknown"
    silent = dataclasses.replace(facts, sent={"r1": 0, "r2": 190})
    assert "packets left" not in check(silent, "bridge_snooping").detail
    with_querier = with_interface(HEALTHY, "r1", snooping=True, querier=True)
    assert check(with_querier, "bridge_snooping").status == "passed"
    no_snooping = with_interface(HEALTHY, "r1", snooping=False, querier=False)
    assert check(no_snooping, "bridge_snooping").status == "passed"


def test_verdict_order() -> None:
    passed, unknown, failed = (Check("x", s, "") for s in ("passed", "unknown", "failed"))
    assert diagnosis.verdict([passed]) == "ok"
    assert diagnosis.verdict([passed, unknown]) == "unknown"
    assert diagnosis.verdict([unknown, failed, passed]) == "failed"


def test_matching_intents_from_the_model() -> None:
    router = router_with_links("r0", "r1")
    other = (4, "198.18.0.3", GROUP, 253)
    for key in ((4, SOURCE, GROUP, 253), other, (4, SOURCE, "239.1.1.2", 253)):
        run(router, router.add, key, router.share(Ports("r0", ("r1", "r9"))))
    router.thresholds["r1"] = 4
    one = diagnosis.matching_intents(router, Query(4, GROUP, SOURCE, 253, 1.0))
    assert len(one) == 1
    assert one[0].state == "degraded"
    assert one[0].reason == "waiting for r9"
    assert one[0].thresholds == {"r1": 4, "r9": 1}
    assert views.diagnosed_intent(one[0])["origin"] == "api"
    every = diagnosis.matching_intents(router, Query(4, GROUP, None, 253, 1.0))
    assert [i.source for i in every] == [SOURCE, "198.18.0.3"]
    assert diagnosis.matching_intents(router, Query(4, GROUP, SOURCE, 100, 1.0)) == []


def test_without_a_table_every_table_is_looked_in() -> None:
    """The trial's case: a route of table 100 forwards the flow; diagnose without --table
    found nothing. Without a table: the routes of each table (the default first), else that
    table's templates; with one, only that table's."""
    router = router_with_links("r0", "r1", "r2")
    for table in (100, 253):
        run(router, router.add, (4, SOURCE, GROUP, table), router.share(Ports("r0", ("r1",))))
    run(router, router.add, (4, "198.18.0.3", GROUP, 100), router.share(Ports("r1", ("r2",))))
    found = diagnosis.matching_intents(router, Query(4, GROUP, SOURCE, None, 1.0))
    assert [(i.kind, i.source, i.table) for i in found] == [
        ("route", SOURCE, 253),
        ("route", SOURCE, 100),
    ]
    every = diagnosis.matching_intents(router, Query(4, GROUP, None, None, 1.0))
    assert [(i.source, i.table) for i in every] == [
        (SOURCE, 253),
        (SOURCE, 100),
        ("198.18.0.3", 100),
    ]
    only = diagnosis.matching_intents(router, Query(4, GROUP, None, 100, 1.0))
    assert [(i.source, i.table) for i in only] == [(SOURCE, 100), ("198.18.0.3", 100)]
    assert diagnosis.matching_intents(router, Query(6, "ff3e::1", None, None, 1.0)) == []


def test_without_a_table_a_template_of_any_table_matches() -> None:
    ctl, _, _, _ = templates.setup()
    ctl.change([validate.template_change(None, "239.1.0.0/16", "a", ["b"], 100)])
    [found] = diagnosis.matching_intents(ctl.router, Query(4, GROUP, SOURCE, None, 1.0))
    assert (found.kind, found.table, found.template) == ("template", 100, ("*", "239.1.0.0/16"))
    assert diagnosis.matching_intents(ctl.router, Query(4, GROUP, SOURCE, 253, 1.0)) == []


def test_no_match_on_an_iif_the_rules_steer_to_another_table_adds_it_there() -> None:
    """The flow arrives on r3, which `ip mrule iif r3 lookup 100` sends to table 100: a route
    added in the default table would get nothing, so the fix names --table 100."""
    rules = Rules((MRule(0, "lookup", 100, iif="r3"), MRule(32767, "lookup", 253)))
    sample = Sample(2.0, {"r3": 10}, {"r3": (8,)})
    facts = Facts(4, SOURCE, GROUP, None, {}, None, sample, None, None, rules)
    [route] = diagnosis.checklist(facts)
    assert route.fix == (
        f"add one: mfcctl mfc add --table 100 --source {SOURCE} --group {GROUP} --iif r3 --oifs"
        " OIF[,OIF...] (without --source: a template for any source; the multicast rules send"
        " what arrives on r3 to table 100)"
    )
    elsewhere = dataclasses.replace(facts, sample=Sample(2.0, {"r0": 10}, {"r0": (8,)}))
    assert "--table" not in diagnosis.checklist(elsewhere)[0].fix.split("(")[0]


def test_no_match_in_the_table_asked_for_names_the_tables_that_have_one() -> None:
    facts = Facts(4, SOURCE, GROUP, None, {}, None, Sample(2.0), None, elsewhere=(100,))
    [route] = diagnosis.checklist(facts)
    assert route.status == "failed"
    assert (
        route.detail == f"no route or template matches ({SOURCE}, {GROUP}) in the table asked for"
    )
    assert (
        route.fix
        == "table 100 has one: diagnose with --table 100, or without --table (every table)"
    )
    both = dataclasses.replace(facts, elsewhere=(100, 253))
    assert diagnosis.checklist(both)[0].fix.startswith(
        "table 100 and the default table (253) have one: diagnose with --table 100"
    )


# --- templates ---------------------------------------------------------------------------------


def test_no_route_or_template_matching_says_both_can_be_added() -> None:
    facts = Facts(4, SOURCE, GROUP, None, {}, None, Sample(2.0), None)
    [route] = diagnosis.checklist(facts)
    assert route.detail == f"no route or template matches ({SOURCE}, {GROUP})"
    assert "without --source: a template" in route.fix


def test_no_route_names_the_config_files_a_start_left_out() -> None:
    """F11: the flow's route may be declared in a file mfcd left out at start for an error."""
    facts = Facts(4, SOURCE, GROUP, None, {}, None, Sample(2.0), None, left_out=("/e/80.conf",))
    [route] = diagnosis.checklist(facts)
    assert route.fix is not None and route.fix.startswith(
        "if the config files declare it: mfcd left out /e/80.conf at start for an error"
        " (see the log); fix it and run mfcctl reload. Else add one: mfcctl mfc add"
    )


def test_the_most_specific_template_of_each_iif_is_the_intent_when_no_route_matches() -> None:
    ctl, _, learner, _ = templates.setup()
    wide, narrow = (
        templates.star("239.1.0.0/16", "a", "b"),
        templates.star("239.1.1.0/24", "a", "c"),
    )
    other_iif = templates.star("239.0.0.0/8", "b", "d", source="198.18.0.0/16")
    ctl.change([wide, narrow, other_iif, templates.star("239.2.0.0/16", "a", "b")])
    query = Query(4, GROUP, "198.18.0.9", 253, 1.0)
    found = diagnosis.matching_intents(ctl.router, query)
    assert [(i.kind, i.template, i.iif, i.learned) for i in found] == [
        ("template", ("*", "239.1.1.0/24"), "a", False),
        ("template", ("198.18.0.0/16", "239.0.0.0/8"), "b", False),
    ]
    first = found[0]
    assert (first.source, first.group, first.oifs, first.state) == (
        "198.18.0.9",
        GROUP,
        ("c",),
        "installed",
    )
    assert not first.entry
    assert views.diagnosed_intent(first)["template"] == {"source": "*", "group": "239.1.1.0/24"}
    # A source outside the prefix of b's template: only a's.
    outside = diagnosis.matching_intents(ctl.router, Query(4, GROUP, "198.19.0.9", 253, 1.0))
    assert [i.iif for i in outside] == ["a"]
    # Without a source: the templates holding the group, their source prefixes as the flow's.
    anyone = diagnosis.matching_intents(ctl.router, Query(4, GROUP, None, 253, 1.0))
    assert [(i.source, i.template) for i in anyone] == [
        ("*", ("*", "239.1.1.0/24")),
        ("198.18.0.0/16", ("198.18.0.0/16", "239.0.0.0/8")),
    ]
    # Learned: the entry is the intent, shown as its template, with or without a source.
    learner.on_upcalls([templates.upcall(ctl, "198.18.0.9", GROUP, "a")])
    for source in ("198.18.0.9", None):
        [learned] = diagnosis.matching_intents(ctl.router, Query(4, GROUP, source, 253, 1.0))
        assert (learned.kind, learned.source, learned.template) == (
            "template",
            "198.18.0.9",
            ("*", "239.1.1.0/24"),
        )
        assert learned.learned and learned.entry and learned.origin == "learned"
        assert views.diagnosed_intent(learned)["learned"] is True
    # No template holds another group.
    assert diagnosis.matching_intents(ctl.router, Query(4, "238.3.0.1", None, 253, 1.0)) == []


TEMPLATE = dataclasses.replace(INTENT, kind="template", template=("*", "239.1.0.0/16"))


def test_a_template_with_nothing_learned_fails_on_learned_and_asks_about_a_join() -> None:
    facts = dataclasses.replace(HEALTHY, intent=TEMPLATE, counts=None, sample=Sample(2.0))
    checks = diagnosis.checklist(facts)
    assert [c.check for c in checks][:4] == ["route", "state", "learned", "iif"]
    assert check(facts, "route").detail.startswith("template * -> 239.1.0.0/16 iif r0")
    assert check(facts, "state").detail == "installed: its interfaces have VIFs"
    learned = check(facts, "learned")
    assert learned.status == "failed"
    assert "no entry for" in learned.detail and "r0" in learned.detail
    assert "join it on r0" in learned.fix and "TTL of 2" in learned.fix
    assert check(facts, "counted").status == "unknown"
    assert diagnosis.verdict(checks) == "failed"


def test_a_template_with_packets_on_its_iif_but_nothing_learned_points_further() -> None:
    facts = dataclasses.replace(HEALTHY, intent=TEMPLATE, counts=None)
    learned = check(facts, "learned")
    assert learned.status == "failed" and "190 packets arrived on r0" in learned.detail
    assert "max_learned" in learned.fix


def test_a_template_whose_flow_arrives_elsewhere_suggests_a_template_there() -> None:
    facts = dataclasses.replace(HEALTHY, intent=TEMPLATE, sample=Sample(2.0, {"r2": 9}, {}))
    arrival = check(facts, "arrival")
    assert arrival.status == "failed"
    assert arrival.fix.startswith(
        "make r2 the template's iif: mfcctl mfc add --group 239.1.0.0/16 --iif r2 --oifs r1,r2"
    )


def test_a_learned_entry_is_checked_as_a_route() -> None:
    facts = dataclasses.replace(HEALTHY, intent=dataclasses.replace(TEMPLATE, learned=True))
    checks = diagnosis.checklist(facts)
    assert {c.status for c in checks} == {"passed"}
    assert check(facts, "state").detail == "installed in the kernel"


def test_a_pending_template_learns_nothing() -> None:
    pending = dataclasses.replace(TEMPLATE, state="pending", reason="waiting for r9")
    facts = dataclasses.replace(HEALTHY, intent=pending, counts=None)
    assert check(facts, "learned").status == "unknown"
    assert check(facts, "state").status == "failed"


# --- the multicast rules (ip mrule) of a table other than the default --------------------------

DEFAULT_RULE4 = MRule(32767, "lookup", 253)
IN_100 = dataclasses.replace(HEALTHY, intent=dataclasses.replace(INTENT, table=100))


def with_rules(
    *rules: MRule, facts: Facts = IN_100, missing: frozenset[int] = frozenset()
) -> Facts:
    return dataclasses.replace(facts, rules=Rules(rules, missing=missing))


def test_the_default_table_with_the_kernels_rules_gets_no_mrule_line() -> None:
    """A host with only the kernel's rule, or rules that cannot be read: nothing new shown
    for a route in the default table."""
    for facts in (
        HEALTHY,
        with_rules(DEFAULT_RULE4, facts=HEALTHY),
        with_rules(MRule(10, "lookup", 100, iif="r5"), DEFAULT_RULE4, facts=HEALTHY),
        dataclasses.replace(HEALTHY, rules=Rules((), "dump failed: Operation not supported")),
    ):
        checks = diagnosis.checklist(facts)
        assert "mrule" not in [c.check for c in checks]
        assert diagnosis.verdict(checks) == "ok"


STEERED = MRule(0, "lookup", 100, iif="r0")


def test_a_default_table_route_whose_iif_a_rule_steers_elsewhere_fails_on_mrule() -> None:
    """The trial's commonest multi-table mistake: `ip mrule add iif r0 lookup 100` and the
    route left in the default table. Nothing is counted; mrule says why (not a firewall)."""
    facts = with_rules(
        STEERED, DEFAULT_RULE4, facts=dataclasses.replace(HEALTHY, counts=Counts(2.0, 0, 0, 0))
    )
    checks = diagnosis.checklist(facts)
    names = [c.check for c in checks]
    assert names.index("mc_forwarding") + 1 == names.index("mrule") < names.index("arrival")
    c = check(facts, "mrule")
    assert (c.status, c.detail) == (
        "failed",
        "what arrives on r0 goes to table 100 (rule 0: iif r0 lookup 100), not to the route's"
        " table 253",
    )
    assert c.fix == (
        "declare the route in table 100, where that traffic goes: mfcctl mfc add --table 100"
        f" --source {SOURCE} --group {GROUP} --iif r0 --oifs r1,r2, and delete this one; or send"
        " r0's traffic to table 253: ip mrule del pref 0 (it comes before any other), then"
        " ip mrule add iif r0 lookup 253"
    )
    assert check(facts, "counted").fix == "see the checks that failed above"
    later = with_rules(MRule(100, "lookup", 100, iif="r0"), DEFAULT_RULE4, facts=HEALTHY)
    assert check(later, "mrule").fix.endswith("ip mrule add iif r0 lookup 253 pref 99")


def test_a_default_table_template_whose_iif_is_steered_elsewhere_points_at_mrule() -> None:
    """The trial's IPv6 case: a (*,G) template of table 254 stops learning after an
    `ip -6 mrule add iif r0 lookup 200`; learned pointed at mc_forwarding and rp_filter."""
    intent = dataclasses.replace(
        TEMPLATE, family=6, source="2001:db8::2", group="ff3e::1", table=254
    )
    intent = dataclasses.replace(intent, template=("*", "ff3e::/16"))
    facts = with_rules(
        MRule(100, "lookup", 200, iif="r0"),
        MRule(32767, "lookup", 254),
        facts=dataclasses.replace(HEALTHY, family=6, intent=intent, counts=None),
    )
    learned = check(facts, "learned")
    assert learned.status == "failed"
    assert learned.fix == (
        "see the mrule check below: only packets the multicast rules send to table 254 teach"
        " its templates"
    )
    mrule = check(facts, "mrule")
    assert mrule.status == "failed"
    assert mrule.fix.startswith(
        "declare the template in table 200, where that traffic goes: mfcctl mfc add --table 200"
        " --group ff3e::/16 --iif r0 --oifs r1,r2, and delete this one; or send r0's traffic"
        " to table 254: ip -6 mrule add iif r0 lookup 254 pref 99"
    )


def test_a_default_table_route_some_of_whose_packets_a_mark_steers_elsewhere_is_unknown() -> None:
    facts = with_rules(
        MRule(10, "lookup", 100, iif="r0", fwmark=MARK1), DEFAULT_RULE4, facts=HEALTHY
    )
    c = check(facts, "mrule")
    assert c.status == "unknown"
    assert "packets with no mark go to table 253" in c.detail


def test_a_missing_mrule_fails_with_the_rule_to_add() -> None:
    """The user trial's case: arrival, TTL and rp_filter fine, no rule to table 100."""
    facts = dataclasses.replace(with_rules(DEFAULT_RULE4), counts=Counts(2.0, 0, 0, 0))
    checks = diagnosis.checklist(facts)
    names = [c.check for c in checks]
    assert names.index("mc_forwarding") + 1 == names.index("mrule") < names.index("arrival")
    c = check(facts, "mrule")
    assert c.status == "failed"
    assert "goes to table 253 (rule 32767: from all lookup 253), not to the route's table 100" in (
        c.detail
    )
    assert c.fix == "ip mrule add iif r0 lookup 100 pref 32766"
    assert check(facts, "counted").fix == "see the checks that failed above"


def test_an_mrule_for_the_iif_passes() -> None:
    facts = with_rules(MRule(100, "lookup", 100, iif="r0"), DEFAULT_RULE4)
    c = check(facts, "mrule")
    assert (c.status, c.detail) == (
        "passed",
        "rule 100: iif r0 lookup 100 sends what arrives on r0 to table 100",
    )
    assert diagnosis.verdict(diagnosis.checklist(facts)) == "ok"


def test_ipv6_says_ip_minus_6() -> None:
    intent = dataclasses.replace(INTENT, family=6, table=100)
    facts = with_rules(
        MRule(32767, "lookup", 254), facts=dataclasses.replace(IN_100, intent=intent)
    )
    assert check(facts, "mrule").fix == "ip -6 mrule add iif r0 lookup 100 pref 32766"


def test_unreadable_rules_are_unknown() -> None:
    assert check(IN_100, "mrule").status == "unknown"
    facts = dataclasses.replace(IN_100, rules=Rules((), "dump failed: Operation not supported"))
    c = check(facts, "mrule")
    assert c.status == "unknown" and "Operation not supported" in c.detail


MARK1 = (1, 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("rules", "decides"),
    [
        # Another interface's rule does not match; the default rule decides.
        ((MRule(10, "lookup", 100, iif="r9"), DEFAULT_RULE4), 32767),
        # Priority order, not the list's.
        ((DEFAULT_RULE4, MRule(10, "lookup", 100, iif="r0")), 10),
        # `not iif r9` matches r0; `not iif r0` does not.
        (
            (
                MRule(5, "lookup", 7, iif="r0", invert=True),
                MRule(6, "lookup", 100, iif="r9", invert=True),
            ),
            6,
        ),
        # An oif, a detached iif, a uid range without 0...: matches no arriving packet.
        ((MRule(5, "lookup", 7, iif="r0", unmatched=True), DEFAULT_RULE4), 32767),
        ((MRule(5, "lookup", 7, unmatched=True, invert=True), DEFAULT_RULE4), 5),
        # An fwmark: a packet with no mark matches `fwmark 0/0xff`, not `fwmark 1`...
        ((MRule(5, "lookup", 7, iif="r0", fwmark=MARK1), DEFAULT_RULE4), 32767),
        ((MRule(5, "lookup", 7, iif="r0", fwmark=(0, 0xFF)), DEFAULT_RULE4), 5),
        # ...and `not ... fwmark 1` (the whole match is inverted), not `not iif r9 fwmark 1`.
        ((MRule(5, "prohibit", iif="r0", fwmark=MARK1, invert=True), DEFAULT_RULE4), 5),
        ((MRule(5, "prohibit", iif="r9", fwmark=MARK1, invert=True), DEFAULT_RULE4), 5),
        # l3mdev: only for an interface in a VRF.
        ((MRule(5, "lookup", 0, l3mdev=True), DEFAULT_RULE4), 32767),
        # nop falls through; goto jumps to its target priority and matches from there.
        (
            (
                MRule(1, "nop"),
                MRule(2, "goto", goto=50),
                MRule(3, "lookup", 7),
                MRule(50, "lookup", 100),
            ),
            50,
        ),
        # A goto with no rule at its target falls through.
        ((MRule(2, "goto", goto=40), MRule(3, "lookup", 100)), 3),
        # A terminal action decides (and drops).
        ((MRule(4, "unreachable", iif="r0"), DEFAULT_RULE4), 4),
        # A lookup of a table that does not exist (77) falls through.
        ((MRule(5, "lookup", 77, iif="r0"), DEFAULT_RULE4), 32767),
        ((), None),
    ],
)
def test_the_deciding_rule_is_found_as_the_kernel_walks_them(
    rules: tuple[MRule, ...], decides: int | None
) -> None:
    rule = diagnosis.walk_rules(rules, "r0", frozenset({77})).decides
    assert (None if rule is None else rule.priority) == decides


def test_a_rule_that_drops_or_no_rule_at_all_fails() -> None:
    c = check(with_rules(MRule(4, "unreachable", iif="r0"), DEFAULT_RULE4), "mrule")
    assert (
        c.status == "failed" and c.detail == "rule 4: iif r0 unreachable drops what arrives on r0"
    )
    assert c.fix == "ip mrule add iif r0 lookup 100 pref 3"
    c = check(with_rules(), "mrule")
    assert "no multicast rule (ip mrule) matches" in c.detail
    assert c.fix == "ip mrule add iif r0 lookup 100 pref 100"
    c = check(with_rules(MRule(0, "lookup", 253)), "mrule")
    assert c.fix.startswith("ip mrule del pref 0")


def test_a_lookup_of_a_table_that_does_not_exist_is_passed_over() -> None:
    """The kernel tries the next rule (ipmr_rule_action: -EAGAIN); the detail says so,
    since the rule takes the traffic as soon as something creates its table."""
    rules = (MRule(50, "lookup", 77, iif="r0"), MRule(60, "lookup", 100, iif="r0"))
    c = check(with_rules(*rules, DEFAULT_RULE4, missing=frozenset({77})), "mrule")
    assert (c.status, c.detail) == (
        "passed",
        "rule 60: iif r0 lookup 100 sends what arrives on r0 to table 100; rule 50: iif r0"
        " lookup 77 is passed over while table 77 does not exist",
    )
    # Table 77 exists: rule 50 decides.
    c = check(with_rules(*rules, DEFAULT_RULE4), "mrule")
    assert c.status == "failed"
    assert "goes to table 77 (rule 50: iif r0 lookup 77), not to the route's table 100" in c.detail
    assert c.fix.startswith("declare the route in table 77, where that traffic goes:")
    assert c.fix.endswith(
        "; or send r0's traffic to table 100: ip mrule add iif r0 lookup 100 pref 49"
    )
    # Passed over and still not reaching table 100.
    c = check(with_rules(rules[0], DEFAULT_RULE4, missing=frozenset({77})), "mrule")
    assert (c.status, c.fix) == ("failed", "ip mrule add iif r0 lookup 100 pref 32766")
    assert c.detail.endswith(
        "; rule 50: iif r0 lookup 77 is passed over while table 77 does not exist"
    )


def test_the_routes_own_table_counts_as_there() -> None:
    """Before mfcd installs the route (pending), its table may not exist yet."""
    facts = with_rules(MRule(60, "lookup", 100, iif="r0"), DEFAULT_RULE4, missing=frozenset({100}))
    assert check(facts, "mrule").status == "passed"


@pytest.mark.parametrize(
    ("first", "detail"),
    [
        # Marked packets go elsewhere; unmarked ones to table 100.
        (
            MRule(50, "lookup", 77, iif="r0", fwmark=MARK1),
            "the outcome depends on the packets' firewall mark: packets with no mark go to table"
            " 100 (rule 60: iif r0 lookup 100), but those rule 50: iif r0 fwmark 0x1 lookup 77"
            " matches go to table 77",
        ),
        # A packet with no mark matches `fwmark 0/0xff`; a marked one goes on to rule 60.
        (
            MRule(50, "prohibit", iif="r0", fwmark=(0, 0xFF)),
            "the outcome depends on the packets' firewall mark: packets with no mark are dropped"
            " (rule 50: iif r0 fwmark 0x0/0xff prohibit), but those rule 50: iif r0 fwmark"
            " 0x0/0xff prohibit does not match go to table 100 (rule 60: iif r0 lookup 100)",
        ),
        (
            MRule(50, "lookup", 0, l3mdev=True),
            "the outcome depends on whether r0 is in a VRF: if r0 is in no VRF, packets go to"
            " table 100 (rule 60: iif r0 lookup 100), but those rule 50: from all lookup"
            " [l3mdev-table] matches go to the table of the interface's VRF",
        ),
    ],
)
def test_a_rule_that_matches_some_packets_makes_the_outcome_depend_on_it(
    first: MRule, detail: str
) -> None:
    c = check(with_rules(first, MRule(60, "lookup", 100, iif="r0"), DEFAULT_RULE4), "mrule")
    assert (c.status, c.detail, c.fix) == ("unknown", detail, "")


def test_a_mark_that_leads_to_the_table_while_the_others_miss_it() -> None:
    c = check(with_rules(MRule(50, "lookup", 100, iif="r0", fwmark=MARK1), DEFAULT_RULE4), "mrule")
    assert (c.status, c.detail) == (
        "unknown",
        "the outcome depends on the packets' firewall mark: packets with no mark go to table"
        " 253 (rule 32767: from all lookup 253), not to the route's table 100, but those rule"
        " 50: iif r0 fwmark 0x1 lookup 100 matches go to table 100",
    )


@pytest.mark.parametrize(
    "first",
    [
        # Marked packets go to the same table.
        MRule(50, "lookup", 100, iif="r0", fwmark=MARK1),
        # A table that does not exist: marked packets go on too.
        MRule(50, "lookup", 77, iif="r0", fwmark=MARK1),
        MRule(50, "nop", iif="r0", fwmark=MARK1),
        # Another interface's.
        MRule(50, "lookup", 7, iif="r9", fwmark=MARK1),
    ],
)
def test_a_rule_that_matches_some_packets_but_changes_nothing_passes(first: MRule) -> None:
    facts = with_rules(
        first, MRule(60, "lookup", 100, iif="r0"), DEFAULT_RULE4, missing=frozenset({77})
    )
    assert check(facts, "mrule").status == "passed"


def test_forks_follow_every_way_a_packet_can_go() -> None:
    """A mark sends some packets by a goto past the rule to table 100; a second mark drops
    some of the others."""
    rules = (
        MRule(10, "goto", iif="r0", goto=30, fwmark=MARK1),
        MRule(20, "lookup", 100, iif="r0"),
        MRule(30, "blackhole", fwmark=(2, 0xFFFFFFFF)),
        MRule(40, "lookup", 253),
    )
    walk = diagnosis.walk_rules(rules, "r0")
    assert walk.decides == rules[1]
    assert [(f.rule.priority, f.taken, f.others) for f in walk.forks] == [
        (10, False, frozenset({rules[2], rules[3]}))
    ]
    c = check(with_rules(*rules), "mrule")
    assert c.status == "unknown"
    assert c.detail.endswith(
        "but those rule 10: iif r0 fwmark 0x1 goto 30 matches are dropped"
        " (rule 30: fwmark 0x2 blackhole)"
    )


def test_nothing_counted_with_no_failure_above_does_not_point_above() -> None:
    """The trial's confusion: `counted` failed with "see the checks that failed above"
    while none had."""
    facts = dataclasses.replace(HEALTHY, counts=Counts(2.0, 0, 0, 0), sent={"r1": 0, "r2": 0})
    checks = diagnosis.checklist(facts)
    counted = check(facts, "counted")
    assert [c.check for c in checks if c.status == "failed"] == ["counted", "sent"]
    assert (
        counted.fix and "above" in counted.fix and "see the checks that failed" not in counted.fix
    )
    assert "see the checks that failed" not in check(facts, "sent").fix


def test_nothing_counted_with_only_unknowns_above_names_them() -> None:
    facts = dataclasses.replace(HEALTHY, counts=Counts(2.0, 0, 0, 0), sample=None)
    fix = check(facts, "counted").fix
    assert fix == "no check above failed; see those that could not tell: arrival, ttl"


@pytest.mark.parametrize(("vrf", "decides"), [(False, 60), (True, 50), (None, 60)])
def test_an_l3mdev_rule_decides_once_it_is_known_whether_the_interface_is_in_a_vrf(
    vrf: bool | None, decides: int
) -> None:
    """The rule a VRF adds (`pref 1000 l3mdev`) matches only what arrives in a VRF: known,
    it matches all or nothing, and no fork is left; unknown, the walk follows a packet in no
    VRF and notes the rule as a fork."""
    rules = (MRule(50, "lookup", 0, l3mdev=True), MRule(60, "lookup", 100, iif="r0"))
    walk = diagnosis.walk_rules(rules, "r0", frozenset(), vrf)
    assert walk.decides is not None and walk.decides.priority == decides
    assert bool(walk.forks) == (vrf is None)
    members = None if vrf is None else frozenset({"r0"} if vrf else {"r9"})
    facts = dataclasses.replace(IN_100, rules=Rules(rules, in_vrf=members))
    c = check(facts, "mrule")
    assert c.status == {False: "passed", True: "failed", None: "unknown"}[vrf]


# --- the rules' warning on a change (trial 14 F6) ---------------------------------------------

STEERED_R1 = Rules((MRule(0, "lookup", 100, iif="r1"), DEFAULT_RULE4))


def test_a_route_in_a_table_no_rule_reaches_is_warned_of_naming_where_its_iif_goes() -> None:
    """`--table main` (254) for IPv4, where nothing goes; and a default-table route on an
    iif an mrule steers elsewhere: installed, forwarding nothing, said nowhere."""
    names = {100: "studio", 254: "main"}
    assert diagnosis.unreached(STEERED_R1, 4, 254, "r1", names) == (
        "no multicast rule sends r1's traffic to IPv4 table 254 (main): r1 goes to table"
        " 100 (studio) (rule 0: iif r1 lookup 100); IPv4's default table is 253 (`default`)"
    )
    assert diagnosis.unreached(STEERED_R1, 4, 254, "r0") == (
        "no multicast rule sends r0's traffic to IPv4 table 254: r0 goes to the default table"
        " (rule 32767: from all lookup 253); IPv4's default table is 253 (`default`)"
    )
    assert diagnosis.unreached(STEERED_R1, 4, 253, "r1") == (
        "no multicast rule sends r1's traffic to IPv4's default table 253: r1 goes to table 100"
        " (rule 0: iif r1 lookup 100)"
    )
    six = Rules((MRule(0, "lookup", 100, iif="r1"), MRule(32767, "lookup", 254)))
    assert diagnosis.unreached(six, 6, 253, "r0", {253: "default"}) == (
        "no multicast rule sends r0's traffic to IPv6 table 253 (default): r0 goes to the"
        " default table (rule 32767: from all lookup 254); IPv6's default table is 254"
        " (`default`)"
    )
    dropped = Rules((MRule(0, "lookup", 100, iif="r1"),))
    assert diagnosis.unreached(dropped, 4, 253, "r0") == (
        "no multicast rule sends r0's traffic to IPv4's default table 253: no rule matches r0,"
        " the kernel drops its traffic"
    )


def test_no_warning_where_the_rules_reach_the_table_or_cannot_tell() -> None:
    for table, iif in ((100, "r1"), (253, "r0")):
        assert diagnosis.unreached(STEERED_R1, 4, table, iif) == ""
    # A rule to a table that does not exist yet: the route's own table will.
    missing = dataclasses.replace(STEERED_R1, missing=frozenset({100}))
    assert diagnosis.unreached(missing, 4, 100, "r1") == ""
    assert "goes to the default table" in diagnosis.unreached(missing, 4, 254, "r1")
    assert diagnosis.unreached(Rules(error="dump failed: EPERM"), 4, 254, "r1") == ""
    assert diagnosis.unreached(Rules(()), 4, 254, "r1") == ""  # (no rules read at all)
    assert diagnosis.unreached(STEERED_R1, 4, 254, "vlan*") == ""  # (a wildcard: each iif)
    marked = Rules((MRule(0, "lookup", 254, fwmark=(1, 0xFF)), DEFAULT_RULE4))
    assert diagnosis.unreached(marked, 4, 254, "r1") == ""  # (some packets: marked ones)
    vrf = Rules((MRule(0, "lookup", 0, l3mdev=True), DEFAULT_RULE4), in_vrf=frozenset({"r1"}))
    assert diagnosis.unreached(vrf, 4, 254, "r1") == ""


def test_the_warnings_of_a_change_read_each_familys_rules_once_and_say_each_table_iif_once() -> (
    None
):
    read: list[int] = []

    def rules_of(family: int) -> Rules:
        read.append(family)
        return STEERED_R1

    wanted = [(4, 254, "r1"), (4, 254, "r1"), (4, 100, "r1"), (4, 253, "r1")]
    wanted += [(4, 254 + n, "r0") for n in range(10)]
    where = {(4, 254, "r1"): "a.conf:3"}
    warnings = diagnosis.unreached_warnings(wanted, rules_of, where=where)
    assert read == [4]
    assert warnings[0].startswith("no multicast rule sends r1's traffic to IPv4's default table")
    assert warnings[2].startswith(
        "a.conf:3: no multicast rule sends r1's traffic to IPv4 table 254"
    )
    assert warnings[-1] == "and 7 more (table, iif) like these: mfcctl diagnose explains each"
    assert len(warnings) == diagnosis.MOST_UNREACHED + 1
    assert diagnosis.unreached_warnings([(4, 254, "r1")], rules_of, where=where) == [
        "a.conf:3: " + diagnosis.unreached(STEERED_R1, 4, 254, "r1")
    ]


def test_a_route_of_another_table_whose_iif_a_rule_steers_elsewhere_is_offered_that_table() -> None:
    """A `--table main` route on r0, which `iif r0 lookup 100` (pref 0) sends to table 100:
    the only fix was `ip mrule del pref 0`, which starves table 100's routes and templates
    (trial 14 F7). Declaring the route where the traffic goes comes first, and the fix that
    takes the rule away says what it feeds."""
    in_main = dataclasses.replace(HEALTHY, intent=dataclasses.replace(INTENT, table=254))
    facts = dataclasses.replace(
        with_rules(STEERED, DEFAULT_RULE4, facts=in_main), fed={100: (2, 1)}
    )
    c = check(facts, "mrule")
    assert c.status == "failed"
    assert c.fix == (
        "declare the route in table 100, where that traffic goes: mfcctl mfc add --table 100"
        f" --source {SOURCE} --group {GROUP} --iif r0 --oifs r1,r2, and delete this one; or send"
        " r0's traffic to table 254: ip mrule del pref 0 (it comes before any other), then"
        " ip mrule add iif r0 lookup 254 (careful: rule 0 feeds table 100, where r0 carries 2"
        " routes and 1 template of mfcd's: they would get none of r0's traffic)"
    )
    # A table another router owns (smcrouted -t 100): not offered; the rule's fix stays.
    owned = dataclasses.replace(facts, owned=frozenset({100}), fed={})
    assert check(owned, "mrule").fix == (
        "ip mrule del pref 0 (it comes before any other), then ip mrule add iif r0 lookup 254"
    )
    # Nor for a default-table intent, nor where no route is (the route check's fix).
    steered = dataclasses.replace(
        with_rules(STEERED, DEFAULT_RULE4, facts=HEALTHY), owned=frozenset({100})
    )
    assert not check(steered, "mrule").fix.startswith("declare")
    nothing = dataclasses.replace(steered, intent=None)
    assert "--table 100" not in check(nothing, "route").fix
    assert "--table 100" in check(dataclasses.replace(nothing, owned=frozenset()), "route").fix


# --- the kernel's entry beside mfcd's (drift another program made) ------------------------------

OURS = ("r0", ("r1", "r2"))


def with_kernel(facts: Facts, **kernel: object) -> Facts:
    entry = diagnosis.KernelEntry(**{"had": OURS, "wanted": OURS, **kernel})  # type: ignore[arg-type]
    return dataclasses.replace(facts, kernel=entry)


def test_the_kernels_entry_agreeing_with_mfcds_passes() -> None:
    c = check(with_kernel(HEALTHY), "kernel_entry")
    assert (c.status, c.detail) == ("passed", "the kernel's entry is mfcd's (iif r0 oifs r1,r2)")
    assert [c.check for c in diagnosis.checklist(with_kernel(HEALTHY))][:3] == [
        "route",
        "state",
        "kernel_entry",
    ]


@pytest.mark.parametrize(
    ("kernel", "words"),
    [
        (
            {"had": ("r0", ("r1",))},
            "the kernel's entry for (198.18.0.2, 239.1.1.1) differs from mfcd's: the kernel has"
            " iif r0 oifs r1, mfcd wants iif r0 oifs r1,r2",
        ),
        ({"had": None}, "the kernel holds no entry for (198.18.0.2, 239.1.1.1) in the default"),
        ({"missing_vifs": ("r2",)}, "the kernel lacks the VIF of r2 in the default table (253)"),
        ({"static": True}, "another program wrote the kernel's entry"),
    ],
)
def test_drift_in_the_kernel_is_named_with_sync_as_the_fix(
    kernel: dict[str, object], words: str
) -> None:
    facts = with_kernel(dataclasses.replace(HEALTHY, sent={"r1": 190, "r2": 0}), **kernel)
    c = check(facts, "kernel_entry")
    assert c.status == "failed" and c.detail.startswith(words), c.detail
    assert (
        c.fix == "mfcctl -n sync shows what differs; mfcctl sync makes the kernel match mfcd again"
    )
    assert check(facts, "sent").fix.startswith("see the kernel_entry check")


def test_a_foreign_entry_blocking_a_template_is_named() -> None:
    facts = dataclasses.replace(HEALTHY, intent=TEMPLATE, counts=None)
    facts = with_kernel(facts, had=("r0", ("r4",)), wanted=None)
    c = check(facts, "kernel_entry")
    assert c.status == "failed"
    assert "that mfcd did not add (iif r0 oifs r4)" in c.detail
    learned = check(facts, "learned")
    assert "the kernel holds one mfcd did not add" in learned.detail
    assert learned.fix.startswith("see the kernel_entry check above: mfcctl -n sync")


def test_nothing_arrives_on_an_iif_already_joined_does_not_ask_for_a_join() -> None:
    facts = dataclasses.replace(
        HEALTHY, sample=Sample(2.0), counts=Counts(2.0, 0, 0, 0), joined=True
    )
    c = check(facts, "arrival")
    assert c.status == "failed"
    assert "a join is needed" not in c.fix
    assert "mfcd already joined it there" in c.fix
