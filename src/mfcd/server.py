"""The control socket: an asyncio Unix-socket server speaking newline-delimited JSON.

Requests are handled synchronously inside the event loop, so kernel changes are
applied strictly one at a time while any number of clients stay connected.  Each
client gets `client_timeout` seconds to send a complete request line and at most
`max_request_bytes` per line; a client that breaks either rule gets an error and is
disconnected, and nobody else notices.
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
from mfcd.commands import Commands, Peer
from mfcd.config import DEFAULT_SOCKET_GROUP
from mfcd.errors import ConfigError

log = logging.getLogger("mfcd")

_UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
MAX_CLIENTS = 256  # connections served at once; more are refused with too_many_clients


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


class Server:
    def __init__(
        self, commands: Commands, path: str, client_timeout: float, max_request_bytes: int
    ) -> None:
        self.commands = commands
        self.path = path
        self.client_timeout = client_timeout
        self.max_request_bytes = max_request_bytes
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(
            self._client, sock=sock, limit=self.max_request_bytes
        )

    async def stop(self) -> None:
        """Stop accepting, finish the request in progress, disconnect clients, remove the socket."""
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = peer_of(writer.get_extra_info("socket"))
        if len(self._clients) >= MAX_CLIENTS:
            # Each client costs a descriptor and a buffer: refuse rather than run out of both.
            log.warning("refusing %s: %d clients connected already", peer, MAX_CLIENTS)
            message = f"mfcd serves at most {MAX_CLIENTS} clients at once; try again"
            writer.write(protocol.encode_error(None, "too_many_clients", message))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        while True:
            try:
                line = await self._read_request(reader)
            except asyncio.IncompleteReadError:
                return  # the client closed its end
            except asyncio.LimitOverrunError:
                message = f"request larger than {self.max_request_bytes} bytes; split it up"
                await self._send(writer, protocol.encode_error(None, "too_large", message))
                return
            except TimeoutError:
                message = f"no complete request within {self.client_timeout:g} s; disconnecting"
                await self._send(writer, protocol.encode_error(None, "timeout", message))
                return
            # Synchronous on purpose: one change at a time, and no await between the kernel
            # change and the journal write.
            await self._send(writer, self.commands.handle(line, peer))

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The next non-blank line, within client_timeout (blank lines do not extend it)."""
        async with asyncio.timeout(self.client_timeout):
            while True:
                line = await reader.readuntil(b"\n")
                if line.strip():
                    return line

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write a response; a client that stops reading it is dropped after client_timeout."""
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.client_timeout)
