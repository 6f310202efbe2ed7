"""Tests for mfcctl (mfcd.cli): parser, batch files, table layout, errors, import cost."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mfcd
from mfcd import batchfile, cli, protocol

ROOT = Path(__file__).resolve().parents[2]
ADD = ["mfc", "add", "--source", "10.0.0.1", "--group", "239.1.1.1", "--iif", "r0", "--oifs"]
V6_SOURCE = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"  # 39 characters, the longest IPv6 text
V6_GROUP = "ff0e:1111:2222:3333:4444:5555:6666:7777"
NAME15 = "abcdefghijklmno"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


# --- parser --------------------------------------------------------------------------------------


@pytest.mark.parametrize("oifs", [["r1,r2"], ["r1", "r2"], ["r1,", "r2"], ["r1", ",r2"]])
def test_parser_takes_oifs_comma_or_space_separated(oifs: list[str]) -> None:
    args = cli.build_parser().parse_args([*ADD, *oifs])
    assert (args.command, args.action, args.source, args.group, args.iif) == (
        "mfc",
        "add",
        "10.0.0.1",
        "239.1.1.1",
        "r0",
    )
    assert args.oifs == oifs


@pytest.mark.parametrize(
    "argv",
    [
        ["mfc", "add", "--source", "10.0.0.1", "--group", "239.1.1.1", "--iif", "r0"],
        [*ADD],
        ["mfc", "del", "--source", "10.0.0.1"],
        ["mfc"],
        ["vif", "set", "r1", "--threshold", "x"],
        ["frobnicate"],
        [],
    ],
)
def test_parser_rejects_incomplete_commands(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(*argv)
    assert status == protocol.EXIT_USAGE
    captured = capsys.readouterr()
    assert "usage: mfcctl" in err + captured.err
    assert out + captured.out == ""


@pytest.mark.parametrize("argv", [["vif", "set", "r1"], ["vif", "set", "r1", "-o", "json"]])
def test_vif_set_without_a_setting_is_one_line_naming_the_options(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(*argv)
    assert status == protocol.EXIT_USAGE
    assert capsys.readouterr() == ("", "")
    assert out == ("" if "json" not in argv else json.dumps(cli.usage_json(err[8:-1])) + "\n")
    assert err.count("\n") == 1, err  # not the top-level usage
    assert err.startswith("mfcctl: vif set needs")
    for option in ("--threshold", "--mrdisc", "--no-mrdisc"):
        assert option in err


def test_usage_errors_go_to_the_given_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli("mfc", "add", "--source", "10.0.0.1")
    assert status == protocol.EXIT_USAGE
    assert capsys.readouterr().err == "", "argparse wrote to sys.stderr, not to main()'s stderr"
    assert "usage: mfcctl" in err


@pytest.mark.parametrize(
    ("argv", "instead"),
    [
        (
            ["add", "r0", "198.18.10.2", "239.64.0.1", "r2"],
            "mfcctl mfc add --iif r0 --source 198.18.10.2 --group 239.64.0.1 --oifs r2",
        ),
        (["rem", "r0", "198.18.10.2", "239.64.0.1"], "mfcctl mfc del --source 198.18.10.2"),
        (["kill"], "systemctl stop mfc_daemon"),
        (["-d", "show"], "mfcctl show --stats"),
        (["-v", "s", "g"], "mfcctl show groups"),
    ],
)
def test_smcroutectl_commands_are_one_line_naming_mfcctls(
    argv: list[str], instead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(*argv)
    assert status == protocol.EXIT_USAGE
    assert capsys.readouterr() == ("", "")
    assert out == ""
    assert err.startswith("mfcctl: ") and err.count("\n") == 1, err  # no usage, no choices
    assert instead in err and " is smcroutectl's " in err


# Ways of asking for JSON argparse takes, before or after the command; the last one counts.
JSON_ASKED = [
    ["-o", "json"],
    ["--output", "json"],
    ["--output=json"],
    ["-ojson"],
    ["--out", "json"],
    ["-o", "table", "-o", "json"],
]
USAGE_ERRORS = [
    ["mfc", "add", "--source", "10.0.0.1"],  # argparse's, of a subcommand
    ["frobnicate"],  # argparse's, of mfcctl's parser
    ["show", "routez"],
    ["add", "r0", "239.1.1.1", "r1"],  # smcroutectl's
    ["vif", "set", "r1"],  # mfcctl's own
]


@pytest.mark.parametrize("asked", JSON_ASKED)
@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_a_usage_error_with_output_json_prints_a_json_error(
    argv: list[str], asked: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for line in ([*asked, *argv], [*argv, *asked]):
        status, out, err = run_cli(*line)
        assert status == protocol.EXIT_USAGE
        assert capsys.readouterr() == ("", "")
        error = json.loads(out)["error"]
        assert error["code"] == "usage" and set(error) == {"code", "message"}
        # The same words on stderr, as without -o json.
        assert error["message"].split(": ", 1)[-1] in err.splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "--watch", "0"],
        ["batch", "/nonexistent/batch"],
        ["--socket", "", "ping"],
        ["show", "groups", "--watch", "1"],  # (--watch shows routes only)
        ["show", "interfaces", "--watch", "1"],
    ],
)
def test_mfcctls_own_usage_errors_with_output_json_print_a_json_error(argv: list[str]) -> None:
    status, out, err = run_cli(*argv, "-o", "json")
    assert status == protocol.EXIT_USAGE
    assert json.loads(out) == cli.usage_json(err.removeprefix("mfcctl: ").rstrip("\n"))


@pytest.mark.parametrize("asked", [[], ["-o", "table"], ["-o", "json", "-o", "table"]])
@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_a_usage_error_without_output_json_prints_nothing_on_stdout(
    argv: list[str], asked: list[str]
) -> None:
    status, out, err = run_cli(*asked, *argv)
    assert (status, out) == (protocol.EXIT_USAGE, "")
    assert err


# --- talking to a daemon -------------------------------------------------------------------------


class FakeDaemon:
    """A control socket that answers every request with `reply` and keeps what it was sent."""

    def __init__(self, path: Path, reply: dict[str, Any]) -> None:
        self.path = path
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                conn.sendall(self.respond(line))

    def respond(self, line: bytes) -> bytes:
        request = json.loads(line)
        self.requests.append(request)
        response = {"v": 1, "id": request["id"], **self.reply}
        return json.dumps(response).encode() + b"\n"

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(tmp_path / "mfcd.sock", {"ok": True, "result": {"dry_run": False}})
    yield fake
    fake.close()


@pytest.mark.parametrize("oifs", [["r1,r2"], ["r1", "r2"]])
def test_mfc_add_sends_the_oif_list(daemon: FakeDaemon, oifs: list[str]) -> None:
    status, out, err = run_cli("--socket", str(daemon.path), *ADD, *oifs)
    assert (status, out, err) == (0, "", "")
    daemon.close()
    [request] = daemon.requests
    assert (request["cmd"], request["args"]) == (
        "mfc.add",
        {"source": "10.0.0.1", "group": "239.1.1.1", "iif": "r0", "oifs": ["r1", "r2"]},
    )


@pytest.mark.parametrize("action", ["add", "del"])
def test_mfc_oif_sends_the_oifs_to_add_or_remove(daemon: FakeDaemon, action: str) -> None:
    argv = ["mfc", "oif", action, *ADD[2:6], "--oifs", "r3,r4", "r5"]
    assert run_cli("--socket", str(daemon.path), *argv) == (0, "", "")
    daemon.close()
    [request] = daemon.requests
    assert (request["cmd"], request["args"]) == (
        f"mfc.oif.{action}",
        {"source": "10.0.0.1", "group": "239.1.1.1", "oifs": ["r3", "r4", "r5"]},
    )


@pytest.mark.parametrize("state", ["pending", "degraded"])
def test_a_route_waiting_is_a_warning_on_stderr_naming_the_interface(
    tmp_path: Path, state: str
) -> None:
    result = {"dry_run": False, "state": state, "reason": "waiting for r9", "missing": ["r9"]}
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    status, out, err = run_cli("--socket", str(fake.path), *ADD, "r9")
    fake.close()
    assert (status, out) == (0, f"route {state}: waiting for r9\n")
    assert err == (
        f"mfcctl: warning: interface r9 does not exist (yet); the route is {state} until it"
        " appears\n"
    )


def test_a_change_prints_mfcds_warnings_on_stderr(tmp_path: Path) -> None:
    """A route in a table the multicast rules do not send its iif's traffic to (trial 14
    F6): mfcd says it in `warnings`, mfcctl prints each on stderr."""
    warning = "no multicast rule sends r1's traffic to IPv4 table 254 (main): r1 goes to ..."
    result = {"dry_run": False, "changes": 1, "warnings": [warning]}
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    status, out, err = run_cli("--socket", str(fake.path), *ADD, "r9")
    fake.close()
    assert (status, out, err) == (0, "", f"mfcctl: warning: {warning}\n")


@pytest.mark.parametrize(
    ("words", "missing", "out", "warning"),
    [
        (  # trial 14 F16: a template is called one
            ["mfc", "add", "--group", "239.63.0.0/16", "--iif", "r7", "--oifs", "r2"],
            ["r7"],
            "template pending: waiting for r7\n",
            "interface r7 does not exist (yet); the template is pending until it appears",
        ),
        (  # trial 14 F9: a wildcard that matches nothing
            [*ADD, "d+"],
            ["d+"],
            "route pending: waiting for r7\n",
            "no interface matches d+ (yet); the route is pending until it appears",
        ),
    ],
)
def test_the_warning_names_a_template_and_a_wildcard_as_what_they_are(
    tmp_path: Path, words: list[str], missing: list[str], out: str, warning: str
) -> None:
    result = {"dry_run": False, "state": "pending", "reason": "waiting for r7", "missing": missing}
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    status, printed, err = run_cli("--socket", str(fake.path), *words)
    fake.close()
    assert (status, printed, err) == (0, out, f"mfcctl: warning: {warning}\n")


def test_a_batch_of_routes_and_templates_counts_each(tmp_path: Path) -> None:
    """Trial 14 F16: 4 routes and 2 templates were "6 added"."""
    result = {"dry_run": False, "changes": 7, "added": 6, "deleted": 1, "updated": 0}
    result.update(templates_added=2, templates_deleted=1)
    status, out, _ = batch_answered(tmp_path, result)
    assert (status, out) == (0, "4 routes and 2 templates added, 1 template deleted\n")


def batch_answered(tmp_path: Path, result: dict[str, Any]) -> tuple[int, str, str]:
    """What `mfcctl batch` prints when mfcd answers with `result`."""
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    batch = tmp_path / "routes.batch"
    batch.write_text("mfc del --source 10.0.0.1 --group 239.1.1.1\n")
    answered = run_cli("--socket", str(fake.path), "batch", str(batch))
    fake.close()
    return answered


@pytest.mark.parametrize(
    ("pending", "degraded", "warning"),
    [
        (
            0,
            1,
            "1 route is degraded: interface r9 does not exist (yet); each forwards out of"
            " its other oifs until it appears",
        ),
        (
            2,
            3,
            "2 routes are pending and 3 degraded: interface r9 does not exist (yet); each"
            " is complete when it appears",
        ),
        (
            1,
            0,
            "1 route is pending: interface r9 does not exist (yet); each is installed when"
            " it appears",
        ),
    ],
)
def test_a_batch_warns_of_its_pending_and_degraded_routes(
    tmp_path: Path, pending: int, degraded: int, warning: str
) -> None:
    result = {
        "dry_run": False,
        "changes": 5,
        "added": 5,
        "deleted": 0,
        "updated": 0,
        "pending": pending,
        "degraded": degraded,
        "missing": ["r9"],
    }
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    batch = tmp_path / "routes.batch"
    batch.write_text("mfc del --source 10.0.0.1 --group 239.1.1.1\n")
    status, out, err = run_cli("--socket", str(fake.path), "batch", str(batch))
    fake.close()
    assert (status, out, err) == (0, "5 added, 0 deleted\n", f"mfcctl: warning: {warning}\n")


def test_a_batch_prints_a_summary_and_warns_about_its_pending_routes(tmp_path: Path) -> None:
    result = {
        "dry_run": False,
        "changes": 10003,
        "added": 10000,
        "deleted": 2,
        "updated": 1,
        "pending": 7,
        "missing": ["r1", "r2", "r3", "r4", "r5"],
    }
    status, out, err = batch_answered(tmp_path, result)
    assert (status, out) == (0, "10000 added, 2 deleted, 1 updated\n")
    assert err == (
        "mfcctl: warning: 7 routes are pending: interfaces r1, r2, r3 and 2 more do not exist"
        " (yet); each is installed when they appear\n"
    )


def test_vif_set_threshold_default_sends_the_default(daemon: FakeDaemon) -> None:
    argv = ["--socket", str(daemon.path), "vif", "set", "r1", "--threshold", "default"]
    assert run_cli(*argv) == (0, "", "")
    daemon.close()
    [request] = daemon.requests
    assert request["args"] == {"interface": "r1", "threshold": protocol.DEFAULT_THRESHOLD}


@pytest.mark.parametrize(
    ("options", "args"),
    [
        (["--threshold", "8", "--table", "100"], {"threshold": 8, "table": 100}),
        (["--threshold", "default", "--table", "100"], {"threshold": "default", "table": 100}),
        (["--table", "video", "--threshold", "1"], {"threshold": 1, "table": "video"}),
    ],
)
def test_vif_set_table_sends_the_table(
    daemon: FakeDaemon, options: list[str], args: dict[str, Any]
) -> None:
    assert run_cli("--socket", str(daemon.path), "vif", "set", "r1", *options) == (0, "", "")
    daemon.close()
    [request] = daemon.requests
    assert request["args"] == {"interface": "r1", **args}


def test_the_default_threshold_is_the_models() -> None:
    from mfcd import model  # noqa: PLC0415 (mfcctl itself must not import it)

    assert protocol.DEFAULT_THRESHOLD == model.DEFAULT_THRESHOLD


def test_daemon_errors_map_to_exit_statuses(tmp_path: Path) -> None:
    error = {"code": "not_found", "message": "no route for source 10.0.0.1 group 239.1.1.1"}
    fake = FakeDaemon(tmp_path / "s", {"ok": False, "error": error})
    status, out, err = run_cli("--socket", str(fake.path), "mfc", "del", *ADD[2:6])
    fake.close()
    assert (status, out) == (protocol.EXIT_NOT_FOUND, "")
    assert err == f"mfcctl: {error['message']}\n"


@pytest.mark.parametrize("output", ["table", "json"])
def test_a_refusal_of_what_the_files_declare_says_where_once(tmp_path: Path, output: str) -> None:
    message = (
        "the route 10.0.0.1 -> 239.1.1.1 is declared in /etc/mfcd/mfc_daemon.conf:12; change it"
        " there and reload (mfcctl reload)"
    )
    error: dict[str, Any] = {"code": "declared_in_config", "message": message}
    error.update(file="/etc/mfcd/mfc_daemon.conf", line=12)
    fake = FakeDaemon(tmp_path / "s", {"ok": False, "error": error})
    status, out, err = run_cli("--socket", str(fake.path), "-o", output, "mfc", "del", *ADD[2:6])
    fake.close()
    assert (status, err) == (protocol.EXIT_REJECTED, f"mfcctl: {message}\n")
    assert out == ("" if output == "table" else json.dumps({"error": error}) + "\n")


@pytest.mark.parametrize(
    ("argv", "cmd"),
    [
        (["show", "routes"], "show"),
        (["show", "routes", "-s", "--table", "100"], "show"),
        (["show", "interfaces"], "vif.show"),
        (["show", "interfaces", "--stats", "--table", "studio"], "vif.show"),
    ],
)
def test_show_routes_and_interfaces_as_smcroutectl_says_them(
    tmp_path: Path, argv: list[str], cmd: str
) -> None:
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": {"vifs": [], "routes": []}})
    status, _, err = run_cli("--socket", str(fake.path), *argv)
    fake.close()
    assert (status, err) == (protocol.EXIT_OK, "")
    request = fake.requests[-1]
    assert request["cmd"] == cmd
    table = {"100": 100, "studio": "studio"}.get(argv[-1])
    stats = "-s" in argv or "--stats" in argv
    assert request["args"] == {"stats": stats, **({"table": table} if table else {})}


def test_unreachable_daemon_is_exit_status_3(tmp_path: Path) -> None:
    status, out, err = run_cli("--socket", str(tmp_path / "nothing-here.sock"), "ping")
    assert status == protocol.EXIT_UNREACHABLE == 3
    assert out == ""
    assert err.startswith("mfcctl: cannot reach mfcd")
    assert err.count("\n") == 1 and err.endswith("\n")


def test_a_socket_path_that_does_not_exist_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "typo.sock"
    status, _, err = run_cli("--socket", str(path), "ping")
    assert status == protocol.EXIT_UNREACHABLE
    assert err.startswith(f"mfcctl: cannot reach mfcd at {path}: {path} does not exist")
    assert "--socket" in err and "nothing is listening" not in err


def test_a_socket_nobody_serves_is_nothing_listening(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # the file stays after close, as after a crash
    status, _, err = run_cli("--socket", str(path), "ping")
    assert status == protocol.EXIT_UNREACHABLE
    assert "nothing is listening" in err


def test_socket_path_that_is_no_socket_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "plain-file"
    path.write_text("")
    status, _, err = run_cli("--socket", str(path), "show")
    assert status == protocol.EXIT_USAGE
    assert err.startswith("mfcctl: cannot reach mfcd") and "not a socket" in err


# --- batch files ---------------------------------------------------------------------------------


def test_unreadable_batch_file_is_a_usage_error(tmp_path: Path) -> None:
    status, _, err = run_cli("--socket", str(tmp_path / "s"), "batch", str(tmp_path / "nope"))
    assert status == protocol.EXIT_USAGE
    assert err.startswith("mfcctl: cannot read")


def test_a_batch_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    batch = tmp_path / "routes.batch"
    batch.write_bytes(b"mfc del --source 10.0.0.1 --group 239.1.1.\xff\n")
    status, _, err = run_cli("--socket", str(tmp_path / "s"), "batch", str(batch))
    assert status == protocol.EXIT_USAGE
    assert err == f"mfcctl: cannot read {batch}: not UTF-8 text\n"


class Served(FakeDaemon):
    """mfcd's request handling (mfcd.commands, on the fake kernel) behind a real socket."""

    def __init__(self, path: Path) -> None:
        from mfcd.commands import Commands, Peer  # noqa: PLC0415 (mfcctl must not import it)
        from mfcd.controller import Controller  # noqa: PLC0415
        from tests.unit.conftest import FakeKernel, FakeState  # noqa: PLC0415

        controller = Controller(FakeKernel(), FakeState())
        for ifindex, name in enumerate(("r0", "r1"), 1):
            controller.link_up(name, ifindex)
        self.commands, self.peer = Commands(controller, (4, 6)), Peer(1, 0, 0)
        self.responses: list[dict[str, Any]] = []
        super().__init__(path, {})

    def respond(self, line: bytes) -> bytes:
        response = self.commands.handle(line, self.peer)
        self.responses.append(json.loads(response))
        return response


