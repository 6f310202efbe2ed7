"""The benchmark's quick mode runs end to end, so bench/run.py cannot rot (root only).

It checks that every scenario produced numbers for mfcd, smcroute and the raw floor, that
each comparison is a paired one with its range, that every target has a verdict, and that
no namespace or process of the run is left behind, also when the run fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What every end-to-end bench test needs (the others import it): root, for namespaces.
NEEDS_ROOT = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]
pytestmark = [
    *NEEDS_ROOT,
    pytest.mark.skipif(shutil.which("smcrouted") is None, reason="smcroute is not installed"),
]

# (scenario, tool) pairs the quick run must report; scenario 2's raw floor is the raw loop.
# Scenario 7 (batch line shapes) is mfcd's alone.
EXPECTED = {(s, tool) for s in range(1, 7) for tool in ("mfcd", "smcroute", "raw")} | {(7, "mfcd")}
# Like for like: CLI against CLI, open connection against smcroute's own IPC, in turn.
PAIRED = {
    (1, "smcroutectl -b -> all in kernel", "mfcctl batch -> next answer"),
    (1, "smcrouted start -> all in kernel", "mfcctl batch -> next answer"),
    (2, "smcrouted restart -> serving", "mfcd restart -> answers"),
    (3, "mfcctl mfc add", "smcroutectl add"),
    (3, "mfcctl ping", "python3 -I -c pass"),
    (3, "mfcctl show", "python3 -I -c pass"),
    (3, "mfcctl batch FILE", "python3 -I -c pass"),
    (4, "mfcctl show", "smcroutectl show routes"),
    (5, "mfc.add on an open connection", "smcroute IPC add (own connection)"),
    (5, "mfcctl mfc add", "smcroutectl add"),
    (7, "batch of 'add (no mfc), one oif' lines", "batch of 'mfc add, one oif' lines"),
}


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def test_quick_benchmark_reports_every_scenario_and_cleans_up(tmp_path: Path) -> None:
    prefix = f"mfcdq{secrets.token_hex(3)}"
    out = tmp_path / "results.json"
    # Its own session, so that on a timeout the whole process group can be stopped by id.
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            *("--quick", "--prefix", prefix, "--out", str(out)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # run.py cleans up on SIGTERM
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"the quick benchmark took longer than 90 s:\n{output}")
    finally:
        for ns in namespaces(prefix):  # only if run.py could not clean up after itself
            subprocess.run(["ip", "netns", "del", ns], check=False)
    assert proc.returncode == 0, output
    assert namespaces(prefix) == []
    with pytest.raises(ProcessLookupError):  # nothing the run started is still alive
        os.killpg(proc.pid, 0)
    data = json.loads(out.read_text())
    assert data["quick"] is True
    got = {(r["scenario"], r["tool"]) for r in data["results"]}
    assert not EXPECTED - got, f"missing {sorted(EXPECTED - got)}"
    for r in data["results"]:
        assert r["samples"] and all(x >= 0 for x in r["samples"]), r
        assert r["min"] <= r["median"] <= r["max"], r
    memory = [r for r in data["results"] if r["scenario"] == 6]
    assert all(r["unit"] == "MiB" for r in memory)
    assert any("VmHWM" in r["variant"] for r in memory)
    # A batch's time until the next answer includes its own answer, sample by sample.
    rows = {(r["scenario"], r["n"], r["variant"]): r["samples"] for r in data["results"]}
    for (scenario, n, variant), samples in rows.items():
        if variant == "mfcctl batch -> next answer":
            own = rows[(scenario, n, "mfcctl batch -> its answer")]
            assert all(a <= b for a, b in zip(own, samples, strict=True)), (own, samples)
    got_pairs = {(c["scenario"], c["a"], c["b"]) for c in data["comparisons"]}
    assert not PAIRED - got_pairs, f"missing {sorted(PAIRED - got_pairs)}"
    for c in data["comparisons"]:
        assert c["ratios"] and c["min"] <= c["median"] <= c["max"], c
    assert {t["scenario"] for t in data["targets"]} == set(range(1, 8))
    verdicts = {"met", "missed", "straddled"}
    assert all(t["verdict"] in verdicts for t in data["targets"]), data["targets"]
    for key in ("nproc", "cpu", "kernel", "python"):
        assert data["machine"][key], key
    assert "Targets:" in output
