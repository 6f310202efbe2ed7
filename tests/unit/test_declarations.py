"""Tests for mfcd.declarations (parse, check, diff), config.load_all (drop-ins), the controller's
apply of declared intents, and mfcd.smcroute_import."""

from __future__ import annotations

import ipaddress
import json
import textwrap
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import config, declarations, rt_tables, smcroute_import, validate
from mfcd.commands import Commands, Peer
from mfcd.controller import Controller
from mfcd.daemon import Daemon, _log_left_out
from mfcd.declarations import Declarations, Problems, diff
from mfcd.errors import DeclaredInConfig, VifLimit
from mfcd.model import AddRoute, DelRoute, Ports, SetThreshold
from mfcd.wildcards import expand, matches
from tests.unit.conftest import FakeKernel, FakeState

DATA = Path(__file__).parent.parent / "data" / "smcroute"
KEY = (4, "198.18.0.2", "239.1.1.1", 253)
OTHER = (4, "198.18.0.2", "239.9.9.9", 253)
PEER = Peer(pid=1, uid=0, gid=0)


def parse(text: str, path: str = "f.conf") -> tuple[Declarations, list[str]]:
    found = Declarations()
    problems: list[str] = []
    declarations.parse_text(textwrap.dedent(text), path, found, problems)
    declarations.check(found, problems)
    return found, problems


def route(group: str = "239.1.1.1", oifs: str = '"b"', source: str = "198.18.0.2") -> str:
    return f'[[route]]\nsource = "{source}"\ngroup = "{group}"\niif = "a"\noifs = [{oifs}]\n'


def test_an_exact_route_a_template_a_join_and_an_interface() -> None:
    found, problems = parse(
        """
        log_level = "debug"

        [[route]]
        source = "198.18.0.2"
        group = "239.1.1.1"
        iif = "a"
        oifs = ["b", "vlan*"]

        [[route]]
        group = "239.2.0.0/24"
        iif = "eth+"
        oifs = ["b"]
        table = 100

        [[join]]
        interface = "a"
        group = "239.1.1.1"
        source = "198.18.0.2"

        [[interface]]
        name = "b"
        threshold = 3
        mrdisc = true
        """
    )
    assert problems == []
    assert found.routes == {KEY: Ports("a", ("b", "vlan*"))}
    assert found.where(KEY) == "f.conf:4"
    assert found.wild == {KEY}
    (template,) = found.templates
    assert (template.source, template.group, template.iif, template.table) == (
        "*",
        "239.2.0.0/24",
        "eth+",
        100,
    )
    assert template.where == "f.conf:10"
    (join,) = found.joins
    assert (join.interface, join.group, join.source, join.where) == (
        "a",
        "239.1.1.1",
        "198.18.0.2",
        "f.conf:16",
    )
    assert found.interfaces["b"].threshold == 3 and found.interfaces["b"].mrdisc is True
    assert found.thresholds() == {"b": 3}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[route]]\ngroup = 1\n", "f.conf:1: route: missing key 'iif'"),
        (route() + "colour = 2\n", "f.conf:6: route: unknown key 'colour'"),
        (route(group="10.0.0.1"), "f.conf:3: route: group 10.0.0.1 is not a multicast"),
        (route(oifs='"a"'), "f.conf:5: route: iif a is also listed in oifs"),
        (route(oifs='"b", "b"'), "f.conf:5: route: oifs names b more than once"),
        (route(oifs='"x y"'), "f.conf:5: route: oifs 'x y' is not a valid interface name"),
        (route(oifs='"*"'), "f.conf:5: route: oifs: a wildcard needs the start of a name"),
        (route(group="239.1.1.0/24", source="198.18.0.1/24"), "f.conf:2: route: source"),
        (route(group="239.1.1.0/24", source="2001:db8::/64"), "different families"),
        (route(group="ff3e::1", source="198.18.0.2"), "different address families"),
        (
            '[[route]]\nsource = "198.18.0.2"\ngroup = "239.1.1.1"\niif = "a*"\noifs = ["b"]\n',
            "f.conf:4: route: iif a* is a wildcard",
        ),
        (route() + "table = 0\n", "f.conf:6: route: table 0 is out of range"),
        ("route = 3\n", "f.conf:1: route must be a list of [[route]] tables"),
        ('[[join]]\ninterface = "a"\ngroup = "10.1.1.1"\n', "f.conf:3: join: group 10.1.1.1"),
        (
            '[[join]]\ninterface = "a"\ngroup = "239.1.1.1"\nsource = "ff3e::1"\n',
            "f.conf:4: join: source ff3e::1 must be a unicast IPv4 address",
        ),
        ('[[interface]]\nname = "a"\nmrdisc = "yes"\n', "f.conf:3: interface: mrdisc must be"),
        (
            '[[interface]]\nname = "a"\n[[interface]]\nname = "a"\n',
            "f.conf:4: interface: interface a is declared twice (also at f.conf:1)",
        ),
        ("[[route]\n", "f.conf:1: not valid TOML"),
    ],
)
def test_each_problem_is_named_with_its_file_and_line(text: str, expected: str) -> None:
    _, problems = parse(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected) or expected in problems[0], problems[0]


def test_every_problem_is_collected() -> None:
    _, problems = parse(route(group="10.0.0.1") + route(group="10.0.0.2") + route() + route())
    assert [p.split(":")[1] for p in problems] == ["3", "8", "18"]


def test_duplicates_and_ambiguous_templates() -> None:
    text = (
        route(group="239.1.0.0/24", source="198.18.0.0/16")
        + route(group="239.1.0.0/16", source="198.18.1.0/24")  # crosses the first
        + route(group="239.1.0.0/25", source="198.18.0.0/24")  # inside the first: fine
        + route(group="239.1.0.0/24", source="198.18.0.0/16")  # the first again
    )
    _, problems = parse(text)
    assert any("f.conf:6:" in p and "overlaps" in p for p in problems), problems
    assert any("f.conf:16:" in p and "declared twice" in p for p in problems), problems
    assert len(problems) == 3  # the duplicate also crosses the second


def test_vifs_are_counted_per_family_and_table() -> None:
    routes = "".join(route(group=f"239.1.1.{k}", oifs=f'"o{k}"') for k in range(31))
    _, problems = parse(routes)
    assert problems == []  # a and o0..o30: 32 interfaces
    _, problems = parse(routes + route(group="239.1.2.1", oifs='"o99"'))
    assert len(problems) == 1 and "IPv4 table 253 would need more than 32 VIFs" in problems[0]
    other = route(group="239.1.2.1", oifs='"o99"') + "table = 7\n"
    assert parse(routes + other)[1] == []  # another table has its own 32


