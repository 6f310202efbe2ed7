"""The docs: the site builds with warnings as errors; man pages and references match the code.

The man pages in docs/man are generated and committed; regenerating them must give the same
bytes, so a change to a parser, a setting or an error code fails here until `make man` is
run and the result committed.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from mfcd import cli, config, protocol

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MAN = DOCS / "man"
PAGES = ("mfcd.8", "mfcctl.8", "mfc_daemon.conf.5")
DEFAULT_CONF = ROOT / "packaging" / "mfc_daemon.conf"


def _sphinx_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MFCD_SOCKET", None)
    return env


def _toml(value: object, name: str) -> str:
    """A default as it is written in TOML."""
    if name == "socket_mode":
        assert isinstance(value, int)
        return f'"0{value:o}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-").replace('"', "\\(dq")


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = []
            for name, child in action.choices.items():
                found += _leaves(child, (*words, name))
            return found
    return [(words, parser)]


def test_man_pages_are_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DOCS / "build_man.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_sphinx_env(),
    )
    assert result.returncode == 0, result.stderr
    for page in PAGES:
        fresh = (tmp_path / page).read_bytes()
        assert fresh == (MAN / page).read_bytes(), (
            f"docs/man/{page} is out of date: run `make man` and commit the result"
        )


def test_html_site_builds_without_warnings(tmp_path: Path) -> None:
    html = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-q", "-W", "-b", "html", "-d", str(tmp_path / "dt")]
    result = subprocess.run(
        [*command, str(DOCS), str(html)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_sphinx_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "quickstart", "concepts", "cli", "configuration", "protocol"):
        assert (html / f"{page}.html").exists()
    cli_page = (html / "cli.html").read_text(encoding="utf-8")
    for words, _ in _leaves(cli.build_parser()):
        assert all(word in cli_page for word in words)


# Settings whose default is "not set": documented with the value they then stand for.
DOCUMENTED_DEFAULTS = replace(config.Config(), socket_group=config.DEFAULT_SOCKET_GROUP)


@pytest.mark.parametrize("field", [f.name for f in fields(config.Config)])
def test_every_setting_is_documented_with_its_default(field: str) -> None:
    default = _toml(getattr(DOCUMENTED_DEFAULTS, field), field)
    reference = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert re.search(rf"^`{field}` \(.*default `{re.escape(default)}`", reference, re.M), (
        f"docs/configuration.md does not document {field} with default {default}"
    )
    page = (MAN / "mfc_daemon.conf.5").read_text(encoding="utf-8")
    assert f"\\fB{field}\\fP (" in page and f"default \\fB{_roff(default)}\\fP" in page
    shipped = DEFAULT_CONF.read_text(encoding="utf-8")
    assert f"\n#{field} = {default}\n" in shipped, f"packaging/mfc_daemon.conf lacks #{field}"


def test_shipped_config_uncommented_is_exactly_the_defaults() -> None:
    text = DEFAULT_CONF.read_text(encoding="utf-8")
    assert config.parse(text) == config.Config()
    uncommented = re.sub(r"^#(?=\w+ = )", "", text, flags=re.M)
    # Uncommented, socket_group names group mfc, which then must exist; commented out it
    # is optional.
    assert config.parse(uncommented) == DOCUMENTED_DEFAULTS
    keys = re.findall(r"^(\w+) = ", uncommented, re.M)
    assert keys == [f.name for f in fields(config.Config)]


def test_every_error_code_is_documented_with_its_exit_status() -> None:
    reference = (DOCS / "protocol.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", reference, re.M))
    assert table == {code: str(status) for code, status in protocol.ERROR_EXIT.items()}


def _exit_status_block() -> dict[int, str]:
    """docs/cli.md's exit statuses (which mfcctl(8) includes): status -> its text."""
    reference = (DOCS / "cli.md").read_text(encoding="utf-8")
    block = reference.split("<!-- exit-status -->")[1].split("<!-- /exit-status -->")[0]
    entries = re.split(r"^`(\d+)`$", block, flags=re.M)[1:]
    return {
        int(n): " ".join(text.split()) for n, text in zip(entries[::2], entries[1::2], strict=True)
    }


def test_every_exit_status_is_documented() -> None:
    statuses = set(protocol.EXIT_STATUSES)
    constants = {v for k, v in vars(protocol).items() if k.startswith("EXIT_") and type(v) is int}
    assert statuses == constants
    assert set(protocol.ERROR_EXIT.values()) <= statuses
    epilog = cli.build_parser().epilog or ""
    assert {int(n) for n in re.findall(r"^  (\d+)  ", epilog, re.M)} == statuses
    assert list(_exit_status_block()) == sorted(statuses)
    # mfcctl(8) shows the same block: included from docs/cli.md, and so in the page built.
    source = (MAN / "mfcctl.rst").read_text(encoding="utf-8")
    assert re.search(
        r"^\.\. include:: \.\./cli\.md\n(   :.*\n)*   :start-after: <!-- exit-status -->\n"
        r"   :end-before: <!-- /exit-status -->$",
        source,
        re.M,
    )
    page = (MAN / "mfcctl.8").read_text(encoding="utf-8")
    for status in statuses:
        assert f"\n.B \\fB{status}\\fP\n" in page


@pytest.mark.parametrize(("code", "status"), protocol.ERROR_EXIT.items())
def test_each_error_code_is_listed_under_its_exit_status(code: str, status: int) -> None:
    block = _exit_status_block()
    assert f"`{code}`" in block[status], f"docs/cli.md: exit status {status} lacks `{code}`"
    assert all(f"`{code}`" not in text for n, text in block.items() if n != status)


def test_every_mfcctl_command_and_option_is_in_the_man_page() -> None:
    page = (MAN / "mfcctl.8").read_text(encoding="utf-8")
    leaves = _leaves(cli.build_parser())
    assert len(leaves) >= 8
    for words, parser in leaves:
        assert f"\\fB{_roff(' '.join(words))}\\fP" in page, (
            f"mfcctl {' '.join(words)} is undocumented"
        )
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"\\fB{_roff(option)}\\fP" in page


@pytest.mark.parametrize("path", sorted((ROOT / "src" / "mfcd").glob("*.py")), ids=lambda p: p.name)
def test_each_module_starts_with_its_one_line_purpose(path: Path) -> None:
    """The docstring's first line is the module's whole purpose; details follow a blank line."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
    assert docstring, f"{path.name} has no docstring"
    first, _, rest = docstring.partition("\n")
    assert len(first) <= 97, f"{path.name}: the purpose line is over 100 characters"
    assert not rest or rest.startswith("\n"), f"{path.name}: the purpose goes on a second line"


def test_the_docs_put_show_templates_where_show_prints_them() -> None:
    route = {"family": "ipv4", "table": 253, "source": "198.18.0.2", "group": "239.1.1.1"}
    route.update(iif="r0", oifs=["r1"], state="installed")
    template = dict(route, source="*", group="239.2.0.0/24", template=True)
    text = cli.format_show({"vifs": [], "routes": [route, template]}, 100)
    assert text.index("Templates (1)") < text.index("198.18.0.2")  # before the routes
    for page in ("cli.md", "concepts.md"):
        words = " ".join((DOCS / page).read_text().split())
        assert "templates after the routes" not in words and "(after the routes" not in words
        assert "before the routes" in words
