"""`mfcctl diagnose`'s verdicts: facts about one flow in, a checklist out (pure, no I/O).

Theory of operation
-------------------
A multicast packet from S to G is forwarded when every step of its path works: a route
(an intent) matches it and is installed; its iif exists, is up and has carrier, and the
kernel hands the interface's multicast to the routing table (mc_forwarding); the packets
reach the router on that iif (not on another interface, not at all when nobody asked the
upstream for them); the multicast routing rules (`ip mrule`) send what arrives on the iif
to the route's table (a table other than the family's default needs a rule; the default
table loses the traffic to a rule that sends it elsewhere); rp_filter lets the source
in; their TTL is above each oif's threshold; the kernel counts them on the route; and
each oif is up and forwards onto its link (a snooping switch behind a bridge oif with no
querier may prune the stream).

Without a table, the flow is looked for in every table: each route or template that
matches it, in any table, gets its checklist.

probes.py gathers the facts (model state, /proc, /sys, the multicast rules, counters
sampled over an interval, a packet-socket sample of the flow on every interface);
`checklist()` walks the path in order and says for each step passed, failed or unknown,
and for each failure one line saying what to do. Nothing here reads the machine, so every
verdict is unit-tested. views.py shows the checklist and the intent it is of (the result
of `diagnose`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mfcd import templates as tpl
from mfcd.model import DEFAULT_TABLE, RouteKey, Router
from mfcd.netlink import MRule
from mfcd.templates import TemplateKey

Status = Literal["passed", "failed", "unknown"]


@dataclass(frozen=True, slots=True)
class Check:
    """One item of the checklist: `check` is a stable name, `fix` is set on failures (and
    on an unknown that has advice)."""

    check: str
    status: Status
    detail: str
    fix: str = ""
    interface: str | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """What to diagnose: the flow from `source` (None: any) to `group` in `table` (a kernel
    table number; None: in whichever tables hold a route or template for it), sampled for
    `seconds`."""

    family: int
    group: str
    source: str | None
    table: int | None
    seconds: float


@dataclass(frozen=True, slots=True)
class Intent:
    """A route or a template that matches the flow, as the model holds it.

    For a template (kind "template"), `source` and `group` are the flow's: those of the
    (S,G) entry learned from it (`learned`), or of the query when none is learned yet
    (without a source: the template's source prefix); `template` holds its prefixes, and
    `state` is the learned entry's, else the template's (installed: it holds its VIFs)."""

    kind: str  # "route" or "template"
    family: int
    source: str
    group: str
    table: int
    iif: str
    oifs: tuple[str, ...]
    state: str  # installed | pending | degraded
    reason: str
    origin: str = "api"
    thresholds: dict[str, int] = field(default_factory=dict)  # oif -> TTL threshold
    template: tuple[str, str] | None = None  # a template's source and group prefixes
    learned: bool = False  # a template's: an (S,G) entry is learned from it for the flow

    @property
    def entry(self) -> bool:
        """Whether the kernel should hold an (S,G) entry for it (counters to read)."""
        return self.template is None or self.learned


def matching_intents(router: Router, query: Query) -> list[Intent]:
    """The intents that match the query's packets, in the query's table or, without one,
    in each table (the default first): the table's exact routes (and entries learned from
    templates, shown as their template), else the templates that would teach an entry,
    matched as the learner matches (templates.Index: the most specific template of each
    interface; without a source, of those whose group prefix holds the group)."""
    found = []
    routes = _matching_routes(router, query)
    for number in _tables(router, query, routes):
        keys = [k for k in routes if k[3] == number]
        if keys:
            found += [_intent_of(router, key) for key in keys]
        else:
            templates = _matching_templates(router, query, number)
            found += [_template_intent(router, query, t) for t in templates]
    return found


def _matching_routes(router: Router, query: Query) -> list[RouteKey]:
    family, source, group, number = query.family, query.source, query.group, query.table
    if source is not None and number is not None:
        key: RouteKey = (family, source, group, number)
        return [key] if key in router.routes else []
    # A scan, but diagnose runs rarely and by hand.
    return sorted(
        k
        for k in router.routes
        if k[0] == family
        and k[2] == group
        and (source is None or k[1] == source)
        and (number is None or k[3] == number)
    )


def _tables(router: Router, query: Query, routes: Sequence[RouteKey]) -> list[int]:
    """The tables to look in: the query's, else those holding a matching route or any
    template of the family (the default table first)."""
    if query.table is not None:
        return [query.table]
    numbers = {k[3] for k in routes} | {t[3] for t in router.templates if t[0] == query.family}
    default = DEFAULT_TABLE[query.family]
    return sorted(numbers, key=lambda n: (n != default, n))


def _matching_templates(router: Router, query: Query, table: int) -> list[TemplateKey]:
    family, source, group = query.family, query.source, query.group
    iifs = sorted({t[4] for t in router.templates if t[0] == family and t[3] == table})
    if source is not None:
        index = router.template_index()
        found = (index.match(family, table, iif, source, group) for iif in iifs)
        return [t for t in found if t is not None]
    best = []
    number = tpl.address_number(family, group)
    for iif in iifs:
        holding = [
            t
            for t in router.templates
            if t[0] == family
            and t[3] == table
            and t[4] == iif
            and tpl.contains(tpl.prefix_of(t[2], family), number)
        ]
        if holding:
            best.append(max(holding, key=tpl.specificity))
    return best


def _thresholds(router: Router, family: int, table: int, oifs: tuple[str, ...]) -> dict[str, int]:
    # IPv6 has no per-MIF threshold in its MFC (mf6cctl has only an oif set): 1 each.
    return {oif: router.threshold(oif, table) if family == 4 else 1 for oif in oifs}


def _intent_of(router: Router, key: RouteKey) -> Intent:
    ports = router.routes[key]
    status = router.status(key)
    template = router.learned.get(key)
    return Intent(
        "route" if template is None else "template",
        key[0],
        key[1],
        key[2],
        key[3],
        ports.iif,
        ports.oifs,
        status.state,
        status.reason,
        router.origin(key),
        _thresholds(router, key[0], key[3], ports.oifs),
        None if template is None else (template[1], template[2]),
        template is not None,
    )


def _template_intent(router: Router, query: Query, key: TemplateKey) -> Intent:
    """A template no entry is learned from for the flow yet."""
    ports = router.templates[key]
    status = router.status(key)
    return Intent(
        "template",
        query.family,
        query.source if query.source is not None else key[1],
        query.group,
        key[3],
        ports.iif,
        ports.oifs,
        status.state,
        status.reason,
        router.template_origin(key),
        _thresholds(router, query.family, key[3], ports.oifs),
        (key[1], key[2]),
    )


@dataclass(frozen=True, slots=True)
class Interface:
    """What the machine says of one interface; None: could not be read."""

    name: str
    exists: bool
    up: bool | None = None  # IFF_UP
    running: bool | None = None  # IFF_RUNNING: up with carrier
    mc_forwarding: bool | None = None
    rp_filter: int | None = None  # effective: max(all, this interface); IPv4 only
    snooping: bool | None = None  # None: not a bridge
    querier: bool | None = None  # the bridge's own IGMP/MLD querier


@dataclass(frozen=True, slots=True)
class Sample:
    """The flow's packets a packet socket saw in `seconds`, by the interface they arrived
    on (forwarded copies leaving the router are not counted); `error` when it could not
    sample (then the rest is empty)."""

    seconds: float
    arrivals: dict[str, int] = field(default_factory=dict)
    ttls: dict[str, tuple[int, ...]] = field(default_factory=dict)  # interface -> TTLs seen
    error: str = ""


@dataclass(frozen=True, slots=True)
class Counts:
    """The route's kernel counters at the start and end of the sampling interval."""

    seconds: float
    packets: int  # counted during the interval
    wrong_if: int
    total_packets: int


