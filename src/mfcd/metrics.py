"""Prometheus metrics: the text exposition format, histograms and what mfcd exposes (no I/O).

The text format (version 0.0.4) is written here by hand rather than with prometheus_client
(see docs/metrics.md for why): a family is a `# HELP` and a `# TYPE` line followed by its
samples, `name{label="value",...} number`, one per line; every sample of a family comes
together. `exposition()` yields the page a slice at a time so that the HTTP shell
(metrics_server.py) can give the event loop a turn between slices: a page with per-route
series of 100,000 routes takes a few hundred milliseconds to build.

Kernel counters are read through a dataplane.CountersReader, as views.py does, exactly
once per route and VIF per page. Everything else comes from the model (routes by state
and origin), from counters the daemon keeps (upcalls, requests, state file syncs) and
from /proc values the shell reads (process metrics).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from mfcd.dataplane import UPCALL_KINDS, CountersReader, by_table
from mfcd.errors import KernelError
from mfcd.model import ORIGINS, Ports, RouteKey, Router
from mfcd.protocol import FAMILY_NAMES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CHUNK = 500  # routes read and formatted between two turns of the event loop
ROUTE_STATES = ("installed", "pending", "degraded")
# The origins of templates and joins: never learned (only routes are), so no series that
# could only be 0.
DECLARED_ORIGINS = ("api", "config")
# What happens to (S,G) entries learned from traffic, counted in Registry.entries.
ENTRY_EVENTS = {
    "learned": "(S,G) entries learned from traffic.",
    "expired": "Learned (S,G) entries removed after a time without traffic.",
    "dropped": "(S,G) entries that could not be learned (a limit, or the kernel refused).",
}
# What a drift check or sync repairs (Step.action): their series are on the page from the
# start, at 0, so that increase() sees the first repair. A route that a repair let in (a
# VIF removed that stood in its way) counts as its add_vif and add_mfc, as they come.
REPAIR_ACTIONS = ("del_mfc", "del_vif", "readd_mfc", "readd_vif", "reissue_mfc")
# Seconds: a request is handled in microseconds (ping) to seconds (a batch of 1,000,000).
REQUEST_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
REQUEST_BUCKETS += (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds: two fdatasync calls, from tens of microseconds (tmpfs) to seconds (a busy disk).
SYNC_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
SYNC_BUCKETS += (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# --- the text format ------------------------------------------------------------------------------


def escape(value: str) -> str:
    """A label value as the format writes it between double quotes."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: Iterable[tuple[str, object]]) -> str:
    """`{name="value",...}` ("" for no labels)."""
    text = ",".join(f'{name}="{escape(str(value))}"' for name, value in pairs)
    return f"{{{text}}}" if text else ""


def number(value: float) -> str:
    """A sample value: integers without a point, +Inf, -Inf and NaN as the format spells them."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def header(name: str, kind: str, help_text: str) -> str:
    """The `# HELP` and `# TYPE` lines that open a family."""
    help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> str:
    """A whole family: header and samples given as (rendered labels, value)."""
    lines = [f"{name}{lab} {number(value)}\n" for lab, value in samples]
    return header(name, kind, help_text) + "".join(lines)


# --- values kept between scrapes ------------------------------------------------------------------


class Histogram:
    """Observations counted in fixed buckets (upper bounds, seconds), with their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def samples(self, name: str, pairs: Sequence[tuple[str, object]] = ()) -> list[str]:
        """The `_bucket` (cumulative, with le="+Inf"), `_sum` and `_count` lines."""
        out = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            le = labels([*pairs, ("le", number(float(bound)))])
            out.append(f"{name}_bucket{le} {total}\n")
        lab = labels(pairs)
        out.append(f"{name}_sum{lab} {number(self.sum)}\n")
        out.append(f"{name}_count{lab} {total}\n")
        return out