BAD_THIRD_LINE = """\
# a comment, then a good line and a bad one
mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1
mfc del --source 10.0.0.9 --group 239.1.1.1
"""


@pytest.mark.parametrize("output", ["table", "json"])
def test_a_batch_error_names_the_file_and_line(tmp_path: Path, output: str) -> None:
    batch = tmp_path / "routes.batch"
    batch.write_text(BAD_THIRD_LINE)
    daemon = Served(tmp_path / "s")
    status, out, err = run_cli("--socket", str(daemon.path), "-o", output, "batch", str(batch))
    daemon.close()
    message = "no route for source 10.0.0.9 group 239.1.1.1"
    error = {"code": "not_found", "message": message, "line": 3}
    assert daemon.responses[-1]["error"] == error  # where: in the error object, not the text
    assert (status, err) == (protocol.EXIT_NOT_FOUND, f"mfcctl: {batch}:3: {message}\n")
    assert out == ("" if output == "table" else json.dumps({"error": error}) + "\n")


def test_a_batch_syntax_error_names_the_line_of_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n\nmfc add --source 10.0.0.1\n"))
    daemon = Served(tmp_path / "s")
    status, _, err = run_cli("--socket", str(daemon.path), "batch", "-")
    daemon.close()
    assert daemon.responses[-1]["error"]["line"] == 3
    assert (status, err) == (protocol.EXIT_USAGE, "mfcctl: stdin:3: `mfc add` needs --group\n")