@dataclass(frozen=True, slots=True)
class RouteBack:
    """The unicast route to the source: the interface it leaves by, None if there is no
    route; `error` when the lookup failed."""

    interface: str | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class Rules:
    """The family's multicast routing rules in the kernel's order, and the tables they look
    up that the kernel does not have; `error` when they could not be read (then `rules` is
    empty)."""

    rules: tuple[MRule, ...] = ()
    error: str = ""
    missing: frozenset[int] = frozenset()
    # The interfaces in a VRF (its devices and the VRF devices themselves), which an l3mdev
    # rule matches; None: not known (an l3mdev rule then makes the walk depend on it).
    in_vrf: frozenset[str] | None = None

    def walk(self, iif: str, missing: frozenset[int] | None = None) -> RuleWalk:
        """walk_rules for what arrives on `iif` (`missing`: the tables taken as missing)."""
        vrf = None if self.in_vrf is None else iif in self.in_vrf
        return walk_rules(self.rules, iif, self.missing if missing is None else missing, vrf)


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the checklist of one flow looks at."""

    family: int
    source: str | None
    group: str
    intent: Intent | None
    interfaces: dict[str, Interface]
    counts: Counts | None  # None: the route has no kernel entry (or no route)
    sample: Sample | None
    route_back: RouteBack | None  # None: not looked up (IPv6, or no source)
    # Packets that left by each oif's VIF during the interval (every route on the VIF
    # counts); an oif without a VIF is absent. None: not read.
    sent: dict[str, int] | None = None
    # The multicast routing rules; None: not read.
    rules: Rules | None = None
    # With no intent and a table asked for: the other tables holding a route or template
    # for the flow.
    elsewhere: tuple[int, ...] = ()
    # Config files a start left out for an error: they may declare the flow's route.
    left_out: tuple[str, ...] = ()


def checklist(facts: Facts) -> list[Check]:
    """The path of the flow, step by step."""
    intent = facts.intent
    checks = [_route(facts)]
    if intent is None:
        return checks
    checks.append(_state(intent))
    mrule = _mrule_check(facts, intent)
    if intent.template is not None:
        checks.append(_learned(facts, intent, mrule))
    checks += _interface_checks(facts, "iif", [intent.iif])
    checks.append(_mc_forwarding(facts, intent))
    if mrule is not None:
        checks.append(mrule)
    checks.append(_arrival(facts, intent))
    checks.append(_wrong_if(facts, intent))
    checks.append(_rp_filter(facts, intent))
    checks.append(_ttl(facts, intent))
    # Whether a failure on the way in explains that nothing is counted (nor sent).
    explained = _why_nothing(checks)
    checks.append(_counted(facts, intent, explained))
    checks += _interface_checks(facts, "oif", intent.oifs)
    checks.append(_sent(facts, intent, explained))
    checks.append(_snooping(facts, intent))
    return checks


def verdict(checks: Iterable[Check]) -> str:
    """ "failed" if any check failed, else "unknown" if any could not tell, else "ok"."""
    statuses = {c.status for c in checks}
    if "failed" in statuses:
        return "failed"
    return "unknown" if "unknown" in statuses else "ok"


# --- the checks, in the order of the path ---------------------------------------------------------


def _flow(facts: Facts) -> str:
    return f"({facts.source or '*'}, {facts.group})"


def _route(facts: Facts) -> Check:
    intent = facts.intent
    if intent is not None:
        return Check("route", "passed", f"{intent.kind} {_intent_text(intent)} matches")
    iif = "IIF"
    if facts.sample is not None and facts.sample.arrivals:
        iif = _busiest(facts.sample.arrivals)
    source = facts.source or "SOURCE"
    if facts.elsewhere:
        held = " and ".join(_table_name(facts.family, n) for n in facts.elsewhere)
        return Check(
            "route",
            "failed",
            f"no route or template matches {_flow(facts)} in the table asked for",
            f"{held} {'has one' if len(facts.elsewhere) == 1 else 'have one'}: diagnose"
            f" with --table {facts.elsewhere[0]}, or without --table (every table)",
        )
    table, why = _steered(facts, iif), "; --table N for another table"
    if table is not None:
        why = f"; the multicast rules send what arrives on {iif} to table {table}"
    option = "" if table is None else f"--table {table} "
    fix = (
        f"add one: mfcctl mfc add {option}--source {source} --group {facts.group} --iif {iif}"
        f" --oifs OIF[,OIF...] (without --source: a template for any source{why})"
    )
    if facts.left_out:  # the likelier cause: the route is declared where mfcd did not read
        files = ", ".join(facts.left_out)
        fix = (
            f"if the config files declare it: mfcd left out {files} at start for an error"
            f" (see the log); fix it and run mfcctl reload. Else {fix}"
        )
    return Check("route", "failed", f"no route or template matches {_flow(facts)}", fix)


def _steered(facts: Facts, iif: str) -> int | None:
    """The table other than the default that the multicast rules send what arrives on
    `iif` to (None: the default table, or not known)."""
    rules = facts.rules
    if rules is None or rules.error:
        return None
    rule = rules.walk(iif).decides
    default = DEFAULT_TABLE[facts.family]
    if rule is None or rule.action != "lookup" or rule.l3mdev or rule.table == default:
        return None
    return rule.table


def _table_name(family: int, number: int) -> str:
    return f"the default table ({number})" if number == DEFAULT_TABLE[family] else f"table {number}"


def _intent_text(intent: Intent) -> str:
    source, group = intent.template or (intent.source, intent.group)
    return f"{source} -> {group} iif {intent.iif} oifs {','.join(intent.oifs)}" + (
        "" if intent.table == DEFAULT_TABLE[intent.family] else f" table {intent.table}"
    )


def _learned(facts: Facts, intent: Intent, mrule: Check | None) -> Check:
    """A template's: whether an (S,G) entry is learned from it for the flow (`mrule`: the
    mrule check below, if any)."""
    if intent.learned:
        return Check("learned", "passed", f"an entry for {_flow(facts)} is learned from it")
    if intent.state != "installed":
        return Check("learned", "unknown", "nothing is learned while the template is not installed")
    sample = facts.sample
    arrived = sample.arrivals.get(intent.iif, 0) if sample is not None else 0
    detail = f"no entry for {_flow(facts)} is learned from the template yet"
    if arrived:
        fix = (
            "see the mc_forwarding and rp_filter checks below; past max_learned new flows are"
            " not learned (mfcctl show --stats)"
        )
        if mrule is not None and mrule.status != "passed":
            # The kernel's upcall for a packet comes from the table the rules chose.
            fix = (
                f"see the mrule check below: only packets the multicast rules send to table"
                f" {intent.table} teach its templates"
            )
        return Check(
            "learned",
            "failed",
            f"{detail}, although {arrived} packets arrived on {intent.iif}",
            fix,
        )
    return Check(
        "learned",
        "failed",
        f"{detail}: mfcd learns it from the flow's first packet on {intent.iif}",
        f"make the flow reach {intent.iif}: check that the sender sends; if the upstream"
        f" forwards {intent.group} only where asked, join it on {intent.iif} (mfcctl join);"
        " a sender behind another router needs a TTL of 2 or more",
    )


def _state(intent: Intent) -> Check:
    if intent.state == "installed" and not intent.entry:
        return Check("state", "passed", "installed: its interfaces have VIFs")
    if intent.state == "installed":
        return Check("state", "passed", "installed in the kernel")
    if intent.reason.startswith("waiting for "):
        names = intent.reason[len("waiting for ") :]
        fix = (
            f"create {names} (the route is installed the moment it appears), or fix the"
            " interface names: mfcctl mfc add ... with the right --iif/--oifs"
        )
        if intent.state == "degraded":
            fix = (
                f"create {names} (or re-create it, if it went away): the route's entry is in"
                " the kernel and is completed the moment it appears; or fix the interface"
                " names: mfcctl mfc add ... with the right --iif/--oifs"
            )
    elif "another multicast router" in intent.reason:
        fix = (
            "stop the multicast router that owns the table (`ss -w -a -p` names it), then"
            " run mfcctl sync; or declare the route in another table"
        )
    elif "VIF" in intent.reason:
        fix = "free a VIF: delete routes on interfaces you no longer need (mfcctl show)"
    else:
        fix = "fix what the kernel refused (see mfcd's log), then run mfcctl sync"
    return Check("state", "failed", f"{intent.state}: {intent.reason}", fix)


def _interface_checks(facts: Facts, role: str, names: Sequence[str]) -> list[Check]:
    return [_interface(role, facts.interfaces.get(n, Interface(n, False))) for n in names]


def _interface(role: str, link: Interface) -> Check:
    name = link.name
    if not link.exists:
        return Check(role, "failed", f"{name} does not exist", f"create {name}", name)
    if link.up is None:
        return Check(role, "unknown", f"cannot read the state of {name}", "", name)
    if not link.up:
        return Check(role, "failed", f"{name} is down", f"ip link set {name} up", name)
    if link.running is False:
        return Check(
            role,
            "failed",
            f"{name} is up but has no carrier",
            f"check {name}'s cable or peer (a veth's other end must be up too)",
            name,
        )
    return Check(role, "passed", f"{name} is up, with carrier", "", name)


def _mc_forwarding(facts: Facts, intent: Intent) -> Check:
    link = facts.interfaces.get(intent.iif)
    if link is None or link.mc_forwarding is None:
        return Check("mc_forwarding", "unknown", f"cannot read mc_forwarding of {intent.iif}")
    if link.mc_forwarding:
        return Check("mc_forwarding", "passed", f"mc_forwarding is on for {intent.iif}")
    if intent.state == "pending":
        fix = f"the kernel turns it on when mfcd installs the route and adds {intent.iif}'s VIF"
        fix += " (see state)"
        return Check("mc_forwarding", "failed", f"mc_forwarding is off for {intent.iif}", fix)
    return Check(
        "mc_forwarding",
        "failed",
        f"mc_forwarding is off for {intent.iif}: the kernel does not pass its multicast to"
        " the multicast routing table",
        "the kernel turns it on with the interface's VIF: run mfcctl sync (and check that no"
        " other program removed the VIF)",
    )


@dataclass(frozen=True, slots=True)
class Fork:
    """A rule on the walk that matches only some packets (by firewall mark, or the VRF of
    the interface): `taken` says whether a packet with no mark on an interface in no VRF
    matches it, `others` which rules can decide for the packets that go the other way
    (None: no rule, the kernel drops them)."""

    rule: MRule
    taken: bool
    others: frozenset[MRule | None]


@dataclass(frozen=True, slots=True)
class RuleWalk:
    """Where the multicast rules send a packet arriving on one interface (walk_rules)."""

    # The rule that decides for a packet with no firewall mark on an interface in no VRF
    # (a lookup, or an action that drops it); None: no rule does, the kernel drops it.
    decides: MRule | None
    # Lookups that matched on the way but were passed over: their table does not exist.
    skipped: tuple[MRule, ...] = ()
    # The rules on the way that decide differently for some packets.
    forks: tuple[Fork, ...] = ()


def walk_rules(
    rules: Sequence[MRule],
    iif: str,
    missing: frozenset[int] = frozenset(),
    vrf: bool | None = None,
) -> RuleWalk:
    """Where the multicast rules send what arrives on `iif`, as the kernel's
    fib_rules_lookup() walks them for ipmr/ip6mr; `missing`: tables that do not exist;
    `vrf`: whether `iif` is in a VRF (None: not known).

    In priority order (the dump's order among equal priorities); a rule matches when its
    iif (if any) is the interface, inverted by `not`; a goto jumps to the first rule of its
    target priority (later in the list) and is matched from there; a nop and a goto
    without target fall through, and so does a lookup of a table that does not exist
    (ipmr_rule_action() returns -EAGAIN: the kernel tries the next rule). The multicast
    rules do not look at from/to, tos, ipproto or ports (ipmr_rule_match() accepts every
    packet); a rule with an oif, tunnel id, uid range without uid 0 or a detached iif
    matches no arriving packet (MRule.unmatched). A rule with an fwmark or l3mdev matches
    some packets and not others: the walk follows a packet with no mark on an interface
    in no VRF, and notes each such rule on its way (a Fork) with the rules that can
    decide for the packets that go the other way. When `vrf` is known, an l3mdev rule
    matches every packet on `iif` or none (the interface is in a VRF or not).
    """
    ordered = sorted(rules, key=lambda r: r.priority)  # stable: keeps the dump's order
    count = len(ordered)
    # Which rules can decide from each position on, over every way a fork can go. A
    # step only goes forward, so filling it from the end needs no recursion.
    reach: list[frozenset[MRule | None]] = [frozenset({None})] * (count + 1)
    for index in reversed(range(count)):
        known = _match(ordered[index], iif, vrf)
        ways = (True, False) if known is None else (known,)
        reach[index] = frozenset().union(
            *(_reach(_step(ordered, index, taken, missing), reach) for taken in ways)
        )
    index = 0
    skipped: list[MRule] = []
    forks: list[Fork] = []
    while index < count:
        rule = ordered[index]
        taken = _plain_match(rule, iif, vrf)
        if _match(rule, iif, vrf) is None:
            other = _step(ordered, index, not taken, missing)
            forks.append(Fork(rule, taken, _reach(other, reach)))
        step = _step(ordered, index, taken, missing)
        if isinstance(step, MRule):
            return RuleWalk(step, tuple(skipped), tuple(forks))
        if taken and rule.action == "lookup":
            skipped.append(rule)
        index = step
    return RuleWalk(None, tuple(skipped), tuple(forks))


def _match(rule: MRule, iif: str, vrf: bool | None = None) -> bool | None:
    """Whether `rule` matches every packet arriving on `iif` (True) or none (False); None
    when it depends on the packet's firewall mark, or on the interface's VRF (`vrf`: whether
    it is in one, None: not known)."""
    if rule.unmatched or (rule.iif is not None and rule.iif != iif):
        return rule.invert
    if rule.l3mdev and vrf is False:
        return rule.invert  # (l3mdev matches only what arrives in a VRF)
    if rule.fwmark is None and (not rule.l3mdev or vrf):
        return not rule.invert
    return None


def _plain_match(rule: MRule, iif: str, vrf: bool | None = None) -> bool:
    """Whether `rule` matches a packet with no firewall mark (0) on `iif`, in a VRF if
    `vrf` says so (and in none if not known)."""
    known = _match(rule, iif, vrf)
    if known is not None:
        return known
    mark, mask = rule.fwmark or (0, 0)
    return (mark & mask == 0 and (not rule.l3mdev or bool(vrf))) != rule.invert


def _step(
    ordered: Sequence[MRule], index: int, taken: bool, missing: frozenset[int]
) -> int | MRule:
    """Where the walk goes from rule `index`, matched or not: the index of the next rule
    to match, or the rule that decides."""
    rule = ordered[index]
    if not taken or rule.action == "nop":
        return index + 1
    if rule.action == "goto":
        later = range(index + 1, len(ordered))
        target = next((i for i in later if ordered[i].priority == rule.goto), None)
        return index + 1 if target is None else target
    if rule.action == "lookup" and not rule.l3mdev and rule.table in missing:
        return index + 1
    return rule


def _reach(step: int | MRule, reach: Sequence[frozenset[MRule | None]]) -> frozenset[MRule | None]:
    return frozenset({step}) if isinstance(step, MRule) else reach[step]


def _rule_text(rule: MRule) -> str:
    if rule.l3mdev:
        what = "lookup [l3mdev-table]"
    elif rule.action == "lookup":
        what = f"lookup {rule.table}"
    elif rule.action == "goto":
        what = f"goto {rule.goto}"
    else:
        what = rule.action
    selectors = [] if rule.iif is None else [f"iif {rule.iif}"]
    if rule.fwmark is not None:
        mark, mask = rule.fwmark
        selectors.append(f"fwmark {mark:#x}" + ("" if mask == 0xFFFFFFFF else f"/{mask:#x}"))
    match = " ".join(selectors) or "from all"
    return f"{rule.priority}: {'not ' if rule.invert else ''}{match} {what}"


def _mrule_check(facts: Facts, intent: Intent) -> Check | None:
    """The mrule check, or None where it would only be noise: for the default table, when
    the rules send the iif's traffic there (the kernel's own rules do) or cannot be read.
    Another table needs a rule to get any traffic (shared/kernel-notes.md 2.4); the
    default table loses the iif's traffic to a rule that sends it elsewhere."""
    check = _mrule(facts, intent)
    if intent.table != DEFAULT_TABLE[intent.family] or check.status == "failed":
        return check
    read = facts.rules is not None and not facts.rules.error
    return check if check.status == "unknown" and read else None


