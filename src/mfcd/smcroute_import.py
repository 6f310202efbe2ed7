"""smcroute.conf to mfcd's config declarations (TOML), for `mfcctl import-smcroute`.

Each directive of smcroute.conf(5) becomes a declaration of mfc_daemon.conf(5):

    phyint IF [enable|disable] [mrdisc] [ttl-threshold N]  ->  [[interface]] (when it sets one;
                                                               with a table, the threshold's
                                                               has that table)
    mroute from IF [source S[/LEN]] group G[/LEN] to OIF... ->  [[route]] (a template without
                                                               one source address and group)
    mgroup from IF [source S[/LEN]] group G[/LEN]           ->  [[join]] (one per source)
    ssmgroup from IF source S group G                       ->  [[join]] with a source
    include GLOB                                            ->  the files' declarations, inline

Two mroute lines for the same source, group and iif make one route with the oifs of
both, as smcroute merges them. The `+` wildcard of interface names is mfcd's too (a join's
as well). smcroute routes only interfaces that have a VIF when it reads a route: every
interface but those `phyint IF disable` removes, or with `smcrouted -N` (convert_file's
no_vifs) only those `phyint IF enable` adds. Other oifs are left out (a warning), a route
from another iif is not converted, and a wildcard that reaches them becomes the names
phyint enables (mfcd's wildcard would match every interface), or is warned about if a
wildcard phyint line enables it. As smcroute reads each line on its own, a trailing
backslash continues nothing: it is part of the last word, and an oif that ends in one is
skipped (a warning), as smcroute skips it. A comment starts at a word that begins with #,
and a line longer than smcroute's buffer is read as several, as smcroute reads them.

What is written is read back with mfcd's own config reader (declarations), so that it passes
`mfcd --check-config`: a line that cannot be converted, or whose declarations that reader
refuses, is written as `# NOT CONVERTED: LINE` and reported as "FILE:LINE: why". Only
mfcctl's import-smcroute command loads this module.
"""

from __future__ import annotations

import bisect
import glob
import ipaddress
import json
import os
import re
import socket
from typing import NamedTuple

from mfcd import declarations, validate
from mfcd.errors import InvalidArgument
from mfcd.model import DEFAULT_TABLE

# smcroute reads its file with fgets() into a buffer of 512 bytes (conf.c, MAX_LINE_LEN):
# a longer line is read as several, of up to 511 bytes each.
_LINE_MAX = 511
_PIECE = (
    f"longer than the {_LINE_MAX} bytes smcroute reads as a line: the rest is another line to"
    " smcroute, and converted as one below; join the words onto one shorter line, or split it",
    f"the rest of a line longer than {_LINE_MAX} bytes: converted on its own, as smcroute reads it",
)
_REPLACED = "replaced by"
_GLOB = re.compile(r"[*?[]")  # what makes glob(3) read a path as a pattern
MAX_SOURCES = 256  # a source prefix of mgroup becomes one join per address, up to this many
_WILDCARDS = ("+", "*")

# The first line of what the import writes: how `--to` knows a file it may replace.
HEADER_START = "# Converted from "
HEADER_END = " by mfcctl import-smcroute."


class Converted(NamedTuple):
    text: str  # the TOML
    problems: list[str]  # "FILE:LINE: why", one per line not converted
    warnings: list[str]  # "FILE:LINE: warning: why", for lines converted with a change
    report: list[str]  # the problems and warnings in the order of their lines
    files: tuple[str, ...] = ()  # every file read (real paths), which --to must not replace


class _Problem(Exception):
    pass


class _Line:
    """One directive of the input and what it became."""

    __slots__ = (
        "blocks",
        "exact",
        "iifs",
        "into",
        "later",
        "notes",
        "problem",
        "route",
        "seen",
        "text",
        "warnings",
        "where",
    )

    def __init__(self, where: str, text: str) -> None:
        self.where = where  # FILE:LINE ("" for a comment of the import's own)
        self.text = text  # the line as written
        self.notes: list[str] = []  # comments written before its declarations
        self.blocks: list[list[str]] = []  # its declarations, each as its lines
        self.route: tuple[str | None, str, str, list[str]] | None = None  # mroute's S, G, iif, oifs
        self.problem: str | None = None  # why it is not converted
        self.warnings: list[str] = []  # what changed in converting it, if it is converted
        self.exact = False  # one (S,G) route: read back with the routes that mfcd reads fast
        self.into: _Line | None = None  # the earlier mroute line its oifs were merged into
        self.iifs: list[str] | None = None  # a wildcard iif's interfaces under -N (one block each)
        self.seen = 0  # how many phyint lines came before it (what smcroute had enabled then)
        self.later: dict[str, int] = {}  # oifs a later line merged in -> its `seen`

    def lines(self) -> list[str]:
        """Its lines in the output."""
        if not self.where:
            return self.notes
        if self.problem is not None:
            return [f"# NOT CONVERTED: {self.text}", f"#   ({self.where}: {self.problem})"]
        out = [f"# {self.where}: {self.text}", *self.notes]
        for block in self.blocks:
            out += block
            out.append("")
        return out


