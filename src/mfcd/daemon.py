"""mfcd, the daemon: wires config, kernel, state file, control socket, signals and readiness.

Start-up order matters: refuse early if another mfcd serves the socket or holds the state
file's lock; take the kernel's tables (MRT_INIT); load the state file and install its
routes; only then listen and tell systemd READY=1, so a client never sees a
half-restored daemon.
Shutdown reverses it: stop taking requests, MRT_DONE (the kernel removes every VIF
and route the daemon added), remove the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence

from mfcd import __version__, config, directory_trust, netlink, notify, protocol, views
from mfcd.commands import Commands
from mfcd.controller import Controller, gc_paused, observe
from mfcd.dataplane import Events
from mfcd.errors import ConfigError, KernelError, MfcdError, StateError
from mfcd.kernel import Kernel
from mfcd.learning import Learner
from mfcd.model import DEFAULT_TABLE
from mfcd.server import Server, bind_control_socket, socket_permissions
from mfcd.state import VERSION, StateFile

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
RESTART_ONLY = ("socket_path", "state_file", "ipv4", "ipv6", "max_request_bytes")
COMPACT_DELAY = 5.0  # seconds after start-up before a long journal is compacted
RESYNC_DELAY = 1.0  # seconds of quiet after link events before checking the kernel for drift
STATE_CHECK_INTERVAL = 1.0  # seconds between checks that the state file is still there
STATE_RETRY_INTERVAL = 30  # seconds to wait after writing it back failed
MAX_DEFERRED_CHECKS = 3  # then the check runs on the event loop, where nothing can interleave
CHECK_CHUNK = 2_000  # routes a drift check probes and writes between two turns of the loop


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
    second SIGTERM (an impatient operator's) would kill the process in its last steps."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, *IGNORED_SIGNALS):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def _ignore(sig: signal.Signals) -> None:
    log.warning(
        "ignoring %s (SIGTERM stops mfcd, SIGHUP reloads, SIGUSR1 logs the status)", sig.name
    )


class Daemon:
    # Set once start-up has taken the kernel's tables (see run()).
    controller: Controller
    kernel: Kernel
    learner: Learner
    state: StateFile
    monitor: netlink.LinkMonitor

    def __init__(
        self, cfg: config.Config, config_path: str | None, overrides: dict[str, str | None]
    ) -> None:
        self.cfg = cfg
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
        self.inherited = False  # the kernel's tables held VIFs or entries before we added any
        self._readers: set[int] = set()  # the file descriptors the loop waits on
        self.serving = False  # start-up is over
        self._reload_pending = False  # SIGHUP arrived during start-up
        self._compacting: asyncio.Task[None] | None = None  # a snapshot written in a thread
        # STATUS= at most once a second, never blocking: systemd's queue holds 10 datagrams.
        self.reporter = notify.StatusReporter(self.status)
        # Upcalls received, by kind (dataplane.UPCALL_KINDS): counted, not yet acted on.
        self.upcalls: Counter[str] = Counter()

    async def run(self) -> None:
        cfg = self.cfg
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
        listener = bind_control_socket(cfg.socket_path, cfg.socket_group, cfg.socket_mode)
        kernel = None
        state = self.state = StateFile(cfg.state_file)
        # Subscribe before the dump, so no interface change falls between the two.
        monitor = netlink.LinkMonitor()
        try:
            state.lock()  # before anything else: a second mfcd on this file stops here
            kernel = Kernel(cfg.families, monitor)
            controller = self._restore(state, kernel)
            if state.needs_snapshot:
                # No file yet: an empty one, so that a lost one is noticed at start. Version 1:
                # rewritten in the current format before any change is appended.
                controller.compact()
            await self._serve(controller, kernel, listener, monitor)
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.socket_path)  # ours: bind_control_socket refused to take another's
            monitor.close()
            if kernel is not None:
                kernel.close()
            state.close()
            _ignore_signals_from_now_on(loop)

    def _restore(self, state: StateFile, kernel: Kernel) -> Controller:
        """Read the state file and put its routes in the kernel."""
        # The cyclic GC stays paused from the first object read to the freeze: nothing here
        # forms cycles, and every pass would walk the growing set of routes again.
        with gc_paused():
            loaded = state.load()
            if loaded.torn_tail:
                # Most likely; a file cut short mid-line by something else looks the same.
                log.warning(
                    "%s: dropped an incomplete last record, most likely a change a crash"
                    " interrupted before it was acknowledged",
                    state.path,
                )
            if loaded.version < VERSION:
                log.info("%s: format version %d; rewriting it", state.path, loaded.version)
            controller = Controller(kernel, state)
            # Our MRT_INIT table starts empty unless another program left static entries in
            # it; only then is the drift check after start-up worth its full dump of the table.
            before = observe(kernel, kernel.families)
            self.inherited = bool(before.vifs or before.mfc)
            controller.restore(loaded, netlink.current_links())
            del loaded
            # The restored routes live as long as the daemon: keep the cyclic GC from
            # rescanning them on every collection.
            gc.freeze()
        return controller

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
        # Every table's socket and the link monitor: each readable one means events() has
        # something (upcalls must be read continuously: a full buffer drops them silently).
        self.learner = Learner(controller, kernel, cfg.learned_idle_timeout, cfg.max_learned)
        self._sync_tables()
        commands = Commands(controller, cfg.families, kernel, self.upcalls)
        commands.on_change = self._after_change
        commands.learner = self.learner
        server = self.server = Server(
            commands, cfg.socket_path, cfg.client_timeout, cfg.max_request_bytes
        )
        await server.start(listener)
        self.serving = True
        if self._reload_pending:
            self.reload()
        status = self.status()
        log.info("mfcd %s ready on %s: %s", __version__, cfg.socket_path, status)
        self.reporter.announce("READY=1")
        watchdog = asyncio.create_task(self._watchdog())
        keeper = asyncio.create_task(self._keep_state_file())
        expiry = asyncio.create_task(self._expire_learned())
        if self.inherited:
            log.warning("the kernel's tables held entries mfcd did not add; repairing them")
            self._resync_later(0.0, full=True)
        # A long journal is compacted by the usual rule, but not before the first requests.
        compact = loop.call_later(COMPACT_DELAY, self._compact_soon)
        await self.stopping.wait()
        log.info("stopping: removing routes from the kernel")
        self.reporter.close()  # no STATUS= of routes after this one
        notify.notify("STOPPING=1\nSTATUS=stopping")
        watchdog.cancel()
        keeper.cancel()
        expiry.cancel()
        compact.cancel()  # the journal is closed soon
        if self._compacting is not None:
            self._compacting.cancel()
        await server.stop()
        for fd in self._readers:
            loop.remove_reader(fd)
        self._readers.clear()
        if self._resync is not None:
            self._resync.cancel()
        if self._checking is not None:
            self._checking.cancel()

    def _log_status(self) -> None:
        """SIGUSR1: one line on what mfcd holds and serves."""
        if not self.serving or self.server is None:
            log.info("status: starting")
            return
        log.info("status: %s; %s", self.status(), self.server.load())

    def status(self) -> str:
        router = self.controller.router
        total, installed = len(router.routes), len(router.installed)
        return f"{installed} of {total} routes installed, {total - installed} pending"

    def _sync_tables(self) -> None:
        """Close the tables no VIF uses any more (MRT_DONE), and wait on exactly the open
        tables' sockets: a table other than the default is opened by the kernel operation
        that first names it and closed here once its last VIF is gone."""
        kernel, loop = self.kernel, asyncio.get_running_loop()
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

    def _after_change(self) -> None:
        self.learner.after_change()  # a new template may match traffic already flowing
        self._sync_tables()
        self.report_status()
        # After the client is answered: the response is sent before the loop runs callbacks.
        asyncio.get_running_loop().call_soon(self._compact_soon)

    def _compact_soon(self) -> None:
        """Start compacting the state file in a thread if it is due and not under way."""
        if self._compacting is None and self.controller.compaction_due():
            self._compacting = asyncio.get_running_loop().create_task(self._compact())

    async def _compact(self) -> None:
        """Write a snapshot in a thread while requests are served, then put it in place.

        Formatting and syncing 1,000,000 routes takes seconds: on the loop it would hold
        every client for that long after the change that made it due. Only copying the
        routes (two dicts, some tens of ms) and the final rename happen here.
        """
        router = self.controller.router
        began = time.monotonic()
        job = self.state.start_compaction(
            dict(router.persistent_routes()), dict(router.thresholds), router.templates
        )
        routes = len(job.routes)
        writing = asyncio.ensure_future(asyncio.to_thread(job.write))
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
            if events.links_lost:
                log.warning("missed interface events (netlink overrun); re-reading interfaces")
                self.controller.sync_links(netlink.current_links())
            else:
                for link in events.links:
                    self.controller.link_event(link.kind, link.name, link.ifindex)
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
        after = router.tracked_links()
        touched = {n for n in tracked.keys() | after.keys() if tracked.get(n) != after.get(n)}
        if touched:
            self._resync_later(RESYNC_DELAY, touched)
        self._sync_tables()  # a pending route installed now may have opened a table
        self.learner.after_change()  # a template that took its VIFs now may match traffic

    def _resync_later(
        self, delay: float, touched: set[str] | None = None, full: bool = False
    ) -> None:
        """Check the kernel for drift once interface events have settled (debounced): the
        routes on the `touched` interfaces (None: every route), with `full` the whole MFC."""
        if touched is None or self._touched is None:
            self._touched = None
        else:
            self._touched |= touched
        self._full_check |= full
        if self._resync is not None:
            self._resync.cancel()
        self._resync = asyncio.get_running_loop().call_later(delay, self._resync_now)

    def _resync_now(self) -> None:
        self._resync = None
        if self._checking is not None and not self._checking.done():
            self._resync_later(RESYNC_DELAY, set())  # one check at a time: the next after it
            return
        self._checking = asyncio.get_running_loop().create_task(self._check_drift())

    async def _check_drift(self) -> None:
        """Compare the kernel's tables with the model where they can differ, and repair.

        The VIFs are read from /proc (32 rows); the MFC entries of the routes on the
        interfaces that changed are probed one by one (SIOCGETSGCNT, O(1) each), CHECK_CHUNK
        at a time with clients served in between: a cost that grows with the routes
        touched, where a dump of the kernel's table grows faster than the table (minutes at
        1,000,000 entries). Missing entries are written again, and so are those of routes
        on a VIF added back (the kernel dropped their oifs there). The event itself wrote
        the entries it changed a moment ago, so they are not written a second time; `mfcctl
        sync` writes every entry again. Only the full check, for entries another program
        left behind, dumps the table.
        """
        touched, self._touched = self._touched, set()
        if self._full_check:
            self._full_check = False
            await self._check_full()
            return
        started = time.monotonic()
        controller, families = self.controller, self.kernel.families
        try:
            # A link event whose kernel change failed left the model's view of interfaces
            # behind; a fresh dump sets it right before the tables are compared.
            controller.sync_links(netlink.current_links())
            view = observe(self.kernel, families, False, controller.router.tables())
        except (OSError, KernelError) as e:
            log.error("checking the kernel's tables failed: %s", e)
            return
        report, readded = controller.repair_vifs(view.vifs, tables=view.tables)
        router = controller.router
        stale = set(router.users(readded))
        if touched is None:
            keys = list(router.installed)
        else:
            vifs = [vif for name in touched for vif in router.vifs_named(name)]
            keys = router.users({(vif.family, vif.table, vif.interface) for vif in vifs})
            keys += stale.difference(keys)
        for start in range(0, len(keys), CHECK_CHUNK):
            if start:
                await asyncio.sleep(0)  # requests are answered between two chunks
            chunk = keys[start : start + CHECK_CHUNK]
            report += controller.check_entries(chunk, stale=stale, rewrite_all=False)
        report += map(
            views.describe_step, controller.retry_pending([*router.blocked, *router.refused])
        )
        self._sync_tables()
        what = "every route" if touched is None else "routes on " + ", ".join(sorted(touched))
        repairs = Counter(entry["action"] for entry in report)
        log.log(
            logging.WARNING if report else logging.INFO,
            "drift check of %s: %d entries checked, %s, in %.2f s",
            what,
            len(keys),
            ", ".join(f"{a} {n}" for a, n in sorted(repairs.items())) or "nothing to repair",
            time.monotonic() - started,
        )

    async def _check_full(self) -> None:
        """Compare every VIF and MFC entry, from a dump of the whole table; repair.

        The dump takes 2 s at 100,000 routes, most of it in the kernel: it runs in a thread,
        and clients are served meanwhile. A change of the model during the dump would look
        like drift, so the comparison is then left to a later check.
        """
        controller = self.controller
        try:
            controller.sync_links(netlink.current_links())
            version = controller.router.version
            tables = controller.router.tables()
            view = await asyncio.to_thread(observe, self.kernel, self.kernel.families, True, tables)
        except (OSError, KernelError) as e:
            log.error("checking the kernel's tables failed: %s", e)
            return
        if controller.router.version != version and self._deferred < MAX_DEFERRED_CHECKS:
            self._deferred += 1
            self._resync_later(RESYNC_DELAY, full=True)
            return
        if controller.router.version != version:
            # Changes keep coming (a busy client): check on the loop, between two requests.
            view = observe(self.kernel, self.kernel.families, True, controller.router.tables())
        self._deferred = 0
        controller.sync(view)
        self._sync_tables()

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
            for _ in self.learner.ticking():
                await asyncio.sleep(0)  # requests are answered between two steps

    async def _keep_state_file(self) -> None:
        """Once a second, write the state file back if it was deleted or replaced (each change
        checks it too, this is for the quiet times: a restart would otherwise start empty),
        and lock its lock file again if that went."""
        while True:
            await asyncio.sleep(STATE_CHECK_INTERVAL)
            try:
                self.state.hold_lock()  # first: never write back a file another mfcd owns
                self.controller.keep_state_file()
            except MfcdError as e:
                log.error("%s; trying again in %d s", e, STATE_RETRY_INTERVAL)
                await asyncio.sleep(STATE_RETRY_INTERVAL)

    def _on_hup(self) -> None:
        if self.stopping.is_set():
            return  # the configuration no longer matters, and READY=1 would be wrong now
        if self.serving:
            self.reload()
        else:
            self._reload_pending = True

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply what can change while running."""
        # RELOADING=1 needs the monotonic time it started (sd_notify(3)); READY=1 ends it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")
        try:
            self._reload()
        finally:
            self.reporter.announce("READY=1")

    def _reload(self) -> None:
        try:
            new = resolve(config.load(self.config_path), self.overrides)
        except MfcdError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return
        old = self.cfg
        fixed = {k: getattr(old, k) for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)}
        for key in fixed:
            log.warning("reload: %s changes only at restart; keeping %r", key, getattr(old, key))
        new = config.override(new, **fixed)
        if (new.socket_group, new.socket_mode) != (old.socket_group, old.socket_mode):
            try:
                socket_permissions(old.socket_path, new.socket_group, new.socket_mode)
            except MfcdError as e:
                log.error("reload failed, keeping the running configuration: %s", e)
                return
        logging.getLogger().setLevel(new.log_level.upper())
        if self.server is not None:
            self.server.client_timeout = new.client_timeout
        if self.serving:
            self.learner.idle_timeout = new.learned_idle_timeout
            self.learner.max_learned = new.max_learned
        self.cfg = new
        log.info("configuration reloaded from %s", self.config_path or config.DEFAULT_PATH)


