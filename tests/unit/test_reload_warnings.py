"""A reload, its dry run and --check-config say what the files' routes and templates wait
for (interfaces that do not exist: a typo is seen) and which settings change only at a
restart, as warnings mfcctl prints; a missing interface stays accepted."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mfcd import config, netlink, probes, validate
from mfcd.controller import Controller
from mfcd.daemon import REACH_CHUNK, Daemon, _counted, check_config, unreached_of
from mfcd.declarations import Declarations
from mfcd.model import Ports
from mfcd.netlink import MRule
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
# (the template 239.83.0.0/16 is named as a template: a reload said "2 degraded" of routes;
# its vlan* matches no interface: named as a missing one, trial 14 F9)
INTERFACES = (
    "1 route is pending (waiting for r7) and 1 route and 1 template degraded (waiting for rX,"
    " vlan*): no such interfaces (yet)"
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
    assert (result["pending"], result["degraded"], result["missing"]) == (
        1,
        2,
        ["r7", "rX", "vlan*"],
    )
    assert result["warnings"] == [
        "metrics_listen changes only at restart; mfcd keeps '' until then",
        INTERFACES,
    ]


def test_a_dry_run_says_what_the_reload_would_leave_waiting_and_keep(tmp_path: Path) -> None:
    result = reloaded(tmp_path, dry_run=True)
    assert result["dry_run"] is True
    assert (result["pending"], result["degraded"], result["missing"]) == (
        1,
        2,
        ["r7", "rX", "vlan*"],
    )
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
    links = {**LINKS, "r7": 3, "rX": 4, "vlan1": 5}
    monkeypatch.setattr(netlink, "current_links", lambda: links)
    assert check_config(str(path)) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture
def no_after_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload's work after its change (the learner, the tables' sockets, the status):
    none of it here, where the daemon has only a controller."""
    monkeypatch.setattr(Daemon, "_after_change", lambda self: None)


def reload_of(path: Path, dry_run: bool) -> tuple[dict[str, Any], config.Config]:
    """A reload (or its dry run) of the files at `path` by a daemon started with the
    defaults (see no_after_change): its result and the settings it runs with after it."""

    async def reload() -> tuple[dict[str, Any], config.Config]:
        mfcd = Daemon(config.Config(), str(path), {})
        mfcd.controller = Controller(FakeKernel(), FakeState())
        return await mfcd.reload_config(dry_run=dry_run), mfcd.cfg

    return asyncio.run(reload())