@dataclass
class Registry:
    """What the daemon counts for its metrics between scrapes.

    Hooks for parts of mfcd that count things of their own: the learning of (S,G) entries
    adds to `entries` ("learned", "expired", "dropped"); templates and joins set
    `templates` and `joins` to functions returning their current counts, by (state,
    origin) and by origin (their families are left out of the page while a hook is None).
    """

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (command, result)
    request_seconds: dict[str, Histogram] = field(default_factory=dict)  # by command
    state_sync_seconds: Histogram = field(default_factory=lambda: Histogram(SYNC_BUCKETS))
    entries: Counter[str] = field(default_factory=Counter)
    templates: Callable[[], Mapping[tuple[str, str], int]] | None = None  # (state, origin)
    joins: Callable[[], Mapping[str, int]] | None = None
    # Config files a start left out for errors (an unreadable drop-in directory: one), until
    # a reload applies them.
    config_files_left_out: int = 0
    # Drift repairs by action, of every drift check and every sync that is not a dry run;
    # when the last of these finished (time.time()), and when the last repair was and its
    # counts (None: none since start).
    drift_repairs: Counter[str] = field(default_factory=Counter)
    drift_checked_at: float | None = None
    last_repairs: tuple[float, Counter[str]] | None = None

    def drift_checked(self, repairs: Iterable[Mapping[str, object]], now: float) -> Counter[str]:
        """A drift check (or sync) finished at `now` with these repairs (each with its
        `action`): counted; their counts by action returned."""
        counts = Counter(str(entry["action"]) for entry in repairs)
        self.drift_repairs.update(counts)
        self.drift_checked_at = now
        if counts:
            self.last_repairs = (now, counts)
        return counts

    def request(self, command: str, result: str, seconds: float) -> None:
        """One request handled: its command ("invalid" if it named none), its result ("ok"
        or the error code) and how long handling it took."""
        self.requests[(command, result)] += 1
        histogram = self.request_seconds.get(command)
        if histogram is None:
            histogram = self.request_seconds[command] = Histogram(REQUEST_BUCKETS)
        histogram.observe(seconds)


@dataclass(frozen=True, slots=True)
class Process:
    """The standard process metrics, as prometheus_client's ProcessCollector reads them."""

    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    start_time_seconds: float
    open_fds: int
    max_fds: int


def parse_process(stat: str, proc_stat: str, ticks: int, page_size: int) -> tuple[int, int, float]:
    """Resident and virtual memory (bytes) and start time (seconds since the epoch) from
    the texts of /proc/self/stat and /proc/stat (proc(5))."""
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    # fields[0] is field 3 (state): starttime is field 22, vsize 23, rss 24.
    start_ticks, vsize, rss = int(fields[19]), int(fields[20]), int(fields[21])
    boot = next(float(ln.split()[1]) for ln in proc_stat.splitlines() if ln.startswith("btime "))
    return rss * page_size, vsize, boot + start_ticks / ticks


@dataclass
class Sources:
    """Everything one page is made of; the daemon builds one per scrape."""

    router: Router
    counters: CountersReader
    registry: Registry
    upcalls: Mapping[str, int]
    version: str
    process: Process | None
    route_series_max: int  # routes with per-route series at most; 0: none


# --- the page -------------------------------------------------------------------------------------


def exposition(src: Sources, chunk: int = CHUNK) -> Iterator[str]:
    """The page, a slice at a time (an empty slice: a turn for the loop, nothing to send)."""
    yield _process(src) + _build_info(src.version)
    yield from _routes_by_state(src.router, src.registry, chunk)
    yield _activity(src)
    yield _vifs(src.router, src.counters)
    yield from _route_series(src, chunk)


def _build_info(version: str) -> str:
    return family(
        "mfcd_build_info",
        "gauge",
        "Always 1; the labels say which mfcd runs.",
        [(labels([("version", version)]), 1)],
    )


