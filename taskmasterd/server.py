"""The control server: the protocol of docs/protocol.md over TCP, in front of `verbs.dispatch`.

Each connection is one coroutine that reads, cuts frames and answers them strictly in order, so a
connection waiting on a slow verb (a 10 s stop) holds up only itself. Past `max_connections` a new
connection gets one `invalid` reply saying so and is closed at once, before anything is read.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
from typing import TYPE_CHECKING, AsyncIterator

from .protocol import FrameDecoder, InvalidRequest, encode_reply, invalid, parse_request
from .verbs import Reply, dispatch, fail

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("taskmasterd.server")

READ_SIZE = 256 * 1024
WRITE_HIGH_WATER = 1024 * 1024  # wait for the client to read before answering more than this
LINGER = 2.0  # seconds a refused client gets to finish sending before the connection is dropped
FD_RESERVE = 1024  # descriptors kept for the jobs (pipes, log files, pidfds) beyond the connections


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on host:port; OSError with a readable message if not.

    Called before daemonizing so that a taken port fails the start with a clear message.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (is another taskmasterd running?)"
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {why}") from None
    sock.setblocking(False)
    if not ipaddress.ip_address(address[0]).is_loopback:
        log.warning("the control port listens on %s:%d, which is not a loopback address: anyone "
                    "who can reach it can control every job", address[0], sock.getsockname()[1])
    return sock


def _connections_allowed(max_connections: int) -> int:
    """How many connections fit in RLIMIT_NOFILE next to the jobs' descriptors (the daemon has
    already raised the soft limit as far as it may); fewer than asked is logged."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= max_connections + FD_RESERVE:
        return max_connections
    allowed = max(1, soft - FD_RESERVE)
    log.warning("the descriptor limit (%d) leaves room for only %d control connections, not %d",
                soft, allowed, max_connections)
    return allowed


class ControlServer:
    def __init__(self, supervisor: Supervisor, *, max_connections: int = 1024,
                 idle_timeout: float = 300.0) -> None:
        self.supervisor = supervisor
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._refusal = b""

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, sock: socket.socket) -> None:
        self.max_connections = _connections_allowed(self.max_connections)
        self._refusal = encode_reply(invalid(f"too many connections (the limit is {self.max_connections})"))
        # asyncio calls listen() again with its own backlog (100 by default): a burst of connections
        # past it would lose SYNs and wait a second for the retransmission.
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=READ_SIZE,
                                                  backlog=socket.SOMAXCONN)

    async def close(self) -> None:
        """Stop listening and drop every connection (a verb in progress is cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            writer.write(self._refusal)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or fell silent; nobody is left to tell
        except asyncio.CancelledError:
            pass  # the server is closing; ending quietly keeps Python 3.11 from logging the task as failed
        except Exception:
            log.exception("control connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        transport = writer.transport
        while True:
            async with asyncio.timeout(self.idle_timeout):
                chunk = await reader.read(READ_SIZE)
            if not chunk:
                return
            for body in decoder.feed(chunk):
                reply = await self._answer(body)
                if transport.is_closing():
                    return
                writer.write(encode_reply(reply))
                if reply.stream is not None:
                    await self._stream(reply.stream, reader, writer)
                    return
                if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    await writer.drain()
            if decoder.oversize:
                writer.write(encode_reply(invalid(
                    f"message larger than {decoder.limit} bytes before its ';;'; closing")))
                await self._linger(reader, writer)
                return

    async def _stream(self, stream: AsyncIterator[Reply], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """A following verb: send each reply of `stream` as it comes, each drained before the next
        is asked for (a client that does not read holds up only its own stream), until the stream
        ends or the client closes; then close. What the client sends meanwhile is discarded."""
        client_gone = asyncio.ensure_future(_until_eof(reader))
        following: asyncio.Future[Reply] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(stream))
                await asyncio.wait((following, client_gone), return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    return
                try:
                    reply = following.result()
                except StopAsyncIteration:
                    return
                writer.write(encode_reply(reply))
                await writer.drain()
        finally:
            client_gone.cancel()
            if following is not None:
                following.cancel()
            await stream.aclose()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then swallow what the client is still sending for a moment: closing with
        unread input would reset the connection and could destroy the reply before it is read."""
        writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER):
                while await reader.read(READ_SIZE):
                    pass

    async def _answer(self, body: bytes) -> Reply:
        request = parse_request(body)
        if isinstance(request, InvalidRequest):
            return invalid(request.reason)
        verb, args = request
        try:
            return await dispatch(self.supervisor, verb, args)
        except Exception as exc:  # a bug behind a verb must not take the connection down with it
            log.exception("%s failed", verb)
            return fail(f"internal error in {verb}: {exc}")


async def _until_eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(READ_SIZE):
            pass
