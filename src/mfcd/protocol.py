"""Wire format shared by mfcd and mfcctl: newline-delimited JSON requests, responses, error codes.

Stdlib-only and free of daemon-side imports, because mfcctl imports it on every start.

A request is one JSON object on one line:

    {"v": 1, "id": 7, "cmd": "mfc.add", "args": {...}, "dry_run": false}

and its response is one JSON object on one line, either

    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "invalid_argument", "message": "...",
                                             "field": "group"}}

`code` is stable and meant for programs; `message` is for people.  docs/protocol.md
describes every command and result.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:  # mfcctl imports this module on every start; typing would cost milliseconds
    from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/mfcd/mfcd.sock"
SOCKET_ENV = "MFCD_SOCKET"

# Requests larger than this are refused: it bounds the daemon's memory per client.  A batch of
# 100,000 routes takes about 7 MiB as text (9 MiB as ops): room for some 900,000 routes.
MAX_REQUEST_BYTES = 64 * 1024 * 1024

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
)

# vif.set's threshold for an interface with no setting (mfcd.model.DEFAULT_THRESHOLD): setting
# it removes the interface's setting (`mfcctl vif set IF --threshold default`).
DEFAULT_THRESHOLD = 1

# Error codes (stable) and the mfcctl exit status each one maps to.
ERROR_EXIT = {
    "bad_request": 1,  # not JSON, wrong shape, unknown field or command
    "unsupported_version": 1,
    "syntax_error": 2,  # a line of a batch text does not parse
    "invalid_argument": 1,  # a value is wrong: address, interface name, threshold...
    "vif_limit": 1,  # all 32 VIFs of a family are in use
    "too_large": 1,
    "timeout": 1,  # the client took longer than client_timeout to send a request
    "not_found": 5,  # mfc del of a route that does not exist
    "kernel_error": 6,  # the kernel refused a change; nothing was changed
    "state_error": 6,  # the state file could not be written; nothing was changed
    "shutting_down": 3,
    "too_many_clients": 3,  # the daemon already serves its maximum of connections
    "internal_error": 7,
}

# mfcctl exit statuses (documented in mfcctl(8) and docs/cli.md).
EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PERMISSION = 4
EXIT_NOT_FOUND = 5
EXIT_KERNEL = 6
EXIT_PROTOCOL = 7


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


def encode_result(request_id: Any, result: dict[str, Any]) -> bytes:
    encoded = [key for key, value in result.items() if isinstance(value, Encoded)]
    plain = {k: v for k, v in result.items() if k not in encoded} if encoded else result
    msg = {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": plain}
    text = json.dumps(msg, separators=(",", ":"))
    if encoded:  # after the other members: the text ends with the result's "}" and msg's "}"
        members = ",".join(f"{json.dumps(key)}:{result[key]}" for key in encoded)
        text = f"{text[:-2]}{',' if plain else ''}{members}}}}}"
    return text.encode() + b"\n"


def encode_error(request_id: Any, code: str, message: str, field: str | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    msg = {"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error}
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one message line; raises ValueError when it is not a JSON object."""
    try:
        msg = json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg
