"""Tests for what makes a start with 100,000 config routes fast: the whole-file read of
written [[route]] blocks (declarations._read_columns) against the TOML reader, and the
origins of many routes set at one go (Router.set_origins) against one at a time."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd import declarations
from mfcd.controller import Controller
from mfcd.declarations import Declarations, diff
from mfcd.errors import StateError
from mfcd.model import AddRoute, Ports, Router
from tests.unit.conftest import FakeKernel, FakeState

WRITTEN = '[[route]]\nsource = "{s}"\ngroup = "{g}"\niif = "{i}"\noifs = [{o}]\n{table}{blank}'
# The valid values first (blocks() and WRONG take them apart by index).
SOURCES = ("198.18.0.1", "198.18.0.2", "10.1.2.3", "223.1.1.1", "127.0.0.1", "0.0.0.0",
           "224.1.1.1", "198.18.0.0/24", "*", "2001:db8::1", "198.18.0.300",
           "198.018.0.1")  # fmt: skip
GROUPS = ("239.1.1.1", "224.0.1.1", "239.1.1.2", "224.0.0.5", "240.0.0.1", "223.0.0.1",
          "239.2.0.0/24", "ff3e::1", "239.1.1")  # fmt: skip
PORTS = ('"a", "b"', '"b"', '"a"', '"b", "b"', '"vlan*"', '"c", "b"', '"-x"')
TABLES = ("", "table = 7\n", "table = 999999999\n", "table = 1000000000\n", "table = 0\n")


@st.composite
def blocks(draw: st.DrawFn) -> str:
    """A [[route]] block: valid and written as import-smcroute writes it, or with one thing
    that is not (a value, or the form)."""
    values = {
        "s": SOURCES[:4],
        "g": GROUPS[:3],
        "i": ("c",),
        "o": PORTS[:3],
        "table": TABLES[:3],
    }
    bad = draw(st.sampled_from((None, None, None, "s", "g", "i", "o", "table", "form")))
    wrong = {"s": SOURCES[4:], "g": GROUPS[3:], "i": ("a", "b", "eth+"), "o": PORTS[3:]}
    wrong["table"] = TABLES[3:]
    chosen = {
        name: draw(st.sampled_from(wrong[name] if name == bad else choices))
        for name, choices in values.items()
    }
    text = WRITTEN.format(**chosen, blank="\n" * draw(st.integers(0, 2)))
    forms = ("comment", "spaced", "order", "escape", "tab", "bracket", "lines", "quote")
    other = draw(st.sampled_from(forms)) if bad == "form" else ""
    if other == "comment":  # not the written form: the block is read by the TOML reader
        text = text.replace("\n", "  # here\n", 2)
    elif other == "spaced":
        text = text.replace("iif = ", "iif =  ")
    elif other == "order":
        head, rest = text.split("\n", 1)
        lines = rest.split("\n")
        text = "\n".join([head, lines[1], lines[0], *lines[2:]])
    elif other == "escape":  # "c" written with an escape: the TOML reader's "c"
        text = text.replace('iif = "c"', 'iif = "\\u0063"')
    elif other == "tab":  # a tab in a basic string: TOML, not the written form
        text = text.replace('iif = "c"', 'iif = "c\td"')
    elif other == "bracket":  # a ] in a name: past the loose match's list
        text = text.replace("oifs = [", 'oifs = ["a]b", ')
    elif other == "lines":  # the list of oifs over several lines
        text = text.replace("oifs = [", "oifs = [\n")
    elif other == "quote":  # an escaped quote in the iif
        text = text.replace('iif = "c"', 'iif = "c\\"d"')
    return text


def full_read(text: str) -> tuple[Declarations, list[str]]:
    found, problems = Declarations(), list[str]()
    declarations.parse_text(text, "f.conf", found, problems)
    return found, problems


# (monkeypatch sets the same attribute in every example: nothing to reset between them)
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    settings_text=st.sampled_from(("", 'log_level = "info"\n\n', "# a comment\n")),
    texts=st.lists(blocks(), min_size=1, max_size=6),
    span=st.sampled_from((1, 120, 1 << 20)),
)
def test_a_file_read_at_once_reads_as_the_toml_reader(
    settings_text: str, texts: list[str], span: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """parse_file (whole-file read of written blocks when it applies, else by blocks, else
    the TOML reader) gives the TOML reader's routes, lines and problems; and where the
    whole-file read applies, its blocks are those the next reload looks up."""
    monkeypatch.setattr(declarations, "_WRITTEN_SPAN", span)  # spans of one block, some, all
    text = settings_text + "".join(texts)
    part = declarations.parse_file(text, "f.conf")
    full, problems = full_read(text)
    assert part.problems == problems
    if problems:
        return
    assert part.found.routes == full.routes
    assert part.found.positions == full.positions
    assert part.found.wild == full.wild
    assert part.found.templates == full.templates
    assert part.blocks == declarations._blocks_of(text, full)
    read = declarations._read_columns(text, len(settings_text), "f.conf")
    if read is not None:  # taken only for what it reads exactly as the TOML reader
        assert read[0].routes == full.routes and read[0].positions == full.positions
        assert read[1].blocks() == part.blocks
        assert not full.wild and not full.templates


GOOD = {"s": "198.18.0.9", "g": "239.9.9.9", "i": "c", "o": '"a", "b"', "table": "", "blank": ""}
WRONG = [
    *(("s", v) for v in SOURCES[4:]),
    *(("g", v) for v in GROUPS[3:]),
    *(("i", v) for v in ("a", "b", "eth+")),
    *(("o", v) for v in PORTS[3:]),
    *(("table", v) for v in TABLES[3:]),
]


@pytest.mark.parametrize(("name", "value"), WRONG)
def test_one_wrong_value_among_written_routes_reads_as_the_toml_reader(
    name: str, value: str
) -> None:
    """A value the whole-file read must not take (it leaves the file to the readers that
    say what is wrong, or that take it as something else: a template, a wildcard)."""
    wrong = WRITTEN.format(**{**GOOD, "g": "239.9.9.8", name: value})
    text = WRITTEN.format(**GOOD) + wrong + WRITTEN.format(**{**GOOD, "g": "239.9.9.7"})
    part = declarations.parse_file(text, "f.conf")
    full, problems = full_read(text)
    assert (part.problems, part.found.routes) == (problems, full.routes)
    assert (part.found.templates, part.found.wild) == (full.templates, full.wild)
    assert declarations._read_columns(text, 0, "f.conf") is None


def test_routes_as_import_smcroute_writes_them_are_read_at_once_in_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bench's file (and import-smcroute's): read by _read_columns, in several spans,
    with each route's line and a shared Ports per combination of interfaces."""
    monkeypatch.setattr(declarations, "_WRITTEN_SPAN", 1000)
    routes = [
        WRITTEN.format(
            s=f"198.18.0.{k % 250 + 1}",
            g=f"239.1.{k // 250}.{k % 250 + 1}",
            i="a",
            o='"b", "c"' if k % 2 else '"b"',
            table="table = 9\n" if k % 7 == 0 and k > 200 else "",
            blank="\n" * (k % 3),
        )
        for k in range(300)
    ]
    text = 'log_level = "info"\n\n' + "".join(routes)
    read = declarations._read_columns(text, text.index("[[route]]"), "f.conf")
    assert read is not None
    full, problems = full_read(text)
    assert problems == []
    assert read[0].routes == full.routes and read[0].positions == full.positions
    assert len({id(p) for p in read[0].routes.values()}) == 2
    assert declarations.parse_file(text, "f.conf").blocks == read[1].blocks()


