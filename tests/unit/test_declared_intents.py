"""Tests for the config files' templates, joins and mrdisc settings applied by the controller
(origin "config": applied by diff, kept out of the state file, refused to the API)."""

from __future__ import annotations

from typing import Any

import pytest

from mfcd import cli, views
from mfcd.controller import Controller
from mfcd.declarations import diff
from mfcd.errors import DeclaredInConfig
from mfcd.groups import Join, Leave, SetMrdisc
from mfcd.model import AddRoute, AddTemplate, DelTemplate, Ports, SetThreshold
from tests.unit.conftest import FakeKernel, FakeState
from tests.unit.test_declarations import controller, parse

TEMPLATE = (4, "*", "239.2.0.0/24", 253, "a")
ASM = ("b", "239.5.5.5", "*")
TEMPLATE_TEXT = '[[route]]\ngroup = "239.2.0.0/24"\niif = "a"\noifs = [{oifs}]\n'
JOIN_TEXT = '[[join]]\ninterface = "b"\ngroup = "239.5.5.5"\n'


def reload(ctl: Controller, text: str, dry_run: bool = False) -> dict[str, object]:
    new, problems = parse(text)
    assert problems == []
    change = diff(ctl.declared, new)
    taken = ctl.takeovers(change)  # (as the daemon does: before the reload)
    outcome = ctl.apply_declared(new, change, dry_run)
    slots = ctl.router.slots
    return views.reload_result(change, outcome, new, dry_run, taken, files=new.files, slots=slots)


def kernel_of(ctl: Controller) -> FakeKernel:
    assert isinstance(ctl.kernel, FakeKernel)
    return ctl.kernel


def state_of(ctl: Controller) -> FakeState:
    assert isinstance(ctl.state, FakeState)
    return ctl.state


def test_a_config_template_has_origin_config_and_stays_out_of_the_state_file() -> None:
    ctl = controller()
    result = reload(ctl, TEMPLATE_TEXT.format(oifs='"b"'))
    router = ctl.router
    assert router.templates[TEMPLATE] == Ports("a", ("b",))
    assert router.template_origin(TEMPLATE) == "config"
    assert router.status(TEMPLATE).state == "installed"  # holds its VIFs: upcalls come
    assert result["templates"] == {"added": 1, "removed": 0, "changed": 0}
    assert "templates: 1 added" in str(result["summary"])
    shown = views.Views(kernel_of(ctl)).show(router)["routes"]
    assert [(r["group"], r["origin"]) for r in shown if r.get("template")] == [
        ("239.2.0.0/24", "config")
    ]
    assert state_of(ctl).records == []  # nothing journaled
    api = (4, "*", "239.3.0.0/24", 253, "a")
    ctl.change([AddTemplate(api, Ports("a", ("c",)))])
    ctl.compact()
    assert list(state_of(ctl).templates) == [api]
    # Its oifs changed in the file: replaced; then removed from the file: gone.
    result = reload(ctl, TEMPLATE_TEXT.format(oifs='"c"'))
    assert router.templates[TEMPLATE] == Ports("a", ("c",))
    assert result["templates"] == {"added": 0, "removed": 0, "changed": 1}
    reload(ctl, "")
    assert TEMPLATE not in router.templates and TEMPLATE not in router.template_origins
    assert api in router.templates  # the API's stays


def test_an_api_change_to_a_config_template_is_refused_with_file_and_line() -> None:
    ctl = controller()
    reload(ctl, "\n" + TEMPLATE_TEXT.format(oifs='"b"'))
    with pytest.raises(DeclaredInConfig, match=r"template .* is declared in f\.conf:2; change"):
        ctl.change([DelTemplate(TEMPLATE)])
    with pytest.raises(DeclaredInConfig) as e:
        other = AddTemplate((4, "*", "239.3.0.0/24", 253, "a"), Ports("a", ("c",)))
        ctl.change([other, AddTemplate(TEMPLATE, Ports("a", ("c",)))])
    assert e.value.op == 2 and e.value.code == "declared_in_config"
    assert ctl.router.templates[TEMPLATE] == Ports("a", ("b",))


def test_an_api_template_the_files_declare_is_taken_over() -> None:
    ctl = controller()
    ctl.change([AddTemplate(TEMPLATE, Ports("a", ("b",)))])
    reload(ctl, TEMPLATE_TEXT.format(oifs='"b"'))
    assert ctl.router.template_origin(TEMPLATE) == "config"
    assert state_of(ctl).records[-1] == [["untemplate", 4, "*", "239.2.0.0/24", "a", 253]]


