"""Tests for mfcd.smcroute_habits: what mfcctl answers to smcroutectl's commands and options."""

from __future__ import annotations

import shlex

import pytest

from mfcd import cli, smcroute_habits

COMMANDS = tuple(cli.COMMANDS)


def hint(line: str) -> str | None:
    return smcroute_habits.hint(shlex.split(line), COMMANDS)


@pytest.mark.parametrize(
    ("line", "instead"),
    [
        # smcroutectl's own example (its man page), and the trial's
        (
            "add eth0 192.168.1.42 225.1.2.3 eth1 eth2",
            "mfcctl mfc add --iif eth0 --source 192.168.1.42 --group 225.1.2.3 --oifs eth1,eth2",
        ),
        (
            "add r0 198.18.10.2 239.64.0.1 r2",
            "mfcctl mfc add --iif r0 --source 198.18.10.2 --group 239.64.0.1 --oifs r2",
        ),
        # (*,G): the source omitted or 0.0.0.0; a group prefix; IPv6; a wildcard, quoted
        ("add r0 239.1.1.1 r1", "mfcctl mfc add --iif r0 --group 239.1.1.1 --oifs r1"),
        ("add r0 0.0.0.0 239.1.0.0/24 r1", "mfcctl mfc add --iif r0 --group 239.1.0.0/24"),
        ("add r0 :: ff3e::1 r1", "mfcctl mfc add --iif r0 --group ff3e::1 --oifs r1"),
        ("add r0 239.1.1.1 'eth*'", "--oifs 'eth*'"),
        ("add", "mfcctl mfc add --iif IIF [--source SOURCE] --group GROUP --oifs OIF..."),
        ("add r0 198.18.0.2 239.1.1.1", "mfcctl mfc add --iif IIF [--source SOURCE]"),
        ("a r0 239.1.1.1 r1", "mfcctl mfc add --iif r0 --group 239.1.1.1 --oifs r1"),
        # remove (rem, del): the route, or some of its oifs
        ("remove r0 198.18.0.2 239.1.1.1", "mfcctl mfc del --source 198.18.0.2 --group 239.1.1.1"),
        ("rem r0 198.18.0.2 239.1.1.1", "mfcctl mfc del --source 198.18.0.2 --group 239.1.1.1"),
        ("del r0 198.18.0.2 239.1.1.1", "mfcctl mfc del --source 198.18.0.2 --group 239.1.1.1"),
        ("rem r0 239.1.1.1", "mfcctl mfc del --group 239.1.1.1 --iif r0"),
        (
            "rem r0 198.18.0.2 239.1.1.1 r2 r3",
            "mfcctl mfc oif del --source 198.18.0.2 --group 239.1.1.1 --oifs r2,r3",
        ),
        ("rem r0 239.1.1.1 r2", "mfcctl mfc add --iif r0 --group 239.1.1.1 --oifs OIF..."),
        ("remove", "mfcctl mfc del --source SOURCE --group GROUP (the route)"),
        # the daemon itself
        ("kill", "systemctl stop mfc_daemon"),
        ("restart", "mfcctl reload"),
        ("version", "mfcctl --version (mfcctl's), mfcctl ping (the running mfcd's)"),
        ("help", "mfcctl --help, mfcctl COMMAND --help"),
        ("help show", "mfcctl show --help"),
        # abbreviations of commands mfcctl has under the same name
        ("s g", "mfcctl show groups"),
        ("s r", "mfcctl show routes"),
        ("sh i", "mfcctl show interfaces"),
        ("f", "mfcctl flush"),
        ("r", "mfcctl reload"),
        ("j eth0 198.18.0.2 239.1.1.1", "mfcctl join --interface eth0 --source 198.18.0.2"),
        ("l eth0 239.1.1.1", "mfcctl leave --interface eth0 --group 239.1.1.1"),
        # smcroutectl's options, before the command as it takes them
        ("-d show", "mfcctl show --stats"),
        ("-i studio show", "use --table"),
        ("-I studio show", "use --table"),
        ("-u /tmp/s.sock show", "mfcctl --socket /tmp/s.sock"),
        ("-t show", "mfcctl -o json"),
        ("-p show", "mfcctl -o json"),
        ("-b", "mfcctl batch -"),
        # after mfcctl's own options
        ("--socket /x -o json add r0 239.1.1.1 r1", "mfcctl mfc add --iif r0 --group 239.1.1.1"),
    ],
)
def test_an_smcroutectl_command_line_names_the_mfcctl_command(line: str, instead: str) -> None:
    said = hint(line)
    assert said is not None and instead in said, said
    assert "\n" not in said and " is smcroutectl's " in said


@pytest.mark.parametrize(
    "line",
    [
        "show",
        "show routes",
        "join --interface r0 --group 239.1.1.1",
        "flush",
        "reload",
        "-o json show",
        "--socket /x ping",
        "frobnicate",  # neither mfcctl's nor smcroutectl's: argparse says so
        "diag",  # an abbreviation of mfcctl's diagnose, not of an smcroutectl command
        "",
        "-o",  # an option's value missing at the end: argparse's usage error, no traceback
        "--socket",
        "-o json -o",
    ],
)
def test_mfcctls_own_command_lines_get_no_hint(line: str) -> None:
    assert hint(line) is None


def test_every_smcroutectl_command_is_mfcctls_or_answered() -> None:
    for verb in smcroute_habits.VERBS:
        assert (verb in COMMANDS) is (hint(verb) is None), verb
