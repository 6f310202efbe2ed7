"""End to end: what must not grow with the number of changes or routes (notify, logs, drift)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd
from tests.netns.test_forwarding import FLOWS, add, received


@contextmanager
def running(
    lab: Lab, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[Mfcd, Path]]:
    """mfcd in the router namespace logging to a file (a pipe nobody reads would fill up
    and stop it); yields the daemon and its log file, and stops it by pid."""
    daemon = Mfcd(lab, tmp_path)
    log = tmp_path / f"mfcd-{time.monotonic_ns()}.log"
    config = ["--config", str(daemon.config_file)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.router, str(BIN / "mfcd"), *config, *args],
            stdout=subprocess.DEVNULL,
            stderr=out,
            text=True,
            env=env,
        )
    lab.processes.append(proc)
    daemon.proc = proc
    try:
        daemon.wait_ready()
        yield daemon, log
    finally:
        code, _, _ = lab.stop(proc)
        daemon.proc = None
        assert code == 0, log.read_text()[-2000:]


def requests(path: str, reqs: list[dict[str, Any]], timeout: float = 10) -> list[dict[str, Any]]:
    """Send requests one after the other on one connection; each response, in order."""
    out = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)  # a daemon stuck in a send answers nobody: fail, not hang
        sock.connect(path)
        stream = sock.makefile("rwb")
        for req in reqs:
            stream.write(json.dumps(req).encode() + b"\n")
            stream.flush()
            out.append(json.loads(stream.readline()))
    return out


def route_request(n: int, oifs: tuple[str, ...] = ("r1",)) -> dict[str, Any]:
    group = f"239.2.{n // 250}.{n % 250 + 1}"
    args = {"source": "198.18.0.2", "group": group, "iif": "r0", "oifs": list(oifs)}
    return {"v": 1, "id": n, "cmd": "mfc.add", "args": args}


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, dict[str, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    return sock, dict(os.environ, NOTIFY_SOCKET=path)


def test_a_notify_socket_nobody_reads_never_stops_the_daemon(lab: Lab, tmp_path: Path) -> None:
    # systemd busy or hung: its notify socket queue (10 datagrams) fills and stays full.
    sock, env = _notify_socket(tmp_path)
    with sock, running(lab, tmp_path, env=env) as (daemon, _):
        started = time.monotonic()
        answers = requests(daemon.socket, [route_request(n) for n in range(1000)])
        assert [a["id"] for a in answers if a["ok"]] == list(range(1000))
        assert time.monotonic() - started < 60
        assert daemon.ok("ping").startswith("mfcd")
        routes = daemon.show()["routes"]
        assert len(routes) == 1000 and {r["state"] for r in routes} == {"installed"}


def _drain(sock: socket.socket, seconds: float) -> list[str]:
    seen = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return seen


@contextmanager
def notified(lab: Lab, tmp_path: Path) -> Iterator[tuple[Mfcd, Path, socket.socket]]:
    """`running` with a notify socket the test reads, past the daemon's READY=1."""
    sock, env = _notify_socket(tmp_path)
    with sock, running(lab, tmp_path, env=env) as (daemon, log):
        assert any("READY=1" in m for m in _drain(sock, 0.5))
        yield daemon, log, sock


def test_status_is_sent_about_once_a_second_and_the_last_one_is_current(
    lab: Lab, tmp_path: Path
) -> None:
    with notified(lab, tmp_path) as (daemon, _, sock):
        started = time.monotonic()
        sent = 0
        status: list[str] = []
        while time.monotonic() - started < 2.5:  # changes as fast as they are answered
            requests(daemon.socket, [route_request(sent + n) for n in range(50)])
            sent += 50
            status += _drain(sock, 0.001)
        elapsed = time.monotonic() - started
        status += _drain(sock, 1.5)  # the latest status is due within a second
    assert sent >= 100
    # One at once, then one per second at most (and the queue would hold only 10).
    assert 2 <= len(status) <= elapsed + 2, status
    assert status[-1] == f"STATUS={sent} of {sent} routes installed, 0 pending"


def _batch(routes: int) -> str:
    lines = [
        f"mfc add --source 198.18.0.2 --group 239.3.{n // 250}.{n % 250 + 1} --iif r0 --oifs r1,r2"
        for n in range(routes)
    ]
    return "\n".join(lines) + "\n"


def _recreate_r1(lab: Lab, daemon: Mfcd) -> None:
    lab.del_router_link("r1")
    daemon.wait_state("239.3.0.1", "degraded")
    lab.add_receiver_link(1)
    daemon.wait_state("239.3.0.1", "installed")
    time.sleep(1.5)  # the drift check after the events, 1 s later


