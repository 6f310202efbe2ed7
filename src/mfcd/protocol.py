"""Wire format shared by mfcd and mfcctl: newline-delimited JSON requests, responses, error codes.

Stdlib-only and free of daemon-side imports, because mfcctl imports it on every start.

A request is one JSON object on one line:

    {"v": 1, "id": 7, "cmd": "mfc.add", "args": {...}, "dry_run": false}

and its response is one JSON object on one line, either

    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "invalid_argument", "message": "...",
                                             "field": "group"}}

`code` is stable and meant for programs; `message` is for people; `field`, `op` and
`line` (when present) say where the request is at fault.  docs/protocol.md describes
every command and result.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as encode_ascii

TYPE_CHECKING = False
if TYPE_CHECKING:  # mfcctl imports this module on every start; typing would cost milliseconds
    import re
    from collections.abc import Callable, Iterator
    from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/mfcd/mfcd.sock"
SOCKET_ENV = "MFCD_SOCKET"

# Requests larger than this are refused (the default of max_request_bytes).  A batch of
# 1,000,000 IPv4 routes takes about 66 MiB as mfcctl sends it (text); IPv6 lines are longer.
MAX_REQUEST_BYTES = 128 * 1024 * 1024
# Bytes of request per JSON value (string, number, array, object) allowed at most: parsed,
# a value costs 50 to 100 bytes of memory, so a request of packed small values (`[[],[],...`)
# would take 20 times its size. A batch as text is one string; as ops, about 12 values per
# route: room for ops of some 170,000 routes at the default max_request_bytes.
BYTES_PER_VALUE = 64

COMMANDS = (
    "ping",
    "show",
    "mfc.add",
    "mfc.del",
    "mfc.oif.add",
    "mfc.oif.del",
    "batch",
    "vif.set",
    "vif.show",
    "sync",
    "join",
    "leave",
    "group.show",
    "diagnose",
    "monitor",
    "reload",
    "flush",
)

# vif.set's threshold for an interface with no setting (mfcd.model.DEFAULT_THRESHOLD): setting
# it removes the interface's setting (`mfcctl vif set IF --threshold default`).
DEFAULT_THRESHOLD = 1

# mfcctl exit statuses, each with the line --help gives it (docs/cli.md says more; a test
# holds it and mfcctl(8) to this table).
EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PERMISSION = 4
EXIT_NOT_FOUND = 5
EXIT_KERNEL = 6
EXIT_PROTOCOL = 7
EXIT_CHECK_FAILED = 8
EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_REJECTED: "the daemon rejected the request (invalid argument, VIF limit, ...)",
    EXIT_USAGE: "usage error (bad command line or batch file), or --socket is not a socket",
    EXIT_UNREACHABLE: "cannot reach mfcd (not running, or shutting down)",
    EXIT_PERMISSION: "permission denied on the control socket",
    EXIT_NOT_FOUND: "the route (or group join) does not exist",
    EXIT_KERNEL: "the kernel or the state file refused the change (nothing was changed)",
    EXIT_PROTOCOL: "protocol or internal error: a reply that is malformed or answers another"
    " request, or a socket served by a user other than root, mfc or you",
    EXIT_CHECK_FAILED: "a check found a problem: diagnose (a check of the flow failed),"
    " sync -n (the kernel's tables differ from mfcd's)",
}

# Error codes (stable) and the mfcctl exit status each one maps to.
ERROR_EXIT = {
    "bad_request": EXIT_REJECTED,  # not JSON, wrong shape, unknown field or command
    "unsupported_version": EXIT_REJECTED,
    "syntax_error": EXIT_USAGE,  # a line of a batch text does not parse
    "invalid_argument": EXIT_REJECTED,  # a value is wrong: address, interface name, threshold...
    "vif_limit": EXIT_REJECTED,  # all 32 VIFs of a table (of a family) are in use
    "too_large": EXIT_REJECTED,
    "timeout": EXIT_REJECTED,  # the client took longer than client_timeout to send a request
    "not_found": EXIT_NOT_FOUND,  # mfc del of a route that does not exist, leave of no join
    "kernel_error": EXIT_KERNEL,  # the kernel refused a change; nothing was changed
    "state_error": EXIT_KERNEL,  # the state file could not be written; nothing was changed
    "shutting_down": EXIT_UNREACHABLE,
    "too_many_clients": EXIT_UNREACHABLE,  # the daemon already serves its maximum of connections
    "busy": EXIT_UNREACHABLE,  # others' large requests or unread responses fill mfcd's budget
    "internal_error": EXIT_PROTOCOL,
    "declared_in_config": EXIT_REJECTED,  # a runtime change to what the config files declare
    "config_error": EXIT_REJECTED,  # reload: the config files have an error; nothing changed
}

# The address families by number (model.py's route keys) and by name (in results and messages).
FAMILY_NAMES = {4: "ipv4", 6: "ipv6"}
# The kernel's default multicast routing table of each family: RT_TABLE_DEFAULT for IPv4,
# RT_TABLE_MAIN for IPv6 (an MRT_INIT socket without MRT_TABLE takes it; /proc shows only it).
DEFAULT_TABLE = {4: 253, 6: 254}


def family_text(family: int) -> str:
    """A family's name in a sentence: IPv4, IPv6."""
    return "IP" + FAMILY_NAMES[family][2:]