def test_vifs_over_the_limit_are_reported_at_the_first_route_of_shared_interfaces() -> None:
    """The whole-file read shares one Ports per combination of interfaces: the route
    reported is the first that names the 33rd interface, not a later one sharing it."""
    routes = "".join(route(group=f"239.1.1.{k}", oifs=f'"o{k}"') for k in range(31))
    over = "".join(route(group=f"239.1.2.{k}", oifs='"o99"') for k in range(1, 4))
    text = routes + route(group="239.1.3.1", oifs='"o0"') + over
    part = declarations.parse_file(text, "f.conf")
    assert part.blocks is not None  # (read at once, the Ports shared)
    problems: list[str] = []
    declarations.check(part.found, problems)
    assert len(problems) == 1 and problems[0].startswith("f.conf:161: route: IPv4 table 253")
    assert problems == parse(text)[1]


def test_wildcards_match_and_expand() -> None:
    assert matches("eth+", "eth10") and matches("vlan*", "vlan") and not matches("eth+", "et0")
    assert matches("eth0", "eth0") and not matches("eth0", "eth01")
    links = ["a", "vlan2", "vlan1", "b", "c"]
    assert expand(Ports("a", ("c", "vlan*")), links) == Ports("a", ("c", "vlan1", "vlan2"))
    assert expand(Ports("vlan1", ("vlan*",)), links) == Ports("vlan1", ("vlan2",))
    plain = Ports("a", ("b",))
    assert expand(plain, links) is plain


def test_diff_finds_added_removed_changed_unchanged() -> None:
    old, _ = parse(route("239.1.1.1") + route("239.1.1.2") + route("239.1.1.3"))
    new, _ = parse(route("239.1.1.1") + route("239.1.1.3", oifs='"c"') + route("239.1.1.4"))
    change = diff(old, new)
    assert [k[2] for k in change.added] == ["239.1.1.4"]
    assert [k[2] for k in change.removed] == ["239.1.1.2"]
    assert [k[2] for k in change.changed] == ["239.1.1.3"]
    assert change.unchanged == 1
    same = diff(new, new)
    assert (same.added, same.removed, same.changed, same.unchanged) == ([], [], [], 3)


def test_drop_ins_are_read_sorted_and_hold_only_declarations(tmp_path: Path) -> None:
    main = tmp_path / "mfcd.conf"
    main.write_text('log_level = "debug"\n' + route("239.1.1.1"))
    (tmp_path / "mfcd.d").mkdir()
    (tmp_path / "mfcd.d" / "20.conf").write_text(route("239.1.1.3"))
    (tmp_path / "mfcd.d" / "10.conf").write_text(route("239.1.1.2"))
    (tmp_path / "mfcd.d" / "x.txt").write_text("not toml at all [")
    cfg, found, read = config.load_all(str(main))
    assert cfg.log_level == "debug"
    assert read == found.files
    assert found.files == [
        str(main),
        str(tmp_path / "mfcd.d/10.conf"),
        str(tmp_path / "mfcd.d/20.conf"),
    ]
    assert [k[2] for k in found.routes] == ["239.1.1.1", "239.1.1.2", "239.1.1.3"]
    (tmp_path / "mfcd.d" / "30.conf").write_text("ipv6 = false\n" + route("239.1.1.1"))
    with pytest.raises(Problems) as e:
        config.load_all(str(main))
    assert e.value.problems == [
        f"{tmp_path}/mfcd.d/30.conf:1: 'ipv6': a drop-in file declares only [[route]],"
        f" [[join]] and [[interface]]; settings belong in {main}",
        f"{tmp_path}/mfcd.d/30.conf:2: route: the route 198.18.0.2 -> 239.1.1.1 is declared"
        f" twice (also at {main}:2)",
    ]
    assert str(e.value).endswith("(and 1 more: mfcd --check-config lists them)")


def test_drop_ins_leave_out_hidden_names_and_editor_locks(tmp_path: Path) -> None:
    main = tmp_path / "mfcd.conf"
    main.write_text(route("239.1.1.1"))
    (tmp_path / "mfcd.d").mkdir()
    (tmp_path / "mfcd.d" / "10.conf").write_text(route("239.1.1.2"))
    (tmp_path / "mfcd.d" / ".#10.conf").symlink_to("root@host.1234:1700000000")  # Emacs's lock
    (tmp_path / "mfcd.d" / ".hidden.conf").write_text(route("239.1.1.3"))
    for backup in ("10.conf~", "10.conf.swp", ".10.conf.swp", "10.conf.dpkg-old", "10.conf.rpmnew"):
        (tmp_path / "mfcd.d" / backup).write_text("not toml at all [")
    assert config.drop_ins(str(main)) == [str(tmp_path / "mfcd.d/10.conf")]
    found = config.load_all(str(main))[1]
    assert [k[2] for k in found.routes] == ["239.1.1.1", "239.1.1.2"]


def test_load_all_lists_every_file_read_those_that_declare_nothing_too(tmp_path: Path) -> None:
    """Declarations.files names the files of declarations (FILE:LINE); what was read is
    `files`: the main file of settings only and an empty drop-in too."""
    main = tmp_path / "mfcd.conf"
    main.write_text('log_level = "debug"\n')
    assert config.load_all(str(main)).files == [str(main)]
    (tmp_path / "mfcd.d").mkdir()
    (tmp_path / "mfcd.d" / "10.conf").write_text(route("239.1.1.2"))
    (tmp_path / "mfcd.d" / "20.conf").write_text("")
    cache = config.ReadCache()
    for _ in range(2):  # (the second read from the cache)
        read = config.load_all(str(main), cache)
        assert read.declared.files == [str(tmp_path / "mfcd.d/10.conf")]
        assert read.files == [str(main), *(str(tmp_path / f"mfcd.d/{n}.conf") for n in (10, 20))]


def test_a_reload_parses_only_the_files_that_changed(tmp_path: Path) -> None:
    main = tmp_path / "mfcd.conf"
    main.write_text(route("239.1.1.1"))
    (tmp_path / "mfcd.d").mkdir()
    drop_in = tmp_path / "mfcd.d" / "10.conf"
    drop_in.write_text(route("239.1.1.2"))
    cache = config.ReadCache()
    first = config.load_all(str(main), cache).declared
    again = config.load_all(str(main), cache).declared
    assert again is first  # nothing parsed or checked again
    kept = cache.parts[str(main)]
    drop_in.write_text(route("239.1.1.3"))
    changed = config.load_all(str(main), cache).declared
    assert cache.parts[str(main)] is kept
    assert [k[2] for k in changed.routes] == ["239.1.1.1", "239.1.1.3"]
    assert changed.where((4, "198.18.0.2", "239.1.1.3", 253)) == f"{drop_in}:1"
    drop_in.write_text(route("239.1.1.1"))
    with pytest.raises(Problems, match="declared twice"):
        config.load_all(str(main), cache)