class _Converter:
    def __init__(self, table: str | None, no_vifs: bool = False) -> None:
        self.table = table  # the TOML value of every route's `table` (None: the default)
        self.no_vifs = no_vifs  # as `smcrouted -N`: only interfaces phyint enables are routed
        # Each phyint line in order: (name or pattern, whether it leaves a VIF, FILE:LINE).
        self.phyints: list[tuple[str, bool, str]] = []
        self.enables = False  # whether a phyint line says `enable`
        self.disables: set[str] = set()  # where the phyint lines that end in `disable` are
        self.lines: list[_Line] = []
        self.routes: dict[tuple[str, str, str], _Line] = {}  # (source, group, iif) -> first line
        self.sources: dict[tuple[str, str], _Line] = {}  # (S,G) -> its route's line
        self.joins: set[tuple[str, str, str | None]] = set()
        self.interfaces: dict[str, str] = {}  # name -> FILE:LINE
        self.reading: list[str] = []  # the include chain, to refuse loops
        self.read: list[str] = []  # every file read, as its real path
        self.line = _Line("", "")  # the directive being converted
        # The mroute lines with no oif (smcroute's stop filters): line, source, group, iif.
        self.stops: list[tuple[_Line, str | None, str, str]] = []

    def comment(self, text: str) -> None:
        note = _Line("", "")
        note.notes.append(text)
        self.lines.append(note)

    def file(self, path: str) -> None:
        real = os.path.realpath(path)
        if real in self.reading:
            raise _Problem(f"includes itself ({path})")
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        self.reading.append(real)
        self.read.append(real)
        continued = False  # whether the line before ended in a backslash
        try:
            for number, whole in enumerate(lines, 1):
                # (a line of fewer than 128 characters has fewer than 511 bytes)
                pieces = [whole] if len(whole) < _LINE_MAX // 4 else _pieces(whole)
                for piece, text in enumerate(pieces):
                    words = text.split()
                    comment: list[str] = []
                    if "#" in text:
                        words, comment = _uncomment(words)
                    after_backslash, continued = continued, bool(words) and words[-1][-1] == "\\"
                    if not words:
                        continue
                    line = self.line = _Line(f"{path}:{number}", text.strip())
                    line.seen = len(self.phyints)
                    self.lines.append(line)
                    line.warnings += comment
                    if len(pieces) > 1:
                        line.warnings.append(_PIECE[piece > 0])
                    self.one_line(line, words, path, continued, after_backslash)
        finally:
            self.reading.pop()

    def one_line(
        self, line: _Line, words: list[str], path: str, continued: bool, after_backslash: bool
    ) -> None:
        if words[-1] == "\\" and len(words) > 1:
            # smcroute ignores the word, or skips it as an oif it does not know.
            words.pop()
            line.warnings.append(
                "the trailing backslash is left out: smcroute reads each line on its"
                " own (no line continuation)"
            )
            line.notes.append("# (a trailing backslash: left out, it continues nothing)")
        try:
            self.directive(words, path)
        except _Problem as e:
            line.problem = str(e)
            if continued:
                line.problem += "; the trailing backslash continues nothing in smcroute"
            elif after_backslash:
                line.problem += (
                    "; the line before ends in a backslash, but smcroute reads each line on its own"
                )
        except OSError as e:
            line.problem = f"cannot read an included file: {e}"

    def directive(self, words: list[str], path: str) -> None:
        kind, rest = words[0], words[1:]
        if kind == "phyint":
            self.phyint(rest)
        elif kind == "mroute":
            self.mroute(rest)
        elif kind in ("mgroup", "ssmgroup"):
            self.mgroup(kind, rest)
        elif kind == "include":
            self.include(rest, path)
        else:
            raise _Problem(
                f"unknown directive {kind!r} (smcroute.conf has phyint, mroute,"
                " mgroup, ssmgroup and include)"
            )

    # --- directives --------------------------------------------------------------------------

    def phyint(self, words: list[str]) -> None:
        if not words:
            raise _Problem("phyint needs an interface name")
        name, rest = words[0], words[1:]
        threshold: int | None = None
        mrdisc = False
        notes = []
        i = 0
        while i < len(rest):
            word = rest[i]
            if word in ("enable", "disable"):
                notes.append(word)
            elif word == "mrdisc":
                mrdisc = True
            elif word == "ttl-threshold":
                if i + 1 >= len(rest) or not (rest[i + 1].isascii() and rest[i + 1].isdigit()):
                    raise _Problem("ttl-threshold needs a number from 1 to 255")
                threshold = int(rest[i + 1])
                if not 1 <= threshold <= 255:
                    raise _Problem(f"ttl-threshold {threshold} is not from 1 to 255")
                i += 1
            else:
                raise _Problem(f"unknown phyint option {word!r}")
            i += 1
        # The last word wins, as in smcroute. Without either word, the interface keeps the
        # default: a VIF, or none under -N (smcrouted 2.5.6 logs "Removing multicast VIFs").
        enabled = notes[-1] == "enable" if notes else not self.no_vifs
        self.phyints.append((name, enabled, self.line.where))
        self.enables = self.enables or "enable" in notes
        if notes and notes[-1] == "disable":
            self.disables.add(self.line.where)
        out = self.line.notes
        if "disable" in notes or (threshold is None and not mrdisc):
            # mfcd gives an interface a VIF only while a route names it: enable has nothing
            # to say, and disable is applied to the routes (apply_phyints).
            out.append("# (mfcd adds a VIF only for interfaces routes use: nothing to do)")
            if "disable" in notes and (threshold is not None or mrdisc):
                raise _Problem("phyint disable with settings: the settings are left out")
            return
        if not enabled:
            raise _Problem(
                f"phyint {name} without enable: smcrouted -N gives {name} no VIF, so routes do"
                " not use it and its settings are left out; add `enable` if it routes multicast"
            )
        if name.endswith(_WILDCARDS):
            raise _Problem(
                f"phyint {name}: interface settings take one interface name, not a"
                " wildcard; write one phyint line per interface"
            )
        if name in self.interfaces:
            raise _Problem(f"phyint {name} again (first at {self.interfaces[name]})")
        self.interfaces[name] = self.line.where
        self.line.blocks += _interface_blocks(name, threshold, mrdisc, self.table)

    def mroute(self, words: list[str]) -> None:
        cut = words.index("to") if "to" in words else len(words)
        options = _pairs(words[:cut], ("from", "source", "group"), "mroute")
        oifs = words[cut + 1 :]
        if "from" not in options or "group" not in options:
            raise _Problem("mroute needs `from IIF` and `group GROUP`")
        if cut == len(words):
            self.stop(options, "no `to OIF...`")
        if oifs and oifs[-1].endswith("\\"):
            self.line.warnings.append(
                f"oif {oifs[-1]} left out: smcroute reads each line on its own (no line"
                " continuation), takes the word as an interface name, finds none and skips it"
            )
            self.line.notes.append(f"# ({oifs[-1]} left out: smcroute has no line continuation)")
            oifs = oifs[:-1]
        if any("#" in n for n in oifs):
            self.skip_hashed(oifs)
            oifs = [n for n in oifs if "#" not in n]
        if not oifs:
            self.stop(options, "no oif after `to`")
        iif = options["from"]
        group = _group(options["group"])
        source = _source(options.get("source"), group)
        out = self.line.notes
        if source is not None and "/" not in source + group and iif.endswith(_WILDCARDS):
            # mfcd's (S,G) routes arrive on one interface; a template may take a wildcard.
            source = f"{source}/{ipaddress.ip_address(source).max_prefixlen}"
            out.append("# (a wildcard iif: written as a template of one source)")
        if iif in oifs:
            oifs = [n for n in oifs if n != iif]
            out.append(f"# ({iif} is the iif: left out of the oifs)")
            if not oifs:
                raise _Problem("the only oif is the iif: no route")
        if len(set(oifs)) != len(oifs):
            oifs = list(dict.fromkeys(oifs))
        key = (source or "*", group, iif)
        first = self.routes.get(key)
        if first is not None:
            self.merge(first, oifs)
            return
        self.routes[key] = self.line
        self.line.route = (source, group, iif, oifs)
        if source is not None and "/" not in source + group:
            self.take((source, group), self.line)
        self.line.exact = (
            source is not None
            and "/" not in source + group
            and not any(n.endswith(_WILDCARDS) for n in oifs)
        )
        self.line.blocks.append(_route_block(source, group, iif, oifs, self.table))

    def stop(self, options: dict[str, str], why: str) -> None:
        """An mroute with no oif: smcroute's stop filter, which mfcd has no such route for."""
        group = _group(options["group"])
        self.stops.append(
            (self.line, _source(options.get("source"), group), group, options["from"])
        )
        raise _Problem(
            f"{why}: smcroute installs the route with no oif, which drops the flow (a stop"
            " filter); mfcd has no such route: the converted config does not block the flow,"
            " which is forwarded if a route or template matches it"
        )

    def unstopped(self) -> None:
        """Name the template that forwards a flow a stop filter blocked in smcroute."""
        for stopped, source, group, iif in self.stops:
            for line in self.lines:
                if line.route is None or line.problem is not None or line.route[2] != iif:
                    continue
                if _holds(line.route[0], source) and _holds(line.route[1], group):
                    stopped.problem = (
                        f"{stopped.problem}; here {line.where} matches it: mfcd forwards it"
                    )
                    break

    def take(self, key: tuple[str, str], line: _Line) -> None:
        """Make `line` the route of (S,G) `key` (this line installs it last), not an earlier
        one from another iif: smcroute 2.5.6 installs both, and the kernel keeps the last
        (`ip mroute` shows one entry, from the last line's iif); mfcd takes one iif per
        source and group."""
        earlier = self.sources.get(key)
        self.sources[key] = line
        if line.problem is not None and line.problem.startswith(_REPLACED):
            line.problem = None  # installed again, so the kernel has it again
        if earlier is not None and earlier is not line and earlier.problem is None:
            earlier.problem = (
                f"{_REPLACED} {self.line.where}, the same source and group from another iif:"
                " smcroute installs that one after it, and the kernel keeps only the last"
                " (mfcd takes one iif per source and group)"
            )

    def merge(self, first: _Line, oifs: list[str]) -> None:
        """Add the oifs of a second mroute line for the same source, group and iif to the
        first line's route, as smcroute does (mroute.c adds the oifs to the rule it has, and
        `ip mroute` then shows one route with both lines' oifs)."""
        assert first.route is not None
        source, group, iif, had = first.route
        added = [n for n in oifs if n not in had]
        self.line.into = first
        if source is not None and "/" not in source + group:
            self.take((source, group), first)  # smcroute adds the merged route again
        if not added:
            self.line.notes.append(f"# (the same route as {first.where}: no oif to add)")
            return
        merged = had + added
        first.later.update(dict.fromkeys(added, self.line.seen))
        first.route = (source, group, iif, merged)
        first.exact = first.exact and not any(n.endswith(_WILDCARDS) for n in added)
        first.blocks = [_route_block(source, group, iif, merged, self.table)]
        self.line.notes.append(
            f"# (the same route as {first.where}: {' '.join(added)} added to its oifs there,"
            " as smcroute merges them)"
        )

    def skip_hashed(self, oifs: list[str]) -> None:
        for name in oifs:
            if "#" in name:
                self.line.warnings.append(
                    f"oif {name} left out: a comment starts only at a word that begins with #,"
                    f" so smcroute takes {name} as an interface name, finds none and skips it"
                    " (mfcd takes no # in a name); write a space before # for a comment"
                )
                self.line.notes.append(f"# ({name} left out: no interface has that name)")

    def mgroup(self, kind: str, words: list[str]) -> None:
        options = _pairs(words, ("from", "source", "group"), kind)
        if "from" not in options or "group" not in options:
            raise _Problem(f"{kind} needs `from IFNAME` and `group GROUP`")
        if kind == "ssmgroup" and "source" not in options:
            raise _Problem("ssmgroup needs `source ADDRESS`")
        name = options["from"]  # a wildcard joins on every match, in smcroute as in mfcd
        group = _group(options["group"])
        sources: list[str | None] = [None]
        if "source" in options:
            net = _network(options["source"], "source")
            if net.num_addresses > MAX_SOURCES:
                raise _Problem(
                    f"source {net} holds more than {MAX_SOURCES} addresses: list"
                    " the sources that send"
                )
            sources = [str(a) for a in (net if net.num_addresses > 1 else [net.network_address])]
        for source in sources:
            key = (name, group, source)
            if key in self.joins:
                self.line.notes.append("# (the same join again: left out)")
                continue
            self.joins.add(key)
            block = ["[[join]]", f"interface = {_q(name)}", f"group = {_q(group)}"]
            if source is not None:
                block.append(f"source = {_q(source)}")
            self.line.blocks.append(block)

    def include(self, words: list[str], path: str) -> None:
        if len(words) != 1:
            raise _Problem("include takes one path or glob")
        pattern = words[0]
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(path), pattern)
        names = sorted(glob.glob(pattern))
        if not names and not _GLOB.search(pattern):
            # smcroute passes the path to glob(3) too and includes nothing, but a named file
            # that is not there is a typo or a file not copied: its routes would be lost.
            raise _Problem(
                f"no such file {pattern}: its routes are not converted (copy it next to"
                " the file that includes it, or correct the path)"
            )
        if not names:
            self.line.warnings.append(
                f"{pattern} matches no file: nothing included (as in smcroute); if the files"
                " are on another machine, copy them here and convert again"
            )
        for name in names:
            self.comment(f"# include {name}")
            self.file(name)

    # --- after the last line: which interfaces smcroute routes -------------------------------

    def decided(self, name: str, upto: int | None = None) -> tuple[bool, str | None, str]:
        """Whether smcroute had a VIF for `name` (an interface, or a wildcard as the
        interfaces it stands for) after the first `upto` phyint lines (None: all of them), and
        the phyint line that decided it: the name or pattern it names and where it is (None:
        no line names it, so the default: every interface, or none with -N)."""
        stem = name[:-1] if name.endswith(_WILDCARDS) else name
        for pattern, enabled, where in reversed(self.phyints[:upto]):
            if pattern == name or (pattern.endswith(_WILDCARDS) and stem.startswith(pattern[:-1])):
                return enabled, where, pattern
        return not self.no_vifs, None, name

    def why_off(self, name: str, seen: int) -> str | None:
        """Why a route read after `seen` phyint lines does not use `name` in smcroute (None:
        it does). Checked with smcrouted 2.5.6: a route gets only the interfaces that have a
        VIF when it is read ("not a known phyint, skipping"; smcroute.conf(5): phyint lines
        come before the routes that use them), and a VIF removed later leaves every route."""
        now, _, _ = self.decided(name, seen)
        last, at, pattern = self.decided(name)
        if now and last:
            return None
        if last:
            return f"phyint {pattern} enable (at {at}) comes after this line, too late for smcroute"
        if at is None:
            return f"no phyint {name} enable line gives it a VIF (-N)"
        if at in self.disables:
            return f"phyint {pattern} disable (at {at}) gives it no VIF"
        return f"phyint {pattern} (at {at}), without enable, gives it no VIF (-N)"

    def expand(self, pattern: str, seen: int) -> list[str] | None:
        """What the wildcard `pattern` stands for in a route read after `seen` phyint lines:
        None if smcroute routes every interface it matches (no phyint line, or a wildcard
        one, keeps all of them out), else the interfaces and narrower patterns that phyint
        lines enable. smcroute's wildcard reaches only interfaces with a VIF, and mfcd's every
        interface, now and later: written as those names, it forwards where smcroute did."""
        if self.why_off(pattern, seen) is None:
            return None
        stem = pattern[:-1]
        names = dict.fromkeys(
            name
            for name, _, _ in self.phyints
            if name != pattern and name.startswith(stem) and self.why_off(name, seen) is None
        )
        return list(names)

    def apply_phyints(self) -> None:
        """Limit the routes to the interfaces smcroute gives a VIF (checked with smcrouted
        2.5.6, with and without -N): an oif without one is skipped, a route from an iif without
        one is not installed, and a wildcard matches only the interfaces with one. Joins are
        left as they are: smcroute joins on interfaces it does not route, -N or not."""
        for line in self.lines:
            if line.route is None or line.problem is not None:
                continue
            source, group, iif, oifs = line.route
            iifs = [iif]
            try:
                if iif.endswith(_WILDCARDS):
                    iifs = self.limit(line, iif, "iif", line.seen) or iifs  # (not []: _Problem)
                elif (why := self.why_off(iif, line.seen)) is not None:
                    raise _Problem(f"iif {iif}: {why}, so smcroute routes nothing from it")
                kept: list[str] = []
                for name in oifs:
                    limited = self.limit(line, name, "oif", line.later.get(name, line.seen))
                    kept += [name] if limited is None else limited
                kept = list(dict.fromkeys(kept))
                if not kept:
                    whys = "; ".join(
                        f"{n}: {self.why_off(n, line.later.get(n, line.seen))}" for n in oifs
                    )
                    raise _Problem(
                        f"no oif has a VIF in smcroute ({whys}): smcroute installs the route"
                        " with no oif, which forwards nothing (and keeps a template from"
                        " learning the flow), but mfcd takes no route without an oif"
                    )
            except _Problem as e:
                line.problem = str(e)
                continue
            if kept == oifs and iifs == [iif]:
                continue
            line.route = (source, group, iif, kept)
            line.iifs = None if iifs == [iif] else iifs
            line.exact = (
                source is not None
                and "/" not in source + group
                and not any(n.endswith(_WILDCARDS) for n in (iif, *kept))
            )
            try:
                line.blocks = self.route_blocks(line)
            except _Problem as e:
                line.problem = str(e)

    def limit(self, line: _Line, name: str, role: str, seen: int) -> list[str] | None:
        """The interfaces `name` (an iif or an oif of `line`, read after `seen` phyint lines)
        stands for in smcroute: None when it stays as written, [] when it is left out (warned
        about; _Problem for an iif)."""
        if not name.endswith(_WILDCARDS):
            why = self.why_off(name, seen)
            if why is None:
                return None
            line.warnings.append(f"oif {name} left out: {why}, so smcroute does not forward to it")
            line.notes.append(f"# ({name} left out of the oifs: no VIF in smcroute)")
            return []
        names = self.expand(name, seen)
        if names is None:
            self.warn_off(line, name, role, seen)
            return None
        if not names and role == "iif":
            raise _Problem(f"iif {name} matches no interface with a VIF: smcroute routes nothing")
        if role == "oif" and line.route is not None:  # (mfcd's wildcard leaves out the iif too)
            names = [n for n in names if n != line.route[2]]
        shown = " ".join(names) or "nothing"
        line.notes.append(f"# ({role} {name} written as {shown}: the interfaces phyint enables)")
        line.warnings.append(
            f"{role} {name} written as {shown}: smcroute's {name} matches only the interfaces"
            f" phyint enables, mfcd's would match every interface, now and later"
        )
        return names

    def warn_off(self, line: _Line, pattern: str, role: str, seen: int) -> None:
        """Warn of interfaces a kept wildcard matches that smcroute leaves out (a phyint line
        disables them): mfcd's pattern includes them."""
        stem = pattern[:-1]
        for name in dict.fromkeys(name for name, _, _ in self.phyints):
            if name != pattern and name.startswith(stem):
                why = self.why_off(name, seen)
                if why is not None:
                    line.warnings.append(
                        f"{role} {pattern} matches {name}, which smcroute leaves out ({why});"
                        f" mfcd's {pattern} includes it: name the interfaces instead if it must"
                        " stay out"
                    )

    def off_text(self, name: str, seen: int) -> str:
        """`name` in a route read after `seen` phyint lines if it reaches an interface that
        is not enabled ("" if not): a wildcard with the enabled interfaces it matches."""
        if not name.endswith(_WILDCARDS):
            return "" if self.why_off(name, seen) is None else name
        names = self.expand(name, seen)
        if names is None:
            return ""
        return f"{name} (other than {' '.join(names)})" if names else name

    def route_blocks(self, line: _Line) -> list[list[str]]:
        """The declarations of an mroute line: one per iif of a wildcard iif expanded."""
        assert line.route is not None
        source, group, iif, oifs = line.route
        blocks = []
        for one in line.iifs or [iif]:
            out = [n for n in oifs if n != one]
            if out:
                blocks.append(_route_block(source, group, one, out, self.table))
            else:
                line.notes.append(f"# (from {one}, the only oif is the iif: no template)")
        if not blocks:
            raise _Problem("the only oif is the iif: no route")
        return blocks

    def hint_no_vifs(self) -> None:
        """Without --no-default-vifs, warn of routes that reach interfaces no phyint line
        enables in a file that enables some: written for `smcrouted -N`, most likely, where
        they do not forward."""
        if self.no_vifs or not self.enables:
            return
        self.no_vifs = True  # (what -N would leave out)
        try:
            for line in self.lines:
                if line.route is None or line.problem is not None:
                    continue
                _, _, iif, oifs = line.route
                off = [self.off_text(n, line.later.get(n, line.seen)) for n in (iif, *oifs)]
                off = [text for text in off if text]
                if off:
                    line.warnings.append(
                        f"{' '.join(off)}: not enabled by a phyint line, though the file"
                        " enables interfaces: if smcrouted ran with -N, smcroute routes only"
                        " the enabled ones (and a wildcard matches only those); convert with"
                        " --no-default-vifs to forward as it did"
                    )
        finally:
            self.no_vifs = False

    def read_back(self) -> None:
        """Mark the lines whose declarations mfcd's config reader refuses, until it refuses
        none: each round marks one line at least (a problem of the whole, such as too many
        VIFs, names one line at a time)."""
        while True:
            refused = _refused(self.lines)
            if not refused:
                return
            for line, why in refused.items():
                line.problem = why


