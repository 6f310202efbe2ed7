"""What the protocol shows: show, vif.show, group.show, diagnose, results, plans, reports, logs.

Pure: it reads the model (and, for statistics, a counters reader the caller passes)
and builds the JSON values of results (and what a monitor's link event says); it
changes nothing and does no I/O of its own.  The controller changes state; commands.py
answers requests with what this module builds from it.
"""

from __future__ import annotations

import gc
import heapq
import json
import socket
import struct
import time
from collections import Counter
from collections.abc import (
    Callable,
    Collection,
    Container,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from itertools import islice
from json.encoder import encode_basestring_ascii as encode_ascii
from operator import itemgetter
from typing import Any, NamedTuple

from mfcd import groups
from mfcd import templates as tpl
from mfcd.dataplane import CountersReader, LinkChange, sg_counters, vif_counters
from mfcd.diagnosis import Check, Intent, Query, verdict
from mfcd.groups import JoinKey, Joins, MembershipOp
from mfcd.model import (
    DEFAULT_TABLE,
    DEFAULT_THRESHOLD,
    MAXVIFS,
    AddMfc,
    AddTemplate,
    AddVif,
    Change,
    DelMfc,
    DelTemplate,
    DelVif,
    PendingKey,
    Ports,
    RouteKey,
    Router,
    Step,
    renamed_from,
)
from mfcd.protocol import FAMILY_NAMES, PROTOCOL_VERSION, Encoded, Streamed
from mfcd.slices import SLICE_SECONDS
from mfcd.templates import TemplateKey
from mfcd.wildcards import is_wildcard, matches

SHOW_SCHEMA = 1
# A streamed show ends a part (and the loop gets a turn) once it has worked SLICE_SECONDS
# on it (slices.py: wall clock, so a process the machine preempts makes shorter parts), or
# at SLICE routes, whichever comes first; it looks at the clock every STEP routes.
SLICE = 5_000
STEP = 128


# --- plans, sync reports and log text -------------------------------------------------------------


def describe_step(step: Step) -> dict[str, Any]:
    """A step as shown to people and programs (dry-run plans, verbose results, sync repairs)."""
    op = step.op
    out: dict[str, Any] = {
        "action": step.action,
        "family": FAMILY_NAMES[op.family],
        "table": op.table,
    }
    match op:
        case AddVif() | DelVif():
            out.update(vif=op.vifi, interface=op.interface)
        case AddMfc():
            out.update(source=op.source, group=op.group, parent=op.parent)
            out["oifs"] = [vifi for vifi, _ in op.oifs]
        case DelMfc():
            out.update(source=op.source, group=op.group)
    return out


def repair(
    step: Step,
    error: Exception | None = None,
    slots: Mapping[tuple[int, int], Sequence[str | None]] | None = None,
) -> dict[str, Any]:
    """A repair of a sync report: the step, its interfaces named after the model's VIFs
    (`slots`, Router.slots: a repair restores them) as plans name them, and the error if
    the kernel refused it."""
    entry = describe_step(step)
    if slots is not None and isinstance(step.op, AddMfc):
        _name_interfaces([entry], slots, [step], applied=False)
    if error is not None:
        entry["error"] = str(error)
    return entry


def step_text(step: Step) -> str:
    """A step on one log line: `action=add_mfc family=ipv4 source=... group=...`."""
    return " ".join(f"{k}={v}" for k, v in describe_step(step).items())


def summarize(steps: Sequence[Step], seconds: float) -> str:
    """One line for what a run of steps did: routes affected, operations by kind, time taken."""
    return summarize_counts(Counter(step.action for step in steps), seconds)


def last_repairs(at: float, counts: Counter[str]) -> str:
    """The status line's part on the last drift repair: when (UTC) and what, by action."""
    kinds = ", ".join(f"{action} {n}" for action, n in sorted(counts.items()))
    return f"drift repaired at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(at))} UTC ({kinds})"


def summarize_counts(counts: Counter[str], seconds: float) -> str:
    """summarize() of steps counted by action (any other count, as "refused", shown too)."""
    counts = +counts  # (no zero counts)
    routes = sum(n for action, n in counts.items() if action.endswith("_mfc"))
    kinds = ", ".join(f"{action} {n}" for action, n in sorted(counts.items()))
    return f"{routes} routes affected ({kinds}) in {seconds:.2f} s"


def change_result(
    router: Router,
    *,
    changes: int,
    counts: Counter[str],
    steps: Sequence[Step] | None,
    dry_run: bool,
    added: PendingKey | None = None,
) -> dict[str, Any]:
    """The result of a change: kernel operations counted, the plan when `steps` are given,
    and the state of the route a single add left (`added`, unless a dry run)."""
    result: dict[str, Any] = {"dry_run": dry_run, "changes": changes}
    result["kernel_operations"] = dict(counts)
    if steps is not None:
        result["plan"] = [describe_step(s) for s in steps]
        _name_interfaces(result["plan"], router.slots, steps, applied=not dry_run)
    if added is not None and not dry_run:
        status = router.status(added)
        result["state"] = status.state
        if status.reason:
            result["reason"] = status.reason
        if status.missing:
            result["missing"] = list(status.missing)
    return result


def _name_interfaces(
    plan: list[dict[str, Any]],
    slots: Mapping[tuple[int, int], Sequence[str | None]],
    steps: Sequence[Step],
    *,
    applied: bool,
) -> None:
    """Name the interfaces of a plan's MFC steps (`iif`, `oif_names`) beside their VIF
    numbers, as reload -n does: each VIF by the interface it is at that step. `slots`: the
    model's VIFs (Router.slots), before the steps, or after them when they were `applied`
    (a VIF a change frees may be taken by another interface later in it)."""
    # The VIFs the steps have set so far (None: free), over `slots` (only the tables of
    # the plan's routes are looked at: a request's plan is small, the tables may be many).
    changed: dict[tuple[int, int, int], str | None] = {}
    if applied:  # (the VIFs as they were before the steps: theirs undone, last first)
        for step in reversed(steps):
            op = step.op
            if isinstance(op, AddVif | DelVif):
                was = op.interface if isinstance(op, DelVif) else None
                changed[(op.family, op.table, op.vifi)] = was
    for entry, step in zip(plan, steps, strict=True):
        op = step.op
        if isinstance(op, AddVif | DelVif):
            now = op.interface if isinstance(op, AddVif) else None
            changed[(op.family, op.table, op.vifi)] = now
        elif isinstance(op, AddMfc):
            names = slots.get((op.family, op.table), ())
            vifs = [op.parent, *entry["oifs"]]
            if changed:
                names = list(names) or [None] * MAXVIFS
                for v in vifs:
                    key = (op.family, op.table, v)
                    if key in changed and v < len(names):
                        names[v] = changed[key]
            entry["iif"], *entry["oif_names"] = [_vif_name(names, v) for v in vifs]


def template_plan(
    changes: Iterable[Change], templates: Mapping[TemplateKey, Ports]
) -> list[dict[str, Any]]:
    """A change's plan lines for the templates it adds, changes or removes (`templates`:
    those there are before it), as reload -n lists them. A template writes no MFC entry of
    its own (its routes come as sources are learned): its line has no kernel step."""
    plan = []
    for change in changes:
        if not isinstance(change, AddTemplate | DelTemplate):
            continue
        family, source, group, table, iif = change.key
        old = templates.get(change.key)
        entry: dict[str, Any] = {"family": FAMILY_NAMES[family], "source": source}
        entry.update(group=group, table=table, iif=iif)
        if isinstance(change, DelTemplate):
            entry["action"] = "remove_template"
        elif old == change.ports:
            continue  # (the same template again: nothing changes)
        else:
            entry["action"] = "add_template" if old is None else "change_template"
            entry["oifs"] = list(change.ports.oifs)
        if old is not None:
            entry["was"] = list(old.oifs)
        plan.append(entry)
    return plan


def describe_membership(op: MembershipOp) -> dict[str, Any]:
    """A join or leave as plans show it (beside the route steps)."""
    interface, group, source = op.key
    return {
        "action": "join" if op.join else "leave",
        "family": FAMILY_NAMES[groups.family_of(op.key)],
        "interface": interface,
        "group": group,
        "source": source,
    }


def batch_counts(
    *,
    changes: int,
    deleted: int,
    updated: int,
    joined: int,
    left: int,
    templates: tuple[int, int] = (0, 0),
    pending: tuple[int, int, list[str]] | None,
) -> dict[str, Any]:
    """What a batch of `changes` did, beside change_result's: routes added (the changes that
    are not deletes, updates, joins or leaves), deleted and updated, the joins and leaves
    when it had any, and (`pending`: unless a dry run) how many of its routes wait for
    missing interfaces, not installed (pending) or installed without them (degraded), and
    which interfaces those are. `templates`: how many of those added and deleted are
    templates (`templates_added`, `templates_deleted` when there are any: "6 added" for 4
    routes and 2 templates misled)."""
    out: dict[str, Any] = {
        "added": changes - deleted - updated - joined - left,
        "deleted": deleted,
        "updated": updated,
    }
    if templates[0] or templates[1]:
        out.update(templates_added=templates[0], templates_deleted=templates[1])
    if joined or left:
        out.update(joined=joined, left=left)
    if pending is not None:
        out["pending"], out["degraded"], out["missing"] = pending
    return out


_VIFI = itemgetter(0)  # of an Oifs item


_NO_VIFS: tuple[None, ...] = (None,) * MAXVIFS  # (the slots of a table that has none)


def _vif_name(names: Sequence[str | None], vifi: int) -> str:
    """The interface of VIF `vifi` of a table's slots, "?" if none."""
    name = names[vifi] if vifi < len(names) else None
    return "?" if name is None else name


def route_response(
    request_id: Any,
    counts: Counter[str],
    steps: Sequence[Step],
    installed: bool,
    slots: Mapping[tuple[int, int], Sequence[str | None]],
) -> bytes | None:
    """protocol.encode_response(request_id, change_result(...)) of a single route's mfc.add
    (`installed`: its state is, with nothing missing) or mfc.del (False), formatted directly
    (the result's dicts and their JSON took a fifth of such a request); None when a step is
    not an MFC entry's (a VIF's): then build the result. `request_id`: an int (not a bool),
    a string or None. `slots`: the model's VIFs (Router.slots), which name the interfaces
    (no VIF step: they are those before the change too). tests/unit/test_one_route_lane.py
    holds the bytes to the general path's. (Addresses are canonical, actions and interface
    names plain names: nothing in them to escape.)"""
    plan = []
    for step in steps:
        op = step.op
        if isinstance(op, AddMfc):
            vifs = list(map(_VIFI, op.oifs))
            oifs = ",".join(map(str, vifs))
            names = slots.get((op.family, op.table)) or _NO_VIFS
            iif = names[op.parent] or "?"
            oif_names = ",".join([f'"{names[v] or "?"}"' for v in vifs])
            plan.append(
                f'{{"action":"{step.action}","family":"{FAMILY_NAMES[op.family]}",'
                f'"table":{op.table:d},"source":"{op.source}","group":"{op.group}",'
                f'"parent":{op.parent:d},"oifs":[{oifs}],"iif":"{iif}",'
                f'"oif_names":[{oif_names}]}}'
            )
        elif isinstance(op, DelMfc):
            plan.append(
                f'{{"action":"{step.action}","family":"{FAMILY_NAMES[op.family]}",'
                f'"table":{op.table:d},"source":"{op.source}","group":"{op.group}"}}'
            )
        else:
            return None
    if request_id is None:
        rid = "null"
    elif request_id.__class__ is str:
        rid = encode_ascii(request_id)
    else:
        rid = f"{request_id:d}"
    operations = ""
    for action, n in counts.items():  # (one, as a rule: no comprehension, which is a call)
        operations += f',"{action}":{n:d}' if operations else f'"{action}":{n:d}'
    state = ',"state":"installed"' if installed else ""
    return (
        f'{{"v":{PROTOCOL_VERSION:d},"id":{rid},"ok":true,"result":{{"dry_run":false,'
        f'"changes":1,"kernel_operations":{{{operations}}},"plan":[{",".join(plan)}]'
        f"{state}}}}}\n"
    ).encode()


class Settings(NamedTuple):
    """The interface settings the config files declare (the rest are the API's)."""

    thresholds: Mapping[str, int] = {}
    mrdisc: Mapping[str, bool] = {}
    table_thresholds: Mapping[tuple[str, int], int] = {}  # (name, table) -> that table's


def interface_settings(
    thresholds: Mapping[str, int],
    mrdisc: Collection[str],
    declared: Settings,
    table_thresholds: Mapping[tuple[str, int], int] | None = None,
) -> list[dict[str, Any]]:
    """vif.show's settings: each interface with a threshold other than the default, mrdisc
    on, or a setting the config files declare, by name; each setting it has names its
    origin (`threshold_origin`, `mrdisc_origin`: "config" or "api"), as a route does.
    After an interface's entry, one per table it has a threshold of its own in (with that
    `table`, its `threshold` and `threshold_origin`; mrdisc is the interface's)."""
    out = _every_table_settings(thresholds, mrdisc, declared)
    own = {**(table_thresholds or {}), **declared.table_thresholds}
    for (name, table), ttl in own.items():
        origin = "config" if (name, table) in declared.table_thresholds else "api"
        out.append(
            {"interface": name, "table": table, "threshold": ttl, "threshold_origin": origin}
        )
    out.sort(key=lambda e: (e["interface"], e.get("table", -1)))
    return out


def _every_table_settings(
    thresholds: Mapping[str, int], mrdisc: Collection[str], declared: Settings
) -> list[dict[str, Any]]:
    """interface_settings' entries of the settings of every table."""
    # (A journal may hold a setting back to the default: that is no setting.)
    set_thresholds = {n for n, t in thresholds.items() if t != DEFAULT_THRESHOLD}
    names = set_thresholds | set(mrdisc) | set(declared.thresholds) | set(declared.mrdisc)
    out = []
    for name in sorted(names):
        entry: dict[str, Any] = {
            "interface": name,
            "threshold": thresholds.get(name, DEFAULT_THRESHOLD),
            "mrdisc": name in mrdisc,
        }
        if name in declared.thresholds or name in set_thresholds:
            entry["threshold_origin"] = "config" if name in declared.thresholds else "api"
        if name in declared.mrdisc or name in mrdisc:
            entry["mrdisc_origin"] = "config" if name in declared.mrdisc else "api"
        out.append(entry)
    return out


# --- show and vif.show ---------------------------------------------------------------------------


class Views:
    """Builds show and vif.show from a router, with counters from `counters` when asked.

    It keeps show's route order while no transaction changes the router: sorting costs
    about as much as formatting, and `show --watch` asks again and again.
    """

    def __init__(self, counters: CountersReader) -> None:
        self.counters = counters
        self._since: Mapping[RouteKey, float] = {}  # learned_since of the show under way
        # Wildcard oifs as given, of the routes and templates that have them (the show
        # under way's): shown beside their expansion.
        self._patterns: Mapping[RouteKey, Ports] = {}
        self._template_patterns: Mapping[TemplateKey, Ports] = {}
        self._unexpanded: Mapping[TemplateKey, tuple[Ports, str]] = {}
        self._order: tuple[Router | None, int, int, list[RouteKey]] = (
            None,
            -1,
            -1,
            [],
        )

    def vifs(
        self, router: Router, stats: bool = False, table: int | None = None
    ) -> list[dict[str, Any]]:
        """The VIFs as the protocol shows them (of one table number, if given)."""
        vifs = []
        for vif in router.iter_vifs():
            if table is not None and not _in_table(table, vif.family, vif.table):
                continue
            entry: dict[str, Any] = {
                "family": FAMILY_NAMES[vif.family],
                "table": vif.table,
                "vif": vif.vifi,
                "interface": vif.interface,
                "ifindex": vif.ifindex,
                "present": vif.ifindex is not None,
                # (IPv6: none; Linux forwards out of every MIF of an MFC entry's set
                # whatever its threshold, so a number here would be untrue)
                "threshold": router.threshold(vif.interface, vif.table)
                if vif.family == 4
                else None,
                "routes": vif.refs,
            }
            if stats:
                c = (
                    vif_counters(self.counters, vif.family, vif.vifi, vif.table)
                    if vif.ifindex
                    else None
                )
                entry["stats"] = {
                    "packets_in": c.packets_in if c else 0,
                    "packets_out": c.packets_out if c else 0,
                    "bytes_in": c.bytes_in if c else 0,
                    "bytes_out": c.bytes_out if c else 0,
                }
            vifs.append(entry)
        return vifs

    def vif_show(
        self,
        router: Router,
        stats: bool = False,
        table: int | None = None,
        *,
        mrdisc: Collection[str] = (),
        declared: Settings | None = None,
    ) -> dict[str, Any]:
        """vif.show: the VIFs alone (not the JSON of every route, which show would build),
        and the interface settings (see interface_settings)."""
        return {
            "schema": SHOW_SCHEMA,
            "vifs": self.vifs(router, stats, table),
            "settings": interface_settings(
                router.thresholds, mrdisc, declared or Settings(), router.table_thresholds
            ),
            "max_vifs": MAXVIFS,
        }

    def show(
        self,
        router: Router,
        *,
        stats: bool = False,
        encoded: bool = False,
        table: int | None = None,
        streamed: bool = False,
        learned_since: Mapping[RouteKey, float] | None = None,
        patterns: tuple[Mapping[RouteKey, Ports], Mapping[TemplateKey, Ports]] | None = None,
        unexpanded: Mapping[TemplateKey, tuple[Ports, str]] | None = None,
    ) -> dict[str, Any]:
        """VIFs and routes as the protocol shows them, by family and table (only those of
        table number `table`, if given); with `encoded`, the routes are one
        protocol.Encoded JSON text, with `streamed` a protocol.Streamed one made a part at a
        time as it is written (the same JSON: a test holds the three to it). Every route
        has its origin; a learned one names its template and, from `learned_since` (when
        each was learned, time.monotonic), its age. Templates follow the routes. A route or
        template with wildcard oifs (`patterns`: the routes', the templates') shows them as
        given in "oif_patterns", its "oifs" being what they match now; one that matches no
        interface, so that the model holds no template for it (`unexpanded`: by its key as
        given, with its interfaces as given and its origin), is listed all the same."""
        self._patterns, self._template_patterns = patterns or ({}, {})
        self._unexpanded = unexpanded or {}
        vifs = self.vifs(router, stats, table)
        # Every VIF present: an installed route is simply installed, with no per-route checks.
        healthy = _healthy(router)
        self._since = learned_since or {}
        routes: list[dict[str, Any]] | Encoded | Streamed
        if streamed:
            routes = Streamed(self._routes_streamed(router, stats, table))
        elif encoded:
            routes = self._routes_encoded(router, stats, healthy, table)
        else:
            routes = [
                self._route_json(router, key, router.routes[key], stats, healthy)
                for key in self._sorted(router)
                if table is None or _in_table(table, key[0], key[3])
            ]
            routes += self._templates_json(router, table)
        return {
            "schema": SHOW_SCHEMA,
            "vifs": vifs,
            "max_vifs": MAXVIFS,
            "routes": routes,  # last: an Encoded member is written last all the same
        }

    def _routes_encoded(
        self, router: Router, stats: bool, healthy: bool, table: int | None
    ) -> Encoded:
        texts = list(self._route_texts(router, self._sorted(router), stats, healthy, table))
        texts += map(_json, self._templates_json(router, table))
        return Encoded(f"[{','.join(texts)}]")

    def _routes_streamed(self, router: Router, stats: bool, table: int | None) -> Iterator[str]:
        """The routes' JSON array in parts of SLICE_SECONDS of work, sorted a part at a time
        first.

        Other clients are served between two parts, so the routes may change meanwhile: each
        part shows its routes as they are when it is made, and leaves out those deleted
        since the show began (a route added once their keys are copied is not in it)."""
        # The cyclic GC paused while the show is made (if nothing else paused it): its
        # passes walked the copy of the 1,000,000 keys and the order being kept, both young
        # (30-40 ms each, in one callback). Nothing here forms cycles. It runs again when
        # the show ends, also when the server closes it unfinished (a client gone).
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            keys = yield from self._sorted_in_slices(router)
            yield "["
            comma = ""
            clock = time.perf_counter
            while True:
                deadline = clock() + SLICE_SECONDS
                healthy = _healthy(router)
                texts: list[str] = []
                count = 0
                while count < SLICE and (chunk := list(islice(keys, min(STEP, SLICE - count)))):
                    texts += self._route_texts(router, chunk, stats, healthy, table)
                    count += len(chunk)
                    if clock() >= deadline:
                        break
                if not count:
                    break
                text = ",".join(texts)
                yield comma + text if text else ""
                comma = comma or ("," if text else "")
            templates = ",".join(map(_json, self._templates_json(router, table)))
            yield comma + templates if templates else ""
            yield "]"
        finally:
            if paused:
                gc.enable()

    def _route_texts(
        self,
        router: Router,
        keys: Iterable[RouteKey],
        stats: bool,
        healthy: bool,
        table: int | None,
    ) -> Iterator[str]:
        """The JSON text of each of these routes that still exists (in `table`, if given)."""
        routes, installed = router.routes, router.installed
        origins, wild = router.origins, self._patterns
        interfaces: dict[Ports, str] = {}  # '"iif":...,"oifs":[...]' of each Ports
        for key in keys:
            ports = routes.get(key)
            if ports is None or (table is not None and not _in_table(table, key[0], key[3])):
                continue
            if stats or not healthy or key not in installed or key in origins or key in wild:
                yield _json(self._route_json(router, key, ports, stats, healthy))
                continue
            # An installed route of a healthy table: formatted directly. Addresses are
            # canonical (hex digits, dots, colons) and need no escaping; names go through
            # json.dumps once per combination.
            text = interfaces.get(ports)
            if text is None:
                text = _json({"iif": ports.iif, "oifs": list(ports.oifs)})[1:-1]
                interfaces[ports] = text
            family, source, group, number = key
            yield (
                f'{{"family":"{FAMILY_NAMES[family]}","table":{number},"source":"{source}",'
                f'"group":"{group}",{text},"state":"installed","origin":"api"}}'
            )

    def _templates_json(self, router: Router, table: int | None) -> list[dict[str, Any]]:
        """The templates as show lists them, after the routes: by family, table, group,
        source and iif, each with the number of entries learned from it."""
        unexpanded = self._unexpanded
        if not router.templates and not unexpanded:
            return []
        out = []
        for key in sorted([*router.templates, *unexpanded], key=_template_order):
            family, source, group, number, iif = key
            if table is not None and not _in_table(table, family, number):
                continue
            if key not in router.templates:
                out.append(_unexpanded_json(key, *unexpanded[key], router.links))
                continue
            status = router.status(key)
            entry: dict[str, Any] = {
                "family": FAMILY_NAMES[family],
                "table": number,
                "source": source,
                "group": group,
                "iif": iif,
                "oifs": list(router.templates[key].oifs),
                "state": status.state,
                "origin": router.template_origin(key),
                "template": True,
                "learned": router.learned_count(key),
            }
            if status.state != "installed":
                entry["missing"] = list(status.missing)
                entry["reason"] = status.reason
            wild = self._template_patterns.get(key)
            if wild is not None:  # a template with wildcards (runtime or config)
                if wild.iif != iif:
                    entry["iif_pattern"] = wild.iif
                if any(map(is_wildcard, wild.oifs)):
                    entry["oif_patterns"] = [n for n in wild.oifs if n != iif]
            out.append(entry)
        return out

    def _sorted(self, router: Router) -> list[RouteKey]:
        """The routes in the order `ip mroute` and smcroute users expect: IPv4 first, then by
        group, then by source, comparing addresses as numbers (10.0.0.9 before 10.0.0.10)."""
        routes = router.routes
        known, version, count, keys = self._order
        # Every change of a route commits a transaction, which counts in router.version.
        if known is not router or version != router.version or count != len(routes):
            keys = sorted(routes, key=_address_order())
            self._order = (router, router.version, len(routes), keys)
        return keys

    def _sorted_in_slices(self, router: Router) -> Generator[str, None, Iterator[RouteKey]]:
        """The routes in _sorted's order, as an iterator, computed without holding the loop:
        sort keys are made and sorted a part (SLICE_SECONDS) at a time, a pause ("") after
        each, and the sorted runs merged as the keys are taken."""
        known, version, count, cached = self._order
        if known is router and version == router.version and count == len(router.routes):
            return iter(cached)
        # A list of the key objects themselves, made a part at a time (1,000,000 of them
        # in one go held the loop 5-20 ms); started again if the routes change meanwhile,
        # and made in one go after two such restarts.
        for _attempt in range(2):
            version = router.version
            keys = yield from _copy_in_parts(router)
            if keys is not None:
                break
        else:
            version, keys = router.version, list(router.routes)
            yield ""
        bits = len(keys).bit_length()
        order = _address_order()
        clock = time.perf_counter
        runs = []
        start, end = 0, len(keys)
        while start < end:
            deadline = clock() + SLICE_SECONDS
            run: list[int] = []
            stop = min(start + SLICE, end)
            while start < stop:
                step = min(start + STEP, stop)
                run += [order(keys[i]) << bits | i for i in range(start, step)]
                start = step
                if clock() >= deadline:
                    break
            # Largest first, after a -1 that ends it: the merge takes each run's keys with
            # pop(), so they are freed as they are taken, not 1,000,000 at once at the end.
            run.sort(reverse=True)
            run.insert(0, -1)
            runs.append(iter(run.pop, -1))
            yield ""
        return self._merged(router, version, keys, runs, bits)

    def _merged(
        self,
        router: Router,
        version: int,
        keys: list[RouteKey],
        runs: list[Iterator[int]],
        bits: int,
    ) -> Iterator[RouteKey]:
        """The keys in the order of the sorted runs; kept for the next show if the routes are
        still those they were made from."""
        mask = (1 << bits) - 1
        ordered = []
        for n in heapq.merge(*runs):
            key = keys[n & mask]
            ordered.append(key)
            yield key
        if router.version == version and len(router.routes) == len(ordered):
            self._order = (router, version, len(ordered), ordered)

    def _route_json(
        self, router: Router, key: RouteKey, ports: Ports, stats: bool, healthy: bool
    ) -> dict[str, Any]:
        family, source, group, table = key
        out: dict[str, Any] = {
            "family": FAMILY_NAMES[family],
            "table": table,
            "source": source,
            "group": group,
            "iif": ports.iif,
            "oifs": list(ports.oifs),
            "state": "installed",
            "origin": router.origin(key),
        }
        wild = self._patterns.get(key)
        if wild is not None:
            out["oif_patterns"] = list(wild.oifs)
        template = router.learned.get(key)
        if template is not None:
            out["learned_from"] = {"source": template[1], "group": template[2], "iif": template[4]}
            since = self._since.get(key)
            if since is not None:
                out["age"] = round(time.monotonic() - since, 1)
        installed = key in router.installed
        if not (healthy and installed):
            status = router.status(key)
            out["state"] = status.state
            if status.state != "installed":
                out["missing"] = list(status.missing)
                out["reason"] = status.reason
        if stats:
            c = sg_counters(self.counters, family, source, group, table) if installed else None
            out["stats"] = {
                "packets": c.packets if c else 0,
                "bytes": c.bytes if c else 0,
                "wrong_if": c.wrong_if if c else 0,
            }
        return out


def _copy_in_parts(router: Router) -> Generator[str, None, list[RouteKey] | None]:
    """The routes' keys, copied STEP * 32 at a time for SLICE_SECONDS a part, a pause ("")
    after each; None if the routes changed meanwhile (a transaction committed, or their
    number changed)."""
    routes, version, count = router.routes, router.version, len(router.routes)
    keys: list[RouteKey] = []
    it = iter(routes)
    clock = time.perf_counter
    while len(keys) < count:
        deadline = clock() + SLICE_SECONDS
        while len(keys) < count:
            before = len(keys)
            try:
                keys += islice(it, STEP * 32)
            except RuntimeError:  # changed in a way that left the version as it was
                return None
            if len(keys) == before:  # (the same: fewer keys than there are routes)
                return None
            if clock() >= deadline:
                break
        yield ""
        if router.version != version or len(routes) != count:
            return None
    return keys


_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
DEFAULT_TABLES = 0  # a show filter for each family's default table (0 is never a table)


def _in_table(wanted: int, family: int, table: int) -> bool:
    """Whether a route or VIF of (family, table) passes a show filter for table `wanted`."""
    return table == wanted or (wanted == DEFAULT_TABLES and table == DEFAULT_TABLE[family])


def _healthy(router: Router) -> bool:
    """Every VIF is present: an installed route is simply installed."""
    return all(vif.ifindex is not None for vif in router.vifs.values())


def _unexpanded_json(
    key: TemplateKey, given: Ports, origin: str, links: Mapping[str, int]
) -> dict[str, Any]:
    """A wildcard template that stands for no template now, as show lists one: pending if
    its iif is not there (or no interface matches it), else degraded (its wildcards leave
    it no oif), with what it waits for as a template's status says it
    (model.Router._short_status)."""
    family, source, group, number, iif = key
    names = list(dict.fromkeys(given.interfaces))
    missing = [n for n in names if n not in links and not is_wildcard(n)]
    unmatched = [n for n in names if is_wildcard(n) and not any(matches(n, m) for m in links)]
    why = ["waiting for " + ", ".join(missing)] if missing else []
    if unmatched:
        why.append("no interface matches " + ", ".join(unmatched) + " yet")
    entry: dict[str, Any] = {
        "family": FAMILY_NAMES[family],
        "table": number,
        "source": source,
        "group": group,
        "iif": "" if is_wildcard(iif) else iif,  # (the interfaces it matches: none)
        "oifs": [n for n in given.oifs if not is_wildcard(n)],  # (a wildcard: none)
        "state": "pending" if iif in missing or iif in unmatched else "degraded",
        "origin": origin,
        "template": True,
        "learned": 0,
        "missing": [*missing, *unmatched],
        "reason": "; ".join(why),
    }
    if is_wildcard(iif):
        entry["iif_pattern"] = iif
    if any(map(is_wildcard, given.oifs)):
        entry["oif_patterns"] = list(given.oifs)
    return entry


def _template_order(key: TemplateKey) -> tuple[int, int, int, int, int, int, str]:
    family, source, group, table, iif = key
    g, s = tpl.prefix_of(group, family), tpl.prefix_of(source, family)
    return family, table, g.network, g.length, s.network, s.length, iif


def _address_order() -> Callable[[RouteKey], int]:
    """A sort key for route keys: family, table, group and source as one number (an int
    compares faster than a tuple of packed addresses), the bytes of an IPv4 key fewer than
    an IPv6 one's, so every IPv4 route comes first. No cache of the groups: one of
    1,000,000 distinct groups was 100 MiB, and freeing or growing it held the loop."""
    pton = socket.inet_pton
    number = int.from_bytes
    packs = {4: _ORDER4.pack, 6: _ORDER6.pack}

    def order(key: RouteKey) -> int:
        family, source, group, table = key
        af = _AF[family]
        return number(packs[family](family, table, pton(af, group), pton(af, source)))

    return order


# family, table, group, source: big-endian, so that the bytes compare as the fields do
_ORDER4 = struct.Struct(">BI4s4s")
_ORDER6 = struct.Struct(">BI16s16s")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def learning_stats(
    entries: int, max_learned: int, idle_timeout: float, counts: Mapping[str, int]
) -> dict[str, int | float]:
    """What `show --stats` says about learning: the learned `entries` now, the limits, and
    learning.Learner's counts since start-up."""
    return {
        "entries": entries,
        "max_learned": max_learned,
        "idle_timeout": idle_timeout,
        **counts,
    }


# --- group joins ---------------------------------------------------------------------------------


def group_show(
    joins: Joins, owner: Callable[[JoinKey], JoinKey | None] | None = None
) -> dict[str, Any]:
    """group.show: each join wanted, in show order, with its state (and why it waits), its
    origin, and the wildcard join it stands for (`owner`, when there are wildcard joins);
    and the interfaces that send router advertisements."""
    shown = []
    for key in sorted(joins.wanted, key=groups.sort_key):
        status = joins.status(key)
        entry = {
            "interface": key[0],
            "family": FAMILY_NAMES[groups.family_of(key)],
            "group": key[1],
            "source": key[2],
            "state": status.state,
            "origin": joins.origin(key),
        }
        if status.reason:
            entry["reason"] = status.reason
        pattern = owner(key) if owner is not None else None
        if pattern:
            entry["interface_pattern"] = pattern[0]
        shown.append(entry)
    return {"groups": shown, "mrdisc": sorted(joins.mrdisc)}


def join_entry(key: JoinKey) -> dict[str, str]:
    """A join as a leave's `already_left` names it."""
    return {"interface": key[0], "group": key[1], "source": key[2]}


def join_states(joins: Joins, keys: Sequence[JoinKey], links: Container[str]) -> dict[str, Any]:
    """What a join answers: how many of its joins (`keys`) wait, why the first one does,
    and which of their interfaces do not exist (not in `links`)."""
    waiting = [key for key in keys if key not in joins.joined]
    out: dict[str, Any] = {"joins": len(keys), "pending": len(waiting)}
    if waiting:
        out["state"] = "pending"
        out["reason"] = joins.status(waiting[0]).reason
        out["missing"] = sorted({key[0] for key in waiting if key[0] not in links})
    else:
        out["state"] = "joined"
    return out


# --- diagnose ------------------------------------------------------------------------------------


def diagnose_result(
    query: Query, seconds: float, flows: Sequence[tuple[Intent | None, Sequence[Check]]]
) -> dict[str, Any]:
    """diagnose's result: the flow asked about, how long it was sampled, and for each intent
    that matches it (or None when none does) its checklist, with a verdict for each and one
    for all."""
    shown = [_diagnosed_flow(intent, checks) for intent, checks in flows]
    everything = [check for _, checks in flows for check in checks]
    return {
        "group": query.group,
        "source": query.source,
        "table": query.table,
        "seconds": seconds,
        "verdict": verdict(everything),
        "flows": shown,
    }


def _diagnosed_flow(intent: Intent | None, checks: Sequence[Check]) -> dict[str, Any]:
    return {
        "route": None if intent is None else diagnosed_intent(intent),
        "verdict": verdict(checks),
        "checks": [diagnosed_check(c) for c in checks],
    }


def diagnosed_intent(intent: Intent) -> dict[str, Any]:
    """A route or template that matches a diagnosed flow, as diagnose shows it."""
    out: dict[str, Any] = {
        "kind": intent.kind,
        "family": FAMILY_NAMES[intent.family],
        "table": intent.table,
        "source": intent.source,
        "group": intent.group,
        "iif": intent.iif,
        "oifs": list(intent.oifs),
        "state": intent.state,
        "origin": intent.origin,
    }
    if intent.template is not None:
        out["template"] = {"source": intent.template[0], "group": intent.template[1]}
        out["learned"] = intent.learned
    return out


def diagnosed_check(check: Check) -> dict[str, Any]:
    """One item of a diagnosed flow's checklist, as diagnose shows it."""
    out: dict[str, Any] = {"check": check.check, "status": check.status, "detail": check.detail}
    if check.interface is not None:
        out["interface"] = check.interface
    if check.fix:
        out["fix"] = check.fix
    return out


# --- reload --------------------------------------------------------------------------------------


def reload_result(
    change: Any,
    outcome: Any,
    declared: Any,
    dry_run: bool,
    taken: Any,
    *,
    files: Sequence[str],
    slots: Mapping[tuple[int, int], Sequence[str | None]],
) -> dict[str, Any]:
    """The result of a reload (a declarations.Diff applied, a controller.Outcome): the
    `files` read (the main file too when it holds only settings), routes
    added, removed, changed and unchanged, with a one-line summary, and in a dry run the
    plan: each route that changes, with the FILE:LINE that declares it, and the kernel's
    (its MFC steps' interfaces named by `slots`, the model's VIFs). `taken` (a
    controller.Takeovers, made before the reload): the api routes, thresholds, mrdisc
    settings, templates and joins the files take over, counted apart from those added and
    changed, and the settings declared at the value the interface has already, not
    counted as changed."""
    thresholds = len(change.thresholds) - len(taken.thresholds) - len(taken.same_thresholds)
    thresholds += len(change.table_thresholds) - len(taken.table_thresholds)
    mrdisc = len(change.mrdisc) - len(taken.mrdisc) - len(taken.same_mrdisc)
    taken_over = len(taken.routes) + len(taken.thresholds) + len(taken.mrdisc)
    taken_over += len(taken.table_thresholds)
    result: dict[str, Any] = {
        "dry_run": dry_run,
        "files": list(files),
        "added": len(change.added) - len(taken.routes),
        "removed": len(change.removed),
        "changed": len(change.changed),
        "unchanged": change.unchanged,
        "taken_over": taken_over + len(taken.templates) + len(taken.joins),
        "thresholds": thresholds,
        "templates": _counted(change.templates, len(taken.templates)),
        "joins": _counted(change.joins, len(taken.joins)),
        "kernel_operations": dict(outcome.counts),
    }
    # (plain numbers, as mfcctl prints every other count: "5000 added" as a batch says it)
    parts = [f"{result[k]} {k}" for k in ("added", "removed", "changed", "unchanged")]
    if result["taken_over"]:
        parts.append(f"{result['taken_over']} taken over from the api")
    if thresholds:
        parts.append(f"{counted(thresholds, 'threshold')} changed")
    if mrdisc:
        parts.append(f"{counted(mrdisc, 'mrdisc setting')} changed")
    for kind in ("templates", "joins"):
        counts = result[kind]
        if any(counts.values()):
            done = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
            parts.append(f"{kind}: {done}")
    result["summary"] = ", ".join(parts)
    if dry_run:
        result["plan"] = _reload_plan(change, declared, taken)
        result["kernel_plan"] = [describe_step(s) for s in outcome.steps]
        _name_interfaces(result["kernel_plan"], slots, outcome.steps, applied=False)
    return result


def joins_joined(joins: Joins) -> str:
    """`15 of 16 joined (saved: 7 of 8, config files: 8 of 8)`: every join, as the status
    line counts them, and those of each origin (saved: made with mfcctl, kept in the state
    file), for the start-up log."""
    wanted = Counter(joins.wanted.values())
    joined = Counter(joins.wanted[key] for key in joins.joined if key in joins.wanted)
    origins = ((groups.ORIGIN_API, "saved"), (groups.ORIGIN_CONFIG, "config files"))
    parts = [f"{name}: {joined[o]} of {wanted[o]}" for o, name in origins if wanted[o]]
    return f"{len(joins.joined)} of {len(joins.wanted)} joined ({', '.join(parts)})"


def _reload_plan(change: Any, declared: Any, taken: Any) -> list[dict[str, Any]]:
    """A reload's plan (see reload_result): each route, setting, template and join that
    changes, those taken over from the api marked."""
    plan: list[dict[str, Any]] = []
    for action, keys in (("add", change.added), ("change", change.changed)):
        for key in keys:
            iif, oifs = declared.routes[key]
            entry = _declared(action, key, declared.where(key), iif=iif, oifs=list(oifs))
            was = taken.routes.get(key)
            if was is not None:  # an api route the files now declare
                entry.update(action="take_over", was={"iif": was.iif, "oifs": list(was.oifs)})
            plan.append(entry)
    plan += [_declared("remove", key, None) for key in change.removed]
    for name, threshold in sorted(change.thresholds.items()):
        if name in taken.same_thresholds:
            continue
        value = DEFAULT_THRESHOLD if threshold is None else threshold
        entry = {"action": "threshold", "interface": name, "threshold": value}
        if name in taken.thresholds:
            entry.update(taken_over=True, was=taken.thresholds[name])
        plan.append(_setting_where(entry, declared, name, "threshold"))
    for (name, table), threshold in sorted(change.table_thresholds.items()):
        # (None: the table's setting removed; the interface's every-table one applies there)
        entry = {"action": "threshold", "interface": name, "table": table, "threshold": threshold}
        if (name, table) in taken.table_thresholds:
            entry.update(taken_over=True, was=taken.table_thresholds[(name, table)])
        setting = declared.table_interfaces.get((name, table))
        if setting is not None:
            entry["where"] = setting.where
        plan.append(entry)
    for name, on in sorted(change.mrdisc.items()):
        if name in taken.same_mrdisc:
            continue
        entry = {"action": "mrdisc", "interface": name, "on": bool(on)}
        if name in taken.mrdisc:
            entry["taken_over"] = True
        plan.append(_setting_where(entry, declared, name, "mrdisc"))
    plan += _template_plan(change.templates, taken.templates)
    plan += _join_plan(change.joins, taken.joins)
    return plan


def waiting_text(waiting: Any, would: bool = False, shown: int = 3) -> str:
    """`1 route is pending (waiting for r7) and 2 degraded (waiting for r8, r9): no such
    interfaces (yet)`: what the routes and templates of the config files wait for (a
    declarations.Waiting), `would` be for a dry run; "" if they wait for nothing. Templates
    are named as such (`1 route and 1 template are pending`); the second state's noun is
    left out only when every one of them is of the same kind as the first's."""
    kinds = [
        (n, templates, state, names)
        for n, templates, state, names in (
            (waiting.pending, waiting.pending_templates, "pending", waiting.pending_for),
            (waiting.degraded, waiting.degraded_templates, "degraded", waiting.degraded_for),
        )
        if n
    ]
    if not kinds:
        return ""
    nouns = [_routes_and_templates(n - templates, templates) for n, templates, _, _ in kinds]
    # Routes only (the usual case), or templates only: "and 2 degraded" needs no noun.
    of = {"route" if not t else "template" if t == n else "both" for n, t, _, _ in kinds}
    alike = of in ({"route"}, {"template"})
    texts: list[str] = []
    for (n, _, state, names), noun in zip(kinds, nouns, strict=True):
        some = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" * (len(names) > shown))
        if not texts:
            be = "would be" if would else "is" if n == 1 else "are"
            texts.append(f"{noun} {be} {state} (waiting for {some})")
        else:
            texts.append(f"{n if alike else noun} {state} (waiting for {some})")
    plural = len(waiting.missing) > 1
    return f"{' and '.join(texts)}: no such interface{'s' * plural} (yet)"


def refused_text(router: Router) -> str:
    """`1 route and 1 template of the config files are pending: the kernel refused it
    (REASON); mfcctl sync retries`: the config routes and templates the kernel refused
    (another multicast router owns their table, say), with the first one's reason; ""
    if none."""
    # (a route's key has 4 fields, a template's 5: neither is found in the other's dict)
    origins: Mapping[Any, str] = router.origins
    template_origins: Mapping[Any, str] = router.template_origins
    keys = [
        k
        for k in router.refused
        if origins.get(k) == "config" or template_origins.get(k) == "config"
    ]
    if not keys:
        return ""
    routes = sum(1 for k in keys if len(k) == 4)
    noun = _routes_and_templates(routes, len(keys) - routes)
    be = "is" if len(keys) == 1 else "are"
    return f"{noun} of the config files {be} pending: {router.refused[keys[0]]}"


def settings_waiting_text(
    interfaces: Mapping[str, Any], links: Container[str], shown: int = 3
) -> str:
    """`[[interface]] r22 (mfcd.d/50.conf:3): no such interface (yet); its settings apply
    when it appears`: the interfaces the config files set (Declarations.interfaces) that do
    not exist, so that a typo in a name is seen as in a route's; "" if none."""
    absent = [s for name, s in interfaces.items() if name not in links]
    if not absent:
        return ""
    some = ", ".join(f"{s.name} ({s.where})" for s in absent[:shown])
    some += f" and {len(absent) - shown} more" * (len(absent) > shown)
    if len(absent) == 1:
        return f"[[interface]] {some}: no such interface (yet); its settings apply when it appears"
    return f"[[interface]] {some}: no such interfaces (yet); their settings apply when they appear"


def _routes_and_templates(routes: int, templates: int) -> str:
    """`2 routes`, `1 template`, `1 route and 2 templates`: those that are not 0."""
    parts = [counted(n, noun) for n, noun in ((routes, "route"), (templates, "template")) if n]
    return " and ".join(parts)


def counted(n: int, thing: str) -> str:
    """`1 template`, `2 templates`: a count and its noun, singular or plural."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _declared(action: str, key: RouteKey, where: str | None, **more: Any) -> dict[str, Any]:
    family, source, group, table = key
    entry: dict[str, Any] = {"action": action, "family": FAMILY_NAMES[family]}
    entry.update(source=source, group=group, table=table, **more)
    if where is not None:
        entry["where"] = where
    return entry


def _setting_where(entry: dict[str, Any], declared: Any, name: str, which: str) -> dict[str, Any]:
    """A threshold or mrdisc step of the plan with the FILE:LINE of the `[[interface]]` that
    declares it (none for a setting the files no longer declare, as for a removed route,
    though the block may remain for the interface's other setting)."""
    setting = declared.interfaces.get(name)
    if setting is not None and getattr(setting, which) is not None:
        entry["where"] = setting.where
    return entry


def _counted(declared: Any, taken: int) -> dict[str, int]:
    """A declarations.Declared as counts, less the `taken` of those it adds (they take over
    api ones: counted in taken_over)."""
    return {
        "added": len(declared.added) - taken,
        "removed": len(declared.removed),
        "changed": len(declared.changed),
    }


def _template_plan(
    declared: Any, taken: Mapping[Any, tuple[str, ...] | None]
) -> list[dict[str, Any]]:
    """The plan's lines for templates (a declarations.Declared of Template); one that takes
    over api templates (`taken`: with the oifs of the one it takes over, None if several)
    is marked, with the api oifs as `was`."""
    plan = []
    for action, items in (
        ("add_template", declared.added),
        ("change_template", declared.changed),
        ("remove_template", declared.removed),
    ):
        for t in items:
            entry: dict[str, Any] = {"action": action, "family": FAMILY_NAMES[t.family]}
            entry.update(source=t.source, group=t.group, table=t.table, iif=t.iif)
            if action != "remove_template":
                entry.update(oifs=list(t.oifs), where=t.where)
            if t in taken:
                entry["taken_over"] = True
                was = taken[t]
                if was is not None:
                    entry["was"] = list(was)
            plan.append(entry)
    return plan


def _join_plan(declared: Any, taken: Collection[Any]) -> list[dict[str, Any]]:
    """The plan's lines for joins (a declarations.Declared of Join); one that takes over
    api joins (in `taken`) is marked."""
    plan = []
    for action, items in (("join", declared.added), ("leave", declared.removed)):
        for j in items:
            entry: dict[str, Any] = {"action": action, "interface": j.interface}
            entry.update(group=j.group, source=j.source or "*")
            if action == "join":
                entry["where"] = j.where
                if j in taken:
                    entry["taken_over"] = True
            plan.append(entry)
    return plan


# --- monitor -------------------------------------------------------------------------------------


def link_events(known: dict[str, int], links: Iterable[LinkChange]) -> list[dict[str, Any]]:
    """The monitor's `link` events of rtnetlink link events: `new` (an interface mfcd did not
    know under this name and index: created, or renamed to it), `change` (one it knew: the
    kernel says RTM_NEWLINK for each change of state, several as a veth is created and one as
    it is deleted) or `del`. A rename (a NEWLINK of a known index under another name) is
    told as routes see it: the old name `del` (`renamed_to`), then the new one `new`
    (`renamed_from`). `known`: the interfaces before these events (name -> ifindex)."""
    seen = dict(known)
    told: list[dict[str, Any]] = []
    for link in links:
        event = {"action": "new", "interface": link.name, "ifindex": link.ifindex, "up": link.up}
        if link.kind == "del":
            seen.pop(link.name, None)
            event["action"] = "del"
        elif seen.get(link.name) == link.ifindex:
            event["action"] = "change"
        else:
            old = renamed_from(seen, link.name, link.ifindex)
            if old is not None:
                del seen[old]
                told.append({**event, "action": "del", "interface": old, "renamed_to": link.name})
                event["renamed_from"] = old
            seen[link.name] = link.ifindex
        told.append(event)
    return told
