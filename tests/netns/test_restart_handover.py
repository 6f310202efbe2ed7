"""End to end: a restart through systemd's fd store forwards on, and the tables taken over are
repaired to what the routes say (the test plays systemd: notify socket, store, LISTEN_FDS)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.netns import TRAFFIC, Lab
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd
from tests.netns.test_forwarding import FLOWS, add, assert_kernel_matches_show
from tests.netns.test_joins import capture, mrd

# Run in the router namespace: move the fds passed to 3, 4, ... and exec mfcd with LISTEN_PID
# its own pid, as systemd does between its fork and ExecStart= (argv: fds, names, command).
WRAPPER = """
import fcntl, os, sys
fds = [int(f) for f in sys.argv[1].split(",") if f]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
if fds:
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)),
                      LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.argv[3], sys.argv[3:])
"""
RATE_PACKETS = 600  # sent 10 ms apart (lab/traffic.py send): some 6 s, across the restart
OTHER = {4: ("239.1.1.2", "239.1.1.3"), 6: ("ff3e::1:2", "ff3e::1:3")}  # (gone, new)


class FakeSystemd:
    """The service manager's end of sd_notify: messages kept in order, FDSTORE=1 fds kept by
    name (closed at once with `keep` False, as FileDescriptorStoreMax=0 does), dropped on
    FDSTOREREMOVE=1; `close_store` is what a stop of the unit does."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.path = path
        self.keep = True
        self.store: list[tuple[str, int]] = []
        self.messages: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 4096, 16)
            except TimeoutError:
                continue
            text = data.decode()
            fields = dict(line.partition("=")[::2] for line in text.split("\n"))
            with self.lock:
                self.messages.append(text)
                name = fields.get("FDNAME", "stored")
                if fields.get("FDSTORE") == "1" and self.keep:
                    self.store += [(name, fd) for fd in fds]
                    fds = []
                if fields.get("FDSTOREREMOVE") == "1":
                    fds += [fd for n, fd in self.store if n == name]
                    self.store = [(n, fd) for n, fd in self.store if n != name]
            for fd in fds:
                os.close(fd)

    def stored(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.store)

    def close_store(self) -> None:
        with self.lock:
            for _, fd in self.store:
                os.close(fd)
            self.store = []

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.close_store()
        self.sock.close()


class StoredMfcd(Mfcd):
    """mfcd under the fake systemd: NOTIFY_SOCKET set, started with the store's fds."""

    def __init__(self, lab: Lab, workdir: Path, systemd: FakeSystemd, config: str) -> None:
        super().__init__(lab, workdir, config)
        self.systemd = systemd

    def start(self, wait: bool = True) -> None:
        passed = self.systemd.stored()
        fds = [fd for _, fd in passed]
        names = ":".join(name for name, _ in passed)
        wrapper = [sys.executable, "-c", WRAPPER, ",".join(map(str, fds)), names]
        command = [str(BIN / "mfcd"), "--config", str(self.config_file)]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.router, *wrapper, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, NOTIFY_SOCKET=self.systemd.path),
            pass_fds=fds,
        )
        self.lab.processes.append(self.proc)
        if wait:
            self.wait_ready()


def routes(family: int, *declared: tuple[str, str, int | None]) -> str:
    """Config [[route]]s from the flow's source on r0: (group, oif, table)."""
    source = FLOWS[family][0]
    text = ""
    for group, oif, table in declared:
        text += (
            f'\n[[route]]\nsource = "{source}"\ngroup = "{group}"\niif = "r0"\noifs = ["{oif}"]\n'
        )
        text += "" if table is None else f"table = {table}\n"
    return text


def restart_under_flow(daemon: StoredMfcd, family: int, sig: int = signal.SIGTERM) -> int:
    """Restart the daemon (`sig`, then a start with what the store holds) while the flow
    runs; return the packets the receiver missed."""
    lab = daemon.lab
    source, group = FLOWS[family]
    receiver = lab.spawn(lab.rx[0], sys.executable, TRAFFIC, "recv", group, "5000", "x0")
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    sender = lab.spawn(
        lab.sender, sys.executable, TRAFFIC, "send", group, "5000", "s0", source, str(RATE_PACKETS)
    )
    time.sleep(1.0)
    code, log = daemon.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -sig), log
    daemon.start()
    assert sender.wait(timeout=60) == 0
    time.sleep(0.5)
    lab.processes.remove(sender)
    _, out, _ = lab.stop(receiver)
    received: int = json.loads(out.strip().splitlines()[-1])["received"]
    return RATE_PACKETS - received