def encode_request(
    cmd: str, args: dict[str, Any], request_id: int = 1, dry_run: bool = False
) -> bytes:
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args}
    if dry_run:
        msg["dry_run"] = True
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class Encoded(str):
    """A result member that is JSON text already, written into the response as it is (the
    routes of `show`: formatted directly, they cost a third of building and encoding dicts)."""


class Streamed:
    """A result member whose JSON text is made in parts while the response is written (the
    routes of `show`: 1,000,000 of them are 170 MB of text, never held at once). An empty
    part is a pause: the server lets other clients in before it asks for the next."""

    __slots__ = ("parts",)

    def __init__(self, parts: Iterator[str]) -> None:
        self.parts = parts


class Stream:
    """A response written in parts as the client reads them: `head`, each of `parts`
    (text), `tail`; together one response line."""

    __slots__ = ("head", "parts", "tail")

    def __init__(self, head: bytes, parts: Iterator[str], tail: bytes) -> None:
        self.head, self.parts, self.tail = head, parts, tail

    def join(self) -> bytes:
        return self.head + "".join(self.parts).encode() + self.tail


Response = bytes | Stream


def encode_response(request_id: Any, result: dict[str, Any]) -> Response:
    """encode_result, or a Stream when a member of the result is Streamed (written last)."""
    for value in result.values():  # (one look at each member for the usual plain result)
        if isinstance(value, (Streamed, Encoded)):
            break
    else:
        return _plain_result(request_id, result)
    streamed = [key for key, value in result.items() if isinstance(value, Streamed)]
    if not streamed:
        return encode_result(request_id, result)
    (key,) = streamed
    rest = {k: v for k, v in result.items() if k != key}
    text = encode_result(request_id, rest)  # ends with the result's "}", msg's "}", "\n"
    head = text[:-3] + (b"," if rest else b"") + json.dumps(key).encode() + b":"
    return Stream(head, result[key].parts, b"}}\n")


# What json.dumps(..., separators=(",", ":")) uses, made once: that call builds a new encoder
# each time, a fifth of the cost of a small response.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
# And the C encoder its encode() makes anew on each call (with a closure and a dict for the
# circular check), made once too: a third of the cost of a small response. No circular
# check (no response is circular); None without the C accelerator.
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # (what JSONEncoder uses)
_C_COMPACT = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(None, _COMPACT.default, encode_ascii, None, ":", ",", False, False, True)
)


def _compact(value: dict[str, Any]) -> str:
    """_COMPACT.encode(value): the same text."""
    if _C_COMPACT is None:
        return _COMPACT.encode(value)
    return "".join(_C_COMPACT(value, 0))


def encode_result(request_id: Any, result: dict[str, Any]) -> bytes:
    encoded = [key for key, value in result.items() if isinstance(value, Encoded)]
    if not encoded:
        return _plain_result(request_id, result)
    plain = {k: v for k, v in result.items() if k not in encoded}
    text = _plain_result(request_id, plain).decode()
    # After the other members: the text ends with the result's "}", msg's "}" and "\n".
    members = ",".join(f"{json.dumps(key)}:{result[key]}" for key in encoded)
    return f"{text[:-3]}{',' if plain else ''}{members}}}}}\n".encode()


