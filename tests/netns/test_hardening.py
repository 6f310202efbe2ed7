"""End to end: signals, shutdown under load, and hostile requests against the real daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd
from tests.netns.test_forwarding import add


class LoggedMfcd(Mfcd):
    """mfcd logging to a file: a daemon serving thousands of requests would fill a pipe that
    nobody reads until it exits, and block on it."""

    def start(self, wait: bool = True) -> None:
        self.log_path = self.workdir / "mfcd.log"
        self._log_file: IO[str] = open(self.log_path, "a")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.lab.router,
                str(BIN / "mfcd"),
                "--config",
                str(self.config_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            text=True,
        )
        self.lab.processes.append(self.proc)
        if wait:
            self.wait_ready()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        code, _, _ = self.lab.stop(self.proc, sig)
        self.proc = None
        self._log_file.close()
        self.log = self.log_path.read_text()
        return code, self.log

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def status(self, name: str) -> int:
        """A VmRSS-like line of /proc/PID/status, in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {name} in /proc/{self.proc.pid}/status")


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[LoggedMfcd]:
    mfcd = LoggedMfcd(lab, tmp_path)
    mfcd.start()
    try:
        yield mfcd
    finally:
        if mfcd.proc is not None:
            mfcd.stop(signal.SIGKILL)


def request(request_id: int, cmd: str, **args: object) -> bytes:
    return json.dumps({"v": 1, "id": request_id, "cmd": cmd, "args": args}).encode() + b"\n"


class Pipeliner:
    """A client that sends requests without pause and reads whatever comes back."""

    def __init__(self, path: str, block: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.block = block
        self.responses = 0
        self.closed = threading.Event()
        self.threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        try:
            while not self.closed.is_set():
                self.sock.sendall(self.block)
        except OSError:
            pass

    def _receive(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 16):
                self.responses += chunk.count(b"\n")
        except OSError:
            pass
        self.closed.set()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for thread in self.threads:
            thread.join(timeout=10)


ROUTE = {"source": "198.18.0.2", "group": "239.5.0.1", "iif": "r0", "oifs": ["r2"]}
KEY = {"source": "198.18.0.2", "group": "239.5.0.1"}


def test_sigterm_stops_within_2_s_while_clients_pipeline_requests(
    lab: Lab, daemon: LoggedMfcd
) -> None:
    add(daemon, 4, "r0", "r1")
    add(daemon, 6, "r0", "r2")
    changes = b"".join(
        request(i, "mfc.add", **ROUTE) + request(i, "mfc.del", **KEY) for i in range(50)
    )
    pings = b"".join(request(i, "ping") for i in range(200))
    clients = [Pipeliner(daemon.socket, changes), Pipeliner(daemon.socket, pings)]
    try:
        deadline = time.monotonic() + 10
        while min(c.responses for c in clients) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert min(c.responses for c in clients) >= 100, "the clients were not served"
        assert daemon.proc is not None
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=30)
        took = time.monotonic() - started
        for client in clients:
            assert client.closed.wait(5), "mfcd exited and left a connection open"
    finally:
        for client in clients:
            client.close()
    _, log = daemon.stop()
    assert code == 0, log
    assert took < 2.0, f"mfcd took {took:.1f} s to stop"
    assert not os.path.exists(daemon.socket)
    for family in (4, 6):
        assert kernel_tables.mfc(lab, family) == {}
        assert kernel_tables.vifs(lab, family) == {}
    assert "Traceback" not in log and "CancelledError" not in log
    # After "stopping" at most the one request in flight is applied.
    after = log[log.index("stopping") :]
    assert after.count(" mfc.add ") + after.count(" mfc.del ") <= 1, after