def wait_for(check: Callable[[], None], timeout: float = 15) -> None:
    """Until `check()` passes (its AssertionError otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    try:
        yield fake
    finally:
        fake.close()


@pytest.mark.parametrize("family", [4, 6])
def test_a_restart_through_the_fd_store_forwards_on_and_repairs_the_tables(
    lab: Lab, tmp_path: Path, systemd: FakeSystemd, family: int
) -> None:
    source, flow = FLOWS[family]
    gone, new = OTHER[family]
    table = 253 if family == 4 else 254
    declared = routes(family, (gone, "r2", None), (gone, "r2", 100))
    daemon = StoredMfcd(lab, tmp_path, systemd, declared)
    # The control: systemd keeps nothing of the first mfcd (FileDescriptorStoreMax=0), so
    # the first restart is a plain one; the next mfcd's sockets are kept.
    systemd.keep = False
    daemon.start()
    try:
        wait_for(lambda: _seen(systemd, "READY=1"))  # (its FDSTORE=1 came before: dropped)
        systemd.keep = True
        add(daemon, family, "r0", "r1")
        lost_plain = restart_under_flow(daemon, family)
        assert lost_plain >= 10, lost_plain
        # Stored right after MRT_INIT: each family's default table, and table 100.
        stored = {"mrt4-253", "mrt6-254", f"mrt{family}-100"}
        wait_for(lambda: _stored(systemd, stored))
        vifs_before = kernel_tables.vifs(lab, family)

        # Across the handover the routes change: `gone` leaves the config, `new` comes.
        base = daemon.config_file.read_text().split("\n[[route]]")[0]
        daemon.config_file.write_text(base + routes(family, (new, "r3", None)))
        lost = restart_under_flow(daemon, family)
        assert lost == 0, f"lost {lost} across the handover, {lost_plain} across a plain restart"
        # Repaired: the full drift check removed `gone`'s entry and VIF r2, `new` is in;
        # the flow's VIFs kept their numbers (r3 took none the kernel had).
        wait_for(lambda: assert_kernel_matches_show(lab, daemon, family))
        assert set(kernel_tables.mfc(lab, family)) == {(source, flow), (source, new)}
        vifs = kernel_tables.vifs(lab, family)
        kept = {v: n for v, n in vifs_before.items() if n in ("r0", "r1")}
        assert {v: n for v, n in vifs.items() if n in ("r0", "r1")} == kept
        assert sorted(vifs.values()) == ["r0", "r1", "r3"]
        # Table 100, no longer used, was closed (MRT_DONE) and taken out of the store.
        wait_for(lambda: _seen(systemd, f"FDSTOREREMOVE=1\nFDNAME=mrt{family}-100"))
        assert kernel_tables.in_kernel(lab, family, "100") == 0
        _stored(systemd, stored - {f"mrt{family}-100"})  # (the adopted ones not stored again)
    finally:
        if daemon.proc is not None:
            daemon.stop()
    assert f"adopted the IPv{family} table {table}" in daemon.log
    # mfcd's stop leaves the tables to the store (no MRT_DONE): they forward on...
    assert kernel_tables.mfc(lab, family) != {}
    # ...until systemd closes the store (a stop of the unit): the last close flushes them.
    systemd.close_store()
    wait_for(lambda: _flushed(lab, family), 5)


def _seen(systemd: FakeSystemd, message: str) -> None:
    with systemd.lock:
        assert any(message in m for m in systemd.messages), message


def _stored(systemd: FakeSystemd, names: set[str]) -> None:
    held = [name for name, _ in systemd.stored()]
    assert sorted(held) == sorted(names), held


def _flushed(lab: Lab, family: int) -> None:
    assert kernel_tables.mfc(lab, family) == {}
    assert kernel_tables.vifs(lab, family) == {}


LARGE = 60_000  # routes: the restore's run goes to the kernel writer processes (LATER_MIN)


def test_a_large_table_taken_over_is_written_again_by_the_writer_processes(
    lab: Lab, tmp_path: Path, systemd: FakeSystemd
) -> None:
    daemon = StoredMfcd(lab, tmp_path, systemd, "")
    daemon.start()
    try:
        add(daemon, 4, "r0", "r1")
        batch = "".join(
            f"mfc add --source 198.18.0.2 --group 239.10.{n >> 8}.{n & 255} --iif r0 --oifs r2\n"
            for n in range(LARGE)
        )
        daemon.ok("batch", "-", stdin=batch)
        wait_for(lambda: _stored(systemd, {"mrt4-253", "mrt6-254"}))
        assert restart_under_flow(daemon, 4) == 0
        first = len(daemon.log)  # (the first mfcd's; what follows is the second's)
        wait_for(lambda: assert_kernel_matches_show(lab, daemon, 4), 60)
        assert len(kernel_tables.mfc(lab, 4)) == LARGE + 1
    finally:
        if daemon.proc is not None:
            daemon.stop()
    second = daemon.log[first:]
    assert "adopted the IPv4 table 253 from the previous mfcd (3 VIFs" in second
    assert "kernel writer (pid" in second  # (the restore's run of 60,000 routes)


def started_with_a_route(lab: Lab, tmp_path: Path, systemd: FakeSystemd, family: int) -> StoredMfcd:
    """An mfcd under the fake systemd, its route r0 -> r1 in, its default tables stored."""
    daemon = StoredMfcd(lab, tmp_path, systemd, "")
    daemon.start()
    try:
        add(daemon, family, "r0", "r1")
        wait_for(lambda: _stored(systemd, {"mrt4-253", "mrt6-254"}))
    except BaseException:
        daemon.stop()
        raise
    return daemon


@pytest.mark.parametrize("family", [4, 6])
def test_a_crash_leaves_the_tables_forwarding_for_the_next_mfcd(
    lab: Lab, tmp_path: Path, systemd: FakeSystemd, family: int
) -> None:
    # Stored at MRT_INIT, not at SIGTERM: a SIGKILL (a crash, the watchdog, the OOM killer)
    # leaves them to the store all the same, and Restart=on-failure's next mfcd takes over.
    daemon = started_with_a_route(lab, tmp_path, systemd, family)
    try:
        assert restart_under_flow(daemon, family, signal.SIGKILL) == 0
        wait_for(lambda: assert_kernel_matches_show(lab, daemon, family))
    finally:
        if daemon.proc is not None:
            daemon.stop()
    assert f"adopted the IPv{family} table {253 if family == 4 else 254}" in daemon.log


@pytest.mark.parametrize("broken", ["state file", "config"])
def test_a_start_that_fails_releases_the_tables_it_was_passed(
    lab: Lab, tmp_path: Path, systemd: FakeSystemd, broken: str
) -> None:
    # Restart=on-failure would start mfcd again and again: were the tables passed left in
    # the store, they would forward the previous mfcd's routes, stale, all that while.
    daemon = started_with_a_route(lab, tmp_path, systemd, 4)
    daemon.stop()
    assert kernel_tables.mfc(lab, 4) != {}  # left to the store
    if broken == "state file":
        Path(daemon.state_file).write_text("not a state file\n")
    else:
        daemon.config_file.write_text(daemon.config_file.read_text() + "no_such_setting = 1\n")
    daemon.start(wait=False)
    assert daemon.proc is not None
    daemon.proc.wait(timeout=30)  # (stop then only collects it: no signal to an exited one)
    code, log = daemon.stop()
    assert code == 1, log
    wait_for(lambda: _stored(systemd, set()))
    _flushed(lab, 4)
    _flushed(lab, 6)


@pytest.mark.parametrize("stored", [True, False])
def test_a_stop_that_leaves_the_tables_forwarding_sends_no_mrdisc_termination(
    lab: Lab, tmp_path: Path, systemd: FakeSystemd, stored: bool
) -> None:
    # A Termination at a restart would have snooping switches stop sending the flows that
    # forward on to the router; without the store a stop ends forwarding: it says so.
    config = '\n[[interface]]\nname = "r1"\nmrdisc = true\n'
    daemon = StoredMfcd(lab, tmp_path, systemd, config) if stored else Mfcd(lab, tmp_path, config)
    daemon.start()
    try:
        time.sleep(1.0)  # (advertising from start-up on)
    finally:
        with capture(lab, lab.rx[0], "x0", 1.5) as seen:
            daemon.stop()
    assert len(mrd(seen, 0x32)) == (0 if stored else 1), seen
