"""End to end: routes and interface settings declared in the config files, reload by diff,
drop-ins, wildcards, --check-config and smcroute.conf import, with the real mfcd and packets."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd, route_args, smcrouted
from tests.netns.test_joins import capture, groups, memberships, mrd
from tests.netns.test_metrics import fetch

SOURCE = "198.18.0.2"
DATA = Path(__file__).parent.parent / "data" / "smcroute"


def route(group: str, iif: str, *oifs: str, source: str = SOURCE) -> str:
    names = ", ".join(f'"{n}"' for n in oifs)
    return f'\n[[route]]\nsource = "{source}"\ngroup = "{group}"\niif = "{iif}"\noifs = [{names}]\n'


def write_config(mfcd: Mfcd, declarations: str) -> None:
    """Keep the daemon's own settings (the first lines the fixture wrote), new declarations."""
    settings = mfcd.config_file.read_text().split("\n[[", 1)[0].rstrip("\n")
    mfcd.config_file.write_text(settings + "\n" + declarations)


def received(lab: Lab, group: str) -> list[int]:
    counts = lab.probe(group)
    return [counts[ns] for ns in lab.rx]


def shown(mfcd: Mfcd, stats: bool = False) -> dict[str, dict[str, Any]]:
    args = ("show", "--stats", "--output", "json") if stats else ("show", "--output", "json")
    routes = json.loads(mfcd.ok(*args))["routes"]
    return {r["group"]: r for r in routes}


def packets(mfcd: Mfcd, group: str) -> int:
    count: int = shown(mfcd, stats=True)[group]["stats"]["packets"]
    return count


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Any:
    daemon = Mfcd(lab, tmp_path)
    yield daemon
    if daemon.proc is not None:
        daemon.stop()


def test_config_routes_installed_at_start_and_reload_applies_the_difference(
    lab: Lab, daemon: Mfcd
) -> None:
    write_config(
        daemon,
        route("239.5.0.1", "r0", "r1")  # unchanged by the reload
        + route("239.5.0.2", "r0", "r2")  # removed
        + route("239.5.0.3", "r0", "r1"),  # changed: to r2
    )
    daemon.start()
    assert received(lab, "239.5.0.1") == [5, 0, 0]
    assert received(lab, "239.5.0.2") == [0, 5, 0]
    assert packets(daemon, "239.5.0.1") == 5
    daemon.ok(*route_args(SOURCE, "239.5.0.9", "r0", "r3"))  # a runtime route

    write_config(
        daemon,
        route("239.5.0.1", "r0", "r1")
        + route("239.5.0.3", "r0", "r2")
        + route("239.5.0.4", "r0", "r3"),
    )
    dry = daemon.ok("reload", "--dry-run")
    assert (
        "add 198.18.0.2 -> 239.5.0.4" in dry and "1 added, 1 removed, 1 changed, 1 unchanged" in dry
    )
    assert "239.5.0.4" not in shown(daemon)  # a dry run changes nothing
    out = daemon.ok("reload")
    assert out.strip() == "1 added, 1 removed, 1 changed, 1 unchanged"

    routes = shown(daemon)
    assert set(routes) == {"239.5.0.1", "239.5.0.3", "239.5.0.4", "239.5.0.9"}
    assert received(lab, "239.5.0.1") == [5, 0, 0]
    # Not touched in the kernel: its counters went on from 5, not from 0.
    assert packets(daemon, "239.5.0.1") == 10
    assert received(lab, "239.5.0.2") == [0, 0, 0]
    assert received(lab, "239.5.0.3") == [0, 5, 0]
    assert received(lab, "239.5.0.4") == [0, 0, 5]
    assert received(lab, "239.5.0.9") == [0, 0, 5]  # the runtime route survived

    # A runtime change to a config route is refused, naming the file and line.
    refused = daemon.ctl("mfc", "del", "--source", SOURCE, "--group", "239.5.0.1", "-o", "json")
    assert refused.returncode == 1
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "declared_in_config"
    header = daemon.config_file.read_text().splitlines().index("[[route]]") + 1
    assert f"{daemon.config_file}:{header}" in refused.stderr  # its [[route]] header
    assert refused.stderr.count(f"{daemon.config_file}:{header}") == 1  # said once
    assert (error["file"], error["line"]) == (str(daemon.config_file), header)  # for programs
    assert received(lab, "239.5.0.1") == [5, 0, 0]

    # Config routes are not in the state file: a restart without them in the file ends them,
    # and the runtime route comes back.
    daemon.stop()
    write_config(daemon, "")
    daemon.start()
    assert set(shown(daemon)) == {"239.5.0.9"}


