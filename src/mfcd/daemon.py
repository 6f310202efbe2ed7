"""mfcd, the daemon: wires config, kernel, state file, control socket, signals and readiness.

Start-up order matters: refuse early if another mfcd holds the state file's lock (checked
first: a second mfcd then never touches the socket) or serves the socket; take the
kernel's tables (MRT_INIT, or under systemd adopt those the previous mfcd left in the
fd store, which forward on meanwhile); load the state file and install its
routes; only then listen and tell systemd READY=1, so a client never sees a
half-restored daemon. An adopted table is then compared with the model as a whole and
repaired (a full drift check), as one another program left entries in.
Shutdown reverses it: stop taking requests, MRT_DONE (the kernel removes every VIF
and route the daemon added) unless the table's socket is in systemd's fd store (its
table then forwards on until the next mfcd adopts it, or a stop of the unit closes the
store and with it the table), remove the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import os
import pwd
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from mfcd import (
    __version__,
    config,
    declarations,
    diagnosis,
    directory_trust,
    groups,
    heap,
    metrics,
    mrdisc,
    netlink,
    notify,
    probes,
    protocol,
    validate,
    views,
)
from mfcd.commands import Commands, tell
from mfcd.controller import Controller, Outcome, Takeovers, gc_paused, observe, on_vifs
from mfcd.dataplane import Events, LinkChange, link_changes
from mfcd.errors import ConfigError, KernelError, MfcdError, StateError
from mfcd.events import EventBus
from mfcd.kernel import Kernel, MrouteSocket, release_passed
from mfcd.learning import Learner
from mfcd.membership import Memberships, link_running, lost_sources
from mfcd.metrics_server import MetricsServer, read_process
from mfcd.metrics_server import bind as bind_metrics_socket
from mfcd.model import (
    DEFAULT_TABLE,
    AddMfc,
    AddRoute,
    DelMfc,
    DelRoute,
    Ports,
    RouteKey,
    RouteStatus,
    SetThreshold,
    Step,
    TableKey,
    renamed_from,
)
from mfcd.server import Server, bind_control_socket, socket_permissions
from mfcd.slices import Budget, run_sliced
from mfcd.state import VERSION, Compaction, StateFile, route_columns
from mfcd.templates import TemplateKey

log = logging.getLogger("mfcd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfcd",
        description=(
            "Multicast routing daemon: owns the kernel's IPv4 and IPv6 multicast forwarding"
            " cache, persists routes and serves mfcctl on a Unix socket. Runs in the foreground"
            " and logs to stderr."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"configuration file (default {config.DEFAULT_PATH}; missing means defaults)",
    )
    parser.add_argument("--socket", metavar="PATH", help="control socket (overrides socket_path)")
    parser.add_argument("--state-file", metavar="PATH", help="state file (overrides state_file)")
    parser.add_argument(
        "--socket-group",
        metavar="GROUP",
        help='group that may use the control socket; "" for mfcd\'s own (overrides socket_group)',
    )
    parser.add_argument(
        "--log-level", choices=config.LOG_LEVELS, help="log verbosity (overrides log_level)"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration file and its drop-ins (routes, joins, interfaces too),"
        " print every problem as FILE:LINE: reason, and exit: 0 if it is valid, 1 if not;"
        " refuses a state or socket directory the start would refuse (unsafe); touches"
        " nothing (routes naming interfaces this machine lacks are valid: noted;"
        " a start leaves out each file with an error: on_config_error)",
    )
    parser.add_argument("--version", action="version", version=f"mfcd {__version__}")
    return parser


def setup_logging(level: str) -> None:
    # Under systemd the journal adds timestamps and the unit name itself.
    fmt = (
        "%(levelname)s: %(message)s"
        if "JOURNAL_STREAM" in os.environ
        else ("%(asctime)s mfcd[%(process)d] %(levelname)s: %(message)s")
    )
    logging.basicConfig(stream=sys.stderr, format=fmt, level=level.upper(), force=True)


# Settings a running daemon cannot change: SIGHUP keeps the running value and warns.
# on_config_error is read by a start only (a reload is all or nothing whatever it says).
RESTART_ONLY = (
    "socket_path",
    "state_file",
    "ipv4",
    "ipv6",
    "max_request_bytes",
    "metrics_listen",
    "on_config_error",
)
COMPACT_DELAY = 5.0  # seconds after start-up before a long journal is compacted
RESYNC_DELAY = 1.0  # seconds of quiet after link events before checking the kernel for drift
STATE_CHECK_INTERVAL = 1.0  # seconds between checks that the state file is still there
# Seconds between checks that the SSM joins' sources are still in the kernel (/proc/net/
# mcfilter[6], read only while there are such joins, in a thread: 20,000 joins are some
# 100 ms to read and parse).
JOIN_CHECK_INTERVAL = 5.0
# A join the kernel refused is tried again at that check, then at every 2nd, 4th, ... up to
# every REJOIN_MOST_TURNS-th (a minute) while the kernel refuses them all.
REJOIN_MOST_TURNS = 12
STATE_RETRY_INTERVAL = 30  # seconds to wait after writing it back failed
STOP_WAIT = 1.0  # seconds a stop waits for a cancelled SIGHUP reload to clean up
# Installed routes up to which the periodic drift check dumps the MFC (periodic_check).
# The dump runs in a thread, but its comparison with the model runs on the loop in one go:
# 13 ms at 10,000 routes, 80 ms at 30,000, about 200 ms at 100,000 (in-process, FakeKernel):
# fine for a sync someone asked for (FULL_SYNC_ROUTES), not every interval unasked.
PERIODIC_FULL_ROUTES = 10_000
MAX_DEFERRED_CHECKS = 3  # then the check runs on the event loop, where nothing can interleave
# Declared routes a reload's warnings count by their interfaces (Counter.update, in C: some
# 0.15 us a route), and routes it adds whose iif's table they note (Python: some 0.4 us a
# route), between two looks at the time (see slices.run_sliced).
COUNT_CHUNK = 5_000
REACH_CHUNK = 2_000
CHECK_CHUNK = 100  # routes a drift check looks at, probes and writes between two budget checks


# Signals whose default action kills the process, ignored with a log line. SIGQUIT would
# also dump core; stopping takes SIGTERM, which releases the kernel's tables cleanly.
IGNORED_SIGNALS = (
    signal.SIGUSR2,
    signal.SIGQUIT,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
)


def _ignore_signals_from_now_on(loop: asyncio.AbstractEventLoop) -> None:
    """mfcd is done: closing the loop would give each signal its default action back, and a
    second SIGTERM (an impatient operator's) would kill the process in its last steps.

    Each signal goes straight from the loop's handler to SIG_IGN, never through SIG_DFL:
    `loop.remove_signal_handler` sets SIG_DFL, and a SIGTERM in that instant ended mfcd
    (seen once under a test's storm of SIGTERMs). So the loop only forgets the handlers
    (its own bookkeeping, which closing the loop would otherwise undo with SIG_DFL)."""
    handlers = getattr(loop, "_signal_handlers", None)  # (asyncio's unix event loops)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, *IGNORED_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)
        if isinstance(handlers, dict):
            handlers.pop(sig, None)
        else:  # another loop: its own removal (the brief SIG_DFL stays possible there)
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    if isinstance(handlers, dict) and not handlers:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)  # as the loop does once its last handler is gone


def _ignore(sig: signal.Signals) -> None:
    log.warning(
        "ignoring %s (SIGTERM stops mfcd, SIGHUP reloads, SIGUSR1 logs the status)", sig.name
    )


def _write_and_release(job: Compaction) -> None:
    """The compaction thread's work: the snapshot, then its copy's and records' memory given
    back to the system (malloc_trim runs without the GIL, so not at the loop's expense)."""
    job.write()
    heap.release()


class Daemon:
    # Set once start-up has taken the kernel's tables (see run()).
    controller: Controller
    kernel: Kernel
    members: Memberships
    learner: Learner
    state: StateFile
    monitor: netlink.LinkMonitor

    def __init__(
        self,
        cfg: config.Config,
        config_path: str | None,
        overrides: dict[str, str | None],
        declared: declarations.Declarations | None = None,
        read_cache: config.ReadCache | None = None,
        *,
        left_out: Sequence[str] = (),
    ) -> None:
        self.cfg = cfg
        # The config files (or drop-in directory) whose declarations a start left out for an
        # error (on_config_error = "skip_file"): told in the status until a reload applies all.
        self.left_out = list(left_out)
        # What the config files declared at start: applied once the state file's routes are.
        self.declared = declared or declarations.Declarations()
        self._reloading = asyncio.Lock()  # one reload at a time
        # What the files held when last read: a reload parses only the files that changed.
        self._read_cache = read_cache or config.ReadCache()
        # The multicast rules (`ip mrule`), for the warning of a route that they do not send
        # its iif's traffic to (mfc add, batch, reload): read at most every 10 ms.
        self.mrules = probes.RuleReader()
        self.config_path = config_path
        self.overrides = overrides
        self.server: Server | None = None
        self.stopping = asyncio.Event()
        self._resync: asyncio.TimerHandle | None = None
        self._checking: asyncio.Task[None] | None = None  # a drift check under way
        self._deferred = 0  # drift checks left to later in a row, as the model changed
        # What the next drift check looks at: the routes on these interfaces (None: every
        # route); with _full_check it also dumps the whole MFC for entries mfcd did not add.
        self._touched: set[str] | None = set()
        self._full_check = False
        self._periodic: asyncio.TimerHandle | None = None  # the next drift_check_interval tick
        # What asked for the next drift check. _loud: something other than the periodic
        # tick (an event, a start, a failed write): nothing known to be wrong otherwise, so
        # a check that repairs nothing then logs at debug. _full_urgent: a start or an
        # event wants the dump, which may end up compared on the loop (see _check_full);
        # the tick's dump never is.
        self._loud = False
        self._full_urgent = False
        self.inherited = False  # the kernel's tables held VIFs or entries before we added any
        self._readers: set[int] = set()  # the file descriptors the loop waits on
        # The tables in use, the table sockets and the link monitor _sync_tables last saw.
        self._tables_seen: tuple[list[TableKey], list[MrouteSocket], object] | None = None
        self.serving = False  # start-up is over
        self._passed_taken = 0  # how many of the fds systemd passed the Kernel took over
        self._reload_pending = False  # SIGHUP arrived during start-up
        # SIGHUP's reloads: a stop cancels them and waits for their clean-up (the server
        # does the same for a client's reload) before the controller closes.
        self._hup_reloads: set[asyncio.Task[None]] = set()
        self._compacting: asyncio.Task[None] | None = None  # a snapshot written in a thread
        self._compact_called = False  # a _compact_soon waits in the loop's queue
        self._reissuing: asyncio.Task[None] | None = None  # entries written again in slices
        # The last error of following the config files' wildcards: told again only if it changes.
        self._follow_error: str | None = None
        self._rejoins = groups.Retries(REJOIN_MOST_TURNS)  # when refused joins are tried again
        # STATUS= at most once a second, never blocking: systemd's queue holds 10 datagrams.
        self.reporter = notify.StatusReporter(self.status)
        # Upcalls received, by kind (dataplane.UPCALL_KINDS): counted, not yet acted on.
        self.upcalls: Counter[str] = Counter()
        # Multicast router discovery: the socket (opened when an interface first needs it),
        # and per advertising interface its ifindex and when its next advertisements are due.
        self.advertiser: mrdisc.Advertiser | None = None
        self._adverts: dict[str, tuple[int, list[float]]] = {}
        self._answered: dict[int, float] = {}  # ifindex -> when a solicitation was last answered
        self._rng = random.Random()
        self.events = EventBus()  # what `mfcctl monitor` subscribers are told
        # What /metrics counts between scrapes; its server, if metrics_listen is set.
        self.registry = metrics.Registry(config_files_left_out=len(self.left_out))
        self.metrics: MetricsServer | None = None
        self._metrics_socket: socket.socket | None = None

    async def run(self) -> None:
        notify.notify("STATUS=starting")
        # Signals are handled from the first moment: SIGTERM during a long start-up stops
        # cleanly once it is done, and SIGHUP waits for it instead of killing the process.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR1, self._log_status)
        # Their default action would kill mfcd without releasing the socket file.
        for sig in IGNORED_SIGNALS:
            loop.add_signal_handler(sig, _ignore, sig)
        # The (fd, name) systemd passed from its fd store (LISTEN_FDS): the previous mfcd's
        # table sockets, for the Kernel to adopt. Taken before any child process starts.
        passed = notify.take_listen_fds()
        try:
            await self._run(passed)
        except BaseException:
            # A start that fails releases the tables passed (the Kernel, once it took them,
            # does so itself): under Restart=on-failure a crash loop would otherwise forward
            # the previous mfcd's routes, stale, for as long as it lasts.
            if not self.serving:
                release_passed(passed[self._passed_taken :], notify.FdStore())
            raise

    async def _run(self, passed: list[tuple[int, str]]) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        state = self.state = StateFile(cfg.state_file)
        # Before anything else, the socket too: a second mfcd on this file stops here, and
        # never binds (or removes) a socket while the first one runs.
        state.lock()
        try:
            listener = bind_control_socket(cfg.socket_path, cfg.socket_group, cfg.socket_mode)
        except BaseException:
            state.close()
            raise
        kernel = None
        # Subscribe before the dump, so no interface change falls between the two.
        monitor = netlink.LinkMonitor()
        members = self.members = Memberships()
        failed = False
        try:
            if cfg.metrics_listen:  # a port taken stops mfcd before it touches the kernel
                self._metrics_socket = bind_metrics_socket(cfg.metrics_listen)
            self._passed_taken = len(passed)  # the Kernel's now: it adopts or releases them
            kernel = Kernel(cfg.families, monitor, notify.FdStore(), passed)
            controller = self._restore(state, kernel)
            if state.needs_snapshot:
                # No file yet: an empty one, so that a lost one is noticed at start. Version 1:
                # rewritten in the current format before any change is appended.
                controller.compact()
            await self._serve(controller, kernel, listener, monitor)
        except BaseException:
            failed = not self.serving  # before READY=1: a failed start
            raise
        finally:
            listener.close()
            if self._metrics_socket is not None:
                self._metrics_socket.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.socket_path)  # ours: bind_control_socket refused to take another's
            monitor.close()
            if kernel is not None:
                # A failed start leaves no table forwarding (not even in the fd store).
                if failed:
                    kernel.release()
                else:
                    kernel.close()
            members.close()  # leaves every group
            state.close()
            _ignore_signals_from_now_on(loop)

    def _restore(self, state: StateFile, kernel: Kernel) -> Controller:
        """Read the state file and put its routes in the kernel."""
        # The cyclic GC stays paused from the first object read to the freeze: nothing here
        # forms cycles, and every pass would walk the growing set of routes again.
        with gc_paused():
            controller = Controller(kernel, state, members=self.members)
            if kernel.adopted:
                # The previous mfcd's tables, forwarding: their VIFs keep their numbers where
                # the model has their devices, and the full check after start-up removes
                # what the model no longer has. (Their dump, minutes at 1,000,000 entries,
                # waits for that check, after READY=1.)
                before = observe(kernel, kernel.families, False, kernel.adopted)
                controller.router.prefer_slots(before.vifs)
                self.inherited = True
            else:
                # Our MRT_INIT table starts empty unless another program left static entries
                # in it; only then is the drift check after start-up worth its full dump.
                before = observe(kernel, kernel.families)
                self.inherited = bool(before.vifs or before.mfc)
            links = netlink.current_links()
            # The routes read go to the kernel while the rest of the file is read.
            stream = controller.restore_stream(links)
            try:
                loaded = state.load(stream)
            except BaseException:
                controller.abandon_stream(stream)
                raise
            if loaded.torn_tail:
                # Most likely; a file cut short mid-line by something else looks the same.
                log.warning(
                    "%s: dropped an incomplete last record, most likely a change a crash"
                    " interrupted before it was acknowledged",
                    state.path,
                )
            if loaded.version < VERSION:
                log.info("%s: format version %d; rewriting it", state.path, loaded.version)
            controller.restore(loaded, links, stream)
            controller.restore_joins(loaded)
            del loaded, stream
            self._apply_declared_at_start(controller)
            if kernel.adopted:
                # Until the full drift check removes the VIFs the restore left unclaimed (and
                # the entries sending to them), no new VIF takes one of their indices.
                controller.router.avoid_slots(before.vifs)
            else:
                controller.router.prefer_slots({})  # (new VIFs from now on: the lowest free)
            if controller.refused_at_start:
                # An error's traceback and what it was raised from can form cycles through
                # the frames that read the file: frozen, they would keep it for good.
                gc.collect()
            # The restored routes live as long as the daemon: keep the cyclic GC from
            # rescanning them on every collection.
            gc.freeze()
        heap.release()  # the file's text and what was parsed from it are freed by now
        return controller

    def _apply_declared_at_start(self, controller: Controller) -> None:
        """Put the routes and settings the config files declare in the kernel. A kernel that
        refuses leaves mfcd running with the state file's routes (a reload tries again)."""
        declared = self.declared
        change = declarations.diff(declarations.Declarations(), declared)
        try:
            outcome = controller.apply_declared(declared, change)
        except MfcdError as e:
            log.error("the config files' intents were not applied (mfcctl reload retries): %s", e)
            return
        if (
            declared.routes
            or declared.interfaces
            or declared.table_interfaces
            or declared.templates
            or declared.joins
        ):
            log.info(
                "config: %s (%s)",
                _declared_counts(declared, "interface setting"),
                ", ".join(f"{a} {n}" for a, n in sorted(outcome.counts.items())) or "no change",
            )
        if declared.joins:
            # The saved joins' line came before the config's: these are the totals, as the
            # status line counts them.
            log.info("joins: %s", views.joins_joined(controller.joins))

    async def _serve(
        self,
        controller: Controller,
        kernel: Kernel,
        listener: socket.socket,
        monitor: netlink.LinkMonitor,
    ) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self.controller, self.kernel, self.monitor = controller, kernel, monitor
        # A rollback the kernel refused: compare and repair once the dust settles.
        controller.on_drift = lambda: self._resync_later(RESYNC_DELAY)
        # An interface re-created under 1,000,000 routes: their entries are written again a
        # slice at a time, clients served in between (see _reissue).
        controller.sliced = True
        controller.on_reissued = self._tell_states
        # Every table's socket and the link monitor: each readable one means events() has
        # something (upcalls must be read continuously: a full buffer drops them silently).
        self.learner = Learner(
            controller, kernel, cfg.learned_idle_timeout, cfg.max_learned, events=self.events
        )
        self.registry.entries = self.learner.counts  # mfcd_{learned,expired,dropped}_entries_total
        self._sync_tables()
        server = self.server = Server(
            self._commands(controller, kernel),
            cfg.socket_path,
            cfg.client_timeout,
            cfg.max_request_bytes,
        )
        await server.start(listener)
        if self._metrics_socket is not None:
            self.metrics = MetricsServer(self._metrics_sources)
            await self.metrics.start(self._metrics_socket)
        self.serving = True
        if self._reload_pending:
            self._reload_soon()
        status = self.status()
        log.info("mfcd %s ready on %s: %s", __version__, cfg.socket_path, status)
        self.reporter.announce("READY=1")
        watchdog = asyncio.create_task(self._watchdog())
        keeper = asyncio.create_task(self._keep_state_file())
        advertising = asyncio.create_task(self._advertise())
        expiry = asyncio.create_task(self._expire_learned())
        join_check = asyncio.create_task(self._check_joins())
        self._check_inherited()
        self._schedule_checks()
        # A long journal is compacted by the usual rule, but not before the first requests.
        compact = loop.call_later(COMPACT_DELAY, self._compact_soon)
        await self.stopping.wait()
        _log_stopping(kernel)
        self.reporter.close()  # no STATUS= of routes after this one
        notify.notify("STOPPING=1\nSTATUS=stopping")
        watchdog.cancel()
        keeper.cancel()
        self._stop_advertising(advertising)
        expiry.cancel()
        join_check.cancel()
        compact.cancel()  # the journal is closed soon
        if self._compacting is not None:
            self._compacting.cancel()
        await self._end_hup_reloads()
        await server.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        for fd in self._readers:
            loop.remove_reader(fd)
        self._readers.clear()
        self._tables_seen = None
        for task in (self._resync, self._checking, self._reissuing, self._periodic):
            if task is not None:
                task.cancel()

    def _check_inherited(self) -> None:
        """A full drift check soon, if the kernel's tables held VIFs or entries at start:
        the previous mfcd's, taken over (what the model no longer has goes), or another
        program's (removed as not mfcd's)."""
        if self.kernel.adopted:
            log.info("checking the tables taken over against the routes (full drift check)")
            self._resync_later(0.0, full=True)
        elif self.inherited:
            log.warning("the kernel's tables held entries mfcd did not add; repairing them")
            self._resync_later(0.0, full=True)

    def _commands(self, controller: Controller, kernel: Kernel) -> Commands:
        """The control protocol's commands, wired to the daemon's events, metrics and reload."""
        commands = Commands(controller, self.cfg.families, kernel, self.upcalls)
        commands.on_change = self._after_change
        commands.on_repaired = self._repaired
        commands.learner = self.learner
        commands.slicing = True  # flush and a template's learned entries: see Commands.sliced
        commands.events = self.events
        commands.registry = self.registry
        self.state.on_sync = self.registry.state_sync_seconds.observe
        self.registry.joins = lambda: Counter(controller.joins.wanted.values())  # mfcd_joins
        self.registry.templates = lambda: metrics.template_counts(controller.router)
        commands.reloader = self.reload_config
        commands.left_out = lambda: config.left_out_named(self.left_out, self.config_path)
        commands.mrules = self.mrules
        return commands

    def _metrics_sources(self) -> metrics.Sources:
        """What a scrape of /metrics shows now."""
        return metrics.Sources(
            router=self.controller.router,
            counters=self.kernel,
            registry=self.registry,
            upcalls=self.upcalls,
            version=__version__,
            process=read_process(),
            route_series_max=self.cfg.metrics_route_series_max,  # applied on reload
        )

    def _log_status(self) -> None:
        """SIGUSR1: one line on what mfcd holds and serves."""
        if not self.serving or self.server is None:
            log.info("status: starting")
            return
        log.info("status: %s; %s", self.status(), self.server.load())

    def status(self) -> str:
        router = self.controller.router
        # As show and mfcd_routes count them: a route whose iif is gone is pending even while
        # its entry is in the kernel; a degraded one counts as installed (it forwards).
        # (A look at each route only while an interface is missing; this line is rare.)
        states = Counter[str]()
        for (state, _), n in metrics.route_counts(router).items():
            states[state] += n
        total, pending = len(router.routes), states["pending"]
        text = f"{total - pending} of {total} routes installed, {pending} pending"
        joins = self.controller.joins
        if joins.wanted:  # (a host without joins keeps the line it always had)
            text += f"; {len(joins.joined)} of {len(joins.wanted)} groups joined"
        if self.left_out:
            text += (
                f"; {config.left_out_counted(self.left_out, self.config_path)} left out for"
                " errors (see the log; mfcctl reload once fixed)"
            )
        if self.registry.last_repairs is not None:  # (drift is rare: most hosts never show it)
            text += "; " + views.last_repairs(*self.registry.last_repairs)
        return text

    def _sync_tables(self) -> None:
        """Close the tables no VIF uses any more (MRT_DONE), and wait on exactly the open
        tables' sockets: a table other than the default is opened by the kernel operation
        that first names it and closed here once its last VIF is gone."""
        kernel, loop = self.kernel, asyncio.get_running_loop()
        # Called after every change, which nearly always leaves the tables in use and the
        # sockets open as the last call found them: then there is nothing to close or watch.
        seen = (list(self.controller.router.slots), list(kernel.sockets.values()), kernel.monitor)
        if seen == self._tables_seen:
            return
        used = self.controller.router.tables()
        for family, table in list(kernel.sockets):
            if table != DEFAULT_TABLE[family] and (family, table) not in used:
                kernel.close_table(family, table)
                log.info("%s table %d is empty: closed", protocol.family_text(family), table)
        fds = set(kernel.fds())
        for fd in self._readers - fds:
            loop.remove_reader(fd)
        for fd in fds - self._readers:
            loop.add_reader(fd, self._on_kernel_events)
        self._readers = fds
        self._tables_seen = (
            list(self.controller.router.slots),
            list(kernel.sockets.values()),
            kernel.monitor,
        )

    def _after_change(self) -> None:
        self.learner.after_change()  # a new template may match traffic already flowing
        self.controller.tell_owned()  # (a client's change into a table found it free, say)
        self._sync_tables()
        self.report_status()
        # After the client is answered: the response is sent before the loop runs callbacks.
        # One is enough for the changes before it runs (it sees them all).
        if not self._compact_called:
            self._compact_called = True
            asyncio.get_running_loop().call_soon(self._compact_soon)
        self._release_heap_soon()

    def _flushed(self) -> None:
        """After a flush of the controller's own: the after-change work it may owe."""
        if self.server is not None:
            self.server.commands.flushed()

    def _release_heap_soon(self) -> None:
        """heap.release after bulk work, once the loop is done with it."""
        if self.controller.heap_release_due:
            # By then the request's text and changes are freed as well.
            self.controller.heap_release_due = False
            asyncio.get_running_loop().call_soon(heap.release)

    def _compact_soon(self) -> None:
        """Start compacting the state file in a thread if it is due and not under way."""
        self._compact_called = False
        if self._compacting is None and self.controller.journal_long():
            self._compacting = asyncio.get_running_loop().create_task(self._compact())

    async def _compact(self) -> None:
        """Write a snapshot in a thread while requests are served, then put it in place.

        Formatting and syncing 1,000,000 routes takes seconds: on the loop it would hold
        every client for that long after the change that made it due. Only copying the
        routes (two lists, or a dict with config or wildcard routes; some ms) and the final
        rename happen here.
        """
        # A snapshot must not hold what a group's sync may still refuse: under a steady
        # load a group is always forming or syncing, so they are synced here first (on the
        # loop, once per compaction).
        try:
            self.controller.flush()
        except BaseException:
            self._compacting = None  # (a bug: the next change tries again)
            raise
        self._flushed()
        if not self.controller.compaction_due():
            self._compacting = None  # (that sync failed, or there was nothing to compact)
            return
        began = time.monotonic()
        # Where the model's own dict is all there is to save (no config or wildcard routes),
        # it is copied as two lists: 16 MiB at 1,000,000 routes where a dict takes 41, on
        # top of the table's RSS for as long as the thread writes. A dict made for the
        # snapshot is the thread's to write and free, as it is.
        saved, thresholds = self.controller.persistent(copy=False)
        own = saved is self.controller.router.routes
        job = self.state.start_compaction(
            route_columns(saved) if own else saved,
            thresholds,
            self.controller.snapshot_extra(),
            self.controller.persistent_templates(),
        )
        del saved  # the thread frees the copy once written, not the loop when this ends
        routes = job.count
        writing = asyncio.ensure_future(asyncio.to_thread(_write_and_release, job))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            job.cancel()  # mfcd is stopping: the thread stops at its next record
            await asyncio.wait([writing])
            job.discard()
            raise
        finally:
            self._compacting = None
        try:
            self.controller.finish_sync()  # the journal's thread must not be appending
            if self.state.finish_compaction(job):
                log.info(
                    "compacted the state file: %d routes, %d changes made meanwhile, in %.2f s",
                    routes,
                    len(job.tail),
                    time.monotonic() - began,
                )
        except StateError as e:
            log.error("compacting the state file failed (the journal keeps growing): %s", e)

    def report_status(self) -> None:
        """Keep `systemctl status mfc_daemon` current (at most once a second)."""
        self.reporter.changed()

    def _on_kernel_events(self) -> None:
        """A table's socket or the link monitor is readable: read what the kernel reported."""
        try:
            events = self.kernel.events()
        except (OSError, ValueError) as e:
            # A read failed during the very storm that overran us, or a message we cannot
            # parse: the delayed resync re-reads every interface.
            log.error("reading interface events failed: %s; re-reading them shortly", e)
            self._resync_later(RESYNC_DELAY)
            return
        # Counted, then learned from (nothing logged per upcall: a flood would flood the log).
        if events.upcalls:
            self.upcalls.update(upcall.kind for upcall in events.upcalls)
            self.learner.on_upcalls(events.upcalls)
        if events.links or events.links_lost:
            self._on_link_events(events)

    def _on_link_events(self, events: Events) -> None:
        router = self.controller.router
        before, tracked = dict(router.links), router.tracked_links()
        try:
            self._follow_links(events.links)
            if events.links_lost:
                # The events missed are what a fresh dump differs by: applied and told as
                # if they had been read (interfaces, then the routes they leave pending,
                # degraded or installed), after the events read and a `lost` event.
                log.warning("missed interface events (netlink overrun); re-reading interfaces")
                if self.events.subscribers:
                    self.events.emit("link", action="lost", interface=None, ifindex=None)
                self._follow_links(link_changes(router.links, dumped_links()))
        except (OSError, ValueError) as e:
            # The dump interrupted during the storm that overran us: the delayed resync
            # re-reads every interface.
            log.error("reading interface events failed: %s; re-reading them shortly", e)
            self._resync_later(RESYNC_DELAY)
            return
        # Only a change of interfaces the model tracks (created, deleted, renamed) can have
        # left the kernel's tables behind; carrier flaps, MTU changes and interfaces no route
        # names cannot. The check looks at the routes on the interfaces that changed, so a
        # host where containers come and go does not run it for each of their veths.
        router = self.controller.router
        if router.links != before:
            self.report_status()
            self._follow_wildcards(moved(before, router.links))
        after = router.tracked_links()
        touched = moved(tracked, after)
        if touched:
            self._resync_later(RESYNC_DELAY, touched)
        self._sync_tables()  # a pending route installed now may have opened a table
        self._reissue_soon()
        self.learner.after_change()  # a template that took its VIFs now may match traffic

    def _follow_links(self, links: Sequence[LinkChange]) -> None:
        """Apply link events (read, or made of a fresh dump: see dataplane.link_changes), and
        tell monitor subscribers each one, then the routes each one changed the state of."""
        router = self.controller.router
        if self.events.subscribers:
            for fields in views.link_events(router.links, links):
                self.events.emit("link", **fields)
        for link in links:
            # (a name renamed away is gone for the routes that name it, as if deleted)
            gone = link.name if link.kind == "del" else None
            if gone is None and self.events.subscribers:
                gone = renamed_from(router.links, link.name, link.ifindex)
            was = self._template_states({link.name, gone}) if self.events.subscribers else {}
            steps = self.controller.link_event(link.kind, link.name, link.ifindex)
            self._tell_route_states(steps, gone)
            self._tell_template_states(was)
            self.controller.link_admin(link.kind, link.name, link.up)

    def _sync_links(self, links: Iterable[LinkChange]) -> None:
        """For a drift check (events missed or not read), the interfaces of a fresh dump
        (`links`): those that came or went are applied and told as their events would
        have been, then followed by wildcards."""
        router = self.controller.router
        before = dict(router.links)
        self._follow_links(link_changes(router.links, links))
        if router.links != before:
            self.report_status()
            self._follow_wildcards(moved(before, router.links))

    def _reissue_soon(self) -> None:
        """Start writing the entries of re-created interfaces' routes again, if any wait."""
        if self.controller.reissues and self._reissuing is None:
            self._reissuing = asyncio.get_running_loop().create_task(self._reissue())

    async def _reissue(self) -> None:
        """Controller.reissue_slices, with clients served between two slices."""
        try:
            await run_sliced(self.controller.reissue_slices())
        finally:
            self._reissuing = None

    def _tell_route_states(self, steps: list[Step], deleted: str | None = None) -> None:
        """Tell monitor subscribers the state of each route an interface event wrote, and of
        the installed routes on a `deleted` interface (pending or degraded now, no write)."""
        if not self.events.subscribers:
            return
        router = self.controller.router
        ops = [s.op for s in steps if isinstance(s.op, (AddMfc, DelMfc))]
        keys = [(op.family, op.source, op.group, op.table) for op in ops]
        if deleted is not None:  # (a scan of the routes: only while someone subscribes)
            vifs = router.vifs_named(deleted)
            keys += router.users({(vif.family, vif.table, vif.interface) for vif in vifs})
        self._tell_states(keys)

    def _template_states(self, names: set[str | None]) -> dict[TemplateKey, RouteStatus]:
        """The states of the templates naming one of these interfaces (a scan of the
        templates: only while someone subscribes), before a link event changes them."""
        router = self.controller.router
        return {
            key: router.status(key)
            for key, ports in router.templates.items()
            if not names.isdisjoint(ports.interfaces)
        }

    def _tell_template_states(self, was: dict[TemplateKey, RouteStatus]) -> None:
        """Tell monitor subscribers each template a link event changed the state (or the
        reason) of, as `route.state` tells routes."""
        router = self.controller.router
        for key, before in was.items():
            if key not in router.templates:
                continue
            status = router.status(key)
            if (status.state, status.reason) == (before.state, before.reason):
                continue
            family, source, group, table, iif = key
            self.events.emit(
                "template.state",
                family=protocol.FAMILY_NAMES[family],
                table=table,
                source=source,
                group=group,
                iif=iif,
                state=status.state,
                reason=status.reason,
            )

    def _tell_states(self, keys: list[RouteKey]) -> None:
        """Tell monitor subscribers the state of each of these routes (once each)."""
        if not self.events.subscribers:
            return
        router = self.controller.router
        for key in dict.fromkeys(keys):
            if key in router.routes:
                status = router.status(key)
                self.events.emit(
                    "route.state",
                    family=protocol.FAMILY_NAMES[key[0]],
                    table=key[3],
                    source=key[1],
                    group=key[2],
                    state=status.state,
                    reason=status.reason,
                )

    def _follow_wildcards(self, names: set[str] | None = None) -> None:
        """Interfaces came or went (`names`, or any): re-plan the routes whose oifs are
        wildcards."""
        try:
            outcome = self.controller.follow_wildcards(names)
        except MfcdError as e:
            if str(e) != self._follow_error:  # (once, not at each event of a burst)
                log.error("wildcard oifs: could not follow the interfaces: %s", e)
            self._follow_error = str(e)
        else:
            self._follow_error = None
            if outcome is not None:
                steps = views.summarize(outcome.steps, 0.0)
                log.info("wildcard oifs follow the interfaces: %s", steps)
        for followed, line in self.controller.follow_api_wildcards(names):  # the runtime ones
            (log.info if followed else log.error)("wildcard oifs: %s", line)

    def _schedule_checks(self) -> None:
        """(Re)start the timer of the periodic drift check: every drift_check_interval (0:
        none). A check is what nothing else starts when another program deletes an entry
        or a VIF without an interface event, and the only thing that finds it unasked."""
        if self._periodic is not None:
            self._periodic.cancel()
            self._periodic = None
        interval = self.cfg.drift_check_interval
        if interval > 0:
            self._periodic = asyncio.get_running_loop().call_later(interval, self._tick)

    def _tick(self) -> None:
        """The periodic drift check's turn: one of every route, unless one runs already."""
        self._schedule_checks()  # the next tick at a fixed pace, however long this check takes
        router = self.controller.router
        running = self._checking is not None and not self._checking.done()
        kind = periodic_check(len(router.routes), len(router.vifs), len(router.installed), running)
        if kind is None:
            if running:
                log.debug("periodic drift check skipped: the previous check still runs")
            else:  # nothing to compare: checked (an alert on the timestamp must not fire)
                self.registry.drift_checked([], time.time())
            return
        # (An event's check waiting for the interfaces to settle is widened, not hurried.)
        delay = RESYNC_DELAY if self._resync is not None else 0.0
        self._resync_later(delay, None, full=kind == "full", periodic=True)

    def _resync_later(
        self,
        delay: float,
        touched: set[str] | None = None,
        full: bool = False,
        periodic: bool = False,
    ) -> None:
        """Check the kernel for drift once interface events have settled (debounced): the
        routes on the `touched` interfaces (None: every route), with `full` the whole MFC;
        `periodic`: asked by the drift_check_interval tick (see _loud, _full_urgent)."""
        if touched is None or self._touched is None:
            self._touched = None
        else:
            self._touched |= touched
        self._full_check |= full
        if not periodic and (touched is None or touched or full):  # (set(): a postponement)
            self._loud = True
            self._full_urgent |= full
        if self._resync is not None:
            self._resync.cancel()
        self._resync = asyncio.get_running_loop().call_later(delay, self._resync_now)

    def _resync_now(self) -> None:
        self._resync = None
        if self._checking is not None and not self._checking.done():
            self._resync_later(RESYNC_DELAY, set())  # one check at a time: the next after it
            return
        if self._reissuing is not None:
            # Entries are being written again (a re-created interface): the check would probe
            # them meanwhile, and the two slicing in turn would double a request's wait.
            self._resync_later(RESYNC_DELAY, set())
            return
        self._checking = asyncio.get_running_loop().create_task(self._check_drift())

    async def _check_drift(self) -> None:
        """Compare the kernel's tables with the model where they can differ, and repair.

        The VIFs of every table are read (32 at most each, see Kernel.observe); the MFC
        entries of the routes on the interfaces that changed are probed one by one
        (SIOCGETSGCNT, O(1) each), in slices of slices.SLICE_SECONDS with clients served
        in between: a cost that grows with the routes touched, where a dump of the kernel's
        table grows faster than the table (minutes at 1,000,000 entries). Missing entries
        are written again, and so are those of routes on a VIF added back (the kernel
        dropped their oifs there). The event itself wrote the entries it changed a moment
        ago, so they are not written a second time; `mfcctl sync` writes every entry
        again. Only the full check, for entries another program left behind, dumps the
        table: after a start that found the tables in use, and every drift_check_interval
        while the routes are few enough (see periodic_check).
        """
        touched, self._touched = self._touched, set()
        quiet, self._loud = not self._loud, False
        urgent, self._full_urgent = self._full_urgent, False
        if self._full_check:
            self._full_check = False
            await self._check_full(urgent, quiet)
            return
        await self._check_probes(touched, quiet)

    async def _check_probes(self, touched: set[str] | None, quiet: bool) -> None:
        """The drift check by probes (see _check_drift): of the routes on `touched`, None:
        every route; `quiet`: at debug when it repairs nothing."""
        started = time.monotonic()
        controller, families = self.controller, self.kernel.families
        try:
            # A link event whose kernel change failed left the model's view of interfaces
            # behind; a fresh dump sets it right before the tables are compared.
            self._sync_links(dumped_links())
            self._reissue_soon()
            view = observe(self.kernel, families, False, controller.router.tables())
        except (OSError, KernelError) as e:
            log.error("checking the kernel's tables failed: %s", e)
            return
        report, readded = controller.repair_vifs(view.vifs, tables=view.tables)
        router = controller.router
        budget = Budget()
        stale = set(await self._users(readded, budget)) if readded else set()
        if touched is None:
            keys = list(router.installed)
        else:
            vifs = {(v.family, v.table, v.interface) for n in touched for v in router.vifs_named(n)}
            keys = await self._users(vifs, budget)
            if stale:  # (a difference with 1,000,000 keys costs tens of ms, even from nothing)
                keys += stale.difference(keys)
        for start in range(0, len(keys), CHECK_CHUNK):
            await budget.turn()  # requests are answered between two slices
            chunk = keys[start : start + CHECK_CHUNK]
            report += controller.check_entries(chunk, stale=stale, rewrite_all=False)
        report += map(
            views.describe_step, controller.retry_pending([*router.blocked, *router.refused])
        )
        self._sync_tables()
        what = "every route" if touched is None else "routes on " + ", ".join(sorted(touched))
        repairs = self._repaired(report)
        log.log(
            logging.WARNING if report else logging.DEBUG if quiet else logging.INFO,
            "drift check of %s: %d entries checked, %s, in %.2f s",
            what,
            len(keys),
            ", ".join(f"{a} {n}" for a, n in sorted(repairs.items())) or "nothing to repair",
            time.monotonic() - started,
        )

    async def _users(self, vifs: set[tuple[int, int, str]], budget: Budget) -> list[RouteKey]:
        """The installed routes on these (family, table, interface) VIFs, as Router.users,
        looked through a slice at a time (a route changed meanwhile is seen as it is then)."""
        router = self.controller.router
        keys: list[RouteKey] = []
        listed = list(router.routes)
        for start in range(0, len(listed), CHECK_CHUNK):
            await budget.turn()
            keys += on_vifs(router, listed[start : start + CHECK_CHUNK], vifs)
        return keys

    async def _check_full(self, urgent: bool = True, quiet: bool = False) -> None:
        """Compare every VIF and MFC entry, from a dump of the whole table; repair.

        The dump takes 2 s at 100,000 routes, most of it in the kernel: it runs in a thread,
        and clients are served meanwhile. A change of the model during the dump would look
        like drift, so the comparison is then left to a later check. A check no start or
        event made `urgent` (the periodic tick's) does not wait for the changes to stop,
        nor dump on the loop as the others end up doing under a busy client (seconds
        without an answer at 100,000 routes, every interval): it probes every route.
        """
        controller = self.controller
        try:
            self._sync_links(dumped_links())
            version = controller.router.version
            tables = controller.router.tables()
            view = await asyncio.to_thread(observe, self.kernel, self.kernel.families, True, tables)
        except (OSError, KernelError) as e:
            log.error("checking the kernel's tables failed: %s", e)
            return
        if controller.router.version != version and not urgent:
            log.debug("periodic drift check: the routes changed during the dump; probes instead")
            await self._check_probes(None, quiet)
            return
        if controller.router.version != version and self._deferred < MAX_DEFERRED_CHECKS:
            self._deferred += 1
            self._resync_later(RESYNC_DELAY, full=True)  # (urgent still: loud, full)
            return
        if controller.router.version != version:
            # Changes keep coming (a busy client): check on the loop, between two requests.
            view = observe(self.kernel, self.kernel.families, True, controller.router.tables())
        self._deferred = 0
        self._repaired(controller.sync(view, what="full drift check", quiet=quiet))
        self._sync_tables()
        # The tables taken over hold no VIF the routes do not claim any more: new VIFs take
        # the lowest free index again, and the adopted sockets forget what they held.
        controller.router.prefer_slots({})
        self.kernel.forget_kept()

    def _repaired(self, report: list[dict[str, Any]]) -> Counter[str]:
        """A drift check's repairs: told to `monitor`, counted for /metrics and the status
        line; their counts by action returned."""
        for entry in report:
            self.events.emit("repair", **entry)
        counts = self.registry.drift_checked(report, time.time())
        if counts:
            self.report_status()
        return counts

    async def _watchdog(self) -> None:
        interval = notify.watchdog_interval()
        if interval is None:
            return
        while True:
            notify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)  # already half the timeout

    async def _expire_learned(self) -> None:
        """Remove learned entries that went idle, a slice of them per tick (learning.py)."""
        while True:
            await asyncio.sleep(self.learner.interval)
            await run_sliced(self.learner.ticking())  # requests answered between slices

    async def _check_joins(self) -> None:
        """Every JOIN_CHECK_INTERVAL, try again the joins the kernel refused (paced by
        _rejoins), and join again the SSM groups whose source the kernel lost on an
        interface that is up (Controller.check_joins)."""
        while True:
            await asyncio.sleep(JOIN_CHECK_INTERVAL)
            try:
                await self._check_joins_once()
            except Exception:  # (a bug: said, and the next turn tries again)
                log.exception("checking the SSM joins against the kernel failed")

    async def _check_joins_once(self) -> None:
        self._retry_refused_joins()
        joins = self.controller.joins
        running = {name for name in joins.ssm_interfaces() if link_running(name)}
        if not running:
            return
        try:  # (in a thread: thousands of joins are 100 ms of /proc to read and parse)
            lost = await asyncio.to_thread(lost_sources, joins.ssm_joined(running))
        except OSError as e:  # (procfs: not expected; the next turn tries again)
            log.debug("reading the kernel's source filters failed: %s", e)
            return
        # (an interface that went down meanwhile lost its sources for that reason: the
        # join waits for it to come back, when the link event joins again)
        still = {name for name in {key[0] for key in lost} if link_running(name)}
        lost = [key for key in lost if key[0] in still]
        if lost:
            self.controller.check_joins(lost)

    def _retry_refused_joins(self) -> None:
        """Join again, if due, the joins the kernel refused on interfaces that are up with a
        carrier (those down wait for their link event, which joins them)."""
        refused = self.controller.joins.refused
        if not self._rejoins.due(refused):
            return
        running = {name for name in {key[0] for key in refused} if link_running(name)}
        self._rejoins.tried(self.controller.retry_refused_joins(running) if running else 0)

    async def _keep_state_file(self) -> None:
        """Once a second, write the state file back if it was deleted or replaced (each change
        checks it too, this is for the quiet times: a restart would otherwise start empty),
        and lock its lock file again if that went."""
        while True:
            await asyncio.sleep(STATE_CHECK_INTERVAL)
            if self.controller.syncing is not None:
                continue  # the journal's thread appends, and each append checks this too
            try:
                self.state.hold_lock()  # first: never write back a file another mfcd owns
                self.controller.keep_state_file()
                self._flushed()
            except MfcdError as e:
                log.error("%s; trying again in %d s", e, STATE_RETRY_INTERVAL)
                await asyncio.sleep(STATE_RETRY_INTERVAL)

    def _stop_advertising(self, advertising: asyncio.Task[None]) -> None:
        """Stop router discovery: a termination on each advertising interface, unless the
        tables stay in systemd's fd store. mfcd cannot tell a restart from a stop there:
        at a restart, forwarding goes on, and a snooping switch told the router left
        would stop sending it the flows until the next mfcd's advertisements; at a stop,
        the switch ages the router port out instead (the advertisements' holdtime)."""
        advertising.cancel()
        if self.advertiser is not None:
            asyncio.get_running_loop().remove_reader(self.advertiser.fileno())
            if _tables_stay(self.kernel):
                terminate = []
            else:
                terminate = [ifindex for ifindex, _ in self._adverts.values()]
            self.advertiser.close(terminate=terminate)

    async def _advertise(self) -> None:
        """Send RFC 4286 advertisements on the interfaces set with `vif set IF --mrdisc`."""
        while True:
            try:
                self._advertise_due(time.monotonic())
            except OSError as e:  # the raw socket could not be opened: say so, try later
                log.error("multicast router discovery: %s; trying again in 10 s", e)
                await asyncio.sleep(10)
            await asyncio.sleep(0.2)

    def _advertise_due(self, now: float) -> None:
        """Send the advertisements due by `now`; start and stop interfaces as they come, go
        and are set or unset (a few dict lookups when nothing is due)."""
        links = self.controller.router.links
        wanted = {n: links[n] for n in self.controller.joins.mrdisc if n in links}
        if 4 not in self.kernel.families:
            wanted = {}
        adv = self.advertiser
        if adv is None:
            if not wanted:
                return
            adv = self.advertiser = mrdisc.Advertiser()
            asyncio.get_running_loop().add_reader(adv.fileno(), self._on_solicitation)
        for name, (ifindex, _) in list(self._adverts.items()):
            if wanted.get(name) != ifindex:
                del self._adverts[name]
                if links.get(name) == ifindex:  # switched off (the interface is still there)
                    self._send_mrd(mrdisc.TERMINATION, name, ifindex)
        for name, ifindex in wanted.items():
            entry = self._adverts.get(name)
            if entry is None:
                due = [now + delay for delay in mrdisc.initial_delays(self._rng)]
                entry = self._adverts[name] = (ifindex, due)
            due = entry[1]
            if now >= due[0]:
                self._send_mrd(mrdisc.ADVERTISEMENT, name, ifindex)
                due.pop(0)
                if not due:
                    due.append(now + mrdisc.next_delay(self.cfg.mrdisc_interval, self._rng))
        adv.listen(wanted)

    def _send_mrd(self, kind: int, name: str, ifindex: int) -> None:
        assert self.advertiser is not None
        try:
            self.advertiser.send(kind, ifindex, self.cfg.mrdisc_interval)
        except OSError as e:  # the link is down, say: the next one may go through
            log.debug("multicast router discovery: cannot send on %s: %s", name, e.strerror)

    def _on_solicitation(self) -> None:
        """Answer solicitations on advertising interfaces (at most one a second each)."""
        assert self.advertiser is not None
        now = time.monotonic()
        by_index = {ifindex: name for name, (ifindex, _) in self._adverts.items()}
        for ifindex in self.advertiser.solicited():
            name = by_index.get(ifindex)
            if name is not None and now - self._answered.get(ifindex, -1e9) >= mrdisc.ANSWER_GAP:
                self._answered[ifindex] = now
                self._send_mrd(mrdisc.ADVERTISEMENT, name, ifindex)

    def _on_hup(self) -> None:
        if self.stopping.is_set():
            return  # the configuration no longer matters, and READY=1 would be wrong now
        if self.serving:
            self._reload_soon()
        else:
            self._reload_pending = True

    def _reload_soon(self) -> None:
        """SIGHUP: reload in a task (the files are read in a thread, clients are served)."""
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._hup_reloads.add(task)
        task.add_done_callback(self._hup_reloads.discard)

    async def _end_hup_reloads(self) -> None:
        for task in self._hup_reloads:
            task.cancel()
        if self._hup_reloads:
            await asyncio.wait(set(self._hup_reloads), timeout=STOP_WAIT)

    async def _reload_logged(self) -> None:
        with contextlib.suppress(MfcdError):  # logged by reload_config
            await self.reload_config()

    async def reload_config(self, dry_run: bool = False) -> dict[str, Any]:
        """Read the config files again and apply the difference: the settings that can change
        while running, and the declared routes, templates, joins and interface settings (one
        transaction).
        A file with any error changes nothing and raises it (every problem is logged)."""
        async with self._reloading:
            if dry_run:
                return await self._reload(dry_run)
            # RELOADING=1 needs the monotonic time it started (sd_notify(3)); READY=1 ends it.
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            notify.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")
            try:
                return await self._reload(dry_run)
            except MfcdError as e:  # (nothing changed: the monitor is told why)
                name = self.config_path or config.DEFAULT_PATH
                self.events.emit("reload.failed", config=name, code=e.code, error=str(e))
                raise
            finally:
                self.reporter.announce("READY=1")

    def _read_config(self) -> tuple[config.Read, declarations.Diff]:
        """Parse the files and diff the declarations (in a thread: 100,000 routes take
        seconds); the settings resolved with the command line's."""
        read = config.load_all(self.config_path, self._read_cache)
        read = read._replace(settings=resolve(read.settings, self.overrides))
        return read, declarations.diff(self.controller.declared, read.declared)

    async def _reload(self, dry_run: bool) -> dict[str, Any]:
        # The cyclic GC paused throughout: a pass over the 100,000s of new objects (the
        # declarations read, the routes planned) would hold clients 100s of ms between two
        # slices; nothing here forms cycles. What stays is then frozen, as at start.
        with gc_paused():
            try:
                return await self._reload_paused(dry_run)
            finally:
                # The requests served between slices may have left reference cycles: they
                # are collected before what stays is frozen (frozen, they never would be).
                # The GC being paused, everything made since it was is in the youngest
                # generation: this pass looks at the reload's own objects only (some
                # 40 ms per 100,000 routes changed), never at the routes frozen before.
                gc.collect(0)
                gc.freeze()
                self._release_heap_soon()  # (a failed reload, too: _after_change is not run)

    async def _reload_paused(self, dry_run: bool) -> dict[str, Any]:
        started = time.monotonic()
        name = self.config_path or config.DEFAULT_PATH
        try:
            with gc_paused():
                (new, declared, files), change = await asyncio.to_thread(self._read_config)
        except declarations.Problems as e:
            for problem in e.problems:
                log.error("reload: %s", problem)
            log.error("reload failed, keeping the running configuration and routes")
            raise
        except MfcdError as e:
            log.error("reload failed, keeping the running configuration and routes: %s", e)
            raise
        kept = self._restart_only(new)
        if not dry_run:
            try:
                self._apply_settings(new, kept)
            except MfcdError as e:
                log.error("reload failed, keeping the running configuration and routes: %s", e)
                raise
        taken = self.controller.takeovers(change)  # (before: the reload changes them)
        try:
            if dry_run:
                outcome = self.controller.apply_declared(declared, change, dry_run)
            else:
                # A slice at a time, clients served in between (Controller.declared_slices
                # says what they see meanwhile); a failed slice undoes them all.
                # (what each slice replaces, noted as it applies it, while someone listens)
                outcome = Outcome(replaced={} if self.events.subscribers else None)
                try:
                    await run_sliced(self.controller.declared_slices(declared, change, outcome))
                finally:
                    if self.controller.follow_due:  # interfaces came or went meanwhile
                        self.controller.follow_due = False
                        self._follow_wildcards()
        except MfcdError as e:
            log.error("reload: applying the config files' routes failed, nothing changed: %s", e)
            raise
        slots = self.controller.router.slots
        result = views.reload_result(
            change, outcome, declared, dry_run, taken, files=files, slots=slots
        )
        if not dry_run:
            # What the kernel refused stays pending until retried (a table another
            # multicast router owned at start, say): a reload retries it, as sync does
            # (first: _after_change then waits on the tables it opens).
            self.controller.retry_refused()
            self._after_change()
            log.info(
                "configuration reloaded from %s: %s, in %.2f s",
                name,
                result["summary"],
                time.monotonic() - started,
            )
            if self.left_out:
                log.info("config: every file applied, none left out any more")
                self.left_out = []
                self.registry.config_files_left_out = 0
            if self.events.subscribers:
                self._tell_reload(change, outcome, taken)
            self.events.emit("reload", config=name, summary=result["summary"])
        # Last: counting what the routes wait for lets other clients in between its slices,
        # which must not come between the reload's changes and their events.
        result.update(await self._reload_warnings(declared, kept, dry_run, change))
        return result

    def _tell_reload(self, change: declarations.Diff, outcome: Outcome, taken: Takeovers) -> None:
        """The monitor events of what a reload changed, as a batch's (origin config): its
        routes removed, added and changed, then its settings, templates and joins (not a
        setting declared at the value the interface had). What they replaced (`was`) is
        what its slices found as they applied them (Outcome.replaced), not what there was
        when it began: clients' changes and learned entries land between two slices."""
        routes = self.controller.router.routes
        same, same_mrdisc = taken.same_thresholds, taken.same_mrdisc
        settings = [
            c
            for c in outcome.settings
            if not (isinstance(c, SetThreshold) and c.table is None and c.interface in same)
            and not (isinstance(c, groups.SetMrdisc) and c.interface in same_mrdisc)
        ]
        added = [*change.added, *change.changed]
        changes = itertools.chain(
            map(DelRoute, change.removed),
            (AddRoute(k, routes[k]) for k in added if k in routes),
            settings,
        )
        total = len(change.removed) + len(added) + len(settings)
        was = outcome.replaced
        tell(self.events, self.controller.router, changes, total, origin="config", was=was)

    def _restart_only(self, new: config.Config) -> dict[str, Any]:
        """The settings the files change that change only at a restart, with the values
        kept until then."""
        old = self.cfg
        return {k: getattr(old, k) for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)}

    async def _reload_warnings(
        self,
        declared: declarations.Declarations,
        kept: dict[str, Any],
        dry_run: bool,
        change: declarations.Diff | None = None,
    ) -> dict[str, Any]:
        """What mfcctl warns of after a reload (or its dry run), in `warnings`: the
        settings kept until a restart, the routes and templates of the files that wait
        for interfaces that do not exist (counted in `pending`, `degraded` and `missing`,
        as a batch's), so that a typo is seen, and those (of the routes, those the reload
        adds or changes: `change`) in a table the multicast rules do not send their iif's
        traffic to. mfcd's log says them too (SIGHUP)."""
        # (the routes by their shared Ports, and the tables of those the reload adds or
        # changes, a slice at a time: at 1,000,000 routes, some 150 ms and 400 ms)
        combinations: Counter[Ports] = Counter()
        reaching: dict[tuple[int, int, str], str] = {}
        keys = () if change is None else itertools.chain(change.added, change.changed)
        await run_sliced(_counted(declared, keys, combinations, reaching))
        links = self.controller.router.links
        waiting = declarations.waiting(combinations, declared.templates, links)
        warnings = [kept_text(key, value) for key, value in kept.items()]
        texts = (
            views.waiting_text(waiting, would=dry_run),
            views.settings_waiting_text(declared.interfaces, links),
            *unreached_of(declared, (), self.mrules, reaching),
        )
        for text in filter(None, texts):
            warnings.append(text)
            if not dry_run:
                log.info("reload: %s", text)
        refused = "" if dry_run else views.refused_text(self.controller.router)
        if refused:  # (logged as the tables were found refused)
            warnings.append(refused)
        return {
            "pending": waiting.pending,
            "degraded": waiting.degraded,
            "missing": waiting.missing,
            "warnings": warnings,
        }

    def _apply_settings(self, new: config.Config, fixed: dict[str, Any]) -> None:
        old = self.cfg
        for key, value in fixed.items():
            log.warning("reload: %s", kept_text(key, value))
        new = config.override(new, **fixed)
        if (new.socket_group, new.socket_mode) != (old.socket_group, old.socket_mode):
            socket_permissions(old.socket_path, new.socket_group, new.socket_mode)
        logging.getLogger().setLevel(new.log_level.upper())
        if self.server is not None:
            self.server.client_timeout = new.client_timeout
        if self.serving:
            self.learner.idle_timeout = new.learned_idle_timeout
            self.learner.max_learned = new.max_learned
        self.cfg = new
        if self.serving and new.drift_check_interval != old.drift_check_interval:
            self._schedule_checks()  # (the first check one new interval from now)