def _interface_blocks(
    name: str, threshold: int | None, mrdisc: bool, table: str | None
) -> list[list[str]]:
    """The [[interface]] declarations of a phyint line's settings. smcrouted -t keeps the
    threshold on its own table's VIF: so does an [[interface]] with that table; mrdisc
    (sent on the link, whatever the table) is the interface's, in a block of its own."""
    block = ["[[interface]]", f"name = {_q(name)}"]
    if threshold is not None and table is not None:
        own = [*block, f"table = {table}", f"threshold = {threshold}"]
        return [[*block, "mrdisc = true"], own] if mrdisc else [own]
    if threshold is not None:
        block.append(f"threshold = {threshold}")
    if mrdisc:
        block.append("mrdisc = true")
    return [block]


def _route_block(
    source: str | None, group: str, iif: str, oifs: list[str], table: str | None
) -> list[str]:
    block = ["[[route]]"]
    if source is not None:
        block.append(f"source = {_q(source)}")
    block += [f"group = {_q(group)}", f"iif = {_q(iif)}"]
    block.append(f"oifs = [{', '.join(_q(n) for n in oifs)}]")
    if table is not None:
        block.append(f"table = {table}")
    return block


def table_value(text: str) -> str | None:
    """The TOML value of `table` for --table TEXT (None for the default table), checked as
    mfcd checks a route's table (ValueError with the reason if it is none). smcroute's
    `-t ID` takes a number; a name of /etc/iproute2/rt_tables is kept as a name, which mfcd
    looks up at each start and reload."""
    try:
        number = validate.table_of(text, 4)
    except InvalidArgument as e:
        raise ValueError(str(e)) from None
    if number == DEFAULT_TABLE[4] and not text.isdigit():
        return None  # "default": as without --table
    return str(number) if text.isascii() and text.isdigit() else _q(text)


