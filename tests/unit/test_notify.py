"""Tests for mfcd.notify against a notify socket the test binds itself, as systemd (PID 1) does."""

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mfcd.notify import (
    FdStore,
    Sent,
    StatusReporter,
    fdstore_message,
    fdstore_remove_message,
    listen_fds,
    notify,
    send,
    take_listen_fds,
    watchdog_interval,
)

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}, <linux/socket.h>


@dataclass(frozen=True)
class Received:
    lines: list[str]
    pid: int | None


class NotifyListener:
    """A datagram socket with SO_PASSCRED, bound where $NOTIFY_SOCKET will point."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> Received:
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = _UCRED.unpack(payload[: _UCRED.size])
        return Received(data.decode("utf-8").split("\n"), pid)


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(5)
    # A short directory of our own: tmp_path can exceed the 108-byte sun_path limit.
    with tempfile.TemporaryDirectory(prefix="mfcd-notify-") as tmp, sock:
        if request.param == "path":
            env_value = os.path.join(tmp, "notify")
            sock.bind(env_value)
        else:
            name = f"mfcd-test-notify-{os.getpid()}-{id(sock)}"
            sock.bind("\0" + name)
            env_value = "@" + name
        monkeypatch.setenv("NOTIFY_SOCKET", env_value)
        yield NotifyListener(sock, env_value)


def test_ready_and_status_arrive_as_one_datagram(listener: NotifyListener) -> None:
    assert notify("READY=1\nSTATUS=listening on /run/mfcd/mfcd.sock")
    received = listener.receive()
    assert received.lines == ["READY=1", "STATUS=listening on /run/mfcd/mfcd.sock"]


def test_sender_pid_is_ours(listener: NotifyListener) -> None:
    # systemd's NotifyAccess=main accepts only datagrams whose credentials name the main pid.
    assert notify("WATCHDOG=1")
    assert listener.receive().pid == os.getpid()


def test_each_call_is_a_separate_datagram(listener: NotifyListener) -> None:
    for state in ("RELOADING=1", "READY=1", "STOPPING=1"):
        assert notify(state)
    assert [listener.receive().lines for _ in range(3)] == [
        ["RELOADING=1"],
        ["READY=1"],
        ["STOPPING=1"],
    ]


def test_status_is_utf8(listener: NotifyListener) -> None:
    assert notify("STATUS=3 routes · 2 interfaces")
    assert listener.receive().lines == ["STATUS=3 routes · 2 interfaces"]


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234"])
def test_unsupported_address_is_ignored(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_unreachable_socket_reports_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="mfcd-notify-") as tmp:
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(tmp, "nobody-listens"))
        assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@mfcd-test-nobody-{os.getpid()}")
    assert notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0


def test_watchdog_meant_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


@pytest.mark.parametrize("value", [None, "", "0", "-5", "abc", "1.5"])
def test_watchdog_disabled_or_malformed(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if value is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", value)
    assert watchdog_interval() is None


def _drain(sock: socket.socket) -> list[str]:
    """Every datagram queued on `sock` now."""
    seen = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            seen.append(sock.recv(4096).decode())
    except BlockingIOError:
        return seen
    finally:
        sock.settimeout(timeout)


def test_a_socket_nobody_reads_never_blocks_the_sender(listener: NotifyListener) -> None:
    # The queue of a datagram socket holds net.unix.max_dgram_qlen datagrams (10 by
    # default); a blocking send would wait there for ever.
    started = time.monotonic()
    results = [send(f"STATUS={n} routes") for n in range(1000)]
    assert time.monotonic() - started < 2
    assert results[0] is Sent.SENT and results[-1] is Sent.BUSY
    assert set(results) == {Sent.SENT, Sent.BUSY}
    sent = results.count(Sent.SENT)
    assert notify("WATCHDOG=1") is False  # dropped, and the caller may ignore that
    # The queue held exactly what was sent, and room again means SENT again.
    assert len(_drain(listener.sock)) == sent
    assert send("READY=1") is Sent.SENT


def test_status_reports_are_limited_to_one_per_interval_and_the_latest_wins(
    listener: NotifyListener,
) -> None:
    count = 0

    async def burst() -> list[str]:
        nonlocal count
        reporter = StatusReporter(lambda: f"{count} changes", interval=0.3)
        seen: list[str] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # about 1,000 changes a second for 1 s
            count += 1
            reporter.changed()
            seen += _drain(listener.sock)
            await asyncio.sleep(0.001)
        final = count
        await asyncio.sleep(0.5)  # the last report is due within one interval
        reporter.close()
        seen += _drain(listener.sock)
        assert seen[-1] == f"STATUS={final} changes"
        return seen

    seen = asyncio.run(burst())
    # 1 s of changes at one report per 0.3 s: the first at once, then one per interval.
    assert 3 <= len(seen) <= 6, seen
    assert count > 100


def test_a_busy_report_is_kept_and_the_latest_sent_when_there_is_room(
    listener: NotifyListener,
) -> None:
    status = "old"

    async def scenario() -> list[str]:
        nonlocal status
        while send("STATUS=filler") is Sent.SENT:
            pass
        reporter = StatusReporter(lambda: status, interval=0.1)
        reporter.announce("READY=1")  # BUSY: kept
        status = "new"
        _drain(listener.sock)  # the manager catches up
        await asyncio.sleep(0.3)
        reporter.close()
        return _drain(listener.sock)

    assert asyncio.run(scenario()) == ["READY=1\nSTATUS=new"]


def test_nothing_is_sent_after_close(listener: NotifyListener) -> None:
    # A stop closes the reporter before STOPPING=1; a reload that ends after that must not
    # tell systemd READY=1 (nor a status) about a daemon that is going away.
    async def scenario() -> list[str]:
        reporter = StatusReporter(lambda: "1 route", interval=0.0)
        reporter.announce("READY=1")
        first = _drain(listener.sock)
        reporter.close()
        reporter.announce("READY=1")
        reporter.changed()
        await asyncio.sleep(0.05)
        return first + _drain(listener.sock)

    assert asyncio.run(scenario()) == ["READY=1\nSTATUS=1 route"]


# --- the file descriptor store ----------------------------------------------------------------


def test_fd_store_messages() -> None:
    assert fdstore_message("mrt4-253") == "FDSTORE=1\nFDNAME=mrt4-253\nFDPOLL=0"
    assert fdstore_remove_message("mrt6-100") == "FDSTOREREMOVE=1\nFDNAME=mrt6-100"


def test_a_stored_fd_travels_as_scm_rights_and_is_a_duplicate(listener: NotifyListener) -> None:
    read, write = os.pipe()
    try:
        assert FdStore().keep("mrt4-253", write)
        # Room for the credentials SO_PASSCRED adds too, as systemd reads them.
        space = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(4 * 4)
        data, ancdata, _flags, _addr = listener.sock.recvmsg(4096, space)
        assert data.decode().split("\n") == ["FDSTORE=1", "FDNAME=mrt4-253", "FDPOLL=0"]
        fds = [
            fd
            for level, kind, payload in ancdata
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            for fd in struct.unpack(f"{len(payload) // 4}i", payload)
        ]
        assert len(fds) == 1 and fds[0] != write
        os.write(fds[0], b"x")  # the same pipe: what goes in one comes out of the other
        assert os.read(read, 1) == b"x"
        os.close(fds[0])
        FdStore().drop("mrt4-253")
        assert listener.receive().lines == ["FDSTOREREMOVE=1", "FDNAME=mrt4-253"]
    finally:
        os.close(read)
        os.close(write)


def test_no_fd_store_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    read, write = os.pipe()
    try:
        assert not FdStore().keep("mrt4-253", write)
        assert send("FDSTORE=1", [write]) is Sent.OFF
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        (
            {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "mrt4-253:mrt6-254"},
            [(3, "mrt4-253"), (4, "mrt6-254")],
        ),
        # Names missing (or none listed) are "unknown", as sd_listen_fds_with_names says.
        (
            {"LISTEN_PID": "42", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "mrt4-253"},
            [(3, "mrt4-253"), (4, "unknown"), (5, "unknown")],
        ),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, [(3, "unknown")]),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": ""}, [(3, "unknown")]),
        # An empty name stays empty (systemd never sends one; mfcd does not adopt it).
        (
            {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": ":mrt4-100"},
            [(3, ""), (4, "mrt4-100")],
        ),
        # Meant for another process (a parent's variables, inherited), or not a count.
        ({"LISTEN_PID": "41", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "mrt4-253"}, []),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "mrt4-253"}, []),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, []),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, []),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, []),
    ],
)
def test_listen_fds_are_read_as_sd_listen_fds_reads_them(
    environ: dict[str, str], expected: list[tuple[int, str]]
) -> None:
    assert listen_fds(environ, 42) == expected


def test_listen_fds_are_taken_once_and_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "mrt4-253")
    assert take_listen_fds() == []  # another process's
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert name not in os.environ


def test_listen_fds_for_this_process_are_taken_once_and_made_close_on_exec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fds 3 and 4 as systemd passes them (inheritable); pytest's own, if open, put back after.
    saved = {}
    for fd in (3, 4):
        with contextlib.suppress(OSError):  # (not open)
            saved[fd] = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100), os.get_inheritable(fd))
    read, write = os.pipe()
    try:
        os.dup2(read, 3, inheritable=True)
        os.dup2(write, 4, inheritable=True)
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.setenv("LISTEN_FDNAMES", "mrt4-253:mrt6-254")
        assert take_listen_fds() == [(3, "mrt4-253"), (4, "mrt6-254")]
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            assert name not in os.environ  # a child process does not take them for its own
        assert not os.get_inheritable(3) and not os.get_inheritable(4)  # FD_CLOEXEC
        assert take_listen_fds() == []  # once
    finally:
        for fd in (3, 4):
            if fd in saved:
                copy, inheritable = saved[fd]
                os.dup2(copy, fd, inheritable=inheritable)
                os.close(copy)
            else:
                os.close(fd)
        os.close(read)
        os.close(write)
