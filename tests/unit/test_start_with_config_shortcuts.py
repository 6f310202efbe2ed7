"""Tests for the shortcuts of a start with config routes (issue 15, branch cfg6), each held
equal to the general path over random inputs: the declared routes on one value shared once
(Controller._declared_routes), the one run found in C (controller._one_run), the blocks of
a file read at once kept as columns until a reload looks them up (declarations._Columns),
and the VIF check that skips its pass when every interface fits (declarations._check_vifs)."""

from __future__ import annotations

from itertools import chain
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd import controller as controller_module
from mfcd import declarations, smcroute_import
from mfcd.controller import Controller, _route_runs
from mfcd.declarations import Declarations, diff
from mfcd.model import RUN_MIN, AddRoute, Change, Ports, Route, SetThreshold
from tests.unit.test_declarations import controller, parse
from tests.unit.test_reload_slices import everything
from tests.unit.test_start_with_config import WRITTEN

ANY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PORTS = [Ports("a", ("b",)), Ports("a", ("b", "c")), Ports("b", ("a",))]


def key(i: int, family: int = 4, table: int = 253) -> tuple[int, str, str, int]:
    return (family, f"198.18.{i // 250}.{i % 250 + 1}", f"239.1.{i // 250}.{i % 250 + 1}", table)


@st.composite
def stretches(draw: st.DrawFn) -> tuple[list[Change], int, int]:
    """AddRoutes in stretches on one Ports (sometimes one equal but not the same object),
    family and table, with other changes before and after the part looked at."""
    changes: list[Change] = [SetThreshold("a", 2)] * draw(st.integers(0, 2))
    start, i = len(changes), 0
    # Often one value, one family or one table for every stretch: a single run or nearly.
    one_ports, one_family, one_table = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    ports, family, table = PORTS[0], 4, 253
    for _ in range(draw(st.integers(1, 4))):
        if not one_ports:
            ports = draw(st.sampled_from(PORTS))
            if draw(st.booleans()):
                ports = Ports(ports.iif, tuple(ports.oifs))  # equal, not the same object
        if not one_family:
            family = draw(st.sampled_from((4, 6)))
        if not one_table:
            table = draw(st.sampled_from((253, 7)))
        for _ in range(draw(st.sampled_from((1, RUN_MIN - 1, RUN_MIN, 40)))):
            changes.append(AddRoute(key(i, family, table), ports))
            i += 1
    end = len(changes)
    changes += [SetThreshold("b", 3)] * draw(st.integers(0, 2))
    return changes, start, end