# Where mfcd's reader names a place in the texts _refused gives it.
_PLACE = re.compile(r"<([ab])>:(\d+)")


def _refused(lines: list[_Line]) -> dict[_Line, str]:
    """The lines whose declarations mfcd's config reader refuses, and why. The exact routes
    are read as one file (<a>, which mfcd reads at once) and the rest as another (<b>), merged
    and checked as mfcd merges and checks its config files."""
    texts: dict[str, list[str]] = {"a": [], "b": []}
    starts: dict[str, list[int]] = {"a": [], "b": []}
    owners: dict[str, list[_Line]] = {"a": [], "b": []}
    for line in lines:
        if line.problem is not None or not line.blocks:
            continue
        name = "a" if line.exact else "b"
        out = texts[name]
        starts[name].append(len(out) + 1)
        owners[name].append(line)
        for block in line.blocks:
            out += block
            out.append("")
    problems: list[str] = []
    parts = []
    for name, out in texts.items():
        part = declarations.parse_file("\n".join(out) + "\n", f"<{name}>")
        problems += part.problems
        parts.append(part.found)
    declarations.check(declarations.merge(parts, problems), problems)

    def owner(name: str, number: int) -> _Line:
        return owners[name][bisect.bisect_right(starts[name], number) - 1]

    refused: dict[_Line, str] = {}
    for problem in problems:
        place = _PLACE.match(problem)
        if place is None or not owners[place[1]]:
            # (never seen: every problem names its line) Refuse all rather than write
            # what mfcd would refuse.
            return {line: problem for line in owners["a"] + owners["b"]}
        line = owner(place[1], int(place[2]))
        why = _PLACE.sub(lambda m: owner(m[1], int(m[2])).where, problem[place.end() + 2 :])
        refused.setdefault(line, f"mfcd would refuse it: {why}")
    return refused