def test_an_interface_event_logs_one_summary_line_at_info_and_each_route_at_debug(
    lab: Lab, tmp_path: Path
) -> None:
    routes = 2000
    with running(lab, tmp_path, "--log-level", "info") as (daemon, log):
        daemon.ok("batch", "-", stdin=_batch(routes))
        _recreate_r1(lab, daemon)
    info = log.read_text().splitlines()
    about_r1 = [line for line in info if re.search(r"\br1\b", line)]
    assert len(about_r1) == 3, about_r1  # gone, up, drift check
    assert f"interface r1 gone: {routes} routes pending (their iif) or degraded" in about_r1[0]
    up = re.search(
        r"interface r1 up \(ifindex \d+\): (\d+) routes affected \(.*\) in [\d.]+ s", about_r1[1]
    )
    assert up is not None and int(up.group(1)) == routes, about_r1[1]
    assert f"drift check of routes on r1: {routes} entries checked" in about_r1[2]
    assert not any("reissue_mfc family=" in line for line in info)

    # At debug every step is there, one line each (the saved routes come back at start).
    with running(lab, tmp_path) as (daemon, log):
        _recreate_r1(lab, daemon)
    debug = log.read_text()
    assert debug.count("interface r1 up: action=reissue_mfc") == routes


DEL_MFC = """
import socket, struct
family, source, group = {family}, {source!r}, {group!r}
if family == 4:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    mfc = struct.pack("=4s4sH32s2xIIIi", socket.inet_aton(source), socket.inet_aton(group),
                      0, bytes(32), 0, 0, 0, 0)
    s.setsockopt(socket.IPPROTO_IP, 205, mfc)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    def sin6(a):
        addr = socket.inet_pton(socket.AF_INET6, a)
        return struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, addr, 0)
    mf6c = struct.pack("=28s28sH2x32s", sin6(source), sin6(group), 0, bytes(32))
    s.setsockopt(socket.IPPROTO_IPV6, 205, mf6c)
"""


def _delete_behind_the_back(lab: Lab, family: int, source: str, group: str) -> None:
    code = textwrap.dedent(DEL_MFC.format(family=family, source=source, group=group))
    done = lab.exec(lab.router, sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr


def _wait_for_entry(lab: Lab, family: int, key: tuple[str, str], timeout: float = 10) -> None:
    """Until the kernel has a resolved entry for `key` (an unresolved one, made by a packet
    that found none, has iif -1)."""
    deadline = time.monotonic() + timeout
    while kernel_tables.mfc(lab, family).get(key, (-1,))[0] < 0:
        assert time.monotonic() < deadline, f"{key} never came back"
        time.sleep(0.1)


@pytest.mark.parametrize("family", [4, 6])
def test_the_drift_check_after_an_interface_event_repairs_the_routes_on_it(
    lab: Lab, tmp_path: Path, family: int
) -> None:
    source, group = FLOWS[family]
    other = "239.1.1.2" if family == 4 else "ff3e::1:2"
    with running(lab, tmp_path) as (mfcd, log):
        add(mfcd, family, "r0", "r1", "r2")  # uses r2: checked after r2's event
        add(mfcd, family, "r0", "r3", group=other)  # does not: left alone
        for g in (group, other):
            _delete_behind_the_back(lab, family, source, g)
        assert kernel_tables.mfc(lab, family) == {}
        assert received(lab, family) == [0, 0, 0]  # (leaves unresolved entries behind)

        # r2 goes away: the kernel keeps the entries using it, so mfcd writes none of them,
        # but the check after the event probes each route on r2 and finds ours missing.
        lab.del_router_link("r2")
        _wait_for_entry(lab, family, (source, group))
        assert received(lab, family, group) == [5, 0, 0]
        assert (source, other) not in kernel_tables.mfc(lab, family)  # not on r2: not checked

        # `mfcctl sync` checks every route.
        assert "repaired" in mfcd.ok("sync")
        assert received(lab, family, other) == [0, 0, 5]
    assert re.search(
        r"WARNING: drift check of routes on r2: 1 entries checked.*reissue_mfc 1", log.read_text()
    )


def _declared(routes: int) -> str:
    return "".join(
        f'\n[[route]]\nsource = "198.18.0.2"\ngroup = "239.4.{n // 250}.{n % 250 + 1}"\n'
        f'iif = "r0"\noifs = ["r1"]\n'
        for n in range(routes)
    )


def test_a_stop_during_a_sighup_reload_ends_it_and_says_nothing_after_stopping(
    lab: Lab, tmp_path: Path
) -> None:
    # SIGHUP's reload runs in a task of its own. A stop must cancel it and wait for its
    # clean-up, not leave it to asyncio.run's final cancellation, which ran its `finally`
    # after STOPPING=1 and told systemd READY=1 about a daemon going away.
    with notified(lab, tmp_path) as (daemon, log, sock):
        settings = daemon.config_file.read_text()
        daemon.config_file.write_text(settings + _declared(40_000))  # a reload of seconds
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while not any("RELOADING=1" in m for m in seen) and time.monotonic() < deadline:
            seen += _drain(sock, 0.01)
        assert any("RELOADING=1" in m for m in seen), seen
        code, _, _ = lab.stop(daemon.proc)
        daemon.proc = None  # stopped here: running() must not stop it again
        seen += _drain(sock, 0.5)
        assert code == 0, log.read_text()[-2000:]
    stopping = next(i for i, m in enumerate(seen) if "STOPPING=1" in m)
    assert not any("READY=1" in m for m in seen[stopping:]), seen
    text = log.read_text()
    assert "Traceback" not in text and "never retrieved" not in text, text[-2000:]