def test_a_wildcard_template_iif_is_one_template_per_interface() -> None:
    ctl = controller()
    reload(ctl, '[[route]]\ngroup = "239.2.0.0/24"\niif = "vlan*"\noifs = ["b"]\n')
    assert list(ctl.router.templates) == [(4, "*", "239.2.0.0/24", 253, "vlan1")]
    ctl.link_up("vlan2", 9)
    ctl.follow_wildcards()
    assert (4, "*", "239.2.0.0/24", 253, "vlan2") in ctl.router.templates
    assert ctl.router.template_origin((4, "*", "239.2.0.0/24", 253, "vlan2")) == "config"


def test_a_config_join_has_origin_config_and_stays_out_of_the_state_file() -> None:
    ctl = controller()
    result = reload(ctl, JOIN_TEXT)
    joins = ctl.joins
    assert joins.wanted == {ASM: "config"} and ASM in joins.joined
    assert result["joins"] == {"added": 1, "removed": 0, "changed": 0}
    assert state_of(ctl).records == [] and ctl.snapshot_extra()["joins"] == []
    # An API join of it changes nothing; an API leave is refused, naming the file's line.
    ctl.change([Join(ASM)])
    assert joins.wanted == {ASM: "config"} and state_of(ctl).records == []
    with pytest.raises(DeclaredInConfig, match=r"group 239\.5\.5\.5 on b is joined in f\.conf:1"):
        ctl.change([Leave(ASM)])
    # Removed from the files: left.
    result = reload(ctl, "")
    assert joins.wanted == {} and joins.joined == {}
    assert result["joins"] == {"added": 0, "removed": 1, "changed": 0}


def test_an_api_join_the_files_declare_is_taken_over_and_a_prefix_is_each_group() -> None:
    ctl = controller()
    ctl.change([Join(ASM)])
    reload(ctl, JOIN_TEXT + '[[join]]\ninterface = "c"\ngroup = "239.6.6.0/31"\n')
    assert ctl.joins.wanted == {
        ASM: "config",
        ("c", "239.6.6.0", "*"): "config",
        ("c", "239.6.6.1", "*"): "config",
    }
    assert state_of(ctl).records[-1] == [["leave", "b", "239.5.5.5", "*"]]


def test_config_mrdisc_is_on_refused_to_the_api_and_not_saved() -> None:
    ctl = controller()
    ctl.change([SetMrdisc("c", True)])
    result = reload(ctl, '[[interface]]\nname = "b"\nmrdisc = true\n')
    assert set(ctl.joins.mrdisc) == {"b", "c"}
    assert ctl.snapshot_extra()["mrdisc"] == ["c"]
    assert "1 mrdisc setting changed" in str(result["summary"])
    with pytest.raises(DeclaredInConfig, match=r"mrdisc of b is declared in f\.conf:1"):
        ctl.change([SetMrdisc("b", False)])
    reload(ctl, "")
    assert set(ctl.joins.mrdisc) == {"c"}


def test_an_api_mrdisc_the_files_declare_is_taken_over() -> None:
    ctl = controller()
    ctl.change([SetMrdisc("b", True)])
    reload(ctl, '[[interface]]\nname = "b"\nmrdisc = true\n')
    assert state_of(ctl).records[-1] == [["mrdisc", "b", False]]
    assert "b" in ctl.joins.mrdisc


def test_the_dry_run_plan_lists_templates_joins_and_mrdisc_and_changes_nothing() -> None:
    ctl = controller()
    text = (
        TEMPLATE_TEXT.format(oifs='"b"') + JOIN_TEXT + '[[interface]]\nname = "c"\nmrdisc = true\n'
    )
    result = reload(ctl, text, dry_run=True)
    actions = {entry["action"] for entry in result["plan"]}  # type: ignore[attr-defined]
    assert {"add_template", "join", "mrdisc"} <= actions
    assert ctl.router.templates == {} and ctl.joins.wanted == {} and ctl.joins.mrdisc == {}
    assert ctl.declared.templates == []


def test_check_config_refuses_what_applying_would_refuse() -> None:
    text = (
        '[[route]]\ngroup = "224.0.0.0/24"\niif = "a"\noifs = ["b"]\n'
        '[[join]]\ninterface = "a"\ngroup = "224.0.0.5"\n'
        '[[join]]\ninterface = "a*"\ngroup = "239.0.0.0/16"\n'
    )
    _, problems = parse(text)
    assert [p.split(": ", 2)[:2] for p in problems] == [
        ["f.conf:2", "route"],
        ["f.conf:7", "join"],  # the line of its group
        ["f.conf:10", "join"],
    ]
    assert "link-local" in problems[0] and "link-local" in problems[1]
    assert "at most 1024" in problems[2]


