"""Tests for mfcctl diagnose and monitor: the request sent, the checklist and event lines, the
exit status."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfcd import cli, protocol
from tests.unit.test_cli import FakeDaemon, run_cli

ROUTE = {
    "kind": "route",
    "family": "ipv4",
    "table": 253,
    "source": "198.18.0.2",
    "group": "239.1.1.1",
    "iif": "r0",
    "oifs": ["r1", "r2"],
    "state": "installed",
    "origin": "api",
}
KEY = {k: v for k, v in ROUTE.items() if k in ("family", "table", "source", "group")}
TEMPLATE = {"source": "*", "group": "239.1.0.0/16", "iif": "r0"}
RESULT = {
    "group": "239.1.1.1",
    "source": "198.18.0.2",
    "table": 253,
    "seconds": 2.0,
    "verdict": "failed",
    "flows": [
        {
            "route": ROUTE,
            "verdict": "failed",
            "checks": [
                {"check": "route", "status": "passed", "detail": "route ... matches"},
                {
                    "check": "ttl",
                    "status": "failed",
                    "detail": "packets arrive with TTL 1",
                    "fix": "make the sender use TTL >= 2",
                },
                {"check": "arrival", "status": "unknown", "detail": "could not sample"},
            ],
        }
    ],
}


def test_the_checklist_marks_each_check_and_puts_the_fix_under_a_failure() -> None:
    lines = cli.format_diagnosis(RESULT).splitlines()
    assert lines[0] == "198.18.0.2 -> 239.1.1.1 iif r0 oifs r1,r2 (installed)"
    assert lines[1].split()[:2] == ["ok", "route"]
    assert lines[2].split()[:2] == ["FAIL", "ttl"]
    assert lines[3].strip() == "-> make the sender use TTL >= 2"
    assert lines[4].split()[:2] == ["??", "arrival"]
    assert lines[-1] == "verdict: failed (sampled 2.0 s)"


def test_a_template_flow_names_its_template_and_whether_an_entry_is_learned() -> None:
    route = {**ROUTE, "kind": "template", "template": {"source": "*", "group": "239.1.0.0/16"}}
    for learned, words in ((False, "nothing learned yet from"), (True, "learned from")):
        flow = {"route": {**route, "learned": learned}, "verdict": "ok", "checks": []}
        head = cli.format_diagnosis({**RESULT, "flows": [flow]}).splitlines()[0]
        assert head == (
            f"198.18.0.2 -> 239.1.1.1 iif r0 oifs r1,r2 (installed), {words} template"
            " * -> 239.1.0.0/16"
        )


@pytest.fixture
def diagnosed(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(tmp_path / "mfcd.sock", {"ok": True, "result": RESULT})
    yield fake
    fake.close()


def test_diagnose_sends_its_arguments_and_fails_with_status_8(diagnosed: FakeDaemon) -> None:
    status, out, _ = run_cli(
        "--socket",
        str(diagnosed.path),
        "diagnose",
        "--group",
        "239.1.1.1",
        "--source",
        "198.18.0.2",
        "--table",
        "7",
        "--seconds",
        "0.5",
        "-o",
        "json",
    )
    assert status == protocol.EXIT_CHECK_FAILED == 8
    assert json.loads(out) == RESULT
    request = diagnosed.requests[0]
    assert request["cmd"] == "diagnose"
    assert request["args"] == {
        "group": "239.1.1.1",
        "source": "198.18.0.2",
        "table": 7,
        "seconds": 0.5,
    }


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (
            {**ROUTE, "event": "route.add", "state": "pending"},
            "route.add ipv4 198.18.0.2 -> 239.1.1.1 iif r0 oifs r1,r2 (pending)",
        ),
        (
            {
                "event": "route.del",
                "family": "ipv6",
                "table": 7,
                "source": "2001:db8::2",
                "group": "ff3e::1",
                "origin": "config",
            },
            "route.del ipv6 2001:db8::2 -> ff3e::1 table 7 [config]",
        ),
        (
            {**KEY, "event": "route.state", "state": "installed", "reason": ""},
            "route.state ipv4 198.18.0.2 -> 239.1.1.1 (installed)",
        ),
        (
            {**KEY, "event": "route.state", "state": "degraded", "reason": "waiting for r2"},
            "route.state ipv4 198.18.0.2 -> 239.1.1.1 (degraded: waiting for r2)",
        ),
        (
            {
                "event": "template.state",
                "family": "ipv4",
                "table": 253,
                "source": "*",
                "group": "239.2.0.0/24",
                "iif": "r1",
                "state": "installed",
                "reason": "",
            },
            "template.state ipv4 * -> 239.2.0.0/24 iif r1 (installed)",
        ),
        (
            {"event": "link", "action": "del", "interface": "r3", "ifindex": 9, "up": False},
            "link del r3 (ifindex 9)",
        ),
        (
            {"event": "link", "action": "change", "interface": "r3", "ifindex": 9, "up": True},
            "link change r3 (ifindex 9, up)",
        ),
        (
            {"event": "link", "action": "new", "interface": "r3", "ifindex": 9, "up": False},
            "link new r3 (ifindex 9, down)",
        ),
        (
            {**KEY, "event": "learned", "iif": "r0", "template": TEMPLATE},
            "learned ipv4 198.18.0.2 -> 239.1.1.1 iif r0 from * -> 239.1.0.0/16",
        ),
        (
            {**KEY, "event": "expired", "iif": "r0", "template": TEMPLATE, "reason": "idle"},
            "expired ipv4 198.18.0.2 -> 239.1.1.1 iif r0 from * -> 239.1.0.0/16 (idle)",
        ),
        (
            {**KEY, "event": "expired", "reason": "template_changed"},
            "expired ipv4 198.18.0.2 -> 239.1.1.1 (template_changed)",
        ),
        ({"event": "gap", "dropped": 12}, "gap 12 events dropped (mfcctl read too slowly)"),
        (
            {"event": "reload", "config": "/etc/x.conf", "summary": "1 added, 9 unchanged"},
            "reload /etc/x.conf: 1 added, 9 unchanged",
        ),
        # Every kind in the route lines' style (no key=value, no Python list), and what an
        # add replaced when it says so (`was`).
        (
            {**ROUTE, "event": "route.add", "state": "installed", "origin": "config"}
            | {"was": {"iif": "r0", "oifs": ["r1"]}},
            "route.add ipv4 198.18.0.2 -> 239.1.1.1 iif r0 oifs r1,r2 (replaced: oifs r1 ->"
            " r1,r2) [config]",
        ),
        (
            {**ROUTE, "event": "route.add", "state": "installed"}
            | {"was": {"iif": "r3", "oifs": ["r1", "r2"]}},
            "route.add ipv4 198.18.0.2 -> 239.1.1.1 iif r0 oifs r1,r2 (replaced: iif r3 -> r0)",
        ),
        (
            {**ROUTE, "event": "route.add", "state": "installed"}
            | {"was": {"iif": "r0", "oifs": ["r2", "r1"]}},
            "route.add ipv4 198.18.0.2 -> 239.1.1.1 iif r0 oifs r1,r2 (replaced, same interfaces)",
        ),
        (
            {**TEMPLATE, "event": "template.add", "family": "ipv4", "table": 100}
            | {"iif": "r1", "origin": "config", "oifs": ["r4"], "state": "installed"}
            | {"was": ["r3", "r4"]},
            "template.add ipv4 * -> 239.1.0.0/16 iif r1 oifs r4 table 100 (replaced: oifs r3,r4"
            " -> r4) [config]",
        ),
        (
            {**TEMPLATE, "event": "template.add", "family": "ipv4", "table": 253}
            | {"iif": "r1", "origin": "api", "oifs": ["r4"], "state": "pending"},
            "template.add ipv4 * -> 239.1.0.0/16 iif r1 oifs r4 (pending)",
        ),
        (
            {**TEMPLATE, "event": "template.del", "family": "ipv4", "table": 100}
            | {"iif": "r+", "origin": "api"},
            "template.del ipv4 * -> 239.1.0.0/16 iif r+ table 100",
        ),
        (
            {"event": "threshold", "interface": "r3", "threshold": 2, "origin": "config"},
            "threshold 2 on r3 [config]",
        ),
        (
            {"event": "threshold", "interface": "r3", "threshold": 8, "table": 100}
            | {"origin": "api"},
            "threshold 8 on r3 in table 100",
        ),
        (
            {"event": "mrdisc", "interface": "r3", "on": True, "origin": "api"},
            "mrdisc on for r3",
        ),
        (
            {"event": "leave", "interface": "r0", "group": "239.5.5.5", "source": "*"}
            | {"origin": "config"},
            "leave * -> 239.5.5.5 on r0 [config]",
        ),
        (
            {"event": "join", "interface": "r0", "group": "232.1.1.1", "source": "198.18.0.2"}
            | {"origin": "api"},
            "join 198.18.0.2 -> 232.1.1.1 on r0",
        ),
        (
            {"event": "repair", "action": "readd_vif", "family": "ipv4", "table": 253}
            | {"vif": 1, "interface": "r1"},
            "repair readd vif ipv4 VIF 1 (r1)",
        ),
        (
            {"event": "reload.failed", "config": "/etc/x.conf", "code": "config_error"}
            | {"error": "/etc/x.conf:3: bad oifs"},
            "reload.failed /etc/x.conf:3: bad oifs (nothing changed)",
        ),
        (
            {"event": "link", "action": "del", "interface": "r4", "ifindex": 7, "up": False}
            | {"renamed_to": "r5"},
            "link del r4 (ifindex 7, renamed to r5)",
        ),
        (
            {"event": "link", "action": "new", "interface": "r5", "ifindex": 7, "up": False}
            | {"renamed_from": "r4"},
            "link new r5 (ifindex 7, down, renamed from r4)",
        ),
        (
            {"event": "link", "action": "lost", "interface": None, "ifindex": None},
            "link events lost (too many at once): mfcd read every interface again",
        ),
        (
            {"event": "some.future", "names": ["a", "b"], "what": {"x": 1}, "n": 3},
            'some.future names=a,b what={"x": 1} n=3',
        ),
    ],
)
def test_event_lines(event: dict[str, Any], text: str) -> None:
    line = cli.format_event({"time": 0, **event})
    assert line.split(" ", 1)[1] == text


def test_monitor_prints_each_event_as_it_comes(tmp_path: Path) -> None:
    path = tmp_path / "mfcd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    events = [{"event": "link", "time": 1.0, "action": "new", "interface": "r1", "ifindex": 3}]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile("rb").readline())
            assert request["cmd"] == "monitor"
            conn.sendall(protocol.encode_result(request["id"], {"subscribed": True}))
            for event in events:
                conn.sendall(protocol.encode_event(request["id"], event))
            # Closing ends mfcctl's stream: it says the daemon went away.

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        status, out, err = run_cli("--socket", str(path), "-o", "json", "monitor")
    finally:
        thread.join(timeout=5)
        server.close()
    assert [json.loads(line) for line in out.splitlines()] == events
    assert status == protocol.EXIT_UNREACHABLE
    assert "closed the connection" in err


def test_monitor_reconnect_subscribes_again_when_mfcd_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--reconnect: mfcd stops (its socket goes away for a while) and starts again: mfcctl
    says so, subscribes again and goes on printing; a protocol error still ends it."""
    monkeypatch.setattr(cli, "RECONNECT_SECONDS", 0.02)
    path = tmp_path / "mfcd.sock"
    events = [
        {"event": "link", "time": 1.0, "action": "new", "interface": "r1", "ifindex": 3},
        {"event": "link", "time": 2.0, "action": "del", "interface": "r1", "ifindex": 3},
    ]
    subscriptions = []

    def listen() -> socket.socket:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        return server

    def session(server: socket.socket, event: dict[str, Any], last: bytes) -> None:
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile("rb").readline())
            subscriptions.append(request["cmd"])
            conn.sendall(protocol.encode_result(request["id"], {"subscribed": True}))
            conn.sendall(protocol.encode_event(request["id"], event) + last)
        server.close()
        path.unlink()

    first = listen()

    def serve() -> None:
        session(first, events[0], b"")  # then mfcd is gone: no socket at all
        time.sleep(0.2)  # (mfcctl tries meanwhile)
        session(listen(), events[1], b"not an event\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        status, out, err = run_cli("--socket", str(path), "-o", "json", "monitor", "--reconnect")
    finally:
        thread.join(timeout=5)
    assert [json.loads(line) for line in out.splitlines()] == events, err
    assert subscriptions == ["monitor", "monitor"]
    lines = err.splitlines()
    assert "closed the connection" in lines[0] and "reconnecting" in lines[0]
    assert lines[1] == "mfcctl: reconnected to mfcd"
    assert status == protocol.EXIT_PROTOCOL and "not an event" in lines[2]


@pytest.mark.parametrize(("given", "sent"), [([], {}), (["--table", "7"], {"table": 7})])
def test_watch_asks_for_the_table_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: list[str], sent: dict[str, Any]
) -> None:
    fake = FakeDaemon(tmp_path / "mfcd.sock", {"ok": True, "result": {"routes": [ROUTE]}})

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt  # (one sample is enough)

    monkeypatch.setattr(time, "sleep", interrupt)
    status, out, _ = run_cli(
        "--socket", str(fake.path), "show", "--watch", "1", *given, "-o", "json"
    )
    fake.close()
    assert status == 0
    assert json.loads(out)["routes"] == [ROUTE]
    [request] = fake.requests
    assert (request["cmd"], request["args"]) == ("show", {"stats": True, **sent})