def _mrule(facts: Facts, intent: Intent) -> Check:
    """Whether the multicast rules send the iif's traffic to the route's table."""
    rules, iif, table = facts.rules, intent.iif, intent.table
    ip = "ip mrule" if intent.family == 4 else "ip -6 mrule"
    if rules is None or rules.error:
        why = rules.error if rules is not None else "not read"
        return Check("mrule", "unknown", f"cannot read the multicast rules ({ip}): {why}")
    # The route's own table is there once mfcd installs the route, if it is not yet.
    walk = rules.walk(iif, rules.missing - {table})
    ok = _reaches(walk.decides, table)
    forks = [f for f in walk.forks if any(_reaches(d, table) != ok for d in f.others)]
    skipped = "".join(
        f"; rule {_rule_text(r)} is passed over while table {r.table} does not exist"
        for r in walk.skipped
    )
    if forks:
        return Check("mrule", "unknown", _depends(walk.decides, forks, iif, table) + skipped)
    rule = walk.decides
    if rule is not None and ok:
        detail = f"rule {_rule_text(rule)} sends what arrives on {iif} to table {table}"
        return Check("mrule", "passed", detail + skipped)
    # The new rule must come before the one that decides now (any rule before that one
    # does not match the iif); without one, any priority does.
    priority = 100 if rule is None else rule.priority - 1
    fix = f"{ip} add iif {iif} lookup {table} pref {priority}"
    if rule is not None and rule.priority == 0:
        fix = f"{ip} del pref 0 (it comes before any other), then {ip} add iif {iif} lookup {table}"
    if rule is None:
        detail = f"no multicast rule ({ip}) matches what arrives on {iif}: the kernel drops it"
    elif rule.action == "lookup":
        detail = (
            f"what arrives on {iif} goes to {_table_text(rule)} (rule {_rule_text(rule)}), not to"
            f" the route's table {table}"
        )
        if table == DEFAULT_TABLE[intent.family] and not rule.l3mdev:
            # The rule was most likely added on purpose: the route belongs in its table.
            fix = f"{_move(intent, rule.table)}; or send {iif}'s traffic to table {table}: {fix}"
    else:
        detail = f"rule {_rule_text(rule)} drops what arrives on {iif}"
    return Check("mrule", "failed", detail + skipped, fix)