def test_show_text_names_a_config_template_origin() -> None:
    ctl = controller()
    reload(ctl, TEMPLATE_TEXT.format(oifs='"b"'))
    ctl.change([AddTemplate((4, "*", "239.3.0.0/24", 253, "a"), Ports("a", ("c",)))])
    shown = [r for r in views.Views(kernel_of(ctl)).show(ctl.router)["routes"] if r.get("template")]
    lines = cli.format_templates(shown)
    assert "installed, config" in lines[2] and "239.2.0.0/24" in lines[2]
    assert "config" not in lines[3] and "239.3.0.0/24" in lines[3]


def test_the_dry_run_plan_gives_thresholds_and_mrdisc_their_file_and_line() -> None:
    ctl = controller()
    text = '[[interface]]\nname = "c"\nmrdisc = true\n\n[[interface]]\nname = "b"\nthreshold = 9\n'
    result = reload(ctl, text, dry_run=True)
    steps = {entry["action"]: entry for entry in result["plan"]}  # type: ignore[attr-defined]
    assert steps["mrdisc"]["where"] == "f.conf:1"
    assert steps["threshold"]["where"] == "f.conf:5"
    lines = cli.format_reload(result)
    assert "  set threshold 9 on b  (f.conf:5)" in lines.splitlines()
    assert "  turn mrdisc on for c  (f.conf:1)" in lines.splitlines()
    assert lines.splitlines()[-1] == (
        "0 added, 0 removed, 0 changed, 0 unchanged, 1 threshold changed, 1 mrdisc setting changed"
    )
    # A setting the files no longer declare goes back to the default: no place to name.
    reload(ctl, text)
    result = reload(ctl, "", dry_run=True)
    assert all("where" not in e for e in result["plan"])  # type: ignore[attr-defined]
    assert "set threshold 1 on b" in cli.format_reload(result)
    # Nor for one the block of the interface no longer holds, its other setting still there.
    reload(ctl, '[[interface]]\nname = "b"\nthreshold = 9\nmrdisc = true\n')
    result = reload(ctl, '\n\n[[interface]]\nname = "b"\nmrdisc = true\n', dry_run=True)
    steps = {entry["action"]: entry for entry in result["plan"]}  # type: ignore[attr-defined]
    assert steps["threshold"] == {"action": "threshold", "interface": "b", "threshold": 1}


def test_the_dry_run_plan_names_the_table_of_a_threshold_and_its_place() -> None:
    ctl = controller()
    text = '[[interface]]\nname = "b"\ntable = 100\nthreshold = 9\n'
    result = reload(ctl, text, dry_run=True)
    assert result["plan"] == [
        {"action": "threshold", "interface": "b", "table": 100, "threshold": 9, "where": "f.conf:1"}
    ]
    assert "  set threshold 9 on b in table 100  (f.conf:1)" in cli.format_reload(result)
    reload(ctl, text)
    assert ctl.router.table_thresholds == {("b", 100): 9}
    result = reload(ctl, "", dry_run=True)
    assert "  set threshold default on b in table 100" in cli.format_reload(result)


def test_a_declared_threshold_of_one_table_takes_over_the_apis() -> None:
    ctl = controller()
    ctl.change([SetThreshold("b", 4, 100)])
    text = '[[interface]]\nname = "b"\ntable = 100\nthreshold = 9\n'
    result = reload(ctl, text, dry_run=True)
    assert "  set threshold 9 on b in table 100 (replaces the api value 4)  (f.conf:1)" in (
        cli.format_reload(result).splitlines()
    )
    assert (result["taken_over"], result["thresholds"]) == (1, 0)
    reload(ctl, text)
    state = ctl.state
    assert isinstance(state, FakeState)
    assert state.records[-1] == [["threshold", "b", 0, 100]]  # gone from the state file
    assert ctl.router.table_thresholds == {("b", 100): 9}


