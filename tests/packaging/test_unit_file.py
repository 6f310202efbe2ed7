"""Offline checks of packaging/mfc_daemon.service: systemd-analyze verify and security."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "mfc_daemon.service"
MAX_EXPOSURE = 2.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def directives() -> dict[str, list[str]]:
    """Key -> values over all sections; systemd allows a key to repeat."""
    result: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        result.setdefault(key.strip(), []).append(value.strip())
    return result


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= and ExecReload= on an existing binary: verify fails when
    /usr/bin/mfcd or /usr/bin/mfcctl is absent (the package installs them)."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/mfcd " in text and "ExecReload=/usr/bin/mfcctl " in text
    copy = tmp_path / UNIT.name
    text = text.replace("ExecStart=/usr/bin/mfcd ", "ExecStart=/bin/true ")
    copy.write_text(text.replace("ExecReload=/usr/bin/mfcctl ", "ExecReload=/bin/true "))
    return copy


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@needs_systemd_analyze
def test_verify_prints_nothing(tmp_path: Path) -> None:
    # Unknown keys and unparsable values are only warnings with rc 0, hence "prints nothing".
    # The man pages are checked after installing the .deb (tests/packaging/test_packages.py).
    result = run("systemd-analyze", "verify", "--man=no", str(runnable_copy(tmp_path)))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    # --threshold is on a 0-100 scale: 20 fails anything displayed above 2.0.
    result = run(
        "systemd-analyze",
        "security",
        "--offline=true",
        f"--threshold={round(MAX_EXPOSURE * 10)}",
        "--no-pager",
        str(runnable_copy(tmp_path)),
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_fixed_decisions() -> None:
    unit = directives()
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == ["/usr/bin/mfcd --config /etc/mfc_daemon.conf"]
    assert unit["ExecReload"] == ["/usr/bin/mfcctl --socket /run/mfcd/mfcd.sock reload"]
    assert unit["User"] == unit["Group"] == ["mfc"]
    assert unit["RuntimeDirectory"] == unit["StateDirectory"] == ["mfcd"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(unit["AmbientCapabilities"][0].split()) == caps
    assert set(unit["CapabilityBoundingSet"][0].split()) == caps
    assert set(unit["RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX",
        "AF_NETLINK",
        "AF_INET",
        "AF_INET6",
    }
    assert "WatchdogSec" in unit
    assert unit["WantedBy"] == ["multi-user.target"]


def test_the_fd_store_keeps_tables_across_a_restart_but_not_a_stop() -> None:
    # mfcd stores one socket per family and table in use (docs/operations.md); without a
    # store systemd closes them at once and a restart flushes the tables as before.
    unit = directives()
    assert int(unit["FileDescriptorStoreMax"][0]) >= 16
    # Kept across a stop, the tables would forward after `systemctl stop`.
    assert unit.get("FileDescriptorStorePreserve", ["no"]) == ["no"]


def test_host_network_and_identity_stay_real() -> None:
    # The daemon programs the host's multicast routing: its own netns, user namespace or a
    # dynamic uid (the CLI's socket access goes by the static group mfc) would break it.
    unit = directives()
    for key in ("PrivateNetwork", "PrivateUsers", "DynamicUser", "IPAddressDeny", "ProcSubset"):
        assert key not in unit, key


def seconds(value: str) -> float:
    """A systemd time span of one unit ("2s", "60s", "1min", "500ms") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min)?", value)
    assert match, value
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[match.group(2)]


def test_a_restart_loop_trips_the_start_limit() -> None:
    # Restarting every RestartSec, mfcd starts StartLimitBurst times in (burst - 1) *
    # RestartSec plus its start-ups: that must fit the interval, or the loop never ends
    # (systemd's default, 5 in 10 s, does not with RestartSec=2s and 1 s start-ups).
    unit = directives()
    burst = int(unit["StartLimitBurst"][0])
    interval = seconds(unit["StartLimitIntervalSec"][0])
    restart_sec = seconds(unit["RestartSec"][0])
    start_up = 3.0  # seconds: a start that fails (config read, tables opened and released)
    assert burst * (restart_sec + start_up) <= interval