def _move(intent: Intent, table: int) -> str:
    """The fix that declares the intent in `table` instead of its own."""
    source, group = intent.template or (intent.source, intent.group)
    option = "" if source == tpl.ANY else f"--source {source} "
    return (
        f"declare the {intent.kind} in table {table}, where that traffic goes: mfcctl mfc add"
        f" --table {table} {option}--group {group} --iif {intent.iif} --oifs"
        f" {','.join(intent.oifs)}, and delete this one"
    )


def _reaches(rule: MRule | None, table: int) -> bool:
    """Whether `rule`, deciding, sends the packet to `table`."""
    return rule is not None and rule.action == "lookup" and not rule.l3mdev and rule.table == table


def _table_text(rule: MRule) -> str:
    return "the table of the interface's VRF" if rule.l3mdev else f"table {rule.table}"


def _outcome(rule: MRule | None, cite: bool = True) -> str:
    """What becomes of packets `rule` decides for (None: no rule decides)."""
    if rule is None:
        return "match no rule and are dropped"
    went = f"go to {_table_text(rule)}" if rule.action == "lookup" else "are dropped"
    return f"{went} (rule {_rule_text(rule)})" if cite else went


def _depends(plain: MRule | None, forks: Sequence[Fork], iif: str, table: int) -> str:
    """The mrule detail when rules that test the firewall mark or the VRF send some of
    what arrives on `iif` to the route's table and some elsewhere."""
    marks = any(f.rule.fwmark is not None for f in forks)
    vrfs = any(f.rule.l3mdev for f in forks)
    subject = " and ".join(
        (["the packets' firewall mark"] if marks else [])
        + ([f"whether {iif} is in a VRF"] if vrfs else [])
    )
    which = f"if {iif} is in no VRF, " if vrfs else ""
    which += "packets with no mark" if marks else "packets"
    text = f"the outcome depends on {subject}: {which} {_outcome(plain)}"
    ok = _reaches(plain, table)
    if plain is not None and plain.action == "lookup" and not ok:
        text += f", not to the route's table {table}"
    others = []
    for fork in forks:
        # The first rule (by priority; no rule last) that ends the other way.
        other = min(
            (d for d in fork.others if _reaches(d, table) != ok),
            key=lambda d: (d is None, 0 if d is None else d.priority),
        )
        verb = "does not match" if fork.taken else "matches"
        went = _outcome(other, cite=other != fork.rule)
        others.append(f"those rule {_rule_text(fork.rule)} {verb} {went}")
    return f"{text}, but " + "; ".join(others)


