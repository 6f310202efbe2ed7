"""mfcctl, the command-line client: builds a request, sends it to mfcd, prints the answer.

It imports only the standard library and mfcd.protocol (no asyncio, logging or
dataclasses) so that it starts in a few milliseconds; a test guards that. One
exception, taken on purpose: `import-smcroute`, an offline converter run once per
migration, loads mfcd's own config reader (mfcd.declarations) when it runs, to prove
the file it writes is one mfcd accepts (about 50 ms more for that command only).
"""

from __future__ import annotations

import _socket  # not `socket`: that also imports selectors and more, a few ms per start
import grp
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from mfcd import __version__, batchfile, protocol

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a few milliseconds at every start; annotations only need it here
    import argparse  # imported when a parser is built: `mfc add`/`mfc del` never need one
    from typing import Any, NoReturn, TextIO


def exit_codes_help(width: int = 79) -> str:
    """The exit statuses for --help's epilog, from protocol.EXIT_STATUSES."""
    lines = ["exit status:"]
    for status, text in protocol.EXIT_STATUSES.items():
        line = f"  {status} "
        for word in text.split():
            if len(line) + 1 + len(word) > width:
                lines.append(line)
                line = "    "
            line += " " + word
        lines.append(line)
    return "\n".join(lines) + "\n"


DAEMON_USER = "mfc"  # the user mfc_daemon.service runs mfcd as


RECONNECT_SECONDS = 0.5  # monitor --reconnect: between tries to reach mfcd again