@pytest.mark.usefixtures("no_after_change")
@pytest.mark.parametrize("dry_run", [True, False])
def test_on_config_error_changed_takes_effect_at_the_next_start_and_a_reload_says_so(
    tmp_path: Path, dry_run: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a start reads on_config_error (a reload is all or nothing): a reload that
    changed it said nothing, as if it were applied."""
    path = tmp_path / "mfc_daemon.conf"
    path.write_text('on_config_error = "refuse"\nlog_level = "debug"\n')
    caplog.set_level("INFO")
    result, running = reload_of(path, dry_run)
    later = (
        "on_config_error takes effect at the next start (a reload is all or nothing whatever"
        " it says)"
    )
    assert result["warnings"] == [later]
    assert running.on_config_error == "skip_file"  # (as the start read it, until the next)
    assert running.log_level == ("info" if dry_run else "debug")  # the others apply
    assert (f"reload: {later}" in caplog.text) is not dry_run


@pytest.mark.usefixtures("no_after_change")
def test_a_reload_lists_every_file_it_read_the_main_file_of_settings_only_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`files` left out the main file when it declared nothing (only settings), though
    --check-config counts it ("valid (2 files, ...)")."""
    path = tmp_path / "mfc_daemon.conf"
    path.write_text('log_level = "info"\n')
    assert reload_of(path, dry_run=True)[0]["files"] == [str(path)]
    (tmp_path / "mfc_daemon.d").mkdir()
    drop_in = tmp_path / "mfc_daemon.d" / "10.conf"
    drop_in.write_text(FILES.split("\n", 1)[1])  # (the routes, not the setting)
    empty = tmp_path / "mfc_daemon.d" / "20.conf"
    empty.write_text("# nothing yet\n")
    for dry_run in (True, False):
        assert reload_of(path, dry_run)[0]["files"] == [str(path), str(drop_in), str(empty)]
    monkeypatch.setattr(netlink, "current_links", lambda: dict(LINKS))
    assert check_config(str(path)) == 0  # (the same files, counted)
    assert capsys.readouterr().out.startswith(f"{path}: valid (3 files, 2 routes, 1 template,")


SETTINGS = (
    '[[interface]]\nname = "r0"\nthreshold = 4\n\n[[interface]]\nname = "r22"\nthreshold = 5\n'
)


@pytest.mark.usefixtures("no_after_change")
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_reload_warns_of_interface_settings_for_an_interface_that_does_not_exist(
    tmp_path: Path, dry_run: bool
) -> None:
    """A typo in an [[interface]] name was silent, unlike one in a route's (trial 14 F11)."""
    path = tmp_path / "mfc_daemon.conf"
    path.write_text(SETTINGS)

    async def reload() -> dict[str, Any]:
        mfcd = Daemon(config.Config(), str(path), {})
        ctl = mfcd.controller = Controller(FakeKernel(), FakeState())
        ctl.link_up("r0", 1)
        return await mfcd.reload_config(dry_run=dry_run)

    assert asyncio.run(reload())["warnings"] == [
        f"[[interface]] r22 ({path}:5): no such interface (yet); its settings apply when it appears"
    ]


def test_check_config_notes_interface_settings_for_interfaces_this_machine_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mfc_daemon.conf"
    path.write_text(SETTINGS + '\n[[interface]]\nname = "r23"\nmrdisc = true\n')
    monkeypatch.setattr(netlink, "current_links", lambda: dict(LINKS))
    assert check_config(str(path)) == 0
    assert capsys.readouterr().err == (
        f"{path}: note: on this machine, [[interface]] r22 ({path}:5), r23 ({path}:9): no such"
        " interfaces (yet); their settings apply when they appear\n"
    )
    monkeypatch.setattr(netlink, "current_links", lambda: {**LINKS, "r22": 3, "r23": 4})
    assert check_config(str(path)) == 0
    assert capsys.readouterr().err == ""


UNREACHED = """\
[[route]]
source = "198.18.10.2"
group = "239.84.1.1"
iif = "r0"
oifs = ["r2"]
table = 254

[[route]]
group = "239.85.0.0/16"
iif = "r1"
oifs = ["r2"]
"""


@pytest.fixture
def steered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The multicast rules send r1's traffic to table 100, the rest to the default table."""
    rules = [MRule(0, "lookup", 100, iif="r1"), MRule(32767, "lookup", 253)]
    monkeypatch.setattr(netlink, "dump_mrules", lambda family: rules)
    monkeypatch.setattr(netlink, "table_exists", lambda family, table: True)
    monkeypatch.setattr(validate, "_table_names", {"main": 254})


@pytest.mark.usefixtures("no_after_change", "steered")
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_reload_warns_of_routes_and_templates_in_a_table_their_iif_does_not_reach(
    tmp_path: Path, dry_run: bool
) -> None:
    """`table = 254` for IPv4, and a default-table template on an iif an mrule steers to
    table 100: valid, installed, forwarding nothing, and said nowhere (trial 14 F6)."""
    path = tmp_path / "mfc_daemon.conf"
    path.write_text(UNREACHED)

    async def reload() -> dict[str, Any]:
        mfcd = Daemon(config.Config(), str(path), {})
        ctl = mfcd.controller = Controller(FakeKernel(), FakeState())
        for n, name in enumerate(("r0", "r1", "r2"), 1):
            ctl.link_up(name, n)
        return await mfcd.reload_config(dry_run=dry_run)

    assert asyncio.run(reload())["warnings"] == [
        f"{path}:8: no multicast rule sends r1's traffic to IPv4's default table 253: r1 goes"
        " to table 100 (rule 0: iif r1 lookup 100)",
        f"{path}:1: no multicast rule sends r0's traffic to IPv4 table 254 (main): r0 goes to"
        " the default table (rule 32767: from all lookup 253); IPv4's default table is 253"
        " (`default`)",
    ]


@pytest.mark.usefixtures("steered")
def test_check_config_notes_routes_in_a_table_their_iif_does_not_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mfc_daemon.conf"
    path.write_text(UNREACHED)
    monkeypatch.setattr(netlink, "current_links", lambda: {"r0": 1, "r1": 2, "r2": 3})
    assert check_config(str(path)) == 0
    notes = capsys.readouterr().err.splitlines()
    assert [n.split(": no multicast rule")[0] for n in notes] == [
        f"{path}: note: on this machine, {path}:8",
        f"{path}: note: on this machine, {path}:1",
    ]


@pytest.mark.usefixtures("steered")
def test_a_reloads_unreached_pass_is_sliced_and_says_what_one_pass_says() -> None:
    """The (family, table, iif) of each route a reload adds were noted in one pass that held
    the loop (some 0.4 s at 1,000,000 routes, review 2026-12-03): now in the sliced pass
    that counts the routes, clients served in between, with the same warnings."""
    count = 3 * REACH_CHUNK + 7
    keys = [
        (4, f"198.18.{i >> 8 & 255}.{i & 255}", "239.85.0.1", 100 if i < REACH_CHUNK else 253)
        for i in range(count)
    ]
    iifs = ["r0", "r1", "r1", "r2"]  # each a stretch of routes: r1 reaches 100 alone
    declared = Declarations(
        files=["f.conf"],
        routes={k: Ports(iifs[i * len(iifs) // count], ("r9",)) for i, k in enumerate(keys)},
        positions={k: i + 1 for i, k in enumerate(keys)},
    )
    rules = probes.read_rules
    whole = unreached_of(declared, keys, rules)
    assert [w.split(": no multicast rule")[0] for w in whole] == ["f.conf:1", "f.conf:2001"]
    combinations: Counter[Ports] = Counter()
    reaching: dict[tuple[int, int, str], str] = {}
    slices = list(_counted(declared, iter(keys), combinations, reaching))
    assert sum(slices) >= count + len(keys) and slices[-4:] == [REACH_CHUNK] * 3 + [7]
    assert unreached_of(declared, (), rules, reaching) == whole
    assert combinations == Counter(declared.routes.values())
