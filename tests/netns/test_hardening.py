"""End to end: signals, shutdown under load, and hostile requests against the real daemon."""

from __future__ import annotations

import contextlib
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
from mfcd import protocol
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd, route_args
from tests.netns.test_forwarding import add, received
from tests.netns.test_reliability import _raw_exchange


class LoggedMfcd(Mfcd):
    """mfcd logging to a file: a daemon serving thousands of requests would fill a pipe that
    nobody reads until it exits, and block on it."""

    def command(self) -> list[str]:
        """What runs in the router's namespace."""
        return [str(BIN / "mfcd"), "--config", str(self.config_file)]

    def env(self) -> dict[str, str] | None:
        """Its environment (None: this process's)."""
        return None

    def start(self, wait: bool = True) -> None:
        self.log_path = self.workdir / "mfcd.log"
        self._log_file: IO[str] = open(self.log_path, "a")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.router, *self.command()],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            text=True,
            env=self.env(),
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

    def __init__(self, path: str, block: bytes, read: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.block = block
        self.responses = 0
        self.closed = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True)]
        if read:
            self.threads.append(threading.Thread(target=self._receive, daemon=True))
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
        with contextlib.suppress(OSError):  # wakes a sendall blocked on a full buffer
            self.sock.shutdown(socket.SHUT_RDWR)
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
    # And one that never reads its responses: mfcd waits for it to take them, then gives up.
    deaf = Pipeliner(daemon.socket, b"".join(request(i, "show") for i in range(100)), read=False)
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
        for client in [*clients, deaf]:
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


def test_stray_signals_neither_kill_mfcd_nor_stop_its_service(lab: Lab, daemon: LoggedMfcd) -> None:
    add(daemon, 4, "r0", "r1")
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGALRM):
        daemon.signal(sig)
        time.sleep(0.2)
        assert daemon.proc is not None and daemon.proc.poll() is None, f"{sig.name} killed mfcd"
        assert daemon.ok("ping").startswith("mfcd")
    assert received(lab, 4) == [5, 0, 0]
    # SIGTERM again and again, as an impatient operator would: mfcd still ends its own way,
    # also once its event loop is gone (which gives signals their default action back).
    assert daemon.proc is not None
    while daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.002)
    code, log = daemon.stop()
    assert code == 0, log
    assert "status: 1 of 1 routes installed, 0 pending; 0 clients connected" in log
    for name in ("SIGUSR2", "SIGQUIT", "SIGALRM"):
        assert f"ignoring {name}" in log
    assert not os.path.exists(daemon.socket)