def _arrival(facts: Facts, intent: Intent) -> Check:
    sample = facts.sample
    if sample is None or sample.error:
        why = sample.error if sample is not None else "no packet sample"
        return Check("arrival", "unknown", f"could not sample packets: {why}")
    on_iif = sample.arrivals.get(intent.iif, 0)
    elsewhere = {n: c for n, c in sample.arrivals.items() if n != intent.iif}
    if on_iif:
        return Check(
            "arrival", "passed", f"{on_iif} packets arrived on {intent.iif} in {sample.seconds:g} s"
        )
    if elsewhere:
        where = _busiest(elsewhere)
        what, source, group = "route", intent.source, intent.group
        if intent.template is not None:  # a template for that iif (any source: no --source)
            what, (source, group) = "template", intent.template
        option = "" if source == "*" else f"--source {source} "
        return Check(
            "arrival",
            "failed",
            f"the flow arrives on {_names(elsewhere)}, not on the iif {intent.iif}",
            f"make {where} the {what}'s iif: mfcctl mfc add {option}--group {group}"
            f" --iif {where} --oifs {','.join(intent.oifs)} (or fix the upstream path)",
        )
    return Check(
        "arrival",
        "failed",
        f"no packet from {intent.source} to {intent.group} reached this router in"
        f" {sample.seconds:g} s",
        f"check that the sender sends; if the upstream switch or router forwards {intent.group}"
        f" only where it is asked for, a join is needed on {intent.iif} (an IGMP/MLD report)",
    )


