"""End to end: mfcd's /metrics endpoint in the router namespace, read by a real Prometheus.

promtool and prometheus come from the Debian package prometheus (.ci/apt-packages); without
them these tests are skipped, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, route_args
from tests.unit.test_metrics import tool

PORT = 10040  # mfcd's port in the docs' examples
SOURCE, GROUP = "198.18.0.2", "239.1.1.1"

# Run in the router namespace: one HTTP request, its status, headers and body as JSON.
FETCH = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], method=sys.argv[2])
try:
    with urllib.request.urlopen(request, timeout=20) as r:
        out = {"status": r.status, "headers": dict(r.headers), "body": r.read().decode()}
except urllib.error.HTTPError as e:
    out = {"status": e.code, "headers": dict(e.headers), "body": e.read().decode()}
print(json.dumps(out))
"""


def fetch(lab: Lab, url: str, method: str = "GET") -> dict[str, Any]:
    result = lab.exec(lab.router, sys.executable, "-c", FETCH, url, method)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


@pytest.fixture
def daemons(lab: Lab, tmp_path: Path) -> Iterator[list[Mfcd]]:
    """The mfcds a test starts (each stopped at the end, however the test ends)."""
    started: list[Mfcd] = []
    try:
        yield started
    finally:
        for mfcd in started:
            if mfcd.proc is not None:
                mfcd.stop()


def start(lab: Lab, tmp_path: Path, daemons: list[Mfcd], listen: str) -> Mfcd:
    """mfcd in the router namespace with metrics on `listen`."""
    mfcd = Mfcd(lab, tmp_path, config=f'metrics_listen = "{listen}"\n')
    daemons.append(mfcd)
    mfcd.start()
    return mfcd


def test_metrics_page_is_served_and_promtool_accepts_it(
    lab: Lab, tmp_path: Path, daemons: list[Mfcd]
) -> None:
    daemon = start(lab, tmp_path, daemons, f"127.0.0.1:{PORT}")
    daemon.ok(*route_args(SOURCE, GROUP, "r0", "r1,r2"))
    assert lab.probe(GROUP)[lab.rx[0]] == 5
    url = f"http://127.0.0.1:{PORT}/metrics"
    answer = fetch(lab, url)
    assert answer["status"] == 200
    assert answer["headers"]["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    body = answer["body"]
    label = f'{{table="253",family="ipv4",source="{SOURCE}",group="{GROUP}",iif="r0"}}'
    assert f"mfcd_route_packets_total{label} 5\n" in body
    assert 'mfcd_routes{state="installed",origin="api"} 1\n' in body
    assert (
        'mfcd_vif_transmit_packets_total{table="253",family="ipv4",vif="1",interface="r1"} 5\n'
        in body
    )
    assert 'mfcd_requests_total{command="mfc.add",result="ok"} 1\n' in body
    assert "mfcd_state_sync_duration_seconds_count 1\n" in body  # the route's journal record
    assert "\nprocess_resident_memory_bytes " in body
    checked = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert fetch(lab, url, "HEAD") | {"headers": None} == {
        "status": 200,
        "headers": None,
        "body": "",
    }
    assert fetch(lab, f"http://127.0.0.1:{PORT}/")["status"] == 404
    assert fetch(lab, url, "POST")["status"] == 405
    daemon.ok("ping")  # and mfcd goes on serving its clients


# Run in the router namespace: send argv[2] to port argv[1] as it is, print the status line.
RAW = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20) as s:
    s.sendall(sys.argv[2].encode())
    print(s.makefile("rb").readline().decode().strip())
"""


def test_a_bad_request_gets_its_error_and_a_reload_turns_route_series_off(
    lab: Lab, tmp_path: Path, daemons: list[Mfcd]
) -> None:
    daemon = start(lab, tmp_path, daemons, f"127.0.0.1:{PORT}")
    daemon.ok(*route_args(SOURCE, GROUP, "r0", "r1"))
    for request, status in (
        ("GET /metrics HTTP/1.1\r\nX: " + "x" * 9000 + "\r\n\r\n", "400 Bad Request"),
        ("GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
        ("DELETE /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
    ):
        sent = lab.exec(lab.router, sys.executable, "-c", RAW, str(PORT), request)
        assert sent.stdout.strip() == f"HTTP/1.1 {status}", sent.stderr
    url = f"http://127.0.0.1:{PORT}/metrics"
    assert "mfcd_metrics_route_series_omitted 0\n" in fetch(lab, url)["body"]
    with daemon.config_file.open("a") as f:
        f.write("metrics_route_series_max = 0\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "mfcd_metrics_route_series_omitted 1\n" not in (body := fetch(lab, url)["body"]):
        assert time.monotonic() < deadline, "the reload did not apply metrics_route_series_max"
        time.sleep(0.1)
    assert "mfcd_route_packets_total{" not in body
    assert 'mfcd_routes{state="installed",origin="api"} 1\n' in body


def test_a_port_in_use_stops_mfcd_at_start_with_one_line(
    lab: Lab, tmp_path: Path, daemons: list[Mfcd]
) -> None:
    holder = lab.spawn(lab.router, sys.executable, "-c", _HOLD_PORT, str(PORT))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        message = f"ERROR: cannot serve metrics on 127.0.0.1:{PORT}: Address already in use;"
        with pytest.raises(RuntimeError, match=rf"(?s)exited with 1: .*{re.escape(message)}"):
            start(lab, tmp_path, daemons, f"127.0.0.1:{PORT}")
    finally:
        lab.stop(holder)


_HOLD_PORT = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
time.sleep(60)
"""