@ANY
@given(case=stretches())
def test_one_run_found_in_c_is_the_run_groupby_finds(
    case: tuple[list[Change], int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    changes, start, end = case
    got = _route_runs(changes, start, end)
    with monkeypatch.context() as m:
        m.setattr(controller_module, "_one_run", lambda *args: None)
        assert got == _route_runs(changes, start, end)
    for run in got:
        adds = changes[run.start : run.start + len(run.keys)]
        assert all(isinstance(c, AddRoute) and c.ports is run.ports for c in adds)


def route_text(i: int, ports: Ports) -> str:
    oifs = ", ".join(f'"{n}"' for n in ports.oifs)
    _, source, group, _ = key(i)
    head = f'[[route]]\nsource = "{source}"\ngroup = "{group}"\n'
    return head + f'iif = "{ports.iif}"\noifs = [{oifs}]\n'


def general_routes(ctl: Controller, new: Declarations, keys: list[Any]) -> tuple[list[Any], ...]:
    """What _declared_routes gives, route by route (its former loop, the wildcard path's)."""
    journal, changes = [], []
    router = ctl.router
    for k in keys:
        changes.append(AddRoute(k, router.share(new.routes[k])))
        if k in router.routes and k not in router.origins:
            journal.append(k)
    return changes, journal


@ANY
@given(
    st.lists(st.sampled_from(PORTS), min_size=0, max_size=40),
    st.sets(st.integers(0, 45), max_size=6),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_declared_routes_on_one_value_are_those_route_by_route(
    chosen: list[Ports], api: set[int], part: bool, rng: Any
) -> None:
    """The changes and the api routes taken over, the same whether the routes share one
    declared value or not, for all routes in order (a start) or some in another order."""
    new, problems = parse("".join(route_text(i, p) for i, p in enumerate(chosen)))
    assert problems == []
    ctl = controller()
    for i in sorted(api):  # (on a/b first: the router's Ports, not the one the file declares)
        ctl.change([AddRoute.of(Route(4, *key(i)[1:3], "a", ("b",) if i % 2 else ("c",), 253))])
    keys = list(new.routes)
    if part:
        keys = rng.sample(keys, len(keys) // 2)
    journal: list[Change] = []
    got = ctl._declared_routes(new, keys, journal)
    want, taken = general_routes(ctl, new, keys)
    assert got == want and [c[0] for c in journal] == taken
    # (the router's own values)
    assert all(isinstance(c, AddRoute) and c.ports is ctl.router.share(c.ports) for c in got)


def test_a_start_on_one_combination_applies_the_routes_route_by_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole start: model, origins, kernel and declarations as without the shortcuts."""
    text = "".join(route_text(i, PORTS[1]) for i in range(300))

    def started() -> dict[str, Any]:
        new, problems = parse(text)
        assert problems == []
        ctl = controller()
        ctl.change([AddRoute.of(Route(4, *key(7)[1:3], "a", ("c",), 253))])  # taken over
        ctl.apply_declared(new, diff(Declarations(), new))
        return everything(ctl)

    got = started()
    with monkeypatch.context() as m:
        m.setattr(controller_module, "_one_run", lambda *args: None)
        m.setattr(controller_module, "countOf", lambda *args: -1)  # no shortcut matches
        assert started() == got


def test_blocks_kept_as_columns_are_built_once_when_a_reload_looks_them_up() -> None:
    text = 'log_level = "info"\n\n' + "".join(route_text(i, PORTS[i % 2]) for i in range(50))
    part = declarations.parse_file(text, "f.conf")
    assert isinstance(part.stored, declarations._Columns)  # nothing built at start
    assert part.stored.built is None
    blocks = part.blocks
    assert blocks == declarations._blocks_of(text, part.found)
    assert part.blocks is blocks and part.stored.texts == []  # built once, columns freed
    edited = text.replace('"239.1.0.10"\niif = "b"', '"239.1.0.10"\niif = "a"')
    again = declarations.parse_file(edited, "f.conf", part)
    full, problems = parse(edited)
    assert problems == [] and again.found.routes == full.routes
    assert again.found.positions == full.positions


@st.composite
def vif_texts(draw: st.DrawFn) -> str:
    """Routes over up to 40 interfaces in a few tables, some combinations repeated."""
    names = [f"o{k}" for k in range(draw(st.integers(2, 40)))]
    out = []
    for i in range(draw(st.integers(1, 60))):
        oifs = draw(st.lists(st.sampled_from(names), min_size=1, max_size=8, unique=True))
        table = draw(st.sampled_from(("", "table = 7\n")))
        ports = Ports("a", tuple(oifs))
        out.append(route_text(i, ports) + table)
    return "".join(out)


@ANY
@given(text=vif_texts(), few=st.sampled_from((0, 1, 1000)))
def test_the_vif_check_reports_as_its_pass_over_the_routes(
    text: str, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    found, problems = parse(text)
    with monkeypatch.context() as m:
        m.setattr(declarations, "_FEW_PORTS", -1)  # always the pass over the routes
        assert parse(text) == (found, problems)
    monkeypatch.setattr(declarations, "_FEW_PORTS", few)
    assert parse(text) == (found, problems)


# The lines between two blocks (the same count after each), and after the last.
BETWEEN = ("", "\n", "\n\n", "# a note\n", "\n# f:{i}: mroute from a group 239.1.1.1 to b\n")
AFTER = ("", "\n", "\n\n\n", "\n# the end\n", "# the end")
ODD = ("blank", "table", "iif", "source", "bracket", "end", "quote", "key", "gap", "header",
       "control", "cr", "after")  # fmt: skip


@st.composite
def alike_files(draw: st.DrawFn) -> tuple[str, int]:
    """Blocks as import-smcroute writes them, alike but for their addresses, with as many
    blank or comment lines after each but the last (import-smcroute's note of the line it
    converted, the blank line people leave), any after the last, in LF or CRLF; sometimes
    one block, the lines between, or the end, not quite so."""
    count = draw(st.integers(1, 30))
    between = draw(st.sampled_from(BETWEEN))
    iif, oifs = draw(st.sampled_from((("a", '"b"'), ("a", '"b", "c"'), ("b", '"a"'))))
    out = []
    twice = draw(st.integers(1, 40))  # (a route declared twice when there are as many)
    for i in range(count):
        _, source, group, _ = key(0 if i == twice else i)
        out.append(WRITTEN.format(s=source, g=group, i=iif, o=oifs, table="", blank=""))
    gaps = [between.format(i=i) for i in range(count - 1)] + [draw(st.sampled_from(AFTER))]
    odd = draw(st.sampled_from((None, None, None, *ODD)))
    k = draw(st.integers(0, count - 1))
    if odd == "blank":
        out[k] += "\n"
    elif odd == "table":
        out[k] = out[k].replace("]\n", "]\ntable = 7\n", 1)
    elif odd == "iif":
        out[k] = out[k].replace(f'iif = "{iif}"', 'iif = "c"')
    elif odd == "source":
        out[k] = out[k].replace("198.18.", "10.300.", 1)
    elif odd == "bracket":
        out = [b.replace("oifs = [", 'oifs = ["x]y", ') for b in out]
    elif odd == "key":  # a line of another key, its value where the group's would be
        out[k] = out[k].replace('group = "', 'grouq = "', 1)
    elif odd == "quote":
        out[k] = out[k].replace('source = "', 'source = "1"', 1)
    elif odd == "gap":  # a line between of another kind: a key (TOML, but not the form)
        gaps[k] = gaps[k].replace("\n", "x = 1\n", 1) if "\n" in gaps[k] else "x = 1\n"
    elif odd == "header":  # a header in a comment between: still a comment
        gaps[k] = "# [[route]]\n" + gaps[k]
    elif odd == "control":  # a control character in a comment: not TOML
        gaps[k] = "# \x01\n" + gaps[k]
    elif odd == "after":  # after the last block, a line that is not blank or a comment
        gaps[-1] += "\nx = 2\n"
    head, body = 'log_level = "info"\n\n', "".join(chain.from_iterable(zip(out, gaps, strict=True)))
    if odd == "end":
        body = body.rstrip("\n")
    if odd == "cr":  # a lone CR at the end of a line: not TOML
        lines = body.split("\n")
        lines[k % len(lines)] += "\r"
        body = "\n".join(lines)
    if draw(st.booleans()):
        head, body = head.replace("\n", "\r\n"), body.replace("\n", "\r\n")
    return head + body, len(head)


@ANY
@given(case=alike_files())
def test_a_file_of_alike_blocks_reads_as_by_spans(case: tuple[str, int]) -> None:
    """_read_alike takes only what the TOML reader reads without a problem, and reads it
    the same (routes, lines, the blocks kept for a reload), and as _read_spans (the findall
    per span) where that takes it too; and the file reads as the TOML reader reads it."""
    text, start = case
    alike = declarations._read_alike(text, start, "f.conf")
    spans = declarations._read_spans(text, start, "f.conf")
    full, problems = parse(text)
    if alike is not None:
        assert problems == [] and not full.templates and not full.wild
        assert alike[0].routes == full.routes
        assert alike[0].positions == full.positions
        assert alike[1].blocks() == declarations._blocks_of(text, full)
    if alike is not None and spans is not None:
        assert alike[0].routes == spans[0].routes
        assert alike[0].positions == spans[0].positions
        assert alike[1].blocks() == spans[1].blocks()
    part = declarations.parse_file(text, "f.conf")
    assert (part.problems, part.found.routes, part.found.positions) == (
        problems,
        full.routes,
        full.positions,
    )
    if not problems and (spans is not None or alike is not None):
        assert part.blocks == declarations._blocks_of(text, full)


EVERYDAY = {
    "a blank line after each but the last": ("\n", ""),
    "a blank line after each but the last, no end of line": ("\n", "!"),
    "blank lines at the end": ("\n", "\n\n\n"),
    "a comment before each": ("\n# route {i}\n", "\n"),
    "a comment after the last": ("\n", "\n# the end\n"),
    "CRLF": ("\n", "\r"),
}


@pytest.mark.parametrize("layout", EVERYDAY)
def test_everyday_layouts_are_read_alike(layout: str) -> None:
    """The layouts people and generators write take the read at once (they fell back to
    the read by blocks, correctly but slower) and read as the TOML reader."""
    between, after = EVERYDAY[layout]
    blocks = [route_text(i, PORTS[1]) for i in range(50)]
    gaps = [between.format(i=i) for i in range(49)]
    text = "".join(chain.from_iterable(zip(blocks, gaps, strict=False))) + blocks[-1]
    if after == "!":
        text = text.rstrip("\n")
    elif after == "\r":
        text = text.replace("\n", "\r\n")
    else:
        text += after
    assert_read_alike(text, 0)


def test_import_smcroutes_output_is_read_alike(tmp_path: Any) -> None:
    """mfcctl import-smcroute's file (a comment of the line converted before each block)."""
    conf = tmp_path / "smcroute.conf"
    mroutes = (f"mroute from a source {key(i)[1]} group {key(i)[2]} to b c" for i in range(50))
    conf.write_text("\n".join(mroutes) + "\n")
    converted = smcroute_import.convert_file(str(conf))
    assert converted.problems == []
    assert_read_alike(converted.text, converted.text.index("[[route]]"))


def assert_read_alike(text: str, start: int) -> None:
    read = declarations._read_alike(text, start, "f.conf")
    assert read is not None
    full, problems = parse(text)
    assert problems == [] and len(full.routes) == 50
    assert (read[0].routes, read[0].positions) == (full.routes, full.positions)
    assert read[1].blocks() == declarations._blocks_of(text, full)
    part = declarations.parse_file(text, "f.conf")
    assert (part.found.routes, part.found.positions) == (full.routes, full.positions)
    assert part.blocks == declarations._blocks_of(text, full)
    # A reload after one route's change reuses the blocks read at once.
    edited = text.replace(f'"{key(20)[2]}"', '"239.7.7.7"')
    assert edited != text
    again = declarations.parse_file(edited, "f.conf", part)
    full, problems = parse(edited)
    assert problems == [] and (again.found.routes, again.found.positions) == (
        full.routes,
        full.positions,
    )


def test_the_benchs_file_is_read_alike() -> None:
    """import-smcroute's form (a blank line after each block) and the bench's (none)."""
    for blank in ("", "\n"):
        text = "".join(
            WRITTEN.format(s=key(i)[1], g=key(i)[2], i="a", o='"b", "c"', table="", blank=blank)
            for i in range(600)
        )
        read = declarations._read_alike(text, 0, "f.conf")
        assert read is not None and len(read[0].routes) == 600
        assert read[1].blocks() == declarations._blocks_of(text, parse(text)[0])
