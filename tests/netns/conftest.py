"""Fixtures for end-to-end tests: a private namespace network and the real mfcd running in it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab.netns import Lab

BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/netns" in str(item.path):
            item.add_marker(pytest.mark.netns)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root (network namespaces)"))


def route_args(source: str, group: str, iif: str, oifs: str) -> list[str]:
    """The words of `mfcctl mfc add` for one route (oifs comma-separated)."""
    return ["mfc", "add", "--source", source, "--group", group, "--iif", iif, "--oifs", oifs]


class Mfcd:
    """The real daemon in the lab's router namespace, driven through the real mfcctl."""

    def __init__(self, lab: Lab, workdir: Path, config: str = "") -> None:
        self.lab = lab
        self.workdir = workdir
        self.socket = str(workdir / "mfcd.sock")
        self.state_file = str(workdir / "state.journal")
        self.config_file = workdir / "mfc_daemon.conf"
        self.config_file.write_text(
            f'socket_path = "{self.socket}"\nstate_file = "{self.state_file}"\n'
            f'socket_group = ""\nlog_level = "debug"\n{config}'
        )
        self.proc: subprocess.Popen[str] | None = None
        self.log = ""

    def start(self, wait: bool = True) -> None:
        self.proc = self.lab.spawn(
            self.lab.router, str(BIN / "mfcd"), "--config", str(self.config_file)
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                _, _, err = self.lab.stop(self.proc)
                raise RuntimeError(f"mfcd exited with {self.proc.returncode}: {err}")
            if self.ctl("ping").returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("mfcd did not become ready")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        code, _, err = self.lab.stop(self.proc, sig)
        self.log += err
        self.proc = None
        return code, err

    def ctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "mfcctl"), "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.ctl(*args, stdin=stdin)
        assert result.returncode == 0, f"mfcctl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def show(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ok("show", "--output", "json"))
        return data

    def wait_state(self, group: str, state: str, timeout: float = 10) -> dict[str, Any]:
        """Poll `show` until the route for `group` reaches `state`; return it."""
        deadline = time.monotonic() + timeout
        route: dict[str, Any] = {}
        while time.monotonic() < deadline:
            routes: list[dict[str, Any]] = self.show()["routes"]
            route = next(r for r in routes if r["group"] == group)
            if route["state"] == state:
                return route
            time.sleep(0.05)
        raise AssertionError(f"route to {group} stayed {route.get('state')}, not {state}")

    def kernel_routes(self, family: int) -> str:
        """What `ip mroute` says in the router namespace."""
        return self.lab.ip(self.lab.router, "-6" if family == 6 else "-4", "mroute", "show")


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The lab network; `@pytest.mark.lab(receivers=N, linked=M)` changes its shape."""
    marker = request.node.get_closest_marker("lab")
    the_lab = Lab(**(marker.kwargs if marker else {"receivers": 3}))
    the_lab.create()
    try:
        yield the_lab
    finally:
        the_lab.destroy()


D = TypeVar("D", bound=Mfcd)


@contextmanager
def running(daemon: D) -> Iterator[D]:
    """Start the daemon (of any Mfcd kind) and stop it afterwards, whatever happened."""
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None:
            daemon.stop()


@contextmanager
def smcrouted(lab: Lab, conf: Path, workdir: Path, *options: str) -> Iterator[None]:
    """The real smcrouted (in the foreground, `options` added) on `conf` in the router's
    namespace, from when it has written its pid file until the block ends."""
    pid = workdir / "smcroute.pid"
    proc = lab.spawn(
        lab.router,
        "smcrouted",
        "-n",
        *options,
        "-f",
        str(conf),
        "-l",
        "none",
        "-u",
        str(workdir / "smcroute.sock"),
        "-P",
        str(pid),
    )
    try:
        deadline = time.monotonic() + 10
        while not pid.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield
    finally:
        lab.stop(proc)


@pytest.fixture
def mfcd(lab: Lab, tmp_path: Path) -> Iterator[Mfcd]:
    try:
        with running(Mfcd(lab, tmp_path)) as daemon:
            yield daemon
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