class CliError(Exception):
    """A failure reported as one line on stderr with an exit status.

    A batch the daemon refused says where: `op` (of a batch of ops) or `line` (of the
    batch text, read from `file`), both counted from 1. A config error's `file` and `line`
    come from the daemon, whose message starts with them already (a declared_in_config's
    names them after "declared in").
    """

    def __init__(
        self,
        message: str,
        status: int,
        code: str = "",
        op: int | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.op = op
        self.line = line
        self.file = ""
        self.placed_by_daemon = False  # `file` came in the daemon's error, not from mfcctl

    def located(self) -> str:
        """The message after where it applies: `FILE:LINE: ...` as compilers say it, `op N: ...`;
        as it is if it names that FILE:LINE already (a declared_in_config's "declared in")."""
        if self.line is not None:
            place = f"{self.file}:{self.line}: " if self.file else f"line {self.line}: "
            named = self.file and self.placed_by_daemon and place[:-2] in str(self)
            return str(self) if named or str(self).startswith(place) else place + str(self)
        if self.op is not None:
            return f"op {self.op}: {self}"
        return str(self)

    def as_json(self) -> dict[str, Any]:
        """The error as `-o json` prints it: the daemon's code, message and position."""
        error: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.op is not None:
            error["op"] = self.op
        if self.file and self.placed_by_daemon:
            error["file"] = self.file
        if self.line is not None:
            error["line"] = self.line
        return {"error": error}


class UsageError(SystemExit):
    """argparse's usage error: SystemExit(2) as argparse raises it, with its message kept
    so that main() can also print it as JSON for `-o json`."""

    def __init__(self, message: str) -> None:
        super().__init__(protocol.EXIT_USAGE)
        self.message = message


def usage_json(message: str) -> dict[str, Any]:
    """A usage error as `-o json` prints it: the shape of the daemon's errors, code `usage`."""
    return {"error": {"code": "usage", "message": message}}


# --- talking to the daemon -----------------------------------------------------------------------


class Client:
    def __init__(self, path: str, verbose: bool = False, stderr: TextIO = sys.stderr) -> None:
        self.path = path
        self.verbose = verbose
        self.stderr = stderr
        self._sock: _socket.socket | None = None
        self._buffer = b""
        self._next_id = 1

    def _connect(self) -> _socket.socket:
        if self._sock is not None:
            return self._sock
        if not self.path:
            raise CliError("--socket needs a path", protocol.EXIT_USAGE)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if _exists_but_not_a_socket(self.path):
                raise CliError(
                    f"cannot reach mfcd at {self.path}: that is not a socket — check --socket"
                    f" or ${protocol.SOCKET_ENV}",
                    protocol.EXIT_USAGE,
                ) from None
            raise CliError(
                f"cannot reach mfcd at {self.path}: {_why_no_answer(self.path)}",
                protocol.EXIT_UNREACHABLE,
            ) from None
        except PermissionError:
            sock.close()
            raise CliError(
                f"cannot reach mfcd at {self.path}: permission denied — {_who_may(self.path)}",
                protocol.EXIT_PERMISSION,
            ) from None
        except OSError as e:
            sock.close()
            raise CliError(
                f"cannot reach mfcd at {self.path}: {e.strerror}", protocol.EXIT_UNREACHABLE
            ) from None
        try:
            _check_server(sock, self.path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return sock

    def call(self, cmd: str, args: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """Send one request; return its result or raise CliError with the daemon's message."""
        sock = self._connect()
        request_id = self._next_id
        request = protocol.encode_request(cmd, args, request_id, dry_run)
        self._next_id += 1
        if self.verbose:
            print(f"> {_clip(request)}", file=self.stderr)
        started = time.perf_counter()
        try:
            # mfcd may refuse a request (too large) and close before it is all sent: then
            # read why, if it said so.
            try:  # noqa: SIM105 (importing contextlib would cost a millisecond per start)
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass
            line = self._read_line(sock)
        except OSError as e:
            raise CliError(
                f"lost the connection to mfcd: {e.strerror}", protocol.EXIT_UNREACHABLE
            ) from None
        elapsed = time.perf_counter() - started
        if self.verbose:
            print(f"< {_clip(line)}", file=self.stderr)
            print(f"round trip {elapsed * 1000:.2f} ms", file=self.stderr)
        try:
            response = protocol.decode(line)
        except ValueError:
            raise CliError(
                "mfcd sent a response that is not JSON", protocol.EXIT_PROTOCOL
            ) from None
        return self._result(response, request_id, line)

    def _result(self, response: dict[str, Any], request_id: int, line: bytes) -> dict[str, Any]:
        """The result of a response to `request_id`; CliError for an error or anything else."""
        # Only a well-formed answer to this very request counts: anything else (a reply to
        # another id, no result) is an error, never a silent success. An error may carry
        # id null: mfcd could not read the request (too large, timeout, too many clients).
        ok, result, error = response.get("ok"), response.get("result"), response.get("error")
        answer_id = response.get("id")
        if ok is True and answer_id == request_id and isinstance(result, dict):
            return result
        if ok is False and answer_id in (request_id, None) and isinstance(error, dict):
            code = str(error.get("code", "internal_error"))
            status = protocol.ERROR_EXIT.get(code, protocol.EXIT_PROTOCOL)
            message = str(error.get("message", "request failed"))
            failed = CliError(message, status, code, _count(error, "op"), _count(error, "line"))
            if isinstance(error.get("file"), str):  # (a config error's)
                failed.file, failed.placed_by_daemon = error["file"], True
            raise failed
        raise CliError(
            f"mfcd sent a reply that does not answer request {request_id}: {_clip(line, 200)}",
            protocol.EXIT_PROTOCOL,
        )

    def next_event(self) -> dict[str, Any]:
        """The next event of a `monitor` subscription (after call("monitor", ...))."""
        if self._sock is None:
            raise CliError("not subscribed", protocol.EXIT_PROTOCOL)
        try:
            line = self._read_line(self._sock)
        except OSError as e:
            raise CliError(
                f"lost the connection to mfcd: {e.strerror}", protocol.EXIT_UNREACHABLE
            ) from None
        try:
            event = protocol.decode(line).get("event")
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise CliError(
                f"mfcd sent a line that is not an event: {_clip(line, 200)}",
                protocol.EXIT_PROTOCOL,
            )
        return event

    def call_streamed(
        self, cmd: str, args: dict[str, Any], member: str
    ) -> tuple[dict[str, Any], Iterator[Any] | None]:
        """Send one request; return its result's members before `member` and an iterator of
        `member`'s items, read from the socket as they are taken (`show` of 1,000,000 routes
        is never held whole), or None if it has no such array. Errors as call()."""
        from mfcd import jsonstream  # noqa: PLC0415 (only this path reads a stream)

        sock = self._connect()
        request_id = self._next_id
        self._next_id += 1
        try:
            sock.sendall(protocol.encode_request(cmd, args, request_id))
            envelope, items, reader = jsonstream.response(
                lambda: sock.recv(1 << 20), member, self._buffer
            )
        except (ValueError, OSError) as e:
            raise _read_failure(e) from None
        result = self._result(envelope, request_id, json.dumps(envelope).encode())
        if items is None:
            self._buffer = reader.rest
            return result, None
        return result, self._items(items, reader)

    def _items(self, items: Iterator[Any], reader: Any) -> Iterator[Any]:
        try:
            yield from items
        except (ValueError, OSError) as e:
            raise _read_failure(e) from None
        self._buffer = reader.rest

    def _read_line(self, sock: _socket.socket) -> bytes:
        chunks = [self._buffer]
        data = self._buffer
        while b"\n" not in data:
            data = sock.recv(1 << 20)
            if not data:
                raise CliError(
                    "mfcd closed the connection without answering (is it shutting down?)",
                    protocol.EXIT_UNREACHABLE,
                )
            chunks.append(data)
        joined = b"".join(chunks)
        line, _, self._buffer = joined.partition(b"\n")
        return line

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""  # (what was read of the old connection is no answer on a new one)


def _read_failure(e: Exception) -> CliError:
    """What went wrong reading a streamed response (jsonstream: Truncated is a ValueError)."""
    if isinstance(e, OSError):
        return CliError(f"lost the connection to mfcd: {e.strerror}", protocol.EXIT_UNREACHABLE)
    if type(e).__name__ == "Truncated":
        return CliError(
            "mfcd closed the connection without answering (is it shutting down?)",
            protocol.EXIT_UNREACHABLE,
        )
    return CliError("mfcd sent a response that is not JSON", protocol.EXIT_PROTOCOL)


def _count(error: dict[str, Any], name: str) -> int | None:
    """An error's `op` or `line`: a number from 1, or None (absent, or not a number)."""
    value = error.get(name)
    return value if type(value) is int and value > 0 else None


def _check_server(sock: _socket.socket, path: str) -> None:
    """Refuse a socket not served by root, by the user mfcctl runs as, or by user mfc.

    In a directory others can write, another user could have put their own socket in
    mfcd's place and so read (and answer) our requests. The kernel says which user the
    listening process runs as (SO_PEERCRED), whatever happened to the path meanwhile.
    """
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # pid, uid, gid
    uid = int.from_bytes(cred[4:8], sys.byteorder)
    if uid in (0, os.geteuid()):
        return
    import pwd  # noqa: PLC0415 (only needed when the daemon runs as a user of its own)

    try:
        if pwd.getpwnam(DAEMON_USER).pw_uid == uid:
            return
    except KeyError:
        pass
    raise CliError(
        f"refusing {path}: it is served by uid {uid}, not by root or user {DAEMON_USER}"
        f" — another user may have replaced mfcd's socket; check who can write to"
        f" {os.path.dirname(path) or '.'}",
        protocol.EXIT_PROTOCOL,
    )


def _exists_but_not_a_socket(path: str) -> bool:
    try:
        return (os.stat(path).st_mode & 0o170000) != 0o140000  # S_IFMT, S_IFSOCK
    except OSError:
        return False


def _why_no_answer(path: str) -> str:
    """Why connecting found no mfcd: no such file (a wrong path?), or a socket nobody serves."""
    if not os.path.lexists(path):
        return (
            f"{path} does not exist — start mfcd (`systemctl start mfc_daemon` or `mfcd`),"
            f" or check --socket or ${protocol.SOCKET_ENV}"
        )
    return "nothing is listening — start it with `systemctl start mfc_daemon` or `mfcd`"


def _who_may(path: str) -> str:
    """Who may use the socket, for the permission-denied line, as the files say: its group;
    when a directory on the way is closed to this user, that directory's (mfcd's packaged
    /run/mfcd is mode 0750); when the group has no access, root and the owner only."""
    for name, needed in ((path, 0o060), (os.path.dirname(path) or ".", 0o010)):
        try:
            st = os.stat(name)
        except OSError:
            continue  # (a directory above is closed to us: the socket cannot be seen)
        if st.st_mode & needed != needed:
            mode = st.st_mode & 0o7777
            return f"{name} is for root and its owner only (mode {mode:04o}; see socket_mode)"
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = f"with gid {st.st_gid}"
        where = "" if name == path else f" (of {name})"
        return f"be root or a member of group {group}{where}"
    return "be root or a member of the socket's group (see socket_group)"


def _clip(data: bytes, limit: int = 2000) -> str:
    text = data.decode(errors="replace").rstrip("\n")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} bytes)"


# --- command line --------------------------------------------------------------------------------


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """mfcctl's parser; with `only`, just that subcommand (enough to parse a command line)."""
    import argparse  # noqa: PLC0415 (see the TYPE_CHECKING import)

    class Parser(argparse.ArgumentParser):
        """argparse's parser, whose usage error is a UsageError (subcommands' parsers too:
        add_parser makes them of the parser's own class)."""

        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr)  # (argparse's words)
            raise UsageError(f"{self.prog}: {message}")

    parser = Parser(
        prog="mfcctl",
        description="Control mfcd, the multicast routing daemon: add, delete and show"
        " multicast routes (IPv4 and IPv6), VIF settings and statistics.",
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=os.environ.get(protocol.SOCKET_ENV, protocol.DEFAULT_SOCKET),
        help=f"mfcd's control socket (default ${protocol.SOCKET_ENV} or {protocol.DEFAULT_SOCKET})",
    )
    _output_option(parser, "table")
    _flag_options(parser, dry_run=True, default=False)
    parser.add_argument("--version", action="version", version=f"mfcctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, add_command in COMMANDS.items():
        # Building every subcommand's parser costs milliseconds at each start: when the
        # command is known, build only its own (help and docs build them all).
        if only is None or name == only:
            add_command(sub)
    return parser


def _mfc_command(sub: Any) -> None:
    mfc = sub.add_parser(
        "mfc", help="add or delete multicast routes (MFC entries), or some of their oifs"
    )
    mfc_sub = mfc.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = mfc_sub.add_parser(
        "add",
        help="add or replace the route for (source, group), or a template",
        description="Add the route for (SOURCE, GROUP), or replace it if one exists. Packets"
        " from SOURCE to GROUP that arrive on IIF are forwarded out of every OIF. A route"
        " whose IIF does not exist yet is kept as pending and installed when IIF appears; one"
        " naming an OIF that does not exist yet is installed at once as degraded: it forwards"
        " out of the other OIFs, and out of that one too when it appears. mfcctl warns about"
        " either on stderr, and about a table the multicast rules (ip mrule) do not send"
        " IIF's traffic to: the route is added, but forwards nothing. Without --source (any"
        " source), or with a prefix as SOURCE or GROUP (198.18.0.0/16, 239.2.0.0/24), it is a"
        " template: mfcd learns an (S,G) entry from it for each flow that arrives on IIF (the"
        " most specific template wins; an exact route always wins).",
    )
    _key_options(add, template=True)
    add.add_argument(
        "--iif",
        required=True,
        metavar="IFNAME",
        help="incoming interface (a template's may be a wildcard: one template per interface)",
    )
    _oifs_option(
        add,
        "outgoing interfaces, comma- or space-separated; a name ending in * or + is a"
        " wildcard (quote it): every interface it matches, now and later",
    )
    _command_options(add, changes=True)
    delete = mfc_sub.add_parser(
        "del",
        help="delete the route for (source, group), or a template",
        description="Delete the route for (SOURCE, GROUP): its MFC entry leaves the kernel, and"
        " VIFs no other route uses are released. Exit status 5 if there is no such route."
        " A template (no --source, or a prefix) is deleted with the entries learned from it;"
        " when several templates have the same prefixes (one per incoming interface), --iif"
        " says which.",
    )
    _key_options(delete, template=True)
    delete.add_argument(
        "--iif", metavar="IFNAME", help="the incoming interface of the template to delete"
    )
    _command_options(delete, changes=True)
    oif = mfc_sub.add_parser(
        "oif",
        help="add or remove outgoing interfaces of a route, keeping the others",
        description="Add or remove some outgoing interfaces of the route for (SOURCE, GROUP)"
        " without restating the others; mfcd changes the route in one step. Exit status 5 if"
        " there is no such route.",
    )
    oif_sub = oif.add_subparsers(dest="oif", metavar="ACTION", required=True)
    oif_add = oif_sub.add_parser(
        "add",
        help="add outgoing interfaces to a route",
        description="Add each OIF to the outgoing interfaces of the route for (SOURCE, GROUP);"
        " those it has already stay as they are. An interface that does not exist yet makes"
        " the route degraded: it forwards out of the others until that one appears.",
    )
    _key_options(oif_add)
    _oifs_option(oif_add, "outgoing interfaces to add, comma- or space-separated")
    _command_options(oif_add, changes=True)
    oif_del = oif_sub.add_parser(
        "del",
        help="remove outgoing interfaces from a route",
        description="Remove each OIF from the outgoing interfaces of the route for (SOURCE,"
        " GROUP). Each must be one of them, and one must remain: to remove the route, use"
        " `mfc del`.",
    )
    _key_options(oif_del)
    _oifs_option(oif_del, "outgoing interfaces to remove, comma- or space-separated")
    _command_options(oif_del, changes=True)


def _show_command(sub: Any) -> None:
    show = sub.add_parser(
        "show",
        help="show VIFs and routes (IPv4 and IPv6)",
        description="Show the VIFs and every route with its state: installed, pending (its"
        " IIF does not exist, or no VIF is free: it forwards nothing) or degraded (an OIF is"
        " missing: it forwards out of the OIFs that exist, and is whole again when the missing"
        " ones appear).",
    )
    show.add_argument(
        "-s",
        "--stats",
        action="store_true",
        help="include packet, byte and wrong-interface counters from the kernel",
    )
    show.add_argument(
        "-w",
        "--watch",
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS and show rates (implies --stats; Ctrl-C to stop)",
    )
    _table_option(
        show,
        'only the routes and VIFs of this table: a number or a name, "default" for each'
        " family's default table (without --table: every table)",
    )
    show.add_argument(
        "what",
        nargs="?",
        choices=("routes", "groups", "interfaces"),
        help="`routes` (the default, as in smcroutectl): VIFs and routes; `groups`: the group"
        " joins (interface, group, source, state, origin) and the interfaces that send router"
        " advertisements; `interfaces`: the VIFs and interface settings, as `vif show`",
    )
    _command_options(show, changes=False)


def _batch_command(sub: Any) -> None:
    batch = sub.add_parser(
        "batch",
        help="apply many route changes from a file as one transaction",
        description="Read `mfc add ...`, `mfc del ...`, `mfc oif add|del ...`, `join ...` and"
        " `leave ...` lines (the same options as on the command line; the leading `mfc` is"
        " optional; `#` starts a comment) from FILE, or stdin for `-`, and apply them all as"
        " one all-or-nothing transaction. Prints how many routes (and templates, if any)"
        " were added and deleted (and groups joined and left, if any line joins or leaves).",
    )
    batch.add_argument("file", metavar="FILE", help="batch file, or - for standard input")
    _table_option(
        batch,
        "the multicast routing table of the lines that name none (a number, `default` or a"
        " name from /etc/iproute2/rt_tables); a line's own --table still names its table",
    )
    _command_options(batch, changes=True)


VIF_SET_NEEDS = (
    "vif set needs a setting: --threshold TTL, --mrdisc or --no-mrdisc (see mfcctl vif set --help)"
)


def _vif_command(sub: Any) -> None:
    import argparse  # noqa: PLC0415 (loaded already: build_parser imported it)

    vif = sub.add_parser("vif", help="show VIFs or change per-interface settings")
    vif_sub = vif.add_subparsers(dest="action", metavar="ACTION", required=True)
    vif_set = vif_sub.add_parser(
        "set",
        help="change an interface's settings (kept across restarts)",
        description="Change an interface's settings. They are saved, apply to its VIF now and"
        " whenever it is created again. Setting the default value (`default`) removes the"
        " setting. Give one setting at least (without one: a usage error, exit status 2)."
        " A threshold applies to the interface's VIF in every table, or with --table in that"
        " table only, where it wins over the every-table one.",
    )
    vif_set.add_argument(
        "interface",
        metavar="IFNAME",
        help="one interface's name, not a wildcard (it need not exist yet: mfcctl warns, and"
        " the setting applies when it appears)",
    )

    def threshold(text: str) -> int | str:  # (argparse names the function in its error message)
        return text if text == "default" else int(text)

    vif_set.add_argument(
        "--threshold",
        type=threshold,
        metavar="TTL",
        help="IPv4 TTL threshold: forward out of this interface only packets whose TTL is"
        " greater than TTL (1-255). `default` (or 1, the default) removes the setting;"
        " with --table, `default` removes that table's own setting (1 there is a setting)."
        " Linux ignores it for IPv6 (vif show gives an IPv6 VIF's threshold as -).",
    )
    vif_set.add_argument(
        "--mrdisc",
        action=argparse.BooleanOptionalAction,
        help="send IGMP Multicast Router Advertisements (RFC 4286) on this interface every"
        " mrdisc_interval seconds and answer solicitations, so IGMP snooping switches find"
        " the router port (IPv4); --no-mrdisc stops it. Per interface, never per table:"
        " refused with --table",
    )
    _table_option(
        vif_set,
        "set the threshold of the interface's VIF in this multicast routing table only (a"
        " number, a name from /etc/iproute2/rt_tables, or `default`: IPv4's, 253), as"
        " smcroute's ttl-threshold is per smcrouted (one table each)",
    )
    _command_options(vif_set, changes=True)
    vif_show = vif_sub.add_parser(
        "show",
        help="show VIFs and interface settings",
        description="Show the VIFs (with --stats, their packet and byte counters) and the"
        " interfaces with a setting (threshold, mrdisc) made with `vif set` (origin api) or"
        " declared in the config files (origin config).",
    )
    vif_show.add_argument("-s", "--stats", action="store_true", help="include counters")
    _table_option(
        vif_show,
        'only the VIFs of this table: a number or a name, "default" for each family\'s default'
        " table (without --table: every table)",
    )
    _command_options(vif_show, changes=False)


def _sync_command(sub: Any) -> None:
    sync = sub.add_parser(
        "sync",
        help="compare the kernel's tables with mfcd's routes and repair any drift",
        description="Read the kernel's VIFs and MFC entries and repair every difference from"
        " mfcd's routes: re-add missing VIFs and entries, rewrite changed entries, delete"
        " and add again entries another program wrote (they would outlive mfcd), delete"
        " entries mfcd does not own. Each repair names its interfaces and what the kernel"
        " had. With --dry-run, only report, and exit with status 8 when there is drift."
        " mfcd also does this at start-up and after interface changes.",
    )
    sync.add_argument(
        "--full",
        action="store_true",
        help="read the kernel's whole MFC, which also finds entries mfcd did not add (by"
        " default only up to 100,000 routes: the kernel's dump takes minutes at 1,000,000)",
    )
    _command_options(sync, changes=True)


def _join_command(sub: Any, name: str = "join") -> None:
    joining = name == "join"
    cmd = sub.add_parser(
        name,
        help="join a multicast group on an interface (IGMP/MLD; kept across restarts)"
        if joining
        else "leave a group joined with `join`",
        description="Join GROUP on IFNAME: the kernel reports the membership (IGMP for IPv4,"
        " MLD for IPv6) so that upstream routers and IGMP/MLD snooping switches send the"
        " group's traffic to this port. With --source, only that source's (SSM). A prefix"
        " (239.1.1.0/28) joins every address in it, at most 1,024 joins per command. The"
        " join is saved, made again at start and whenever the interface is created again;"
        " while the interface does not exist it is pending. Joining again changes nothing."
        if joining
        else "Leave GROUP (and SOURCE) on IFNAME, joined before with `join`; prefixes as for"
        " `join`: a prefix leaves what is still joined of it, naming what was left before."
        " Exit status 5 if it was not joined (none of a prefix). An SSM join is left with"
        " its --source; without --source only the join for any source is.",
    )
    cmd.add_argument(
        "--interface",
        required=True,
        metavar="IFNAME",
        help="interface name; one ending in * or + is a wildcard (quote it): every interface"
        " it matches, now and later",
    )
    cmd.add_argument(
        "--group", required=True, metavar="GROUP", help="multicast group address or prefix"
    )
    cmd.add_argument(
        "--source",
        metavar="SOURCE",
        help="only this source's traffic (SSM): a unicast address or prefix (default: any)",
    )
    _command_options(cmd, changes=True)


def _leave_command(sub: Any) -> None:
    _join_command(sub, "leave")


def _flush_command(sub: Any) -> None:
    flush = sub.add_parser(
        "flush",
        help="remove the entries learned from templates now",
        description="Remove every (S,G) entry mfcd learned from a template. Flows still"
        " running are learned again from their next packet.",
    )
    _command_options(flush, changes=True)


def _ping_command(sub: Any) -> None:
    ping = sub.add_parser(
        "ping",
        help="check that mfcd answers; print its version",
        description="Check that mfcd answers on its socket; print its version and process id."
        " Exit status 0 when it does, 3 when nothing listens.",
    )
    _command_options(ping, changes=False)


def _diagnose_command(sub: Any) -> None:
    diagnose = sub.add_parser(
        "diagnose",
        help="walk a flow's path and say why it is not forwarded",
        description="Check, step by step, what a flow from SOURCE to GROUP needs to be"
        " forwarded: a matching route, installed (or a template, and an entry learned from"
        " it); its interfaces up with carrier;"
        " mc_forwarding; the multicast rules (ip mrule) sending the iif's traffic to the"
        " route's table; packets arriving on the iif (not elsewhere, and at all); rp_filter"
        " and the route back to the source; the packets' TTL against the oifs' thresholds;"
        " the kernel's counters; bridges snooping with no querier. mfcd samples the flow's"
        " packets and counters for SECONDS and changes nothing. Each check is passed, failed"
        " (with what to do) or unknown. Exit status 8 when a check failed.",
    )
    diagnose.add_argument("--group", required=True, metavar="ADDR", help="multicast group")
    diagnose.add_argument(
        "--source", metavar="ADDR", help="the sender's address (default: every route of GROUP)"
    )
    _table_option(
        diagnose,
        "the multicast routing table (a number or a name; default: every table that holds"
        " a route or template for the flow)",
    )
    diagnose.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long to sample packets and counters (0.1 to 10, default 2)",
    )
    _command_options(diagnose, changes=False)