def test_prometheus_scrapes_the_packet_counter_of_a_route(
    lab: Lab, tmp_path: Path, daemons: list[Mfcd]
) -> None:
    """A real Prometheus in the router namespace scrapes mfcd every second (over IPv6) and
    sees the packets of a route's real traffic."""
    daemon = start(lab, tmp_path, daemons, f"[::1]:{PORT}")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: mfcd\n"
        f"    static_configs:\n      - targets: ['[::1]:{PORT}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [
            "ip", "netns", "exec", lab.router, tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            "--web.listen-address=127.0.0.1:9090",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        daemon.ok(*route_args(SOURCE, GROUP, "r0", "r1"))
        query = f'mfcd_route_packets_total{{source="{SOURCE}",group="{GROUP}",iif="r0"}}'
        deadline = time.monotonic() + 60
        value = 0.0
        while time.monotonic() < deadline and value <= 0:
            lab.probe(GROUP, count=3)  # real traffic through the route
            value = _query(lab, query)
        assert value > 0, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert _query(lab, 'up{job="mfcd"}') == 1
        # Prometheus asks for gzip, and got it: mfcd logs each page's size and bytes sent.
        _, mfcd_log = daemon.stop()
        pages = re.findall(r"metrics: ([0-9]+) bytes \(([0-9]+) sent\)", mfcd_log)
        assert pages and all(int(sent) < int(size) / 3 for size, sent in pages), pages
    finally:
        os.kill(prometheus.pid, signal.SIGTERM)
        try:
            prometheus.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(prometheus.pid, signal.SIGKILL)
            prometheus.wait()
        log.close()


def _query(lab: Lab, expr: str) -> float:
    """The value of an instant query to the Prometheus in the router namespace (0: none)."""
    url = "http://127.0.0.1:9090/api/v1/query?query=" + quote(expr, safe="")
    try:
        answer = fetch(lab, url)
    except AssertionError:  # not listening yet
        return 0.0
    if answer["status"] != 200:
        return 0.0
    result = json.loads(answer["body"])["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_learned_and_expired_entries_are_counted_after_real_traffic(
    lab: Lab, tmp_path: Path, daemons: list[Mfcd]
) -> None:
    config = f'metrics_listen = "127.0.0.1:{PORT}"\nlearned_idle_timeout = 1.0\n'
    daemon = Mfcd(lab, tmp_path, config=config)
    daemons.append(daemon)
    daemon.start()
    daemon.ok("mfc", "add", "--group", "239.1.0.0/16", "--iif", "r0", "--oifs", "r1")
    url = f"http://127.0.0.1:{PORT}/metrics"

    def values() -> dict[str, str]:
        body = fetch(lab, url)["body"]
        return dict(re.findall(r"^(mfcd_\w+(?:\{[^}]*\})?) (\S+)$", body, re.M))

    before = values()
    assert before["mfcd_learned_entries_total"] == "0"
    assert before['mfcd_templates{state="installed",origin="api"}'] == "1"
    assert lab.probe(GROUP)[lab.rx[0]] == 5  # from a source no route names
    learned = values()
    assert learned["mfcd_learned_entries_total"] == "1"
    assert learned['mfcd_routes{state="installed",origin="learned"}'] == "1"
    label = f'{{table="253",family="ipv4",source="{SOURCE}",group="{GROUP}",iif="r0"}}'
    assert learned[f"mfcd_route_packets_total{label}"] == "5"
    deadline = time.monotonic() + 10
    while values()["mfcd_expired_entries_total"] != "1":  # idle for a second: expired
        assert time.monotonic() < deadline, "the learned entry did not expire"
        time.sleep(0.2)
    expired = values()
    assert expired['mfcd_routes{state="installed",origin="learned"}'] == "0"
    assert expired["mfcd_learned_entries_total"] == "1"
    assert expired["mfcd_dropped_entries_total"] == "0"