def hold_partial_line(path: str, size: int, replies: list[bytes]) -> socket.socket:
    """Connect and send `size` bytes of a request line that never ends; keep what mfcd says."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(20)
    head = b'{"v":1,"id":1,"cmd":"batch","args":{"text":"'
    with contextlib.suppress(OSError):  # refused and closed while sending
        sock.sendall(head + b"x" * (size - len(head)))
    sock.settimeout(0.5)
    try:
        replies.append(sock.recv(65536))
    except TimeoutError:
        replies.append(b"")  # holding its line, as it should
    return sock


MIB = 1024 * 1024


def test_many_clients_holding_large_partial_lines_stay_within_the_budget(
    lab: Lab, tmp_path: Path
) -> None:
    # max_request_bytes 16 MiB: buffers for all clients together 32 MiB. 64 clients try 4 MiB
    # each: 256 MiB unbounded.
    daemon = LoggedMfcd(lab, tmp_path, f"max_request_bytes = {16 * MIB}\n")
    daemon.start()
    try:
        idle = daemon.status("VmRSS")
        replies: list[bytes] = []
        threads, sockets = [], []
        for _ in range(64):
            thread = threading.Thread(
                target=lambda: sockets.append(hold_partial_line(daemon.socket, 4 * MIB, replies))
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=60)
        assert len(replies) == 64
        assert daemon.ok("ping").startswith("mfcd")  # served meanwhile
        peak = daemon.status("VmHWM")
        refused = [r for r in replies if r]
        holding = len(replies) - len(refused)
        for reply in refused:
            assert json.loads(reply)["error"]["code"] == "busy"
        # The budget (32 MiB) holds 8 of the 4 MiB lines, give or take the free 64 KiB each.
        assert 7 <= holding <= 9, replies
        # Budget + 64 KiB free per client + the streams' buffers + slack for the allocator.
        assert (peak - idle) * 1024 < 32 * MIB + 64 * 0.5 * MIB + 16 * MIB, (idle, peak)
        for sock in sockets:
            sock.close()
        # The budget is given back: a large request goes through again.
        time.sleep(0.5)
        text = "mfc add --source 198.18.0.2 --group 239.6.0.1 --iif r0 --oifs r1\n" * 150_000
        msg = {"v": 1, "id": 2, "cmd": "batch", "args": {"text": text}, "dry_run": True}
        reply = json.loads(_raw_exchange(daemon.socket, json.dumps(msg).encode() + b"\n", 60))
        assert reply["ok"] is True, reply
    finally:
        daemon.stop(signal.SIGKILL)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"[" * (60 * MIB), "too_large"),  # nested 60 MiB deep
        (b"[" + b"[]," * (20 * MIB) + b"[]]", "too_large"),  # 20 million empty arrays
        (b'["ab",' + b'"ab",' * (12 * MIB) + b'"ab"]', "too_large"),  # 12 million strings
        (b"[" + b"1.5," * (15 * MIB) + b"1.5]", "too_large"),  # 15 million floats
        (b"[" * MIB, "bad_request"),  # nested 1 MiB deep
    ],
    ids=["deep", "arrays", "strings", "floats", "deep-small"],
)
def test_packed_json_is_refused_quickly_without_a_memory_spike(
    daemon: LoggedMfcd, payload: bytes, code: str
) -> None:
    idle = daemon.status("VmRSS")
    started = time.monotonic()
    reply = json.loads(_raw_exchange(daemon.socket, payload + b"\n", 60))
    took = time.monotonic() - started
    assert reply["error"]["code"] == code
    # The budget of docs/operations.md: the line, its text decoded, and at most
    # max_request_bytes / 64 values of about 100 bytes each. Parsed in full, 60 MiB of
    # empty arrays would take 1.5 GB.
    max_values = protocol.MAX_REQUEST_BYTES // protocol.BYTES_PER_VALUE
    budget = 2 * len(payload) + max_values * 100 + 16 * MIB
    assert (daemon.status("VmHWM") - idle) * 1024 < budget
    assert took < 0.1 * len(payload) / MIB + 1  # about 100 ms per MiB at most
    assert daemon.ok("ping").startswith("mfcd")


def test_40002_oifs_are_refused_at_once(daemon: LoggedMfcd) -> None:
    oifs = ",".join(f"e{i}" for i in range(40_002))
    started = time.monotonic()
    # As a batch: one argument of 250 kB is more than exec takes.
    line = " ".join(route_args("198.18.0.2", "239.7.0.1", "r0", oifs))
    result = daemon.ctl("batch", "-", stdin=line + "\n")
    assert time.monotonic() - started < 2
    assert result.returncode == 1
    assert "names 40002 interfaces; a route can use at most 32 interfaces" in result.stderr


def test_responses_nobody_reads_are_bounded(lab: Lab, tmp_path: Path) -> None:
    # Budget 1 MiB; `show` of 20,000 routes is 2 MB, made a part of 2,000 routes at a time.
    daemon = LoggedMfcd(lab, tmp_path, f"max_request_bytes = {MIB // 2}\n")
    daemon.start()
    try:
        lines = [
            f"mfc add --source 198.18.0.2 --group 239.8.{i // 250}.{i % 250 + 1} --iif r0"
            " --oifs r1\n"
            for i in range(20_000)
        ]
        for start in range(0, 20_000, 5_000):  # 1.4 MB in all, in requests of 350 kB
            daemon.ok("batch", "-", stdin="".join(lines[start : start + 5_000]))
        rss = daemon.status("VmRSS")
        deaf = Pipeliner(daemon.socket, request(1, "show"), read=False)
        try:
            time.sleep(1)  # its first show waits to be read
            # A show is made a part at a time, each once the one before is read: the deaf
            # client holds one part at most, so it takes nobody's turn or budget.
            reply = json.loads(_raw_exchange(daemon.socket, request(2, "ping")))
            assert reply["ok"], reply
            assert daemon.status("VmRSS") - rss < 4 * 1024
        finally:
            deaf.close()
        time.sleep(0.5)
        assert daemon.ok("ping").startswith("mfcd")  # freed with the connection
    finally:
        daemon.stop(signal.SIGKILL)
