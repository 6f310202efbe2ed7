"""The /metrics endpoint: a small, strict HTTP/1.x server on the daemon's event loop.

It serves exactly `GET /metrics` (and HEAD) and nothing else, one request per connection
(`Connection: close`). It runs on the daemon's loop rather than in a thread because the
page reads the model and the kernel's counters, which only the loop may touch while
requests change them; the page is written a slice at a time (metrics.exposition), with a
turn of the loop between two slices, so a scrape of 100,000 routes holds other clients
for milliseconds at a time, not for the whole page.

Limits: MAX_CONNECTIONS at once (more are closed at once), the request head within
HEAD_TIMEOUT seconds and MAX_HEAD bytes, each slice taken by the client within
SEND_TIMEOUT seconds and the whole page within PAGE_TIMEOUT; one page is built at a time
(a second scrape waits), so the kernel's counters are read once per page and never twice
at the same time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from mfcd import metrics
from mfcd.config import listen_address
from mfcd.errors import ConfigError

log = logging.getLogger("mfcd")

MAX_CONNECTIONS = 16
MAX_HEAD = 8192  # bytes of request line and headers
HEAD_TIMEOUT = 10.0  # seconds to send them
SEND_TIMEOUT = 30.0  # seconds for the client to take each slice of the page
PAGE_TIMEOUT = 120.0  # seconds for the whole page: a trickling reader blocks other scrapes
PATH = "/metrics"


class HttpError(Exception):
    """A request this server does not serve: the status line it answers with."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """What a request for the page asks for."""

    head_only: bool  # HEAD: the response's head alone
    chunked: bool  # HTTP/1.1: the page goes out chunked (to HTTP/1.0 it ends with the connection)
    gzip: bool  # the client takes gzip (Prometheus does): 15 times fewer bytes on the wire


def parse_head(head: bytes) -> Request:
    """The request of a request head (its request line and headers)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError("400 Bad Request") from None
    line, *headers = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError("400 Bad Request")
    method, target, version = parts
    if target.split("?", 1)[0] != PATH:
        raise HttpError("404 Not Found")
    if method not in ("GET", "HEAD"):
        raise HttpError("405 Method Not Allowed")
    return Request(method == "HEAD", version == "HTTP/1.1", _takes_gzip(headers))


def _takes_gzip(headers: list[str]) -> bool:
    """Whether an Accept-Encoding header lists gzip (and not with q=0)."""
    for header in headers:
        name, _, value = header.partition(":")
        if name.strip().lower() != "accept-encoding":
            continue
        for coding in value.split(","):
            token, *params = (p.strip().lower() for p in coding.split(";"))
            if token == "gzip" and not any(re.fullmatch(r"q=0(\.0*)?", p) for p in params):
                return True
    return False


def bind(text: str) -> socket.socket:
    """The listening socket of `metrics_listen` (checked by config already)."""
    host, port = listen_address(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot serve metrics on {text}: {e.strerror}; choose another metrics_listen"
            " or stop what uses it"
        ) from None
    return sock


def read_process() -> metrics.Process | None:
    """The process metrics from /proc (None if it cannot be read)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/stat", encoding="ascii") as f:
            proc_stat = f.read()
        open_fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return None
    rss, vsize, started = metrics.parse_process(
        stat, proc_stat, os.sysconf("SC_CLK_TCK"), resource.getpagesize()
    )
    times = os.times()
    return metrics.Process(
        cpu_seconds=times.user + times.system,
        resident_bytes=rss,
        virtual_bytes=vsize,
        start_time_seconds=started,
        open_fds=open_fds,
        max_fds=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    )


class MetricsServer:
    """Serves metrics.exposition() of the Sources that `sources()` gives at each scrape."""

    def __init__(self, sources: Callable[[], metrics.Sources], chunk: int = metrics.CHUNK) -> None:
        self.sources = sources
        self.chunk = chunk  # routes per slice
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._page = asyncio.Lock()  # one page built at a time

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._client, sock=sock, limit=MAX_HEAD)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._clients:
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=1.0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
            writer.close()  # once the last bytes are out
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            writer.transport.abort()  # gone, too slow, or mfcd stops: drop what is unsent
        except Exception:  # a bug: this scrape fails, mfcd goes on
            log.exception("internal error while serving metrics")
            writer.transport.abort()
        finally:
            self._clients.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = parse_head(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self._send(writer, _response("400 Bad Request"))
            return
        except HttpError as e:
            await self._send(writer, _response(e.status))
            return
        async with self._page, asyncio.timeout(PAGE_TIMEOUT):
            await self._page_to(writer, request)

    async def _page_to(self, writer: asyncio.StreamWriter, request: Request) -> None:
        started = time.monotonic()
        fields = [f"Content-Type: {metrics.CONTENT_TYPE}", "Connection: close"]
        if request.chunked:
            fields.append("Transfer-Encoding: chunked")
        if request.gzip:
            fields.append("Content-Encoding: gzip")
        await self._send(writer, _head("200 OK", fields))
        if request.head_only:
            return
        # Level 1: a tenth of the time of level 6 for nearly the same size on this text.
        gzip = zlib.compressobj(1, zlib.DEFLATED, 31) if request.gzip else None
        size = sent = 0
        longest = 0.0  # the longest time the loop was held for one slice
        parts = metrics.exposition(self.sources(), self.chunk)
        while True:
            began = time.monotonic()
            part = next(parts, None)
            data = part.encode() if part is not None else b""
            size += len(data)
            if gzip is not None:
                data = gzip.compress(data) if part is not None else gzip.flush()
            if data:  # (an empty chunk would end a chunked body)
                sent += len(data)
                writer.write(b"%x\r\n%s\r\n" % (len(data), data) if request.chunked else data)
            longest = max(longest, time.monotonic() - began)
            if part is None:
                break
            await self._drain(writer)
            await asyncio.sleep(0)  # the other clients' turn
        if request.chunked:
            writer.write(b"0\r\n\r\n")
        await self._drain(writer)
        log.debug(
            "metrics: %d bytes (%d sent) in %.3f s, the loop held for %.1f ms at most",
            size,
            sent,
            time.monotonic() - started,
            longest * 1000,
        )

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await self._drain(writer)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(SEND_TIMEOUT):
            await writer.drain()


def _head(status: str, fields: list[str]) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *fields]) + "\r\n\r\n").encode()


def _response(status: str) -> bytes:
    body = f"{status}: this server serves only GET {PATH}\n".encode()
    fields = ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    return _head(status, [*fields, "Connection: close"]) + body
