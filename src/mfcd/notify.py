"""sd_notify(3), sd_listen_fds(3) without libsystemd: readiness, status, watchdog, the fd store."""

# The protocol is one AF_UNIX datagram of newline-separated VAR=value assignments (READY=1,
# STATUS=..., STOPPING=1, RELOADING=1, WATCHDOG=1) sent to the path in $NOTIFY_SOCKET; a leading
# '@' names a socket in the abstract namespace. systemd documents it as stable and recommends
# reimplementing it rather than linking libsystemd (sd_notify(3), "Standalone Implementations").
# The service manager reads the sender's pid from SCM_CREDENTIALS, which the kernel adds by
# itself because the receiving socket has SO_PASSCRED: with NotifyAccess=main the datagram must
# come from the main process, not from a child.

#
# Sending never blocks. A datagram socket whose reader does not keep up holds only
# net.unix.max_dgram_qlen datagrams (10 by default); a blocking send to it waits until the
# reader takes one, and a daemon waiting there answers nobody. So the socket is non-blocking
# and a datagram that does not fit now is reported as BUSY: the caller drops it or keeps the
# latest to send again later (StatusReporter does that for STATUS=).
#
# The file descriptor store (FDSTORE=1, FDNAME=, FDPOLL=0, FDSTOREREMOVE=1; systemd 219, 233, 246
# and 236): a datagram with the fds as SCM_RIGHTS asks systemd to hold them for the unit and to
# pass them to its next main process, as LISTEN_FDS (from fd 3 on), LISTEN_PID and
# LISTEN_FDNAMES (colon-separated names). The kernel module decides what is stored (kernel.py's
# MRT_INIT sockets, see docs/operations.md); this module only speaks the protocol.

import asyncio
import enum
import fcntl
import os
import socket
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "FdStore",
    "Sent",
    "StatusReporter",
    "fdstore_message",
    "fdstore_remove_message",
    "listen_fds",
    "notify",
    "send",
    "take_listen_fds",
    "watchdog_interval",
]

STATUS_INTERVAL = 1.0  # seconds: at most one STATUS= per interval


class Sent(enum.Enum):
    """What became of a notification."""

    SENT = "sent"
    OFF = "off"  # not run under systemd, or the socket cannot be reached: nobody to tell
    BUSY = "busy"  # the service manager's queue is full now: try again later


def send(state: str, fds: Sequence[int] = ()) -> Sent:
    """Send `state` (e.g. "READY=1\\nSTATUS=listening") to the service manager, never blocking;
    `fds` go with it as SCM_RIGHTS (FDSTORE=1).

    OFF when not run under systemd ($NOTIFY_SOCKET unset or not an absolute/abstract
    address) or when sending failed; BUSY when the receiver's queue is full.
    STATUS= values must be a single line.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return Sent.OFF
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    try:
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            if fds:
                socket.send_fds(sock, [state.encode("utf-8")], list(fds))
            else:
                sock.send(state.encode("utf-8"))
    except BlockingIOError:
        return Sent.BUSY
    except OSError:
        return Sent.OFF
    return Sent.SENT


def notify(state: str) -> bool:
    """`send` for callers that need to know only whether the datagram went out.

    As sd_notify(3) recommends, callers may ignore the result: a daemon must run the same
    without systemd. A datagram the service manager cannot take now is dropped (False).
    """
    return send(state) is Sent.SENT


def fdstore_message(name: str) -> str:
    """The datagram that stores the fds sent with it under `name`. FDPOLL=0: systemd would
    drop an fd on POLLHUP/POLLERR, which on a raw socket says nothing about what it holds
    (an older systemd ignores the assignment, as it does every one it does not know)."""
    return f"FDSTORE=1\nFDNAME={name}\nFDPOLL=0"


def fdstore_remove_message(name: str) -> str:
    """The datagram that takes every fd stored under `name` out of the store."""
    return f"FDSTOREREMOVE=1\nFDNAME={name}"


class FdStore:
    """systemd's file descriptor store, as kernel.Kernel uses it (kernel.FdKeeper)."""

    def keep(self, name: str, fd: int) -> bool:
        """Ask systemd to keep a duplicate of `fd` under `name`; whether the datagram went
        out (not whether systemd took it: without FileDescriptorStoreMax= it closes it)."""
        return send(fdstore_message(name), [fd]) is Sent.SENT

    def drop(self, name: str) -> None:
        send(fdstore_remove_message(name))