def test_a_reload_reads_again_a_file_naming_a_table_renumbered_in_rt_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache kept the table numbers of a file whose text had not changed: after
    "100 studio" became "101 studio", a reload moved nothing until the file was touched."""
    etc = tmp_path / "iproute2"
    etc.mkdir()
    (etc / "rt_tables").write_text("100 studio\n")
    monkeypatch.setattr(validate, "_table_names", rt_tables.Names(str(etc), str(tmp_path / "usr")))
    main = tmp_path / "mfcd.conf"
    main.write_text(route("239.1.1.1") + 'table = "studio"\n')
    (tmp_path / "mfcd.d").mkdir()
    (tmp_path / "mfcd.d" / "10.conf").write_text(route("239.1.1.2"))
    cache = config.ReadCache()
    first = config.load_all(str(main), cache).declared
    assert [k[3] for k in first.routes] == [100, 253]
    assert config.load_all(str(main), cache).declared is first  # (unchanged: from the cache)
    (etc / "rt_tables").write_text("101 studio\n")
    moved = config.load_all(str(main), cache).declared
    assert [k[3] for k in moved.routes] == [101, 253]
    assert config.load_all(str(main), cache).declared is moved


def test_routes_and_templates_of_a_family_turned_off_are_problems(tmp_path: Path) -> None:
    """`ipv6 = false` with IPv6 routes: --check-config called it valid, and the start then
    applied none of the files' intents (IPv4 ones too). Joins need no multicast routing."""
    main = tmp_path / "mfcd.conf"
    (tmp_path / "mfcd.d").mkdir()
    drop_in = tmp_path / "mfcd.d" / "10.conf"
    drop_in.write_text(
        route("239.1.1.1")
        + route("ff3e::1", source="2001:db8::2")
        + route("ff3e::2", source="2001:db8::2")
        + '[[route]]\ngroup = "ff3e::10"\niif = "a"\noifs = ["b"]\n'
        + '[[join]]\ninterface = "a"\ngroup = "ff3e::20"\n'
    )
    cache = config.ReadCache()
    main.write_text("ipv6 = true\n")
    assert len(config.load_all(str(main), cache)[1].routes) == 3
    main.write_text("ipv6 = false\n")  # (the drop-in's declarations come from the cache)
    with pytest.raises(Problems) as e:
        config.load_all(str(main), cache)
    off = f"IPv6 is off (ipv6 = false in {main})"
    assert e.value.problems == [
        f"{drop_in}:6: route: {off}: this IPv6 route cannot be installed (and 1 more);"
        " turn the family on or remove them",
        f"{drop_in}:16: template: {off}: this IPv6 template cannot be installed;"
        " turn the family on or remove them",
    ]
    assert (e.value.file, e.value.line) == (str(drop_in), 6)
    main.write_text("ipv4 = false\n")
    with pytest.raises(Problems, match=r"10.conf:1: route: IPv4 is off \(ipv4 = false in "):
        config.load_all(str(main), cache)


def test_a_setting_error_names_its_line(tmp_path: Path) -> None:
    main = tmp_path / "mfcd.conf"
    main.write_text('ipv4 = true\nlog_level = "loud"\n')
    with pytest.raises(Problems) as e:
        config.load_all(str(main))
    assert e.value.problems[0].startswith(f"{main}:2: log_level must be one of")


# --- the controller applies declared intents --------------------------------------------------


def controller() -> Controller:
    ctl = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("a", "b", "c", "vlan1"), 1):
        ctl.link_up(name, ifindex)
    return ctl


def apply(ctl: Controller, text: str) -> None:
    new, problems = parse(text)
    assert problems == []
    ctl.apply_declared(new, diff(ctl.declared, new))


def test_declared_routes_have_origin_config_and_stay_out_of_the_state_file() -> None:
    ctl = controller()
    state = ctl.state
    assert isinstance(state, FakeState) and isinstance(ctl.kernel, FakeKernel)
    apply(ctl, route() + '[[interface]]\nname = "b"\nthreshold = 4\n')
    assert ctl.router.origin(KEY) == "config"
    assert ctl.kernel.mfcs[KEY].ttls == {1: 4}
    assert state.records == []  # nothing journaled
    ctl.change([AddRoute(OTHER, Ports("a", ("c",)))])
    ctl.compact()
    routes, thresholds = state.snapshots[-1]
    assert [r.group for r in routes] == ["239.9.9.9"] and thresholds == {}
    # Removed from the files: removed from the kernel, the threshold back to the default.
    apply(ctl, "")
    assert KEY not in ctl.kernel.mfcs and KEY not in ctl.router.origins
    assert ctl.router.thresholds == {}


def test_a_declared_threshold_of_one_table_applies_there_and_goes_by_diff() -> None:
    ctl = controller()
    assert isinstance(ctl.kernel, FakeKernel)
    in_100 = (4, "198.18.0.2", "239.1.1.1", 100)
    ctl.change([AddRoute(in_100, Ports("a", ("b",)))])
    text = route() + '[[interface]]\nname = "b"\ntable = 100\nthreshold = 6\n'
    apply(ctl, text)
    assert (ctl.kernel.mfcs[KEY].ttls, ctl.kernel.mfcs[in_100].ttls) == ({1: 1}, {1: 6})
    declared_there = r"threshold of b in table 100 is declared in f\.conf:6"
    with pytest.raises(DeclaredInConfig, match=declared_there):
        ctl.change([SetThreshold("b", 9, 100)])
    ctl.change([SetThreshold("b", 9)])  # (the every-table one is not declared: the api's)
    assert (ctl.kernel.mfcs[KEY].ttls, ctl.kernel.mfcs[in_100].ttls) == ({1: 9}, {1: 6})
    ctl.compact()  # the declared setting stays out of the state file
    state = ctl.state
    assert isinstance(state, FakeState)
    assert ctl.snapshot_extra()["table_thresholds"] == []
    apply(ctl, route())  # removed from the files: the table uses the every-table 9
    assert ctl.kernel.mfcs[in_100].ttls == {1: 9}
    assert ctl.router.table_thresholds == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'name = "b"\ntable = 100\nmrdisc = true\nthreshold = 3\n',
            "mrdisc is per interface, not per table",
        ),
        ('name = "b"\ntable = 100\n', "with a table sets its threshold there"),
        ('name = "b"\ntable = 0\nthreshold = 3\n', "table 0 is out of range"),
        (
            'name = "b"\ntable = 100\nthreshold = 3\n\n[[interface]]\nname = "b"\n'
            "table = 100\nthreshold = 4\n",
            "interface b is declared twice for table 100 (also at f.conf:1)",
        ),
    ],
)
def test_a_bad_interface_of_one_table_is_a_problem(text: str, problem: str) -> None:
    _, problems = parse("[[interface]]\n" + text)
    assert len(problems) == 1 and problem in problems[0], problems


