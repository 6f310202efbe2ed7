"""bench/metrics.py runs end to end on a small table, so it cannot rot (root only)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

from tests.bench.test_bench_quick import NEEDS_ROOT, REPO, namespaces

pytestmark = NEEDS_ROOT


def test_metrics_benchmark_measures_a_scrape_and_cleans_up() -> None:
    prefix = f"mfcdm{secrets.token_hex(3)}"
    command = [sys.executable, str(REPO / "bench" / "metrics.py"), "--prefix", prefix]
    try:
        result = subprocess.run(
            [*command, "--routes", "2000", "--scrapes", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        for ns in namespaces(prefix):  # only if the bench could not clean up after itself
            subprocess.run(["ip", "netns", "del", ns], check=False)
    assert result.returncode == 0, result.stderr
    assert namespaces(prefix) == []
    data = json.loads(result.stdout)
    assert data["routes"] == 2000 and data["series"] == 6000
    assert len(data["scrape_seconds"]) == 2 and all(t > 0 for t in data["scrape_seconds"])
    assert len(data["mfcd_page_seconds"]) == 2 and len(data["loop_held_max_ms"]) == 2
    assert len(data["mfcd_cpu_seconds"]) == 2  # (in clock ticks: may be 0 for 2,000 routes)
    assert data["page_bytes"] > 2000 * 3 * 80  # every route's three series
    assert data["pings_during_scrapes"] > 0