# The first fd systemd passes (SD_LISTEN_FDS_START, sd-daemon.h).
LISTEN_FDS_START = 3


def listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The (fd, name) pairs systemd passed to process `pid`, from LISTEN_PID, LISTEN_FDS and
    LISTEN_FDNAMES as sd_listen_fds_with_names(3) reads them: none unless LISTEN_PID is
    `pid` (the variables were meant for another process) and LISTEN_FDS a count; a name
    missing from LISTEN_FDNAMES is "unknown" (an empty or absent list names them all so)."""
    if environ.get("LISTEN_PID", "") != str(pid):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if count <= 0:
        return []
    names = environ.get("LISTEN_FDNAMES", "")
    listed = names.split(":") if names else []
    listed += ["unknown"] * (count - len(listed))
    return [(LISTEN_FDS_START + i, listed[i]) for i in range(count)]


def take_listen_fds() -> list[tuple[int, str]]:
    """listen_fds for this process, once: the variables are unset (a child must not take
    them for its own) and each fd is made close-on-exec (the kernel writer processes get
    only what is sent to them)."""
    fds = listen_fds(os.environ, os.getpid())
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    taken = []
    for fd, name in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:  # not open: listed, but not passed after all
            continue
        taken.append((fd, name))
    return taken


class StatusReporter:
    """STATUS= (and READY=1 and the like) for the service manager, rate-limited, never blocking.

    `changed()` after every change sends the status at once if none went out in the last
    `interval` seconds, else once when the interval is over: a burst of 1,000 changes sends
    two datagrams, the second with the latest status. `announce(state)` sends a state change
    (READY=1, RELOADING=1, STOPPING=1) with the current status at once. A datagram the
    manager cannot take now is kept, the latest replacing an older one, and sent again
    after `interval`.
    """

    def __init__(self, status: Callable[[], str], interval: float = STATUS_INTERVAL) -> None:
        self.status = status
        self.interval = interval
        self._timer: asyncio.TimerHandle | None = None
        self._last = -interval  # loop time of the last datagram sent (or tried)
        self._announcement = ""  # a state change not delivered yet (BUSY)
        self._closed = False

    def changed(self) -> None:
        """The status may have changed: report it, at most once per interval."""
        if self._timer is not None or self._closed:
            return  # a report is due; it will carry the status as it is then
        loop = asyncio.get_running_loop()
        wait = self._last + self.interval - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self._due)
        else:
            self._send()

    def announce(self, state: str) -> None:
        """Send a state change with the current status now (kept for later if BUSY).
        Nothing after close(): the daemon is stopping, and READY=1 then would be a lie."""
        if self._closed:
            return
        self._announcement = state
        self._cancel()
        self._send()

    def close(self) -> None:
        self._closed = True
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        self._send()

    def _send(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        head = f"{self._announcement}\n" if self._announcement else ""
        if send(f"{head}STATUS={self.status()}") is Sent.BUSY:
            # Keep only the latest: the next try sends the status as it is by then.
            self._timer = loop.call_later(self.interval, self._due)
        else:
            self._announcement = ""


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd expects none from this process.

    This is already half of $WATCHDOG_USEC (WatchdogSec= in the unit), the keep-alive period
    sd_watchdog_enabled(3) recommends; do not halve it again. $WATCHDOG_PID, when set, must be
    our pid: otherwise the variables were inherited from a parent that is the supervised one.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000
