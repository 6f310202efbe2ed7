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

Within `bulk()` (a restart reading its state file) the source cache may grow to BULK_LIMIT:
sources that come back only after more than LIMIT others (62,500 sources each used by 16
routes spread over 1,000,000, as bench/run.py's routes are) found nothing in a cache
emptied every LIMIT, and 1,000,000 copies of 59 bytes stayed in the table (about 57 MiB of
a restart's 265). What the larger cache costs is its dict (up to about 10 MiB, its strings
are the routes' own), for the length of the load only: it is emptied when bulk() ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

LIMIT = 16_384  # addresses remembered per cache (a dict of about 1 MiB, the strings beside)
BULK_LIMIT = 262_144  # sources remembered within bulk() (a dict of about 10 MiB)


def _sharing(seen: dict[str, str], limit: list[int]) -> Callable[[str], str]:
    """A function handing back the string already in use for a text, remembered in `seen`
    (emptied when it holds limit[0] texts)."""

    def shared(text: str) -> str:
        known = seen.get(text)
        if known is None:
            if len(seen) >= limit[0]:
                seen.clear()
            seen[text] = known = text
        return known

    return shared


def _sharing_all(seen: dict[str, str], limit: list[int]) -> Callable[[Sequence[str]], list[str]]:
    """`_sharing` for many texts at once, at C speed (dict.setdefault mapped over them): the
    cache is emptied when full before each LIMIT texts, so it holds at most limit + LIMIT."""

    def shared_all(texts: Sequence[str]) -> list[str]:
        out: list[str] = []
        for at in range(0, len(texts), LIMIT):
            if len(seen) >= limit[0]:
                seen.clear()
            part = texts[at : at + LIMIT]
            out += map(seen.setdefault, part, part)
        return out

    return shared_all


_sources: dict[str, str] = {}
_groups: dict[str, str] = {}
_source_limit = [LIMIT]  # BULK_LIMIT within bulk()
_group_limit = [LIMIT]
source = _sharing(_sources, _source_limit)  # the string in use for this source, or the text
group = _sharing(_groups, _group_limit)  # the string in use for this group, or the text itself
sources = _sharing_all(_sources, _source_limit)  # `source` of each text, in one call
groups = _sharing_all(_groups, _group_limit)  # `group` of each text, in one call


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """Remember up to BULK_LIMIT sources until the end of the block (a whole table read at
    once); the cache is then emptied, back within LIMIT. Groups keep LIMIT: a table's groups
    are mostly distinct, and a larger cache would cost its dict for nothing."""
    _source_limit[0] = BULK_LIMIT
    try:
        yield
    finally:
        _source_limit[0] = LIMIT
        if len(_sources) > LIMIT:
            _sources.clear()