def test_drop_ins_merge_the_thresholds_of_one_table(tmp_path: Path) -> None:
    main = tmp_path / "mfcd.conf"
    main.write_text('[[interface]]\nname = "b"\ntable = 100\nthreshold = 4\n')
    (tmp_path / "mfcd.d").mkdir()
    (tmp_path / "mfcd.d" / "10.conf").write_text(
        '[[interface]]\nname = "b"\ntable = 200\nthreshold = 5\n'
    )
    assert config.load_all(str(main))[1].table_thresholds() == {("b", 100): 4, ("b", 200): 5}
    (tmp_path / "mfcd.d" / "20.conf").write_text(
        '[[interface]]\nname = "b"\ntable = 100\nthreshold = 6\n'
    )
    with pytest.raises(Problems) as e:
        config.load_all(str(main))
    assert e.value.problems == [
        f"{tmp_path}/mfcd.d/20.conf:1: interface: interface b is declared twice for table 100"
        f" (also at {main}:1)"
    ]


def test_an_interface_has_one_setting_of_every_table_and_one_per_table() -> None:
    declared, problems = parse(
        '[[interface]]\nname = "b"\nthreshold = 3\nmrdisc = true\n\n'
        '[[interface]]\nname = "b"\ntable = 100\nthreshold = 4\n\n'
        '[[interface]]\nname = "b"\ntable = 200\nthreshold = 5\n'
    )
    assert problems == []
    assert declared.thresholds() == {"b": 3}
    assert declared.table_thresholds() == {("b", 100): 4, ("b", 200): 5}


def test_a_runtime_change_to_a_declared_route_or_threshold_is_refused() -> None:
    ctl = controller()
    apply(ctl, route() + '[[interface]]\nname = "b"\nthreshold = 4\n')
    with pytest.raises(DeclaredInConfig, match=r"declared in f.conf:1; change it there"):
        ctl.change([DelRoute(KEY)])
    with pytest.raises(DeclaredInConfig) as e:
        ctl.change([AddRoute(OTHER, Ports("a", ("c",))), DelRoute(KEY)])
    assert e.value.op == 2
    with pytest.raises(DeclaredInConfig, match=r"threshold of b is declared in f\.conf:6"):
        ctl.change([SetThreshold("b", 9)])
    assert ctl.router.routes[KEY] == Ports("a", ("b",))


DECLARED = (
    "\n"
    + route()
    + '\n[[route]]\nsource = "*"\ngroup = "239.2.0.0/24"\niif = "a"\noifs = ["b"]\n'
    + '\n[[join]]\ninterface = "a"\ngroup = "239.5.0.1"\n'
    + '\n[[interface]]\nname = "b"\nthreshold = 4\n'
)


@pytest.mark.parametrize(
    ("cmd", "args", "line", "field"),
    [
        ("mfc.del", {"source": "198.18.0.2", "group": "239.1.1.1"}, 2, None),
        ("mfc.del", {"group": "239.2.0.0/24", "iif": "a"}, 8, None),
        ("leave", {"interface": "a", "group": "239.5.0.1"}, 14, None),
        ("vif.set", {"interface": "b", "threshold": 9}, 18, "threshold"),
    ],
)
def test_a_refusal_of_what_the_files_declare_has_their_file_and_line(
    cmd: str, args: dict[str, Any], line: int, field: str | None
) -> None:
    """As a config_error does: programs read where it is declared without parsing the text."""
    ctl = controller()
    apply(ctl, DECLARED)
    commands = Commands(ctl, (4, 6))
    msg = {"v": 1, "id": 1, "cmd": cmd, "args": args}
    error = json.loads(commands.handle(json.dumps(msg).encode(), PEER))["error"]
    assert error["code"] == "declared_in_config"
    assert (error["file"], error["line"], error.get("field")) == ("f.conf", line, field)
    assert f" in f.conf:{line}; change it there" in error["message"]


@pytest.mark.parametrize(
    "before", ["", "mfc add --source 198.18.0.2 --group 239.9.9.9 --iif a --oifs c\n"]
)
def test_a_refused_batch_line_is_named_in_a_batch_of_one_line_too(before: str) -> None:
    ctl = controller()
    apply(ctl, route())
    commands = Commands(ctl, (4, 6))
    text = before + "mfc add --source 198.18.0.2 --group 239.1.1.1 --iif a --oifs c\n"
    msg = {"v": 1, "id": 1, "cmd": "batch", "args": {"text": text}}
    error = json.loads(commands.handle(json.dumps(msg).encode(), PEER))["error"]
    assert error["code"] == "declared_in_config"
    assert error["line"] == text.count("\n") and "op" not in error
    # `line` is the batch's: no `file` of the config files to pair it with (the message
    # still says where the route is declared).
    assert "file" not in error and "declared in f.conf:1;" in error["message"]


def test_a_declared_route_takes_over_an_api_route_and_the_state_file_forgets_it() -> None:
    ctl = controller()
    state = ctl.state
    assert isinstance(state, FakeState)
    ctl.change([AddRoute(KEY, Ports("a", ("c",))), SetThreshold("b", 6)])
    apply(ctl, route() + '[[interface]]\nname = "b"\nthreshold = 4\n')
    assert ctl.router.routes[KEY] == Ports("a", ("b",)) and ctl.router.origin(KEY) == "config"
    assert ctl.router.thresholds == {"b": 4}
    assert [op[0] for op in state.records[-1]] == ["threshold", "del"]


def test_unchanged_routes_are_not_touched_and_wildcards_follow_links() -> None:
    ctl = controller()
    kernel = ctl.kernel
    assert isinstance(kernel, FakeKernel)
    apply(ctl, route() + route("239.1.1.2", oifs='"vlan*"'))
    wild = (4, "198.18.0.2", "239.1.1.2", 253)
    assert ctl.router.routes[wild] == Ports("a", ("vlan1",))
    before = len(kernel.applied)
    apply(ctl, route() + route("239.1.1.2", oifs='"vlan*"'))
    assert len(kernel.applied) == before  # nothing written again
    ctl.link_up("vlan2", 9)
    assert ctl.follow_wildcards() is not None
    assert ctl.router.routes[wild] == Ports("a", ("vlan1", "vlan2"))
    ctl.link_down("vlan1")
    ctl.follow_wildcards()
    assert ctl.router.routes[wild] == Ports("a", ("vlan2",))
    assert ctl.follow_wildcards() is None


# --- smcroute.conf import ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["man-example", "phyint", "mroute", "mgroup", "include", "forward"]
)
def test_each_corpus_file_converts_to_a_valid_config(name: str, tmp_path: Path) -> None:
    converted = smcroute_import.convert_file(str(DATA / f"{name}.conf"))
    assert converted.problems == []
    out = tmp_path / "mfcd.conf"
    out.write_text(converted.text)
    config.load_all(str(out))  # raises on any problem


