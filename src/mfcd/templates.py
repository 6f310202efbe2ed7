"""Templates: (*,G) and prefix routes, their canonical text and the most-specific match (no I/O).

A template says "packets from any source in S to any group in G arriving on IIF leave on
OIFS". The kernel's MFC holds only exact (S,G) entries, so a template is never written to
the kernel: when a packet with no entry arrives on a VIF, the kernel sends an upcall
(NOCACHE) and mfcd *learns* the (S,G) entry from the template that matches (model.Router
keeps templates and learned entries; learning.py answers the upcalls).

Identity: a template is named by (family, source prefix, group prefix, table, iif), its
TemplateKey. Two templates with the same prefixes but different iifs are two templates
(smcroute's bidirectional `mroute from a group G to b` + `mroute from b group G to a`).

Text: a source prefix of length 0 is "*" (any source; "0.0.0.0", "0.0.0.0/0", "::" and
"::/0" are spelt so too), a full-length prefix is the bare address, any other prefix is
"network/length" with the host bits zero. A template whose source and group are both
full-length is not a template but an exact route.

Matching: among the templates of the packet's family, table and arrival interface that
contain its source and group, the one with the longest group prefix wins, then the one
with the longest source prefix. That order is total: two templates of the same iif with
the same group length and the same source length that both contain one (S,G) have the
same prefixes, so they are one template. No overlap is ambiguous, and none is refused.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple, TypeVar

from mfcd.errors import InvalidArgument

# (family 4|6, source prefix text, group prefix text, table, iif)
TemplateKey = tuple[int, str, str, int, str]
ANY = "*"
_BITS = {4: 32, 6: 128}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_V = TypeVar("_V")


class Prefix(NamedTuple):
    family: int
    network: int  # the address as a number, host bits zero
    length: int
    text: str  # canonical


def family_of(text: str) -> int:
    return 6 if ":" in text else 4


def parse(value: str, field: str, family: int | None = None) -> Prefix:
    """A prefix as a source or group of a template: "A", "A/LEN", or "*" (any; then
    `family` says which)."""
    if value == ANY:
        if family is None:
            raise InvalidArgument(f"{field} * needs a group to say its address family", field)
        return Prefix(family, 0, 0, ANY)
    address, slash, length_text = value.partition("/")
    fam = family_of(address)
    bits = _BITS[fam]
    try:
        packed = socket.inet_pton(_AF[fam], address)
    except (OSError, ValueError):
        raise InvalidArgument(
            f"{field} {value!r} is not an IPv4 or IPv6 address or prefix", field=field
        ) from None
    length = bits
    if slash:
        if not (length_text.isascii() and length_text.isdigit()) or int(length_text) > bits:
            raise InvalidArgument(
                f"{field} {value!r}: the prefix length must be a number from 0 to {bits}",
                field=field,
            )
        length = int(length_text)
    number = int.from_bytes(packed, "big")
    host = (1 << (bits - length)) - 1
    if number & host:
        network = socket.inet_ntop(_AF[fam], (number & ~host).to_bytes(bits // 8, "big"))
        raise InvalidArgument(
            f"{field} {value} has host bits set: did you mean {network}/{length}?", field=field
        )
    return Prefix(fam, number, length, text_of(fam, number, length))


def text_of(family: int, network: int, length: int) -> str:
    if length == 0:
        return ANY
    address = socket.inet_ntop(_AF[family], network.to_bytes(_BITS[family] // 8, "big"))
    return address if length == _BITS[family] else f"{address}/{length}"


def is_template(source: str, group: str) -> bool:
    """Whether a (source, group) as given names a template rather than an exact route: no
    source (any), or a prefix shorter than an address on either side."""
    if source in (ANY, "0.0.0.0", "::"):
        return True
    for text in (source, group):
        _, slash, length = text.partition("/")
        if slash and length != str(_BITS[family_of(text)]):
            return True
    return False


_parsed: dict[tuple[str, int], Prefix] = {}


def prefix_of(text: str, family: int) -> Prefix:
    """The Prefix of canonical text (kept: templates are few and matched often)."""
    prefix = _parsed.get((text, family))
    if prefix is None:
        prefix = parse(text, "prefix", family)
        if len(_parsed) < 4096:
            _parsed[(text, family)] = prefix
    return prefix


def address_number(family: int, text: str) -> int:
    return int.from_bytes(socket.inet_pton(_AF[family], text), "big")


def contains(prefix: Prefix, number: int) -> bool:
    bits = _BITS[prefix.family]
    return number >> (bits - prefix.length) == prefix.network >> (bits - prefix.length)


def covered(prefix: Prefix, by_address: Mapping[str, _V]) -> list[_V]:
    """The values of `by_address` (keyed by canonical address text) whose address `prefix`
    contains: each address of a prefix looked up when it has fewer than the mapping has
    keys (a (*,G) template: one), else each key tested."""
    bits = _BITS[prefix.family]
    span = 1 << (bits - prefix.length)
    if span <= len(by_address):
        family, network = prefix.family, prefix.network
        texts = (text_of(family, network + i, bits) for i in range(span))
        return [by_address[text] for text in texts if text in by_address]
    return [
        value
        for text, value in by_address.items()
        if contains(prefix, address_number(prefix.family, text))
    ]


def specificity(key: TemplateKey) -> tuple[int, int]:
    """How specific a template is: (group prefix length, source prefix length); larger wins."""
    return prefix_of(key[2], key[0]).length, prefix_of(key[1], key[0]).length


def matches(key: TemplateKey, source: str, group: str) -> bool:
    family = key[0]
    return contains(prefix_of(key[2], family), address_number(family, group)) and contains(
        prefix_of(key[1], family), address_number(family, source)
    )


# Per (family, table, iif): one level per distinct (group length, source length), most
# specific first: the group and source masks of these lengths (a longer prefix's mask is the
# larger number) and a dict from (group network, source network) to the template.
_Level = tuple[int, int, dict[tuple[int, int], TemplateKey]]


class Index:
    """The templates arranged for matching: a match costs one dict lookup per distinct pair
    of prefix lengths among the templates of that interface, whatever their number."""

    def __init__(self, keys: Iterable[TemplateKey]) -> None:
        self.levels: dict[tuple[int, int, str], list[_Level]] = {}
        by_masks: dict[tuple[int, int, str], dict[tuple[int, int], _Level]] = {}
        for key in keys:
            where, masks, networks = _arranged(key)
            levels = by_masks.setdefault(where, {})
            level = levels.get(masks)
            if level is None:
                level = levels[masks] = (*masks, {})
            level[2][networks] = key
        for where, levels in by_masks.items():
            self.levels[where] = sorted(levels.values(), key=_most_specific_first)

    def add(self, key: TemplateKey) -> None:
        """Arrange one more template, as if it had been among the keys it was made of (a
        batch of templates then costs one each, not the whole index again each)."""
        where, masks, networks = _arranged(key)
        levels = self.levels.setdefault(where, [])
        for gmask, smask, found in levels:
            if (gmask, smask) == masks:
                found[networks] = key
                return
        levels.append((*masks, {networks: key}))
        levels.sort(key=_most_specific_first)

    def discard(self, key: TemplateKey) -> None:
        """Forget a template (if it is arranged), as if it had not been among the keys."""
        where, masks, networks = _arranged(key)
        levels = self.levels.get(where, [])
        for i, (gmask, smask, found) in enumerate(levels):
            if (gmask, smask) == masks and found.get(networks) == key:
                del found[networks]
                if not found:
                    del levels[i]
                    if not levels:
                        del self.levels[where]
                return

    def match(
        self, family: int, table: int, iif: str, source: str, group: str
    ) -> TemplateKey | None:
        """The most specific template for (source, group) arriving on `iif`."""
        levels = self.levels.get((family, table, iif))
        if not levels:
            return None
        return _best(levels, address_number(family, source), address_number(family, group))

    def match_each(
        self, family: int, table: int, source: str, group: str
    ) -> Iterator[tuple[str, TemplateKey]]:
        """(iif, its most specific template) for each iif of this family and table with a
        template for (source, group): the addresses are converted once for all of them."""
        src, grp = address_number(family, source), address_number(family, group)
        for (f, t, iif), levels in self.levels.items():
            if f == family and t == table:
                key = _best(levels, src, grp)
                if key is not None:
                    yield iif, key


def _arranged(
    key: TemplateKey,
) -> tuple[tuple[int, int, str], tuple[int, int], tuple[int, int]]:
    """Where an Index keeps a template: its (family, table, iif), the (group, source) masks
    of its level and its (group, source) networks."""
    family, source, group, table, iif = key
    g, s = prefix_of(group, family), prefix_of(source, family)
    bits = _BITS[family]
    return (
        (family, table, iif),
        (_mask(g.length, bits), _mask(s.length, bits)),
        (g.network, s.network),
    )


def _most_specific_first(level: _Level) -> tuple[int, int]:
    return -level[0], -level[1]


def _mask(length: int, bits: int) -> int:
    return ((1 << length) - 1) << (bits - length)


def _best(levels: list[_Level], src: int, grp: int) -> TemplateKey | None:
    """The first level (most specific first) with a template containing (src, grp)."""
    for gmask, smask, found in levels:
        key = found.get((grp & gmask, src & smask))
        if key is not None:
            return key
    return None
