"""Start-up refusals and the control socket's safety, with the real mfcd in a lab namespace.

Loose state or socket directories, a socket swapped for a symlink before a reload, the
default socket group missing, no privileges, a daemon run by another user: each must
end in one clear line (or a refusal) and never in a traceback or a chmod through a link.
"""

from __future__ import annotations

import grp
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import BIN, Mfcd

pytestmark = pytest.mark.lab(receivers=1)
REPO = Path(__file__).resolve().parents[2]


def _config(directory: Path, socket_dir: Path, state_dir: Path, extra: str = "") -> Path:
    path = directory / "mfc_daemon.conf"
    path.write_text(
        f'socket_path = "{socket_dir / "mfcd.sock"}"\n'
        f'state_file = "{state_dir / "state.journal"}"\n{extra}'
    )
    return path


def _refused(lab: Lab, *cmd: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must not start mfcd; its one line of stderr."""
    proc = lab.spawn(lab.router, *cmd, env=env)
    proc.wait(timeout=30)
    code, out, err = lab.stop(proc)
    assert code == 1, err
    assert "Traceback" not in err and out == ""
    assert err.count("\n") == 1, err
    return err


def _mfcd(*args: str) -> tuple[str, ...]:
    return (str(BIN / "mfcd"), *args)


def test_a_loose_state_or_socket_directory_is_refused(lab: Lab, tmp_path: Path) -> None:
    loose, tidy = tmp_path / "loose", tmp_path / "tidy"
    loose.mkdir(mode=0o755)
    tidy.mkdir(mode=0o755)
    loose.chmod(0o777)  # as the issue found them
    conf = _config(tmp_path, tidy, loose)
    err = _refused(lab, *_mfcd("--config", str(conf)))
    assert f"refusing the state directory {loose}: {loose} is writable by others (mode 0777)" in err
    _check_refuses_as_the_start(conf, err)
    conf = _config(tmp_path, loose / "run", tidy)  # below a loose parent, also refused
    err = _refused(lab, *_mfcd("--config", str(conf)))
    assert f"refusing the socket directory {loose / 'run'}: {loose} is writable by others" in err
    _check_refuses_as_the_start(conf, err)
    assert not (tidy / "state.journal").exists()  # refused before touching anything


def _check_refuses_as_the_start(conf: Path, err: str) -> None:
    """Trial 15 F7: `mfcd --check-config` refuses what the start refuses, with its line."""
    check = subprocess.run(
        _mfcd("--check-config", "--config", str(conf)), capture_output=True, text=True, check=False
    )
    refusal = err[err.index("refusing the ") :].strip()
    assert (check.returncode, check.stdout, check.stderr) == (1, "", f"{conf}: {refusal}\n")


def test_a_sticky_parent_such_as_tmp_is_fine(lab: Lab, tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    daemon = Mfcd(lab, tmp_path)
    daemon.socket = str(sticky / "mfcd" / "mfcd.sock")  # created by mfcd, mode 0755
    daemon.config_file.write_text(
        f'socket_path = "{daemon.socket}"\nstate_file = "{sticky / "st" / "state.journal"}"\n'
        'socket_group = ""\n'
    )
    daemon.start()
    try:
        assert daemon.ok("ping").startswith("mfcd")
        assert stat.S_IMODE(os.stat(sticky / "mfcd").st_mode) == 0o755
    finally:
        daemon.stop()


def test_a_reload_does_not_chmod_what_took_the_sockets_place(
    lab: Lab, mfcd: Mfcd, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o644)
    before = os.stat(victim)
    real = str(tmp_path / "real.sock")
    os.rename(mfcd.socket, real)
    os.symlink(victim, mfcd.socket)
    base = mfcd.config_file.read_text()
    mfcd.config_file.write_text(
        base.replace('socket_group = ""', 'socket_group = "nogroup"') + 'socket_mode = "0600"\n'
    )
    assert mfcd.proc is not None
    refused = f"{mfcd.socket} is no longer the socket mfcd created"
    mfcd.proc.send_signal(signal.SIGHUP)
    log = _read_log_until(mfcd.proc, refused)
    assert mfcd.ctl("--socket", real, "ping").returncode == 0  # still serving, after the reload
    # Another socket in its place: a socket, but not the one mfcd bound.
    os.unlink(mfcd.socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as impostor:
        impostor.bind(mfcd.socket)
        os.chmod(mfcd.socket, 0o755)
        mfcd.config_file.write_text(base + 'socket_mode = "0640"\n')
        mfcd.proc.send_signal(signal.SIGHUP)
        log += _read_log_until(mfcd.proc, refused)
        assert mfcd.ctl("--socket", real, "ping").returncode == 0
        assert stat.S_IMODE(os.stat(mfcd.socket).st_mode) == 0o755
    after = os.stat(victim)
    assert (stat.S_IMODE(after.st_mode), after.st_gid) == (0o644, before.st_gid)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o660  # the failed reloads changed nothing
    log += mfcd.stop()[1]
    assert log.count(refused) == 2
    assert "configuration reloaded" not in log


def _read_log_until(proc: subprocess.Popen[str], text: str, timeout: float = 20) -> str:
    """What the daemon logs until a line with `text` (read from the pipe's descriptor: the
    rest is left for Mfcd.stop to collect)."""
    assert proc.stderr is not None
    fd, seen, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    while text.encode() not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, seen.decode()
        if select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, seen.decode()  # the daemon exited
            seen += chunk
    while not seen.endswith(b"\n"):  # the rest of that line
        seen += os.read(fd, 1)
    return seen.decode()


@pytest.fixture
def no_mfc_group() -> None:
    try:
        grp.getgrnam("mfc")
    except KeyError:
        return
    pytest.skip("group mfc exists on this machine")


@pytest.mark.usefixtures("no_mfc_group")
def test_without_the_default_group_the_socket_is_root_only(lab: Lab, tmp_path: Path) -> None:
    daemon = Mfcd(lab, tmp_path)
    daemon.config_file.write_text(
        f'socket_path = "{daemon.socket}"\nstate_file = "{daemon.state_file}"\n'
    )
    daemon.start()
    try:
        st = os.stat(daemon.socket)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, os.getegid())
        assert daemon.ok("ping").startswith("mfcd")
    finally:
        _, log = daemon.stop()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "group mfc does not exist" in warnings[0]


@pytest.mark.usefixtures("no_mfc_group")
def test_a_named_socket_group_must_exist(lab: Lab, tmp_path: Path) -> None:
    conf = _config(tmp_path, tmp_path, tmp_path, 'socket_group = "mfc"\n')
    err = _refused(lab, *_mfcd("--config", str(conf)))
    assert "socket group 'mfc' does not exist" in err
    conf = _config(tmp_path, tmp_path, tmp_path)
    err = _refused(lab, *_mfcd("--config", str(conf), "--socket-group", "mfc"))
    assert "socket group 'mfc' does not exist" in err


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can enter, with a copy of the package (the venv may sit in
    directories other users cannot enter): run it with Debian's python3."""
    path = Path(tempfile.mkdtemp(prefix="mfcd-test-"))
    try:
        path.chmod(0o755)
        shutil.copytree(REPO / "src" / "mfcd", path / "code" / "mfcd")
        subprocess.run(["chmod", "-R", "a+rX", str(path / "code")], check=True)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _public_mfcd(*args: str) -> tuple[str, ...]:
    return ("/usr/bin/python3", "-m", "mfcd.daemon", "--config", "/dev/null", *args)


def _env(public: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(public / "code"), "PATH": "/usr/bin:/bin"}


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
PATHS = ("--socket", "/nonexistent/mfcd.sock", "--state-file", "/nonexistent/state.journal")


def test_not_root_is_one_line(lab: Lab, public_dir: Path) -> None:
    for prefix in (NOBODY, ("setpriv", "--inh-caps=-all", "--bounding-set=-all")):
        err = _refused(lab, *prefix, *_public_mfcd(*PATHS), env=_env(public_dir))
        assert "mfcd needs CAP_NET_ADMIN and CAP_NET_RAW: run it as root" in err
    assert not os.path.exists("/nonexistent")


def test_start_up_failures_are_one_line(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    state = str(tmp_path / "state.journal")
    cases = {
        "is a file: choose another directory": ("--socket", str(tmp_path / "file" / "s.sock")),
        "cannot read the state file: Is a directory": ("--state-file", str(tmp_path / "dir")),
        "exists and is not a socket": ("--socket", str(tmp_path / "dir")),
        "AF_UNIX path too long": ("--socket", str(tmp_path / ("x" * 120))),
        "cannot read: Is a directory": ("--config", str(tmp_path / "dir")),
    }
    for message, args in cases.items():
        cmd = ["--socket", str(tmp_path / "mfcd.sock"), "--state-file", state, *args]
        err = _refused(lab, *_mfcd("--socket-group", "", *cmd))
        assert message in err


def test_mfcctl_refuses_a_socket_served_by_another_user(lab: Lab, public_dir: Path) -> None:
    # A real mfcd run by nobody with the unit's capabilities: its own directories pass the
    # check, and mfcctl run by root refuses to talk to it, while nobody itself may.
    home = public_dir / "nobody"
    home.mkdir(mode=0o755)
    os.chown(home, 65534, 65534)
    sock = str(home / "run" / "mfcd.sock")
    caps = ("--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw")
    args = ("--socket", sock, "--state-file", str(home / "lib" / "state.journal"))
    proc = lab.spawn(lab.router, *NOBODY, *caps, *_public_mfcd(*args), env=_env(public_dir))
    try:
        deadline = time.monotonic() + 15
        while True:  # until it serves
            as_nobody = subprocess.run(
                [*NOBODY, "/usr/bin/python3", "-m", "mfcd.cli", "--socket", sock, "ping"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env=_env(public_dir),
            )
            if as_nobody.returncode == 0 or proc.poll() is not None:
                break
            assert time.monotonic() < deadline, as_nobody.stderr
            time.sleep(0.1)
        as_root = subprocess.run(
            [str(BIN / "mfcctl"), "--socket", sock, "ping"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        code, _, log = lab.stop(proc)
    assert as_root.returncode == 7 and as_root.stdout == ""
    assert f"refusing {sock}: it is served by uid 65534, not by root" in as_root.stderr
    assert as_nobody.returncode == 0 and as_nobody.stdout.startswith("mfcd"), as_nobody.stderr
    assert code == 0, log