def test_each_directive_is_converted() -> None:
    text = smcroute_import.convert_file(str(DATA / "man-example.conf")).text
    found, problems = parse(text)
    assert problems == []
    assert found.interfaces["eth0"].threshold == 11
    assert (4, "192.168.1.42", "225.1.2.3", 253) in found.routes
    assert {(t.source, t.group) for t in found.templates} == {
        ("*", "225.3.2.1"),  # canonical, as show gives it
        ("*", "225.0.0.0/24"),
    }
    assert {(j.interface, j.group, j.source) for j in found.joins} == {
        ("eth0", "225.1.2.3", None),
        ("virbr0", "225.1.2.4", "192.168.123.110"),
        ("eth0", "225.3.2.1", None),
        ("eth0", "225.0.0.0/24", None),
    }
    phy, _ = parse(smcroute_import.convert_file(str(DATA / "phyint.conf")).text)
    assert {n: (s.threshold, s.mrdisc) for n, s in phy.interfaces.items()} == {
        "eth2": (None, True),
        "eth3": (64, None),
        "eth4": (2, True),
        "eth5": (None, True),
    }
    mroute, _ = parse(smcroute_import.convert_file(str(DATA / "mroute.conf")).text)
    assert (6, "2001:db8::42", "ff3e::1234", 254) in mroute.routes
    assert mroute.routes[(4, "192.168.1.42", "225.1.2.6", 253)].oifs == ("eth1", "vlan+")
    assert ("192.168.1.43", "eth+") in {(t.source, t.iif) for t in mroute.templates}
    joins, _ = parse(smcroute_import.convert_file(str(DATA / "mgroup.conf")).text)
    assert len(joins.joins) == 9  # a /30 of sources is four joins
    included, _ = parse(smcroute_import.convert_file(str(DATA / "include.conf")).text)
    assert len(included.routes) == len(included.joins) == 1


def test_every_unconvertible_line_is_reported_with_file_and_line() -> None:
    converted = smcroute_import.convert_file(str(DATA / "unconvertible.conf"))
    lines = [int(p.split(":")[1]) for p in converted.problems]
    assert lines == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # 10: replaced by 11, from another iif
    found, problems = parse(converted.text)
    assert problems == [] and len(found.routes) == 1


# --- the plain TOML reader --------------------------------------------------------------------

PLAIN = [
    'a = 1\nb = -2\nc = 1.5 # x\nd = true\ne = []\nf = ["x",]\n'
    '[[route]]\noifs = [ "a" , "b" ]  # c\n\n[[route]] # z\nk="v"\r\n',
    (Path(__file__).parents[2] / "packaging" / "mfc_daemon.conf").read_text(),
    *(smcroute_import.convert_file(str(f)).text for f in sorted(DATA.glob("*.conf"))),
]
NOT_PLAIN = [
    'a = "x\\ty"',
    "a = 01",
    "a = 'x'",
    'a = [\n"b"]',
    "a = 1\na = 2",
    "[x]\n",
    "a.b = 1",
    "a = 1e3",
    'a = "x" y',
    "route = 1\n[[route]]\n",
    '"a" = 1',
]


@pytest.mark.parametrize("text", PLAIN)
def test_plain_toml_reads_as_tomllib_does(text: str) -> None:
    assert declarations.plain_toml(text) == tomllib.loads(text)


@pytest.mark.parametrize("text", NOT_PLAIN)
def test_anything_else_is_left_to_tomllib(text: str) -> None:
    assert declarations.plain_toml(text) is None


def test_a_file_read_again_by_blocks_reads_as_a_full_read() -> None:
    base = 'log_level = "info"\n\n' + "".join(route(f"239.1.1.{k}") + "\n" for k in range(1, 6))
    first = declarations.parse_file(base, "f.conf")
    assert first.blocks is not None and len(first.blocks) == 5
    variants = [
        base.replace(
            '"239.1.1.3"\niif = "a"\noifs = ["b"]', '"239.1.1.3"\niif = "a"\noifs = ["c"]'
        ),
        route("239.1.1.9") + "\n" + base,  # every line moves down
        base.replace(route("239.1.1.2"), ""),
        base + "# the end\n",
        base + route("239.1.1.1"),  # a duplicate: the full read reports it
        base + route("239.2.0.0/24"),  # a template: read in full
        base + route("10.0.0.1"),  # a problem: read in full
        base.replace('oifs = ["b"]', 'oifs = ["b", "vlan*"]', 1),
        # Edits in one stretch (declarations._parse_edit): first, last, two far apart, lines
        # added or taken in the middle, the settings, an edit making a duplicate.
        base.replace('"239.1.1.1"', '"239.1.1.7"'),
        base.replace('"239.1.1.5"\niif = "a"', '"239.1.1.5"\ntable = 7\niif = "a"'),
        base.replace('"239.1.1.1"', '"239.1.1.7"').replace('"239.1.1.5"', '"239.1.1.8"'),
        base.replace(route("239.1.1.3"), route("239.1.1.3") + "\n\n" + route("239.3.3.3")),
        base.replace(route("239.1.1.3") + "\n", ""),
        base.replace('log_level = "info"', 'log_level = "debug"\nclient_timeout = 5'),
        base.replace('"239.1.1.4"', '"239.1.1.2"'),
        base.replace('"239.1.1.4"', '"239.1.1.0/24"'),
        base.replace('"198.18.0.2"\ngroup = "239.1.1.2"', '"198.18.0.2"\ngroup = "239.1.1.2" # x'),
    ]
    for text in variants:
        again = declarations.parse_file(text, "f.conf", first)
        full = declarations.parse_file(text, "f.conf")
        reference, problems = Declarations(), list[str]()
        declarations.parse_text(text, "f.conf", reference, problems)
        assert again.found.routes == reference.routes
        assert again.found.positions == reference.positions
        assert again.found.routes == full.found.routes
        assert again.found.positions == full.found.positions
        assert again.found.wild == full.found.wild
        assert again.found.templates == full.found.templates
        assert again.problems == full.problems
        assert again.settings == full.settings


def test_check_config_counts_every_file_read_also_those_declaring_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mfcd.daemon import check_config  # noqa: PLC0415 (the daemon's entry point)

    main = tmp_path / "mfc_daemon.conf"
    main.write_text('log_level = "info"\n')
    assert check_config(str(main)) == 0
    assert (
        capsys.readouterr().out
        == f"{main}: valid (1 file, 0 routes, 0 templates, 0 joins, 0 interfaces)\n"
    )
    (tmp_path / "mfc_daemon.d").mkdir()
    (tmp_path / "mfc_daemon.d" / "10-a.conf").write_text(
        '[[route]]\nsource = "198.18.0.1"\ngroup = "239.1.1.1"\niif = "a"\noifs = ["b"]\n'
    )
    assert check_config(str(main)) == 0
    assert "valid (2 files, 1 route, 0 templates," in capsys.readouterr().out
    (tmp_path / "mfc_daemon.d" / "20-t.conf").write_text(
        '[[route]]\ngroup = "239.2.0.0/24"\niif = "a"\noifs = ["b"]\n'
        '[[interface]]\nname = "b"\nthreshold = 3\n'
    )
    assert check_config(str(main)) == 0
    assert "(3 files, 1 route, 1 template, 0 joins, 1 interface)" in capsys.readouterr().out