def _monitor_command(sub: Any) -> None:
    monitor = sub.add_parser(
        "monitor",
        help="print mfcd's events as they happen",
        description="Print mfcd's events as they happen, one line each (JSON lines with"
        " --output json): routes and templates added, replaced (with what they had) and"
        " removed, entries learned from templates and expired, interface changes (a rename"
        " as the old name deleted and the new one new), settings, joins, repairs, reloads"
        " (what a reload changed comes with origin config; a failed reload gives"
        " reload.failed with its error)."
        " A reader that falls behind loses events; a `gap` line says how many. Ctrl-C to"
        " stop.",
    )
    monitor.add_argument(
        "--reconnect",
        action="store_true",
        help="when mfcd goes away (a restart), say so on stderr and subscribe again as soon as"
        " it answers, instead of exiting (events in between are lost)",
    )
    _command_options(monitor, changes=False)


def _reload_command(sub: Any) -> None:
    reload = sub.add_parser(
        "reload",
        help="read the config files again and apply what changed",
        description="Make mfcd read its config file and drop-ins again and apply the"
        " difference as one transaction: routes the files add, remove or change; routes"
        " unchanged are not touched (their counters keep counting); routes added with mfcctl"
        " are kept. A file with any error changes nothing: the first problem is printed with"
        " FILE:LINE (`mfcd --check-config` lists them all). With --dry-run, print the plan."
        " Warns on stderr of routes and templates waiting for interfaces that do not exist (a"
        " typo) and of settings that take effect only at the next start.",
    )
    _command_options(reload, changes=True)


