"""What each control-protocol command does: envelope checks, argument validation, dispatch, results.

`handle()` turns one request line into one response line and never raises: every
failure becomes an error response with a stable code.  Validation happens in full
before the controller is called, so a rejected request changes nothing.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mfcd import __version__, batchfile, protocol, validate, views
from mfcd.controller import Controller, gc_paused, observe
from mfcd.dataplane import UPCALL_KINDS, Dataplane
from mfcd.errors import (
    BadRequest,
    BatchSyntax,
    InvalidArgument,
    MfcdError,
    NotFound,
    TooLarge,
    UnsupportedVersion,
)
from mfcd.learning import Learner
from mfcd.model import (
    DEFAULT_TABLE,
    AddRoute,
    AddTemplate,
    Change,
    DelRoute,
    DelTemplate,
    Ports,
    RouteKey,
    Router,
    SetThreshold,
    template_text,
)
from mfcd.templates import TemplateKey

log = logging.getLogger("mfcd")

ENVELOPE_FIELDS = {"v", "id", "cmd", "args", "dry_run"}
MAX_MESSAGE = 1000  # characters of an error message; the rest of a quoted value is left out
OIF_FIELDS = ("source", "group", "oifs")  # mfc.oif.add, mfc.oif.del
# Up to this many installed routes `sync` dumps the kernel's whole MFC (about 1 s at 100,000
# entries, growing faster than the table: minutes at 1,000,000) and so also finds entries mfcd
# did not add; above it, it probes each route's entry instead unless asked for `full`.
FULL_SYNC_ROUTES = 100_000


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
        plane: Dataplane | None = None,
        upcalls: Counter[str] | None = None,
    ) -> None:
        self.controller = controller
        self.families = families
        self.plane = plane  # read by sync; None: sync is not available
        self.upcalls = upcalls if upcalls is not None else Counter()  # received, by kind
        self.views = views.Views(controller.kernel)
        self.on_change: Callable[[], None] | None = None  # called after each applied change
        self.learner: Learner | None = None  # learned entries (None: flush has none)
        # JSON values a request may hold (set by the server from max_request_bytes).
        self.max_values = protocol.MAX_REQUEST_BYTES // protocol.BYTES_PER_VALUE
        self.table: dict[str, Callable[[dict[str, Any], bool, Peer], dict[str, Any]]] = {
            "ping": self.ping,
            "show": self.show,
            "mfc.add": self.mfc_add,
            "mfc.del": self.mfc_del,
            "mfc.oif.add": self.mfc_oif_add,
            "mfc.oif.del": self.mfc_oif_del,
            "batch": self.batch,
            "vif.set": self.vif_set,
            "vif.show": self.vif_show,
            "sync": self.sync,
            "flush": self.flush,
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
            return protocol.encode_error(request_id, e.code, message, e.field, op=e.op, line=e.line)
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
            "families": [protocol.FAMILY_NAMES[f] for f in self.families],
            "upcalls": {kind: self.upcalls[kind] for kind in UPCALL_KINDS},
        }

    def show(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("stats", "table"))
        router, table = self.controller.router, _table_filter(args)
        stats = _flag(args, "stats")
        learner = self.learner
        result = self.views.show(
            router,
            stats=stats,
            encoded=True,
            table=table,
            learned_since=learner.since if learner is not None else None,
        )
        if stats and learner is not None:
            result["learning"] = learner.stats()
        return result

    def flush(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, ())
        learned = len(self.controller.router.learned)
        if dry_run or self.learner is None:
            return {"dry_run": dry_run, "flushed": learned if dry_run else 0}
        flushed = self.learner.flush()
        log.info("%s flush: %d learned entries removed", peer, flushed)
        if self.on_change is not None:
            self.on_change()
        return {"dry_run": False, "flushed": flushed}

    def vif_show(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("stats", "table"))
        router, table = self.controller.router, _table_filter(args)
        return self.views.vif_show(router, stats=_flag(args, "stats"), table=table)

    def sync(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("full",))
        if self.plane is None:
            raise BadRequest("sync is not available in this mfcd")
        full = _flag(args, "full") or len(self.controller.router.installed) <= FULL_SYNC_ROUTES
        view = observe(self.plane, self.families, full, self.controller.router.tables())
        repairs = self.controller.sync(view, dry_run=dry_run)
        if not dry_run:
            log.info("%s sync: %d repairs", peer, len(repairs))
            if self.on_change is not None:
                self.on_change()  # a retried route may have opened or emptied a table
        return {"dry_run": dry_run, "repairs": repairs, "full": full}

    def mfc_add(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        if _names_template(args):
            return self._change([self._add_template(args)], dry_run, peer, "mfc.add", args)
        route = validate.route(args)
        self._check_family(route.family)
        return self._change([AddRoute.of(route)], dry_run, peer, "mfc.add", args)

    def mfc_del(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        if _names_template(args):
            return self._change([self._del_template(args)], dry_run, peer, "mfc.del", args)
        key = validate.key(args)
        self._check_family(key[0])
        return self._change([DelRoute(key)], dry_run, peer, "mfc.del", args)

    def _add_template(self, args: dict[str, Any], fields: tuple[str, ...] = ()) -> AddTemplate:
        validate.require_fields(
            args, (*fields, *validate.TEMPLATE_FIELDS), validate.TEMPLATE_OPTIONAL
        )
        change = validate.template_change(
            args.get("source"), args["group"], args["iif"], args["oifs"], args.get("table")
        )
        self._check_family(change.key[0])
        return change

    def _del_template(self, args: dict[str, Any], fields: tuple[str, ...] = ()) -> DelTemplate:
        validate.require_fields(args, (*fields, "group"), (*validate.TEMPLATE_OPTIONAL, "iif"))
        return DelTemplate(
            self._template_named(
                args.get("source"), args["group"], args.get("iif"), args.get("table")
            )
        )

    def _template_named(self, source: Any, group: Any, iif: Any, table: Any) -> TemplateKey:
        """The template `mfc del` names: by its prefixes and table, and by its iif when
        several templates have those prefixes (one per iif)."""
        key = validate.template_key_of(source, group, iif or "lo", table)
        self._check_family(key[0])
        if iif is not None:
            return key
        found = self.controller.router.templates_named(*key[:4])
        if len(found) == 1:
            return found[0]
        if not found:
            raise NotFound(f"no template {template_text(key).rsplit(' iif ', 1)[0]}")
        iifs = ", ".join(k[4] for k in found)
        raise InvalidArgument(
            f"{len(found)} templates have source {key[1]} group {key[2]} (iif {iifs}):"
            " say which with --iif",
            field="iif",
        )

    def mfc_oif_add(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        return self._mfc_oif("oif_add", args, dry_run, peer)

    def mfc_oif_del(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        return self._mfc_oif("oif_del", args, dry_run, peer)

    def _mfc_oif(
        self, kind: str, args: dict[str, Any], dry_run: bool, peer: Peer
    ) -> dict[str, Any]:
        validate.require_fields(args, OIF_FIELDS, validate.OPTIONAL)
        lookup = _BatchRoutes(self.controller.router, []).get
        change = self._oif_change(
            kind, args["source"], args["group"], args["oifs"], lookup, table=args.get("table")
        )
        return self._change([change], dry_run, peer, f"mfc.{kind.replace('_', '.')}", args)

    def _oif_change(
        self,
        kind: str,
        source: Any,
        group: Any,
        oifs: Any,
        lookup: Callable[[RouteKey], Ports | None],
        *,
        table: Any = None,
    ) -> AddRoute:
        """An oif_add or oif_del as the AddRoute of the route's whole new oif list: the model
        and the journal know only whole routes, and the change is atomic (no client reads the
        route first). `lookup` gives a route's interfaces as the request finds them."""
        key = validate.route_key_of(source, group, table)
        self._check_family(key[0])
        names = validate.interfaces(oifs, "oifs")
        ports = lookup(key)
        if ports is None:
            raise NotFound(f"no route for source {key[1]} group {key[2]}{_in_table(key)}")
        new = _new_oifs(kind, key, ports, names)
        return validate.add_change(key[1], key[2], ports.iif, list(new), key[3])

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
            changes, deleted, updated = self._text_changes(text)
        else:
            changes, deleted, updated = self._op_changes(args["ops"])
        # A batch answers with counts; the step-by-step plan (as large as the batch) only when
        # asked for or in a dry run.
        plan = dry_run or _flag(args, "plan")
        try:
            result = self._change(changes, dry_run, peer, "batch", {"ops": len(changes)}, plan=plan)
        except MfcdError as e:
            if text is not None and e.op is not None:  # people count the lines of their file
                e.line = _line_of(e.op, text)
                e.op = None
            raise
        result["added"] = len(changes) - deleted - updated
        result["deleted"] = deleted
        result["updated"] = updated
        if not dry_run:
            pending, missing = self._pending(changes)
            result["pending"] = pending
            result["missing"] = missing
        return result

    def _pending(self, changes: list[Change]) -> tuple[int, list[str]]:
        """How many of the routes a batch added wait for interfaces that do not exist, and
        which interfaces those are."""
        router = self.controller.router
        if not any(router.waiting.values()):
            return 0, []  # the common case, known without looking at 100,000 routes
        links, routes = router.links, router.routes
        missing_of: dict[int, tuple[str, ...]] = {}  # id(ports): its missing interfaces
        pending: set[RouteKey] = set()
        names: set[str] = set()
        for change in changes:
            if not isinstance(change, AddRoute):
                continue
            ports = change.ports  # one shared value per combination: checked once each
            missing = missing_of.get(id(ports))
            if missing is None:
                missing = tuple(n for n in ports.interfaces if n not in links)
                missing_of[id(ports)] = missing
            if missing and routes.get(change.key) == ports:  # still so after the batch
                pending.add(change.key)
                names.update(missing)
        return len(pending), sorted(names)

    def _op_changes(self, ops: Any) -> tuple[list[Change], int, int]:
        """A batch's ops as changes, with how many delete a route and how many change oifs."""
        if not isinstance(ops, list):
            raise BadRequest("ops must be a list", field="ops")
        changes: list[Change] = []
        routes = _BatchRoutes(self.controller.router, changes)
        deleted = updated = 0
        for index, op in enumerate(ops):
            try:
                change = self._batch_op(op, routes)
            except MfcdError as e:
                e.op = index + 1
                raise
            changes.append(change)
            if isinstance(change, (DelRoute, DelTemplate)):
                deleted += 1
            elif op["op"] in batchfile.OIF_OPS:
                updated += 1
        return changes, deleted, updated

    def _text_changes(self, text: str) -> tuple[list[Change], int, int]:
        """A batch text's changes, with how many delete a route and how many change oifs."""
        changes: list[Change] = []
        add = changes.append
        families = self.families
        add_change = validate.add_change
        routes = _BatchRoutes(self.controller.router, changes)
        lineno = deleted = updated = 0
        try:
            for lineno, kind, source, group, iif, oifs, table in batchfile.lines(text):  # noqa: B007
                if (source == "*" or "/" in source or "/" in group) and kind in ("add", "del"):
                    add(self._template_line(kind, source, group, iif, oifs, table=table))
                    deleted += kind == "del"
                elif kind == "add":
                    change = add_change(source, group, iif, oifs, table)
                    if change.key[0] not in families:
                        self._check_family(change.key[0])
                    add(change)
                elif kind == "del":
                    key = validate.route_key_of(source, group, table)
                    self._check_family(key[0])
                    add(DelRoute(key))
                    deleted += 1
                else:
                    add(self._oif_change(kind, source, group, oifs, routes.get, table=table))
                    updated += 1
        except batchfile.SyntaxProblem as e:
            raise BatchSyntax(str(e), line=e.line) from None
        except MfcdError as e:  # (lineno is the failing line's)
            e.line = lineno
            raise
        return changes, deleted, updated

    def _template_line(
        self, kind: str, source: str, group: str, iif: str, oifs: Any, *, table: Any
    ) -> Change:
        """A batch line's template add or del (a source of "*" is any source)."""
        source_value = None if source == "*" else source
        if kind == "add":
            change = validate.template_change(source_value, group, iif, oifs, table)
            self._check_family(change.key[0])
            return change
        return DelTemplate(self._template_named(source_value, group, iif or None, table))

    def _batch_op(self, op: Any, routes: _BatchRoutes) -> Change:
        if not isinstance(op, dict):
            raise BadRequest("each op must be a JSON object")
        kind = op.get("op")
        if kind in ("add", "del") and _names_template(op):
            if kind == "add":
                return self._add_template(op, ("op",))
            return self._del_template(op, ("op",))
        if kind in batchfile.OIF_OPS:
            validate.require_fields(op, ("op", *OIF_FIELDS), validate.OPTIONAL)
            return self._oif_change(
                kind, op["source"], op["group"], op["oifs"], routes.get, table=op.get("table")
            )
        if kind == "add":
            route = validate.route(op, validate.BATCH_ADD_FIELDS)
            self._check_family(route.family)
            return AddRoute.of(route)
        if kind == "del":
            key = validate.key(op, validate.BATCH_DEL_FIELDS)
            self._check_family(key[0])
            return DelRoute(key)
        raise BadRequest(
            f'op must be "add", "del", "oif_add" or "oif_del", not {kind!r}', field="op"
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _check_family(self, family: int) -> None:
        if family not in self.families:
            raise InvalidArgument(
                f"{protocol.family_text(family)} is disabled in this mfcd's configuration",
                field="source",
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
        only = changes[0] if len(changes) == 1 else None
        result = views.change_result(
            self.controller.router,
            changes=len(changes),
            counts=outcome.counts,
            steps=outcome.steps if plan else None,
            dry_run=dry_run,
            added=only.key if isinstance(only, (AddRoute, AddTemplate)) else None,
        )
        if not dry_run:
            if self.on_change is not None:
                self.on_change()
            done = _outcome(sum(outcome.counts.values()))
            if result.get("state", "installed") != "installed":
                done += f"; route {result['state']}: {result.get('reason', '')}"
            log.info("%s %s %s: %s", peer, cmd, _summary(args), done)
        return result


def _new_oifs(kind: str, key: RouteKey, ports: Ports, names: tuple[str, ...]) -> tuple[str, ...]:
    """The route's oifs with `names` added (those it has already stay where they are) or
    removed (each must be one of them, and one oif at least must remain)."""
    if kind == "oif_add":
        return ports.oifs + tuple(n for n in names if n not in ports.oifs)
    route = f"the route for source {key[1]} group {key[2]}"
    absent = [n for n in names if n not in ports.oifs]
    if absent:
        raise InvalidArgument(
            f"{route} has no oif {absent[0]} (its oifs: {', '.join(ports.oifs)})", field="oifs"
        )
    left = tuple(n for n in ports.oifs if n not in names)
    if not left:
        raise InvalidArgument(
            f"{route} would have no oif left; to remove the route, use `mfc del`", field="oifs"
        )
    return left


class _BatchRoutes:
    """The routes as a batch's changes so far leave them: what its oif ops build on.

    It catches up with the batch's list of changes only when asked, so the loop that reads
    a batch does no more work for batches without oif ops (nearly all of them).
    """

    def __init__(self, router: Router, changes: list[Change]) -> None:
        self.routes = router.routes
        self.learned = router.learned  # not routes to edit: `flush` and templates own them
        self.changes = changes
        self.seen = 0
        self.latest: dict[RouteKey, Ports | None] = {}

    def get(self, key: RouteKey) -> Ports | None:
        latest = self.latest
        for change in itertools.islice(self.changes, self.seen, None):
            if isinstance(change, AddRoute):
                latest[change.key] = change.ports
            elif isinstance(change, DelRoute):
                latest[change.key] = None
        self.seen = len(self.changes)
        if key in latest:
            return latest[key]
        return None if key in self.learned else self.routes.get(key)


def _names_template(args: dict[str, Any]) -> bool:
    """Whether mfc.add/mfc.del arguments (or a batch op) name a template: no source, a
    source of any (\"*\", 0.0.0.0, ::) or a prefix on either side."""
    return validate.names_template(args.get("source"), args.get("group"))


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


def _line_of(op: int, text: str) -> int | None:
    """The line of a batch text that holds its `op`-th change (counted from 1)."""
    for count, (lineno, *_) in enumerate(batchfile.lines(text), 1):
        if count == op:
            return lineno
    return None


def _in_table(key: RouteKey) -> str:
    """ " in table N" for a route of a table other than its family's default, else ""."""
    return "" if key[3] == DEFAULT_TABLE[key[0]] else f" in table {key[3]}"


def _table_filter(args: dict[str, Any]) -> int | None:
    """The table number a show asks for, views.DEFAULT_TABLES for "default" (each family's
    default table), or None for every table."""
    value = args.get("table")
    if value is None:
        return None
    return views.DEFAULT_TABLES if value == "default" else validate.table_of(value, 4)
