"""The benchmark's quick mode runs end to end, so bench/run.py cannot rot (root only).

It checks that every scenario produced numbers for mfcd, smcroute and the raw floor, and
that no namespace or process of the run is left behind, also when the run fails.
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

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("smcrouted") is None, reason="smcroute is not installed"),
]

# (scenario, tool) pairs the quick run must report; scenario 2's raw floor is the raw loop.
EXPECTED = {(s, tool) for s in range(1, 7) for tool in ("mfcd", "smcroute", "raw")}


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
    assert {t["scenario"] for t in data["targets"]} == set(range(1, 7))
    assert all(t["met"] is not None for t in data["targets"]), data["targets"]
    for key in ("nproc", "cpu", "kernel", "python"):
        assert data["machine"][key], key
    assert "Targets:" in output