# --- sync: repairs as plans name them, and -n as a check ---------------------------------------

REPAIRS = [
    {
        "action": "reissue_mfc",
        "family": "ipv4",
        "table": 253,
        "source": "198.18.10.2",
        "group": "239.1.1.1",
        "parent": 0,
        "oifs": [2, 3],
        "iif": "r0",
        "oif_names": ["r2", "r3"],
        "drift": "different",
        "kernel": {"iif": "r0", "oifs": ["r2"]},
    },
    {
        "action": "readd_mfc",
        "family": "ipv4",
        "table": 253,
        "source": "198.18.10.2",
        "group": "239.60.0.1",
        "parent": 0,
        "oifs": [2],
        "iif": "r0",
        "oif_names": ["r2"],
        "drift": "static",
        "kernel": {"iif": "r0", "oifs": ["r3"]},
    },
    {
        "action": "reissue_mfc",
        "family": "ipv4",
        "table": 253,
        "source": "198.18.10.2",
        "group": "239.1.1.2",
        "parent": 0,
        "oifs": [2],
        "iif": "r0",
        "oif_names": ["r2"],
        "drift": "missing",
    },
]


def test_sync_repairs_name_interfaces_and_what_the_kernel_had() -> None:
    lines = cli.format_sync({"dry_run": True, "repairs": REPAIRS}).splitlines()
    assert lines == [
        "would repair (dry run, nothing changed):",
        "  reissue mfc ipv4 198.18.10.2 -> 239.1.1.1 iif r0 oifs r2,r3 (VIF 0 -> 2,3):"
        " the kernel had iif r0 oifs r2",
        "  readd mfc ipv4 198.18.10.2 -> 239.60.0.1 iif r0 oifs r2 (VIF 0 -> 2):"
        " the kernel had iif r0 oifs r3; another program wrote it (MFC_STATIC, it would"
        " outlive mfcd): deleted and added",
        "  reissue mfc ipv4 198.18.10.2 -> 239.1.1.2 iif r0 oifs r2 (VIF 0 -> 2):"
        " the kernel had no entry",
    ]
    event = {"event": "repair", "time": 1.0, **REPAIRS[0]}
    assert cli._repair_event(event) == lines[1].strip()


@pytest.mark.parametrize(
    ("argv", "repairs", "status"),
    [
        (["-n", "sync"], REPAIRS, protocol.EXIT_CHECK_FAILED),
        (["-n", "sync"], [], protocol.EXIT_OK),
        (["sync"], REPAIRS, protocol.EXIT_OK),  # repaired: nothing left to fail
    ],
)
def test_a_dry_run_sync_that_finds_drift_exits_8(
    tmp_path: Path, argv: list[str], repairs: list[dict[str, Any]], status: int
) -> None:
    result = {"dry_run": "-n" in argv, "repairs": repairs, "full": True}
    fake = FakeDaemon(tmp_path / "mfcd.sock", {"ok": True, "result": result})
    try:
        assert run_cli("--socket", str(fake.path), *argv)[0] == status
    finally:
        fake.close()
