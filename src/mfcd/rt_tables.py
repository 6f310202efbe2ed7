"""Names of routing tables, so `table` may be given as `ip` users name it.

The `/etc/iproute2/rt_tables` format (parser, no I/O) and a thin reader of the files
iproute2 reads.
"""

from __future__ import annotations

import glob

# Where iproute2 reads table names: the main file, then its drop-in directory.
PATHS = ("/etc/iproute2/rt_tables", "/usr/share/iproute2/rt_tables")
DROPINS = ("/etc/iproute2/rt_tables.d/*.conf",)


def parse(text: str) -> dict[str, int]:
    """`NUMBER NAME` lines (`#` comments, blank lines) as {name: number}; a line that is not
    that shape is skipped, as iproute2 does."""
    names: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        number, name = words[0], words[1]
        try:
            value = int(number, 0)
        except ValueError:
            continue
        if 0 <= value < 2**32:
            names[name] = value
    return names


def load() -> dict[str, int]:
    """The table names of this machine (the first main file that exists, then drop-ins)."""
    names: dict[str, int] = {}
    for path in PATHS:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                names.update(parse(f.read()))
            break
        except OSError:
            continue
    for pattern in DROPINS:
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    names.update(parse(f.read()))
            except OSError:
                continue
    return names