def test_a_bad_config_changes_nothing_and_reload_names_file_and_line(
    lab: Lab, daemon: Mfcd
) -> None:
    write_config(daemon, route("239.5.1.1", "r0", "r1"))
    daemon.start()
    before = kernel_tables.mfc(lab, 4)
    write_config(daemon, route("239.5.1.1", "r0", "r2") + route("10.1.1.1", "r0", "r3"))
    result = daemon.ctl("reload")
    assert result.returncode == 1
    assert f"{daemon.config_file}:" in result.stderr and "10.1.1.1" in result.stderr
    # Where: in the error object as well (once in the text mfcctl prints).
    error = json.loads(daemon.ctl("-o", "json", "reload").stdout)["error"]
    assert (error["code"], error["file"]) == ("config_error", str(daemon.config_file))
    lines = daemon.config_file.read_text().splitlines()
    assert "10.1.1.1" in lines[error["line"] - 1]
    assert result.stderr == f"mfcctl: {error['message']}\n"
    assert error["message"].startswith(f"{daemon.config_file}:{error['line']}: ")
    assert kernel_tables.mfc(lab, 4) == before
    assert received(lab, "239.5.1.1") == [5, 0, 0]
    # SIGHUP: the same, logged.
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert received(lab, "239.5.1.1") == [5, 0, 0]
    _, log = daemon.stop()
    assert "reload failed" in log


