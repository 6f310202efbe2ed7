"""One shared string per address among the routes' keys, for memory only (no I/O).

A route key holds its source and group as text, and every parser (a batch line, JSON, a
state-file record) makes a new string for each occurrence: 1,000,000 routes from one source
held 1,000,000 equal copies of it, 59 bytes each.  `source` and `group` hand back the first
string seen with that text, so routes that share a source or a group share its string.

Each cache is bounded and simply emptied when full, so together they never hold more than
a few MiB whatever the addresses: a table of all-distinct addresses gains nothing and loses
nothing but the lookups (sys.intern would keep a dict entry per distinct address for as long
as it lives, nearly as much as the string it saves).  Sources and groups have a cache each,
so that 1,000,000 distinct groups do not push out the one source they share.  Sharing is only
for memory: a string not shared is as good as one that is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

LIMIT = 16_384  # addresses remembered per cache (a dict of about 1 MiB, the strings beside)


def _sharing(seen: dict[str, str]) -> Callable[[str], str]:
    """A function handing back the string already in use for a text, remembered in `seen`."""

    def shared(text: str) -> str:
        known = seen.get(text)
        if known is None:
            if len(seen) >= LIMIT:
                seen.clear()
            seen[text] = known = text
        return known

    return shared


_sources: dict[str, str] = {}
_groups: dict[str, str] = {}
source = _sharing(_sources)  # the string in use for this source, or the text itself
group = _sharing(_groups)  # the string in use for this group, or the text itself


def _sharing_all(seen: dict[str, str]) -> Callable[[Sequence[str]], Iterator[str]]:
    """A function handing back, for many texts at C speed, the strings in use for them (the
    cache may pass LIMIT by the texts of one call before it is emptied at the next)."""

    def shared_all(texts: Sequence[str]) -> Iterator[str]:
        if len(seen) >= LIMIT:
            seen.clear()
        return map(seen.setdefault, texts, texts)

    return shared_all


sources = _sharing_all(_sources)  # `source` of each text
groups = _sharing_all(_groups)  # `group` of each text
