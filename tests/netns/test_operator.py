"""End to end: statistics from real packets, VIF settings, JSON output, verbose and dry runs."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import BIN, Mfcd
from tests.netns.test_forwarding import FAMILY, FLOWS, add, received


def stats_of(mfcd: Mfcd) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    shown: dict[str, Any] = json.loads(mfcd.ok("show", "--stats", "--output", "json"))
    routes = {r["group"]: r["stats"] for r in shown["routes"]}
    vifs = {(v["family"], v["interface"]): v["stats"] for v in shown["vifs"]}
    return routes, vifs


@pytest.mark.parametrize("family", [4, 6])
def test_statistics_count_real_packets(lab: Lab, mfcd: Mfcd, family: int) -> None:
    group = FLOWS[family][1]
    add(mfcd, family, "r0", "r1", "r2")
    routes, vifs = stats_of(mfcd)
    assert routes[group] == {"packets": 0, "bytes": 0, "wrong_if": 0}
    assert received(lab, family) == [5, 5, 0]
    routes, vifs = stats_of(mfcd)
    assert routes[group]["packets"] == 5 and routes[group]["bytes"] > 5 * 10
    assert routes[group]["wrong_if"] == 0
    fam = FAMILY[family]
    assert vifs[(fam, "r0")]["packets_in"] == 5 and vifs[(fam, "r0")]["packets_out"] == 0
    assert vifs[(fam, "r1")]["packets_out"] == 5 and vifs[(fam, "r2")]["packets_out"] == 5
    assert vifs[(fam, "r1")]["bytes_out"] == vifs[(fam, "r0")]["bytes_in"]
    table = mfcd.ok("show", "--stats")
    assert "PACKETS" in table and "PKTS OUT" in table
    assert all(len(line) <= 80 for line in table.splitlines())


def watching(socket: str, interval: str) -> subprocess.Popen[str]:
    """`mfcctl show --watch` in JSON, started with SIGINT at its default: a test run
    started in the background by a non-interactive shell ignores SIGINT, children inherit
    an ignored signal (not a handler), and Python then installs no KeyboardInterrupt, so
    the watch would never see the Ctrl-C the test sends."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = ["--socket", socket, "show", "--watch", interval, "--output", "json"]
        return subprocess.Popen(
            [str(BIN / "mfcctl"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    finally:
        signal.signal(signal.SIGINT, before)


def test_watch_shows_rates_while_traffic_flows(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1")
    watch = watching(mfcd.socket, "0.2")
    try:
        sender = threading.Thread(target=lambda: lab.probe(FLOWS[4][1], count=40))
        sender.start()
        sender.join()
        time.sleep(0.5)
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    samples = [json.loads(line) for line in out.splitlines()]
    assert len(samples) >= 3
    rates = [s["rates"].get(f"{FLOWS[4][0]} {FLOWS[4][1]}", {}).get("pps", 0) for s in samples]
    assert max(rates) > 0  # packets were flowing during some interval
    assert samples[-1]["routes"][0]["stats"]["packets"] == 40


def test_ipv4_threshold_is_applied_persisted_and_shown(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1", "r2")
    # The lab sends with TTL 8: a threshold of 8 or more on r1 stops it there.
    mfcd.ok("vif", "set", "r1", "--threshold", "8")
    assert received(lab, 4) == [0, 5, 0]
    shown = json.loads(mfcd.ok("vif", "show", "--output", "json"))
    assert shown["settings"] == [
        {"interface": "r1", "threshold": 8, "mrdisc": False, "threshold_origin": "api"}
    ]
    assert {v["interface"]: v["threshold"] for v in shown["vifs"]}["r1"] == 8
    mfcd.stop()
    mfcd.start()
    assert received(lab, 4) == [0, 5, 0]  # re-applied at start
    mfcd.ok("vif", "set", "r1", "--threshold", "7")
    assert received(lab, 4) == [5, 5, 0]
    bad = mfcd.ctl("vif", "set", "r1", "--threshold", "0")
    assert bad.returncode == 1 and "1 to 255" in bad.stderr


def test_json_output_for_every_command(lab: Lab, mfcd: Mfcd) -> None:
    source, group = FLOWS[4]
    route = ["--source", source, "--group", group]

    def js(*args: str, stdin: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(mfcd.ok("--output", "json", *args, stdin=stdin))
        return result

    added = js("mfc", "add", *route, "--iif", "r0", "--oifs", "r1")
    assert added["state"] == "installed" and [s["action"] for s in added["plan"]] == [
        "add_vif",
        "add_vif",
        "add_mfc",
    ]
    assert js("ping")["families"] == ["ipv4", "ipv6"]
    assert js("show")["schema"] == 1
    assert js("vif", "show")["vifs"][0]["interface"] == "r0"
    assert js("vif", "set", "r2", "--threshold", "3")["plan"] == []  # r2 is no VIF yet
    assert js("sync")["repairs"] == []
    js("mfc", "add", *route, "--iif", "r0", "--oifs", "r3")  # replace: r1 out, r3 in
    # A batch answers with counts (its plan would be as long as the batch) ...
    batch = js("batch", "-", stdin=f"mfc add {' '.join(route)} --iif r0 --oifs r1,r3\n")
    assert batch["changes"] == 1 and "plan" not in batch
    assert batch["kernel_operations"] == {"add_vif": 1, "replace_mfc": 1}
    # ... and with the plan too under --verbose.
    verbose = json.loads(
        mfcd.ok("--output", "json", "--verbose", "batch", "-", stdin=f"mfc del {' '.join(route)}\n")
    )
    assert [s["action"] for s in verbose["plan"]] == ["del_mfc", "del_vif", "del_vif", "del_vif"]
    # mfcd parses the batch text; a line that does not parse is a usage error naming the line.
    bad = mfcd.ctl("batch", "-", stdin=f"# one good line, one bad\nmfc add {' '.join(route)}\n")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr == "mfcctl: stdin:2: `mfc add` needs --iif\n"
    failed = mfcd.ctl("--output", "json", "mfc", "del", *route)
    assert failed.returncode == 5
    assert json.loads(failed.stdout)["error"]["code"] == "not_found"


def test_a_batch_error_names_its_file_and_line(mfcd: Mfcd, tmp_path: Path) -> None:
    source, group = FLOWS[4]
    batch = tmp_path / "routes.batch"
    batch.write_text(
        f"# line 3 deletes a route that does not exist\n"
        f"mfc add --source {source} --group {group} --iif r0 --oifs r1\n"
        f"mfc del --source {source} --group 239.9.9.9\n"
    )
    missing = f"no route for source {source} group 239.9.9.9"
    failed = mfcd.ctl("batch", str(batch))
    assert (failed.returncode, failed.stderr) == (5, f"mfcctl: {batch}:3: {missing}\n")
    as_json = mfcd.ctl("--output", "json", "batch", str(batch))
    assert json.loads(as_json.stdout) == {
        "error": {"code": "not_found", "message": missing, "line": 3}
    }
    assert mfcd.show()["routes"] == []  # all or nothing


def test_verbose_and_dry_run(lab: Lab, mfcd: Mfcd) -> None:
    source, group = FLOWS[6]
    result = mfcd.ctl(
        "--verbose",
        "--dry-run",
        "mfc",
        "add",
        "--source",
        source,
        "--group",
        group,
        "--iif",
        "r0",
        "--oifs",
        "r1",
        "r2",
    )
    assert result.returncode == 0
    request, response, rtt = result.stderr.splitlines()
    assert request.startswith("> ") and json.loads(request[2:])["dry_run"] is True
    assert response.startswith("< ") and json.loads(response[2:])["ok"] is True
    assert rtt.startswith("round trip ") and rtt.endswith(" ms")
    assert "add mfc ipv6 2001:db8::2 -> ff3e::1:1 iif r0 oifs r1,r2 (VIF 0 -> 1,2)" in result.stdout
    assert mfcd.show()["routes"] == []
    assert received(lab, 6) == [0, 0, 0]


def test_a_verbose_change_names_its_interfaces_as_a_dry_run_does(lab: Lab, mfcd: Mfcd) -> None:
    """mfcctl -v prints the plan of the change it made with the interfaces named beside
    their VIF numbers, as -n does: an add that takes VIFs, one that takes none (the daemon's
    one-route lane) and a batch; the VIF numbers are the kernel's."""
    source, group = FLOWS[4]
    route = ["mfc", "add", "--source", source, "--group", group, "--iif", "r0"]
    planned = mfcd.ok("--dry-run", *route, "--oifs", "r1,r2")
    made = mfcd.ok("--verbose", *route, "--oifs", "r1,r2")
    step = f"add mfc ipv4 {source} -> {group} iif r0 oifs r1,r2 (VIF 0 -> 1,2)"
    assert made.splitlines() == [
        "add vif ipv4 VIF 0 (r0)",
        "add vif ipv4 VIF 1 (r1)",
        "add vif ipv4 VIF 2 (r2)",
        step,
    ]
    assert planned.splitlines()[1:] == [f"  {line}" for line in made.splitlines()]
    assert received(lab, 4) == [5, 5, 0]
    assert kernel_tables.vifs(lab, 4) == {0: "r0", 1: "r1", 2: "r2"}
    other = ["mfc", "add", "--source", source, "--group", "239.1.1.2", "--iif", "r0"]
    assert mfcd.ok("-v", *other, "--oifs", "r2") == (
        f"add mfc ipv4 {source} -> 239.1.1.2 iif r0 oifs r2 (VIF 0 -> 2)\n"
    )
    batch = mfcd.ok("--verbose", "batch", "-", stdin=" ".join([*route, "--oifs", "r2"]) + "\n")
    assert batch.splitlines() == [
        f"replace mfc ipv4 {source} -> {group} iif r0 oifs r2 (VIF 0 -> 2)",
        "del vif ipv4 VIF 1 (r1)",
        "1 added, 0 deleted",  # (an add that replaces a route: an add to a batch)
    ]
    assert received(lab, 4) == [0, 5, 0]  # (r1, r2, r3)
    assert kernel_tables.vifs(lab, 4) == {0: "r0", 2: "r2"}


def test_ipv6_ignores_thresholds_as_documented(lab: Lab, mfcd: Mfcd) -> None:
    # Linux's ip6mr forwards on every MIF in an entry's set whatever the MIF threshold; mfcctl's
    # help says so. This test notices if a kernel ever starts honouring it.
    mfcd.ok("vif", "set", "r1", "--threshold", "100")  # so r1's MIF is created with it
    add(mfcd, 6, "r0", "r1", "r2")
    assert received(lab, 6) == [5, 5, 0]
    # So vif show gives an IPv6 VIF no threshold (- in text), not the interface's 100.
    shown = json.loads(mfcd.ok("vif", "show", "--output", "json"))
    assert {v["interface"]: v["threshold"] for v in shown["vifs"] if v["family"] == "ipv6"} == {
        "r0": None,
        "r1": None,
        "r2": None,
    }


def test_watch_outlasts_the_client_timeout_and_too_large_is_reported(
    lab: Lab, tmp_path: Path
) -> None:
    daemon = Mfcd(lab, tmp_path, "client_timeout = 0.5\nmax_request_bytes = 65536\n")
    daemon.start()
    try:
        watch = watching(daemon.socket, "0.8")
        time.sleep(2.2)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
        assert watch.returncode == 0, err
        assert len(out.splitlines()) >= 3
        big = "".join(
            f"mfc add --source 198.18.0.2 --group 239.5.{i // 250}.{i % 250 + 1}"
            " --iif r0 --oifs r1\n"
            for i in range(2000)
        )
        result = daemon.ctl("batch", "-", stdin=big)
        assert result.returncode == 1 and "larger than 65536 bytes" in result.stderr
    finally:
        daemon.stop()
