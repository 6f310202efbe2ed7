"""sd_notify(3) without libsystemd: readiness, status and watchdog datagrams to $NOTIFY_SOCKET."""

# The protocol is one AF_UNIX datagram of newline-separated VAR=value assignments (READY=1,
# STATUS=..., STOPPING=1, RELOADING=1, WATCHDOG=1) sent to the path in $NOTIFY_SOCKET; a leading
# '@' names a socket in the abstract namespace. systemd documents it as stable and recommends
# reimplementing it rather than linking libsystemd (sd_notify(3), "Standalone Implementations").
# The service manager reads the sender's pid from SCM_CREDENTIALS, which the kernel adds by
# itself because the receiving socket has SO_PASSCRED: with NotifyAccess=main the datagram must
# come from the main process, not from a child.

import os
import socket

__all__ = ["notify", "watchdog_interval"]


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=listening") to the service manager.

    Returns True if the datagram was sent, False when not run under systemd ($NOTIFY_SOCKET
    unset or not an absolute/abstract address) or when sending failed. As sd_notify(3)
    recommends, callers may ignore the result: a daemon must run the same without systemd.
    STATUS= values must be a single line.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


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
