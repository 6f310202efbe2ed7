"""End to end: a reload that changes many routes is applied a slice at a time. Other clients
are answered before it ends (reads see each route old or new, api changes to other routes
go through, those to the reload's routes are refused), and a reload the kernel refuses a
step of leaves every route, in mfcd and in the kernel, as it was."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd, route_args

MANY = 20_000  # routes a reload changes while clients ask: a few tenths of a second of slices


def address(i: int) -> tuple[str, str]:
    a, b = divmod(i, 250)
    return f"198.18.{a % 250}.{b + 1}", f"239.{1 + a // 250}.{a % 250}.{b + 1}"


def routes(n: int, oifs: str, last_oifs: str | None = None, first: int = 0) -> str:
    blocks = []
    for i in range(first, n):
        source, group = address(i)
        out = last_oifs if last_oifs is not None and i == n - 1 else oifs
        blocks.append(
            f'[[route]]\nsource = "{source}"\ngroup = "{group}"\niif = "r0"\noifs = [{out}]\n'
        )
    return "".join(blocks)


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[Mfcd]:
    daemon = Mfcd(lab, tmp_path)
    # Info, not debug: a line per route would fill the pipe nobody reads during the test.
    settings = daemon.config_file.read_text().replace('log_level = "debug"', 'log_level = "info"')
    daemon.settings = settings  # type: ignore[attr-defined]
    yield daemon
    if daemon.proc is not None:
        daemon.stop()


def write(daemon: Mfcd, declarations: str) -> None:
    daemon.config_file.write_text(daemon.settings + declarations)  # type: ignore[attr-defined]


def oifs_by_group(daemon: Mfcd) -> dict[str, list[str]]:
    shown = json.loads(daemon.ok("show", "--output", "json"))["routes"]
    return {r["group"]: r["oifs"] for r in shown}


def ping(sock: socket.socket) -> str:
    """A request on an open connection: what mfcd answered."""
    request = {"v": 1, "id": 1, "cmd": "ping", "args": {}}
    sock.sendall(json.dumps(request).encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        answer += sock.recv(65536)
    return answer.decode()


def moved(lab: Lab, vif: int) -> int:
    """Routes whose kernel entry forwards to VIF `vif` only (read from /proc, not mfcd)."""
    return sum(oifs == {vif} for _, oifs in kernel_tables.mfc(lab, 4).values())


def answered_under_way(lab: Lab, daemon: Mfcd, r2: int, sock: socket.socket) -> bool:
    """Reload the files (every route's oifs r1,r2 -> r2), catch the kernel half rewritten,
    ping on `sock`, and say whether the kernel was still not all rewritten once the ping was
    answered (so it was answered between two slices: one transaction would have held it to
    the end). False also when the test's own reads of /proc missed the moment (a loaded
    machine); the reload is then complete."""
    reload = subprocess.Popen(
        [str(BIN / "mfcctl"), "--socket", daemon.socket, "reload"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not 0 < (seen := moved(lab, r2)) < MANY // 2 and reload.poll() is None:
            pass
        under_way = 0 < seen < MANY // 2
        if under_way:
            assert '"ok":true' in ping(sock).replace(" ", "")
            under_way = moved(lab, r2) < MANY
        out, err = reload.communicate(timeout=600)
    finally:
        if reload.poll() is None:
            reload.kill()
            reload.wait()
    assert reload.returncode == 0, err
    assert out.startswith(f"0 added, 0 removed, {MANY} changed")
    return under_way


def test_other_clients_are_answered_while_a_large_reload_runs(lab: Lab, daemon: Mfcd) -> None:
    write(daemon, routes(MANY, '"r1", "r2"'))
    daemon.start(wait=False)
    daemon.wait_ready(timeout=180)
    r2 = next(vifi for vifi, name in kernel_tables.vifs(lab, 4).items() if name == "r2")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.socket)
        # The test reads /proc while the reload runs (a few tenths of a second): on a loaded
        # machine it may miss the moment; then the files go back and it tries again. Were
        # the reload one transaction, every try would find the kernel all rewritten.
        for _ in range(4):
            write(daemon, routes(MANY, '"r2"'))
            if answered_under_way(lab, daemon, r2, sock):
                break
            write(daemon, routes(MANY, '"r1", "r2"'))
            daemon.ok("reload")
        else:
            raise AssertionError("no ping was answered while the reload's slices ran")
    # A change to another route goes through; one to a route of the reload is refused (it
    # is declared in the files).
    other = address(MANY + 1)
    daemon.ok(*route_args(*other, "r0", "r1"))
    source, group = address(0)
    refused = daemon.ctl("mfc", "del", "--source", source, "--group", group)
    assert refused.returncode != 0 and "declared in" in refused.stderr
    after = oifs_by_group(daemon)
    assert after.pop(other[1]) == ["r1"]
    assert set(map(tuple, after.values())) == {("r2",)} and len(after) == MANY
    assert moved(lab, r2) == MANY


@pytest.mark.lab(receivers=2)
def test_a_reload_the_kernel_refuses_a_step_of_changes_nothing(lab: Lab, daemon: Mfcd) -> None:
    count = 2_000  # 20 slices: the refused step is in the last one
    write(daemon, routes(count, '"r1"'))
    daemon.start()
    api = address(count + 5)
    daemon.ok(*route_args(*api, "r0", "r2"))
    before = (oifs_by_group(daemon), kernel_tables.mfc(lab, 4), kernel_tables.vifs(lab, 4))
    # lo with an MTU below IPv4's minimum has no IPv4 configuration: the kernel refuses it a
    # VIF. The new files drop the first route, move the others to r2, and the last to lo.
    lab.ip(lab.router, "link", "set", "lo", "mtu", "60")
    write(daemon, routes(count, '"r2"', last_oifs='"r2", "lo"', first=1))
    result = daemon.ctl("reload")
    assert result.returncode != 0
    assert "MRT_ADD_VIF (IPv4) failed" in result.stderr, result.stderr
    after = (oifs_by_group(daemon), kernel_tables.mfc(lab, 4), kernel_tables.vifs(lab, 4))
    assert after == before
    assert before[0][api[1]] == ["r2"]
    # The next reload of files the kernel takes applies them.
    lab.ip(lab.router, "link", "set", "lo", "mtu", "65536")
    write(daemon, routes(count, '"r2"', first=1))
    assert daemon.ok("reload").startswith(f"0 added, 1 removed, {count - 1} changed")
