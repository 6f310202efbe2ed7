"""Tests for mfcd.metrics and the pure parts of mfcd.metrics_server: the exposition format,
what each metric counts, the per-route limit, and promtool's verdict on a whole page."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from mfcd import metrics
from mfcd.commands import Commands, Peer
from mfcd.config import listen_address, parse
from mfcd.controller import Controller
from mfcd.dataplane import Counters as Read
from mfcd.dataplane import SgCounters, VifCounters
from mfcd.errors import ConfigError
from mfcd.metrics import Histogram, Registry, Sources
from mfcd.metrics_server import HttpError, MetricsServer, Request, parse_head, read_process
from mfcd.model import AddRoute, AddTemplate, DelRoute, Ports, Route
from tests.unit.test_controller import LINKS, controller_with, r4


class Counted:
    """Counters as the kernel gives them, and every probe it was asked for."""

    def __init__(self) -> None:
        self.probes: Counter[tuple[str, str] | int] = Counter()

    def counters(
        self,
        family: int,
        table: int,
        entries: Iterable[tuple[str, str]] = (),
        vifs: Iterable[int] = (),
    ) -> Read:
        entries, vifs = list(entries), list(vifs)
        self.probes.update(entries)
        self.probes.update(vifs)
        return Read(
            [
                SgCounters(packets=int(re.split("[.:]", s)[-1], 16), bytes=100, wrong_if=3)
                for s, _ in entries
            ],
            [VifCounters(packets_in=v, packets_out=7, bytes_in=8, bytes_out=9) for v in vifs],
        )


def page(ctl: Controller, reader: object = None, limit: int = 10_000, **extra: object) -> str:
    src = Sources(
        router=ctl.router,
        counters=reader or Counted(),  # type: ignore[arg-type]
        registry=extra.pop("registry", Registry()),  # type: ignore[arg-type]
        upcalls=Counter(nocache=4),
        version="1.2.3",
        process=metrics.Process(1.5, 4096, 8192, 1700000000.25, 9, 1024),
        route_series_max=limit,
    )
    return "".join(metrics.exposition(src, chunk=2))


def samples(text: str, name: str) -> dict[str, str]:
    """The samples of `name`: labels text -> value."""
    return dict(re.findall(rf"^{name}(\{{.*\}}|) (\S+)$", text, re.M))


@pytest.fixture
def ctl() -> Controller:
    ctl = controller_with(*LINKS)
    ctl.change([AddRoute.of(r4(n, "a", "b")) for n in (1, 2, 3)])
    return ctl


# --- the format -----------------------------------------------------------------------------------


def test_label_values_escape_backslash_quote_and_newline() -> None:
    assert metrics.labels([("i", 'a"b\\c\nd')]) == '{i="a\\"b\\\\c\\nd"}'
    assert metrics.labels([]) == ""


def test_numbers_are_written_as_the_format_spells_them() -> None:
    assert [metrics.number(v) for v in (3, 0.5, float("inf"), float("-inf"))] == [
        "3",
        "0.5",
        "+Inf",
        "-Inf",
    ]
    assert metrics.number(float("nan")) == "NaN"


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    h = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 7.0):
        h.observe(value)
    assert h.samples("x", [("command", "ping")]) == [
        'x_bucket{command="ping",le="0.1"} 2\n',  # le: less than or equal
        'x_bucket{command="ping",le="1.0"} 3\n',
        'x_bucket{command="ping",le="+Inf"} 4\n',
        'x_sum{command="ping"} 7.65\n',
        'x_count{command="ping"} 4\n',
    ]


# --- what is counted ------------------------------------------------------------------------------


def test_each_route_and_vif_is_read_once_and_shown_with_its_labels(ctl: Controller) -> None:
    reader = Counted()
    text = page(ctl, reader)
    assert set(reader.probes.values()) == {1}  # every route and VIF probed exactly once
    assert len(reader.probes) == 3 + 2
    packets = samples(text, "mfcd_route_packets_total")
    label = '{table="253",family="ipv4",source="10.0.0.2",group="239.1.1.1",iif="a"}'
    assert packets[label] == "2"
    assert len(packets) == 3
    assert samples(text, "mfcd_route_wrong_interface_packets_total")[label] == "3"
    vif = samples(text, "mfcd_vif_receive_packets_total")
    assert vif == {
        '{table="253",family="ipv4",vif="0",interface="a"}': "0",
        '{table="253",family="ipv4",vif="1",interface="b"}': "1",
    }
    assert (
        samples(text, "mfcd_vif_transmit_bytes_total")[
            '{table="253",family="ipv4",vif="1",interface="b"}'
        ]
        == "9"
    )
    assert samples(text, "mfcd_metrics_route_series_omitted") == {"": "0"}


def test_over_the_limit_no_route_has_series_and_the_page_says_how_many(ctl: Controller) -> None:
    text = page(ctl, limit=2)
    assert "mfcd_route_packets_total" not in text
    assert samples(text, "mfcd_metrics_route_series_omitted") == {"": "3"}
    assert "mfcd_vif_receive_packets_total{" in text  # VIFs are few: always there
    assert "mfcd_route_packets_total{" not in page(ctl, limit=0)
    assert "mfcd_route_packets_total{" in page(ctl, limit=3)


def test_routes_are_counted_by_state_and_origin() -> None:
    ctl = controller_with(*LINKS)
    ctl.change([AddRoute.of(r4(n, "a", "b")) for n in (1, 2, 3)])
    ctl.change([AddRoute.of(r4(4, "c", "d")), AddRoute.of(r4(5, "missing", "a"))])
    ctl.router.origins[r4(2, "a", "b").key] = "config"
    ctl.router.origins[r4(5, "a", "x").key] = "learned"
    ctl.link_event("del", "d", LINKS["d"])  # route 4 degraded
    counts = metrics.route_counts(ctl.router)
    assert +counts == {
        ("installed", "api"): 2,
        ("installed", "config"): 1,
        ("degraded", "api"): 1,
        ("pending", "learned"): 1,
    }
    text = page(ctl)
    routes = samples(text, "mfcd_routes")
    assert len(routes) == 9  # every state and origin, zeros included
    assert routes['{state="pending",origin="learned"}'] == "1"
    assert routes['{state="degraded",origin="api"}'] == "1"  # (counted a slice at a time)
    assert routes['{state="installed",origin="config"}'] == "1"
    assert routes['{state="pending",origin="api"}'] == "0"
    # A degraded route still has its kernel entry and its series; a pending one has neither.
    assert len(samples(text, "mfcd_route_packets_total")) == 4


def test_a_route_whose_iif_is_deleted_is_counted_pending_as_after_a_restart() -> None:
    """Its entry stays in the kernel (idle), but its state is pending, as a start without
    the iif leaves it: the scrape, counting a slice at a time, says so too."""
    ctl = controller_with(*LINKS)
    ctl.change(
        [AddRoute.of(r4(1, "a", "b")), AddRoute.of(r4(2, "c", "a")), AddRoute.of(r4(3, "b", "c"))]
    )
    ctl.link_event("del", "c", LINKS["c"])  # route 2 pending (its iif), route 3 degraded
    counts = metrics.route_counts(ctl.router)
    assert +counts == {("installed", "api"): 1, ("pending", "api"): 1, ("degraded", "api"): 1}
    routes = samples(page(ctl), "mfcd_routes")
    assert routes['{state="pending",origin="api"}'] == "1"
    assert routes['{state="degraded",origin="api"}'] == "1"
    assert routes['{state="installed",origin="api"}'] == "1"


def test_requests_are_counted_by_command_and_result_with_their_latency(ctl: Controller) -> None:
    commands = Commands(ctl, (4, 6))
    peer = Peer(1, 0, 0)
    commands.handle(b'{"v":1,"cmd":"ping"}\n', peer)
    commands.handle(b'{"v":1,"cmd":"ping"}\n', peer)
    commands.handle(
        b'{"v":1,"cmd":"mfc.del","args":{"source":"10.9.9.9","group":"239.1.1.1"}}\n', peer
    )
    commands.handle(b"not json\n", peer)
    registry = commands.registry
    assert registry.requests == Counter(
        {("ping", "ok"): 2, ("mfc.del", "not_found"): 1, ("invalid", "bad_request"): 1}
    )
    assert registry.request_seconds["ping"].count == 2
    text = page(ctl, registry=registry)
    assert samples(text, "mfcd_requests_total")['{command="mfc.del",result="not_found"}'] == "1"
    assert samples(text, "mfcd_request_duration_seconds_count")['{command="ping"}'] == "2"


def test_hooks_of_other_parts_appear_only_once_set(ctl: Controller) -> None:
    registry = Registry()
    assert "mfcd_templates" not in page(ctl, registry=registry)
    registry.templates = lambda: {("installed", "config"): 2, ("pending", "api"): 1}
    registry.joins = lambda: {"api": 1}
    registry.entries["learned"] += 5
    text = page(ctl, registry=registry)
    # (by state, as mfcd_routes; never learned: templates and joins cannot be, trial 14 F10)
    assert samples(text, "mfcd_templates") == {
        f'{{state="{state}",origin="{origin}"}}': str(
            {("installed", "config"): 2, ("pending", "api"): 1}.get((state, origin), 0)
        )
        for state in ("installed", "pending", "degraded")
        for origin in ("api", "config")
    }
    assert samples(text, "mfcd_joins") == {'{origin="api"}': "1", '{origin="config"}': "0"}
    assert samples(text, "mfcd_learned_entries_total") == {"": "5"}
    assert samples(text, "mfcd_upcalls_total")['{kind="nocache"}'] == "4"


def test_config_files_left_out_at_start_are_a_gauge(ctl: Controller) -> None:
    assert samples(page(ctl), "mfcd_config_files_left_out") == {"": "0"}
    registry = Registry(config_files_left_out=2)
    assert samples(page(ctl, registry=registry), "mfcd_config_files_left_out") == {"": "2"}


def test_drift_repairs_are_counted_by_action_and_the_last_check_is_a_timestamp(
    ctl: Controller,
) -> None:
    registry = Registry()
    text = page(ctl, registry=registry)
    # Every repair action from the start, at 0; no timestamp before the first check.
    assert samples(text, "mfcd_drift_repairs_total") == {
        f'{{action="{action}"}}': "0" for action in metrics.REPAIR_ACTIONS
    }
    assert "# TYPE mfcd_drift_check_last_timestamp_seconds gauge" in text
    assert samples(text, "mfcd_drift_check_last_timestamp_seconds") == {}
    repairs = [{"action": "reissue_mfc"}, {"action": "readd_vif"}, {"action": "reissue_mfc"}]
    assert registry.drift_checked(repairs, 1800000000.5) == {"reissue_mfc": 2, "readd_vif": 1}
    assert registry.drift_checked([{"action": "add_mfc"}], 1800000300.0) == {"add_mfc": 1}
    assert registry.drift_checked([], 1800000600.0) == {}  # a check that found nothing
    text = page(ctl, registry=registry)
    counted = samples(text, "mfcd_drift_repairs_total")
    assert counted['{action="reissue_mfc"}'] == "2"
    assert counted['{action="readd_vif"}'] == "1"
    assert counted['{action="add_mfc"}'] == "1"  # one not foreseen comes as it is counted
    assert counted['{action="del_mfc"}'] == "0"
    assert samples(text, "mfcd_drift_check_last_timestamp_seconds") == {"": "1800000600.0"}
    assert registry.last_repairs == (1800000300.0, {"add_mfc": 1})  # the last that repaired


def test_a_route_removed_while_the_page_is_built_is_left_out(ctl: Controller) -> None:
    src = Sources(ctl.router, Counted(), Registry(), Counter(), "1", None, 10)
    parts = metrics.exposition(src, chunk=1)
    text = ""
    for part in parts:
        text += part
        if "mfcd_metrics_route_series_omitted" in part:
            ctl.change([DelRoute(r4(2, "a", "b").key)])
    shown = samples(text, "mfcd_route_packets_total")
    assert len(shown) == 2 and not any('"10.0.0.2"' in k for k in shown)


def test_process_metrics_are_parsed_from_proc() -> None:
    stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 0 250 1048576 10 rest\n"
    rss, vsize, started = metrics.parse_process(stat, "cpu 1 2\nbtime 1000\n", 100, 4096)
    assert (rss, vsize, started) == (40960, 1048576, 1002.5)


def test_templates_are_counted_by_state_so_a_pending_one_shows() -> None:
    """Trial 14 F10: a template waiting for its iif (or degraded for want of an oif) shows
    in mfcd_templates, by state as routes are in mfcd_routes."""
    ctl = controller_with("a", "b")
    ctl.change(
        [
            AddTemplate((4, "*", "239.1.0.0/16", 253, "a"), Ports("a", ("b",))),
            AddTemplate((4, "*", "239.2.0.0/16", 253, "x"), Ports("x", ("b",))),
            AddTemplate((4, "*", "239.3.0.0/16", 253, "a"), Ports("a", ("b", "y"))),
        ]
    )
    registry = Registry(templates=lambda: metrics.template_counts(ctl.router))
    got = samples(page(ctl, registry=registry), "mfcd_templates")
    assert {k: v for k, v in got.items() if v != "0"} == {
        '{state="installed",origin="api"}': "1",
        '{state="pending",origin="api"}': "1",
        '{state="degraded",origin="api"}': "1",
    }


# --- promtool -------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The path of promtool or prometheus (Debian package prometheus): a test without it is
    skipped, except in CI, where it fails."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: install the Debian package prometheus")
        pytest.skip(f"{name} is not installed (Debian package prometheus)")
    return found


def test_promtool_accepts_a_whole_page(ctl: Controller, tmp_path: Path) -> None:
    ctl.change([AddRoute.of(Route(6, "2001:db8::1", "ff3e::1", "c", ("d",), 254))])
    ctl.link_up('we"ird\\', 9)
    ctl.change([AddRoute.of(r4(9, 'we"ird\\', "a"))])
    registry = Registry()
    registry.request("ping", "ok", 0.001)
    registry.request("batch", "invalid_argument", 2.0)
    registry.state_sync_seconds.observe(0.003)
    registry.templates = lambda: {("degraded", "config"): 1}
    registry.drift_checked([{"action": "reissue_mfc"}], 1800000000.25)
    text = page(ctl, registry=registry)
    assert '"we\\"ird\\\\"' in text
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the HTTP request and the setting -------------------------------------------------------------


def test_only_get_and_head_of_metrics_are_served() -> None:
    assert parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == Request(False, True, False)
    assert parse_head(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n") == Request(True, False, False)
    for head, status in (
        (b"GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics\r\n\r\n", "400 Bad Request"),
        (b"GET /m\xe9trics HTTP/1.1\r\n\r\n", "400 Bad Request"),
    ):
        with pytest.raises(HttpError) as e:
            parse_head(head)
        assert e.value.status == status


@pytest.mark.parametrize(
    ("accept", "gzip"),
    [
        ("Accept-Encoding: gzip", True),
        ("accept-encoding: identity, GZIP;q=0.5", True),
        ("Accept-Encoding: deflate, gzip;q=0", False),
        ("Accept-Encoding: gzip;q=0.000", False),
        ("Accept-Encoding: x-gzip", False),
        ("X-Accept-Encoding: gzip", False),
    ],
)
def test_gzip_is_used_when_the_client_takes_it(accept: str, gzip: bool) -> None:
    head = f"GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n\r\n".encode()
    assert parse_head(head).gzip is gzip


def test_metrics_listen_takes_an_ip_literal_and_a_port() -> None:
    assert listen_address("127.0.0.1:10040") == ("127.0.0.1", 10040)
    assert listen_address("[::1]:10040") == ("::1", 10040)
    assert listen_address("[2001:db8::1]:1") == ("2001:db8::1", 1)
    for bad in (
        "localhost:10040",
        "127.0.0.1",
        "::1:10040",
        "[127.0.0.1]:1",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:+1",
        ":10040",
    ):
        with pytest.raises(ConfigError, match="not an address and port"):
            listen_address(bad)


# --- the HTTP shell, on the loopback of the test's own network -----------------------------------


def test_process_metrics_of_this_process_are_read_from_proc() -> None:
    process = read_process()
    assert process is not None
    assert process.resident_bytes > 1_000_000 and process.virtual_bytes > process.resident_bytes
    assert 0 < process.open_fds <= process.max_fds
    assert time.time() - 86_400 * 30 < process.start_time_seconds <= time.time()
    assert process.cpu_seconds > 0


@pytest.mark.parametrize("gzip", [False, True])
def test_a_scrape_lets_other_tasks_run_between_its_slices(ctl: Controller, gzip: bool) -> None:
    """The page goes out chunked (gzipped if asked), whole, and while it is built the loop
    runs other tasks: a ticker task advances between slices (one tick per slice at least)."""
    ctl.change([AddRoute.of(r4(n, "a", "b")) for n in range(10, 250)])

    async def scrape() -> tuple[bytes, int]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        src = Sources(ctl.router, Counted(), Registry(), Counter(), "1", None, 10_000)
        server = MetricsServer(lambda: src, chunk=10)
        await server.start(sock)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        accept = b"Accept-Encoding: gzip\r\n" if gzip else b""
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n%s\r\n" % accept)
        response = await reader.read()
        seen = ticks
        ticking.cancel()
        writer.close()
        await server.stop()
        return response, seen

    response, ticks = asyncio.run(scrape())
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head
    assert (b"Content-Encoding: gzip" in head) is gzip
    data, slices = dechunk(body)
    text = (zlib.decompress(data, 31) if gzip else data).decode()
    # The route series went out 10 routes at a time (compressed, fewer bytes, as often).
    assert slices > (1 if gzip else 3 * 243 / 10)
    assert ticks >= slices
    assert len(samples(text, "mfcd_route_packets_total")) == 243
    promtool = [tool("promtool"), "check", "metrics"]
    result = subprocess.run(promtool, input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def dechunk(body: bytes) -> tuple[bytes, int]:
    """The data of a chunked body, and how many chunks it came in."""
    out, count = b"", 0
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"
            return out, count
        out += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
        count += 1


def test_the_metrics_settings_are_checked_when_the_file_is_read() -> None:
    cfg = parse('metrics_listen = "[::1]:10040"\nmetrics_route_series_max = 0\n', "f.conf")
    assert (cfg.metrics_listen, cfg.metrics_route_series_max) == ("[::1]:10040", 0)
    assert parse("", "f.conf").metrics_listen == ""  # off by default
    with pytest.raises(ConfigError, match=r"^f\.conf: metrics_listen: 'localhost:1' is not"):
        parse('metrics_listen = "localhost:1"\n', "f.conf")
    with pytest.raises(ConfigError, match="metrics_route_series_max must be between 0 and"):
        parse("metrics_route_series_max = -1\n", "f.conf")
