"""The control socket: an asyncio Unix-socket server speaking newline-delimited JSON.

Requests are handled synchronously inside the event loop, so kernel changes are
applied strictly one at a time while any number of clients stay connected.  Each
client gets `client_timeout` seconds to send a complete request line and at most
`max_request_bytes` per line; a client that breaks either rule gets an error and is
disconnected, and nobody else notices.

Each connection is an asyncio.Protocol (Connection): requests are handled as their bytes
arrive, without a task, stream or future per request (without them a `ping` costs a
quarter less CPU); what has to wait (a slow reader, show's parts, diagnose, reload, monitor)
runs in a task of the connection's own.

Memory: the request bytes buffered for all clients together (partial lines, and the
line being handled) stay within a budget of twice `max_request_bytes`.  The first
FREE_BYTES of each client's buffer do not count, so small requests always get
through; a client whose buffer would overrun the budget gets `busy` and is
disconnected.  Responses that clients have not read yet have a budget of the same
size: over it, the next request gets `busy` instead of a response.

Group commit: a change is applied when its request is handled, but its response waits
until its journal record is synced, together with those of every request handled in the
same turn of the event loop (a callback scheduled after them: `_sync`). So N clients
whose requests arrive together cost one sync, not N, and each is answered only once its
change is durable; if that sync fails, every change of the group is undone and refused.
The record is written and synced by a thread (controller.start_sync): meanwhile the loop
goes on handling requests, which form the next group, journaled once the thread is done
with the one before and the clients it answered are back in it, or after as long as that
sync took (gathering.Gathering); if a sync fails, the group formed meanwhile (planned on
top of the refused one) is refused with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Coroutine
from typing import Any

from mfcd import protocol
from mfcd.commands import Answer, Commands, Deferred, Peer
from mfcd.config import DEFAULT_SOCKET_GROUP
from mfcd.controller import Group
from mfcd.errors import ConfigError
from mfcd.gathering import Gathering

log = logging.getLogger("mfcd")

_UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
MAX_CLIENTS = 256  # connections served at once; more are refused with too_many_clients
STREAM_LIMIT = 64 * 1024  # a client busy with a request is not read beyond twice this
FREE_BYTES = 64 * 1024  # of each client's buffer, not counted against the shared budget
CLOSE_GRACE = 0.5  # seconds a closing connection has to take its last response


def peer_of(sock: socket.socket | None) -> Peer:
    if sock is None:
        return Peer(0, 0, 0)
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return Peer(0, 0, 0)
    return Peer(pid, uid, gid)


def bind_control_socket(path: str, group: str | None, mode: int) -> socket.socket:
    """Create the listening socket: refuse if another daemon serves it, replace a stale file.

    The caller has checked the directory (directory_trust): nobody else can swap the file
    between the bind and the lstat that records which inode is ours.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(
                f"{path} exists and is not a socket; remove it or choose another path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ConfigError(
                    f"cannot check the existing socket {path}: {e.strerror}"
                ) from None
            os.unlink(path)  # stale: left by a daemon that did not exit cleanly
        else:
            raise ConfigError(
                f"another mfcd is already serving {path}; stop it first (systemctl stop mfc_daemon)"
            )
        finally:
            probe.close()
    access = _socket_access(group, mode)  # fail before binding when the group does not exist
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a strict umask so the socket is never reachable by others, even for a moment.
    old = os.umask(0o177)
    try:
        sock.bind(path)
        st = os.lstat(path)
        _bound[path] = (st.st_dev, st.st_ino)
    except OSError as e:
        sock.close()
        # "AF_UNIX path too long" comes without an errno.
        raise ConfigError(f"cannot create the control socket {path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    try:
        _set_access(path, *access)
    except ConfigError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


# The (st_dev, st_ino) of each socket file this process bound: a reload changes the owner
# and mode of that file only, never of whatever has taken its name since.
_bound: dict[str, tuple[int, int]] = {}


def _socket_access(group: str | None, mode: int) -> tuple[int, int]:
    """The socket's group id and mode: a named group must exist, the default one may not.

    Like dockerd with its default group `docker`: a host without the package's group `mfc`
    (a test or CI machine) still gets a daemon, whose socket only its own user can use.
    """
    if group is not None:
        return _group_id(group), mode
    try:
        return grp.getgrnam(DEFAULT_SOCKET_GROUP).gr_gid, mode
    except KeyError:
        log.warning(
            "group %s does not exist: the control socket is for mfcd's user only"
            " (create the group, or set socket_group)",
            DEFAULT_SOCKET_GROUP,
        )
        return os.getegid(), mode & 0o700


def _group_id(group: str) -> int:
    if not group:
        return os.getegid()  # the daemon's own group (also taking back a group a reload removed)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"socket group {group!r} does not exist: create it (the mfcd package does)"
            " or set socket_group in the configuration"
        ) from None