def test_routes_read_at_once_share_their_sources_and_groups_strings() -> None:
    """Equal addresses in one span of blocks are one string among the keys (memory only,
    as address_sharing does), and each distinct address is checked once, as each row."""
    routes = [
        WRITTEN.format(s=f"198.18.0.{k % 3 + 1}", g=f"239.1.0.{k % 5 + 1}", i="a", o='"b"',
                       table="", blank="")
        for k in range(15)
    ]  # fmt: skip
    read = declarations._read_columns("".join(routes), 0, "f.conf")
    assert read is not None
    keys = list(read[0].routes)
    assert len(keys) == 15
    assert len({id(k[1]) for k in keys}) == 3 and len({id(k[2]) for k in keys}) == 5
    wrong = [*routes[:14], routes[14].replace("198.18.0.3", "127.0.0.1")]
    assert declarations._read_columns("".join(wrong), 0, "f.conf") is None


KEYS = [(4, f"198.18.0.{k}", "239.1.1.1", 253) for k in range(1, 6)]


@settings(max_examples=200, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(KEYS), st.sampled_from(("config", "learned"))),
    keys=st.lists(st.sampled_from(KEYS)),
    origin=st.sampled_from(("config", "learned")),
)
def test_origins_set_at_one_go_are_those_set_one_at_a_time_and_roll_back(
    before: dict[tuple[int, str, str, int], str],
    keys: list[tuple[int, str, str, int]],
    origin: str,
) -> None:
    one, many = Router(), Router()
    for router in (one, many):
        router.origins.update(before)
        router.begin()
    for key in keys:
        one.set_origin(key, origin)
    many.set_origins(keys, origin)
    assert many.origins == one.origins
    assert many.changed() == one.changed()  # nothing changed: nothing to commit
    many.rollback()
    assert many.origins == before


def test_a_start_whose_takeover_record_fails_leaves_no_config_origin() -> None:
    """The routes' origins, set at one go after the kernel took them, go with the rest when
    the journal record of an api route taken over fails."""
    state = FakeState()
    ctl = Controller(FakeKernel(), state)
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        ctl.link_up(name, ifindex)
    ctl.change([AddRoute(KEYS[0], Ports("a", ("c",)))])
    text = "".join(
        WRITTEN.format(s=key[1], g=key[2], i="a", o='"b"', table="", blank="") for key in KEYS
    )
    new = declarations.parse_file(text, "f.conf").found
    state.fail = True
    with pytest.raises(StateError):
        ctl.apply_declared(new, diff(ctl.declared, new))
    assert ctl.router.origins == {}
    assert ctl.router.routes == {KEYS[0]: Ports("a", ("c",))}
    state.fail = False
    ctl.apply_declared(new, diff(ctl.declared, new))
    assert ctl.router.origins == dict.fromkeys(KEYS, "config")
