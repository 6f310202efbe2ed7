"""What the benches that compare two revisions in child processes share: their A/B
arguments (--base, --head, --rounds), the revisions to run, and a child run with one
revision's `src` first on the path, the figures it prints as JSON on its last line read.
Used by bench/server_path.py and bench/request_path.py."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of an A/B bench (its own added after), described by its docstring's
    first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--base", type=Path, help="src directory of revision A")
    parser.add_argument("--head", type=Path, default=ROOT / "src", help="revision B")
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def revisions(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The revisions to run in turn: B alone, or A (--base) then B (--head)."""
    return [("B", args.head)] if args.base is None else [("A", args.base), ("B", args.head)]


def run_child(src: Path, child: str, *args: str, figures: bool = True) -> dict[str, float]:
    """Run `child` (Python source) with revision `src` and this checkout (for tests/) on the
    path: the figures it prints as JSON on its last line, or with `figures=False` {} (its
    output left to the terminal)."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", child, *args],
        env=env,
        check=True,
        stdout=subprocess.PIPE if figures else None,
        text=True,
    ).stdout
    if not figures:
        return {}
    read: dict[str, float] = json.loads(out.splitlines()[-1])
    return read
