"""bench/bulk_ab.py runs end to end on a small table, so it cannot rot (root only)."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys

from tests.bench.test_bench_quick import NEEDS_ROOT, REPO, namespaces

pytestmark = NEEDS_ROOT


def test_bulk_ab_measures_both_revisions_against_the_raw_loop_and_cleans_up() -> None:
    prefix = f"mfcdab{secrets.token_hex(3)}"
    src = str(REPO / "src")
    command = [sys.executable, str(REPO / "bench" / "bulk_ab.py"), "--prefix", prefix]
    try:
        result = subprocess.run(
            [*command, "--base", src, "--head", src, "--routes", "2000", "--rounds", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for ns in namespaces(prefix):  # only if the bench could not clean up after itself
            subprocess.run(["ip", "netns", "del", ns], check=False)
    assert result.returncode == 0, result.stderr
    assert namespaces(prefix) == []
    for side in ("A", "B"):
        for figure in ("batch/raw", "restart/raw", "batch cpu", "restart rss"):
            row = re.search(rf"^  {side} {re.escape(figure)} +([0-9.]+)", result.stdout, re.M)
            assert row is not None, result.stdout
            # (CPU time is in clock ticks: it may be 0 for 2,000 routes)
            assert float(row.group(1)) > 0 or figure.endswith("cpu")
