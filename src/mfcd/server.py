"""The control socket: an asyncio Unix-socket server speaking newline-delimited JSON.

Requests are handled synchronously inside the event loop, so kernel changes are
applied strictly one at a time while any number of clients stay connected.  Each
client gets `client_timeout` seconds to send a complete request line and at most
`max_request_bytes` per line; a client that breaks either rule gets an error and is
disconnected, and nobody else notices.

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

from mfcd import protocol
from mfcd.commands import Commands, Deferred, Peer
from mfcd.config import DEFAULT_SOCKET_GROUP
from mfcd.controller import Group
from mfcd.errors import ConfigError
from mfcd.gathering import Gathering

log = logging.getLogger("mfcd")

_UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
MAX_CLIENTS = 256  # connections served at once; more are refused with too_many_clients
CHUNK = 256 * 1024  # bytes taken from a client's stream at a time
STREAM_LIMIT = 64 * 1024  # the stream stops reading the socket beyond twice this, unread
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

    __slots__ = ("counted", "data", "deadline", "expired", "scanned", "watch")

    def __init__(self) -> None:
        self.data = bytearray()
        self.scanned = 0  # data[:scanned] holds no newline
        self.counted = 0  # bytes of it counted against the shared budget
        # When the request being waited for must be complete (0: none is waited for now).
        # One timer a connection checks it (Server._watch), not one a request.
        self.deadline = 0.0
        self.watch: asyncio.TimerHandle | None = None
        self.expired = False  # the timer cancelled the wait: a timeout, not a stop


class Server:
    def __init__(
        self, commands: Commands, path: str, client_timeout: float, max_request_bytes: int
    ) -> None:
        self.commands = commands
        self.path = path
        self.client_timeout = client_timeout
        self.max_request_bytes = max_request_bytes
        commands.max_values = max_request_bytes // protocol.BYTES_PER_VALUE
        self.budget = 2 * max_request_bytes  # for every client's request bytes together
        self.buffered = 0  # bytes counted against the budget now
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # Connections whose transport may hold response bytes not yet taken (see _write).
        self._unsent: set[asyncio.StreamWriter] = set()
        # Requests waiting for their group's sync (one future each), by group.
        self._waiting: dict[Group, list[asyncio.Future[None]]] = {}
        self._members: dict[Group, int] = {}  # how many requests wait, by group
        self._gathering = Gathering()  # when the next group's sync may start
        self._holding: asyncio.TimerHandle | None = None  # ends the hold on it
        self._began = 0.0  # when the journal's thread took the group it syncs
        commands.controller.grouping = True
        commands.on_synced = self._on_synced

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=STREAM_LIMIT)

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

        Requests are handled synchronously, so none is ever half done here: cancelling a
        client interrupts it while it waits for a request or for its response to be read.
        """
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for task in self._clients:
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2 * CLOSE_GRACE)
        for writer in self._clients.values():  # none left, unless something hangs
            writer.transport.abort()
        if self._holding is not None:
            self._holding.cancel()
        self.commands.controller.close()  # the journal's thread, done with its record
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.stopping:  # accepted just before the listener closed
            writer.transport.abort()
            return
        peer = peer_of(writer.get_extra_info("socket"))
        if len(self._clients) >= MAX_CLIENTS:
            # Each client costs a descriptor and a buffer: refuse rather than run out of both.
            log.warning("refusing %s: %d clients connected already", peer, MAX_CLIENTS)
            message = f"mfcd serves at most {MAX_CLIENTS} clients at once; try again"
            writer.write(protocol.encode_error(None, "too_many_clients", message))
            await self._close(writer)
            return
        self._clients[task] = writer
        buffer = Buffer()
        loop = asyncio.get_running_loop()
        buffer.watch = loop.call_at(loop.time() + self.client_timeout, self._watch, task, buffer)
        try:
            await self._serve(reader, writer, peer, buffer)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        except Exception:  # a bug: this client is dropped, everyone else is served
            log.exception("internal error while serving %s", peer)
        finally:
            buffer.watch.cancel()
            self._hold(buffer, 0)
            del self._clients[task]
            self._unsent.discard(writer)
            await self._close(writer)

    def _watch(self, task: asyncio.Task[None], buffer: Buffer) -> None:
        """A connection's one timer: cancel its wait for a request once the deadline has
        passed, else look again at the deadline (later requests moved it on)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if buffer.deadline and now >= buffer.deadline:
            buffer.expired = True
            task.cancel()  # (_read_request turns it into a TimeoutError)
            return
        later = buffer.deadline or now + self.client_timeout
        buffer.watch = loop.call_at(later, self._watch, task, buffer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close a connection once its last response is sent; drop it if that takes long."""
        writer.close()
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await writer.wait_closed()
        except (Exception, asyncio.CancelledError):
            writer.transport.abort()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        buffer: Buffer,
    ) -> None:
        while not self.stopping:
            try:
                line = await self._read_request(reader, buffer)
            except Refused as e:
                await self._send(writer, protocol.encode_error(None, e.code, str(e)))
                return
            except TimeoutError:
                message = f"no complete request within {self.client_timeout:g} s; disconnecting"
                await self._send(writer, protocol.encode_error(None, "timeout", message))
                return
            if line is None or self.stopping:
                return  # the client closed its end, or mfcd stops: no new request is handled
            if self._responses_held() > self.budget:
                # Clients that do not read what they asked for (`show` of many routes):
                # no new response is made until theirs are taken or they are dropped.
                await self._send(writer, protocol.encode_error(None, "busy", self._busy()))
                return
            # Synchronous on purpose: one change at a time. Its journal record waits for the
            # group's sync, and its response for that.
            answer = self.commands.submit(line, peer)
            del line
            self._hold(buffer, len(buffer.data))
            waited = answer.group is not None and not answer.group.done
            if waited:
                assert answer.group is not None
                await self._synced(answer.group)
            response = self.commands.settle(answer)
            if isinstance(response, Deferred):
                if response.subscribe:
                    await self._stream(response, reader, writer)
                    return
                assert response.answer is not None
                response = await response.answer()  # others are served meanwhile
                waited = True
            if await self._send(writer, response) or waited:
                continue  # others had their turn while this one waited
            # A client that pipelines has its next requests read already, and neither the
            # read nor the send waits: give the other clients, and a stop, their turn.
            await asyncio.sleep(0)

    async def _stream(
        self, request: Deferred, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve a monitor subscription until the client closes the connection.

        Events wait in the subscriber's bounded buffer (events.Subscriber) while the
        client is slow: writing waits for the socket to drain, with no timeout, and the
        daemon never waits for it. Anything the client sends from now on is read and
        ignored, so its closing is noticed.
        """
        wake = asyncio.Event()
        bus = self.commands.events
        subscriber = bus.subscribe(wake.set)
        closed = asyncio.ensure_future(_until_closed(reader))
        try:
            result = {"subscribed": True, "buffer": subscriber.limit}
            self._write(writer, protocol.encode_result(request.request_id, result))
            while not closed.done():
                await writer.drain()
                wake.clear()
                events = subscriber.take()
                if events:
                    encode, rid = protocol.encode_event, request.request_id
                    self._write(writer, b"".join(encode(rid, event) for event in events))
                    continue
                waiting = asyncio.ensure_future(wake.wait())
                await asyncio.wait({closed, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
        finally:
            closed.cancel()
            bus.unsubscribe(subscriber)

    async def _synced(self, group: Group) -> None:
        """Wait for the verdict on `group`, the group being formed."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get(group)
        if waiting is None:
            waiting = self._waiting[group] = []
            # Once every request handled in this turn of the loop has joined the group.
            loop.call_soon(self._sync)
        members = self._members[group] = self._members.get(group, 0) + 1
        if members == self._gathering.expected:
            loop.call_soon(self._sync)  # the clients of the last group are back
        # One future each: a client cancelled while waiting cancels only its own wait.
        mine = loop.create_future()
        waiting.append(mine)
        await mine

    def _on_synced(self, group: Group) -> None:
        self._members.pop(group, None)
        for waiting in self._waiting.pop(group, ()):
            if not waiting.done():
                waiting.set_result(None)

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

    async def _read_request(
        self, reader: asyncio.StreamReader, buffer: Buffer
    ) -> bytes | bytearray | None:
        """The next non-blank line (None at the end of the stream), within client_timeout
        (blank lines do not extend it). Its bytes stay counted until _hold releases them."""
        buffer.deadline = asyncio.get_running_loop().time() + self.client_timeout
        try:
            return await self._next_line(reader, buffer)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # The connection's timer cancelled the wait (unless a stop cancelled it too).
            if buffer.expired and task is not None and not task.uncancel():
                raise TimeoutError from None
            raise
        finally:
            buffer.deadline = 0.0

    async def _next_line(
        self, reader: asyncio.StreamReader, buffer: Buffer
    ) -> bytes | bytearray | None:
        while True:
            data = buffer.data
            end = data.find(b"\n", buffer.scanned)
            if end < 0:
                buffer.scanned = len(data)
                if len(data) > self.max_request_bytes:
                    raise Refused("too_large", self._too_large())
                chunk = await reader.read(CHUNK)
                if not chunk:
                    return None
                self._hold(buffer, len(data) + len(chunk))
                data += chunk
                continue
            if end > self.max_request_bytes:
                raise Refused("too_large", self._too_large())
            buffer.scanned = 0
            if end == len(data) - 1:  # the whole buffer, as usual: no copy
                line, buffer.data = data, bytearray()
            else:
                line = data[: end + 1]
                del data[: end + 1]
            if not line.isspace():  # (strip() would copy a line of any size)
                return line

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
        for writer in list(self._unsent):
            size = writer.transport.get_write_buffer_size()
            if not size:
                self._unsent.discard(writer)  # all taken: not looked at again until a write
            held += size
        return held

    def _write(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Write to a client; True if all of it went out at once (as it mostly does)."""
        writer.write(data)
        if writer.transport.get_write_buffer_size():
            self._unsent.add(writer)
            return False
        return True

    async def _send(self, writer: asyncio.StreamWriter, data: protocol.Response) -> bool:
        """Write a response; a client that stops reading it is dropped after client_timeout.
        True if that had to wait (others were served meanwhile)."""
        if isinstance(data, protocol.Stream):
            await self._send_stream(writer, data)
            return True
        if self._write(writer, data):
            return False  # all sent already: nothing to wait for (a lost connection shows on read)
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
        # that arrives as the drain completes, and the client would be served on after a stop.
        async with asyncio.timeout(self.client_timeout):
            await writer.drain()
        return True

    async def _send_stream(self, writer: asyncio.StreamWriter, stream: protocol.Stream) -> None:
        """Write a response a part at a time, each made only once the client has taken the
        one before (beyond the transport's buffer): no whole response in memory, and the
        other clients are served between two parts."""
        self._write(writer, stream.head)
        try:
            for part in stream.parts:
                if part:
                    self._write(writer, part.encode())
                async with asyncio.timeout(self.client_timeout):
                    await writer.drain()
                await asyncio.sleep(0)  # drain() does not wait while the buffer is small
        finally:
            # A client gone mid-show: the parts' generator ends now (it paused the cyclic GC).
            close = getattr(stream.parts, "close", None)
            if close is not None:
                close()
        await self._send(writer, stream.tail)


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Read and drop what a subscriber sends, until it closes its end."""
    while await reader.read(CHUNK):
        pass