def periodic_check(routes: int, vifs: int, installed: int, running: bool) -> str | None:
    """What a tick of drift_check_interval checks: "full" (a dump of the whole MFC up to
    PERIODIC_FULL_ROUTES installed routes: it also finds entries rewritten or added by
    another program, which probes cannot), "probe" (each installed route's entry, O(1)
    each, in slices) or None: no check while one runs (the tick is skipped), nor on a
    daemon with no route and no VIF, where there is nothing to compare."""
    if running or not (routes or vifs):
        return None
    return "full" if installed <= PERIODIC_FULL_ROUTES else "probe"


def moved(before: Mapping[str, int | None], after: Mapping[str, int | None]) -> set[str]:
    """The interfaces that came, went or changed ifindex between two views of the links."""
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def _counted(
    declared: declarations.Declarations,
    keys: Iterable[RouteKey],
    combinations: Counter[Ports],
    reaching: dict[tuple[int, int, str], str],
) -> Iterator[int]:
    """A reload's warnings' pass over its routes, a slice at a time (for run_sliced): the
    declared routes counted by their shared Ports into `combinations`, then the routes it
    adds or changes (`keys`) noted in `reaching` (see note_reaching)."""
    routes = iter(declared.routes.values())
    for _ in range(0, len(declared.routes), COUNT_CHUNK):
        combinations.update(itertools.islice(routes, COUNT_CHUNK))
        yield COUNT_CHUNK
    added = iter(keys)
    while chunk := list(itertools.islice(added, REACH_CHUNK)):
        note_reaching(declared, chunk, reaching)
        yield len(chunk)


def note_reaching(
    declared: declarations.Declarations,
    keys: Iterable[RouteKey],
    wanted: dict[tuple[int, int, str], str],
) -> None:
    """Note in `wanted` the (family, table, iif) of the declared routes `keys`, each at the
    FILE:LINE of the first that has it (what unreached_of warns of)."""
    routes = declared.routes
    for key in keys:
        reaching = (key[0], key[3], routes[key].iif)
        if reaching not in wanted:
            wanted[reaching] = declared.where(key)


def unreached_of(
    declared: declarations.Declarations,
    keys: Iterable[RouteKey],
    rules_of: Callable[[int], diagnosis.Rules],
    wanted: dict[tuple[int, int, str], str] | None = None,
) -> list[str]:
    """The warnings (diagnosis.unreached) of the declared routes `keys` (and those noted in
    `wanted` already, see note_reaching) and of every declared template whose table the
    multicast rules do not send its iif's traffic to, each (family, table, iif) once, at
    the FILE:LINE of the first that has it."""
    wanted = {} if wanted is None else wanted
    note_reaching(declared, keys, wanted)
    for t in declared.templates:
        wanted.setdefault((t.family, t.table, t.iif), t.where)
    return diagnosis.unreached_warnings(wanted, rules_of, validate.table_numbers, where=wanted)


def kept_text(key: str, value: Any) -> str:
    """What a reload says (and logs) of a setting the files change that only a restart
    applies (RESTART_ONLY), `value` the one kept until then."""
    if key == "on_config_error":  # (nothing running uses it: only the next start)
        return (
            "on_config_error takes effect at the next start (a reload is all or nothing"
            " whatever it says)"
        )
    return f"{key} changes only at restart; mfcd keeps {value!r} until then"


def dumped_links() -> list[LinkChange]:
    """Every interface there is now (a netlink dump), each as the event that made it."""
    return [LinkChange("new", link.name, link.ifindex, link.up) for link in netlink.dump_links()]


def _tables_stay(kernel: Kernel) -> bool:
    """Whether the kernel's tables outlive this mfcd (systemd's fd store holds them)."""
    return any(sock.stored for sock in kernel.sockets.values())


def _log_stopping(kernel: Kernel) -> None:
    if _tables_stay(kernel):
        log.info(
            "stopping: the kernel's tables are left to systemd's fd store (a restart takes"
            " them over, forwarding on; a stop of the unit, or a unit without"
            " FileDescriptorStoreMax=, removes them)"
        )
    else:
        log.info("stopping: removing routes from the kernel")


def resolve(cfg: config.Config, overrides: dict[str, str | None]) -> config.Config:
    """Apply command-line flags, then make paths absolute (the daemon may change directory)."""
    cfg = config.override(cfg, **overrides)
    return config.override(
        cfg,
        socket_path=os.path.abspath(cfg.socket_path),
        state_file=os.path.abspath(cfg.state_file),
    )