WRITTEN = '[[route]]\nsource = "{s}"\ngroup = "{g}"\niif = "{i}"\noifs = [{o}]\n{extra}'


@pytest.mark.parametrize(
    "block",
    [
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"b", "c"', extra="\n\n"),
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"b"', extra="table = 7\n"),
        WRITTEN.format(s="2001:db8::1", g="ff3e::1", i="a", o='"b"', extra=""),
        WRITTEN.format(s="2001:DB8::1", g="ff3e::0:1", i="a", o='"b"', extra=""),  # canonical
        WRITTEN.format(s="*", g="239.1.1.1", i="a", o='"b"', extra=""),  # a template
        WRITTEN.format(s="198.18.0.0/24", g="239.1.1.1", i="a", o='"b"', extra=""),
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"vlan*"', extra=""),
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"a"', extra=""),  # iif in oifs
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"b", "b"', extra=""),
        WRITTEN.format(s="10.0.0.300", g="239.1.1.1", i="a", o='"b"', extra=""),
        WRITTEN.format(s="198.18.0.2", g="224.0.0.1", i="a", o='"b"', extra=""),
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"b"', extra="table = 0\n"),
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"b"', extra=f"table = {10**11}\n"),
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="-a", o='"b"', extra=""),
        WRITTEN.format(s="198.18.0.2", g="239.1.1.1", i="a", o='"b"', extra="# done\n"),
    ],
)
def test_a_route_written_as_import_smcroute_writes_it_reads_as_the_full_reader(
    block: str,
) -> None:
    """The match of written blocks (declarations._WRITTEN), which start-up reads 100,000
    routes with, against the TOML reader's path, also for what the match does not take."""
    text = 'log_level = "info"\n\n' + block + route("239.9.9.9")
    part = declarations.parse_file(text, "f.conf")
    full, problems = Declarations(), list[str]()
    declarations.parse_text(text, "f.conf", full, problems)
    declarations.check(full, problems)
    assert part.found.routes == full.routes
    assert part.found.positions == full.positions
    assert part.found.wild == full.wild
    assert part.found.templates == full.templates
    assert part.problems == problems


def test_blocks_of_former_edits_do_not_pile_up() -> None:
    """A file rewritten whole again and again is read by blocks afresh once the blocks kept
    from former reads outnumber twice its routes (plus some)."""
    count = 2_000

    def text(oif: str) -> str:
        blocks = (route(f"239.1.{k // 250}.{k % 250 + 1}", f'"{oif}"') for k in range(count))
        return 'log_level = "info"\n\n' + "".join(blocks)

    part = declarations.parse_file(text("b"), "f.conf")
    for oif in ("c", "vlan1", "b2", "c2", "d", "e"):
        part = declarations.parse_file(text(oif), "f.conf", part)
        assert part.blocks is not None and len(part.blocks) <= 2 * count + 1000
        assert set(part.found.routes.values()) == {Ports("a", (oif,))}


def test_a_reload_reads_a_commented_out_header_as_a_fresh_read_does(tmp_path: Path) -> None:
    # One edit, "[[route]]" -> "# [[route]]": its keys now clash with the block above. The
    # edit's stretch once ended at that header (its newline outside the common tail), so
    # the reload kept the route while a fresh read refuses the file.
    main = tmp_path / "mfcd.conf"
    text = 'log_level = "info"\n' + "".join(route(f"239.1.1.{k}") for k in (1, 2, 3))
    main.write_text(text)
    cache = config.ReadCache()
    config.load_all(str(main), cache)
    main.write_text(text.replace('oifs = ["b"]\n[[route]]', 'oifs = ["b"]\n# [[route]]', 1))
    with pytest.raises(Problems) as fresh:
        config.load_all(str(main))
    with pytest.raises(Problems) as reload:
        config.load_all(str(main), cache)
    assert reload.value.problems == fresh.value.problems


def test_a_table_mistyped_inside_a_block_is_refused_by_every_later_read(tmp_path: Path) -> None:
    # [[routes]] is not a [[route]] header, so it sat in the block above it; kept with that
    # block, a reload changing only a setting took it unread and accepted the file.
    main = tmp_path / "mfcd.conf"
    typo = route("239.1.0.9").replace("[[route]]", "[[routes]]")
    text = 'log_level = "info"\n' + route("239.1.0.1") + typo
    main.write_text(text)
    cache = config.ReadCache()
    with pytest.raises(Problems, match=f"^{main}:7: unknown setting 'routes'"):
        config.load_all(str(main), cache)
    main.write_text(text.replace('"info"', '"debug"'))
    with pytest.raises(Problems, match=f"^{main}:7: unknown setting 'routes'"):
        config.load_all(str(main), cache)


@pytest.mark.parametrize(
    ("problem", "place"),
    [
        ("/etc/mfc_daemon.conf:12: route: bad group", ("/etc/mfc_daemon.conf", 12)),
        ("/etc/mfc.d/10 a:b.conf:3: join: x: 4: y", ("/etc/mfc.d/10 a:b.conf", 3)),
        ("/etc/mfc_daemon.conf: not valid TOML: oops", (None, None)),
    ],
)
def test_a_config_error_says_its_file_and_line_beside_the_message(
    problem: str, place: tuple[str | None, int | None]
) -> None:
    error = Problems([problem, "/etc/other.conf:1: route: another"])
    assert (error.file, error.line) == place
    assert str(error) == problem + " (and 1 more: mfcd --check-config lists them)"


def test_a_declared_table_too_large_for_its_family_is_a_problem_naming_the_limit() -> None:
    v4 = route() + "table = 1000000000\n"
    v6 = route("ff3e::1", source="2001:db8::1") + "table = 100000000\n"
    template = route("ff3e::/16", source="*") + "table = 100000000\n"
    _, problems = parse(v4 + v6 + template)
    assert [p.split(": ", 2)[:2] for p in problems] == [
        ["f.conf:6", "route"],
        ["f.conf:12", "route"],
        ["f.conf:18", "route"],
    ]
    assert "out of range for IPv4: give a number from 1 to 999999999" in problems[0]
    assert all("out of range for IPv6: give a number from 1 to 99999999" in p for p in problems[1:])
    found, problems = parse(route() + "table = 999999999\n")
    assert not problems and [k[3] for k in found.routes] == [999_999_999]


@pytest.mark.parametrize("oifs", ['"b", ""', '"", "vlan*"'])
def test_an_empty_oif_name_in_the_config_is_refused_with_the_one_message(oifs: str) -> None:
    _, problems = parse(route(oifs=oifs))
    assert len(problems) == 1 and "oifs has an empty interface name (as in r1,,r2" in problems[0]