def _wrong_if(facts: Facts, intent: Intent) -> Check:
    counts = facts.counts
    if counts is None:
        return Check("wrong_if", "unknown", "no kernel entry to read counters from")
    if counts.wrong_if <= 0:
        return Check("wrong_if", "passed", f"wrong_if did not rise in {counts.seconds:g} s")
    where = "another interface"
    sample = facts.sample
    if sample is not None:
        elsewhere = {n: c for n, c in sample.arrivals.items() if n != intent.iif}
        if elsewhere:
            where = _busiest(elsewhere)
    return Check(
        "wrong_if",
        "failed",
        f"wrong_if rose by {counts.wrong_if} in {counts.seconds:g} s: the flow arrives on"
        f" {where}, not on the iif {intent.iif}",
        f"make {where} the route's iif, or fix the upstream path so it arrives on {intent.iif}",
    )


def _rp_filter(facts: Facts, intent: Intent) -> Check:
    if intent.family == 6:
        return Check("rp_filter", "passed", "IPv6 has no rp_filter")
    link = facts.interfaces.get(intent.iif)
    if link is None or link.rp_filter is None:
        return Check("rp_filter", "unknown", f"cannot read rp_filter of {intent.iif}")
    mode = link.rp_filter
    if mode == 0:
        return Check("rp_filter", "passed", f"rp_filter is off on {intent.iif}")
    back = facts.route_back
    if back is None or back.error:
        why = back.error if back is not None else "not looked up"
        return Check("rp_filter", "unknown", f"rp_filter={mode} on {intent.iif}; route back: {why}")
    knob = f"net.ipv4.conf.{intent.iif}.rp_filter (and .all)"
    if back.interface is None:
        return Check(
            "rp_filter",
            "failed",
            f"rp_filter={mode} on {intent.iif} and no route back to {intent.source}: the kernel"
            " drops the flow before routing it",
            f"add a route to {intent.source} via {intent.iif}, or set {knob} to 0",
        )
    if mode == 1 and back.interface != intent.iif:
        return Check(
            "rp_filter",
            "failed",
            f"strict rp_filter on {intent.iif}, but the route back to {intent.source} leaves by"
            f" {back.interface}: the kernel drops the flow before routing it",
            f"route {intent.source} via {intent.iif}, or set {knob} to 2 (loose) or 0",
        )
    return Check(
        "rp_filter",
        "passed",
        f"rp_filter={mode} on {intent.iif}; the route back to {intent.source} leaves by"
        f" {back.interface}",
    )


