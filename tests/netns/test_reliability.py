"""End to end: durability across crashes, all-or-nothing changes, hostile clients, socket access."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import Mfcd, route_args
from tests.netns.test_forwarding import add, received

REPO = Path(__file__).resolve().parents[2]


def group(i: int) -> str:
    return f"239.2.{i // 250}.{i % 250 + 1}"


def installed_groups(lab: Lab) -> set[str]:
    return {g for (_, g) in kernel_tables.mfc(lab, 4)}


@pytest.fixture
def custom(lab: Lab, tmp_path: Path) -> Iterator[list[Mfcd]]:
    """Daemons a test configures itself; all are stopped at the end."""
    daemons: list[Mfcd] = []
    yield daemons
    for daemon in daemons:
        if daemon.proc is not None:
            daemon.stop(signal.SIGKILL)


def test_restart_restores_routes_and_sigterm_removes_them(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1")
    add(mfcd, 6, "r0", "r2")
    shown = mfcd.show()
    code, log = mfcd.stop(signal.SIGTERM)
    assert code == 0, log
    # MRT_DONE on exit: the kernel no longer holds the daemon's routes or VIFs.
    assert kernel_tables.mfc(lab, 4) == {} and kernel_tables.vifs(lab, 6) == {}
    assert not os.path.exists(mfcd.socket)
    mfcd.start()
    assert mfcd.show() == shown
    assert received(lab, 4) == [5, 0, 0]
    assert received(lab, 6) == [0, 5, 0]


def test_kill_9_while_adding_loses_no_acknowledged_route(lab: Lab, mfcd: Mfcd) -> None:
    acked: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()

    def client() -> None:
        i = 0
        while not stop.is_set():
            g = group(i)
            attempted.append(g)
            result = mfcd.ctl(*route_args("198.18.0.2", g, "r0", "r1"))
            if result.returncode == 0:
                acked.append(g)
            i += 1

    thread = threading.Thread(target=client)
    thread.start()
    # Kill it once some changes are acknowledged (a loaded machine runs fewer per second).
    deadline = time.monotonic() + 30
    while len(acked) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    mfcd.stop(signal.SIGKILL)
    stop.set()
    thread.join()
    assert len(acked) > 5
    assert kernel_tables.mfc(lab, 4) == {}  # the kernel dropped everything with the socket

    mfcd.start()
    recovered = {r["group"] for r in mfcd.show()["routes"]}
    # Every acknowledged route is back; at most the one request in flight at the kill is extra.
    assert set(acked) <= recovered
    in_flight = set(attempted[len(acked) : len(acked) + 1])
    assert recovered - set(acked) <= in_flight
    assert installed_groups(lab) == recovered
    assert received(lab, 4, acked[-1]) == [5, 0, 0]


def test_corrupt_state_file_stops_the_daemon_and_is_left_untouched(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1")
    mfcd.stop()
    data = bytearray(Path(mfcd.state_file).read_bytes())
    data[-5] ^= 0x01  # flip a bit inside the last complete record
    Path(mfcd.state_file).write_bytes(data)
    mfcd.start(wait=False)
    assert mfcd.proc is not None
    code = mfcd.proc.wait(timeout=15)
    _, err = mfcd.stop()
    assert code == 1
    assert mfcd.state_file in err and "corrupt" in err and "line" in err
    assert Path(mfcd.state_file).read_bytes() == bytes(data)
    assert not os.path.exists(mfcd.socket)


def _extra_interfaces(lab: Lab, count: int) -> list[str]:
    """`count` more interfaces in the router namespace (veth pairs with both ends there)."""
    names = []
    for i in range(0, count, 2):
        lab.ip(lab.router, "link", "add", f"va{i}", "type", "veth", "peer", "name", f"vb{i}")
        for name in (f"va{i}", f"vb{i}"):
            lab.ip(lab.router, "link", "set", name, "up")
            names.append(name)
    return names[:count]


def test_a_33rd_interface_rolls_back_the_whole_request(lab: Lab, mfcd: Mfcd) -> None:
    extra = _extra_interfaces(lab, 30)
    # 31 VIFs: r0 plus r1 and 29 extra interfaces.
    mfcd.ok(*route_args("198.18.0.2", "239.3.0.1", "r0", ",".join(["r1", *extra[:29]])))
    assert len(kernel_tables.vifs(lab, 4)) == 31
    before_show = mfcd.show()
    before_kernel = (kernel_tables.mfc(lab, 4), kernel_tables.vifs(lab, 4))
    before_state = Path(mfcd.state_file).read_bytes()

    # r2 would be VIF 32 and r3 would be VIF 33: refused, and r2's VIF is not left behind.
    result = mfcd.ctl(*route_args("198.18.0.2", "239.3.0.2", "r0", "r2,r3"))
    assert result.returncode == 1 and "32 VIFs" in result.stderr
    # The same inside a batch whose first op alone would fit.
    batch = (
        "mfc add --source 198.18.0.2 --group 239.3.0.3 --iif r0 --oifs r2\n"
        "mfc add --source 198.18.0.2 --group 239.3.0.4 --iif r0 --oifs r3\n"
    )
    result = mfcd.ctl("batch", "-", stdin=batch)
    assert (
        result.returncode == 1
        and "stdin:2: cannot add 1 new IPv4 VIF (r3): only 0 of the 32 VIFs of table 253 are free"
        in result.stderr
    )

    assert mfcd.show() == before_show
    assert (kernel_tables.mfc(lab, 4), kernel_tables.vifs(lab, 4)) == before_kernel
    assert Path(mfcd.state_file).read_bytes() == before_state
    assert received(lab, 4, "239.3.0.1") == [5, 0, 0]


def test_fifty_concurrent_clients_end_consistent(lab: Lab, mfcd: Mfcd) -> None:
    def client(n: int) -> None:
        for k in range(4):
            mfcd.ok(*route_args("198.18.0.2", group(n * 4 + k), "r0", "r1" if k % 2 else "r2"))
        for k in range(2):
            mfcd.ok("mfc", "del", "--source", "198.18.0.2", "--group", group(n * 4 + k))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {group(n * 4 + k) for n in range(50) for k in (2, 3)}
    assert {r["group"] for r in mfcd.show()["routes"]} == expected
    assert installed_groups(lab) == expected
    mfcd.stop()
    mfcd.start()
    assert installed_groups(lab) == expected


def _raw_exchange(path: str, payload: bytes, timeout: float = 5) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["v", "id", "cmd", "args", "dry_run", "source", "group", "iif", "oifs", "ops", "op"]
REQUESTS = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 2, "1", None]),
        "cmd": st.sampled_from(["mfc.add", "mfc.del", "batch", "vif.set", "show", "x", ""]),
    },
    optional={
        "id": JSON,
        "args": st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5) | JSON,
        "dry_run": JSON,
    },
)


def test_fuzzed_messages_never_change_state_or_stop_the_daemon(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1")
    before = (mfcd.show(), kernel_tables.mfc(lab, 4))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=300), REQUESTS.map(lambda r: json.dumps(r).encode())))
    def fuzz(payload: bytes) -> None:
        reply = _raw_exchange(mfcd.socket, payload.replace(b"\n", b" ") + b"\n")
        for line in reply.splitlines():
            msg: dict[str, Any] = json.loads(line)
            assert msg["v"] == 1 and isinstance(msg["ok"], bool)

    fuzz()
    assert mfcd.proc is not None and mfcd.proc.poll() is None
    assert (mfcd.show(), kernel_tables.mfc(lab, 4)) == before


def test_slow_and_oversized_clients_are_cut_off_without_hurting_others(
    lab: Lab, custom: list[Mfcd], tmp_path: Path
) -> None:
    daemon = Mfcd(lab, tmp_path, "client_timeout = 1.0\nmax_request_bytes = 65536\n")
    custom.append(daemon)
    daemon.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(daemon.socket)
        silent.sendall(b'{"v": 1, "cmd": "sh')  # and then nothing
        started = time.monotonic()
        assert daemon.ok("ping").startswith("mfcd")  # others are served meanwhile
        silent.settimeout(10)
        reply = json.loads(silent.recv(65536))
        assert reply["error"]["code"] == "timeout"
        assert silent.recv(1) == b""  # disconnected
        assert 0.9 < time.monotonic() - started < 5
    reply = json.loads(_raw_exchange(daemon.socket, b"x" * 70000 + b"\n"))
    assert reply["error"]["code"] == "too_large"
    assert daemon.ok("ping").startswith("mfcd")


def _ctl_as(uid: int, gid: int, path: str, code: Path) -> subprocess.CompletedProcess[str]:
    # Debian's python3 and a world-readable copy of the package: the venv's interpreter and the
    # checkout may sit in directories other users cannot enter.
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "/usr/bin/python3",
            "-m",
            "mfcd.cli",
            "--socket",
            path,
            "ping",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"},
    )


def test_only_root_and_the_socket_group_can_connect(
    lab: Lab, custom: list[Mfcd], tmp_path: Path
) -> None:
    rundir = Path(f"/run/{lab.prefix}")
    rundir.mkdir(mode=0o755)
    try:
        code = rundir / "code"
        shutil.copytree(REPO / "src" / "mfcd", code / "mfcd")
        subprocess.run(["chmod", "-R", "a+rX", str(rundir)], check=True)
        daemon = Mfcd(lab, tmp_path)
        daemon.socket = str(rundir / "mfcd.sock")
        daemon.config_file.write_text(
            f'socket_path = "{daemon.socket}"\nstate_file = "{daemon.state_file}"\n'
            'socket_group = "nogroup"\n'
        )
        custom.append(daemon)
        daemon.start()
        st_ = os.stat(daemon.socket)
        assert oct(st_.st_mode & 0o777) == "0o660" and st_.st_gid == 65534
        member = _ctl_as(65534, 65534, daemon.socket, code)
        assert member.returncode == 0, member.stderr
        outsider = _ctl_as(65534, 12345, daemon.socket, code)
        assert outsider.returncode == 4
        assert "permission denied" in outsider.stderr and "group nogroup" in outsider.stderr
        # A second daemon on the same socket (with a state file of its own: on the same one
        # it would refuse on the state file's lock first) refuses to start and leaves the
        # first one serving.
        (tmp_path / "second").mkdir()
        second = Mfcd(lab, tmp_path / "second")
        second.config_file.write_text(
            f'socket_path = "{daemon.socket}"\nstate_file = "{second.state_file}"\n'
            'socket_group = "nogroup"\n'
        )
        second.start(wait=False)
        assert second.proc is not None and second.proc.wait(timeout=15) == 1
        _, err = second.stop()
        assert "already serving" in err
        assert daemon.ok("ping").startswith("mfcd")
    finally:
        for d in custom:
            if d.proc is not None:
                d.stop()
        subprocess.run(["rm", "-rf", str(rundir)], check=False)


def test_sighup_reloads_the_config_and_survives_a_bad_one(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1")
    assert os.stat(mfcd.socket).st_mode & 0o777 == 0o660
    base = mfcd.config_file.read_text()
    mfcd.config_file.write_text(
        base.replace('log_level = "debug"', 'log_level = "info"')
        + 'socket_mode = "0600"\nipv6 = false\n'
    )
    assert mfcd.proc is not None
    mfcd.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while os.stat(mfcd.socket).st_mode & 0o777 != 0o600 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.stat(mfcd.socket).st_mode & 0o777 == 0o600
    mfcd.config_file.write_text(base + "no_such_setting = 1\n")
    mfcd.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert mfcd.ok("ping").startswith("mfcd")
    assert received(lab, 4) == [5, 0, 0]  # routes untouched by either reload
    add(mfcd, 6, "r0", "r2")  # ipv6 = false takes effect only at restart
    _, log = mfcd.stop()
    assert "ipv6 changes only at restart" in log
    assert "reload failed" in log and "no_such_setting" in log
    assert log.count("configuration reloaded") == 1


def test_a_reload_without_a_socket_group_takes_the_old_groups_access_away(
    lab: Lab, mfcd: Mfcd
) -> None:
    base = mfcd.config_file.read_text()
    assert mfcd.proc is not None
    for group, gid in (("nogroup", 65534), ("", os.getegid())):
        mfcd.config_file.write_text(base.replace('socket_group = ""', f'socket_group = "{group}"'))
        mfcd.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while os.stat(mfcd.socket).st_gid != gid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.stat(mfcd.socket).st_gid == gid
