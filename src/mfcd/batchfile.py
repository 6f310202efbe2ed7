"""The batch file syntax (`mfc add|del` lines), read by mfcd and by mfcctl's own command line.

A batch line holds the words of an `mfcctl mfc add`, `mfc del`, `mfc oif add` or
`mfc oif del` command: the leading `mfc` is optional, `#` starts a comment, quotes
work as in a shell and `--oifs` takes names separated by spaces or commas.  mfcctl
sends a batch file's text as it is and mfcd parses it here, line by line, so a
batch of 100,000 lines never exists as 100,000 request objects.  Standard library
only: mfcctl imports this module too, and must start fast.
"""

from __future__ import annotations

from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs mfcctl a few milliseconds at every start
    from typing import Any

Op = dict[str, "Any"]


class SyntaxProblem(ValueError):
    """A batch line that does not parse: the message says why, `line` which (from 1)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def empty_oif(field: str) -> str:
    """The one message for an oif list with an empty name (`r1,,r2`, `,`, a JSON ""), as
    mfcctl, a batch line, a request and the config files all say it."""
    return (
        f"{field} has an empty interface name (as in r1,,r2 or a comma at an end): name each"
        " interface, separated by commas or spaces"
    )


def split_oifs(values: list[str]) -> list[str]:
    """The names of `--oifs` words, comma- or space-separated ("r1,r2", "r1, r2", "r1 r2");
    ValueError for an empty name between commas or at an end (a typo, never meant)."""
    if len(values) == 1 and "," not in values[0]:
        return values  # (the usual single name)
    names: list[str] = []
    for between in " ".join(values).split(","):
        found = between.split()
        if not found:
            raise ValueError(empty_oif("--oifs"))
        names += found
    return names


# line, kind (add, del, oif_add, oif_del), S, G, iif ("" but for add), oifs (None for del),
# table (its --table as written, None without one: the family's default table)
Change = tuple[int, str, str, str, str, "list[str] | None", "str | None"]
OIF_OPS = ("oif_add", "oif_del")  # add or remove oifs of an existing route
JOIN_OPS = ("join", "leave")  # group joins: `join --interface IF --group G [--source S]`


# What ends a line besides "\n", as for str.splitlines(); str.split() would take these for
# spaces, so a "#" comment would swallow the lines after it. A text with any of them is
# rewritten with "\n" alone first.
_OTHER_LINE_ENDS = ("\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def lines(text: str) -> Iterator[Change]:
    """Each change of a batch text as (line number, kind, source, group, iif, oifs, table),
    kind being "add", "del", "oif_add" or "oif_del"; only an add (and a template's del) has
    an iif (the others "") and a del has no oifs (None); source is "*" without --source
    (any source: a template); table is None without --table.  Blank and comment lines
    yield nothing.

    Raises SyntaxProblem naming the line.
    """
    if any(end in text for end in _OTHER_LINE_ENDS):  # (`re` would slow mfcctl's start)
        text = "\n".join(text.splitlines())
    lineno = 0
    pos = 0
    end = len(text)
    while pos < end:
        # One line at a time, not splitlines(): a line's words are freed before the next is read.
        newline = text.find("\n", pos)
        if newline < 0:
            newline = end
        line = text[pos:newline]
        pos = newline + 1
        lineno += 1
        if "#" in line or '"' in line or "'" in line:
            try:
                found = words(line)
            except ValueError as e:  # shlex: "No closing quotation"
                raise SyntaxProblem(str(e), lineno) from None
        else:
            found = line.split()
            change = _generated(lineno, found)
            if change is not None:
                yield change
                continue
        if not found:
            continue
        try:
            op = line_op(found)
        except ValueError as e:
            raise SyntaxProblem(str(e), lineno) from None
        yield (
            lineno,
            op["op"],
            # No source: a join of any source (""), a template of any source ("*").
            op.get("source", "" if op["op"] in ("join", "leave") else "*"),
            op["group"],
            op["iif"] if "iif" in op else op.get("interface", ""),  # (a join's interface)
            op.get("oifs"),
            op.get("table"),
        )


def _generated(lineno: int, found: list[str]) -> Change | None:
    """A line of the shapes generated files use, `[mfc] add --source S --group G --iif I
    --oifs O...` and `[mfc] del --source S --group G`, each optionally ending in `--table T`,
    checked directly: a batch of 100,000 lines spends most of its parsing here.  None for
    anything else (the general parser's job, which also gives the messages)."""
    k = 1 if found and found[0] == "mfc" else 0
    size = len(found) - k
    table = None
    if size > 6 and found[-2] == "--table" and found[-1][0] != "-":
        # (a batch into another table: as fast as one into the default table)
        table = found[-1]
        found = found[:-2]
        size -= 2
    if (
        size < 5
        or found[k + 1] != "--source"
        or found[k + 3] != "--group"
        or found[k + 2][0] == "-"
        or found[k + 4][0] == "-"
    ):
        return None
    kind = found[k]
    if kind == "del":
        return (lineno, "del", found[k + 2], found[k + 4], "", None, table) if size == 5 else None
    if (
        kind != "add"
        or size < 9
        or found[k + 5] != "--iif"
        or found[k + 7] != "--oifs"
        or found[k + 6][0] == "-"
    ):
        return None
    oifs = found[k + 8 :]
    if size == 9:  # one word: "r1" or "r1,r2"
        oif = oifs[0]
        if oif[0] == "-":
            return None
        if "," in oif:
            oifs = oif.split(",")
            if "" in oifs:  # "r1,,r2" or "r1,": line_op says what is wrong
                return None
    elif (  # "r1 r2": two words, spelt out (a generator costs more here)
        size == 10
        and oifs[0][0] != "-"
        and oifs[1][0] != "-"
        and "," not in oifs[0]
        and "," not in oifs[1]
    ) or not any(oif[0] == "-" or "," in oif for oif in oifs):  # "r1 r2 r3 ..."
        pass
    else:  # "r1, r2" and the like: line_op reads them
        return None
    return (lineno, "add", found[k + 2], found[k + 4], found[k + 6], oifs, table)


def words(line: str) -> list[str]:
    """A batch line's words: `#` starts a comment; quotes work as in a shell."""
    if '"' in line or "'" in line:
        import shlex  # noqa: PLC0415 (only for the rare quoted line)

        return shlex.split(line, comments=True)
    return line.split("#", 1)[0].split()


def line_op(words: list[str]) -> Op:
    """The words of one change (`[mfc] add|del --source ...`, `[mfc] oif add|del --source
    ...`) as a protocol op, whose "op" is add, del, oif_add or oif_del; ValueError says what
    is wrong."""
    if words[0] == "mfc":
        words = words[1:]
    if words and words[0] in JOIN_OPS:
        return join_op(words)
    oif = bool(words) and words[0] == "oif"
    if oif:
        words = words[1:]
    if not words or words[0] not in ("add", "del"):
        raise ValueError(
            "expected `mfc oif add|del ...`"
            if oif
            else "expected `mfc add ...`, `mfc del ...`, `mfc oif add|del ...`, `join ...` or"
            " `leave ...`"
        )
    kind, rest = words[0], words[1:]
    command = f"mfc oif {kind}" if oif else f"mfc {kind}"
    values: dict[str, list[str]] = {}
    current: list[str] | None = None
    for word in rest:
        if word.startswith("-"):
            flag, has_value, value = word.removeprefix("--").partition("=")
            if flag not in ("source", "group", "iif", "oifs", "table") or not word.startswith("--"):
                raise ValueError(
                    f"unexpected option {word} (a batch line takes --source, --group, --iif,"
                    " --oifs and --table; global options go on mfcctl's command line)"
                )
            if flag in values:
                raise ValueError(f"--{flag} given twice")
            current = values[flag] = [value] if has_value else []
        elif current is None:
            raise ValueError(f"unexpected word {word!r}")
        else:
            current.append(word)
    # Without --source, an add or del names a template of any source; a del names a
    # template's iif when several templates have the same prefixes.
    if oif:
        wanted: tuple[str, ...] = ("source", "group", "oifs")
        optional: tuple[str, ...] = ("table",)
    elif kind == "add":
        wanted, optional = ("group", "iif", "oifs"), ("source", "table")
    else:
        wanted, optional = ("group",), ("source", "table", "iif")
    for flag in wanted:
        if not values.get(flag):
            raise ValueError(f"`{command}` needs --{flag}")
    for flag, given in values.items():
        if flag not in wanted and flag not in optional:
            raise ValueError(f"`{command}` takes no --{flag}")
        if flag != "oifs" and len(given) != 1:
            raise ValueError(f"--{flag} takes one value")
    op: Op = {"op": f"oif_{kind}" if oif else kind, "group": values["group"][0]}
    if "source" in values:
        op["source"] = values["source"][0]
    if "iif" in values:
        op["iif"] = values["iif"][0]
    if "table" in values:
        op["table"] = values["table"][0]
    if "oifs" in wanted:
        op["oifs"] = split_oifs(values["oifs"])
    return op


def join_op(words: list[str]) -> Op:
    """The words of `join|leave --interface IF --group G [--source S]` as a protocol op."""
    kind, values = words[0], {}
    rest = iter(words[1:])
    for word in rest:
        flag, has_value, value = word.removeprefix("--").partition("=")
        if flag not in ("interface", "group", "source") or not word.startswith("--"):
            raise ValueError(
                f"unexpected {'option' if word.startswith('-') else 'word'} {word} (`{kind}`"
                " takes --interface, --group and --source)"
            )
        if flag in values:
            raise ValueError(f"--{flag} given twice")
        if not has_value:
            value = next(rest, "")
            if not value or value.startswith("--"):
                raise ValueError(f"--{flag} takes one value")
        values[flag] = value
    for flag in ("interface", "group"):
        if flag not in values:
            raise ValueError(f"`{kind}` needs --{flag}")
    return {"op": kind, **values}