def test_show_lists_a_config_template_wildcard_iif_and_oifs_beside_what_they_match() -> None:
    ctl = controller()
    reload(ctl, '[[route]]\ngroup = "239.2.0.0/24"\niif = "vlan*"\noifs = ["b", "c+"]\n')
    ctl.link_up("vlan2", 9)
    ctl.follow_wildcards()
    shown = views.Views(kernel_of(ctl)).show(ctl.router, patterns=ctl.shown_patterns())
    templates = [r for r in shown["routes"] if r.get("template")]
    assert [(t["iif"], t.get("iif_pattern"), t.get("oif_patterns")) for t in templates] == [
        ("vlan1", "vlan*", ["b", "c+"]),
        ("vlan2", "vlan*", ["b", "c+"]),
    ]
    assert cli.format_templates(templates)[2].split()[2] == "vlan*(vlan1)"


def test_a_reload_plan_names_a_template_as_show_does_and_counts_as_mfcctl_does() -> None:
    ctl = controller()
    text = '[[route]]\ngroup = "239.1.1.1/32"\niif = "a"\noifs = ["b"]\n'
    result = reload(ctl, text, dry_run=True)
    assert "  add template * -> 239.1.1.1 iif a oifs b  (f.conf:1)" in cli.format_reload(result)
    reload(ctl, text)
    shown = views.Views(kernel_of(ctl)).show(ctl.router)["routes"]
    assert [(r["source"], r["group"]) for r in shown if r.get("template")] == [("*", "239.1.1.1")]
    routes = "".join(
        f'[[route]]\nsource = "198.18.0.2"\ngroup = "239.9.{n // 250}.{n % 250 + 1}"\n'
        'iif = "a"\noifs = ["b"]\n'
        for n in range(1000)
    )
    summary = str(reload(ctl, text + routes)["summary"])
    assert summary.startswith("1000 added, 0 removed, 0 changed, 0 unchanged")


API_ROUTE = (4, "198.18.0.2", "239.3.3.3", 253)


def test_the_plan_says_what_a_reload_takes_over_from_the_api() -> None:
    ctl = controller()
    ctl.change([AddRoute(API_ROUTE, Ports("a", ("b", "c", "vlan1")))])
    ctl.change([SetThreshold("b", 10)])
    text = (
        '[[route]]\nsource = "198.18.0.2"\ngroup = "239.3.3.3"\niif = "a"\noifs = ["b"]\n\n'
        '[[interface]]\nname = "b"\nthreshold = 5\n\n[[interface]]\nname = "a"\nthreshold = 1\n'
    )
    result = reload(ctl, text, dry_run=True)
    assert (result["added"], result["taken_over"], result["thresholds"]) == (0, 2, 0)
    plan = {(e["action"], e.get("interface")): e for e in result["plan"]}  # type: ignore[attr-defined]
    route = plan["take_over", None]
    assert route["was"] == {"iif": "a", "oifs": ["b", "c", "vlan1"]} and route["oifs"] == ["b"]
    assert plan["threshold", "b"]["was"] == 10 and plan["threshold", "b"]["taken_over"]
    assert ("threshold", "a") not in plan  # (a is at 1 already: no change)
    lines = cli.format_reload(result).splitlines()
    assert (
        "  take over api route 198.18.0.2 -> 239.3.3.3 (oifs b,c,vlan1 -> b)  (f.conf:1)" in lines
    )
    assert "  set threshold 5 on b (replaces the api value 10)  (f.conf:7)" in lines
    assert lines[-1] == "0 added, 0 removed, 0 changed, 0 unchanged, 2 taken over from the api"
    result = reload(ctl, text)
    assert result["summary"] == lines[-1]
    assert ctl.router.origins[API_ROUTE] == "config"