def _check_import_target(to: str, read: tuple[str, ...], force: bool) -> None:
    """Refuse an OUT that would destroy what it converts, or a file import-smcroute did not write
    (an mfcd config with its settings, a drop-in edited by hand) unless `force`."""
    if not os.path.lexists(to):
        return
    if not os.path.exists(to):  # (writing would create the link's target, wherever it points)
        raise CliError(
            f"--to {to} is a dangling symbolic link: nothing written", protocol.EXIT_USAGE
        )
    for name in read:
        try:
            same = os.path.samefile(to, name)
        except OSError:
            same = os.path.realpath(to) == name
        if same:
            raise CliError(
                f"--to {to} is {name}, which this import reads: write the output elsewhere",
                protocol.EXIT_USAGE,
            )
    # (A device such as /dev/stdout, or an empty file, holds nothing to lose.)
    if force or not os.path.isfile(to) or os.path.getsize(to) == 0:
        return
    from mfcd.smcroute_import import HEADER_END, HEADER_START  # noqa: PLC0415 (see below)

    try:
        with open(to, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError as e:
        raise CliError(f"cannot read {to}: {e.strerror}", protocol.EXIT_USAGE) from None
    first = first.rstrip("\n")
    if not (first.startswith(HEADER_START) and first.endswith(HEADER_END)):
        raise CliError(
            f"--to {to} exists and was not written by import-smcroute (its first line): nothing"
            " written; choose a new file (a drop-in), or replace it with --force",
            protocol.EXIT_USAGE,
        )


def _write_whole(to: str, text: str) -> None:
    """Write `text` as the file `to`: a regular file (or a new one) through a temporary file in
    its directory, synced, then renamed over it, so that a full disk or a crash leaves the old
    file whole (a file cut at a line could still parse, and a reload apply part of it); the
    target of a symbolic link is replaced, not the link. A device (/dev/stdout) is written."""
    path = os.path.realpath(to)
    if os.path.exists(path) and not os.path.isfile(path):
        try:
            with open(to, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise CliError(f"cannot write {to}: {e.strerror}", protocol.EXIT_USAGE) from None
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise CliError(f"cannot write {to}: {e.strerror}", protocol.EXIT_USAGE) from None


def _import_command(sub: Any) -> None:
    imp = sub.add_parser(
        "import-smcroute",
        help="convert an smcroute.conf to mfcd's config (TOML) on stdout",
        description="Convert an smcroute.conf (phyint, mroute, mgroup, ssmgroup, include) to"
        " the [[route]], [[join]] and [[interface]] declarations of mfc_daemon.conf(5),"
        " printed on stdout (or written to --to). What it writes passes mfcd --check-config:"
        " every line that cannot be converted, or that mfcd's config reader would refuse, is"
        " written as a '# NOT CONVERTED: LINE' comment and reported on stderr as FILE:LINE: why,"
        " and the exit status is then 1. A line converted with a change (an oif that"
        " 'phyint IF disable' leaves out, a trailing backslash, a comment after the oifs, a"
        " line longer than smcroute's 511 bytes) is reported as FILE:LINE:"
        " warning: why. Two mroute lines for the same source, group and iif make one route"
        " with the oifs of both, as smcroute merges them. If smcrouted ran with -N, convert"
        " with -N too. Needs no mfcd.",
    )
    imp.add_argument("file", metavar="FILE", help="the smcroute.conf to convert")
    imp.add_argument(
        "--to",
        metavar="OUT",
        help="write the TOML to OUT instead of stdout; refused (exit 2) if OUT is FILE or a file"
        " it includes, or an existing file import-smcroute did not write; not written when a"
        " line is not converted (exit 1)",
    )
    imp.add_argument(
        "--force",
        action="store_true",
        help="write OUT even if it is another existing file, or a line is not converted",
    )
    imp.add_argument(
        "-N",
        "--no-default-vifs",
        action="store_true",
        help="convert as `smcrouted -N` runs: only the interfaces a `phyint IF enable` line"
        " enables are routed; other oifs are left out, a route from another iif is not"
        " converted, a wildcard becomes the enabled interfaces it matches (joins are kept)",
    )
    _table_option(
        imp,
        "put every route and template in this multicast routing table, as `smcrouted -t ID`"
        " does: a number, `default` (the default) or a name from /etc/iproute2/rt_tables;"
        " a ttl-threshold becomes the interface's threshold in that table only",
    )
    _output_option(imp)


COMMANDS: dict[str, Callable[[Any], None]] = {
    "mfc": _mfc_command,
    "show": _show_command,
    "batch": _batch_command,
    "vif": _vif_command,
    "sync": _sync_command,
    "flush": _flush_command,
    "ping": _ping_command,
    "join": _join_command,
    "leave": _leave_command,
    "diagnose": _diagnose_command,
    "monitor": _monitor_command,
    "reload": _reload_command,
    "import-smcroute": _import_command,
}


class _Parsed:
    """A command line parsed without argparse: the same attributes its Namespace would have."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


# What _parse_common recognises: the commands scripts and monitoring run over and over.
_FAST_COMMANDS = ("mfc", "ping", "show", "batch")
_FLAGS = {"-n": "dry_run", "--dry-run": "dry_run", "-v": "verbose", "--verbose": "verbose"}
_OUTPUT = ("-o", "--output")


def _parse_common(argv: Sequence[str]) -> _Parsed | None:
    """`[--socket PATH] [-o FORMAT] [-n] [-v] COMMAND ...` without argparse, for `mfc add`,
    `mfc del`, `ping`, `show [-s]` and `batch FILE`.

    The commands run thousands of times skip argparse's import and set-up, about a sixth
    of mfcctl's start. Anything else, help and every mistake included, returns None and
    goes through argparse, so messages and behaviour stay argparse's: only exact words are
    recognised here (no abbreviations, no `--opt=value`, no combined short flags).
    """
    values: dict[str, Any] = {
        "socket": os.environ.get(protocol.SOCKET_ENV, protocol.DEFAULT_SOCKET),
        "output": "table",
        "dry_run": False,
        "verbose": False,
    }
    words = list(argv)
    i = 0
    while i < len(words) and words[i] not in _FAST_COMMANDS:
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else "-"
        if word == "--socket" and not value.startswith("-"):
            values["socket"] = value
            i += 2
        elif word in _OUTPUT and value in ("table", "json"):
            values["output"] = value
            i += 2
        elif word in _FLAGS:
            values[_FLAGS[word]] = True
            i += 1
        else:
            return None
    if i == len(words):
        return None
    if words[i] == "mfc":
        return _parse_route_change(words[i:], values)
    return _parse_simple_command(words[i], words[i + 1 :], values)


def _parse_route_change(words: list[str], values: dict[str, Any]) -> _Parsed | None:
    """`mfc add|del OPTIONS [-o FORMAT] [-n] [-v]` (words from `mfc` on)."""
    while len(words) > 3:  # global options may also follow the command
        if words[-2] in _OUTPUT and words[-1] in ("table", "json"):
            values["output"] = words[-1]
            words = words[:-2]
        elif words[-1] in _FLAGS:
            values[_FLAGS[words[-1]]] = True
            words = words[:-1]
        else:
            break
    if (
        len(words) < 3
        or words[1] not in ("add", "del", "oif")
        or "-h" in words
        or "--help" in words
    ):
        return None
    try:
        op = batchfile.line_op(words)
    except ValueError:
        return None
    values.update(table=None, source=None)  # as argparse has them without --table, --source
    if op["op"] == "del":
        values["iif"] = None
    values.update(op)
    action = values.pop("op")
    if action in batchfile.OIF_OPS:  # `mfc oif add`: argparse's action "oif", oif "add"
        return _Parsed(command="mfc", action="oif", oif=action[4:], **values)
    return _Parsed(command="mfc", action=action, **values)


def _oif_names(words: list[str]) -> list[str]:
    """The names of --oifs, or a usage error for an empty one (batchfile.split_oifs)."""
    try:
        return batchfile.split_oifs(words)
    except ValueError as e:
        raise CliError(str(e), protocol.EXIT_USAGE, code="syntax_error") from None


def _table_filter(a: Any) -> dict[str, Any]:
    """The "table" argument of show and vif show, if --table was given."""
    return {} if a.table is None else {"table": _table_value(a.table)}


def _parse_simple_command(command: str, rest: list[str], values: dict[str, Any]) -> _Parsed | None:
    """`ping`, `show [-s]` or `batch FILE`, each with `-o FORMAT`, `-v` (and `-n` for batch)
    in any order after it, as argparse takes them."""
    if command == "show":
        values.update(stats=False, watch=None, table=None, what=None)  # (`show --table`: argparse)
    elif command == "batch":
        values["table"] = None  # (`batch --table`: argparse)
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in _OUTPUT and i + 1 < len(rest) and rest[i + 1] in ("table", "json"):
            values["output"] = rest[i + 1]
            i += 2
            continue
        if word in ("-v", "--verbose") or (word in ("-n", "--dry-run") and command == "batch"):
            values[_FLAGS[word]] = True
        elif command == "show" and word in ("-s", "--stats"):
            values["stats"] = True
        elif command == "batch" and "file" not in values and (word == "-" or word[:1] != "-"):
            values["file"] = word
        else:
            return None
        i += 1
    if command == "batch" and "file" not in values:
        return None
    return _Parsed(command=command, **values)


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv, found without argparse (None if unsure)."""
    args = iter(argv)
    for word in args:
        if word in COMMANDS:
            return word
        if word in ("--socket", "-o", "--output"):
            next(args, None)  # skip the option's value
        elif not word.startswith("-") or word in ("-h", "--help"):
            return None
    return None


def _oifs_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--oifs", required=True, nargs="+", metavar="IFNAME", help=help)


def _key_options(parser: argparse.ArgumentParser, template: bool = False) -> None:
    if template:
        parser.add_argument(
            "--source",
            metavar="ADDR",
            help="unicast source address, or a prefix (a template); omitted: any source",
        )
        parser.add_argument(
            "--group",
            required=True,
            metavar="ADDR",
            help="multicast group address, or a prefix (a template)",
        )
    else:
        parser.add_argument(
            "--source", required=True, metavar="ADDR", help="unicast source address"
        )
        parser.add_argument(
            "--group", required=True, metavar="ADDR", help="multicast group address"
        )
    _table_option(
        parser,
        "the route's multicast routing table: a number, `default` (the"
        " kernel's default table: 253 for IPv4, 254 for IPv6, the default) or a name from"
        " /etc/iproute2/rt_tables",
    )


def _table_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--table", metavar="TABLE", help=help)


def _vif_set_args(a: Any) -> dict[str, Any]:
    """vif.set's arguments: the settings given (main: one at least), and the table."""
    threshold = a.threshold
    if threshold == "default" and a.table is None:
        threshold = protocol.DEFAULT_THRESHOLD  # (what a daemon before --table takes)
    settings = {"threshold": threshold, "mrdisc": a.mrdisc}
    args = {k: v for k, v in settings.items() if v is not None}
    if a.table is not None:
        args["table"] = _table_value(a.table)
    return {"interface": a.interface, **args}


def _table_value(text: str) -> int | str:
    """A --table as the protocol takes it: a number as a number, a name as it is."""
    return int(text) if text.isascii() and text.isdigit() else text


def _command_options(parser: argparse.ArgumentParser, *, changes: bool) -> None:
    """The global options a command also takes after its own: -o, -v, and -n if it changes
    something. Given there, they override the ones before the command."""
    import argparse  # noqa: PLC0415 (loaded already: build_parser imported it)

    _output_option(parser)
    # Absent after the command: the value given (or defaulted) before it stands.
    _flag_options(parser, dry_run=changes, default=argparse.SUPPRESS)


def _flag_options(parser: argparse.ArgumentParser, *, dry_run: bool, default: Any) -> None:
    if dry_run:
        parser.add_argument(
            "-n",
            "--dry-run",
            action="store_true",
            default=default,
            help="validate and show what the daemon would do, change nothing",
        )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="print the request, the response and the round-trip time to stderr",
    )


def _output_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    import argparse  # noqa: PLC0415 (loaded already: build_parser imported it)

    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        # Absent after the command, -o must not override the one given before it.
        default=argparse.SUPPRESS if default is None else default,
        help="output format (default table)",
    )


# --- output --------------------------------------------------------------------------------------


def table(rows: list[list[str]], right: frozenset[int] | set[int] = frozenset()) -> list[str]:
    """Align columns; `right` holds the indexes of numeric columns."""
    if not rows:
        return []
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    # One format string for all rows: tables of 100,000 routes are common.
    line = "  ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths)).format
    return [line(*row).rstrip() for row in rows]


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def format_show(result: dict[str, Any], width: int, rates: dict[str, Any] | None = None) -> str:
    vifs = result.get("vifs", [])
    stats = any("stats" in v for v in vifs) or any("stats" in r for r in result.get("routes", []))
    lines = format_vifs(vifs, stats)
    everything = result.get("routes", [])
    templates = [r for r in everything if r.get("template")]
    routes = [r for r in everything if not r.get("template")] if templates else everything
    if templates:
        lines += ["", *format_templates(templates)]
    learning = result.get("learning")
    if learning and (templates or learning.get("learned") or learning.get("unmatched")):
        lines += [
            "",
            "Learning: {entries} entries now (max_learned {max_learned}); since start:".format(
                **learning
            ),
        ]
        counts = ("learned", "expired", "dropped", "unmatched", "repointed")
        lines += _pack([f"{name} {learning.get(name, 0)}" for name in counts], width, "  ")
    if not any(_other_table(r) for r in [*routes, *vifs]):
        lines.append("")
        lines += format_routes(routes, width, stats, rates)
        return "\n".join(lines)
    # Several tables: the routes of each under a header of their own, in the daemon's order
    # (by family, then table).
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in routes:
        groups.setdefault((r["family"], r["table"]), []).append(r)
    for (family, number), some in groups.items():
        lines += ["", f"Table {number} ({family})"]
        lines += format_routes(some, width, stats, rates)
    return "\n".join(lines)