def resolve(cfg: config.Config, overrides: dict[str, str | None]) -> config.Config:
    """Apply command-line flags, then make paths absolute (the daemon may change directory)."""
    cfg = config.override(cfg, **overrides)
    return config.override(
        cfg,
        socket_path=os.path.abspath(cfg.socket_path),
        state_file=os.path.abspath(cfg.state_file),
    )


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
    directory_trust.prepare(os.path.dirname(cfg.state_file), "state directory")
    directory_trust.prepare(os.path.dirname(cfg.socket_path), "socket directory")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        "socket_path": args.socket,
        "state_file": args.state_file,
        "socket_group": args.socket_group,
        "log_level": args.log_level,
    }
    try:
        cfg = resolve(config.load(args.config), overrides)
    except MfcdError as e:
        print(f"mfcd: {e}", file=sys.stderr)
        return 1
    setup_logging(cfg.log_level)
    daemon = Daemon(cfg, args.config, overrides)
    try:
        check_start_up(cfg)
        asyncio.run(daemon.run())
    except MfcdError as e:
        log.error("%s", e)
        notify.notify(f"STATUS=failed: {e}")
        return 1
    except KeyboardInterrupt:
        pass
    except Exception as e:  # a bug: say so plainly, with the traceback for the report
        log.critical("mfcd failed unexpectedly: %s", e, exc_info=True)
        notify.notify(f"STATUS=failed: {e}")
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