def test_drop_ins_are_read_at_start_and_on_sighup(lab: Lab, daemon: Mfcd) -> None:
    drop_ins = daemon.config_file.with_suffix(".d")
    drop_ins.mkdir()
    (drop_ins / "10-a.conf").write_text(route("239.5.2.1", "r0", "r1"))
    (drop_ins / "ignored.txt").write_text("not read: only *.conf")
    daemon.start()
    assert set(shown(daemon)) == {"239.5.2.1"}
    (drop_ins / "20-b.conf").write_text(route("239.5.2.2", "r0", "r2"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "239.5.2.2" not in shown(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received(lab, "239.5.2.2") == [0, 5, 0]


@pytest.mark.lab(receivers=3, linked=2)
def test_wildcard_oifs_follow_interfaces_that_come_and_go(lab: Lab, daemon: Mfcd) -> None:
    write_config(daemon, route("239.5.3.1", "r0", "r*"))
    daemon.start()
    assert shown(daemon)["239.5.3.1"]["oifs"] == ["r1", "r2"]
    assert received(lab, "239.5.3.1")[:2] == [5, 5]
    lab.add_receiver_link(3)  # r3 appears: no reload needed
    deadline = time.monotonic() + 10
    while shown(daemon)["239.5.3.1"]["oifs"] != ["r1", "r2", "r3"]:
        assert time.monotonic() < deadline, shown(daemon)
        time.sleep(0.05)
    assert received(lab, "239.5.3.1") == [5, 5, 5]
    lab.del_router_link("r2")
    while shown(daemon)["239.5.3.1"]["oifs"] != ["r1", "r3"]:
        assert time.monotonic() < deadline, shown(daemon)
        time.sleep(0.05)
    assert shown(daemon)["239.5.3.1"]["state"] == "installed"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mfcd"), "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[[route]]\ngroup = "239.1.1.1"\niif = "a"\noifs = [\n', 4, "not valid TOML"),
        ("log_level = 3\n", 1, "log_level must be a str"),
        ('[[route]]\ngroup = "239.1.1.1"\niif = "a"\noifs = ["b"]\ncolour = 1\n', 5, "unknown key"),
        (
            '[[route]]\nsource = "198.18.0.2"\ngroup = "239.1.1.1"\niif = "a"\noifs = "b"\n',
            5,
            "oifs",
        ),
        (
            '[[route]]\nsource = "198.18.0.2"\ngroup = "10.1.1.1"\niif = "a"\noifs = ["b"]\n',
            3,
            "not a multicast",
        ),
        (
            '[[route]]\nsource = "2001:db8::1"\ngroup = "239.1.1.1"\niif = "a"\noifs = ["b"]\n',
            3,
            "different address families",
        ),
        (route("239.1.1.1", "a", "b") + route("239.1.1.1", "a", "c"), 10, "declared twice"),
        (
            '[[route]]\nsource = "198.18.0.0/16"\ngroup = "239.1.0.0/24"\niif = "a"\noifs = ["b"]\n'
            '[[route]]\nsource = "198.18.1.0/24"\ngroup = "239.1.0.0/16"\n'
            'iif = "a"\noifs = ["b"]\n',
            6,
            "overlaps",
        ),
        (
            "".join(route(f"239.1.1.{k}", "a", f"o{k}") for k in range(40)),
            6 * 31 + 2,
            "more than 32 VIFs",
        ),
        ('[[interface]]\nname = "a"\nthreshold = 0\n', 3, "threshold"),
    ],
)
def test_check_config_catches_each_error_class(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(text)
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    assert f"{path}:{line}: " in result.stderr, result.stderr
    assert words in result.stderr


def write_imported(daemon: Mfcd, original: Path) -> None:
    """Convert an smcroute.conf with mfcctl import-smcroute into the daemon's config file."""
    converted = subprocess.run(
        [str(BIN / "mfcctl"), "import-smcroute", str(original)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert converted.returncode == 0, converted.stderr
    write_config(daemon, converted.stdout)
    assert check_config(daemon.config_file).returncode == 0


def test_imported_smcroute_config_forwards_like_smcroute(
    lab: Lab, daemon: Mfcd, tmp_path: Path
) -> None:
    original = DATA / "forward.conf"
    # smcroute with the original file first.
    with smcrouted(lab, original, tmp_path, "-N"):
        by_smcroute = {g: received(lab, g) for g in ("239.7.7.1", "239.7.7.2")}

    write_imported(daemon, original)
    daemon.start()
    by_mfcd = {g: received(lab, g) for g in ("239.7.7.1", "239.7.7.2")}
    assert by_smcroute == by_mfcd == {"239.7.7.1": [5, 5, 0], "239.7.7.2": [0, 0, 5]}


TEMPLATE = '\n[[route]]\ngroup = "239.8.0.0/24"\niif = "r0"\noifs = ["r1"]\n'
JOIN = '\n[[join]]\ninterface = "r2"\ngroup = "239.8.9.9"\n'


def templates_shown(mfcd: Mfcd) -> dict[str, dict[str, Any]]:
    return {r["group"]: r for r in mfcd.show()["routes"] if r.get("template")}


def refused_code(mfcd: Mfcd, *args: str) -> tuple[str, str]:
    result = mfcd.ctl(*args, "-o", "json")
    assert result.returncode == 1, result.stdout
    return json.loads(result.stdout)["error"]["code"], result.stderr


def test_config_templates_and_joins_are_applied_and_a_reload_takes_them_away(
    lab: Lab, daemon: Mfcd
) -> None:
    write_config(daemon, TEMPLATE + JOIN)
    daemon.start()
    # The template forwards a sender no route names (its entry is learned from the upcall).
    assert received(lab, "239.8.0.1") == [5, 0, 0]
    assert templates_shown(daemon)["239.8.0.0/24"]["origin"] == "config"
    assert "installed, config" in daemon.ok("show")
    assert "239.8.9.9" in memberships(lab, "r2", 4)
    [join] = groups(daemon)
    assert (join["group"], join["origin"]) == ("239.8.9.9", "config")
    # Runtime ones next to them; the API may not change the config's.
    daemon.ok("mfc", "add", "--group", "239.8.1.0/24", "--iif", "r0", "--oifs", "r3")
    daemon.ok("join", "--interface", "r3", "--group", "239.8.9.8")
    daemon.ok("join", "--interface", "r2", "--group", "239.8.9.9")  # idempotent
    code, message = refused_code(daemon, "mfc", "del", "--group", "239.8.0.0/24")
    assert code == "declared_in_config" and f"{daemon.config_file}:" in message
    code, message = refused_code(daemon, "leave", "--interface", "r2", "--group", "239.8.9.9")
    assert code == "declared_in_config" and f"{daemon.config_file}:" in message

    write_config(daemon, "")
    dry = daemon.ok("reload", "--dry-run")
    assert "remove template * -> 239.8.0.0/24" in dry and "leave * -> 239.8.9.9 on r2" in dry
    assert "239.8.9.9" in memberships(lab, "r2", 4)  # a dry run changes nothing
    out = daemon.ok("reload")
    assert "templates: 1 removed" in out and "joins: 1 removed" in out
    assert received(lab, "239.8.0.1") == [0, 0, 0]
    assert "239.8.9.9" not in memberships(lab, "r2", 4)
    # The runtime template and join survived the reload.
    assert received(lab, "239.8.1.1") == [0, 0, 5]
    assert "239.8.9.8" in memberships(lab, "r3", 4)
    assert set(templates_shown(daemon)) == {"239.8.1.0/24"}

    # Not in the state file: after a restart only the runtime ones come back.
    daemon.stop()
    daemon.start()
    assert set(templates_shown(daemon)) == {"239.8.1.0/24"}
    assert memberships(lab, "r2", 4) & {"239.8.9.9"} == set()
    assert "239.8.9.8" in memberships(lab, "r3", 4)


def test_imported_smcroute_mroute_without_source_forwards_and_mgroup_joins(
    lab: Lab, daemon: Mfcd
) -> None:
    write_imported(daemon, DATA / "forward-any.conf")
    daemon.start()
    assert received(lab, "239.7.8.1") == [0, 5, 0]
    assert "239.7.8.8" in memberships(lab, "r3", 4)


def test_config_mrdisc_advertises_is_refused_to_the_api_and_ends_with_a_reload(
    lab: Lab, daemon: Mfcd
) -> None:
    write_config(daemon, '\n[[interface]]\nname = "r1"\nmrdisc = true\n')
    # The window covers the start (seconds on a loaded machine) and the first of the initial
    # advertisements, each up to mrdisc.MAX_INITIAL_INTERVAL after the one before.
    with capture(lab, lab.rx[0], "x0", 7.0) as seen:
        daemon.start()
    assert mrd(seen, 0x30), seen  # advertisements, from start-up on
    assert json.loads(daemon.ok("show", "groups", "-o", "json"))["mrdisc"] == ["r1"]
    [setting] = json.loads(daemon.ok("vif", "show", "-o", "json"))["settings"]
    assert (setting["mrdisc"], setting["mrdisc_origin"]) == (True, "config")
    assert "threshold_origin" not in setting  # (the files set no threshold on r1)
    assert daemon.ok("vif", "show").splitlines()[-1].split() == ["r1", "-", "on", "config"]
    code, message = refused_code(daemon, "vif", "set", "r1", "--no-mrdisc")
    assert code == "declared_in_config" and f"{daemon.config_file}:" in message
    write_config(daemon, "")
    with capture(lab, lab.rx[0], "x0", 1.5) as seen:
        assert "1 mrdisc setting changed" in daemon.ok("reload")
    assert len(mrd(seen, 0x32)) == 1, seen  # a termination
    assert json.loads(daemon.ok("show", "groups", "-o", "json"))["mrdisc"] == []


def test_reload_dry_run_says_it_takes_over_an_api_route_and_threshold(
    lab: Lab, daemon: Mfcd
) -> None:
    daemon.start()
    daemon.ok(*route_args(SOURCE, "239.3.3.3", "r0", "r1,r2,r3"))
    daemon.ok("vif", "set", "r1", "--threshold", "10")
    assert received(lab, "239.3.3.3") == [0, 5, 5]  # (TTL 8: not above r1's threshold)
    settings = '\n[[interface]]\nname = "r1"\nthreshold = 5\n'
    same = '\n[[interface]]\nname = "r0"\nthreshold = 1\n'  # (r0 is at 1: no change)
    write_config(daemon, route("239.3.3.3", "r0", "r1") + settings + same)
    dry = daemon.ok("reload", "-n").splitlines()
    where = f"{daemon.config_file}:"
    take = "  take over api route 198.18.0.2 -> 239.3.3.3 (oifs r1,r2,r3 -> r1)"
    assert any(line.startswith(take + f"  ({where}") for line in dry), dry
    assert any(
        line.startswith("  set threshold 5 on r1 (replaces the api value 10)") for line in dry
    )
    assert not any("on r0" in line for line in dry), dry
    assert dry[-1] == "0 added, 0 removed, 0 changed, 0 unchanged, 2 taken over from the api"
    result = json.loads(daemon.ok("-o", "json", "reload", "-n"))
    (entry,) = [e for e in result["plan"] if e["action"] == "take_over"]
    assert entry["was"] == {"iif": "r0", "oifs": ["r1", "r2", "r3"]}
    assert (result["added"], result["taken_over"], result["thresholds"]) == (0, 2, 0)
    assert received(lab, "239.3.3.3") == [0, 5, 5]  # (a dry run changes nothing)
    assert daemon.ok("reload").strip() == dry[-1]
    assert received(lab, "239.3.3.3") == [5, 0, 0]
    assert shown(daemon)["239.3.3.3"]["origin"] == "config"


def test_reload_dry_run_says_it_takes_over_an_api_template_and_join(lab: Lab, daemon: Mfcd) -> None:
    daemon.start()
    daemon.ok("mfc", "add", "--group", "239.8.0.0/24", "--iif", "r0", "--oifs", "r1,r2")
    daemon.ok("join", "--interface", "r2", "--group", "239.8.9.9")
    assert received(lab, "239.8.0.1") == [5, 5, 0]
    write_config(daemon, TEMPLATE + JOIN)
    dry = daemon.ok("reload", "-n").splitlines()
    where = f"{daemon.config_file}:"
    template = "  add template * -> 239.8.0.0/24 iif r0 oifs r1"
    template += " (takes over the api template: oifs r1,r2 -> r1)"
    assert any(line.startswith(f"{template}  ({where}") for line in dry), dry
    join = "  join * -> 239.8.9.9 on r2 (takes over the api join)"
    assert any(line.startswith(f"{join}  ({where}") for line in dry), dry
    assert dry[-1] == "0 added, 0 removed, 0 changed, 0 unchanged, 2 taken over from the api"
    result = json.loads(daemon.ok("-o", "json", "reload", "-n"))
    assert (result["taken_over"], result["templates"]["added"], result["joins"]["added"]) == (
        2,
        0,
        0,
    )
    assert received(lab, "239.8.0.1") == [5, 5, 0]  # (a dry run changes nothing)
    assert daemon.ok("reload").strip() == dry[-1]
    assert templates_shown(daemon)["239.8.0.0/24"]["origin"] == "config"
    [joined] = groups(daemon)
    assert (joined["group"], joined["origin"]) == ("239.8.9.9", "config")
    assert "239.8.9.9" in memberships(lab, "r2", 4)
    assert received(lab, "239.8.0.1") == [5, 0, 0]


def test_reload_and_check_config_warn_of_missing_interfaces_and_settings_kept(
    lab: Lab, daemon: Mfcd
) -> None:
    """A typo in a drop-in (iif r7, oif rX: no such interfaces) is accepted, as pending
    and degraded routes and templates, and said (a template as a template): on stderr by
    reload -n and reload, in their JSON, and as a note by --check-config run on this
    machine; a restart-only setting changed is said as kept until a restart, and
    on_config_error, which only a start reads, as taking effect at the next start."""
    write_config(daemon, route("239.82.0.9", "r0", "r1"))
    daemon.start()
    settings = daemon.config_file.read_text().split("\n[[", 1)[0].rstrip("\n")
    daemon.config_file.write_text(
        settings
        + '\nmetrics_listen = "127.0.0.1:10041"\non_config_error = "refuse"\n'
        + route("239.82.0.9", "r0", "r1")
        + route("239.82.1.1", "r7", "r2")
        + route("239.82.1.2", "r0", "r2", "rX")
        + '\n[[route]]\ngroup = "239.83.0.0/16"\niif = "r0"\noifs = ["r2", "rX"]\n'
    )
    kept = [
        "mfcctl: warning: metrics_listen changes only at restart; mfcd keeps '' until then",
        "mfcctl: warning: on_config_error takes effect at the next start (a reload is all or"
        " nothing whatever it says)",
    ]
    waiting = (
        "1 {} pending (waiting for r7) and 1 route and 1 template degraded (waiting for rX):"
        " no such interfaces (yet)"
    )

    dry = daemon.ctl("reload", "-n")
    assert dry.returncode == 0, dry.stderr
    assert dry.stderr.splitlines() == [
        *kept,
        "mfcctl: warning: " + waiting.format("route would be"),
    ]
    assert "add 198.18.0.2 -> 239.82.1.1 iif r7 oifs r2" in dry.stdout

    noted = lab.exec(
        lab.router, str(BIN / "mfcd"), "--check-config", "--config", str(daemon.config_file)
    )
    assert noted.returncode == 0 and "valid (1 file, 3 routes, 1 template," in noted.stdout
    assert noted.stderr == (
        f"{daemon.config_file}: note: on this machine, {waiting.format('route would be')}\n"
    )

    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 added, 0 removed, 0 changed, 1 unchanged, templates: 1 added\n"
    assert done.stderr.splitlines() == [*kept, "mfcctl: warning: " + waiting.format("route is")]
    routes = shown(daemon)
    assert (routes["239.82.1.1"]["state"], routes["239.82.1.2"]["state"]) == ("pending", "degraded")

    again = json.loads(daemon.ok("reload", "-o", "json"))  # (nothing to change: still said)
    assert (again["pending"], again["degraded"], again["missing"]) == (1, 2, ["r7", "rX"])
    assert again["warnings"][2] == waiting.format("route is")
    nothing = daemon.ctl("reload", "-n")
    assert nothing.stdout.startswith("dry run: nothing to change\n")


def test_a_start_with_a_bad_drop_in_leaves_it_out_and_a_reload_applies_it_once_fixed(
    lab: Lab, tmp_path: Path
) -> None:
    """F11: one bad declaration in a drop-in stopped mfcd at start (exit 1), taking down every
    flow, the state file's api routes too. Now the file is left out, told at error level, in
    the status line and in /metrics, and a reload applies it once it is fixed."""
    daemon = Mfcd(lab, tmp_path, config='metrics_listen = "127.0.0.1:10040"\n')
    try:
        write_config(daemon, route("239.5.9.1", "r0", "r1"))
        daemon.start()
        daemon.ok(*route_args(SOURCE, "239.5.9.2", "r0", "r2"))  # an api route
        assert received(lab, "239.5.9.1") == [5, 0, 0]
        assert received(lab, "239.5.9.2") == [0, 5, 0]
        daemon.stop()

        # A fleet tool drops in a file with one bad route (and a good one) while mfcd is down.
        drop_ins = daemon.config_file.with_suffix(".d")
        drop_ins.mkdir()
        bad = drop_ins / "80-bad.conf"
        bad.write_text(route("239.5.9.3", "r0", "r3") + route("239.5.9.4", "r0", "r0"))
        daemon.start()
        assert received(lab, "239.5.9.1") == [5, 0, 0]  # the main file's route
        assert received(lab, "239.5.9.2") == [0, 5, 0]  # the state file's
        assert received(lab, "239.5.9.3") == [0, 0, 0]  # left out with its file
        assert set(shown(daemon)) == {"239.5.9.1", "239.5.9.2"}

        def left_out() -> str:
            body: str = fetch(lab, "http://127.0.0.1:10040/metrics")["body"]
            return next(ln for ln in body.splitlines() if ln.startswith("mfcd_config_files_left"))

        assert left_out() == "mfcd_config_files_left_out 1"
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGUSR1)  # the status line, as STATUS= says it
        diagnosed = daemon.ctl("diagnose", "--source", SOURCE, "--group", "239.5.9.3")
        assert f"mfcd left out {bad} at start for an error" in diagnosed.stdout
        refused = daemon.ctl("reload")  # still bad: all or nothing, nothing changes
        assert refused.returncode == 1 and f"{bad}:" in refused.stderr

        bad.write_text(route("239.5.9.3", "r0", "r3"))  # fixed
        assert daemon.ok("reload").strip() == "1 added, 0 removed, 0 changed, 1 unchanged"
        assert received(lab, "239.5.9.3") == [0, 0, 5]
        assert received(lab, "239.5.9.2") == [0, 5, 0]
        assert left_out() == "mfcd_config_files_left_out 0"
        _, log = daemon.stop()

        # on_config_error = "refuse": the start of old, exit status 1 naming FILE:LINE.
        text = daemon.config_file.read_text()
        daemon.config_file.write_text('on_config_error = "refuse"\n' + text)
        bad.write_text(route("239.5.9.4", "r0", "r0"))
        with pytest.raises(RuntimeError, match=f"mfcd exited with 1: mfcd: {bad}:"):
            daemon.start()
        daemon.proc = None
    finally:
        if daemon.proc is not None:
            daemon.stop()
    assert f"ERROR: config: {bad}:" in log and "iif r0 is also listed in oifs" in log
    assert f"ERROR: config: left out {bad} (on_config_error" in log
    assert "1 config file left out for errors (see the log; mfcctl reload once fixed)" in log
    assert "config: every file applied, none left out any more" in log


def test_an_unreadable_drop_in_directory_is_named_as_one_and_reload_lists_every_file(
    lab: Lab, tmp_path: Path
) -> None:
    """A drop-in directory mfcd cannot read is left out at start (on_config_error =
    "skip_file"): the log, the status line and diagnose name it as the directory it is (it
    was "1 config file left out"); the gauge counts it as one. Once it is a directory
    again, reload -o json lists every file read: the main file, which holds only settings
    (it was left out of `files`), and the drop-in."""
    daemon = Mfcd(lab, tmp_path, config='metrics_listen = "127.0.0.1:10040"\n')
    drop_ins = daemon.config_file.with_suffix(".d")
    drop_ins.write_text("a file where the drop-in directory belongs\n")

    def left_out() -> str:
        body: str = fetch(lab, "http://127.0.0.1:10040/metrics")["body"]
        return next(ln for ln in body.splitlines() if ln.startswith("mfcd_config_files_left"))

    try:
        daemon.start()
        assert left_out() == "mfcd_config_files_left_out 1"
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGUSR1)  # the status line, as STATUS= says it
        diagnosed = daemon.ctl("diagnose", "--source", SOURCE, "--group", "239.5.8.1")
        assert f"mfcd left out the drop-in directory {drop_ins} at start" in diagnosed.stdout

        drop_ins.unlink()
        drop_ins.mkdir()
        (drop_ins / "10.conf").write_text(route("239.5.8.1", "r0", "r1"))
        reloaded = json.loads(daemon.ok("reload", "-o", "json"))
        assert reloaded["files"] == [str(daemon.config_file), str(drop_ins / "10.conf")]
        assert reloaded["summary"] == "1 added, 0 removed, 0 changed, 0 unchanged"
        assert received(lab, "239.5.8.1") == [5, 0, 0]
        assert left_out() == "mfcd_config_files_left_out 0"
        _, log = daemon.stop()
    finally:
        if daemon.proc is not None:
            daemon.stop()
    assert f"ERROR: config: {drop_ins}: cannot read the drop-in directory" in log
    assert f"ERROR: config: left out the drop-in directory {drop_ins} (on_config_error" in log
    assert "; the drop-in directory left out for errors (see the log; mfcctl reload" in log
    assert "config file left out" not in log
