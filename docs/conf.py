"""Sphinx configuration of the documentation site (`make docs`); man pages: docs/man/conf.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
# mfcctl's --socket default reads $MFCD_SOCKET: build the reference from the built-in default.
os.environ.pop("MFCD_SOCKET", None)

from mfcd import __version__  # noqa: E402

project = "mfcd"
author = "mfcd developers"
copyright = "mfcd developers"
version = release = __version__

extensions = ["myst_parser", "sphinxarg.ext"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# man/ holds the man page sources, built separately by docs/build_man.py.
exclude_patterns = ["_build", "man", "README.md"]
myst_enable_extensions = ["deflist", "colon_fence"]
myst_heading_anchors = 3
# Keep "--stats" as typed in help texts (no en dashes, no curly quotes).
smartquotes = False

html_theme = "furo"
html_title = f"mfcd {version}"
html_static_path: list[str] = []
# Nothing fetched from the network, neither at build time nor by readers' browsers.
html_theme_options = {"navigation_with_keys": True}
html_last_updated_fmt = None
html_show_sourcelink = False