@pytest.mark.parametrize("name", ["eth+", "vlan*"])
def test_a_config_interface_setting_names_one_interface_not_a_wildcard(name: str) -> None:
    _, problems = parse(f'[[interface]]\nname = "{name}"\nthreshold = 3\n')
    assert len(problems) == 1
    assert f"name {name} is a wildcard (a name ending in * or +)" in problems[0]


# --- templates that no longest match decides between ----------------------------------------------


def _net(text: str) -> Any:
    return None if text == "*" else ipaddress.ip_network(text)


def _clashes_by_every_pair(templates: list[declarations.Template]) -> list[str]:
    """The rule of _check_templates, by comparing every pair (as it once did): the oracle."""
    problems = []
    for n, t in enumerate(templates):
        src, grp = _net(t.source), _net(t.group)
        for other in templates[:n]:
            if (other.family, other.table, other.iif) != (t.family, t.table, t.iif):
                continue
            other_src, other_grp = _net(other.source), _net(other.group)
            if src == other_src and grp == other_grp:
                problems.append(
                    f"{t.where}: route: the template {t.source} -> {t.group} on {t.iif} is"
                    f" declared twice (also at {other.where})"
                )
                continue
            sources_meet = src is None or other_src is None or src.overlaps(other_src)
            if not (sources_meet and grp.overlaps(other_grp)):
                continue
            inside = (other_src is None or (src is not None and src.subnet_of(other_src))) and (
                grp.subnet_of(other_grp)
            )
            holds = (src is None or (other_src is not None and other_src.subnet_of(src))) and (
                other_grp.subnet_of(grp)
            )
            if not (inside or holds):
                problems.append(
                    f"{t.where}: route: the template {t.source} -> {t.group} on {t.iif}"
                    f" overlaps {other.source} -> {other.group} (at {other.where}) and neither"
                    " is inside the other: split one so that one is more specific"
                )
    return problems


