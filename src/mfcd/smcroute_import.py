"""smcroute.conf to mfcd's config declarations (TOML), for `mfcctl import-smcroute`.

Standard library only, and no dataclasses: mfcctl imports it for this one command. Each
directive of smcroute.conf(5) becomes a declaration of mfc_daemon.conf(5):

    phyint IF [enable|disable] [mrdisc] [ttl-threshold N]  ->  [[interface]] (when it sets one)
    mroute from IF [source S[/LEN]] group G[/LEN] to OIF... ->  [[route]] (a template without
                                                               one source address and group)
    mgroup from IF [source S[/LEN]] group G[/LEN]           ->  [[join]] (one per source)
    ssmgroup from IF source S group G                       ->  [[join]] with a source
    include GLOB                                            ->  the files' declarations, inline

The `+` wildcard of interface names is mfcd's too. Every line that cannot be converted is
reported as "FILE:LINE: why" and left out, as a comment, of the output.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
from typing import NamedTuple

MAX_SOURCES = 256  # a source prefix of mgroup becomes one join per address, up to this many


class Converted(NamedTuple):
    text: str  # the TOML
    problems: list[str]  # "FILE:LINE: why", one per line not converted


class _Problem(Exception):
    pass


class _Converter:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.problems: list[str] = []
        self.routes: dict[tuple[str, str, str], str] = {}  # (source, group, iif) -> FILE:LINE
        self.joins: set[tuple[str, str, str | None]] = set()
        self.interfaces: dict[str, str] = {}  # name -> FILE:LINE
        self.reading: list[str] = []  # the include chain, to refuse loops
        self.where = ""  # FILE:LINE of the directive being converted

    def file(self, path: str) -> None:
        real = os.path.realpath(path)
        if real in self.reading:
            raise _Problem(f"includes itself ({path})")
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        self.reading.append(real)
        try:
            for number, line in enumerate(lines, 1):
                where = f"{path}:{number}"
                words = line.split("#", 1)[0].split()
                if not words:
                    continue
                self.out.append(f"# {where}: {line.strip()}")
                self.where = where
                try:
                    self.directive(words, path)
                except _Problem as e:
                    self.problems.append(f"{where}: {e}")
                    self.out.append(f"# NOT CONVERTED: {e}")
                except OSError as e:
                    self.problems.append(f"{where}: cannot read an included file: {e}")
                    self.out.append(f"# NOT CONVERTED: {e}")
        finally:
            self.reading.pop()

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
        if "disable" in notes or (threshold is None and not mrdisc):
            # mfcd gives an interface a VIF only while a route names it: enable and disable
            # have nothing to say.
            self.out.append("# (mfcd adds a VIF only for interfaces routes use: nothing to do)")
            if "disable" in notes and (threshold is not None or mrdisc):
                raise _Problem("phyint disable with settings: the settings are left out")
            return
        if name.endswith(("+", "*")):
            raise _Problem(
                f"phyint {name}: interface settings take one interface name, not a"
                " wildcard; write one phyint line per interface"
            )
        if name in self.interfaces:
            raise _Problem(f"phyint {name} again (first at {self.interfaces[name]})")
        self.interfaces[name] = self.where
        self.out.append("[[interface]]")
        self.out.append(f"name = {_q(name)}")
        if threshold is not None:
            self.out.append(f"threshold = {threshold}")
        if mrdisc:
            self.out.append("mrdisc = true")
        self.out.append("")

    def mroute(self, words: list[str]) -> None:
        if "to" not in words:
            raise _Problem("mroute needs `to OIF...`")
        cut = words.index("to")
        options = _pairs(words[:cut], ("from", "source", "group"), "mroute")
        oifs = words[cut + 1 :]
        if "from" not in options or "group" not in options:
            raise _Problem("mroute needs `from IIF` and `group GROUP`")
        if not oifs:
            raise _Problem("mroute needs at least one oif after `to`")
        iif = options["from"]
        group = _group(options["group"])
        source = _source(options.get("source"), group)
        if source is not None and "/" not in source + group and iif.endswith(("+", "*")):
            # mfcd's (S,G) routes arrive on one interface; a template may take a wildcard.
            source = f"{source}/{ipaddress.ip_address(source).max_prefixlen}"
            self.out.append("# (a wildcard iif: written as a template of one source)")
        if iif in oifs:
            oifs = [n for n in oifs if n != iif]
            self.out.append(f"# ({iif} is the iif: left out of the oifs)")
            if not oifs:
                raise _Problem("the only oif is the iif: no route")
        if len(set(oifs)) != len(oifs):
            oifs = list(dict.fromkeys(oifs))
        key = (source or "*", group, iif)
        if key in self.routes:
            raise _Problem(f"the same route again (first at {self.routes[key]}); kept the first")
        self.routes[key] = self.where
        self.out.append("[[route]]")
        if source is not None:
            self.out.append(f"source = {_q(source)}")
        self.out.append(f"group = {_q(group)}")
        self.out.append(f"iif = {_q(iif)}")
        self.out.append(f"oifs = [{', '.join(_q(n) for n in oifs)}]")
        self.out.append("")

    def mgroup(self, kind: str, words: list[str]) -> None:
        options = _pairs(words, ("from", "source", "group"), kind)
        if "from" not in options or "group" not in options:
            raise _Problem(f"{kind} needs `from IFNAME` and `group GROUP`")
        if kind == "ssmgroup" and "source" not in options:
            raise _Problem("ssmgroup needs `source ADDRESS`")
        name = options["from"]
        if name.endswith(("+", "*")):
            raise _Problem(f"{kind} from {name}: a join takes one interface, not a wildcard")
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
                self.out.append("# (the same join again: left out)")
                continue
            self.joins.add(key)
            self.out.append("[[join]]")
            self.out.append(f"interface = {_q(name)}")
            self.out.append(f"group = {_q(group)}")
            if source is not None:
                self.out.append(f"source = {_q(source)}")
            self.out.append("")

    def include(self, words: list[str], path: str) -> None:
        if len(words) != 1:
            raise _Problem("include takes one path or glob")
        pattern = words[0]
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(path), pattern)
        for name in sorted(glob.glob(pattern)):
            self.out.append(f"# include {name}")
            self.file(name)


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


def _group(text: str) -> str:
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
    net = _network(text, "source")
    if net.network_address.is_unspecified:
        return None
    family = ipaddress.ip_network(group).version
    if net.version != family:
        raise _Problem(f"source {text} and group {group} are of different address families")
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _q(text: str) -> str:
    return json.dumps(text)  # a TOML basic string for the names and addresses met here


def convert_file(path: str) -> Converted:
    """Convert an smcroute.conf and the files it includes (OSError if it cannot be read)."""
    converter = _Converter()
    converter.out.append(f"# Converted from {path} by mfcctl import-smcroute.")
    converter.out.append("# Check it with: mfcd --check-config --config FILE")
    converter.out.append("")
    converter.file(path)
    return Converted("\n".join(converter.out) + "\n", converter.problems)
