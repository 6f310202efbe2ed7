"""End to end: the daemon speaks systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from lab.netns import Lab
from tests.netns.conftest import BIN, Mfcd
from tests.netns.test_forwarding import add


def _messages(sock: socket.socket, until: str, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in seen[-1]:
            break
    return seen


def test_ready_only_once_routes_are_restored_then_status_watchdog_stopping(
    lab: Lab, tmp_path: Path
) -> None:
    daemon = Mfcd(lab, tmp_path)
    daemon.start()
    add(daemon, 4, "r0", "r1")
    daemon.stop()

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        daemon.proc = lab.spawn(
            lab.router, str(BIN / "mfcd"), "--config", str(daemon.config_file), env=env
        )
        try:
            startup = _messages(sock, "READY=1")
            assert startup[0] == "STATUS=starting"
            assert startup[-1] == "READY=1\nSTATUS=1 of 1 routes installed, 0 pending"
            # Ready means served and restored: the saved route is already in the kernel.
            assert daemon.ok("ping").startswith("mfcd")
            pings = _messages(sock, "never", timeout=0.7)
            assert pings.count("WATCHDOG=1") >= 2  # every 0.2 s for WatchdogSec=0.4s
            add(daemon, 6, "r0", "r2")
            assert "STATUS=2 of 2 routes installed, 0 pending" in _messages(sock, "STATUS=2")
            daemon.proc.send_signal(signal.SIGHUP)
            reload = [m for m in _messages(sock, "READY=1") if m != "WATCHDOG=1"]
            assert reload[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert reload[-1] == "READY=1\nSTATUS=2 of 2 routes installed, 0 pending"
            daemon.proc.send_signal(signal.SIGTERM)
            assert any(m.startswith("STOPPING=1") for m in _messages(sock, "STOPPING=1"))
        finally:
            code, _ = daemon.stop()
    assert code == 0
