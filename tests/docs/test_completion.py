"""Bash completion for mfcctl: sourced in a real bash, asked about command lines, checked
against mfcctl's own parser so that a new command or option cannot be forgotten."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mfcd import cli

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "completion" / "mfcctl.bash"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

# Set COMP_LINE/COMP_POINT as bash does for the cursor at the end of the line, run the
# completion function, print one candidate per line.
DRIVER = """
source "$1"
[[ -n $3 ]] && COMP_WORDBREAKS=$3
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
read -r -a COMP_WORDS <<<"$COMP_LINE"
COMP_CWORD=${#COMP_WORDS[@]}
_mfcctl
printf '%s\\n' "${COMPREPLY[@]}"
"""


def complete(line: str, cwd: Path | None = None, wordbreaks: str = "") -> list[str]:
    assert BASH is not None
    result = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", DRIVER, "bash", str(SCRIPT), line, wordbreaks],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=10,
        check=True,
    )
    assert result.stderr == ""
    return [word for word in result.stdout.splitlines() if word]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    children = _subcommands(parser)
    if not children:
        return [(words, parser)]
    return [leaf for name, child in children.items() for leaf in _leaves(child, (*words, name))]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("mfcctl m", ["mfc", "monitor"]),
        ("mfcctl d", ["diagnose"]),
        (
            "mfcctl ",
            [
                "mfc",
                "show",
                "batch",
                "vif",
                "sync",
                "flush",
                "ping",
                "join",
                "leave",
                "diagnose",
                "monitor",
                "reload",
                "import-smcroute",
            ],
        ),
        ("mfcctl diagnose --group 239.1.1.1 --s", ["--source", "--seconds"]),
        ("mfcctl mfc ", ["add", "del", "oif"]),
        ("mfcctl mfc oif ", ["add", "del"]),
        ("mfcctl mfc oif del --source 198.18.0.2 --group 232.1.1.1 --o", ["--oifs", "--output"]),
        ("mfcctl vif set lo --threshold ", ["default"]),
        ("mfcctl vif s", ["set", "show"]),
        ("mfcctl show --o", ["--output"]),
        ("mfcctl --output ", ["table", "json"]),
        ("mfcctl -o j", ["json"]),
        ("mfcctl show -o ", ["table", "json"]),
        ("mfcctl --output=j", ["json"]),  # bash breaks the word at '=' and keeps "--output="
        (
            "mfcctl -n --socket /tmp/x.sock sync --",
            ["--help", "--full", "--output", "--dry-run", "--verbose"],
        ),
        ("mfcctl show --watch ", []),
        ("mfcctl mfc add --source 2001:db8::2 --group ff3e::1 --", None),
        ("mfcctl vif set lo ", []),
    ],
)
def test_completes(line: str, expected: list[str] | None) -> None:
    if expected is None:  # options not given yet are offered after IPv6 addresses too
        assert {"--iif", "--oifs"} <= set(complete(line))
    else:
        assert complete(line) == expected


def test_option_value_after_equals_without_word_break() -> None:
    assert complete("mfcctl --output=t", wordbreaks=" \t\n") == ["--output=table"]


@pytest.mark.skipif(not os.path.exists("/sys/class/net/lo"), reason="needs /sys/class/net/lo")
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("mfcctl mfc add --source 198.18.0.2 --group 232.1.1.1 --iif l", "lo"),
        ("mfcctl mfc add --iif eth0 --oifs l", "lo"),
        ("mfcctl mfc add --iif eth0 --oifs r1 l", "lo"),
        ("mfcctl mfc add --iif eth0 --oifs r1,l", "r1,lo"),
        ("mfcctl vif set l", "lo"),
        ("mfcctl mfc oif del --source 198.18.0.2 --group 232.1.1.1 --oifs r1,l", "r1,lo"),
    ],
)
def test_completes_interface_names(line: str, expected: str) -> None:
    names = sorted(os.listdir("/sys/class/net"))
    got = complete(line)
    assert expected in got
    prefix = line.rsplit(maxsplit=1)[-1].rsplit(",", 1)[-1]
    assert len(got) == len([n for n in names if n.startswith(prefix)])


def test_completes_batch_files(tmp_path: Path) -> None:
    (tmp_path / "routes.txt").write_text("")
    (tmp_path / "other.txt").write_text("")
    assert complete("mfcctl batch ro", cwd=tmp_path) == ["routes.txt"]
    assert complete("mfcctl batch routes.txt ", cwd=tmp_path) == []


def test_commands_match_the_parser() -> None:
    parser = cli.build_parser()
    assert complete("mfcctl ") == list(_subcommands(parser))
    for name, child in _subcommands(parser).items():
        actions = list(_subcommands(child))
        if actions:
            assert complete(f"mfcctl {name} ") == actions


def test_options_match_the_parser() -> None:
    parser = cli.build_parser()
    assert set(complete("mfcctl -")) == _options(parser)
    for words, leaf in _leaves(parser):
        line = f"mfcctl {' '.join(words)} -"
        assert set(complete(line)) == _options(leaf), line