def _ttl(facts: Facts, intent: Intent) -> Check:
    word = "TTL" if intent.family == 4 else "hop limit"
    sample = facts.sample
    ttls = sample.ttls.get(intent.iif, ()) if sample is not None else ()
    if not ttls:
        return Check("ttl", "unknown", f"no packet sampled on {intent.iif} to read its {word}")
    low = min(ttls)
    seen = f"{word} {low}" if low == max(ttls) else f"{word} {low} to {max(ttls)}"
    # The kernel forwards out of an oif only packets whose TTL is above its threshold.
    blocked = sorted(o for o, t in intent.thresholds.items() if low <= t)
    if not blocked:
        return Check("ttl", "passed", f"packets arrive with {seen}, above every oif's threshold")
    needed = max(intent.thresholds[o] for o in blocked) + 1
    where = "every oif" if len(blocked) == len(intent.thresholds) else ", ".join(blocked)
    return Check(
        "ttl",
        "failed",
        f"packets arrive with {seen}: not forwarded to {where} (threshold"
        f" {max(intent.thresholds[o] for o in blocked)})",
        f"make the sender use {word} >= {needed} (IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS;"
        " many senders default to 1)",
    )


# When nothing diagnose checks explains that the kernel counted or sent nothing.
_UNEXPLAINED = (
    "no check above failed: compare the kernel's entry with the flow (ip mroute show, or"
    " ip -6 mroute; table N), and look for a firewall rule (nftables/iptables raw, mangle or"
    " filter) that drops the flow before it is routed"
)


