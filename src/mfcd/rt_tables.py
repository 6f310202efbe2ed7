"""Names of routing tables as iproute2 reads them: the file format (pure) and a thin reader."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

# Where iproute2 (lib/rt_names.c) reads table names. <usr>/rt_tables is read only when
# /etc/iproute2/rt_tables does not exist, <usr>/rt_tables.d/X.conf only when
# /etc/iproute2/rt_tables.d/X does not; <usr> is chosen when iproute2 is built (iproute2 6.7
# and later; /usr/share/iproute2 by default, older versions read /etc only).
ETC = "/etc/iproute2"
USR = "/usr/share/iproute2"
MAIN = "rt_tables"
DROPINS = "rt_tables.d"
INTERVAL = 0.01  # seconds: how often a name found is checked against the files (Names)


class Entry(NamedTuple):
    """One `NUMBER NAME` line."""

    number: int
    name: str


class Parsed(NamedTuple):
    """A file's entries, and the number of the line iproute2 stopped at (not that shape)."""

    entries: tuple[Entry, ...]
    stopped_at: int | None = None


# Names iproute2 knows without any file; a file's entries take precedence over them.
BUILTIN = (Entry(253, "default"), Entry(254, "main"), Entry(255, "local"))

# iproute2 reads a line (blanks and tabs skipped) with sscanf "0x%x %s", then "%d %s": a
# number (all its digits: "100" alone is no "10" named "0"), optional white space, and the
# name up to the next white space (C's isspace).
_S, _NS, _X = "[ \t\n\v\f\r]", "[^ \t\n\v\f\r]", "[0-9a-fA-F]"
_HEX = re.compile(
    rf"0x{_S}*(?P<sign>[+-]?)(?P<hex>(?>0[xX]{_X}*|{_X}+))(?!{_X}){_S}*(?P<name>{_NS}+)"
)
_DEC = re.compile(rf"{_S}*(?P<dec>[+-]?[0-9]+)(?![0-9]){_S}*(?P<name>{_NS}+)")


def parse(text: str) -> Parsed:
    """A file's `NUMBER NAME` lines (decimal or 0x hex; blank lines and lines starting with
    `#` skipped; the name is the word after the number, so `100 a # note` names "a"). As in
    iproute2, the first line of another shape ends the file (`stopped_at`), and a number
    that is negative or does not fit a C int is skipped (iproute2 wraps a large one into
    another table; mfcd leaves it out)."""
    entries: list[Entry] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        rest = line.lstrip(" \t")
        if not rest or rest[0] == "#":
            continue
        match = _HEX.match(rest) or _DEC.match(rest)
        if match is None:
            return Parsed(tuple(entries), lineno)
        if match.re is _HEX:
            digits = match["hex"].removeprefix("0x").removeprefix("0X") or "0"  # ("0x": 0)
            number = int(digits, 16) * (-1 if match["sign"] == "-" else 1)
        else:
            number = int(match["dec"])
        if 0 <= number < 2**31:
            entries.append(Entry(number, match["name"]))
    return Parsed(tuple(entries))


def resolve(entries: Iterable[Entry]) -> dict[str, int]:
    """{name: number} of entries in the order read, a name given twice resolved as iproute2
    looks it up: the entry whose number has the lowest low byte (number % 256), of those the
    last read."""
    names: dict[str, int] = {}
    for number, name in entries:
        known = names.get(name)
        if known is None or number & 255 <= known & 255:
            names[name] = number
    return names


def is_dropin(filename: str) -> bool:
    """Whether iproute2 reads a file of rt_tables.d: X.conf, not hidden."""
    return filename.endswith(".conf") and not filename.startswith(".")


def dropin_paths(usr_dir: str, usr: Iterable[str], etc_dir: str, etc: Iterable[str]) -> list[str]:
    """The drop-ins to read, in order, given the entries of both directories: those of usr
    that etc has no entry of the same name for, then those of etc; each directory's in name
    order (iproute2 takes directory order, which only matters for a name given twice)."""
    etc = sorted(etc)
    hidden = set(etc)
    return [
        *(f"{usr_dir}/{name}" for name in sorted(usr) if is_dropin(name) and name not in hidden),
        *(f"{etc_dir}/{name}" for name in etc if is_dropin(name)),
    ]


# --- reading the files ----------------------------------------------------------------------------


class Tables(NamedTuple):
    """What the files say: names, where reading stopped, and the paths whose change matters."""

    names: dict[str, int]
    problems: tuple[str, ...]
    watched: tuple[str, ...]


def base_paths(etc: str = ETC, usr: str = USR) -> tuple[str, ...]:
    """The main files and drop-in directories (a directory changes when a file is added,
    removed or renamed in it)."""
    return (f"{etc}/{MAIN}", f"{usr}/{MAIN}", f"{etc}/{DROPINS}", f"{usr}/{DROPINS}")


def read(etc: str = ETC, usr: str = USR) -> Tables:
    """The table names of the files under `etc` and `usr`, read as iproute2 reads them."""
    main_etc, main_usr, dir_etc, dir_usr = base_paths(etc, usr)
    files = [main_etc]
    try:
        os.stat(main_etc)
    except FileNotFoundError:
        files = [main_usr]  # (only when missing: one unreadable is not replaced)
    except OSError:
        pass
    dropins = dropin_paths(dir_usr, _listing(dir_usr), dir_etc, _listing(dir_etc))
    entries, problems = list(BUILTIN), []
    for path in files + dropins:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                parsed = parse(f.read())
        except OSError:
            continue
        entries += parsed.entries
        if parsed.stopped_at is not None:
            problems.append(f"{path} line {parsed.stopped_at}")
    return Tables(resolve(entries), tuple(problems), (*base_paths(etc, usr), *dropins))


def _listing(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


Stamp = tuple[tuple[int, int, int, int] | None, ...]


def stamp(paths: Iterable[str]) -> Stamp:
    """What tells a change of each path (None: missing): inode, size, mtime and ctime."""
    stamps: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


class Names:
    """The table names of the files, read again when they change. A lookup stats the files
    when the name is not known and otherwise at most every `interval` seconds, so a batch
    naming a table on each of its lines costs no stat per line."""

    def __init__(
        self,
        etc: str = ETC,
        usr: str = USR,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._etc, self._usr = etc, usr
        self._interval, self._clock = interval, clock
        self._watched = base_paths(etc, usr)
        self._stamp: Stamp | None = None  # (None: read at the first lookup)
        self._due = float("-inf")
        self._names: dict[str, int] = {}
        self.problems: tuple[str, ...] = ()  # lines where reading stopped, as of the last read

    def get(self, name: str) -> int | None:
        """The number of table `name` (None: the files do not name it)."""
        number = self._names.get(name)
        if number is None or self._clock() >= self._due:
            self.refresh()
            number = self._names.get(name)
        return number

    def now(self) -> dict[str, int]:
        """Every name as the files say now (read again if they changed); not to be changed."""
        self.refresh()
        return self._names

    def refresh(self) -> None:
        """Read the files again if any changed since they were last read."""
        self._due = self._clock() + self._interval
        before = stamp(self._watched)
        if before == self._stamp:
            return
        tables = read(self._etc, self._usr)
        # The stamp taken before reading: a change while reading shows at the next check. If
        # the drop-ins are others now, theirs is not known yet: the next check reads again.
        self._stamp = before if tables.watched == self._watched else None
        self._watched = tables.watched
        self._names, self.problems = tables.names, tables.problems