def socket_permissions(path: str, group: str | None, mode: int) -> None:
    """Give the socket its group and mode (on reload): only if it still is the one we bound."""
    _set_access(path, *_socket_access(group, mode))


def _set_access(path: str, gid: int, mode: int) -> None:
    """chown and chmod the socket we bound, through a descriptor, never by name.

    O_PATH|O_NOFOLLOW opens a symlink itself rather than its target; fchmod refuses an
    O_PATH descriptor (EBADF), but /proc/self/fd/N leads to exactly the inode opened.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"cannot set owner or mode of {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) != _bound.get(path):
            raise ConfigError(
                f"{path} is no longer the socket mfcd created (replaced by another file or a"
                " symlink): not changing its owner or mode; check who can write to"
                f" {os.path.dirname(path)} and restart mfcd"
            )
        inode = f"/proc/self/fd/{fd}"
        if st.st_gid != gid:  # needs CAP_CHOWN only when it changes something
            os.chown(inode, -1, gid)
        os.chmod(inode, mode)
    except OSError as e:
        raise ConfigError(f"cannot set owner or mode of {path}: {e.strerror}") from None
    finally:
        os.close(fd)


class Refused(Exception):
    """A client broke a limit: the error it gets before it is disconnected."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Buffer:
    """What one client sent and mfcd has not answered yet, and its deadline."""

    __slots__ = ("counted", "data", "deadline", "scanned", "watch")

    def __init__(self) -> None:
        self.data = bytearray()
        self.scanned = 0  # data[:scanned] holds no newline
        self.counted = 0  # bytes of it counted against the shared budget
        # When the request being waited for must be complete (0: none is waited for now).
        # One timer a connection checks it (Server._watch), not one a request.
        self.deadline = 0.0
        self.watch: asyncio.TimerHandle | None = None


