"""End to end: mfcd confined as mfc_daemon.service confines it, without systemd.

The unit's user, capabilities, no_new_privs, umask and seccomp rules (SystemCallFilter=,
SystemCallErrorNumber=, RestrictAddressFamilies=, MemoryDenyWriteExecute=) are read from
packaging/mfc_daemon.service and applied by `setpriv` and tests/netns/confine.py; the daemon
then does its everyday work. A system call the unit forbids, used on any of these paths,
fails here as it would under systemd (where the service would die or a feature fail in
production), so a change to the code or to the unit that breaks the service fails this test.
The user is nobody (65534): the test creates no system user. Not emulated: the file-system
and namespace settings (ProtectSystem=, PrivateTmp=, ...), which a daemon running as an
unprivileged user in a directory of its own does not reach here anyway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import route_args, running
from tests.netns.test_hardening import LoggedMfcd

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "mfc_daemon.service"
CONFINE = Path(__file__).with_name("confine.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike the venv's interpreter under /root
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
PYTHON_C = [SYSTEM_PYTHON, "-c"]
ROUTES = 60_000  # a batch this long goes to the kernel writer processes (dataplane.LATER_MIN)


def unit_settings(text: str) -> dict[str, list[str]]:
    """The [Service] assignments of a unit file, each key's values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups(listing: str) -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`'s output: each @group's members (calls and @groups)."""
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.startswith(" ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def allowed_calls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """What SystemCallFilter= lines allow, read as systemd reads an allow list: the first line
    is the list, a `~` line takes its calls out again, a later plain line puts them back."""
    assert filters and not filters[0].startswith("~"), "the unit's filter is an allow list"
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        calls = expand(line.lstrip("~").split(), groups)
        allowed = allowed - calls if deny else allowed | calls
    return allowed


def confinement(settings: dict[str, list[str]]) -> dict[str, object]:
    """The spec confine.py applies, from the unit's settings."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    families = settings["RestrictAddressFamilies"][-1].split()
    return {
        "allow": sorted(allowed_calls(settings["SystemCallFilter"], syscall_groups(listing))),
        "errno": getattr(__import__("errno"), settings["SystemCallErrorNumber"][-1]),
        "families": [int(getattr(socket, family)) for family in families],
        "deny_write_execute": settings["MemoryDenyWriteExecute"][-1] == "yes",
        "umask": int(settings["UMask"][-1], 8),
    }


def setpriv_args(settings: dict[str, list[str]]) -> list[str]:
    """setpriv's options for the unit's user (as nobody), capabilities and no_new_privs."""
    caps = ",".join(
        "+" + cap.lower().removeprefix("cap_")
        for cap in settings["AmbientCapabilities"][-1].split()
    )
    bounding = ",".join(
        "+" + cap.lower().removeprefix("cap_")
        for cap in settings["CapabilityBoundingSet"][-1].split()
    )
    assert settings["NoNewPrivileges"][-1] == "yes"
    return [
        *AS_NOBODY,
        f"--inh-caps=-all,{caps}",
        f"--ambient-caps=-all,{caps}",
        f"--bounding-set=-all,{bounding}",
        "--no-new-privs",
    ]


def staged(top: Path, settings: dict[str, list[str]]) -> tuple[Path, Path]:
    """The confinement's spec and a copy of confine.py in `top`, all readable by nobody (the
    checkout's own files are left as they are: a chmod there would leave git a changed file)."""
    top.chmod(0o755)
    spec = top / "confinement.json"
    spec.write_text(json.dumps(confinement(settings)))
    launcher = top / CONFINE.name
    shutil.copyfile(CONFINE, launcher)
    for path in (spec, launcher):
        path.chmod(0o644)
    return spec, launcher


class ConfinedMfcd(LoggedMfcd):
    """mfcd from a copy of src/ readable by nobody, run by Debian's python3 as the unit runs it;
    its log in a file (a start restoring 60,000 routes at log level debug would fill a pipe)."""

    def __init__(self, lab: Lab, workdir: Path, code: Path, spec: Path) -> None:
        super().__init__(lab, workdir)
        self.code = code
        self.spec = spec
        self.settings = unit_settings(UNIT.read_text())

    def command(self) -> list[str]:
        return [
            *setpriv_args(self.settings),
            SYSTEM_PYTHON,
            str(self.spec.with_name(CONFINE.name)),
            str(self.spec),
            SYSTEM_PYTHON,
            "-m",
            "mfcd.daemon",
            "--config",
            str(self.config_file),
        ]

    def wait_ready(self, timeout: float = 15) -> None:
        try:
            super().wait_ready(timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its log:\n{self.log_path.read_text()}") from None

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(self.code)}

    def ctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """mfcctl as the daemon's own user: it trusts a socket served by root, by user mfc or
        by itself (here nobody stands in for mfc, which the test does not create)."""
        return subprocess.run(
            [*AS_NOBODY, SYSTEM_PYTHON, "-m", "mfcd.cli", "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            check=False,
            env=self.env(),
        )


@pytest.fixture
def confined(lab: Lab) -> Iterator[ConfinedMfcd]:
    # Not under pytest's tmp_path: its parents are root's alone (0700), and nobody must
    # reach the code, the config and its own state directory.
    top = Path(tempfile.mkdtemp(prefix="mfcd-confined-"))
    try:
        spec, _ = staged(top, unit_settings(UNIT.read_text()))
        code = top / "src"
        shutil.copytree(ROOT / "src" / "mfcd", code / "mfcd")
        work = top / "work"
        work.mkdir(mode=0o700)
        os.chown(work, NOBODY, NOBODY)
        for path in [code, *code.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        with running(ConfinedMfcd(lab, work, code, spec)) as daemon:
            yield daemon
    finally:
        shutil.rmtree(top, ignore_errors=True)


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def received(lab: Lab, group: str) -> list[int]:
    counts = lab.probe(group)
    return [counts[ns] for ns in lab.rx]


def test_the_confinement_is_real() -> None:
    """The filter refuses what the unit refuses: a call of @resources, a packet socket, a
    writable and executable mapping; and what it allows still works (so the daemon test
    below proves something)."""
    settings = unit_settings(UNIT.read_text())
    with tempfile.TemporaryDirectory() as top:
        spec, launcher = staged(Path(top), settings)
        probe = (
            "import mmap, os, socket\n"
            "def tried(f):\n"
            "    try:\n        f()\n        return 'allowed'\n"
            "    except OSError as e:\n        return e.strerror\n"
            "print(tried(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))))\n"
            "print(tried(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)))\n"
            "print(tried(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)))\n"
            "print(tried(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 2).close()))\n"
            "print(tried(lambda: os.setuid(os.getuid())))\n"
            "print(os.getuid(), oct(os.umask(0)))\n"
        )
        result = subprocess.run(
            [*setpriv_args(settings), SYSTEM_PYTHON, str(launcher), str(spec), *PYTHON_C, probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Operation not permitted"  # sched_setaffinity: @resources
    assert lines[1] == "Operation not permitted"  # AF_PACKET: not in RestrictAddressFamilies
    assert lines[2] == "Operation not permitted"  # MemoryDenyWriteExecute
    assert lines[3] == "allowed"  # a raw IGMP socket: CAP_NET_RAW, AF_INET
    assert lines[4] == "Operation not permitted"  # setuid, even to itself: @privileged
    assert lines[5] == f"{NOBODY} 0o77"


@pytest.mark.lab(receivers=3)
def test_mfcd_does_its_work_confined_as_the_unit_confines_it(
    lab: Lab, confined: ConfinedMfcd
) -> None:
    assert confined.proc is not None
    status = status_of(confined.proc.pid)
    assert status["Uid"].split()[0] == str(NOBODY)
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"

    # Routes of both families, with packets; the kernel writer processes (a long batch) and
    # the state journal's fsync and compaction.
    confined.ok(*route_args("198.18.0.2", "239.1.1.1", "r0", "r1,r2"))
    confined.ok(*route_args("2001:db8::2", "ff3e::1:1", "r0", "r3"))
    lines = "".join(
        f"mfc add --source 198.18.0.2 --group 239.{2 + i // 65536}.{i // 256 % 256}.{i % 256}"
        f" --iif r0 --oifs r3\n"
        for i in range(ROUTES)
    )
    batch = confined.workdir.parent / "routes.batch"
    batch.write_text(lines)
    batch.chmod(0o644)
    confined.ok("batch", str(batch))
    assert received(lab, "239.1.1.1") == [5, 5, 0]
    assert received(lab, "ff3e::1:1") == [0, 0, 5]
    assert received(lab, "239.2.0.7") == [0, 0, 5]

    # Counters (ioctl), a join (its sockets raise the open-files limit), a template that the
    # kernel's upcalls teach, a VIF setting, a sync, a reload by request and by SIGHUP.
    stats = json.loads(confined.ok("show", "--stats", "--output", "json"))
    route = next(r for r in stats["routes"] if r["group"] == "239.1.1.1")
    assert route["stats"]["packets"] == 5
    confined.ok("join", "--interface", "r1", "--group", "239.9.0.0/22")
    confined.ok("mfc", "add", "--group", "239.8.0.0/16", "--iif", "r0", "--oifs", "r2")
    assert received(lab, "239.8.1.1") == [0, 5, 0]
    confined.ok("vif", "set", "r3", "--threshold", "3")
    # A route in another IPv6 table: the drift check probes its MIFs on a socket of its own.
    confined.ok(*route_args("2001:db8::2", "ff3e::1:2", "r0", "r2"), "--table", "100")
    assert confined.ok("sync", "--full").startswith("kernel and mfcd agree")
    confined.ok("reload")
    assert confined.proc is not None
    confined.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    shown = confined.show()
    learned = [r for r in shown["routes"] if r.get("origin") == "learned"]
    assert [r["group"] for r in learned] == ["239.8.1.1"]  # taught by the kernel's upcall
    joins = json.loads(confined.ok("show", "groups", "--output", "json"))["groups"]
    assert len(joins) == 1024 and {j["state"] for j in joins} == {"joined"}

    # A clean stop, and a restart that brings every route back from the journal.
    code, log = confined.stop()
    assert code == 0, log
    assert "kernel writer (pid" in log  # the batch went through the writer processes
    assert not re.search(r"Operation not permitted|Traceback|CRITICAL|ERROR", log), log
    confined.start()
    again = confined.show()
    assert len(again["routes"]) == len(shown["routes"]) - 1 == ROUTES + 4  # learned: not saved
    assert received(lab, "239.1.1.1") == [5, 5, 0]
    assert received(lab, "239.2.0.7") == [0, 0, 5]
    code, log = confined.stop()
    assert code == 0, log
    assert not re.search(r"Operation not permitted|Traceback|CRITICAL|ERROR", log), log