def _plain_result(request_id: Any, result: dict[str, Any]) -> bytes:
    """A response of a result without Encoded or Streamed members."""
    msg = {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}
    return _compact(msg).encode() + b"\n"


def encode_error(
    request_id: Any,
    code: str,
    message: str,
    field: str | None = None,
    *,
    op: int | None = None,
    line: int | None = None,
    file: str | None = None,
) -> bytes:
    """An error response; `op` and `line` place it in a batch (its ops, or its text), `file`
    and `line` in the config files."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    if op is not None:
        error["op"] = op
    if file is not None:
        error["file"] = file
    if line is not None:
        error["line"] = line
    msg = {"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error}
    return _compact(msg).encode() + b"\n"


def encode_event(request_id: Any, event: dict[str, Any]) -> bytes:
    """One event of a `monitor` subscription: {"v": 1, "id": ID, "event": {...}}."""
    msg = {"v": PROTOCOL_VERSION, "id": request_id, "event": event}
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class TooManyValues(ValueError):
    """A request holds more JSON values than mfcd parses (see BYTES_PER_VALUE)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"request holds more than {limit} JSON values (strings, numbers, arrays, objects);"
            " send a large batch as text, or split it up"
        )


class _Counter:
    """json.loads hooks counting the numbers it parses (JSON has no hook for strings or arrays)."""

    def __init__(self, limit: int, used: int) -> None:
        self.limit = limit
        self.left = limit - used

    def count(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooManyValues(self.limit)

    def parse_int(self, text: str) -> int:
        self.count()
        return int(text)

    def parse_float(self, text: str) -> float:
        self.count()
        return float(text)


def decode(line: bytes | bytearray, max_values: int | None = None) -> dict[str, Any]:
    """Parse one message line; raises ValueError when it is not a JSON object, TooManyValues
    when it holds more than `max_values` strings, numbers, arrays and objects (mfcd's limit
    for requests; None for mfcd's responses, which mfcctl reads: `show` may be large)."""
    try:
        msg = _parse(line, max_values)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg


_DECODER = json.JSONDecoder()  # (what json.loads uses when given no arguments)
# Its C scanner, and the whitespace its decode() skips: decode() itself, a method in
# Python with a regular expression at either end, took half a small request's decoding.
# (Neither is in the type stubs; the pattern, [ \t\n\r]*, always matches.)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_SPACE: Callable[[str, int], re.Match[str]] = json.decoder.WHITESPACE.match  # type: ignore[attr-defined]


def _parse(line: bytes | bytearray, max_values: int | None) -> Any:
    # Each value but a few singletons takes two bytes at least: a shorter line is safe.
    if max_values is None or len(line) <= 2 * max_values:
        if line[:1] == b"{" and line[1:2] != b"\0":
            # What json.loads makes of it (UTF-8, as json.detect_encoding finds for a line
            # that starts so), without that look and the call: a tenth of a small request.
            # _DECODER.decode(text), step by step: the text starts with "{", so no
            # whitespace to skip before it.
            text = line.decode("utf-8", "surrogatepass")
            try:
                value, end = _SCAN(text, 0)
            except StopIteration as e:
                raise json.JSONDecodeError("Expecting value", text, e.value) from None
            if end != len(text) and not (end == len(text) - 1 and text[end] == "\n"):
                end = _SPACE(text, end).end()  # (a request line's own "\n" needs no look)
                if end != len(text):
                    raise json.JSONDecodeError("Extra data", text, end)
            return value
        return json.loads(line)
    # Every string has two quotes and every array and object its bracket, so these counts
    # are upper bounds (quotes and brackets inside strings count too); numbers are counted
    # as they are parsed. Either way the memory of parsing stays in proportion to the line.
    values = line.count(b'"') // 2 + line.count(b"[") + line.count(b"{")
    if values > max_values:
        raise TooManyValues(max_values)
    counter = _Counter(max_values, values)
    return json.loads(
        line,
        parse_int=counter.parse_int,
        parse_float=counter.parse_float,
        parse_constant=counter.parse_float,  # NaN, Infinity: floats too
    )
