"""What each control-protocol command does: envelope checks, argument validation, dispatch, results.

`handle()` turns one request line into one response line and never raises: every
failure becomes an error response with a stable code.  Validation happens in full
before the controller is called, so a rejected request changes nothing.

Group commit: the server uses `submit()` instead, which handles the request at once but
leaves its journal record to wait for `flush()` (or for the journal's thread: `finish_sync()`),
one sync for every request of the group (see controller.Group); `settle()` then gives the
response, or the sync's error.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import ChainMap, Counter
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from itertools import groupby, repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from mfcd import (
    __version__,
    address_sharing,
    batchfile,
    batchscan,
    groups,
    metrics,
    probes,
    protocol,
    validate,
    views,
)
from mfcd.batchscan import lines as batch_lines
from mfcd.controller import (
    Controller,
    Group,
    Outcome,
    Replaced,
    RouteRun,
    gc_paused,
    observe,
)
from mfcd.dataplane import UPCALL_KINDS, Dataplane
from mfcd.diagnosis import Query, Rules, unreached_warnings
from mfcd.errors import (
    BadRequest,
    BatchSyntax,
    InvalidArgument,
    MfcdError,
    NotFound,
    TooLarge,
    UnsupportedVersion,
)
from mfcd.events import EventBus
from mfcd.groups import ANY_SOURCE, Join, JoinKey, Leave, SetMrdisc, describe_key
from mfcd.learning import Learner
from mfcd.model import (
    DEFAULT_TABLE,
    DEFAULT_THRESHOLD,
    NO_SETTING,
    RUN_MIN,
    AddRoute,
    AddTemplate,
    Change,
    DelRoute,
    DelTemplate,
    Ports,
    RouteKey,
    Router,
    SetThreshold,
    Step,
    tables_hint,
    template_text,
)
from mfcd.slices import run_sliced
from mfcd.templates import TemplateKey
from mfcd.wildcards import Pattern, expand, expansion_of, is_wildcard

log = logging.getLogger("mfcd")
_new = tuple.__new__

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
    # How the log names it, made once: a group's log line names it for each change.
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", f"uid={self.uid} pid={self.pid}")

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Deferred:
    """A request answered later, by the server, instead of a response line: `answer` (the
    response line, made while other clients are served: diagnose) or, with `subscribe`,
    a stream of events on this connection until the client closes it (monitor)."""

    request_id: Any
    answer: Callable[[], Coroutine[Any, Any, bytes]] | None = None
    subscribe: bool = False


DIAGNOSE_SECONDS = 2.0  # diagnose samples packets and counters this long by default
MAX_DIAGNOSE_SECONDS = 10.0


class Answer(NamedTuple):
    """A request handled by submit(): its response, to be sent once `group` (the changes it
    made or saw) is synced; if that sync fails, a request that `changed` something is
    refused instead. (A NamedTuple: made for every request, at a third of a frozen
    dataclass's cost.)"""

    response: protocol.Response | Deferred
    group: Group | None
    changed: bool


_new_answer = tuple.__new__


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
        # A sync's repairs, told as the daemon's drift checks tell theirs (monitor, metrics,
        # status line: Daemon._repaired); None: only counted in `registry`.
        self.on_repaired: Callable[[list[dict[str, Any]]], object] | None = None
        self._confirmed = False  # the request being handled succeeded while a group waits
        # What each change waiting for its group's sync did, logged with the group's verdict:
        # one log record per sync, not per change, and only once the changes are durable.
        self._done: dict[Group, list[tuple[Peer, str, dict[str, Any], str]]] = {}
        self.on_synced: Callable[[Group], None] | None = None  # told each group's verdict
        # on_change left to a group's sync by a single route's change (see _change)
        self._change_due = False
        controller.on_synced = self._synced
        self.registry = metrics.Registry()  # requests counted for /metrics (the daemon's)
        # Reads the config files again and applies them (the daemon's; None: not available).
        self.reloader: Callable[[bool], Awaitable[dict[str, Any]]] | None = None
        # The config files a start left out for an error (the daemon's): diagnose names them.
        self.left_out: Callable[[], Sequence[str]] = tuple
        # The multicast rules of a family (the daemon's probes.RuleReader): a route or
        # template added in a table its iif's traffic does not go to is warned of (None:
        # not looked at).
        self.mrules: Callable[[int], Rules] | None = None
        # The rules and (family, table, iif) of the last single add that gave no warning:
        # the next add of the same, under rules that compare equal, is not walked again
        # (a client adding routes one by one at full speed pays a comparison an add).
        self._quiet: tuple[Rules, int, int, str] | None = None
        self.learner: Learner | None = None  # learned entries (None: flush has none)
        # Learned entries flushed, or let go of with their template, a slice at a time with
        # other clients served in between (the daemon turns it on; else one transaction).
        self.slicing = False
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
            "join": self.join,
            "leave": self.leave,
            "group.show": self.group_show,
            "reload": self.reload_unavailable,
            "flush": self.flush_learned,
        }
        self.events = EventBus()  # what `monitor` subscribers are told
        # Commands answered later when `slicing` and their work is long (None: at once).
        self.sliced: dict[str, Callable[[Any, dict[str, Any], Peer], Deferred | None]] = {
            "flush": self._flush_sliced,
            "mfc.del": self._del_template_sliced,
        }
        # Commands the server completes itself (see Deferred).
        self.deferred: dict[str, Callable[[Any, dict[str, Any], Peer], Deferred]] = {
            "diagnose": self.diagnose,
            "monitor": self.monitor,
        }

    def handle(self, line: bytes | bytearray, peer: Peer) -> bytes:
        """One request, answered once what it changed is durable (a group of its own). A
        deferred command (diagnose, monitor, reload) is refused here: only the server
        completes those."""
        answer = self.submit(line, peer)
        if answer.group is not None:
            self.flush()
        response = self.settle(answer)
        if isinstance(response, Deferred):
            message = "this command streams or answers later: only the control socket serves it"
            return protocol.encode_error(response.request_id, "bad_request", message)
        return response if isinstance(response, bytes) else response.join()

    def submit(self, line: bytes | bytearray, peer: Peer) -> Answer:
        """Handle one request now; its answer (a Deferred the server completes, for
        diagnose, monitor and reload) waits for the group it joined (if any)."""
        deferrals = self.controller.deferrals
        self._confirmed = False
        # Decoding and validating a large batch allocates as much as applying it does.
        with gc_paused():
            # (timed and counted here, not in a function of its own: a call per request)
            started = time.monotonic()
            command, result = "invalid", "internal_error"  # (as /metrics counts requests)
            try:
                response, command, result = self._answer(line, peer)
            finally:
                self.registry.request(command, result, time.monotonic() - started)
        # A change that found its work done already (the same route as another request of
        # the group) confirms what that sync may still refuse: it waits for the same verdict.
        changed = self.controller.deferrals != deferrals or self._confirmed
        # (tuple.__new__: a NamedTuple's own __new__ is a Python function, a call per request)
        return _new_answer(Answer, (response, self.controller.group, changed))

    def flush(self) -> None:
        """Sync the group of changes waiting (one journal record); see controller.flush."""
        if self.controller.group is None and self.controller.syncing is None:
            return
        self.controller.flush()
        self._changed()  # (a compaction may be due, or a table empty again)

    def finish_sync(self) -> None:
        """Conclude the group a thread journaled; see controller.finish_sync."""
        self.controller.finish_sync()
        self._changed()

    def flushed(self) -> None:
        """After a group was concluded by `controller.flush` directly (the daemon's state
        file keeper and compaction): the after-change work its single-route changes left
        to their sync (see _change), if any."""
        if self._change_due:
            self._changed()

    def _changed(self) -> None:
        self._change_due = False
        if self.on_change is not None:
            self.on_change()

    def settle(self, answer: Answer) -> protocol.Response | Deferred:
        """The response to send once the answer's group is flushed: its own, or if the sync
        failed and the request changed something, that error (it was undone)."""
        group = answer.group
        response = answer.response  # (show's Stream and the Deferreds change nothing)
        if group is None or group.error is None or not answer.changed:
            return response
        assert not isinstance(response, Deferred)
        sent = protocol.decode(response if isinstance(response, bytes) else response.join())
        request_id = sent.get("id")
        error = group.error
        return protocol.encode_error(request_id, error.code, str(error)[:MAX_MESSAGE])

    def _answer(
        self, line: bytes | bytearray, peer: Peer
    ) -> tuple[protocol.Response | Deferred, str, str]:
        """The response (a Deferred for diagnose, monitor and reload), the command (or "invalid"
        before it is known) and the result ("ok" or the error code)."""
        request_id: Any = None
        cmd = "invalid"
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
            if (
                cmd in _ONE_ROUTE
                and not dry_run
                # (_names_template's test, without its call: this is every single change)
                and not validate.names_template(args.get("source"), args.get("group"))
            ):
                return self._one_route(request_id, cmd, args, peer), cmd, "ok"
            if cmd == "reload" and self.reloader is not None:
                validate.require_fields(args, ())
                reload = self._reload
                return Deferred(request_id, lambda: reload(request_id, dry_run, peer)), cmd, "ok"
            if cmd in self.deferred:  # (counted when accepted, not when answered)
                return self.deferred[cmd](request_id, args, peer), cmd, "ok"
            if self.slicing and not dry_run and cmd in self.sliced:
                later = self.sliced[cmd](request_id, args, peer)
                if later is not None:
                    return later, cmd, "ok"
            result = self.table[cmd](args, dry_run, peer)
            return protocol.encode_response(request_id, result), cmd, "ok"
        except Exception as e:
            code = e.code if isinstance(e, MfcdError) else "internal_error"
            return self._failure(request_id, e, peer), cmd, code

    def _failure(self, request_id: Any, e: Exception, peer: Peer) -> bytes:
        """The error response for a request that raised `e` (logged if it is a bug)."""
        if isinstance(e, MfcdError):
            if e.code not in ("not_found",):
                log.debug("%s: rejected: %s", peer, e)
            message = _clip(str(e))
            return protocol.encode_error(
                request_id, e.code, message, e.field, op=e.op, line=e.line, file=e.file
            )
        # A bug; keep serving everyone else.
        log.error("internal error while handling a request from %s", peer, exc_info=e)
        return protocol.encode_error(request_id, "internal_error", f"internal error: {e}")

    async def _reload(self, request_id: Any, dry_run: bool, peer: Peer) -> bytes:
        assert self.reloader is not None
        try:
            result = await self.reloader(dry_run)
        except MfcdError as e:
            return self._failure(request_id, e, peer)
        except Exception as e:  # a bug; keep serving everyone else
            log.exception("internal error while reloading for %s", peer)
            return protocol.encode_error(request_id, "internal_error", f"internal error: {e}")
        if not dry_run:
            log.info("%s reload: %s", peer, result["summary"])
        return protocol.encode_result(request_id, result)

    def reload_unavailable(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        raise BadRequest("reload is not available in this mfcd")

    def _envelope(self, msg: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
        if not ENVELOPE_FIELDS.issuperset(msg):
            unknown = set(msg) - ENVELOPE_FIELDS
            raise BadRequest(f"unknown field {sorted(unknown)[0]!r} in request")
        version = msg.get("v")
        if type(version) is not int or version != protocol.PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {version!r} is not supported; this mfcd speaks"
                f" version {protocol.PROTOCOL_VERSION} (upgrade mfcctl and mfcd together)"
            )
        cmd = msg.get("cmd")
        if not isinstance(cmd, str) or (cmd not in self.table and cmd not in self.deferred):
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
            streamed=True,
            table=table,
            learned_since=learner.since if learner is not None else None,
            patterns=self.controller.shown_patterns(),
            unexpanded=self.controller.unexpanded_templates(),
        )
        if stats and learner is not None:
            learned = len(learner.router.learned)
            result["learning"] = views.learning_stats(
                learned, learner.max_learned, learner.idle_timeout, learner.counts
            )
        return result

    def flush_learned(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, ())
        learned = len(self.controller.router.learned)
        if dry_run or self.learner is None:
            return {"dry_run": dry_run, "flushed": learned if dry_run else 0}
        flushed = self.learner.flush()
        log.info("%s flush: %d learned entries removed", peer, flushed)
        if self.on_change is not None:
            self.on_change()
        return {"dry_run": False, "flushed": flushed}

    def _flush_sliced(self, request_id: Any, args: dict[str, Any], peer: Peer) -> Deferred | None:
        """flush, a slice at a time (learning.Learner.flushing), answered at its end."""
        validate.require_fields(args, ())
        learner = self.learner
        if learner is None:
            return None

        async def answer() -> bytes:
            flushed = await run_sliced(learner.flushing())
            log.info("%s flush: %d learned entries removed", peer, flushed)
            if self.on_change is not None:
                self.on_change()
            return protocol.encode_result(request_id, {"dry_run": False, "flushed": flushed})

        return Deferred(request_id, answer=answer)

    def _del_template_sliced(
        self, request_id: Any, args: dict[str, Any], peer: Peer
    ) -> Deferred | None:
        """mfc.del of a template with learned entries: they go a slice at a time first
        (learning.Learner.retiring), then the template in one transaction, journaled, as
        any mfc.del. If that fails, the template stays: the entries re-pointed to another
        template are pointed at it again (a slice at a time too), those removed are learned
        again from the traffic."""
        learner = self.learner
        if learner is None or not _names_template(args):
            return None
        key = self._del_template(args).key
        if not self.controller.router.learned_count(key):
            return None

        async def answer() -> bytes:
            drained: list[Step] = []  # (only counted: see _change)
            learned = self.controller.router.learned_from(key)
            try:
                await run_sliced(learner.retiring(key, drained))
                result = self._change(
                    [DelTemplate(key)], False, peer, "mfc.del", args, drained=drained
                )
            except Exception as e:
                await run_sliced(learner.rematching(learned))
                return self._failure(request_id, e, peer)
            return protocol.encode_result(request_id, result)

        return Deferred(request_id, answer=answer)

    def vif_show(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("stats", "table"))
        controller, table = self.controller, _table_filter(args)
        declared = views.Settings(
            controller.declared.thresholds(),
            controller.declared.mrdisc(),
            controller.declared.table_thresholds(),
        )
        return self.views.vif_show(
            controller.router,
            stats=_flag(args, "stats"),
            table=table,
            mrdisc=controller.joins.mrdisc,
            declared=declared,
        )

    def diagnose(self, request_id: Any, args: dict[str, Any], peer: Peer) -> Deferred:
        """Walk one flow's path (probes.diagnose): validated now, answered after sampling."""
        validate.require_fields(args, ("group",), ("source", "table", "seconds"))
        family, group = validate.group_of(args["group"])
        source = args.get("source")
        table = args.get("table")
        if source is not None:
            family, source, group, number = validate.route_key_of(source, group, table)
        else:
            number = validate.table_of(table, family)
        self._check_family(family)
        seconds = validate.seconds(
            args.get("seconds", DIAGNOSE_SECONDS), "seconds", 0.1, MAX_DIAGNOSE_SECONDS
        )
        # Without a table, every table that holds a route or template for the flow.
        query = Query(family, group, source, None if table is None else number, seconds)

        async def answer() -> bytes:
            try:
                controller = self.controller
                # (the tables another router owns, as the kernel found them at their opening)
                owned = controller.kernel.owned_tables()
                result = await probes.diagnose(
                    controller.router,
                    controller.kernel,
                    query,
                    self.left_out(),
                    owned=frozenset(t for f, t in owned if f == family),
                    joined=list(controller.joins.joined),
                )
            except Exception as e:
                return self._failure(request_id, e, peer)
            return protocol.encode_result(request_id, result)

        return Deferred(request_id, answer=answer)

    def monitor(self, request_id: Any, args: dict[str, Any], peer: Peer) -> Deferred:
        """Subscribe this connection to the event stream (the server streams it)."""
        validate.require_fields(args, ())
        return Deferred(request_id, subscribe=True)

    def sync(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("full",))
        if self.plane is None:
            raise BadRequest("sync is not available in this mfcd")
        full = _flag(args, "full") or len(self.controller.router.installed) <= FULL_SYNC_ROUTES
        view = observe(self.plane, self.families, full, self.controller.router.tables())
        repairs = self.controller.sync(view, dry_run=dry_run)
        if not dry_run:
            log.info("%s sync: %d repairs", peer, len(repairs))
            if self.on_repaired is not None:
                self.on_repaired(repairs)
            else:
                self.registry.drift_checked(repairs, time.time())  # mfcd_drift_repairs_total
            if self.on_change is not None:
                self.on_change()  # a retried route may have opened or emptied a table
        return {"dry_run": dry_run, "repairs": repairs, "full": full}

    def mfc_add(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        change: AddRoute | AddTemplate
        if _names_template(args):
            change = self._add_template(args)
        else:
            change = validate.route_change(args)
            self._check_family(change.key[0])
        result = self._change([change], dry_run, peer, "mfc.add", args)
        return self._warned(result, _reaching([change], ()))

    def _unreached(self, wanted: Iterable[tuple[int, int, str]]) -> list[str]:
        """The warnings of the (family, table, iif) `wanted` whose traffic the multicast
        rules send to another table (diagnosis.unreached): accepted, but forwarding
        nothing."""
        if self.mrules is None:
            return []
        return unreached_warnings(wanted, self.mrules, validate.table_numbers)

    def _one_unreached(self, change: Change) -> list[str]:
        """_unreached of a single add (see _quiet)."""
        if self.mrules is None or not isinstance(change, AddRoute):
            return self._unreached(_reaching([change], ()))
        key = change.key
        rules = self.mrules(key[0])
        quiet = (rules, key[0], key[3], change.ports.iif)
        if quiet == self._quiet:
            return []
        warnings = unreached_warnings([quiet[1:]], lambda _: rules, validate.table_numbers)
        self._quiet = None if warnings else quiet
        return warnings

    def _warned(
        self, result: dict[str, Any], wanted: Iterable[tuple[int, int, str]]
    ) -> dict[str, Any]:
        """`result` with the warnings of `wanted` (see _unreached), if any."""
        warnings = self._unreached(wanted)
        if warnings:
            result["warnings"] = warnings
        return result

    def mfc_del(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        if _names_template(args):
            return self._change([self._del_template(args)], dry_run, peer, "mfc.del", args)
        key = validate.key(args)
        self._check_family(key[0])
        return self._change([DelRoute(key)], dry_run, peer, "mfc.del", args)

    def _one_route(self, request_id: Any, cmd: str, args: dict[str, Any], peer: Peer) -> bytes:
        """The response to mfc.add or mfc.del of one route (no template, no dry run): what
        mfc_add or mfc_del and encode_response give, in fewer steps; when the one-route
        transaction takes it, the response formatted directly (views.route_response).
        tests/unit/test_one_route_lane.py holds it to the general path."""
        add = cmd == "mfc.add"
        change = validate.route_change(args) if add else DelRoute(validate.key(args))
        key = change.key
        if key[0] not in self.families:
            self._check_family(key[0])
        was = self._replaced([change]) if self.events.subscribers else None
        outcome = self.controller.change_one(change)
        warnings = self._one_unreached(change) if add else []
        if outcome is None:  # (not a case it covers: the general transaction)
            result = self._change([change], False, peer, cmd, args)
            if warnings:
                result["warnings"] = warnings
            return protocol.encode_result(request_id, result)
        router = self.controller.router
        # (installed: nothing missing, no reason; "degraded" is installed with a part missing)
        installed = add and router.status(key).state == "installed"
        response = None
        if (installed or not add) and not warnings:
            response = views.route_response(
                request_id, outcome.counts, outcome.steps, installed, router.slots
            )
        note = ""
        if response is None:  # (a VIF added or removed, a route not installed)
            result = views.change_result(
                router,
                changes=1,
                counts=outcome.counts,
                steps=outcome.steps,
                dry_run=False,
                added=key if add else None,
            )
            if warnings:
                result["warnings"] = warnings
            response = protocol.encode_result(request_id, result)
            note = _state_note(result)
        self._after_change(
            [change], outcome, True, peer=peer, cmd=cmd, args=args, note=note, was=was
        )
        return response

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
            others = (k[3] for k in self.controller.router.templates if k[:3] == key[:3])
            hint = tables_hint(key[0], "one", (t for t in others if t != key[3]))
            raise NotFound(f"no template {template_text(key).rsplit(' iif ', 1)[0]}{hint}")
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
        lookup = _BatchRoutes(self.controller.router, [], self.controller.wild_routes).get
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
        names = validate.interfaces(oifs, "oifs", wild=True)
        ports = lookup(key)
        if ports is None:
            hint = self.controller.router.elsewhere(key)
            raise NotFound(f"no route for source {key[1]} group {key[2]}{_in_table(key)}{hint}")
        new = _new_oifs(kind, key, ports, names)
        return validate.add_change(key[1], key[2], ports.iif, list(new), key[3])

    def vif_set(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, ("interface",), ("threshold", "mrdisc", "table"))
        name = validate.one_interface(args["interface"], "interface")
        table = _setting_table(args)
        changes: list[Change] = []
        if "threshold" in args:
            changes.append(_threshold_change(name, args["threshold"], table))
        if "mrdisc" in args:
            if table is not None:
                raise InvalidArgument(
                    "mrdisc is per interface, not per table (it sends its advertisements on"
                    " the link): set it without --table",
                    field="table",
                )
            on = _flag(args, "mrdisc")
            if on and 4 not in self.families:
                raise InvalidArgument(
                    "multicast router discovery is IPv4 only, and IPv4 is disabled in this"
                    " mfcd's configuration",
                    field="mrdisc",
                )
            changes.append(SetMrdisc(name, on))
        if not changes:
            raise BadRequest("vif.set needs threshold or mrdisc (or both)", field="threshold")
        result = self._change(changes, dry_run, peer, "vif.set", args)
        router = self.controller.router
        if dry_run or not any(map(_keeps, changes)):  # (a removal waits for nothing)
            return result
        if name not in router.links:
            result["missing"] = [name]  # kept; applies when it appears (a typo is seen)
        ipv6 = sorted(t for (f, t), names in router.slots.items() if f == 6 and name in names)
        if ipv6 and any(isinstance(c, SetThreshold) for c in changes):
            tables = ", ".join(map(str, ipv6))
            result["warnings"] = [
                f"a threshold limits IPv4 only: {name} also forwards IPv6 routes (a VIF of"
                f" IPv6 table {tables}), which it does not limit"
            ]
        return result

    # --- group joins -----------------------------------------------------------------------------

    def join(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        keys = self._join_keys(args)
        result = self._change([Join(k) for k in keys], dry_run, peer, "join", args)
        if not dry_run:
            if is_wildcard(keys[0][0]):  # the joins it stands for now
                keys = [e for k in keys for e in self.controller.expanded_joins(k)]
            links = self.controller.router.links
            result.update(views.join_states(self.controller.joins, keys, links))
        return result

    def leave(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        """Leave the joins named; of a prefix, those still joined (the others are listed as
        `already_left`). Any other refusal (a join the files declare, one of a wildcard's)
        leaves nothing."""
        keys = self._join_keys(args)
        controller = self.controller
        joined = controller.wild_joins if is_wildcard(keys[0][0]) else controller.joins.wanted
        named = describe_key(keys[0])
        if len(keys) > 1:  # a prefix: as given
            named = describe_key((keys[0][0], args["group"], args.get("source") or ANY_SOURCE))
        keys, left = groups.leaving(keys, joined, named)
        result = self._change([Leave(k) for k in keys], dry_run, peer, "leave", args)
        if left:
            result.update(left=len(keys), already_left=[views.join_entry(k) for k in left])
        return result

    def group_show(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, ())
        controller = self.controller
        owner = controller.join_owner if controller.wild_joins else None
        return views.group_show(controller.joins, owner)

    def _join_keys(
        self, args: Any, fields: tuple[str, ...] = ("interface", "group")
    ) -> list[JoinKey]:
        validate.require_fields(args, fields, ("source",))
        return self._join_keys_of(args["interface"], args["group"], args.get("source"))

    def _join_keys_of(self, interface: Any, group: Any, source: Any) -> list[JoinKey]:
        name = validate.interface_or_wildcard(interface, "interface")  # "vlan*": each vlan
        keys = groups.join_keys(name, group, source)
        self._check_family(groups.family_of(keys[0]))
        return keys

    def batch(self, args: dict[str, Any], dry_run: bool, peer: Peer) -> dict[str, Any]:
        validate.require_fields(args, (), ("ops", "text", "plan", "table"))
        if ("ops" in args) == ("text" in args):
            raise BadRequest("a batch takes either ops (a list) or text (batch file lines)")
        text = args.get("text")
        if "text" in args and not isinstance(text, str):
            raise BadRequest("text must be a string", field="text")
        table = args.get("table")  # (of the lines and ops that name none)
        if table is not None:
            validate.table_of(table, 4)  # (a bad name or type: said once, not at each line)
        # (a source seen again only after many others is still shared: see address_sharing)
        with address_sharing.bulk():
            if text is not None:
                changes, deleted, updated, runs = self._read_text(text, table)
            else:
                changes, deleted, updated = self._op_changes(args["ops"], table)
                runs = []
        # A batch answers with counts; the step-by-step plan (as large as the batch) only when
        # asked for or in a dry run.
        plan = dry_run or _flag(args, "plan")
        if plan:
            runs = []  # (a plan lists each route's step)
        try:
            result = self._change(
                changes, dry_run, peer, "batch", {"ops": len(changes)}, plan=plan, runs=runs
            )
        except MfcdError as e:
            if text is not None and e.op is not None:  # people count the lines of their file
                e.line = _line_of(e.op, text)
                # `line` is now the batch text's: a `file` (where a declared_in_config's route
                # is declared) would pair with it wrongly. The message still names FILE:LINE.
                e.op, e.file = None, None
            raise
        kinds = Counter(map(type, _outside(changes, runs)))  # (runs hold AddRoutes alone)
        counts = views.batch_counts(
            changes=len(changes),
            deleted=deleted,
            updated=updated,
            joined=kinds[Join],
            left=kinds[Leave],
            templates=(kinds[AddTemplate], kinds[DelTemplate]),
            pending=None if dry_run else self._pending(changes, runs),
        )
        result.update(counts)
        return self._warned(result, _reaching(changes, runs))

    def _pending(
        self, changes: list[Change], runs: Sequence[RouteRun]
    ) -> tuple[int, int, list[str]]:
        """How many of the routes a batch added wait for interfaces that do not exist: not
        installed (pending: their iif, say) or installed without them (degraded), and which
        interfaces those are. A run's routes share their interfaces: looked at once a run."""
        router = self.controller.router
        short = router.short  # (wildcard routes short of what they match: degraded too)
        if (
            not router.waiting
            and all(vif.ifindex is not None for vif in router.vifs.values())
            # Only the batch's own routes count: a wildcard route short of an interface
            # somewhere else must not cost a look at each of 100,000 (the keys, in C).
            and (not short or short.keys().isdisjoint(map(_FIRST, _outside(changes, runs))))
        ):
            return 0, 0, []  # the common case, known without looking at 100,000 routes
        links, routes, installed = router.links, router.routes, router.installed
        missing_of: dict[int, tuple[str, ...]] = {}  # id(ports): its missing interfaces
        waiting: tuple[set[RouteKey], set[RouteKey]] = (set(), set())  # pending, degraded
        names: set[str] = set()

        def note(keys: Iterable[RouteKey], ports: Ports) -> None:
            # (one shared Ports value per combination: checked once each)
            missing = missing_of.get(id(ports))
            if missing is None:
                missing = tuple(n for n in ports.interfaces if n not in links)
                missing_of[id(ports)] = missing
            if not missing:
                return
            for key in keys:
                if routes.get(key) == ports:  # still so after the batch
                    # (installed with its iif gone since: pending, as Router.status says)
                    waiting[key in installed and ports.iif in links].add(key)
                    names.update(missing)

        for run in runs:
            note(run.keys, run.ports)
        for change in _outside(changes, runs):
            if isinstance(change, AddRoute):
                note((change.key,), change.ports)
                if change.key in short and change.key not in waiting[0]:
                    waiting[1].add(change.key)
                    names.update(n for n in short[change.key] if is_wildcard(n))
        return len(waiting[0]), len(waiting[1]), sorted(names)

    def _op_changes(self, ops: Any, table: Any = None) -> tuple[list[Change], int, int]:
        """A batch's ops as changes, with how many delete a route and how many change oifs
        (`table`: that of the ops that name none, if not the family's default)."""
        if not isinstance(ops, list):
            raise BadRequest("ops must be a list", field="ops")
        if table is not None:
            ops = [_with_table(op, table) for op in ops]
        changes: list[Change] = []
        routes = _BatchRoutes(self.controller.router, changes, self.controller.wild_routes)
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

    def _read_text(
        self, text: str, table: Any = None
    ) -> tuple[list[Change], int, int, list[RouteRun]]:
        """A batch text's changes, with how many delete a route and how many change oifs, and
        the runs of them that add routes on one table and interfaces (see RouteRun); `table`:
        that of the lines that name none, if not the family's default.

        Stretches of usual IPv4 adds are read and validated as columns (batchscan.pieces);
        if one holds a mistake, the text is read again line by line, which names the first
        wrong line exactly as it always has."""
        try:
            return self._read_pieces(text, table, fast=True)
        except _ReadAgain:
            pass  # (read again after the handler: the first pass's lists are freed first)
        return self._read_pieces(text, table, fast=False)

    def _read_pieces(
        self, text: str, default: Any, fast: bool
    ) -> tuple[list[Change], int, int, list[RouteRun]]:
        """_read_text, reading stretches as columns if `fast` (_ReadAgain: one is wrong)."""
        changes: list[Change] = []
        runs: list[RouteRun] = []
        # A run of adds is kept as keys and ports and made AddRoutes when the run ends (see
        # _AddRun): the AddRoutes then lie together, apart from the routes' group strings.
        run = _AddRun(changes, runs)
        add = run.append
        families = self.families
        add_change = validate.add_change
        routes = _BatchRoutes(self.controller.router, run, self.controller.wild_routes)
        lineno = deleted = updated = 0
        try:
            for piece in batchscan.pieces(text) if fast else batch_lines(text):
                if isinstance(piece, batchscan.Run):  # lines read as columns
                    lineno = piece.line
                    if not self._take_run(piece, run, default):
                        raise _ReadAgain
                    continue
                lineno, kind, source, group, iif, oifs, table = piece
                if table is None:
                    table = default
                if (source == "*" or "/" in source or "/" in group) and kind in ("add", "del"):
                    add(self._template_line(kind, source, group, iif, oifs, table=table))
                    deleted += kind == "del"
                elif kind == "add":
                    key, ports = add_change(source, group, iif, oifs, table)
                    if key[0] not in families:
                        self._check_family(key[0])
                    run.keys.append(key)
                    run.ports.append(ports)
                elif kind == "del":
                    key = validate.route_key_of(source, group, table)
                    self._check_family(key[0])
                    add(DelRoute(key))
                    deleted += 1
                elif kind in ("join", "leave"):
                    # (a line's interface comes as its "iif", a join's any source as "")
                    keys = self._join_keys_of(iif, group, source or None)
                    kind_of = Join if kind == "join" else Leave
                    run.end()
                    changes += [kind_of(key) for key in keys]
                else:
                    add(self._oif_change(kind, source, group, oifs, routes.get, table=table))
                    updated += 1
        except batchfile.SyntaxProblem as e:
            raise BatchSyntax(str(e), line=e.line) from None
        except MfcdError as e:  # (lineno is the failing line's)
            e.line = lineno
            raise
        run.end()
        return changes, deleted, updated, runs

    def _take_run(self, piece: batchscan.Run, run: _AddRun, default: Any = None) -> bool:
        """Add a batchscan.Run's lines (addresses valid already) to the changes, each stretch
        on one table and interfaces as one run (see _AddRun.take); False, having added
        nothing, if a line is wrong or not a plain route's (its interfaces, table or family)
        or a wildcard's: the caller then reads the text line by line."""
        if 4 not in self.families:
            return False
        iifs, oifs, tables = piece.iifs, piece.oifs, piece.tables
        try:
            # (None: the batch's table, or the family's default table)
            numbers = {t: validate.ipv4_table(default if t is None else t) for t in set(tables)}
            # (no pair made a line; list.count needs no hash of each fresh string, as set does)
            one = iifs.count(iifs[0]) == len(iifs) and oifs.count(oifs[0]) == len(oifs)
            combos = {(iifs[0], oifs[0])} if one else set(zip(iifs, oifs, strict=True))
            # (oifs as written, "r1" or "r1,r2": each distinct text read into names once)
            shared = {
                combo: validate.route_ports(combo[0], batchscan.oif_names(combo[1]))
                for combo in combos
            }
        except MfcdError:
            return False
        if any(ports.__class__ is not Ports for ports in shared.values()):
            return False  # a wildcard oif: its pattern is followed by the general path
        sources = address_sharing.sources(piece.sources)
        groups = address_sharing.groups(piece.groups)
        if len(numbers) == 1 and len(shared) == 1:
            (ports,) = shared.values()
            (number,) = numbers.values()
            stretches = [(len(sources), ports, number)]
        else:  # (rare: lines of several tables or interfaces, taken as they come)
            # By their Ports, not their words: "r1,r2" and "r1 r2" are one run.
            marks = zip(
                map(shared.__getitem__, zip(iifs, oifs, strict=True)),
                map(numbers.__getitem__, tables),
                strict=True,
            )
            stretches = [
                (len(list(same)), ports, number) for (ports, number), same in groupby(marks)
            ]
        begin = 0
        for size, ports, number in stretches:
            end = begin + size
            if size < len(sources):
                sources_of, groups_of = sources[begin:end], groups[begin:end]
            else:
                sources_of, groups_of = sources, groups
            keys = list(zip(repeat(4), sources_of, groups_of, repeat(number)))
            run.take(keys, ports, sources_of, groups_of)
            begin = end
        return True

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
            change = validate.route_change(op, validate.BATCH_ADD_FIELDS)
            self._check_family(change.key[0])
            return change
        if kind == "del":
            key = validate.key(op, validate.BATCH_DEL_FIELDS)
            self._check_family(key[0])
            return DelRoute(key)
        if kind in ("join", "leave"):
            keys = self._join_keys(op, ("op", "interface", "group"))
            if len(keys) != 1:
                raise InvalidArgument(
                    "a batch's join and leave ops name one group and source each (no"
                    " prefixes; batch text lines take them)",
                    field="group",
                )
            return Join(keys[0]) if kind == "join" else Leave(keys[0])
        raise BadRequest(
            f'op must be "add", "del", "oif_add", "oif_del", "join" or "leave", not {kind!r}',
            field="op",
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
        drained: Sequence[Step] = (),
        runs: Sequence[RouteRun] = (),
    ) -> dict[str, Any]:
        """Apply `changes`; the result. `drained`: kernel steps taken before for them (the
        learned entries of a template let go of a slice at a time): counted, not listed in
        the plan (100,000 of them would hold the loop for a second or two, formatted and
        encoded at once). `runs`: see Controller.change."""
        outcome = None
        was = self._replaced(changes) if self.events.subscribers and not dry_run else None
        if len(changes) == 1 and plan and not dry_run and cmd != "batch" and not runs:
            one = changes[0]
            if one.__class__ is AddRoute or one.__class__ is DelRoute:
                outcome = self.controller.change_one(one)  # (None: not a case it covers)
        one_route = outcome is not None
        # (the templates as they are before the change: what the plan's template lines say)
        templates = views.template_plan(changes, self._templates_before()) if plan else []
        if outcome is None:
            outcome = self.controller.change(
                changes, dry_run=dry_run, keep_steps=plan, numbered=cmd == "batch", runs=runs
            )
        if drained:
            outcome.counts.update(step.action for step in drained)
        only = changes[0] if len(changes) == 1 else None
        result = views.change_result(
            self.controller.router,
            changes=len(changes),
            counts=outcome.counts,
            steps=outcome.steps if plan else None,
            dry_run=dry_run,
            added=_added(self.controller.router, only),
        )
        if templates:
            result["plan"] = templates + result.get("plan", [])
        if not dry_run and "state" not in result:
            result.update(_unmatched(self.controller.router, only))
        if plan and outcome.memberships:
            memberships = map(views.describe_membership, outcome.memberships)
            result.setdefault("plan", []).extend(memberships)
        if not dry_run:
            note = _state_note(result, isinstance(only, AddTemplate))
            self._after_change(
                changes, outcome, one_route, peer=peer, cmd=cmd, args=args, note=note, was=was
            )
        return result

    def _templates_before(self) -> ChainMap[TemplateKey, Ports]:
        """The templates running, and the runtime ones with wildcards as given (not copied)."""
        return ChainMap(self.controller.router.templates, self.controller.wild_templates)

    def _replaced(self, changes: Iterable[Change]) -> Replaced:
        """What the routes and templates `changes` add replace (see `replaced`), read before
        they are applied."""
        return replaced(self.controller.router.routes, self._templates_before(), changes)

    def _after_change(
        self,
        changes: list[Change],
        outcome: Outcome,
        one_route: bool,
        *,
        peer: Peer,
        cmd: str,
        args: dict[str, Any],
        note: str,
        was: Replaced | None = None,
    ) -> None:
        """What follows an applied change (not a dry run): the daemon's after-change work,
        monitor events, and its log line (with its group's verdict, if it waits for one).
        `one_route`: the one-route transaction took it; `note`: see _state_note; `was`: what
        it replaced, read before it (only while someone subscribes to events)."""
        self._confirmed = self.controller.group is not None
        # A route whose entry alone changed (no VIF: no table opened or emptied, and no
        # template) waits for its group's sync, which calls on_change for all of them.
        later = one_route and self._confirmed and _entries_only(outcome.steps)
        if self.on_change is not None and not later:
            self.on_change()
        self._change_due |= later
        if self.events.subscribers:
            self._tell(changes, was)
        operations = sum(outcome.counts.values())
        # (the usual texts looked up, not made: this is every change)
        done = (_OUTCOMES.get(operations) or _outcome(operations)) + note
        group = self.controller.group
        if group is not None:  # (the change waits for its sync: logged with its verdict)
            self._done.setdefault(group, []).append((peer, cmd, args, done))
        else:
            log.info("%s %s %s: %s", peer, cmd, _summary(args), done)

    def _synced(self, group: Group) -> None:
        """A group's verdict: log what its changes did (or that they were undone)."""
        done = self._done.pop(group, None)
        if done and log.isEnabledFor(logging.INFO):
            lines = [f"{who.text} {cmd} {_summary(args)}: {what}" for who, cmd, args, what in done]
            if group.error is not None:
                log.info("undone, the sync failed: %s", "; ".join(lines))
            elif len(lines) == 1:
                log.info("%s", lines[0])
            else:
                log.info("%d changes, one sync: %s", len(lines), "; ".join(lines))
        if self.on_synced is not None:
            self.on_synced(group)

    def _tell(self, changes: list[Change], was: Replaced | None) -> None:
        """Tell monitor subscribers what a change did, one event per route or setting."""
        tell(self.events, self.controller.router, changes, len(changes), was=was)


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


class _ReadAgain(Exception):
    """A batch text's run of usual lines holds a mistake: read it again line by line."""


# Adds waiting in an _AddRun: keys, their Ports (one, or one each), the sources and groups.
_Waiting = tuple[list[RouteKey], Ports | list[Ports], Sequence[str], Sequence[str]]


class _AddRun:
    """A batch's list of changes, its latest adds kept as keys and ports until a change of
    another kind comes (or the end): those of lines read one by one as two lists, those of
    a batchscan.Run as a list of keys on one Ports each, which become RouteRuns.

    Memory: an AddRoute (56 bytes) lives until the batch is answered, a route's group string
    for good, and pymalloc puts both in the same 64-byte pools. Made one per line, they
    alternate, so the AddRoutes freed after the batch left a hole beside every group string
    (61 MiB at 1,000,000 routes, which the process never gave back). Made together when the
    adds end, they fill pools (and arenas) of their own, which are freed whole.
    """

    __slots__ = ("changes", "keys", "ports", "runs", "waiting")

    def __init__(self, changes: list[Change], runs: list[RouteRun]) -> None:
        self.changes = changes
        self.runs = runs  # where the runs' AddRoutes stand in `changes`, once made
        self.keys: list[RouteKey] = []
        self.ports: list[Ports] = []
        # Adds read before `keys` and not made yet, in order: a run's keys with their one
        # Ports and its columns (the journal's), or lines' keys with their Ports each.
        self.waiting: list[_Waiting] = []

    def append(self, change: Change) -> None:
        """Append a change that is not a route's add (the adds so far go first)."""
        self.end()
        self.changes.append(change)

    def take(
        self, keys: list[RouteKey], ports: Ports, sources: Sequence[str], groups: Sequence[str]
    ) -> None:
        """Add new routes of one family and table on the same Ports (a run: see RouteRun),
        the keys' sources and groups in order beside them. Fewer than RUN_MIN are taken
        as lines: a run's objects would cost more than they save."""
        if len(keys) < RUN_MIN:
            self.keys += keys
            self.ports += repeat(ports, len(keys))
            return
        self._wait_lines()
        self.waiting.append((keys, ports, sources, groups))

    def _wait_lines(self) -> None:
        if self.keys:
            self.waiting.append((self.keys, self.ports, (), ()))
            self.keys, self.ports = [], []

    def end(self) -> None:
        """Move the adds into the list of changes, as AddRoutes."""
        self._wait_lines()
        changes = self.changes
        for keys, ports, *columns in self.waiting:
            if isinstance(ports, list):  # lines read one by one
                pairs = zip(keys, ports, strict=True)
            else:
                self.runs.append(RouteRun(len(changes), keys, ports, *columns))
                pairs = zip(keys, repeat(ports))
            # tuple.__new__ on zip's pairs: half the cost of AddRoute(key, ports).
            changes += map(_new, repeat(AddRoute), pairs)
        self.waiting.clear()

    def __len__(self) -> int:
        return len(self.changes) + len(self.keys) + sum(len(wait[0]) for wait in self.waiting)

    def __iter__(self) -> Iterator[Change]:
        self.end()
        return iter(self.changes)


class _BatchRoutes:
    """The routes as a batch's changes so far leave them: what its oif ops build on.

    It catches up with the batch's list of changes only when asked, so the loop that reads
    a batch does no more work for batches without oif ops (nearly all of them).
    """

    def __init__(
        self, router: Router, changes: list[Change] | _AddRun, patterns: dict[RouteKey, Ports]
    ) -> None:
        self.routes = router.routes
        self.patterns = patterns
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
        if key in self.patterns:
            return self.patterns[key]  # a wildcard route's oifs as given, not its expansion
        return None if key in self.learned else self.routes.get(key)


def _outside(changes: list[Change], runs: Sequence[RouteRun]) -> Iterable[Change]:
    """The changes in none of the runs, in C (the type of each of 100,000 AddRoutes cost
    0.13 µs a route to count)."""
    if not runs:
        return changes
    gaps = []
    done = 0
    for run in runs:
        gaps.append(changes[done : run.start])
        done = run.start + len(run.keys)
    gaps.append(changes[done:])
    return itertools.chain.from_iterable(gaps)


def _reaching(changes: list[Change], runs: Sequence[RouteRun]) -> set[tuple[int, int, str]]:
    """The (family, table, iif) of the routes and templates `changes` add: a run's once,
    and of the routes outside runs, those that share their Ports with the one before
    once (a batch of 100,000 routes on a few interfaces costs a comparison a route)."""
    wanted = {(run.keys[0][0], run.keys[0][3], run.ports.iif) for run in runs if run.keys}
    # (the family too: one Ports may serve an IPv4 and an IPv6 route alike)
    last: tuple[Ports | None, int, int] = (None, 0, 0)
    for change in _outside(changes, runs):
        if isinstance(change, AddRoute):
            key, ports = change.key, change.ports
            if ports is last[0] and key[3] == last[1] and key[0] == last[2]:
                continue
            last = (ports, key[3], key[0])
            wanted.add((key[0], key[3], ports.iif))
        elif isinstance(change, AddTemplate):
            family, _, _, table, iif = change.key
            wanted.add((family, table, iif))
    return wanted


def _added(router: Router, change: Change | None) -> RouteKey | TemplateKey | None:
    """The route or template a single add left, whose state the answer gives (a template
    with a wildcard iif is none: it stands for one template per interface it matches)."""
    if isinstance(change, AddRoute):
        return change.key
    if isinstance(change, AddTemplate) and change.key in router.templates:
        return change.key
    return None


def _unmatched(router: Router, change: Change | None) -> dict[str, Any]:
    """The state of a template added with wildcard oifs that match no interface (the model
    holds none of it until one appears): pending, the wildcards named, so that a typo
    such as `vlna*` is said at once; {} for any other change."""
    if not isinstance(change, AddTemplate) or change.ports.__class__ is not Pattern:
        return {}
    if is_wildcard(change.key[4]) or change.key in router.templates:
        return {}
    unmatched = [n for n in change.ports.oifs if is_wildcard(n)]
    return {
        "state": "pending",
        "reason": f"no interface matches {', '.join(unmatched)} yet",
        "missing": unmatched,
    }


def _state_note(result: dict[str, Any], template: bool = False) -> str:
    """What a change's log line adds to its kernel operations: "; route STATE: REASON" for
    a route (or template) it left other than installed, else nothing."""
    state = result.get("state", "installed")
    if state == "installed":
        return ""
    return f"; {'template' if template else 'route'} {state}: {result.get('reason', '')}"


_ONE_ROUTE = frozenset({"mfc.add", "mfc.del"})  # taken by Commands._one_route


def _names_template(args: dict[str, Any]) -> bool:
    """Whether mfc.add/mfc.del arguments (or a batch op) name a template: no source, a
    source of any (\"*\", 0.0.0.0, ::) or a prefix on either side."""
    return validate.names_template(args.get("source"), args.get("group"))


def _clip(message: str) -> str:
    """An error message of at most MAX_MESSAGE characters (it may quote a value of any size)."""
    if len(message) > MAX_MESSAGE:
        return message[: MAX_MESSAGE - 3] + "..."
    return message


def _flag(args: dict[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", field=name)
    return value


def _summary(args: dict[str, Any]) -> str:
    """The arguments of a change as its log line shows them: key=value, lists joined by
    commas. The usual single mfc.add and mfc.del (their fields in the order mfcctl sends
    them, strings) are formatted in one go: what the loop makes of them (test_log_lines.py
    holds it to `_summary_of_any`)."""
    if len(args) in {2, 4}:
        shape = tuple(args)
        if shape == _ADD_ARGS:
            source, group, iif, oifs = args.values()
            if (
                oifs.__class__ is list
                and source.__class__ is str
                and group.__class__ is str
                and iif.__class__ is str
            ):
                return f"source={source} group={group} iif={iif} oifs={','.join(oifs)}"
        elif shape == _DEL_ARGS:
            source, group = args.values()
            if source.__class__ is str and group.__class__ is str:
                return f"source={source} group={group}"
    return _summary_of_any(args)


_ADD_ARGS = ("source", "group", "iif", "oifs")
_DEL_ARGS = ("source", "group")


def _summary_of_any(args: dict[str, Any]) -> str:
    # (a loop, not a comprehension, which in Python 3.11 is a function made and called: this
    # runs for every change)
    parts = []
    for k, v in args.items():
        parts.append(f"{k}={','.join(v)}" if isinstance(v, list) else f"{k}={v}")
    return " ".join(parts)


_ENTRY_ACTIONS = frozenset({"add_mfc", "del_mfc"})
_ACTION = attrgetter("action")  # of a Step
_FIRST = itemgetter(0)  # of a Change: its key (a route's, a template's) or interface


def _entries_only(steps: Sequence[Step]) -> bool:
    """Whether kernel steps write or delete MFC entries only (no VIF)."""
    return _ENTRY_ACTIONS.issuperset(map(_ACTION, steps))  # (in C: no generator, per change)


def _outcome(operations: int) -> str:
    if not operations:
        return "no kernel change"
    return f"{operations} kernel operation{'s' if operations != 1 else ''}"


_OUTCOMES = {n: _outcome(n) for n in range(4)}  # _outcome's usual answers


def _line_of(op: int, text: str) -> int | None:
    """The line of a batch text that holds its `op`-th change (counted from 1); a join or
    leave line of a prefix holds one change per join."""
    count = 0
    for lineno, kind, source, group, interface, *_ in batchfile.lines(text):
        count += len(groups.join_keys(interface, group, source or None)) if kind in _JOINS else 1
        if count >= op:
            return lineno
    return None


_JOINS = frozenset(batchfile.JOIN_OPS)


def _with_table(op: Any, table: Any) -> Any:
    """A batch op with the batch's table if it names none (a join's has none to name)."""
    if not isinstance(op, dict) or "table" in op or op.get("op") in ("join", "leave"):
        return op
    return {**op, "table": table}


def _in_table(key: RouteKey) -> str:
    """ " in table N" for a route of a table other than its family's default, else ""."""
    return "" if key[3] == DEFAULT_TABLE[key[0]] else f" in table {key[3]}"


def _setting_table(args: dict[str, Any]) -> int | None:
    """The table a vif.set applies to (None: every table). Thresholds act on IPv4 entries
    only, so "default" is IPv4's default table (253)."""
    value = args.get("table")
    return None if value is None else validate.table_of(value, 4)


def _keeps(change: Change) -> bool:
    """Whether a vif.set change keeps a setting (not one that removes it)."""
    if isinstance(change, SetThreshold):
        return change.threshold != NO_SETTING and (
            change.table is not None or change.threshold != DEFAULT_THRESHOLD
        )
    return isinstance(change, SetMrdisc) and change.on


def _threshold_change(name: str, value: Any, table: int | None) -> SetThreshold:
    """vif.set's threshold: a TTL, or "default" (no setting: in `table`, the one of every
    table applies there again)."""
    if value == "default":
        return SetThreshold(name, DEFAULT_THRESHOLD if table is None else NO_SETTING, table)
    return SetThreshold(name, validate.threshold(value), table)


def _table_filter(args: dict[str, Any]) -> int | None:
    """The table number a show asks for, views.DEFAULT_TABLES for "default" (each family's
    default table), or None for every table."""
    value = args.get("table")
    if value is None:
        return None
    return views.DEFAULT_TABLES if value == "default" else validate.table_of(value, 4)


def replaced(
    routes: Mapping[RouteKey, Ports],
    templates: Mapping[TemplateKey, Ports],
    changes: Iterable[Change],
) -> Replaced:
    """The routes and templates (of `routes`, `templates`: those there are before the
    change) that `changes` add again: their route.add and template.add events say what
    they replaced (`was`)."""
    was: Replaced = {}
    for change in changes:
        if isinstance(change, AddRoute):
            old = routes.get(change.key)
        elif isinstance(change, AddTemplate):
            old = templates.get(change.key)
        else:
            continue
        if old is not None:
            was.setdefault(change.key, old)
    return was


def tell(
    bus: EventBus,
    router: Router,
    changes: Iterable[Change],
    total: int,
    *,
    origin: str = "api",
    was: Replaced | None = None,
) -> None:
    """Tell monitor subscribers what `total` applied changes did, one event per route,
    template or setting, in their order (as the router holds them after; a route that a
    later change replaced or deleted, as its own change made it); once every subscriber's
    buffer is full the rest are only counted (a batch or reload of 100,000 routes: a gap).
    `origin`: where the changes came from, for what the router records no other origin of
    ("config": a reload, whose removed routes and templates the router no longer holds);
    `was`: the routes and templates they replaced, as they were (see `replaced`)."""
    emit = bus.emit
    was = was or {}
    # What the changes told so far made of a route or template (None: deleted): what a later
    # change of it in the same batch replaced, rather than what was there before the batch.
    # Only the told changes pass here (a buffer's worth at most): no cost for a large batch.
    made: dict[RouteKey | TemplateKey, Ports | None] = {}
    for index, change in enumerate(changes):
        if bus.saturated():  # a batch larger than every buffer: count the rest
            bus.drop(total - index)
            return
        if isinstance(change, SetThreshold):
            name = change.interface
            if change.table is None:
                emit("threshold", interface=name, threshold=change.threshold, origin=origin)
            else:  # (its threshold now: the every-table one where the table's was removed)
                threshold = router.threshold(name, change.table)
                emit(
                    "threshold",
                    interface=name,
                    threshold=threshold,
                    table=change.table,
                    origin=origin,
                )
            continue
        if isinstance(change, SetMrdisc):
            emit("mrdisc", interface=change.interface, on=change.on, origin=origin)
            continue
        if isinstance(change, (Join, Leave)):
            interface, group, source = change.key
            kind = "join" if isinstance(change, Join) else "leave"
            emit(kind, interface=interface, group=group, source=source, origin=origin)
            continue
        key = change.key
        old = made[key] if key in made else was.get(key)
        if isinstance(change, (AddTemplate, DelTemplate)):
            made[key] = change.ports if isinstance(change, AddTemplate) else None
            _tell_template(bus, router, change, origin, old)
            continue
        family, source, group, table = change.key
        fields = {
            "family": protocol.FAMILY_NAMES[family],
            "table": table,
            "source": source,
            "group": group,
            "origin": router.origins.get(change.key, origin),
        }
        if isinstance(change, DelRoute):
            made[key] = None
            emit("route.del", **fields)
            continue
        ports = change.ports
        if ports.__class__ is Pattern:  # (the model holds its expansion, as it was made)
            ports = expand(ports, router.links)
        made[key] = ports
        if router.routes.get(change.key) == ports:
            state = router.status(change.key).state
        else:  # replaced or deleted by a later change of the batch: as it was meanwhile
            state = router.state_with(ports)
        # (`was`, a field of its own at the end: a reader that knows it not reads the same)
        before = {} if old is None else {"was": {"iif": old.iif, "oifs": list(old.oifs)}}
        emit("route.add", **fields, iif=ports.iif, oifs=list(ports.oifs), state=state, **before)


def _tell_template(
    bus: EventBus,
    router: Router,
    change: AddTemplate | DelTemplate,
    origin: str,
    old: Ports | None = None,
) -> None:
    family, source, group, table, iif = key = change.key
    fields = {"family": protocol.FAMILY_NAMES[family], "table": table}
    fields.update(
        source=source, group=group, iif=iif, origin=router.template_origins.get(key, origin)
    )
    if isinstance(change, DelTemplate):
        bus.emit("template.del", **fields)
        return
    before = {} if old is None else {"was": list(old.oifs)}  # (as a plan's line says)
    ports = change.ports
    now = router.templates.get(key)
    if now is not None and (now == ports or ports.__class__ is Pattern):
        oifs = list(now.oifs)
        bus.emit("template.add", **fields, oifs=oifs, state=router.status(key).state, **before)
    elif isinstance(ports, Pattern):
        # A wildcard iif (or oifs that match no interface yet): the model holds one template
        # per interface it matches, or none; told as given, installed if one holds its VIFs.
        held = any(expansion_of(k, key) for k in router.holding)
        state = "installed" if held else "pending"
        bus.emit("template.add", **fields, oifs=list(ports.oifs), state=state, **before)
    else:  # replaced or deleted by a later change of the batch: as it was meanwhile
        state = router.state_with(ports)
        bus.emit("template.add", **fields, oifs=list(ports.oifs), state=state, **before)