def _pieces(text: str) -> list[str]:
    """The line `text` as smcroute reads it: pieces of up to _LINE_MAX bytes."""
    data = text.encode()
    if len(data) <= _LINE_MAX:
        return [text]
    return [
        data[i : i + _LINE_MAX].decode(errors="replace") for i in range(0, len(data), _LINE_MAX)
    ]


def _uncomment(words: list[str]) -> tuple[list[str], list[str]]:
    """The words before a comment, as smcroute 2.5.6 reads them, and warnings. A comment
    starts at a word that begins with #, not at a # inside a word (see _Converter.mroute);
    after an mroute's `to`,
    smcroute takes every word to the end of the line as an oif, comment included, but the
    comment's words are left out here (with a warning), as their writer meant."""
    warnings = []
    oifs = False
    for i, word in enumerate(words):
        if word[0] == "#":
            if oifs and words[i + 1 :]:
                warnings.append(
                    f"the comment {' '.join(words[i:])!r} is left out, but smcroute reads"
                    " every word after `to` as an oif, a comment's too: it also forwards to"
                    " those of its words that name an interface; add them to the oifs if so"
                )
            return words[:i], warnings
        oifs = oifs or (word == "to" and words[0] == "mroute")
    return words, warnings


def _pairs(words: list[str], keys: tuple[str, ...], kind: str) -> dict[str, str]:
    if len(words) % 2:
        raise _Problem(f"{kind}: expected KEYWORD VALUE pairs ({', '.join(keys)})")
    options: dict[str, str] = {}
    for i in range(0, len(words), 2):
        key, value = words[i], words[i + 1]
        if key not in keys:
            raise _Problem(f"{kind}: unknown keyword {key!r} (expected {', '.join(keys)})")
        if key in options:
            raise _Problem(f"{kind}: {key} given twice")
        options[key] = value
    return options


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Problem(f"{what} {text!r} is not an address or ADDRESS/LEN") from None