def format_templates(templates: list[dict[str, Any]]) -> list[str]:
    """The templates of `show`, each with how many entries were learned from it."""
    tables = any(_other_table(t) for t in templates)
    rows = [["SOURCE", "GROUP", *(["TABLE"] if tables else []), "IIF", "OIFS", "STATE", "LEARNED"]]
    for t in templates:
        table_column = [str(t["table"])] if tables else []
        state = _state(t)
        if t.get("origin", "api") != "api":
            state += f", {t['origin']}"  # as a route's: only when not the API's
        iif = f"{t['iif_pattern']}({t['iif']})" if "iif_pattern" in t else t["iif"]
        row = [t["source"], t["group"], *table_column, iif, _oifs_text(t), state]
        rows.append([*row, str(t.get("learned", 0))])
    return [f"Templates ({len(templates)})", *table(rows, right={len(rows[0]) - 1})]


def format_vif_show(result: dict[str, Any]) -> str:
    vifs = result.get("vifs", [])
    lines = format_vifs(vifs, any("stats" in v for v in vifs))
    settings = result.get("settings", [])
    lines += ["", f"Interface settings ({len(settings)})"]
    # A TABLE column only when a threshold is of one table: `all` for the other settings.
    tables = any("table" in s for s in settings)
    rows = [["INTERFACE", *(["TABLE"] if tables else []), "THRESHOLD", "MRDISC", "ORIGIN"]]
    for s in settings:
        row = _setting_row(s)
        rows.append([row[0], str(s.get("table", "all")), *row[1:]] if tables else row)
    none = "  (none: every interface uses threshold 1, mrdisc off)"
    lines += table(rows, right={2} if tables else {1}) if settings else [none]
    return "\n".join(lines)


def _setting_row(setting: dict[str, Any]) -> list[str]:
    """An interface's settings, `-` for one it does not have (the default), and where they
    come from: `config` or `api`, each named when the two differ."""
    threshold = str(setting["threshold"]) if "threshold_origin" in setting else "-"
    mrdisc = ("on" if setting.get("mrdisc") else "off") if "mrdisc_origin" in setting else "-"
    origins = {
        w: setting[f"{w}_origin"] for w in ("threshold", "mrdisc") if f"{w}_origin" in setting
    }
    if len(set(origins.values())) > 1:
        origin = ", ".join(f"{what} {o}" for what, o in origins.items())
    else:
        origin = next(iter(origins.values()), "-")
    return [setting["interface"], threshold, mrdisc, origin]


def format_vifs(vifs: list[dict[str, Any]], stats: bool) -> list[str]:
    lines = [f"VIFs ({len(vifs)})"]
    tables = any(_other_table(v) for v in vifs)  # a TABLE column only when there are several
    # With counters, ifindex and threshold give way so the table fits 80 columns.
    header = ["FAMILY", *(["TABLE"] if tables else []), "VIF", "INTERFACE"]
    header += (
        ["ROUTES", "PKTS IN", "PKTS OUT", "BYTES IN", "BYTES OUT"]
        if stats
        else ["IFINDEX", "THRESHOLD", "ROUTES"]
    )
    rows = [header]
    for v in vifs:
        row = [v["family"], *([str(v["table"])] if tables else []), str(v["vif"]), v["interface"]]
        if stats:
            s = v.get("stats", {})
            row += [
                str(v["routes"]),
                _human(s.get("packets_in", 0)),
                _human(s.get("packets_out", 0)),
                _human(s.get("bytes_in", 0)),
                _human(s.get("bytes_out", 0)),
            ]
        else:
            ifindex = str(v["ifindex"]) if v["present"] else "absent"
            threshold = "-" if v.get("threshold") is None else str(v["threshold"])  # (IPv6)
            row += [ifindex, threshold, str(v["routes"])]
        rows.append(row)
    first = 4 if tables else 3  # the first numeric column after the interface
    right = set(range(first, len(header))) | ({1, 2} if tables else {1})
    lines += table(rows, right=right) if vifs else ["  (none)"]
    return lines


def _origin(route: dict[str, Any]) -> str:
    """`learned 12s from * 239.1.1.1`: where a route other than the API's comes from."""
    origin = str(route["origin"])
    if "age" in route:
        origin += f" {route['age']:.0f}s"
    template = route.get("learned_from")
    if template:
        origin += f" from {template['source']} {template['group']}"
    return origin


def _state(route: dict[str, Any]) -> str:
    state = str(route["state"])
    if route.get("reason"):
        state += f" ({route['reason']})"
    return state


def format_routes(
    routes: list[dict[str, Any]], width: int, stats: bool, rates: dict[str, Any] | None
) -> list[str]:
    lines = [f"Routes ({len(routes)})"]
    if not routes:
        return [*lines, "  (none)"]
    header = ["SOURCE", "GROUP", "IIF", "OIFS", "STATE"]
    if stats:
        header += ["PACKETS", "BYTES", "WRONG IF"] + (["PKT/S", "BIT/S"] if rates else [])
    rows = [header]
    for r in routes:
        row = [r["source"], r["group"], r["iif"], _oifs_text(r), _state(r)]
        if r.get("origin", "api") != "api":
            row[4] += f", {_origin(r)}"
        if stats:
            s = r.get("stats", {})
            row += [
                _human(s.get("packets", 0)),
                _human(s.get("bytes", 0)),
                _human(s.get("wrong_if", 0)),
            ]
            if rates:
                pps, bps = rates.get(_route_id(r), (0.0, 0.0))
                row += [_human(pps), _human(bps)]
        rows.append(row)
    numeric = set(range(5, len(header)))
    aligned = table(rows, right=numeric)
    if max(len(line) for line in aligned) <= width:
        return lines + aligned
    # Too wide (long IPv6 addresses or names): one block per route instead of a table.
    for row in rows[1:]:
        flow = f"{row[0]} -> {row[1]}"
        lines += [flow] if len(flow) <= width else [row[0], f"  -> {row[1]}"]
        fields = [f"iif {row[2]}", *_wrap_list("oifs ", row[3], width - 4), row[4]]
        fields += [f"{h.lower()} {v}" for h, v in zip(header[5:], row[5:], strict=True)]
        lines += _pack(fields, width, "    ")
    return lines


def _interface(join: dict[str, Any]) -> str:
    """A join's interface; one of a wildcard join's as vlan*(vlan1)."""
    pattern = join.get("interface_pattern")
    return f"{pattern}({join['interface']})" if pattern else str(join["interface"])


def _oifs_text(route: dict[str, Any]) -> str:
    """A route's or template's oifs; with wildcards, as given, each wildcard followed by the
    interfaces it matches now: eth1,vlan*(vlan1,vlan2)."""
    patterns = route.get("oif_patterns")
    if not patterns:
        return ",".join(route["oifs"])
    parts = []
    for name in patterns:
        found = [n for n in route["oifs"] if n not in patterns and n.startswith(name[:-1])]
        parts.append(f"{name}({','.join(found)})" if name.endswith(("*", "+")) else name)
    return ",".join(parts)


def _wrap_list(label: str, items: str, width: int) -> list[str]:
    """Split a comma-separated list into pieces of at most `width` characters, commas kept."""
    pieces, current = [], label
    for item in items.split(","):
        if len(current) + len(item) + 1 > width and current != label:
            pieces.append(current + ",")
            current = "  "
        current += item if current in (label, "  ") else "," + item
    return [*pieces, current]


def _pack(fields: list[str], width: int, indent: str) -> list[str]:
    """Lay fields out two spaces apart, starting a new indented line when one would overflow."""
    lines: list[str] = []
    current = ""
    for field in fields:
        if current and len(indent) + len(current) + 2 + len(field) > width:
            lines.append(indent + current)
            current = field
        else:
            current = f"{current}  {field}" if current else field
    return [*lines, indent + current] if current else lines


def format_plan(result: dict[str, Any]) -> str:
    plan = result.get("plan", [])
    if not plan:
        return "no kernel changes needed"
    out = []
    for step in plan:
        action = step["action"].replace("_", " ")
        fam = step["family"]
        if _other_table(step):  # the default tables go unsaid, as before tables existed
            fam += f" table {step['table']}"
        if "vif" in step:
            out.append(f"{action} {fam} VIF {step['vif']} ({step['interface']})")
        elif action in ("join", "leave"):
            source = "" if step["source"] == "*" else f" source {step['source']}"
            out.append(f"{action} {fam} group {step['group']}{source} on {step['interface']}")
        elif action.endswith(" template"):
            out.append(_template_step(action, fam, step))
        elif "parent" in step:
            vifs = ",".join(str(v) for v in step["oifs"])
            if "oif_names" in step:  # (not from an older mfcd)
                names = ",".join(step["oif_names"]) or "none"
                ports = f"iif {step['iif']} oifs {names} (VIF {step['parent']} -> {vifs or '-'})"
            else:
                ports = f"iif VIF {step['parent']} oifs VIF {vifs}"
            out.append(f"{action} {fam} {step['source']} -> {step['group']} {ports}")
        else:
            out.append(f"{action} {fam} {step['source']} -> {step['group']}")
    return "\n".join(out)


def _template_step(action: str, fam: str, step: dict[str, Any]) -> str:
    """`add template ipv4 * -> 239.4.2.0/24 iif r0 oifs r1`: a template writes no MFC entry
    until a source of it is learned, so the line says so."""
    text = f"{action} {fam} {step['source']} -> {step['group']} iif {step['iif']}"
    if "oifs" in step:
        was = f" (was {','.join(step['was']) or 'none'})" if "was" in step else ""
        text += f" oifs {','.join(step['oifs']) or 'none'}{was}"
    if action != "remove template":
        text += "  (no MFC entry until a source is learned)"
    return text


