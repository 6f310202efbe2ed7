"""`make demo` works: the tour routes, forwards, deletes, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab.netns import leftover_namespaces

REPO = Path(__file__).resolve().parents[2]


def test_demo_forwards_to_the_routed_receivers_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lab.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    routed, deleted = out.split("== deleting the route")

    def received(text: str) -> list[str]:
        return [
            line.split("received ")[1].split()[0]
            for line in text.splitlines()
            if "received" in line
        ]

    assert received(routed) == ["5", "5", "0"]
    assert received(deleted) == ["0"] * 3
    assert "dry run, nothing changed" in out and "installed" in out
    # The demo's own namespaces are gone (others' may come and go meanwhile).
    built = set(out.split("building namespaces ", 1)[1].splitlines()[0].split(", "))
    assert len(built) == 5 and not built & set(leftover_namespaces())