def _ipv4(text: str) -> bytes | None:
    """The packed IPv4 address `text` if it is one written as ipaddress writes it (the
    common case, much faster than ipaddress), else None."""
    if ":" in text or "/" in text:
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return None
    return packed if socket.inet_ntop(socket.AF_INET, packed) == text else None


def _group(text: str) -> str:
    packed = _ipv4(text)
    if packed is not None:
        if 224 <= packed[0] <= 239:
            return text
        raise _Problem(f"group {text} is not a multicast address")
    net = _network(text, "group")
    if not net.is_multicast:
        raise _Problem(f"group {text} is not a multicast address")
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)  # the prefix as mfcd writes it (host bits cleared)


def _source(text: str | None, group: str) -> str | None:
    """The source as mfcd writes it: None for any source (absent, 0.0.0.0 or ::)."""
    if text is None:
        return None
    packed = _ipv4(text)
    if packed is not None and packed != bytes(4) and ":" not in group:
        return text
    net = _network(text, "source")
    if net.network_address.is_unspecified:
        return None
    family = ipaddress.ip_network(group).version
    if net.version != family:
        raise _Problem(f"source {text} and group {group} are of different address families")
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


_PLAIN = re.compile(r"[\w.:/+*@-]*", re.ASCII)  # names and addresses: nothing to escape