SOURCES_V4 = ["*", "0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.1.1/32", "10.2.0.0/16"]
GROUPS_V4 = ["224.0.0.0/4", "239.0.0.0/8", "239.1.0.0/16", "239.1.1.0/24", "239.1.1.1/32"]
SOURCES_V6 = ["*", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1/128"]
GROUPS_V6 = ["ff3e::/16", "ff3e::1:0/112", "ff3e::1:1/128", "ff3e::2:0/112"]


@st.composite
def template_lists(draw: st.DrawFn) -> list[declarations.Template]:
    count = draw(st.integers(0, 14))
    templates = []
    for n in range(count):
        family = draw(st.sampled_from([4, 6]))
        sources, groups_ = (SOURCES_V4, GROUPS_V4) if family == 4 else (SOURCES_V6, GROUPS_V6)
        templates.append(
            declarations.Template(
                family,
                draw(st.sampled_from(sources)),
                draw(st.sampled_from(groups_)),
                draw(st.sampled_from(["a", "b"])),
                ("c",),
                draw(st.sampled_from([100, 253 if family == 4 else 254])),
                f"f.conf:{n + 1}",
            )
        )
    return templates


@settings(max_examples=400, deadline=None)
@given(template_lists())
def test_template_clashes_are_those_of_comparing_every_pair_in_the_same_order(
    templates: list[declarations.Template],
) -> None:
    into = Declarations()
    into.templates = templates
    problems: list[str] = []
    declarations._check_templates(into, problems)
    assert problems == _clashes_by_every_pair(templates)


def test_thousands_of_any_source_templates_are_checked_without_comparing_every_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4,000 (*,G) lines on one iif (an smcroute.conf's): about 8,000,000 pairs compared
    before; now one crossing template is found against the 256 groups it holds."""
    templates = [
        declarations.Template(4, "*", f"239.10.{n // 256}.{n % 256}/32", "a", ("b",), 253, f"f:{n}")
        for n in range(4000)
    ]
    templates.append(declarations.Template(4, "10.0.0.0/8", "239.10.0.0/24", "a", ("c",), 253, "g"))
    into = Declarations()
    into.templates = templates
    problems: list[str] = []
    calls = 0
    real = declarations._pair

    def counted(*args: Any) -> tuple[int, int, str]:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(declarations, "_pair", counted)
    declarations._check_templates(into, problems)
    assert len(problems) == calls == 256
    assert problems[0].startswith("g: route: the template 10.0.0.0/8 -> 239.10.0.0/24 on a")


def test_waiting_counts_the_routes_and_templates_that_wait_and_for_what() -> None:
    """Pending: the iif is missing (its missing oifs named too); degraded: an oif only. A
    wildcard oif waits only while it matches no interface."""
    declared, problems = parse(
        route("239.1.1.1", '"b", "x"').replace('iif = "a"', 'iif = "y"')
        + route("239.1.1.2", '"b", "x"')
        + route("239.1.1.3", '"b", "vlan*"')
        + '[[route]]\ngroup = "239.2.0.0/24"\niif = "a"\noifs = ["z"]\n'
        + '[[route]]\ngroup = "239.3.0.0/24"\niif = "eth+"\noifs = ["b"]\n'
        + '[[route]]\ngroup = "239.4.0.0/24"\niif = "y"\noifs = ["b"]\n'
    )
    assert problems == []
    combinations = Counter(declared.routes.values())
    waiting = declarations.waiting(combinations, declared.templates, {"a", "b"})
    # Of them templates (a warning names them apart): 239.4.0.0/24 pending, 239.2.0.0/24 degraded.
    # (239.1.1.3: vlan* matches no interface, degraded)
    assert waiting == declarations.Waiting(2, 3, ["x", "y"], ["vlan*", "x", "z"], 1, 1)
    assert waiting.missing == ["vlan*", "x", "y", "z"]
    every = {"a", "b", "x", "y", "z", "vlan1"}
    assert declarations.waiting(combinations, declared.templates, every) == (0, 0, [], [], 0, 0)
    # Routes that share their interfaces are counted as many as they are.
    assert declarations.waiting({Ports("y", ("b",)): 7}, [], {"b"}) == (7, 0, ["y"], [], 0, 0)
    # A wildcard oif that matches no interface (its iif aside) waits for one (trial 14 F9).
    typo = {Ports("a", ("b", "vlna*")): 1, Ports("vlan1", ("vlan*",)): 1}
    assert declarations.waiting(typo, [], {"a", "b", "vlan1"}) == (
        0,
        2,
        [],
        ["vlan*", "vlna*"],
        0,
        0,
    )


def start_files(tmp_path: Path, main_text: str, **drop_ins: str) -> Path:
    """A main file and its drop-ins (name without .conf -> text)."""
    main = tmp_path / "mfcd.conf"
    main.write_text(main_text)
    (tmp_path / "mfcd.d").mkdir(exist_ok=True)
    for name, text in drop_ins.items():
        (tmp_path / "mfcd.d" / f"{name}.conf").write_text(text)
    return main


BAD_ROUTE = '[[route]]\nsource = "198.18.0.2"\ngroup = "239.9.9.9"\niif = "a"\noifs = ["a"]\n'


def test_a_start_leaves_out_the_files_with_problems_and_reads_the_others(tmp_path: Path) -> None:
    """F11: one bad drop-in stopped mfcd from starting at all; now only that file is left
    out (its good routes with it), while a reload of the same files still refuses them all."""
    main = start_files(
        tmp_path,
        'log_level = "debug"\n' + route("239.1.1.1"),
        **{"10-good": route("239.1.1.2"), "80-bad": route("239.1.1.3") + BAD_ROUTE},
    )
    bad = str(tmp_path / "mfcd.d" / "80-bad.conf")
    loaded = config.load_at_start(str(main), config.ReadCache())
    assert loaded.settings.log_level == "debug"
    assert [k[2] for k in loaded.declared.routes] == ["239.1.1.1", "239.1.1.2"]
    assert loaded.left_out == [bad]
    assert len(loaded.problems) == 1
    assert loaded.problems[0].startswith(f"{bad}:10: route: iif a is also listed in oifs")
    with pytest.raises(Problems):  # --check-config and a reload: all or nothing
        config.load_all(str(main))
    clean = start_files(tmp_path, route("239.1.1.1"))
    (tmp_path / "mfcd.d" / "80-bad.conf").unlink()
    assert config.load_at_start(str(clean), config.ReadCache()).problems == []


def test_a_start_leaves_out_the_later_file_of_a_clash_and_the_main_files_declarations(
    tmp_path: Path,
) -> None:
    main = start_files(
        tmp_path,
        "ipv6 = false\n" + route("239.1.1.1") + BAD_ROUTE,
        **{
            "10-a": route("239.1.1.2"),
            "20-b": route("239.1.1.2") + route("239.1.1.4"),  # a route of 10-a again
            "30-c": route("239.1.1.5"),
            "40-d": route("ff3e::1", source="2001:db8::2"),  # IPv6 is off
            "50-e": 'log_level = "error"\n',  # a setting in a drop-in
        },
    )
    loaded = config.load_at_start(str(main), config.ReadCache())
    d = tmp_path / "mfcd.d"
    assert loaded.left_out == [
        str(main),
        str(d / "20-b.conf"),
        str(d / "40-d.conf"),
        str(d / "50-e.conf"),
    ]
    assert [k[2] for k in loaded.declared.routes] == ["239.1.1.2", "239.1.1.5"]
    assert loaded.settings.ipv6 is False  # the main file's settings are read all the same
    assert len(loaded.problems) == 4


@pytest.mark.parametrize(
    "main_text",
    [
        'socket_path = "/x.sock"\n[[route\n',  # not TOML: no setting can be trusted
        'log_level = "loud"\n',  # a bad setting
        'on_config_error = "refuse"\n',  # asked to refuse
    ],
)
def test_a_start_refuses_when_the_settings_cannot_be_read_or_it_is_asked_to(
    tmp_path: Path, main_text: str
) -> None:
    main = start_files(tmp_path, main_text, **{"80-bad": BAD_ROUTE})
    with pytest.raises(Problems):
        config.load_at_start(str(main), config.ReadCache())
    (tmp_path / "mfcd.d" / "80-bad.conf").unlink()
    if "refuse" in main_text:  # (no problem: nothing refused)
        assert config.load_at_start(str(main), config.ReadCache()).left_out == []


def test_a_start_leaves_out_an_unreadable_drop_in_directory(tmp_path: Path) -> None:
    main = start_files(tmp_path, route("239.1.1.1"))
    (tmp_path / "mfcd.d").rmdir()
    (tmp_path / "mfcd.d").write_text("a file, not a directory")
    loaded = config.load_at_start(str(main), config.ReadCache())
    assert loaded.left_out == [str(tmp_path / "mfcd.d")]
    assert [k[2] for k in loaded.declared.routes] == ["239.1.1.1"]


def test_a_drop_in_directory_left_out_is_named_as_a_directory_not_counted_as_a_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable drop-in directory was told as "1 config file left out" (its files are
    not known): the status line, the log and diagnose name it as the directory it is; the
    gauge counts it as one (docs/metrics.md)."""
    main = start_files(tmp_path, route("239.1.1.1") + BAD_ROUTE)
    directory = tmp_path / "mfcd.d"
    directory.rmdir()
    directory.write_text("a file, not a directory")
    loaded = config.load_at_start(str(main), config.ReadCache())
    assert loaded.left_out == [str(main), str(directory)]
    assert config.left_out_named(loaded.left_out, str(main)) == [
        str(main),
        f"the drop-in directory {directory}",
    ]
    daemon = Daemon(config.Config(), str(main), {}, left_out=loaded.left_out)
    daemon.controller = Controller(FakeKernel(), FakeState())
    assert daemon.status() == (
        "0 of 0 routes installed, 0 pending; 1 config file and the drop-in directory left out"
        " for errors (see the log; mfcctl reload once fixed)"
    )
    assert daemon.registry.config_files_left_out == 2
    only = Daemon(config.Config(), str(main), {}, left_out=[str(directory)])
    only.controller = daemon.controller
    assert only.status().endswith(
        "; the drop-in directory left out for errors (see the log; mfcctl reload once fixed)"
    )
    files = Daemon(config.Config(), str(main), {}, left_out=[str(main), str(directory) + "x"])
    files.controller = daemon.controller
    assert "; 2 config files left out for errors" in files.status()
    caplog.set_level("ERROR")
    _log_left_out(loaded, str(main))
    assert f"config: left out {main}, the drop-in directory {directory} (on_config_error" in (
        caplog.text
    )


def test_a_reload_of_a_route_that_could_never_get_its_vifs_is_refused() -> None:
    """Trial 14 F8: a config route naming 29 interfaces that do not exist, in a table with
    4 VIFs in use, was applied ("1 route is degraded") and left pending with "all 32 are in
    use"; with the interfaces there the same file was refused. Now refused either way."""
    ctl = controller()
    for ifindex, name in enumerate(("c", "d"), 10):
        ctl.link_up(name, ifindex)
    ctl.change([AddRoute((4, "198.18.0.2", "239.9.9.9", 253), Ports("a", ("b", "c", "d")))])
    before = dict(ctl.router.routes)
    names = ", ".join(f'"w{i}"' for i in range(29))
    new, problems = parse(route("239.1.1.2", names))
    assert problems == []  # (30 names in the file: the api route's VIFs are not its own)
    with pytest.raises(VifLimit, match=r"cannot add 29 new IPv4 VIFs.*only 28 of the 32 VIFs of"):
        ctl.apply_declared(new, diff(ctl.declared, new))
    assert dict(ctl.router.routes) == before and ctl.router.blocked == {}
