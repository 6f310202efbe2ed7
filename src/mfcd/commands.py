"""What each control-protocol command does: envelope checks, argument validation, dispatch, results.

`handle()` turns one request line into one response line and never raises: every
failure becomes an error response with a stable code.  Validation happens in full
before the controller is called, so a rejected request changes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mfcd import __version__, batchfile, protocol, validate
from mfcd.controller import (
    FAMILY_NAMES,
    SHOW_SCHEMA,
    Controller,
    KernelView,
    describe_step,
    gc_paused,
)
from mfcd.errors import (
    BadRequest,
    BatchSyntax,
    InvalidArgument,
    MfcdError,
    TooLarge,
    UnsupportedVersion,
)
from mfcd.model import MAXVIFS, AddRoute, Change, DelRoute, SetThreshold

log = logging.getLogger("mfcd")

ENVELOPE_FIELDS = {"v", "id", "cmd", "args", "dry_run"}
MAX_MESSAGE = 1000  # characters of an error message; the rest of a quoted value is left out


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request (SO_PEERCRED), for the log."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid={self.uid} pid={self.pid}"


class Commands:
    def __init__(
        self,
        controller: Controller,
        families: tuple[int, ...],
        observe: Callable[[], KernelView] | None = None,
    ) -> None:
        self.controller = controller
        self.families = families
        self.observe = observe
        self.on_change: Callable[[], None] | None = None  # called after each applied change
        # JSON values a request may hold (set by the server from max_request_bytes).
        self.max_values = protocol.MAX_REQUEST_BYTES // protocol.BYTES_PER_VALUE
        self.table: dict[str, Callable[[dict[str, Any], bool, Peer], dict[str, Any]]] = {
            "ping": self.ping,
            "show": self.show,
            "mfc.add": self.mfc_add,
            "mfc.del": self.mfc_del,
            "batch": self.batch,
            "vif.set": self.vif_set,
            "vif.show": self.vif_show,
            "sync": self.sync,
        }

    def handle(self, line: bytes | bytearray, peer: Peer) -> bytes:
        # Decoding and validating a large batch allocates as much as applying it does.
        with gc_paused():
            return self._handle(line, peer)

    def _handle(self, line: bytes | bytearray, peer: Peer) -> bytes:
        request_id: Any = None
        try:
            try:
                msg = protocol.decode(line, self.max_values)
            except protocol.TooManyValues as e:
                raise TooLarge(str(e)) from None
            except ValueError as e:
                raise BadRequest(f"request is not a JSON object: {e}") from None
            request_id = msg.get("id")
            if not isinstance(request_id, (int, str, type(None))) or isinstance(request_id, bool):
                request_id = None
                raise BadRequest("id must be an integer or a string", field="id")
            cmd, args, dry_run = self._envelope(msg)
            return protocol.encode_result(request_id, self.table[cmd](args, dry_run, peer))
        except MfcdError as e:
            if e.code not in ("not_found",):
                log.debug("%s: rejected: %s", peer, e)
            message = str(e)
            if len(message) > MAX_MESSAGE:  # it may quote a value of any size
                message = message[: MAX_MESSAGE - 3] + "..."
            return protocol.encode_error(request_id, e.code, message, e.field)
        except Exception as e:  # a bug; keep serving everyone else
            log.exception("internal error while handling a request from %s", peer)
            return protocol.encode_error(request_id, "internal_error", f"internal error: {e}")

    def _envelope(self, msg: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
        unknown = set(msg) - ENVELOPE_FIELDS
        if unknown:
            raise BadRequest(f"unknown field {sorted(unknown)[0]!r} in request")
        version = msg.get("v")
        if type(version) is not int or version != protocol.PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {version!r} is not supported; this mfcd speaks"
                f" version {protocol.PROTOCOL_VERSION} (upgrade mfcctl and mfcd together)"
            )
        cmd = msg.get("cmd")
        if not isinstance(cmd, str) or cmd not in self.table:
            raise BadRequest(f"unknown command {cmd!r}", field="cmd")
        args = msg.get("args", {})
        if not isinstance(args, dict):
            raise BadRequest("args must be a JSON object", field="args")
        dry_run = msg.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise BadRequest("dry_run must be true or false", field="dry_run")
        return cmd, args, dry_run

    # --- commands --------------------------------------------------------------------------------

    def ping(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, ())
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "families": [FAMILY_NAMES[f] for f in self.families],
        }

    def show(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("stats",))
        return self.controller.show(stats=_flag(args, "stats"), encoded=True)

    def vif_show(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("stats",))
        # The VIFs alone: not the JSON of every route, which show would build.
        thresholds = self.controller.router.thresholds
        return {
            "schema": SHOW_SCHEMA,
            "vifs": self.controller.show_vifs(stats=_flag(args, "stats")),
            "settings": [{"interface": n, "threshold": t} for n, t in sorted(thresholds.items())],
            "max_vifs": MAXVIFS,
        }

    def sync(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, ())
        if self.observe is None:
            raise BadRequest("sync is not available in this mfcd")
        repairs = self.controller.sync(self.observe(), dry_run=dry_run)
        if not dry_run:
            log.info("%s sync: %d repairs", peer, len(repairs))
        return {"dry_run": dry_run, "repairs": repairs}

    def mfc_add(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        route = validate.route(args)
        self._check_family(route.family)
        return self._change([AddRoute.of(route)], dry_run, peer, "mfc.add", args)

    def mfc_del(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        key = validate.key(args)
        self._check_family(key[0])
        return self._change([DelRoute(key)], dry_run, peer, "mfc.del", args)

    def vif_set(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, ("interface", "threshold"))
        name = validate.interface(args["interface"], "interface")
        change = SetThreshold(name, validate.threshold(args["threshold"]))
        return self._change([change], dry_run, peer, "vif.set", args)

    def batch(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("ops", "text", "plan"))
        if ("ops" in args) == ("text" in args):
            raise BadRequest("a batch takes either ops (a list) or text (batch file lines)")
        text = args.get("text")
        if "text" in args:
            if not isinstance(text, str):
                raise BadRequest("text must be a string", field="text")
            changes = self._text_changes(text)
        else:
            changes = self._op_changes(args["ops"])
        # A batch answers with counts; the step-by-step plan (as large as the batch) only when
        # asked for or in a dry run.
        plan = dry_run or _flag(args, "plan")
        try:
            return self._change(changes, dry_run, peer, "batch", {"ops": len(changes)}, plan=plan)
        except MfcdError as e:
            if text is not None:  # people count the lines of their file, not its changes
                _name_line(e, text)
            raise

    def _op_changes(self, ops: Any) -> list[Change]:
        if not isinstance(ops, list):
            raise BadRequest("ops must be a list", field="ops")
        changes: list[Change] = []
        for index, op in enumerate(ops):
            try:
                changes.append(self._batch_op(op))
            except MfcdError as e:
                e.args = (f"op {index + 1}: {e}",)
                raise
        return changes

    def _text_changes(self, text: str) -> list[Change]:
        changes: list[Change] = []
        add = changes.append
        families = self.families
        add_change = validate.add_change
        lineno = 0
        try:
            for lineno, kind, source, group, iif, oifs in batchfile.lines(text):  # noqa: B007
                if oifs is not None:
                    change = add_change(source, group, iif, oifs)
                    if change.key[0] not in families:
                        self._check_family(change.key[0])
                    add(change)
                else:
                    key = validate.route_key_of(source, group)
                    self._check_family(key[0])
                    add(DelRoute(key))
        except batchfile.SyntaxProblem as e:
            raise BatchSyntax(str(e)) from None
        except MfcdError as e:  # (lineno is the failing line's)
            e.args = (f"line {lineno}: {e}",)
            raise
        return changes

    def _batch_op(self, op: Any) -> Change:
        if not isinstance(op, dict):
            raise BadRequest("each op must be a JSON object")
        kind = op.get("op")
        if kind == "add":
            route = validate.route(op, validate.BATCH_ADD_FIELDS)
            self._check_family(route.family)
            return AddRoute.of(route)
        if kind == "del":
            key = validate.key(op, validate.BATCH_DEL_FIELDS)
            self._check_family(key[0])
            return DelRoute(key)
        raise BadRequest(f'op must be "add" or "del", not {kind!r}', field="op")

    # --- helpers ---------------------------------------------------------------------------------

    def _check_family(self, family: int) -> None:
        if family not in self.families:
            name = FAMILY_NAMES[family].replace("ip", "IP")
            raise InvalidArgument(
                f"{name} is disabled in this mfcd's configuration", field="source"
            )

    def _change(
        self,
        changes: list[Change],
        dry_run: bool,
        peer: Peer,
        cmd: str,
        args: dict[str, Any],
        *,
        plan: bool = True,
    ) -> dict[str, Any]:
        outcome = self.controller.change(
            changes, dry_run=dry_run, keep_steps=plan, numbered=cmd == "batch"
        )
        result: dict[str, Any] = {"dry_run": dry_run, "changes": len(changes)}
        result["kernel_operations"] = dict(outcome.counts)
        if plan:
            result["plan"] = [describe_step(s) for s in outcome.steps]
        if len(changes) == 1 and isinstance(changes[0], AddRoute) and not dry_run:
            status = self.controller.router.status(changes[0].key)
            result["state"] = status.state
            if status.reason:
                result["reason"] = status.reason
        if not dry_run:
            if self.on_change is not None:
                self.on_change()
            done = _outcome(sum(outcome.counts.values()))
            if result.get("state", "installed") != "installed":
                done += f"; route {result['state']}: {result.get('reason', '')}"
            log.info("%s %s %s: %s", peer, cmd, _summary(args), done)
        return result


def _flag(args: dict[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", field=name)
    return value


def _summary(args: dict[str, Any]) -> str:
    return " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in args.items())


def _outcome(operations: int) -> str:
    if not operations:
        return "no kernel change"
    return f"{operations} kernel operation{'s' if operations != 1 else ''}"


def _name_line(error: MfcdError, text: str) -> None:
    """Turn "op N: ..." into "line L: ...", L being the line of the batch text's N-th change."""
    head, sep, rest = str(error).partition(": ")
    if not (sep and head.startswith("op ") and head[3:].isdigit()):
        return
    wanted = int(head[3:])
    for count, (lineno, *_) in enumerate(batchfile.lines(text), 1):
        if count == wanted:
            error.args = (f"line {lineno}: {rest}",)
            return