def test_an_error_of_an_op_is_printed_with_its_number(tmp_path: Path) -> None:
    error = {"code": "invalid_argument", "message": "group 10.0.0.3 is not multicast", "op": 2}
    fake = FakeDaemon(tmp_path / "s", {"ok": False, "error": error})
    status, out, err = run_cli("--socket", str(fake.path), "-o", "json", *ADD, "r1")
    fake.close()
    assert (status, err) == (protocol.EXIT_REJECTED, f"mfcctl: op 2: {error['message']}\n")
    assert json.loads(out) == {"error": error}


def test_the_epilog_lists_every_exit_status_from_the_table() -> None:
    epilog = cli.build_parser().epilog or ""
    assert epilog.splitlines()[0] == "exit status:"
    for status, text in protocol.EXIT_STATUSES.items():
        assert f"\n  {status}  {text.split()[0]}" in epilog
    assert all(len(line) < 80 for line in epilog.splitlines())
    assert " ".join(epilog.split()) == "exit status: " + " ".join(
        f"{status} {text}" for status, text in protocol.EXIT_STATUSES.items()
    )


# --- output --------------------------------------------------------------------------------------


def vif(family: str, index: int, name: str, ifindex: int | None = 7) -> dict[str, Any]:
    return {
        "family": family,
        "vif": index,
        "interface": name,
        "ifindex": ifindex,
        "present": ifindex is not None,
        "threshold": 1,
        "routes": 2,
    }


def route(
    source: str, group: str, iif: str, oifs: list[str], state: str = "installed"
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "family": "ipv6" if ":" in source else "ipv4",
        "source": source,
        "group": group,
        "iif": iif,
        "oifs": oifs,
        "state": state,
    }
    if state != "installed":
        out.update(missing=oifs[:1], reason=f"waiting for {oifs[0]}")
    return out


def with_stats(result: dict[str, Any]) -> dict[str, Any]:
    counters = {"packets": 123456, "bytes": 98765432, "wrong_if": 3}
    vif_counters = {"packets_in": 1, "packets_out": 2, "bytes_in": 3000, "bytes_out": 4_000_000}
    return {
        "vifs": [dict(v, stats=vif_counters) for v in result["vifs"]],
        "routes": [dict(r, stats=counters) for r in result["routes"]],
    }


def column_starts(header: str, names: list[str]) -> list[int]:
    return [header.index(name) for name in names]


def test_show_aligns_columns() -> None:
    result = {
        "vifs": [vif("ipv4", 0, "r0", 3), vif("ipv4", 1, "eth10", None), vif("ipv6", 12, "r1")],
        "routes": [
            route("10.0.0.1", "239.1.1.1", "r0", ["r1", "r2"]),
            route("192.168.100.200", "239.255.0.1", "eth10", ["r3"], "pending"),
            route("2001:db8::1", "ff0e::1", "r1", ["r0"]),
        ],
    }
    text = cli.format_show(result, 80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    routes_at = lines.index("Routes (3)")
    header, *rows = lines[routes_at + 1 :]
    starts = column_starts(header, ["SOURCE", "GROUP", "IIF", "OIFS", "STATE"])
    for row, r in zip(rows, result["routes"], strict=True):
        cells = [r["source"], r["group"], r["iif"], ",".join(r["oifs"]), r["state"]]
        assert [row.index(c, s) for c, s in zip(cells, starts, strict=True)] == starts, row
    vif_header = lines[1]
    # Numbers are right-aligned: each VIF index ends where its header does.
    end = vif_header.index("VIF") + len("VIF")
    assert [line[end - 2 : end].strip() for line in lines[2:5]] == ["0", "1", "12"]
    assert "absent" in lines[3]


@pytest.mark.parametrize("stats", [False, True], ids=["plain", "stats"])
def test_show_fits_80_columns_with_long_addresses_and_names(stats: bool) -> None:
    oifs = [NAME15, NAME15[::-1]]
    result = {
        "vifs": [vif("ipv6", 31, NAME15, 2_147_483_647), vif("ipv6", 30, oifs[-1])],
        "routes": [
            route(V6_SOURCE, V6_GROUP, NAME15, oifs),
            route("10.0.0.1", "239.1.1.1", "r0", ["r1"]),
        ],
    }
    text = cli.format_show(with_stats(result) if stats else result, 80)
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert too_long == []
    assert V6_SOURCE in text and V6_GROUP in text  # nothing is cut off
    assert NAME15 in text


def test_show_with_nothing() -> None:
    assert (
        cli.format_show({"vifs": [], "routes": []}, 80)
        == "VIFs (0)\n  (none)\n\nRoutes (0)\n  (none)"
    )


def test_format_plan() -> None:
    plan = {
        "plan": [
            {"action": "add_vif", "family": "ipv4", "vif": 0, "interface": "r0"},
            {
                "action": "add_mfc",
                "family": "ipv4",
                "source": "10.0.0.1",
                "group": "239.1.1.1",
                "parent": 0,
                "oifs": [1, 2],
            },
            {"action": "del_mfc", "family": "ipv6", "source": "2001:db8::1", "group": "ff0e::1"},
        ]
    }
    assert cli.format_plan(plan).splitlines() == [
        "add vif ipv4 VIF 0 (r0)",
        "add mfc ipv4 10.0.0.1 -> 239.1.1.1 iif VIF 0 oifs VIF 1,2",
        "del mfc ipv6 2001:db8::1 -> ff0e::1",
    ]
    assert cli.format_plan({"plan": []}) == "no kernel changes needed"


def test_format_plan_of_a_dry_run_names_interfaces_and_templates() -> None:
    mfc: dict[str, Any] = {"action": "add_mfc", "family": "ipv4", "source": "10.0.0.1"}
    mfc.update(group="239.1.1.1", parent=0, oifs=[2, 3], iif="r0", oif_names=["r2", "r3"])
    template: dict[str, Any] = {"action": "add_template", "family": "ipv4", "source": "*"}
    template.update(table=253, group="239.4.2.0/24", iif="r0", oifs=["r1"])
    changed = dict(template, action="change_template", was=["r1", "r2"])
    removed = {k: v for k, v in template.items() if k != "oifs"}
    assert cli.format_plan({"plan": [mfc, template, changed]}).splitlines() == [
        "add mfc ipv4 10.0.0.1 -> 239.1.1.1 iif r0 oifs r2,r3 (VIF 0 -> 2,3)",
        "add template ipv4 * -> 239.4.2.0/24 iif r0 oifs r1  (no MFC entry until a source is"
        " learned)",
        "change template ipv4 * -> 239.4.2.0/24 iif r0 oifs r1 (was r1,r2)  (no MFC entry until"
        " a source is learned)",
    ]
    removed["action"] = "remove_template"
    assert cli.format_plan({"plan": [removed]}) == "remove template ipv4 * -> 239.4.2.0/24 iif r0"


# --- start-up cost -------------------------------------------------------------------------------


def test_importing_the_cli_pulls_in_no_daemon_code() -> None:
    heavy = [
        "asyncio",
        "logging",
        "dataclasses",
        "mfcd.model",
        "mfcd.daemon",
        "mfcd.server",
        "mfcd.controller",
    ]
    code = f"import sys, mfcd.cli; print([m for m in {heavy!r} if m in sys.modules])"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize(
    ("argv", "dry_run", "verbose"),
    [
        (["show", "-v"], False, True),
        (["-v", "show"], False, True),
        (["sync", "-n"], True, False),
        (["batch", "f", "--dry-run", "--verbose"], True, True),
        (["-n", "vif", "set", "r1", "--threshold", "3"], True, False),
        (["vif", "set", "r1", "--threshold", "3", "-n"], True, False),
    ],
)
def test_global_options_may_follow_the_command(
    argv: list[str], dry_run: bool, verbose: bool
) -> None:
    parsed = cli.build_parser().parse_args(argv)
    assert (parsed.dry_run, parsed.verbose) == (dry_run, verbose)


def test_version_comes_from_the_package_constant() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--version"], out, err) == 0
    assert out.getvalue() == f"mfcctl {mfcd.__version__}\n"


@pytest.mark.parametrize(
    "line",
    [
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1,r2",
        "--socket /x -n -v mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 r2"
        " -o json",
        "-o json mfc del --source 10.0.0.1 --group 239.1.1.1",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 r2 -n -o json -v",
        "-v mfc del --source 10.0.0.1 --group 239.1.1.1 --dry-run",
        "mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs r3",
        "-n mfc oif del --source 10.0.0.1 --group 239.1.1.1 --oifs r1 r2,r3 -o json",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table 100",
        "mfc del --table default --source 10.0.0.1 --group 239.1.1.1",
        "mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs r3 --table=studio",
        "mfc add --group 239.1.1.1 --iif r0 --oifs r1,r2",
        "mfc add --source 198.18.0.0/16 --group 239.2.0.0/24 --iif r0 --oifs r1",
        "mfc del --group 239.1.1.1",
        "mfc del --group ff3e::2:0/112 --iif r0 -n",
        "ping",
        "--socket /x -o json ping",
        "ping -o json -v",
        "-n ping --verbose",
        "show",
        "show -s",
        "-o table show --stats -o json",
        "--socket /x -v show -o table -s",
        "-n show",
        "batch routes.txt",
        "batch -",
        "--socket /x -o json batch -n -",
        "batch -v f --dry-run -o json",
        "-o json batch -o table show",  # the file is called "show"
        "--socket show ping",  # the socket is called "show"
    ],
)
def test_common_commands_parse_without_argparse_exactly_as_with_it(line: str) -> None:
    argv = line.split()
    fast = cli._parse_common(argv)
    assert fast is not None
    slow = vars(cli.build_parser().parse_args(argv))
    if "oifs" in slow:
        slow["oifs"] = batchfile.split_oifs(slow["oifs"])
    assert vars(fast) == slow


@pytest.mark.parametrize(
    "argv",
    [
        ["mfc", "add", "--help"],
        ["mfc", "add", "--source", "10.0.0.1"],
        ["mfc", "add", "--sou", "10.0.0.1", "--group", "g", "--iif", "a", "--oifs", "b"],
        ["--socket=/x", "mfc", "del", "--source", "s", "--group", "g"],
        ["mfc", "oif", "--source", "s", "--group", "g", "--oifs", "r1"],
        ["mfc", "oif", "add", "--help"],
        ["mfc", "oif", "add", "--source", "s", "--group", "g", "--iif", "r0", "--oifs", "r1"],
        ["--socket", "-n", "ping"],
        ["--socket"],
        ["-o", "yaml", "ping"],
        ["-o"],
        ["-n"],
        [],
        ["ping", "--help"],
        ["ping", "-n"],
        ["ping", "extra"],
        ["ping", "-o"],
        ["show", "-w", "1"],
        ["show", "--watch", "1"],
        ["show", "--stat"],
        ["show", "-sv"],
        ["show", "-n"],
        ["show", "-o", "yaml"],
        ["show", "-h"],
        ["batch"],
        ["batch", "a", "b"],
        ["batch", "-x"],
        ["batch", "--", "-x"],
        ["batch", "--output=json", "f"],
        ["sync"],
        ["vif", "show"],
        ["--version"],
    ],
)
def test_anything_else_goes_to_argparse(argv: list[str]) -> None:
    assert cli._parse_common(argv) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--socket", "-n", "ping"],
        ["ping", "-n"],
        ["ping", "extra"],
        ["show", "-n"],
        ["show", "-o", "yaml"],
        ["batch"],
        ["batch", "a", "b"],
        ["batch", "-x"],
    ],
)
def test_mistakes_near_the_fast_path_are_argparse_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(*argv)
    captured = capsys.readouterr()
    assert status == protocol.EXIT_USAGE
    assert "usage: mfcctl" in err + captured.err
    assert out + captured.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["ping"],
        ["show", "-s", "-o", "json"],
        ["batch", "-"],
    ],
)
def test_common_commands_do_not_import_argparse(argv: list[str]) -> None:
    code = (
        "import sys; from mfcd.cli import main; "
        f"status = main(['--socket', '/nonexistent', *{argv!r}]); "
        "assert status == 3, status; assert 'argparse' not in sys.modules, 'argparse'"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_route_change_does_not_import_argparse() -> None:
    code = (
        "import sys; from mfcd.cli import main; "
        "status = main(['--socket', '/nonexistent', 'mfc', 'del', '--source', '10.0.0.1',"
        " '--group', '239.1.1.1']); "
        "assert status == 3, status; assert 'argparse' not in sys.modules, 'argparse'"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_show_groups_the_routes_of_several_tables_under_a_header_each() -> None:
    result = {
        "vifs": [dict(vif("ipv4", 0, "r1"), table=100), dict(vif("ipv4", 0, "r0"), table=253)],
        "routes": [
            dict(route("10.0.0.2", "239.1.1.1", "r1", ["r3"]), table=100),
            dict(route("10.0.0.1", "239.1.1.1", "r0", ["r2"]), table=253),
            dict(route("2001:db8::1", "ff0e::1", "r0", ["r2"]), table=254),
        ],
    }
    lines = cli.format_show(result, 80).splitlines()
    assert lines[1].split() == [
        "FAMILY",
        "TABLE",
        "VIF",
        "INTERFACE",
        "IFINDEX",
        "THRESHOLD",
        "ROUTES",
    ]
    assert lines[2].split()[:4] == ["ipv4", "100", "0", "r1"]
    headers = [line for line in lines if line.startswith(("Table ", "Routes "))]
    assert headers == [
        "Table 100 (ipv4)",
        "Routes (1)",
        "Table 253 (ipv4)",
        "Routes (1)",
        "Table 254 (ipv6)",
        "Routes (1)",
    ]
    assert lines[lines.index("Table 100 (ipv4)") + 3].split()[:2] == ["10.0.0.2", "239.1.1.1"]
    # Only default tables: the layout without tables, as before.
    plain = {"vifs": result["vifs"][1:], "routes": result["routes"][1:]}
    assert "Table" not in cli.format_show(plain, 80) and "TABLE" not in cli.format_show(plain, 80)


def test_a_plan_names_a_table_other_than_the_default() -> None:
    plan = [
        {"action": "add_vif", "family": "ipv4", "table": 100, "vif": 0, "interface": "r1"},
        {
            "action": "del_mfc",
            "family": "ipv6",
            "table": 254,
            "source": "2001:db8::1",
            "group": "ff3e::1",
        },
    ]
    assert cli.format_plan({"plan": plan}).splitlines() == [
        "add vif ipv4 table 100 VIF 0 (r1)",
        "del mfc ipv6 2001:db8::1 -> ff3e::1",
    ]


def test_show_lists_templates_and_marks_learned_entries() -> None:
    learned = {
        "family": "ipv4",
        "table": 253,
        "source": "198.18.0.2",
        "group": "239.1.1.1",
        "iif": "r0",
        "oifs": ["r1"],
        "state": "installed",
        "origin": "learned",
        "learned_from": {"source": "*", "group": "239.1.1.1", "iif": "r0"},
        "age": 12.4,
    }
    template = dict(learned, source="*", origin="api", template=True, learned=1)
    del template["learned_from"], template["age"]
    text = cli.format_show({"vifs": [], "routes": [learned, template]}, 120)
    assert "Templates (1)" in text and "Routes (1)" in text
    assert "installed, learned 12s from * 239.1.1.1" in text
    [row] = [line for line in text.splitlines() if line.startswith("*")]
    assert row.split() == ["*", "239.1.1.1", "r0", "r1", "installed", "1"]


def test_show_stats_says_what_learning_did_in_80_columns() -> None:
    learning = {
        "entries": 100000,
        "max_learned": 100000,
        "idle_timeout": 60.0,
        "learned": 123456789,
        "expired": 123456789,
        "dropped": 123456789,
        "unmatched": 123456789,
        "repointed": 123456,
    }
    text = cli.format_show({"vifs": [], "routes": [], "learning": learning}, 80)
    assert "Learning: 100000 entries now" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    quiet = dict(learning, learned=0, unmatched=0)
    assert "Learning" not in cli.format_show({"vifs": [], "routes": [], "learning": quiet}, 80)


def test_vif_show_text_lists_threshold_mrdisc_and_origin() -> None:
    settings = [
        {"interface": "a", "threshold": 3, "mrdisc": False, "threshold_origin": "api"},
        {"interface": "b", "threshold": 16, "mrdisc": True, "threshold_origin": "config"}
        | {"mrdisc_origin": "config"},
        {"interface": "c", "threshold": 1, "mrdisc": True, "mrdisc_origin": "api"},
        {"interface": "d", "threshold": 4, "mrdisc": False, "threshold_origin": "api"}
        | {"mrdisc_origin": "config"},
    ]
    text = cli.format_vif_show({"vifs": [], "settings": settings})
    assert [line.split() for line in text.splitlines()[3:]] == [
        ["Interface", "settings", "(4)"],
        ["INTERFACE", "THRESHOLD", "MRDISC", "ORIGIN"],
        ["a", "3", "-", "api"],
        ["b", "16", "on", "config"],
        ["c", "-", "on", "api"],
        ["d", "4", "off", "threshold", "api,", "mrdisc", "config"],
    ]
    empty = cli.format_vif_show({"vifs": [], "settings": []})
    assert empty.endswith("(none: every interface uses threshold 1, mrdisc off)")


def test_a_reload_plan_names_the_table_of_a_threshold() -> None:
    step = {"action": "threshold", "interface": "r1", "table": 100, "threshold": 6}
    assert cli._reload_step(step) == "set threshold 6 on r1 in table 100"
    assert cli._reload_step(dict(step, threshold=None)) == (
        "set threshold default on r1 in table 100"
    )


def test_vif_show_text_gives_a_table_column_for_thresholds_of_one_table() -> None:
    settings = [
        {"interface": "a", "threshold": 3, "mrdisc": True, "threshold_origin": "api"}
        | {"mrdisc_origin": "api"},
        {"interface": "a", "table": 100, "threshold": 9, "threshold_origin": "config"},
    ]
    text = cli.format_vif_show({"vifs": [], "settings": settings})
    assert [line.split() for line in text.splitlines()[3:]] == [
        ["Interface", "settings", "(2)"],
        ["INTERFACE", "TABLE", "THRESHOLD", "MRDISC", "ORIGIN"],
        ["a", "all", "3", "on", "api"],
        ["a", "100", "9", "-", "config"],
    ]


def test_a_leave_that_found_some_joins_left_says_which() -> None:
    gone = [{"interface": "r1", "group": f"239.1.1.{n}", "source": "*"} for n in range(4)]
    gone[0]["source"] = "198.18.0.2"
    text = cli._already_left({"left": 1, "already_left": gone})
    assert text == (
        "left 1 join; 4 were not joined (left before): 239.1.1.0 on r1 for source 198.18.0.2,"
        " 239.1.1.1 on r1, 239.1.1.2 on r1 and 1 more"
    )
    dry = cli._already_left({"dry_run": True, "left": 3, "already_left": gone[1:2]})
    assert dry == "would leave 3 joins; 1 was not joined (left before): 239.1.1.1 on r1"


def test_batch_help_names_every_kind_of_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["batch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind in ("`mfc add", "`mfc del", "`mfc oif add|del", "`join", "`leave"):
        assert kind in text


@pytest.mark.parametrize("oifs", [["r1,,r2"], [","], ["r1,"], ["r1", ",,r2"]])
@pytest.mark.parametrize(
    "command",
    [ADD, ["mfc", "oif", "add", "--source", "10.0.0.1", "--group", "239.1.1.1", "--oifs"]],
)
def test_an_empty_oif_name_is_a_usage_error(command: list[str], oifs: list[str]) -> None:
    status, out, err = run_cli("--socket", "/nonexistent", *command, *oifs)
    assert status == protocol.EXIT_USAGE and out == ""
    assert err.startswith("mfcctl: --oifs has an empty interface name (as in r1,,r2")


def test_vif_set_of_an_interface_that_does_not_exist_warns_that_it_applies_later(
    tmp_path: Path,
) -> None:
    result = {"dry_run": False, "changes": 1, "missing": ["r8"]}
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    status, out, err = run_cli("--socket", str(fake.path), "vif", "set", "r8", "--threshold", "3")
    fake.close()
    assert (status, out) == (0, "")
    assert err == (
        "mfcctl: warning: interface r8 does not exist (yet); the setting is kept and applies"
        " when it appears\n"
    )


def test_an_ipv6_vif_shows_its_threshold_as_a_dash() -> None:
    vifs = [dict(vif("ipv4", 0, "r1"), threshold=5), dict(vif("ipv6", 0, "r1"), threshold=None)]
    lines = cli.format_vifs(vifs, stats=False)
    assert lines[2].split() == ["ipv4", "0", "r1", "7", "5", "2"]
    assert lines[3].split() == ["ipv6", "0", "r1", "7", "-", "2"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_reload_prints_its_warnings_on_stderr(tmp_path: Path, dry_run: bool) -> None:
    """Settings kept until a restart and routes waiting for interfaces (a typo) are seen,
    in the dry run too; the summary stays on stdout."""
    warnings = [
        "metrics_listen changes only at restart; mfcd keeps '' until then",
        "1 route is pending (waiting for r7): no such interface (yet)",
    ]
    summary = "0 added, 0 removed, 0 changed, 4 unchanged"
    result = {"dry_run": dry_run, "plan": [], "summary": summary, "warnings": warnings}
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    argv = ["--socket", str(fake.path), "reload", *(["-n"] if dry_run else [])]
    status, out, err = run_cli(*argv)
    fake.close()
    assert (status, err) == (0, "".join(f"mfcctl: warning: {w}\n" for w in warnings))
    # A dry run with nothing to do says so, not "mfcd would:" followed by nothing.
    assert out == (f"dry run: nothing to change\n{summary}\n" if dry_run else f"{summary}\n")


@pytest.mark.parametrize(("given", "sent"), [("100", 100), ("video", "video"), (None, None)])
def test_batch_table_is_the_table_of_the_lines_that_name_none(
    tmp_path: Path, given: str | None, sent: int | str | None
) -> None:
    result = {"dry_run": False, "changes": 1, "added": 1, "deleted": 0, "updated": 0}
    fake = FakeDaemon(tmp_path / "s", {"ok": True, "result": result})
    batch = tmp_path / "routes.batch"
    batch.write_text("mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1\n")
    table = [] if given is None else ["--table", given]
    status, _, err = run_cli("--socket", str(fake.path), "batch", *table, str(batch))
    fake.close()
    assert (status, err) == (0, "")
    [request] = fake.requests
    assert request["cmd"] == "batch"
    assert request["args"].get("table") == sent
    assert ("table" in request["args"]) == (given is not None)
