"""Sphinx configuration of the man pages, built by docs/build_man.py (`make man`).

The option and command lists come from the programs' own argparse parsers through
the `mfcd-argparse` directive below, and mfc_daemon.conf(5) includes the settings
from docs/configuration.md, so `--help`, the site and the man pages say the same.
Output is deterministic: the date is the latest debian/changelog entry's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
# mfcctl's --socket default reads $MFCD_SOCKET: document the built-in default.
os.environ.pop("MFCD_SOCKET", None)

from mfcd import __version__  # noqa: E402


def _release_date() -> str:
    """The date of the newest debian/changelog entry, so rebuilding changes nothing."""
    for line in (ROOT / "debian" / "changelog").read_text(encoding="utf-8").splitlines():
        if line.startswith(" -- "):
            return parsedate_to_datetime(line.split(">", 1)[1].strip()).strftime("%Y-%m-%d")
    raise RuntimeError("debian/changelog has no trailer line")


project = "mfcd"
author = "mfcd developers"
version = release = __version__
today = _release_date()
extensions = ["myst_parser"]
myst_enable_extensions = ["deflist"]
root_doc = "index"
exclude_patterns = ["_build"]
smartquotes = False
man_make_section_directory = False
man_show_urls = False
man_pages: list[tuple[str, str, str, list[str], int]] = [
    ("mfcd", "mfcd", "multicast routing daemon for Linux", [], 8),
    ("mfcctl", "mfcctl", "control mfcd, the multicast routing daemon", [], 8),
    ("mfc_daemon.conf", "mfc_daemon.conf", "configuration file of mfcd", [], 5),
]


# --- argparse parsers as man page text -------------------------------------------------------


def _escape(text: str) -> str:
    """reStructuredText for a help string: `x` becomes a literal, markup characters stay text."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        if i % 2:
            out.append(f"``{part}``")
        else:
            out.append(re.sub(r"([\\*|_`])", r"\\\1", part))
    return "".join(out)


def _markup_usage(usage: str) -> str:
    """Options in bold, metavars in italics, as man pages write a synopsis."""
    words = []
    for word in usage.split():
        text = re.sub(r"^(\[?)(-[\w-]+)", r"\1**\2**", _escape(word))
        words.append(re.sub(r"^(\[?)([A-Z][A-Z_\\]*)(\]?)$", r"\1*\2*\3", text))
    return " ".join(words)


def _usage_args(parser: argparse.ArgumentParser) -> str:
    """The arguments part of a parser's usage line, without -h."""
    usage = " ".join(parser.format_usage().split())
    usage = usage.removeprefix("usage: ").removeprefix(parser.prog)
    return usage.replace("[-h] ", "").replace("[-h]", "").strip()


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = (), summary: str = ""
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command that runs something: (words after the program name, parser, help)."""
    sub = _subparsers(parser)
    if sub is None:
        return [(words, parser, summary)]
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    found = []
    for name, child in sub.choices.items():
        found += _leaves(child, (*words, name), helps.get(name, ""))
    return found


def _term(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if not action.option_strings:
        return f"*{_escape(formatter._format_args(action, action.dest.upper()))}*"
    names = ", ".join(f"**{_escape(o)}**" for o in action.option_strings)
    args = formatter._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
    return f"{names} *{_escape(args)}*" if args else names


def _options(parser: argparse.ArgumentParser, indent: str = "") -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        help_text = parser._get_formatter()._expand_help(action) if action.help else ""
        lines += [f"{indent}{_term(parser, action)}", f"{indent}   {_escape(help_text)}", ""]
    return lines


class ArgparseDirective(SphinxDirective):
    """``.. mfcd-argparse:: module:function`` with ``:section: synopsis|options|commands``."""

    required_arguments = 1
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "section": lambda value: directives.choice(value, ("synopsis", "options", "commands"))
    }

    def run(self) -> list[nodes.Node]:
        module_name, func = self.arguments[0].split(":")
        parser: argparse.ArgumentParser = getattr(importlib.import_module(module_name), func)()
        section = self.options.get("section", "options")
        lines: list[str] = []
        if section == "synopsis":
            prog = parser.prog
            leaves = _leaves(parser)
            for words, leaf, _ in leaves:
                if words:
                    command = " ".join(f"**{w}**" for w in words)
                    args = _markup_usage(_usage_args(leaf))
                    lines.append(f"| **{prog}** [*options*] {command} {args}".rstrip())
                else:
                    lines.append(f"| **{prog}** {_markup_usage(_usage_args(leaf))}".rstrip())
        elif section == "options":
            lines = _options(parser)
        else:
            for words, leaf, summary in _leaves(parser):
                lines.append(f"**{' '.join(words)}** {_markup_usage(_usage_args(leaf))}".rstrip())
                lines += [f"   {_escape(leaf.description or summary)}", ""]
                lines += _options(leaf, indent="   ")
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="argparse"), 0, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("mfcd-argparse", ArgparseDirective)
    return {"parallel_read_safe": True}
