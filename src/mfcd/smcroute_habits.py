"""What mfcctl answers to smcroutectl's commands and options: the mfcctl command to type instead.

smcroutectl(8) takes `add IIF [SOURCE] GROUP OIF...`, `remove`, `kill`, `-i NAME` and
so on; mfcctl has named options (`mfc add --iif ...`) and one daemon for every table.
Rather than a second, positional grammar whose meaning differs in places (smcroute's
`remove` of the last oif leaves a stop filter, mfcd refuses it; smcroute's (*,G) is
`0.0.0.0`), mfcctl answers such a command line with one line naming the mfcctl command,
built from the words given when they fit. Only the standard library; cli.main asks
it about command lines its fast parser did not take, before argparse.
"""

from __future__ import annotations

from collections.abc import Sequence

# smcroutectl's commands in the order it matches an abbreviation against them (the first
# whose name starts with the word: `r` is reload, `rem` remove); restart and del are its
# aliases of reload and remove (smcroute 2.5).
VERBS = (
    "help",
    "version",
    "flush",
    "kill",
    "reload",
    "restart",
    "show",
    "add",
    "remove",
    "del",
    "join",
    "leave",
)

# smcroutectl's options that mfcctl does not have: what to use instead. Those taking a
# value are in OPTION_VALUES.
OPTIONS = {
    "-d": "use: mfcctl show --stats (each route's counters)",
    "-i": "one mfcd serves every table, use --table (mfcctl show --table T)",
    "-I": "one mfcd serves every table, use --table (mfcctl show --table T)",
    "-u": "use: mfcctl --socket PATH",
    "-t": "for scripts, use: mfcctl -o json (no headings to skip)",
    "-p": "mfcctl's tables are plain text; for scripts, use: mfcctl -o json",
    "-b": "use: mfcctl batch - (mfcctl's lines: mfc add ..., join ..., from stdin)",
}
OPTION_VALUES = ("-i", "-I", "-u")
# mfcctl's own options before the command that take a value.
MFCCTL_VALUES = ("--socket", "-o", "--output")

_ANY_SOURCE = ("0.0.0.0", "::", "*")
_SERVICE = "mfc_daemon"


def hint(words: Sequence[str], commands: Sequence[str]) -> str | None:
    """The one line to print for an smcroutectl command line (words after `mfcctl`), or
    None if it is not one. `commands`: mfcctl's own; those are never answered here."""
    i = 0
    while i < len(words) and words[i].startswith("-"):
        word = words[i]
        if word in OPTIONS:
            value = words[i + 1] if word in OPTION_VALUES and i + 1 < len(words) else ""
            instead = OPTIONS[word].replace("PATH", _quoted([value]) if value else "PATH")
            return f"{f'{word} {value}'.rstrip()} is smcroutectl's option; {instead}"
        i += 2 if word in MFCCTL_VALUES else 1
    if i >= len(words) or words[i] in commands:
        return None
    verb = _verb(words[i])
    if verb is None:
        return None
    what = "command" if words[i] == verb else verb
    instead = _instead(verb, list(words[i + 1 :]), commands)
    return f'"{words[i]}" is smcroutectl\'s {what}; {instead}'


def _verb(word: str) -> str | None:
    """The smcroutectl command `word` names, abbreviated or not."""
    return next((v for v in VERBS if word and v.startswith(word)), None)


def _instead(verb: str, args: list[str], commands: Sequence[str]) -> str:
    """What to type instead of smcroutectl's `verb` with `args`."""
    if verb == "add":
        return "use: " + _add(args)
    if verb in ("remove", "del"):
        return "use: " + _remove(args)
    if verb in ("join", "leave"):
        return "use: " + _join(verb, args)
    if verb == "kill":
        return f"mfcctl has none, stop mfcd with: systemctl stop {_SERVICE}"
    if verb == "restart":
        restart = f"systemctl restart {_SERVICE} restarts mfcd"
        return f"it reloads the config, use: mfcctl reload ({restart})"
    if verb == "version":
        return "use: mfcctl --version (mfcctl's), mfcctl ping (the running mfcd's)"
    if verb == "help":
        asked = args[0] if args and args[0] in commands else "COMMAND"
        return f"use: mfcctl --help, mfcctl {asked} --help"
    if verb == "show" and args:
        return "mfcctl takes whole words: " + _quoted(["mfcctl", "show", *map(_show_what, args)])
    return f"mfcctl takes whole words: mfcctl {verb}"


def _show_what(word: str) -> str:
    """smcroutectl's `show` argument, abbreviated or not (`g` is groups)."""
    return next((w for w in ("groups", "routes", "interfaces") if w.startswith(word)), word)


def _split(args: list[str]) -> tuple[str, str | None, str, list[str]] | None:
    """smcroutectl's `IIF [SOURCE] GROUP REST...` as (iif, source, group, rest), the
    source None for any (omitted, 0.0.0.0 or ::); None if the words do not fit."""
    if len(args) < 2:
        return None
    iif, first, *rest = args
    if _is_group(first):
        return iif, None, first, rest
    if not rest or not _is_group(rest[0]):
        return None
    return iif, None if first in _ANY_SOURCE else first, rest[0], rest[1:]


def _is_group(text: str) -> bool:
    import ipaddress  # noqa: PLC0415 (a few ms: only when a command line is smcroutectl's)

    try:
        return ipaddress.ip_interface(text).ip.is_multicast
    except ValueError:
        return False


def _add(args: list[str]) -> str:
    split = _split(args)
    if split is None or not split[3]:
        return "mfcctl mfc add --iif IIF [--source SOURCE] --group GROUP --oifs OIF..."
    iif, source, group, oifs = split
    words = ["mfcctl", "mfc", "add", "--iif", iif, *_source(source), "--group", group]
    return _quoted([*words, "--oifs", ",".join(oifs)])


def _remove(args: list[str]) -> str:
    split = _split(args)
    if split is None:
        return (
            "mfcctl mfc del --source SOURCE --group GROUP (the route), mfcctl mfc oif del"
            " --source SOURCE --group GROUP --oifs OIF... (some of its oifs)"
        )
    iif, source, group, oifs = split
    template = source is None or "/" in source or "/" in group
    if not oifs:
        words = ["mfcctl", "mfc", "del", *_source(source), "--group", group]
        return _quoted(words + (["--iif", iif] if template else []))
    if template:
        words = ["mfcctl", "mfc", "add", "--iif", iif, *_source(source), "--group", group]
        keep = " --oifs OIF... with the oifs to keep (a template's oifs are replaced)"
        return _quoted(words) + keep
    words = ["mfcctl", "mfc", "oif", "del", *_source(source), "--group", group]
    return _quoted([*words, "--oifs", ",".join(oifs)])


def _join(verb: str, args: list[str]) -> str:
    split = _split(args)
    if split is None or split[3]:
        return f"mfcctl {verb} --interface IFNAME [--source SOURCE] --group GROUP"
    iif, source, group, _ = split
    return _quoted(["mfcctl", verb, "--interface", iif, *_source(source), "--group", group])


def _source(source: str | None) -> list[str]:
    return [] if source is None else ["--source", source]


def _quoted(words: list[str]) -> str:
    import shlex  # noqa: PLC0415 (as ipaddress above)

    return " ".join(map(shlex.quote, words))