SERVICE_USER = "mfc"  # the user mfc_daemon.service runs mfcd as (packaging/mfc.sysusers)

# Capability numbers (linux/capability.h) mfcd needs: raw IGMP/ICMPv6 sockets, MRT_* options.
NEEDED_CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}


def missing_capabilities(proc_status: str) -> list[str]:
    """The needed capabilities absent from CapEff in the text of /proc/self/status."""
    for line in proc_status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
            return [name for name, bit in NEEDED_CAPABILITIES.items() if not effective >> bit & 1]
    return []  # no such line (not Linux /proc): let the kernel calls say what fails


def check_start_up(cfg: config.Config) -> None:
    """Refuse to start, with one line saying what to do, before touching anything."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as f:
            missing = missing_capabilities(f.read())
    except OSError:
        missing = []
    if missing:
        raise ConfigError(
            f"mfcd needs {' and '.join(missing)}: run it as root, or through"
            " mfc_daemon.service, which grants them to user mfc"
        )
    for directory, what in _directories(cfg):
        directory_trust.prepare(directory, what)


def _directories(cfg: config.Config) -> list[tuple[str, str]]:
    """The directories mfcd creates files in, which the start checks (directory_trust)."""
    return [
        (os.path.dirname(cfg.state_file), "state directory"),
        (os.path.dirname(cfg.socket_path), "socket directory"),
    ]


def check_config(path: str | None, overrides: dict[str, str | None] | None = None) -> int:
    """`mfcd --check-config`: every problem of the files on stderr, FILE:LINE first; 0 if none.
    The same code reads the files at start and on a reload, and the state and socket
    directories are checked as the start checks them (without creating them)."""
    name = path or config.DEFAULT_PATH
    try:
        settings, declared, read = config.load_all(path)
    except declarations.Problems as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        count = len(e.problems)
        print(f"{name}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    except MfcdError as e:
        print(str(e), file=sys.stderr)
        return 1
    refusals = _unsafe_directories(resolve(settings, overrides or {}))
    for refusal in refusals:
        print(f"{name}: {refusal}", file=sys.stderr)
    if refusals:
        return 1
    files = views.counted(len(read), "file")
    print(f"{name}: valid ({files}, {_declared_counts(declared, 'interface')})")
    _note_missing_interfaces(name, declared)
    return 0


def _unsafe_directories(cfg: config.Config) -> list[str]:
    """--check-config: what the start would refuse about the state and socket directories.
    Owners trusted: root, this user and the packaged service's user `mfc` (a check run as
    root, of the directories systemd made for mfc_daemon.service, passes as the start does)."""
    trusted = {0, os.geteuid()}
    with contextlib.suppress(KeyError):
        trusted.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    found = (directory_trust.check(d, what, trusted) for d, what in _directories(cfg))
    return [refusal for refusal in found if refusal is not None]


def _note_missing_interfaces(name: str, declared: declarations.Declarations) -> None:
    """--check-config: a note (not an error: the files may be meant for another machine,
    and mfcd accepts routes waiting for interfaces) of the routes and templates that name
    interfaces this machine does not have, so that a typo is seen before a reload."""
    try:
        links = netlink.current_links()
    except (OSError, ValueError):  # (no netlink here, or an answer not understood)
        return
    combinations = Counter(declared.routes.values())
    texts = (
        views.waiting_text(declarations.waiting(combinations, declared.templates, links), True),
        views.settings_waiting_text(declared.interfaces, links),
        *unreached_of(declared, declared.routes, probes.read_rules),
    )
    for text in filter(None, texts):
        print(f"{name}: note: on this machine, {text}", file=sys.stderr)


def _declared_counts(declared: declarations.Declarations, interfaces: str) -> str:
    """`2 routes, 1 template, 0 joins, 1 interface`: what the config files declare."""
    counts = (
        (len(declared.routes), "route"),
        (len(declared.templates), "template"),
        (len(declared.joins), "join"),
        (len(declared.interfaces) + len(declared.table_interfaces), interfaces),
    )
    return ", ".join(views.counted(n, thing) for n, thing in counts)


def _log_left_out(loaded: config.Loaded, path: str | None) -> None:
    """A start that left config files out (on_config_error = "skip_file"): each problem and
    what mfcd does instead, at error level, as a failed reload logs them."""
    for problem in loaded.problems:
        log.error("config: %s", problem)
    log.error(
        'config: left out %s (on_config_error = "skip_file"): starting with the state file\'s'
        " routes and the other files' declarations; fix the files and run mfcctl reload",
        ", ".join(config.left_out_named(loaded.left_out, path)),
    )


def _failed_start() -> int:
    """Exit status 1, after releasing the tables systemd passed if nothing took them yet (a
    bad config file): a failed start forwards nothing, as without the fd store."""
    release_passed(notify.take_listen_fds(), notify.FdStore())
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        "socket_path": args.socket,
        "state_file": args.state_file,
        "socket_group": args.socket_group,
        "log_level": args.log_level,
    }
    if args.check_config:
        return check_config(args.config, overrides)
    try:
        read_cache = config.ReadCache()
        # (as a reload reads them: GC passes over the routes read so far would double it)
        with gc_paused():
            loaded = config.load_at_start(args.config, read_cache)
            # What was read lives until a reload replaces it: out of the GC's reach, as
            # start-up then puts the routes (Daemon._restore), so no pass walks it before.
            gc.freeze()
        cfg = resolve(loaded.settings, overrides)
    except declarations.Problems as e:
        for problem in e.problems:
            print(f"mfcd: {problem}", file=sys.stderr)
        return _failed_start()
    except MfcdError as e:
        print(f"mfcd: {e}", file=sys.stderr)
        return _failed_start()
    setup_logging(cfg.log_level)
    if loaded.problems:
        _log_left_out(loaded, args.config)
    daemon = Daemon(
        cfg, args.config, overrides, loaded.declared, read_cache, left_out=loaded.left_out
    )
    try:
        check_start_up(cfg)
        asyncio.run(daemon.run())
    except MfcdError as e:
        log.error("%s", e)
        notify.notify(f"STATUS=failed: {e}")
        return _failed_start()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # a bug: say so plainly, with the traceback for the report
        log.critical("mfcd failed unexpectedly: %s", e, exc_info=True)
        notify.notify(f"STATUS=failed: {e}")
        return _failed_start()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