def format_groups(result: dict[str, Any]) -> str:
    joins = result.get("groups", [])
    lines = [f"Groups ({len(joins)})"]
    rows = [["INTERFACE", "GROUP", "SOURCE", "STATE", "ORIGIN"]]
    rows += [[_interface(j), j["group"], j["source"], _state(j), j["origin"]] for j in joins]
    lines += table(rows) if joins else ["  (none)"]
    mrdisc = result.get("mrdisc", [])
    lines += ["", f"Router advertisements (mrdisc): {', '.join(mrdisc) if mrdisc else 'none'}"]
    return "\n".join(lines)


def _already_left(result: dict[str, Any], shown: int = 3) -> str:
    """`left 3 joins; 1 was not joined (left before): 239.1.1.1 on r1`."""
    gone = result["already_left"]
    names = [
        f"{j['group']} on {j['interface']}"
        + ("" if j["source"] == "*" else f" for source {j['source']}")
        for j in gone[:shown]
    ]
    more = f" and {len(gone) - shown} more" if len(gone) > shown else ""
    count = result["left"]
    joins = "1 join" if count == 1 else f"{count} joins"
    was = "1 was" if len(gone) == 1 else f"{len(gone)} were"
    verb = "would leave" if result.get("dry_run") else "left"
    return f"{verb} {joins}; {was} not joined (left before): {', '.join(names)}{more}"


def format_reload(result: dict[str, Any]) -> str:
    """`3 added, 1 removed, 0 changed, 9996 unchanged`; in a dry run the plan before it."""
    if not result.get("dry_run"):
        return str(result["summary"])
    if not result.get("plan"):
        return f"dry run: nothing to change\n{result['summary']}"
    lines = ["dry run, nothing changed; mfcd would:"]
    for entry in result.get("plan", []):
        lines.append(
            f"  {_reload_step(entry)}" + (f"  ({entry['where']})" if "where" in entry else "")
        )
    lines.append(result["summary"])
    return "\n".join(lines)


def _reload_step(entry: dict[str, Any]) -> str:
    """One step of a reload's plan, without the FILE:LINE that declares it."""
    if entry["action"] == "threshold":
        was = f" (replaces the api value {entry['was']})" if entry.get("taken_over") else ""
        if "table" in entry:  # (a threshold of one table; None: that setting removed)
            value = "default" if entry["threshold"] is None else entry["threshold"]
            where = f"{entry['interface']} in table {entry['table']}"
            return f"set threshold {value} on {where}{was}"
        return f"set threshold {entry['threshold']} on {entry['interface']}{was}"
    if entry["action"] == "take_over":  # an api route the files now declare
        return _take_over_step(entry)
    if entry["action"] == "mrdisc":
        taken = " (takes over the api setting)" if entry.get("taken_over") else ""
        return f"turn mrdisc {'on' if entry['on'] else 'off'} for {entry['interface']}{taken}"
    if entry["action"] in ("join", "leave"):
        what = f"{entry['action']} {entry['source']} -> {entry['group']} on {entry['interface']}"
        return what + (" (takes over the api join)" if entry.get("taken_over") else "")
    what = f"{entry['action'].replace('_', ' ')} {entry['source']} -> {entry['group']}"
    if _other_table(entry):
        what += f" table {entry['table']}"
    if "iif" in entry:
        what += f" iif {entry['iif']}"
    if "oifs" in entry:
        what += f" oifs {','.join(entry['oifs'])}"
    if entry.get("taken_over"):
        what += _templates_taken(entry)
    return what


def _templates_taken(entry: dict[str, Any]) -> str:
    """` (takes over the api template: oifs r1,r2 -> r1)`: what a template line of a
    reload's plan takes over (`was`: the api template's oifs, when it takes over one)."""
    was = entry.get("was")
    if was is None:
        return " (takes over api templates)"
    if sorted(was) == sorted(entry["oifs"]):
        return " (takes over the api template)"
    oifs = f"{','.join(was) or 'none'} -> {','.join(entry['oifs'])}"
    return f" (takes over the api template: oifs {oifs})"


def _take_over_step(entry: dict[str, Any]) -> str:
    """`take over api route 198.18.0.2 -> 239.3.3.3 (oifs r1,r2,r3 -> r1)`."""
    what = f"take over api route {entry['source']} -> {entry['group']}"
    if _other_table(entry):
        what += f" table {entry['table']}"
    changes = _interface_changes(entry["was"], entry)
    return f"{what} ({'; '.join(changes) or 'unchanged'})"


def format_sync(result: dict[str, Any]) -> str:
    repairs = result.get("repairs", [])
    if not repairs:
        return "kernel and mfcd agree: nothing to repair"
    head = "would repair (dry run, nothing changed):" if result.get("dry_run") else "repaired:"
    lines = [
        _repair_line(line, repair)
        for line, repair in zip(format_plan({"plan": repairs}).splitlines(), repairs, strict=True)
    ]
    return head + "\n" + _indent("\n".join(lines))


_DRIFTS = {
    "missing": "the kernel had no entry",
    "vif": "a VIF it uses was added back",
    "static": "another program wrote it (MFC_STATIC, it would outlive mfcd): deleted and added",
}


def _repair_line(line: str, repair: dict[str, Any]) -> str:
    """A repair's plan line, with what the kernel had (`: the kernel had iif r0 oifs r2`)
    and the error if the kernel refused it."""
    drift = repair.get("drift")
    kernel = repair.get("kernel")
    why = []
    if isinstance(kernel, dict):
        oifs = ",".join(kernel.get("oifs") or []) or "none"
        why.append(f"the kernel had iif {kernel.get('iif') or 'none'} oifs {oifs}")
    if isinstance(drift, str) and drift in _DRIFTS:
        why.append(_DRIFTS[drift])
    if why:
        line += ": " + "; ".join(why)
    return f"{line}  FAILED: {repair['error']}" if "error" in repair else line


_MARKS = {"passed": "ok  ", "failed": "FAIL", "unknown": "??  "}


def format_diagnosis(result: dict[str, Any]) -> str:
    """diagnose's checklist: one block per matching route, one line per check, the fix
    under each failure."""
    lines = []
    for flow in result.get("flows", []):
        route = flow.get("route")
        if route is not None:
            head = f"{route['source']} -> {route['group']} iif {route['iif']}"
            head += f" oifs {','.join(route['oifs'])} ({route['state']})"
            template = route.get("template")
            if isinstance(template, dict):
                learned = "learned from" if route.get("learned") else "nothing learned yet from"
                head += f", {learned} template {template.get('source')} -> {template.get('group')}"
            lines.append(head + (f" table {route['table']}" if _other_table(route) else ""))
        else:
            lines.append(f"{result.get('source') or '*'} -> {result.get('group')}")
        for check in flow.get("checks", []):
            mark = _MARKS.get(check.get("status"), "??  ")
            lines.append(f"  {mark} {check.get('check', ''):<16} {check.get('detail', '')}")
            if check.get("fix"):
                lines.append(f"       {'':<16} -> {check['fix']}")
    lines.append(f"verdict: {result.get('verdict')} (sampled {result.get('seconds')} s)")
    return "\n".join(lines)


def format_event(event: dict[str, Any]) -> str:
    """One monitor event on one line, as people read it (-o json gives the fields)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
    kind = str(event.get("event"))
    if kind.startswith(("route.", "template.", "learned", "expired")) and "source" in event:
        text = _route_event(kind, event)
    else:
        text = _EVENT_TEXTS.get(kind, _fields_text)(event)
    return f"{stamp} {kind} {text}".rstrip()


_STATE_EVENTS = ("route.state", "template.state")  # (their state is told even when installed)


def _route_event(kind: str, event: dict[str, Any]) -> str:
    """`ipv4 198.18.0.2 -> 239.1.1.1 iif r0 oifs r1,r2 table 100 (pending: why) [config]`:
    a route's, template's or learned entry's event."""
    text = f"{event.get('family')} {event['source']} -> {event.get('group')}"
    if "iif" in event:
        text += f" iif {event['iif']}"
    if "oifs" in event:
        text += f" oifs {','.join(event['oifs']) or 'none'}"
    if isinstance(event.get("template"), dict):  # learned, expired: from which template
        text += f" from {event['template'].get('source')} -> {event['template'].get('group')}"
    if event.get("reason") and kind == "expired":
        text += f" ({event['reason']})"
    if _other_table(event):
        text += f" table {event['table']}"
    if kind in _STATE_EVENTS or event.get("state", "installed") != "installed":
        text += f" ({event['state']}{': ' + event['reason'] if event.get('reason') else ''})"
    if "was" in event:
        text += _replaced(event)
    return text + _origin_mark(event)


def _replaced(event: dict[str, Any]) -> str:
    """` (replaced: oifs r1 -> r1,r2)`: what a route.add or template.add replaced (`was`:
    a route's iif and oifs, a template's oifs)."""
    was = event["was"]
    changes = _interface_changes(was if isinstance(was, dict) else {"oifs": was}, event)
    return f" (replaced: {'; '.join(changes)})" if changes else " (replaced, same interfaces)"