def test_the_plan_says_a_reload_takes_over_api_templates_and_joins() -> None:
    """An api template or join the files now declare is marked in the plan and counted in
    taken_over (not as added), as an api route or setting is; a join of a prefix that
    takes over some of its groups too."""
    ctl = controller()
    other = (4, "*", "239.3.0.0/24", 253, "a")
    ctl.change([AddTemplate(TEMPLATE, Ports("a", ("b", "c")))])
    ctl.change([AddTemplate(other, Ports("a", ("c",)))])
    ctl.change([Join(ASM), Join(("c", "239.6.6.1", "*"))])
    text = (
        TEMPLATE_TEXT.format(oifs='"b"')
        + '[[route]]\ngroup = "239.3.0.0/24"\niif = "a"\noifs = ["c"]\n'
        + '[[route]]\ngroup = "239.4.0.0/24"\niif = "a"\noifs = ["b"]\n'  # (no api one)
        + JOIN_TEXT
        + '[[join]]\ninterface = "c"\ngroup = "239.6.6.0/31"\n'
        + '[[join]]\ninterface = "c"\ngroup = "239.7.7.7"\n'  # (no api one)
    )
    result = reload(ctl, text, dry_run=True)
    assert result["taken_over"] == 4
    assert result["templates"] == {"added": 1, "removed": 0, "changed": 0}
    assert result["joins"] == {"added": 1, "removed": 0, "changed": 0}
    summary = "0 added, 0 removed, 0 changed, 0 unchanged, 4 taken over from the api, "
    summary += "templates: 1 added, joins: 1 added"
    assert result["summary"] == summary
    plan: list[dict[str, Any]] = result["plan"]  # type: ignore[assignment]
    taken = [(e["group"], e.get("was")) for e in plan if e.get("taken_over")]
    assert taken == [
        ("239.2.0.0/24", ["b", "c"]),
        ("239.3.0.0/24", ["c"]),
        ("239.5.5.5", None),
        ("239.6.6.0/31", None),
    ]
    assert cli.format_reload(result).splitlines()[1:-1] == [
        "  add template * -> 239.2.0.0/24 iif a oifs b (takes over the api template: oifs b,c"
        " -> b)  (f.conf:1)",
        "  add template * -> 239.3.0.0/24 iif a oifs c (takes over the api template)  (f.conf:5)",
        "  add template * -> 239.4.0.0/24 iif a oifs b  (f.conf:9)",
        "  join * -> 239.5.5.5 on b (takes over the api join)  (f.conf:13)",
        "  join * -> 239.6.6.0/31 on c (takes over the api join)  (f.conf:16)",
        "  join * -> 239.7.7.7 on c  (f.conf:19)",
    ]
    assert ctl.router.template_origins == {} and set(ctl.joins.wanted.values()) == {"api"}
    result = reload(ctl, text)
    assert (result["taken_over"], result["summary"]) == (4, summary)
    assert ctl.router.template_origin(TEMPLATE) == "config"
    assert set(ctl.joins.wanted.values()) == {"config"}


def test_a_wildcard_template_that_takes_over_api_templates_says_so() -> None:
    ctl = controller()
    ctl.link_up("vlan2", 9)
    keys = [(4, "*", "239.2.0.0/24", 253, f"vlan{n}") for n in (1, 2)]
    ctl.change([AddTemplate(keys[0], Ports("vlan1", ("b",)))])
    ctl.change([AddTemplate(keys[1], Ports("vlan2", ("c",)))])
    text = '[[route]]\ngroup = "239.2.0.0/24"\niif = "vlan*"\noifs = ["b"]\n'
    result = reload(ctl, text, dry_run=True)
    assert (result["taken_over"], result["templates"]) == (
        1,
        {"added": 0, "removed": 0, "changed": 0},
    )
    assert cli.format_reload(result).splitlines()[1] == (
        "  add template * -> 239.2.0.0/24 iif vlan* oifs b (takes over api templates)  (f.conf:1)"
    )


def test_the_kernel_plan_of_a_dry_run_names_the_interfaces_as_a_changes_plan() -> None:
    ctl = controller()
    ctl.change([AddRoute((4, "198.18.0.2", "239.3.3.4", 253), Ports("c", ("a",)))])  # c: VIF 0
    text = '[[route]]\nsource = "198.18.0.2"\ngroup = "239.3.3.3"\niif = "a"\noifs = ["b", "c"]\n'
    result = reload(ctl, text, dry_run=True)
    kernel_plan: list[dict[str, Any]] = result["kernel_plan"]  # type: ignore[assignment]
    (mfc,) = [s for s in kernel_plan if s["action"] == "add_mfc"]
    assert (mfc["parent"], mfc["oifs"]) == (1, [0, 2])
    assert (mfc["iif"], mfc["oif_names"]) == ("a", ["c", "b"])


def test_the_plan_says_a_reload_takes_over_an_api_mrdisc_and_skips_one_already_so() -> None:
    ctl = controller()
    ctl.change([SetMrdisc("b", True)])
    text = '[[interface]]\nname = "b"\nmrdisc = true\n\n[[interface]]\nname = "c"\nmrdisc = false\n'
    result = reload(ctl, text, dry_run=True)
    assert (result["taken_over"], result["summary"]) == (
        1,
        "0 added, 0 removed, 0 changed, 0 unchanged, 1 taken over from the api",
    )
    lines = cli.format_reload(result).splitlines()
    assert lines[1:-1] == ["  turn mrdisc on for b (takes over the api setting)  (f.conf:1)"]
