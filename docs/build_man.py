"""Generate the man pages mfcd(8), mfcctl(8) and mfc_daemon.conf(5) into docs/man (`make man`).

Sphinx's man builder renders docs/man/*.rst; their option and command lists come
from the programs' argparse parsers. The generated pages are committed, so
packages need no documentation tools; tests/docs/test_docs.py checks that they
are up to date. The output is deterministic: run it again and nothing changes.

Usage: python docs/build_man.py [OUTDIR]   (default: docs/man)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SOURCE = DOCS / "man"
PAGES = ("mfcd.8", "mfcctl.8", "mfc_daemon.conf.5")


def build(outdir: Path) -> list[Path]:
    """Render the man pages into `outdir`; return their paths. Raises on any Sphinx warning."""
    env = dict(os.environ)
    env.pop("MFCD_SOCKET", None)  # it changes mfcctl's documented --socket default
    env.pop("SOURCE_DATE_EPOCH", None)  # the date comes from debian/changelog
    env["COLUMNS"] = "80"  # argparse wraps usage lines to the terminal width
    with tempfile.TemporaryDirectory(prefix="mfcd-man-") as tmp:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sphinx",
                "-q",
                "-W",
                "-b",
                "man",
                "-d",
                f"{tmp}/doctrees",
                str(SOURCE),
                f"{tmp}/man",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sphinx-build -b man failed:\n{result.stdout}{result.stderr}")
        outdir.mkdir(parents=True, exist_ok=True)
        written = []
        for page in PAGES:
            target = outdir / page
            shutil.copyfile(f"{tmp}/man/{page}", target)
            written.append(target)
    return written


def main(argv: list[str]) -> int:
    outdir = Path(argv[0]) if argv else SOURCE
    try:
        written = build(outdir)
    except RuntimeError as e:
        print(f"build_man: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
