"""A reload, its dry run and --check-config say what the files' routes and templates wait
for (interfaces that do not exist: a typo is seen) and which settings change only at a
restart, as warnings mfcctl prints; a missing interface stays accepted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mfcd import config, netlink
from mfcd.controller import Controller
from mfcd.daemon import Daemon, check_config
from tests.unit.conftest import FakeKernel, FakeState

FILES = """\
metrics_listen = "127.0.0.1:10041"

[[route]]
source = "198.18.10.2"
group = "239.82.1.1"
iif = "r7"
oifs = ["r2"]

[[route]]
source = "198.18.10.2"
group = "239.82.1.2"
iif = "r0"
oifs = ["r2", "rX"]

[[route]]
group = "239.83.0.0/16"
iif = "r0"
oifs = ["r2", "rX", "vlan*"]
"""
LINKS = {"r0": 1, "r2": 2}
INTERFACES = (
    "1 route is pending (waiting for r7) and 2 degraded (waiting for rX): no such interfaces (yet)"
)


def reloaded(tmp_path: Path, dry_run: bool) -> dict[str, object]:
    path = tmp_path / "mfc_daemon.conf"
    path.write_text(FILES)

    async def reload() -> dict[str, object]:
        mfcd = Daemon(config.Config(), str(path), {})
        ctl = mfcd.controller = Controller(FakeKernel(), FakeState())
        for name, ifindex in LINKS.items():
            ctl.link_up(name, ifindex)
        if dry_run:
            return await mfcd.reload_config(dry_run=True)
        declared = config.load_all(str(path))[1]
        kept = mfcd._restart_only(config.load_all(str(path))[0])
        return await mfcd._reload_warnings(declared, kept, dry_run=False)

    return asyncio.run(reload())


def test_a_reload_warns_of_routes_waiting_for_interfaces_and_settings_kept(
    tmp_path: Path,
) -> None:
    result = reloaded(tmp_path, dry_run=False)
    assert (result["pending"], result["degraded"], result["missing"]) == (1, 2, ["r7", "rX"])
    assert result["warnings"] == [
        "metrics_listen changes only at restart; mfcd keeps '' until then",
        INTERFACES,
    ]


def test_a_dry_run_says_what_the_reload_would_leave_waiting_and_keep(tmp_path: Path) -> None:
    result = reloaded(tmp_path, dry_run=True)
    assert result["dry_run"] is True
    assert (result["pending"], result["degraded"], result["missing"]) == (1, 2, ["r7", "rX"])
    assert result["warnings"] == [
        "metrics_listen changes only at restart; mfcd keeps '' until then",
        INTERFACES.replace("is pending", "would be pending"),
    ]


def test_check_config_notes_the_interfaces_this_machine_lacks_and_stays_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mfc_daemon.conf"
    path.write_text(FILES)
    monkeypatch.setattr(netlink, "current_links", lambda: dict(LINKS))
    assert check_config(str(path)) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: valid (1 file, 2 routes, 1 template, 0 joins, 0 interfaces)\n"
    assert err == (
        f"{path}: note: on this machine, "
        + INTERFACES.replace("is pending", "would be pending")
        + "\n"
    )
    monkeypatch.setattr(netlink, "current_links", lambda: {**LINKS, "r7": 3, "rX": 4})
    assert check_config(str(path)) == 0
    assert capsys.readouterr().err == ""