def _interface_changes(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`iif r0 -> r1`, `oifs r1,r2 -> r1`: how a route's (or template's) interfaces changed."""
    changes = []
    if "iif" in was and was["iif"] != now.get("iif"):
        changes.append(f"iif {was['iif']} -> {now.get('iif')}")
    if sorted(was["oifs"]) != sorted(now.get("oifs", [])):
        changes.append(f"oifs {','.join(was['oifs']) or 'none'} -> {','.join(now['oifs'])}")
    return changes


def _origin_mark(event: dict[str, Any]) -> str:
    """` [config]`: where a change came from, when not from mfcctl or the API."""
    return f" [{event['origin']}]" if event.get("origin", "api") != "api" else ""


def _link_event(event: dict[str, Any]) -> str:
    """`del r4 (ifindex 7, renamed to r5)`, `new r5 (ifindex 7, down, renamed from r4)`."""
    if event.get("action") == "lost":
        return "events lost (too many at once): mfcd read every interface again"
    text = f"{event.get('action')} {event.get('interface')}"
    details = [f"ifindex {event['ifindex']}"] if event.get("ifindex") is not None else []
    if "up" in event and event.get("action") != "del":
        details.append("up" if event["up"] else "down")
    if event.get("renamed_to"):
        details.append(f"renamed to {event['renamed_to']}")
    if event.get("renamed_from"):
        details.append(f"renamed from {event['renamed_from']}")
    return text + (f" ({', '.join(details)})" if details else "")


def _membership_event(event: dict[str, Any]) -> str:
    """`* -> 239.5.5.5 on r0 [config]`: a join's or leave's group, on its interface."""
    what = f"{event.get('source', '*')} -> {event.get('group')} on {event.get('interface')}"
    return what + _origin_mark(event)


def _reload_failed(event: dict[str, Any]) -> str:
    """`/etc/mfc_daemon.conf:12: reason (nothing changed)`: the error names its file."""
    error, config = str(event.get("error")), str(event.get("config"))
    where = "" if error.startswith(config) else f"{config}: "
    return f"{where}{error} (nothing changed)"


def _repair_event(event: dict[str, Any]) -> str:
    """A repair as sync lists it: `readd vif ipv4 VIF 1 (r1)`."""
    step = {k: v for k, v in event.items() if k not in ("event", "time")}
    return _repair_line(format_plan({"plan": [step]}), step)


def _fields_text(event: dict[str, Any]) -> str:
    """An event of a kind this mfcctl does not know (a newer mfcd's): its fields."""
    fields = [(k, v) for k, v in event.items() if k not in ("event", "time") and v is not None]
    return " ".join(f"{k}={_value(v)}" for k, v in fields)


def _value(value: Any) -> str:
    """A field's value in a line: a list comma-separated, an object as JSON (no repr)."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return json.dumps(value) if isinstance(value, dict) else str(value)


_EVENT_TEXTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "link": _link_event,
    "join": _membership_event,
    "leave": _membership_event,
    "threshold": lambda e: (
        f"{e.get('threshold')} on {e.get('interface')}"
        + (f" in table {e['table']}" if "table" in e else "")
        + _origin_mark(e)
    ),
    "mrdisc": lambda e: (
        f"{'on' if e.get('on') else 'off'} for {e.get('interface')}{_origin_mark(e)}"
    ),
    "repair": _repair_event,
    "reload": lambda e: f"{e.get('config')}: {e.get('summary')}",
    "reload.failed": _reload_failed,
    "gap": lambda e: f"{e.get('dropped')} events dropped (mfcctl read too slowly)",
}


# --- commands ------------------------------------------------------------------------------------


class Cli:
    def __init__(self, args: Any, stdout: TextIO, stderr: TextIO) -> None:
        self.args = args
        self.stdout = stdout
        self.stderr = stderr
        self.client = Client(args.socket, args.verbose, stderr)
        self.json = args.output == "json"

    def emit(self, result: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
        if self.json:
            # Indented for people; compact (and several times faster) for programs.
            indent = 2 if self.stdout.isatty() else None
            self.stdout.write(json.dumps(result, indent=indent) + "\n")
        else:
            out = text(result)
            if out:
                self.stdout.write(out + "\n")

    def change(self, cmd: str, args: dict[str, Any]) -> int:
        result = self.client.call(cmd, args, dry_run=self.args.dry_run)
        self.emit(result, self._change_text)
        self.warn_missing(result, setting=cmd == "vif.set")
        for warning in result.get("warnings", []):  # (vif.set and IPv6; tables no rule reaches)
            print(f"mfcctl: warning: {warning}", file=self.stderr)
        return protocol.EXIT_OK

    def warn_missing(self, result: dict[str, Any], setting: bool = False) -> None:
        """Name on stderr the interfaces a change waits for: a typo is seen at once."""
        missing = result.get("missing") or []
        if not missing or result.get("dry_run"):
            return
        they = "it appears" if len(missing) == 1 else "they appear"
        if setting:  # vif set: kept by name, the interface's VIF gets it once there is one
            warning = f"{_names(missing)} (yet); the setting is kept and applies when {they}"
        elif "joins" in result:  # a join
            warning = f"{_names(missing)} (yet); joined when {they}"
        elif "pending" in result:  # a batch: how many of its routes wait
            warning = f"{_waiting(result)}: {_names(missing)} (yet); each {_then(result)} {they}"
        else:
            state = result.get("state", "pending")
            what = "template" if _names_template(self.args) else "route"
            warning = f"{_names(missing)} (yet); the {what} is {state} until {they}"
        print(f"mfcctl: warning: {warning}", file=self.stderr)

    def _change_text(self, result: dict[str, Any]) -> str:
        if result.get("dry_run"):
            plan = "dry run, nothing changed; mfcd would:\n" + _indent(format_plan(result))
            return plan + (f"\n{_already_left(result)}" if "already_left" in result else "")
        if "already_left" in result:  # a leave of a prefix some groups of which were left
            text = _already_left(result)
            return f"{format_plan(result)}\n{text}" if self.args.verbose else text
        if "deleted" in result:  # a batch
            summary = f"{_of_which(result, 'added')}, {_of_which(result, 'deleted')}"
            if result.get("updated"):
                summary += f", {result['updated']} updated"
            if "joined" in result:
                summary += f", {result['joined']} joined, {result['left']} left"
            return f"{format_plan(result)}\n{summary}" if self.args.verbose else summary
        if self.args.verbose:
            return format_plan(result)
        if "joins" in result and result.get("pending"):
            joins = f"{result['pending']} of {result['joins']} joins"
            return f"{joins} pending: {result.get('reason', '')}"
        if result.get("state") in ("pending", "degraded"):
            what = "template" if _names_template(self.args) else "route"
            return f"{what} {result['state']}: {result.get('reason', '')}"
        return ""

    def run(self) -> int:
        a = self.args
        if a.command == "mfc":
            args = {"group": a.group}
            if a.source is not None:
                args["source"] = a.source
            if a.table is not None:
                args["table"] = _table_value(a.table)
            if a.action == "add":
                args.update(iif=a.iif, oifs=_oif_names(a.oifs))
            if a.action == "del" and a.iif is not None:
                args["iif"] = a.iif
            if a.action == "oif":
                args["oifs"] = _oif_names(a.oifs)
                return self.change(f"mfc.oif.{a.oif}", args)
            return self.change(f"mfc.{a.action}", args)
        if a.command == "batch":
            return self.batch(a.file, a.table)
        if a.command == "vif" and a.action == "set":
            return self.change("vif.set", _vif_set_args(a))
        if a.command in ("join", "leave"):
            args = {"interface": a.interface, "group": a.group}
            if a.source is not None:
                args["source"] = a.source
            return self.change(a.command, args)
        if a.command == "vif":
            return self.vif_show()
        if a.command == "sync":
            result = self.client.call("sync", {"full": True} if a.full else {}, dry_run=a.dry_run)
            self.emit(result, format_sync)
            # -n is a check: drift found fails it, as diagnose's failed checks do
            drift = a.dry_run and bool(result.get("repairs"))
            return protocol.EXIT_CHECK_FAILED if drift else protocol.EXIT_OK
        if a.command == "diagnose":
            return self.diagnose()
        if a.command == "monitor":
            return self.monitor(reconnect=a.reconnect)
        if a.command == "reload":
            result = self.client.call("reload", {}, dry_run=a.dry_run)
            self.emit(result, format_reload)
            for warning in result.get("warnings", []):  # (restart-only settings, typos)
                print(f"mfcctl: warning: {warning}", file=self.stderr)
            return protocol.EXIT_OK
        if a.command == "import-smcroute":
            return self.import_smcroute(a.file, a.to, a.table, a.no_default_vifs, a.force)
        if a.command == "flush":
            result = self.client.call("flush", {}, dry_run=a.dry_run)
            self.emit(result, _flush_text)
            return protocol.EXIT_OK
        if a.command == "ping":
            result = self.client.call("ping", {})
            self.emit(result, lambda r: f"mfcd {r['version']} (pid {r['pid']}) is running")
            return protocol.EXIT_OK
        if a.watch is not None and a.what in ("groups", "interfaces"):
            raise CliError(f"--watch shows routes, not {a.what}: leave it out", protocol.EXIT_USAGE)
        if a.what == "groups":
            self.emit(self.client.call("group.show", {}), format_groups)
            return protocol.EXIT_OK
        if a.what == "interfaces":  # (smcroutectl's `show interfaces`)
            return self.vif_show()
        if a.watch is not None:
            return self.watch(a.watch)
        if self.json and not self.stdout.isatty():
            return self.show_json({"stats": a.stats, **_table_filter(a)})
        result = self.client.call("show", {"stats": a.stats, **_table_filter(a)})
        self.emit(result, lambda r: format_show(r, _width()))
        return protocol.EXIT_OK

    def vif_show(self) -> int:
        a = self.args
        result = self.client.call("vif.show", {"stats": a.stats, **_table_filter(a)})
        self.emit(result, format_vif_show)
        return protocol.EXIT_OK

    def diagnose(self) -> int:
        a = self.args
        args: dict[str, Any] = {"group": a.group, "seconds": a.seconds}
        if a.source is not None:
            args["source"] = a.source
        args.update(_table_filter(a))
        result = self.client.call("diagnose", args)
        self.emit(result, format_diagnosis)
        failed = result.get("verdict") == "failed"
        return protocol.EXIT_CHECK_FAILED if failed else protocol.EXIT_OK

    def monitor(self, reconnect: bool = False) -> int:
        self.client.call("monitor", {})
        try:
            while True:
                try:
                    event = self.client.next_event()
                except CliError as e:
                    if not reconnect or e.status != protocol.EXIT_UNREACHABLE:
                        raise
                    self._subscribe_again(e)
                    continue
                if self.json:
                    self.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
                else:
                    self.stdout.write(format_event(event) + "\n")
                self.stdout.flush()
        except KeyboardInterrupt:
            return protocol.EXIT_OK

    def _subscribe_again(self, lost: CliError) -> None:
        """monitor --reconnect: mfcd went away (stopped or restarting): say so, then try to
        subscribe again every RECONNECT_SECONDS until it answers."""
        print(f"mfcctl: {lost}; reconnecting (events meanwhile are lost)", file=self.stderr)
        self.stderr.flush()
        while True:
            self.client.close()
            time.sleep(RECONNECT_SECONDS)
            try:
                self.client.call("monitor", {})
            except CliError as e:
                if e.status != protocol.EXIT_UNREACHABLE:
                    raise
                continue
            print("mfcctl: reconnected to mfcd", file=self.stderr)
            self.stderr.flush()
            return

    def show_json(self, args: dict[str, Any]) -> int:
        """`show -o json` to a program: the routes written as they arrive, in the same text
        emit() gives (json.dumps of the result, whose routes come last)."""
        head, routes = self.client.call_streamed("show", args, "routes")
        write, dumps = self.stdout.write, json.dumps
        if routes is None:
            write(dumps(head) + "\n")
            return protocol.EXIT_OK
        text = dumps(head)
        write(f'{text[:-1]}{", " if head else ""}"routes": [')
        comma = ""
        for route in routes:
            write(comma + dumps(route))
            comma = ", "
        write("]}\n")
        return protocol.EXIT_OK

    def batch(self, name: str, table: str | None = None) -> int:
        try:
            if name == "-":
                text = sys.stdin.read()
            else:
                with open(name, encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise CliError(f"cannot read {name}: {why}", protocol.EXIT_USAGE) from None
        # mfcd parses the text itself (one line at a time, which keeps a large batch small in
        # memory) and names a failing line in the error's `line`: printed as "FILE:N: ...".
        args: dict[str, Any] = {"text": text}
        if table is not None:
            args["table"] = _table_value(table)
        if self.args.verbose:
            args["plan"] = True
        try:
            return self.change("batch", args)
        except CliError as e:
            e.file = "stdin" if name == "-" else name
            raise

    def import_smcroute(
        self, name: str, to: str | None, table: str | None, no_vifs: bool, force: bool
    ) -> int:
        # Only this command needs it: mfcctl's other commands start without it.
        from mfcd import smcroute_import  # noqa: PLC0415

        try:
            value = None if table is None else smcroute_import.table_value(table)
        except ValueError as e:
            raise CliError(f"--table: {e}", protocol.EXIT_USAGE) from None
        try:
            converted = smcroute_import.convert_file(name, value, no_vifs)
        except OSError as e:
            raise CliError(f"cannot read {name}: {e.strerror}", protocol.EXIT_USAGE) from None
        written = False
        if to is not None:
            _check_import_target(to, converted.files, force)
            # An incomplete conversion is not written over OUT: a drop-in missing routes
            # would be read at the next reload (the report below says which lines).
            written = force or not converted.problems
            if written:
                _write_whole(to, converted.text)
        elif not self.json:
            self.stdout.write(converted.text)
        if self.json:
            result = {
                "toml": converted.text,
                "problems": converted.problems,
                "warnings": converted.warnings,
                "to": to,
                "written": written,
            }
            self.stdout.write(json.dumps(result) + "\n")
        for problem in converted.report:
            print(f"mfcctl: {problem}", file=self.stderr)
        if to is not None and not written:
            print(
                f"mfcctl: {to} not written: {len(converted.problems)} line(s) not converted;"
                " fix or remove them and convert again, or write it anyway with --force",
                file=self.stderr,
            )
        return protocol.EXIT_REJECTED if converted.problems else protocol.EXIT_OK

    def watch(self, interval: float) -> int:
        if interval <= 0:
            raise CliError("--watch needs a positive number of seconds", protocol.EXIT_USAGE)
        previous: dict[str, tuple[int, int]] = {}
        last = 0.0
        args = {"stats": True, **_table_filter(self.args)}
        try:
            while True:
                result = self.client.call("show", args)
                # A fresh connection per sample: idle between samples, an open one would meet
                # the daemon's client_timeout.
                self.client.close()
                now = time.monotonic()
                rates = _rates(result, previous, now - last if last else 0.0)
                last = now
                if self.json:
                    result["rates"] = {k: {"pps": p, "bps": b} for k, (p, b) in rates.items()}
                    self.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
                else:
                    if self.stdout.isatty():
                        self.stdout.write("\x1b[H\x1b[2J")
                    stamp = time.strftime("%H:%M:%S")
                    self.stdout.write(f"every {interval:g} s, {stamp}\n\n")
                    self.stdout.write(format_show(result, _width(), rates) + "\n")
                self.stdout.flush()
                time.sleep(interval)
        except KeyboardInterrupt:
            return protocol.EXIT_OK


# The kernel's default table of each family, by the family's name in results.
_DEFAULT_TABLES = {protocol.FAMILY_NAMES[f]: t for f, t in protocol.DEFAULT_TABLE.items()}


def _other_table(entry: dict[str, Any]) -> bool:
    """Whether a route or VIF is in a table other than its family's default."""
    return entry.get("table", _DEFAULT_TABLES.get(entry["family"])) != _DEFAULT_TABLES.get(
        entry["family"]
    )


def _route_id(r: dict[str, Any]) -> str:
    """How --watch names a route: "S G", and " table N" after it for another table."""
    return f"{r['source']} {r['group']}" + (f" table {r['table']}" if _other_table(r) else "")


def _rates(
    result: dict[str, Any], previous: dict[str, tuple[int, int]], elapsed: float
) -> dict[str, tuple[float, float]]:
    rates = {}
    for r in result.get("routes", []):
        key = _route_id(r)
        s = r.get("stats", {})
        now = (s.get("packets", 0), s.get("bytes", 0))
        if elapsed > 0 and key in previous:
            packets, nbytes = previous[key]
            rates[key] = (max(0, now[0] - packets) / elapsed, max(0, now[1] - nbytes) * 8 / elapsed)
        previous[key] = now
    return rates


def _flush_text(result: dict[str, Any]) -> str:
    n = result.get("flushed", 0)
    entries = "1 learned entry" if n == 1 else f"{n} learned entries"
    return f"would remove {entries}" if result.get("dry_run") else f"removed {entries}"


def _waiting(batch: dict[str, Any]) -> str:
    """`7 routes are pending`, `1 route is degraded`, `2 routes are pending and 3 degraded`."""
    counts = [(n, state) for state in ("pending", "degraded") if (n := batch.get(state, 0))]
    first, state = counts[0] if counts else (0, "pending")
    text = "1 route is" if first == 1 else f"{first} routes are"
    text += f" {state}"
    for n, other in counts[1:]:
        text += f" and {n} {other}"
    return text


def _names_template(args: Any) -> bool:
    """Whether `mfc add` names a template (as mfcd.templates.is_template tells): no source,
    a source of any, or a prefix shorter than an address on either side."""
    source = getattr(args, "source", None)
    if source is None or source in ("*", "0.0.0.0", "::"):
        return True
    for text in (source, getattr(args, "group", None) or ""):
        _, slash, length = text.partition("/")
        if slash and length != ("128" if ":" in text else "32"):
            return True
    return False


def _of_which(batch: dict[str, Any], done: str) -> str:
    """`6 added`, or with templates among them `4 routes and 2 templates added`."""
    n, templates = batch.get(done, 0), batch.get(f"templates_{done}", 0)
    if not templates:
        return f"{n} {done}"
    routes = n - templates
    both = f"{routes} route{'s' if routes != 1 else ''} and " if routes else ""
    return f"{both}{templates} template{'s' if templates != 1 else ''} {done}"


def _then(batch: dict[str, Any]) -> str:
    """What becomes of a batch's waiting routes when their interfaces appear."""
    if not batch.get("degraded"):
        return "is installed when"
    if not batch.get("pending"):
        return "forwards out of its other oifs until"
    return "is complete when"


def _names(interfaces: list[str], shown: int = 3) -> str:
    """`interface r9 does not exist`, `interfaces r8, r9 do not exist`, at most `shown` named;
    `no interface matches vlan*` for a wildcard (an oif that matches none is missing too)."""
    wild = [n for n in interfaces if n.endswith(("*", "+"))]
    if wild:
        plain = [n for n in interfaces if n not in wild]
        matches = f"no interface matches {', '.join(wild)}"
        return f"{_names(plain, shown)} and {matches}" if plain else matches
    if len(interfaces) == 1:
        return f"interface {interfaces[0]} does not exist"
    names = ", ".join(interfaces[:shown])
    if len(interfaces) > shown:
        names += f" and {len(interfaces) - shown} more"
    return f"interfaces {names} do not exist"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _width() -> int:
    import shutil  # noqa: PLC0415 (only for tables; not on every start)

    return shutil.get_terminal_size((80, 24)).columns


def main(
    argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    words = argv if argv is not None else sys.argv[1:]
    args: Any = _parse_common(words)
    if args is None:
        hint = _smcroute_hint(words)
        if hint is not None:
            return _usage_error(hint, words, out, err)
        parser = build_parser(_command_in(words))
        # argparse prints usage errors, --help and --version to sys.stdout/sys.stderr itself.
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            if isinstance(e, UsageError) and _json_asked(words):
                out.write(json.dumps(usage_json(e.message)) + "\n")
            return int(e.code or 0)
        finally:
            sys.stdout, sys.stderr = saved
        if args.command == "vif" and args.action == "set" and args.threshold is None is args.mrdisc:
            # One line, not the top-level usage argparse would print for the main parser.
            return _usage_error(VIF_SET_NEEDS, words, out, err)
    cli = Cli(args, out, err)
    try:
        return cli.run()
    except CliError as e:
        if cli.json and not e.code and e.status == protocol.EXIT_USAGE:
            e.code = "usage"  # (mfcctl's own: --watch 0, a batch file it cannot read...)
        if cli.json and e.code:
            out.write(json.dumps(e.as_json()) + "\n")
        print(f"mfcctl: {e.located()}", file=err)
        return e.status
    except BrokenPipeError:
        return protocol.EXIT_OK
    finally:
        cli.client.close()


def _usage_error(message: str, words: Sequence[str], out: TextIO, err: TextIO) -> int:
    """A usage error of mfcctl's own: one line on stderr (and JSON on stdout for -o json)."""
    if _json_asked(words):
        out.write(json.dumps(usage_json(message)) + "\n")
    print(f"mfcctl: {message}", file=err)
    return protocol.EXIT_USAGE


def _smcroute_hint(words: Sequence[str]) -> str | None:
    """For smcroutectl's commands and options typed at mfcctl: the mfcctl command to use."""
    from mfcd import smcroute_habits  # noqa: PLC0415 (only for command lines not mfcctl's)

    return smcroute_habits.hint(words, tuple(COMMANDS))


def _json_asked(words: Sequence[str]) -> bool:
    """Whether a command line that argparse may have refused asks for -o json: the last
    -o/--output given (as argparse takes it: `-o json`, `-ojson`, `--output=json`, a
    prefix of --output such as `--out json`) says json."""
    asked = False
    for word, value in zip(words, [*words[1:], ""], strict=False):
        if word == "--":
            break
        name, equals, attached = word.partition("=")
        if word.startswith("-o") and not word.startswith("--"):
            asked = (word[2:] or value) == "json"
        elif len(name) > 3 and "--output".startswith(name):  # (--o alone could be --on...)
            asked = (attached if equals else value) == "json"
    return asked


if __name__ == "__main__":
    sys.exit(main())