class Connection(asyncio.Protocol):
    """One client. Its requests are taken from the socket's data as it arrives and handled
    there and then (no task, stream or future per request). What must wait runs in a task
    of the connection's own: a response the client is slow to take, show's parts,
    diagnose, reload, monitor; a request waiting for its group's sync is answered by the
    server (Server._answer). No
    further request of the client is handled until its last is answered (`busy`); what it
    sends meanwhile waits unread (`unread`), and beyond 2 x STREAM_LIMIT the socket is no
    longer read."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(0, 0, 0)
        self.buffer = Buffer()
        self.unread: list[bytes] = []  # arrived while a request was under way
        self.unread_size = 0
        self.reading = True  # (False: paused, too much unread)
        self.busy = False  # a request is under way: the next one waits
        self.eof = False  # the client closed its end
        self.closed = False  # closing or closed: nothing more is read or answered
        self.subscribed = False  # a monitor: what the client sends is dropped
        self.task: asyncio.Task[bool] | None = None  # the request's waiting part, if any
        self.paused = False  # the transport's write buffer is over its high-water mark
        self._drained: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None  # a monitor's: the client is gone
        self._abort: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future[None] | None = None  # done once the connection is gone

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()
        self.server._accept(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        if (
            self.busy
            or self.closed
            or self.subscribed
            or self.unread
            or buffer.data
            or self.eof
            or buffer.counted
            or not self.reading
            or not data
            or len(data) > self.server.whole_line
            or data.find(b"\n") != len(data) - 1
            or data.isspace()
        ):
            self._arrived(data)
            return
        # One whole request line, nothing before it, as a client that waits for each answer
        # sends it: what _line would make of it (the line itself, within the limit and
        # FREE_BYTES, so nothing to count), without the buffer and a second look.
        # tests/unit/test_server_protocol.py holds it to the general path.
        buffer.deadline = 0.0
        self._next(data)

    def _arrived(self, data: bytes) -> None:
        """What the client sent, in general: buffered, and handled if it may be now."""
        if self.closed or self.subscribed:
            return  # (a subscriber's input is read and dropped, as is a closing one's)
        self.unread.append(data)
        self.unread_size += len(data)
        if self.busy:
            if self.reading and self.unread_size > 2 * STREAM_LIMIT:
                assert self.transport is not None
                self.transport.pause_reading()
                self.reading = False
            return
        self._next()

    def eof_received(self) -> bool:
        self.eof = True
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if not self.busy and not self.closed:
            self._next()  # the requests sent before it are handled first
        return True  # (the answers may still go out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._gone(self)
        if self._abort is not None:
            self._abort.cancel()
        # A task under way is not cancelled: a reload or a flush goes on to its end, as it
        # would for a client still there; writing its answer then fails (send), a show's
        # next part (drain) and a monitor's wait (_ended) end at once.
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("connection lost"))
            self._drained.exception()  # (retrieved: no warning if nobody waits for it)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- requests --------------------------------------------------------------------------------

    def _next(self, line: bytes | bytearray | None = None) -> None:
        """Handle the requests that have arrived, until one has to wait; `line`: the first
        of them, taken from the buffer already (data_received's whole line)."""
        server = self.server
        try:
            while not self.busy and not self.closed:
                if line is None:
                    line = self._line()
                    if line is None:
                        return  # (waiting for more, or closed at the end of the stream)
                if server.stopping:
                    self.close()  # no new request is handled
                    return
                if server._unsent and server._responses_held() > server.budget:
                    # Clients that do not read what they asked for (`show` of many routes):
                    # no new response is made until theirs are taken or they are dropped.
                    self.refuse("busy", server._busy())
                    return
                self._handle(line)
                line = None
                if not (self.busy or self.unread or self.buffer.data or self.eof):
                    # (nothing more has come: the wait for the next request begins)
                    self.buffer.deadline = server._loop.time() + server.client_timeout
                    return
        except Refused as e:
            self.refuse(e.code, str(e))
        except Exception:  # a bug: this client is dropped, everyone else is served
            log.exception("internal error while serving %s", self.peer)
            self.close()

    def _line(self) -> bytes | bytearray | None:
        """The next non-blank line, or None until one is complete (the deadline for it then
        runs: blank lines do not extend it). Its bytes stay counted until _hold releases
        them."""
        server, buffer = self.server, self.buffer
        limit = server.max_request_bytes
        while True:
            data = buffer.data
            end = data.find(b"\n", buffer.scanned)
            if end < 0:
                buffer.scanned = len(data)
                if len(data) > limit:
                    raise Refused("too_large", server._too_large())
                if not self.unread:
                    if self.eof:
                        self.close()  # the client closed its end
                        return None
                    if not buffer.deadline:
                        buffer.deadline = server._loop.time() + server.client_timeout
                    return None
                chunk = self.unread[0] if len(self.unread) == 1 else b"".join(self.unread)
                self.unread, self.unread_size = [], 0
                if not self.reading:
                    assert self.transport is not None
                    self.transport.resume_reading()
                    self.reading = True
                size = len(data) + len(chunk)
                if size > FREE_BYTES or buffer.counted:  # (else nothing to count: as _hold)
                    server._hold(buffer, size)
                data += chunk
                continue
            if end > limit:
                raise Refused("too_large", server._too_large())
            buffer.scanned = 0
            if end == len(data) - 1:  # the whole buffer, as usual: no copy
                line, buffer.data = data, bytearray()
            else:
                line = data[: end + 1]
                del data[: end + 1]
            if not line.isspace():  # (strip() would copy a line of any size)
                buffer.deadline = 0.0
                return line

    def _handle(self, line: bytes | bytearray) -> None:
        """One request, handled now (synchronous on purpose: one change at a time). Its
        journal record waits for the group's sync, and its response for that."""
        server = self.server
        answer = server.commands.submit(line, self.peer)
        del line
        buffer = self.buffer
        if buffer.counted:  # (else nothing to release: as _hold)
            server._hold(buffer, len(buffer.data))
        group = answer.group
        if group is not None and not group.done:
            self.busy = True
            server._join(group, self, answer)
            return
        self._respond(answer, False)

    def settled(self, answer: Answer) -> None:
        """The verdict on the group the request waited for: its response."""
        if self.closed:
            return
        try:
            self._respond(answer, True)
        except Exception:  # a bug: this client is dropped, everyone else is served
            log.exception("internal error while serving %s", self.peer)
            self.close()
            return
        if self.unread or self.buffer.data or self.eof:
            self._next()  # (a client that pipelines: its next request joins the next group)
        elif not (self.busy or self.closed or self.buffer.deadline):
            # (what _next would find: nothing to read, so the wait for the next request
            # begins; without its call and _line's)
            server = self.server
            self.buffer.deadline = server._loop.time() + server.client_timeout

    def _respond(self, answer: Answer, waited: bool) -> None:
        """Send a request's response, or start the task that makes or sends it; the
        connection is `busy` until that is done."""
        response = self.server.commands.settle(answer)
        if isinstance(response, bytes):
            self.busy = False
            if self.write(response):
                if not waited and (self.unread or self.buffer.data):
                    # A client that pipelines has its next requests read already: give the
                    # other clients, and a stop, their turn first.
                    self.busy = True
                    self.server._loop.call_soon(self._resume)
                return
            if not self.paused:
                return  # (the transport takes the rest as the socket drains)
            self._run(self._drained_in_time())
            return
        self._run(self._later(response))

    def _resume(self) -> None:
        if self.closed:
            return
        self.busy = False
        self._next()

    def _run(self, work: Coroutine[Any, Any, bool]) -> None:
        """Run the waiting part of a request; the next request is handled once it is done
        (and the connection closed if it says so: False)."""
        self.busy = True
        self.task = self.server._loop.create_task(work)
        self.task.add_done_callback(self._ran)
        self.server._tasks.add(self.task)

    def _ran(self, task: asyncio.Task[bool]) -> None:
        self.task = None
        self.server._tasks.discard(task)
        if task.cancelled():
            self.close()
            return
        failure = task.exception()
        if failure is not None:
            if not isinstance(failure, (ConnectionError, TimeoutError)):
                log.error("internal error while serving %s", self.peer, exc_info=failure)
            self.close()
            return
        if not task.result():
            self.close()
            return
        self.busy = False
        self._next()

    async def _later(self, response: protocol.Response | Deferred) -> bool:
        """A response made or sent while other clients are served; False: close."""
        if isinstance(response, Deferred):
            if response.subscribe:
                await self._stream(response)
                return False
            assert response.answer is not None
            response = await response.answer()  # others are served meanwhile
        await self.send(response)
        return True

    async def _drained_in_time(self) -> bool:
        async with asyncio.timeout(self.server.client_timeout):
            await self.drain()
        return True

    async def _stream(self, request: Deferred) -> None:
        """Serve a monitor subscription until the client closes the connection.

        Events wait in the subscriber's bounded buffer (events.Subscriber) while the
        client is slow: writing waits for the socket to drain, with no timeout, and the
        daemon never waits for it. Anything the client sends from now on is read and
        ignored, so its closing is noticed.
        """
        wake = asyncio.Event()
        bus = self.server.commands.events
        subscriber = bus.subscribe(wake.set)
        self.subscribed = True
        self.unread, self.unread_size = [], 0
        if not self.reading and self.transport is not None:  # (paused while a request
            self.transport.resume_reading()  # waited: read on, to see the client's end)
            self.reading = True
        ended = self._ended = self.server._loop.create_future()
        if self.eof or self.closed:
            ended.set_result(None)
        try:
            result = {"subscribed": True, "buffer": subscriber.limit}
            self.write(protocol.encode_result(request.request_id, result))
            while not ended.done():
                await self.drain()
                wake.clear()
                events = subscriber.take()
                if events:
                    encode, rid = protocol.encode_event, request.request_id
                    self.write(b"".join(encode(rid, event) for event in events))
                    continue
                waiting = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait({ended, waiting}, return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when a stop cancels the monitor: no wait left pending
                    waiting.cancel()
        finally:
            bus.unsubscribe(subscriber)

    # --- writing and closing ---------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Write to the client; True if all of it went out at once (as it mostly does)."""
        transport = self.transport
        assert transport is not None
        transport.write(data)
        if transport.get_write_buffer_size():
            self.server._unsent.add(transport)
            return False
        return True

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.closed:
            raise ConnectionResetError("connection closed")
        if not self.paused:
            return
        self._drained = self.server._loop.create_future()
        await self._drained

    async def send(self, data: protocol.Response) -> None:
        """Write a response; a client that stops reading it is dropped after client_timeout."""
        if self.closed:
            raise ConnectionResetError("connection closed")
        if isinstance(data, protocol.Stream):
            await self._send_stream(data)
            return
        if self.write(data):
            return
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
        # that arrives as the drain completes, and the client would be served on after a stop.
        async with asyncio.timeout(self.server.client_timeout):
            await self.drain()

    async def _send_stream(self, stream: protocol.Stream) -> None:
        """Write a response a part at a time, each made only once the client has taken the
        one before (beyond the transport's buffer): no whole response in memory, and the
        other clients are served between two parts."""
        self.write(stream.head)
        timeout = self.server.client_timeout
        try:
            for part in stream.parts:
                if part:
                    self.write(part.encode())
                async with asyncio.timeout(timeout):
                    await self.drain()
                await asyncio.sleep(0)  # drain() does not wait while the buffer is small
        finally:
            # A client gone mid-show: the parts' generator ends now (it paused the cyclic GC).
            close = getattr(stream.parts, "close", None)
            if close is not None:
                close()
        await self.send(stream.tail)

    def refuse(self, code: str, message: str) -> None:
        """Send the error a client gets before it is disconnected, and disconnect it."""
        if self.closed:
            return
        self.write(protocol.encode_error(None, code, message))
        self.close()

    def close(self) -> None:
        """Close the connection once its last response is sent; drop it if that takes long."""
        if self.closed:
            return
        self.closed = True
        self.server._gone(self)
        assert self.transport is not None
        self.transport.close()
        self._abort = self.server._loop.call_later(CLOSE_GRACE, self.transport.abort)


class Server:
    connection = Connection  # (the protocol of each client's connection)

    def __init__(
        self, commands: Commands, path: str, client_timeout: float, max_request_bytes: int
    ) -> None:
        self.commands = commands
        self.path = path
        self.client_timeout = client_timeout
        self.max_request_bytes = max_request_bytes
        commands.max_values = max_request_bytes // protocol.BYTES_PER_VALUE
        self.budget = 2 * max_request_bytes  # for every client's request bytes together
        # The largest chunk taken as one whole request line (Connection.data_received):
        # within the limit on a line, and counted by nobody (FREE_BYTES).
        self.whole_line = min(max_request_bytes + 1, FREE_BYTES)
        self.buffered = 0  # bytes counted against the budget now
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop  # (the running loop, from start on)
        self._clients: dict[Connection, None] = {}  # the connections served, in order
        # The connections' tasks under way (Connection._run), until they are done.
        self._tasks: set[asyncio.Task[bool]] = set()
        # Connections whose transport may hold response bytes not yet taken (see write).
        self._unsent: set[asyncio.Transport] = set()
        # Requests waiting for their group's sync (with their connection), by group.
        self._waiting: dict[Group, list[tuple[Connection, Answer]]] = {}
        self._members: dict[Group, int] = {}  # how many requests wait, by group
        self._gathering = Gathering()  # when the next group's sync may start
        self._holding: asyncio.TimerHandle | None = None  # ends the hold on it
        self._began = 0.0  # when the journal's thread took the group it syncs
        commands.controller.grouping = True
        commands.on_synced = self._on_synced

    async def start(self, sock: socket.socket) -> None:
        loop = self._loop = asyncio.get_running_loop()
        connection = self.connection
        self._server = await loop.create_unix_server(lambda: connection(self), sock=sock)

    def load(self) -> str:
        """How busy the socket is, for the status line of SIGUSR1."""
        mib = 1024 * 1024
        return (
            f"{len(self._clients)} clients connected,"
            f" request buffers {self.buffered / mib:.1f} of {self.budget / mib:.0f} MiB"
        )

    async def stop(self) -> None:
        """Take no more connections and read no more requests; disconnect every client once
        the response being written has gone out (for at most CLOSE_GRACE); remove the socket.

        Requests are handled synchronously, so none is ever half done here: a client is
        stopped while it waits for a request, for its group's sync (it is not answered),
        or for its response to be made or read.
        """
        self.stopping = True
        if self._server is not None:
            self._server.close()
        connections = list(self._clients)
        for task in self._tasks:  # (also those of clients gone meanwhile: a reload's)
            task.cancel()
        for connection in connections:
            connection.close()
        lost = [c.lost for c in connections if c.lost is not None and not c.lost.done()]
        # The tasks too (a reload's, a flush's): their clean-up must run before the
        # controller closes, also for a client gone before the stop.
        waits: list[asyncio.Future[Any]] = [*lost, *(t for t in self._tasks if not t.done())]
        if waits:
            await asyncio.wait(waits, timeout=2 * CLOSE_GRACE)
        for connection in connections:  # none left, unless something hangs
            lost_one = connection.lost
            if connection.transport is not None and lost_one is not None and not lost_one.done():
                connection.transport.abort()
        if self._holding is not None:
            self._holding.cancel()
        self.commands.controller.close()  # the journal's thread, done with its record
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self, connection: Connection) -> None:
        transport = connection.transport
        assert transport is not None
        if self.stopping:  # accepted just before the listener closed
            connection.closed = True
            transport.abort()
            return
        connection.peer = peer = peer_of(transport.get_extra_info("socket"))
        if len(self._clients) >= MAX_CLIENTS:
            # Each client costs a descriptor and a buffer: refuse rather than run out of both.
            log.warning("refusing %s: %d clients connected already", peer, MAX_CLIENTS)
            message = f"mfcd serves at most {MAX_CLIENTS} clients at once; try again"
            transport.write(protocol.encode_error(None, "too_many_clients", message))
            connection.closed = True  # (never counted: nothing to forget)
            transport.close()
            connection._abort = self._loop.call_later(CLOSE_GRACE, transport.abort)
            return
        self._clients[connection] = None
        buffer = connection.buffer
        buffer.deadline = self._loop.time() + self.client_timeout  # for the first request
        buffer.watch = self._loop.call_at(buffer.deadline, self._watch, connection)

    def _gone(self, connection: Connection) -> None:
        """Forget a connection closing or lost (once)."""
        if connection not in self._clients:
            return  # (never served, or forgotten already)
        del self._clients[connection]
        buffer = connection.buffer
        if buffer.watch is not None:
            buffer.watch.cancel()
        self._hold(buffer, 0)
        if connection.transport is not None:
            self._unsent.discard(connection.transport)

    def _watch(self, connection: Connection) -> None:
        """A connection's one timer: disconnect it once the deadline for the request it is
        waiting for has passed, else look again at the deadline (later requests moved it on)."""
        if connection.closed:
            return
        buffer = connection.buffer
        now = self._loop.time()
        if buffer.deadline and now >= buffer.deadline:
            message = f"no complete request within {self.client_timeout:g} s; disconnecting"
            connection.refuse("timeout", message)
            return
        later = buffer.deadline or now + self.client_timeout
        buffer.watch = self._loop.call_at(later, self._watch, connection)

    def _join(self, group: Group, connection: Connection, answer: Answer) -> None:
        """A request waits for the verdict on `group`, the group being formed."""
        loop = self._loop
        waiting = self._waiting.get(group)
        if waiting is None:
            waiting = self._waiting[group] = []
            # Once every request handled in this turn of the loop has joined the group.
            loop.call_soon(self._sync)
        members = self._members[group] = self._members.get(group, 0) + 1
        if members == self._gathering.expected:
            loop.call_soon(self._sync)  # the clients of the last group are back
        waiting.append((connection, answer))

    def _on_synced(self, group: Group) -> None:
        self._members.pop(group, None)
        waiting = self._waiting.pop(group, None)
        if waiting and not self.stopping:  # (stopping: they are disconnected unanswered)
            self._loop.call_soon(self._answer, waiting)

    @staticmethod
    def _answer(waiting: list[tuple[Connection, Answer]]) -> None:
        """Answer the requests of a group that has its verdict, in the order they came."""
        for connection, answer in waiting:
            connection.settled(answer)

    def _sync(self) -> None:
        """Hand the group formed so far to the journal's thread, unless it is busy with the
        one before (whose end calls this again) or the group is held for the clients of
        the one before (gathering.Gathering): requests go on being handled while the disk
        syncs, and form the next group."""
        controller = self.commands.controller
        forming = controller.group
        if self.stopping or forming is None or controller.syncing is not None:
            return  # (stopping: the requests waiting were cancelled, none is answered now)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._gathering.ready(now, self._members.get(forming, 0)):
            if self._holding is None:
                self._holding = loop.call_at(self._gathering.until, self._held)
            return
        try:
            written = controller.start_sync()
        except Exception:  # a bug: the waiting clients still get an answer
            log.exception("internal error while syncing the state file")
            self._answer_all()
            return
        if written is not None:
            self._began = now
            written.add_done_callback(lambda _: loop.call_soon_threadsafe(self._written, forming))

    def _held(self) -> None:
        self._holding = None
        self._sync()

    def _written(self, group: Group) -> None:
        """The journal's thread is done with `group`: its verdict, then the next group."""
        controller = self.commands.controller
        now = asyncio.get_running_loop().time()
        answered = self._members.get(group, 0)
        try:
            if controller.syncing is group:  # (not concluded by a flush)
                self.commands.finish_sync()
        except Exception:  # a bug: the waiting clients still get an answer
            log.exception("internal error while syncing the state file")
            self._answer_all()
        forming = controller.group
        waiting = 0 if forming is None else self._members.get(forming, 0)
        self._gathering.synced(now, now - self._began, answered, waiting)
        self._sync()

    def _answer_all(self) -> None:
        """Answer every client waiting for a group other than the one forming."""
        forming = self.commands.controller.group
        for group in [g for g in self._waiting if g is not forming]:
            self._on_synced(group)

    def _too_large(self) -> str:
        return f"request larger than {self.max_request_bytes} bytes; split it up"

    def _hold(self, buffer: Buffer, size: int) -> None:
        """Let a client's buffer hold `size` bytes, within the shared budget."""
        counted = max(0, size - FREE_BYTES)
        more = counted - buffer.counted
        if more > 0 and self.buffered + more > self.budget:
            raise Refused("busy", self._busy())
        self.buffered += more
        buffer.counted = counted

    def _busy(self) -> str:
        mib = self.budget // (1024 * 1024)
        return (
            f"mfcd's memory for requests and responses ({mib} MiB for all clients) is taken"
            " by other clients; try again"
        )

    def _responses_held(self) -> int:
        """Bytes of responses written and not yet taken by their clients."""
        held = 0
        for transport in list(self._unsent):
            size = transport.get_write_buffer_size()
            if not size:
                self._unsent.discard(transport)  # all taken: not looked at again until a write
            held += size
        return held
