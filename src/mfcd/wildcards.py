"""Interface wildcards (pure): names ending in `*` or `+` that stand for interfaces by prefix.

Such a name stands for every interface whose name starts with what comes before the `*` or
`+`, now and later.

Config routes (declarations) and runtime routes (mfcctl, JSON, batches) share these. A
route or template whose oifs name a wildcard keeps that *pattern* as its intent (what the
state file and the config files hold); the model and the kernel get its *expansion* over
the interfaces that exist (expand), redone whenever interfaces come or go. A pattern is a
Ports of its own class (Pattern), so the hot paths tell one apart without reading names.
"""

from __future__ import annotations

from collections.abc import Iterable

from mfcd.model import Ports
from mfcd.templates import TemplateKey

WILDCARDS = ("*", "+")  # a name ending in one of these matches every name it is the start of

# Whether any Pattern was made in this process: until one is, nothing needs looking at for
# patterns (a batch of 100,000 plain routes costs no scan).
made = False


class Pattern(Ports):
    """A route's or template's interfaces as given, with at least one wildcard oif."""

    __slots__ = ()


def seen() -> None:
    """A wildcard was read (a request or the state file): see `made`."""
    global made  # noqa: PLW0603 (a one-way switch)
    made = True


def is_wildcard(name: str) -> bool:
    return name.endswith(WILDCARDS)


def matches(pattern: str, name: str) -> bool:
    """Whether an interface name matches a declared name (a wildcard or the name itself)."""
    if pattern.endswith(WILDCARDS):
        return name.startswith(pattern[:-1])
    return name == pattern


def touched(ports: Ports, names: Iterable[str]) -> bool:
    """Whether one of these interfaces coming or going can change what a pattern expands
    to: one of its wildcards (an oif, or a template's iif) matches it."""
    starts = tuple(n[:-1] for n in (ports.iif, *ports.oifs) if n.endswith(WILDCARDS))
    return bool(starts) and any(name.startswith(starts) for name in names)


def pattern(iif: str, oifs: tuple[str, ...]) -> Ports:
    """The Ports of these interfaces: a Pattern if an oif (or a template's iif) is a
    wildcard."""
    if iif.endswith(WILDCARDS) or any(n.endswith(WILDCARDS) for n in oifs):
        seen()
        return Pattern(iif, oifs)
    return Ports(iif, oifs)


def expand(ports: Ports, links: Iterable[str]) -> Ports:
    """The concrete interfaces of declared ones: each wildcard oif replaced by the existing
    interfaces it matches (never the iif; a name listed outright stays where it is)."""
    if not any(n.endswith(WILDCARDS) for n in ports.oifs):
        return ports
    plain = [n for n in ports.oifs if not n.endswith(WILDCARDS)]
    patterns = [n[:-1] for n in ports.oifs if n.endswith(WILDCARDS)]
    taken = {ports.iif, *plain}
    found = sorted(n for n in links if n not in taken and n.startswith(tuple(patterns)))
    return Ports(ports.iif, (*plain, *found))


def per_iif(ports: Ports, links: Iterable[str]) -> list[Ports]:
    """A template's interfaces over the interfaces that exist: with a wildcard iif, one
    Ports per interface it matches (else the iif as given), each with its wildcard oifs
    expanded and never its own iif among them; one left with no oif is none."""
    names = list(links)
    iif = ports.iif
    iifs = sorted(n for n in names if matches(iif, n)) if is_wildcard(iif) else [iif]
    out = []
    for name in iifs:
        now = expand(Ports(name, tuple(n for n in ports.oifs if n != name)), names)
        if now.oifs:
            out.append(now)
    return out


def expansion_of(key: TemplateKey, pattern_key: TemplateKey) -> bool:
    """Whether a template is one a template with a wildcard iif expands to."""
    return key[:4] == pattern_key[:4] and matches(pattern_key[4], key[4])