def _why_nothing(above: Sequence[Check]) -> str:
    """The fix of `counted` (and `sent`) when nothing was counted, by the checks above."""
    if any(c.status == "failed" for c in above):
        return "see the checks that failed above"
    unknown = [c.check for c in above if c.status == "unknown"]
    if unknown:
        return f"no check above failed; see those that could not tell: {', '.join(unknown)}"
    return _UNEXPLAINED


def _counted(facts: Facts, intent: Intent, fix: str) -> Check:
    counts = facts.counts
    if counts is None:
        return Check("counted", "unknown", "the route has no kernel entry to count packets on")
    if counts.packets > 0:
        return Check(
            "counted",
            "passed",
            f"the kernel counted {counts.packets} packets on the route in {counts.seconds:g} s",
        )
    return Check(
        "counted",
        "failed",
        f"the kernel counted no packet on the route in {counts.seconds:g} s"
        f" ({counts.total_packets} in all)",
        fix,
    )


def _sent(facts: Facts, intent: Intent, nothing_counted: str) -> Check:
    sent = facts.sent
    seconds = facts.counts.seconds if facts.counts is not None else 0.0
    if sent is None or facts.counts is None or not any(o in sent for o in intent.oifs):
        return Check("sent", "unknown", "no oif VIF counters to read")
    silent = [o for o in intent.oifs if sent.get(o, 0) <= 0]
    if not silent:
        counts = ", ".join(f"{o} {sent[o]}" for o in intent.oifs)
        return Check("sent", "passed", f"packets left by every oif in {seconds:g} s ({counts})")
    if facts.counts.packets <= 0:
        why = "nothing was counted on the route"
        fix = nothing_counted
    else:
        why = "although the route counted packets"
        fix = "see the ttl and oif checks (TTL at or below a threshold, an oif down)"
    return Check(
        "sent",
        "failed",
        f"no packet left by {', '.join(silent)} in {seconds:g} s, {why}",
        fix,
    )


def _snooping(facts: Facts, intent: Intent) -> Check:
    bridges = [facts.interfaces[o] for o in intent.oifs if o in facts.interfaces]
    bridges = [b for b in bridges if b.snooping is not None]
    if not bridges:
        return Check("bridge_snooping", "passed", "no oif is a bridge")
    pruning = [b.name for b in bridges if b.snooping and not b.querier]
    if not pruning:
        return Check(
            "bridge_snooping", "passed", "every bridge oif has a querier or does not snoop"
        )
    # Not a failure: while a Linux bridge hears no querier it floods multicast to every
    # port (br_dev_xmit: br_multicast_querier_exists() is false), so the stream reaches
    # the receivers; what mfcd cannot see is a snooping switch further on, which prunes
    # it once the receivers' memberships time out with nobody querying.
    name = pruning[0]
    sent = facts.sent or {}
    counted = "".join(f", {sent[n]} packets left by {n}" for n in pruning if sent.get(n, 0) > 0)
    return Check(
        "bridge_snooping",
        "unknown",
        f"bridge {', '.join(pruning)} snoops IGMP/MLD with no querier of its own: it floods"
        f" the stream to every port while it hears no querier{counted}, but a snooping switch"
        " behind it may prune the stream once receivers' memberships time out",
        f"ip link set {name} type bridge mcast_querier 1 (unless another querier serves that"
        f" LAN), or mcast_snooping 0",
    )


# --- helpers --------------------------------------------------------------------------------------


def _busiest(arrivals: dict[str, int]) -> str:
    return max(sorted(arrivals), key=lambda n: arrivals[n])


def _names(arrivals: dict[str, int]) -> str:
    return ", ".join(f"{n} ({c} packets)" for n, c in sorted(arrivals.items()))