def _process(src: Sources) -> str:
    p = src.process
    if p is None:
        return ""
    return "".join(
        family(name, kind, text, [("", value)])
        for name, kind, text, value in (
            ("process_cpu_seconds_total", "counter", _CPU, p.cpu_seconds),
            ("process_resident_memory_bytes", "gauge", _RSS, p.resident_bytes),
            ("process_virtual_memory_bytes", "gauge", _VSZ, p.virtual_bytes),
            ("process_start_time_seconds", "gauge", _START, p.start_time_seconds),
            ("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds),
            ("process_max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds),
        )
    )


# The help texts of prometheus_client's ProcessCollector, so dashboards find what they expect.
_CPU = "Total user and system CPU time spent in seconds."
_RSS = "Resident memory size in bytes."
_VSZ = "Virtual memory size in bytes."
_START = "Start time of the process since unix epoch in seconds."


class _States:
    """The state of routes: pending (not installed, or installed with its iif gone),
    degraded (installed, an oif gone) or installed."""

    def __init__(self, router: Router) -> None:
        self.routes, self.installed, self.links = router.routes, router.installed, router.links
        # Ports -> the state of an installed route with them. Keyed by value, not id(): a
        # Placed made since may take a freed one's id between two slices of a scrape.
        self.seen: dict[Ports, str] = {}
        # Every VIF present: no installed route is degraded, and none needs a look.
        self.healthy = all(vif.ifindex is not None for vif in router.vifs.values())

    def installed_as(self, key: RouteKey) -> str:
        """The state of an installed route: installed, degraded (an oif gone) or pending
        (its iif gone: as a start without it leaves it); "" for any other key."""
        ports = self.routes.get(key)
        if ports is None or key not in self.installed:
            return ""
        state = self.seen.get(ports)
        if state is None:
            links = self.links
            if ports.iif not in links:
                state = "pending"
            elif any(n not in links for n in ports.oifs):
                state = "degraded"
            else:
                state = "installed"
            self.seen[ports] = state
        return state

    def of(self, key: RouteKey) -> str:
        if key not in self.installed:
            return "pending"
        return "installed" if self.healthy else self.installed_as(key)


def route_counts(router: Router, gone: Counter[str] | None = None) -> Counter[tuple[str, str]]:
    """Routes by (state, origin): installed, degraded (installed, an oif gone) or pending
    (not installed, or its iif gone); origin as model.Router.origins records it (absent:
    "api"). `gone`, if given, counts the installed routes with an interface gone by state
    (degraded, pending), as the caller counted them a slice at a time."""
    states = _States(router)
    routes, installed = router.routes, router.installed
    if gone is None:
        gone = Counter() if states.healthy else Counter(map(states.installed_as, list(installed)))
    counts: Counter[tuple[str, str]] = Counter()
    counts["pending", "api"] = len(routes) - len(installed) + gone["pending"]
    counts["degraded", "api"] = gone["degraded"]
    counts["installed", "api"] = len(installed) - gone["degraded"] - gone["pending"]
    for key, origin in router.origins.items():  # sparse: the routes not from the API
        if key in routes:
            where = states.of(key)
            counts[where, "api"] -= 1
            counts[where, origin] += 1
    for short in router.short:  # (few: wildcard routes short of the interfaces they match)
        if len(short) == 4 and short in routes and states.of(short) == "installed":
            origin = router.origin(short)
            counts["installed", origin] -= 1
            counts["degraded", origin] += 1
    return counts


def template_counts(router: Router) -> Counter[tuple[str, str]]:
    """Templates by (state, origin) (Router.template_origins holds those not from the
    API): a template pending or degraded shows, as a route does in mfcd_routes."""
    origin, status = router.template_origin, router.status
    return Counter((status(key).state, origin(key)) for key in router.templates)


def _routes_by_state(router: Router, registry: Registry, chunk: int) -> Iterator[str]:
    """mfcd_routes (and the hooks' counts). With an interface gone, finding the degraded
    routes (and those pending with their iif gone) takes a look at each installed route
    (about 1 to 3 µs each), so it is done ten slices' worth of routes at a time, with
    turns of the loop in between."""
    states = _States(router)
    gone: Counter[str] = Counter()
    if not states.healthy:
        keys = list(router.installed)
        step = 10 * chunk
        for start in range(0, len(keys), step):
            gone.update(map(states.installed_as, keys[start : start + step]))
            yield ""
    out = _by_state("mfcd_routes", "Routes", route_counts(router, gone), ORIGINS)
    if registry.templates is not None:
        templates = registry.templates()
        out += _by_state("mfcd_templates", "Route templates", templates, DECLARED_ORIGINS)
    if registry.joins is not None:
        by_origin = registry.joins()
        out += family(
            "mfcd_joins",
            "gauge",
            "Group joins (IGMP/MLD memberships) by origin (api, config).",
            [(labels([("origin", o)]), by_origin.get(o, 0)) for o in DECLARED_ORIGINS],
        )
    yield out


def _by_state(
    name: str, what: str, counts: Mapping[tuple[str, str], int], origins: tuple[str, ...]
) -> str:
    """A gauge family by state and origin (mfcd_routes, mfcd_templates), every pair listed."""
    return family(
        name,
        "gauge",
        f"{what} by state ({', '.join(ROUTE_STATES)}) and origin ({', '.join(origins)}).",
        [
            (labels([("state", state), ("origin", origin)]), counts.get((state, origin), 0))
            for state in ROUTE_STATES
            for origin in origins
        ],
    )


def _activity(src: Sources) -> str:
    registry = src.registry
    out = family(
        "mfcd_upcalls_total",
        "counter",
        "Messages from the kernel about packets with no entry (nocache), on the wrong"
        " interface (wrongvif) or for PIM registers (wholepkt).",
        [(labels([("kind", kind)]), src.upcalls.get(kind, 0)) for kind in UPCALL_KINDS],
    )
    out += family(
        "mfcd_requests_total",
        "counter",
        "Control socket requests by command and result (ok, or the error code).",
        [
            (labels([("command", cmd), ("result", result)]), n)
            for (cmd, result), n in sorted(registry.requests.items())
        ],
    )
    name = "mfcd_request_duration_seconds"
    out += header(name, "histogram", "Time taken to handle a control socket request.")
    for cmd, histogram in sorted(registry.request_seconds.items()):
        out += "".join(histogram.samples(name, [("command", cmd)]))
    out += family(
        "mfcd_config_files_left_out",
        "gauge",
        "Config files whose declarations mfcd left out at start for an error, a drop-in"
        ' directory it could not read counted as one (on_config_error = "skip_file"); 0 once'
        " a reload applies them all.",
        [("", registry.config_files_left_out)],
    )
    name = "mfcd_state_sync_duration_seconds"
    out += header(name, "histogram", "Time taken to write a change durably to the state file.")
    out += "".join(registry.state_sync_seconds.samples(name))
    for event, text in ENTRY_EVENTS.items():
        out += family(
            f"mfcd_{event}_entries_total", "counter", text, [("", registry.entries.get(event, 0))]
        )
    return out + _drift(registry)


def _drift(registry: Registry) -> str:
    repairs = {**dict.fromkeys(REPAIR_ACTIONS, 0), **registry.drift_repairs}
    out = family(
        "mfcd_drift_repairs_total",
        "counter",
        "Differences between the kernel's tables and the routes that drift checks and sync"
        " repaired, by the kernel operation that repaired them.",
        [(labels([("action", action)]), n) for action, n in sorted(repairs.items())],
    )
    checked = registry.drift_checked_at
    return out + family(
        "mfcd_drift_check_last_timestamp_seconds",
        "gauge",
        "When the last drift check or sync finished, in seconds since the epoch (no sample"
        " before the first).",
        [] if checked is None else [("", checked)],
    )


VIF_FAMILIES = (
    ("mfcd_vif_receive_packets_total", "Packets received on the VIF.", 0),
    ("mfcd_vif_transmit_packets_total", "Packets sent out of the VIF.", 1),
    ("mfcd_vif_receive_bytes_total", "Bytes received on the VIF.", 2),
    ("mfcd_vif_transmit_bytes_total", "Bytes sent out of the VIF.", 3),
)  # with the index of each in dataplane.VifCounters


def _vifs(router: Router, reader: CountersReader) -> str:
    per_table: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for vif in router.iter_vifs():
        if vif.ifindex is not None:  # the kernel removed the VIF of a gone interface
            per_table.setdefault((vif.family, vif.table), []).append((vif.vifi, vif.interface))
    rows: list[tuple[str, tuple[int, ...]]] = []
    for (fam, table), vifs in per_table.items():
        try:
            read = reader.counters(fam, table, vifs=[vifi for vifi, _ in vifs]).vifs
        except KernelError:
            continue
        for (vifi, name), counters in zip(vifs, read, strict=True):
            if counters is not None:
                pairs = (("table", table), ("family", FAMILY_NAMES[fam]), ("vif", vifi))
                rows.append((labels([*pairs, ("interface", name)]), counters))
    return "".join(
        family(name, "counter", text, [(lab, c[index]) for lab, c in rows])
        for name, text, index in VIF_FAMILIES
    )


ROUTE_FAMILIES = (
    ("mfcd_route_packets_total", "Packets forwarded by the route's kernel entry.", 0),
    ("mfcd_route_bytes_total", "Bytes forwarded by the route's kernel entry.", 1),
    (
        "mfcd_route_wrong_interface_packets_total",
        "Packets of the route's source and group that arrived on another interface than its iif.",
        2,
    ),
)  # with the index of each in dataplane.SgCounters


def _route_series(src: Sources, chunk: int) -> Iterator[str]:
    """Per-route series for every installed route, unless there are more than the limit
    (then none: a subset that changes as routes come and go would only mislead)."""
    keys = list(src.router.installed)
    over = len(keys) > src.route_series_max
    yield family(
        "mfcd_metrics_route_series_omitted",
        "gauge",
        "Installed routes whose per-route series are left out (metrics_route_series_max).",
        [("", len(keys) if over else 0)],
    )
    if over or not keys:
        return
    # Kept as strings and ints in flat lists, not a tuple per route: objects the cyclic GC
    # tracks, kept alive through the page, would bring on a full collection of every
    # route of the model (100 ms and more at 100,000 routes) in the middle of a slice.
    rows = _Rows()
    for start in range(0, len(keys), chunk):
        _read_routes(src.router, src.counters, keys[start : start + chunk], rows)
        yield ""
    for (name, text, _), values in zip(ROUTE_FAMILIES, rows.values, strict=True):
        yield header(name, "counter", text)
        for start in range(0, len(rows.labels), chunk):
            end = start + chunk
            yield "".join(
                f"{name}{lab} {n}\n"
                for lab, n in zip(rows.labels[start:end], values[start:end], strict=True)
            )


class _Rows:
    """The labels of each route read and its three counters (as ROUTE_FAMILIES lists them)."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.values: tuple[list[int], list[int], list[int]] = ([], [], [])


def _read_routes(
    router: Router, reader: CountersReader, keys: Sequence[RouteKey], rows: _Rows
) -> None:
    """Add the labels and counters of the routes still installed among `keys` to `rows`,
    one probe each."""
    routes, installed = router.routes, router.installed
    iif_text: dict[str, str] = {}
    add_label = rows.labels.append
    add_packets, add_bytes, add_wrong = (values.append for values in rows.values)
    for (fam, table), some in by_table(keys).items():
        try:
            read = reader.counters(fam, table, [(k[1], k[2]) for k in some]).entries
        except KernelError:  # a family disabled since: nothing of it is in the kernel
            continue
        head = f'{{table="{table}",family="{FAMILY_NAMES[fam]}",source="'
        for key, counters in zip(some, read, strict=True):
            ports = routes.get(key)
            if counters is None or ports is None or key not in installed:
                continue  # removed while the page was being built
            iif = iif_text.get(ports.iif)
            if iif is None:
                iif = iif_text[ports.iif] = escape(ports.iif)
            # Addresses are canonical text (digits, hex, dots, colons): nothing to escape.
            add_label(f'{head}{key[1]}",group="{key[2]}",iif="{iif}"}}')
            add_packets(counters[0])
            add_bytes(counters[1])
            add_wrong(counters[2])