def _holds(prefix: str | None, address: str | None) -> bool:
    """Whether a route's source or group (None: any source) holds `address` (None: any)."""
    if prefix is None:
        return True
    if address is None:
        return False
    inner = ipaddress.ip_network(address, strict=False)
    outer = ipaddress.ip_network(prefix, strict=False)
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def _q(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but for the UTF-16 surrogate pairs
    ensure_ascii writes, so the text stays as it is but for control characters."""
    if _PLAIN.fullmatch(text):
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def convert_file(path: str, table: str | None = None, no_vifs: bool = False) -> Converted:
    """Convert an smcroute.conf and the files it includes (OSError if it cannot be read),
    each route into `table` (a table_value; None for the default table), as smcrouted reads
    it, or with `no_vifs` as `smcrouted -N` does."""
    converter = _Converter(table, no_vifs)
    converter.comment(f"{HEADER_START}{path}{HEADER_END}")
    converter.comment("# Check it with: mfcd --check-config --config FILE")
    converter.comment("")
    converter.file(path)
    converter.apply_phyints()
    converter.unstopped()
    converter.hint_no_vifs()
    converter.read_back()
    out: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    report: list[str] = []
    for line in converter.lines:
        if line.into is not None and line.into.problem is not None and line.problem is None:
            line.problem = f"merged into the route of {line.into.where}, which is not converted"
        out += line.lines()
        if line.problem is not None:
            problems.append(f"{line.where}: {line.problem}")
            report.append(problems[-1])
        else:
            warnings += (f"{line.where}: warning: {why}" for why in line.warnings)
            report += warnings[len(warnings) - len(line.warnings) :]
    text = "\n".join(out) + "\n"
    return Converted(text, problems, warnings, report, tuple(converter.read))
