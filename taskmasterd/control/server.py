"""The control server: the protocol of docs/protocol.md over TCP and a unix socket, in front of
`verbs.dispatch`.

A connection is an asyncio protocol that the transport feeds, and one task that answers its
requests strictly in order, so a connection waiting on a slow verb (a 10 s stop) holds up only
itself. In the life of a connection:

- At accept, in the callback that accepts it (`acceptor`) and before a byte is read, the kernel
  names the peer (`peercred`); the access policy then decides (`access`), and a refused peer gets
  one `fail` and is closed. Only admitted connections
  count against `max_connections`, so peers that are refused cannot crowd out those that are not;
  past it a new admitted connection gets one `invalid` saying so.
- A connection that opens like an HTTP request is closed at once, unanswered (`http_guard`).
- Requests are taken one at a time, and the task yields to the loop between two pipelined ones.
- An admitted connection *asks* from its accept (its admission, when its groups admit it), and
  from the arrival of its next request's bytes, until that request is dispatched, or its reply
  written for a verb that `reads` (`status`, `list`), HOLD at most: meanwhile the background
  batches (spawns, job files read, blueprints reconciled) hold their next slice
  (`foreground.py`), so a request waits for the slice under way when it came, not for one per
  loop iteration it takes. A refused peer never asks.
- Memory is bounded: a connection reads ahead at most READ_AHEAD bytes past the request being
  answered (more only to complete a message, up to 4 MiB), takes no further request while more
  than WRITE_HIGH_WATER bytes of its replies are unread, and is dropped when they stay unread for
  `write_timeout`. All connections together hold at most `memory_cap` bytes of input and unread
  output; past it the connection holding the most is dropped.
- A reply that carries a `stream` is followed by each reply the stream yields, until it ends or
  the client goes away (what the client sends meanwhile is read and dropped); then the
  connection closes.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from typing import TYPE_CHECKING, AsyncIterator, Iterable

from .access import AccessPolicy, RefusalThrottle
from .acceptor import Acceptor
from .accounts import AccountCache
from .http_guard import DECISIVE, starts_like_http
from .peercred import Peer, PeerIdentifier
from .protocol import FrameDecoder, InvalidRequest, encode_reply, invalid, parse_request
from .verbs import VERBS, Reply, dispatch, fail
from ..foreground import HOLD
from ..tasks import TaskOwner

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor

log = logging.getLogger("taskmasterd.server")

READ_SIZE = 256 * 1024  # one recv() at most
READ_AHEAD = 16 * 1024  # input buffered past the request being answered
WRITE_HIGH_WATER = 16 * 1024  # unread replies past which no further request is taken
MEMORY_CAP = 64 * 1024 * 1024  # input and unread output of all connections together
LINGER = 2.0  # seconds a closing connection's late input is swallowed, so the last reply survives
REFUSED_LINGERING = 64  # refused peers given that grace at once; later ones are closed straight away
FD_RESERVE = 1024  # descriptors kept for the jobs (pipes, log files, notify sockets) beyond the connections


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
    def __init__(self, supervisor: Supervisor, policy: AccessPolicy, *, max_connections: int = 1024,
                 idle_timeout: float = 300.0, write_timeout: float = 30.0, memory_cap: int = MEMORY_CAP) -> None:
        self.supervisor = supervisor
        self.policy = policy
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.memory_cap = memory_cap
        self.identifier: PeerIdentifier | None = None
        self.accounts = AccountCache()
        self.refusals = RefusalThrottle()
        self.scratch = memoryview(bytearray(READ_SIZE))  # every recv() lands here, then is copied out
        self._acceptors: list[Acceptor] = []
        self._connections: set[_Connection] = set()
        self._tasks = TaskOwner(log)  # one per connection
        self._held = 0  # bytes all connections hold, as last counted (it can only overestimate)
        self.admitted = 0  # connections past the access check, which max_connections bounds
        self.refused_lingering = 0
        self.too_many = invalid("too many connections")
        self._closing = False

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, sockets: Iterable[socket.socket]) -> None:
        self.max_connections = _connections_allowed(self.max_connections)
        self.too_many = invalid(f"too many connections (the limit is {self.max_connections})")
        self.identifier = PeerIdentifier()
        for sock in sockets:
            acceptor = Acceptor(sock, self._accepted)
            acceptor.start()
            self._acceptors.append(acceptor)

    async def close(self) -> None:
        """Stop listening and drop every connection (a verb in progress is cancelled)."""
        self._closing = True
        for acceptor in self._acceptors:
            acceptor.close()
        await self._tasks.close()
        await self.accounts.close()
        for connection in list(self._connections):  # its task was cancelled before it began
            connection.drop()
        if self.identifier is not None:
            self.identifier.close()

    # --- connections ---------------------------------------------------------------------------

    def _accepted(self, sock: socket.socket) -> None:
        """A connection just accepted: its peer is named now, before the loop runs anything else."""
        if self._closing:
            sock.close()
            return
        assert self.identifier is not None
        connection = _Connection(self, self.identifier.identify(sock))  # asking from now on
        serving = self._tasks.spawn(self._serve(sock, connection), "control connection")
        serving.add_done_callback(lambda _: connection.asked())  # however it ends, even unstarted

    async def _serve(self, sock: socket.socket, connection: _Connection) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: connection, sock)
        except OSError:  # reset before its transport was made
            sock.close()
            return
        if self._closing:
            connection.drop()
            return
        self._connections.add(connection)
        await connection.run()


    def forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._held -= connection.held
        connection.held = 0

    async def refusal(self, peer: Peer) -> str | None:
        """None if the peer may control the daemon, else what to tell it (logged once a minute)."""
        account = None
        if self.policy.needs_account(peer):
            assert peer.uid is not None
            account = await self.accounts.get(peer.uid)  # at once when known, else from a worker thread
        refusal = self.policy.decide(peer, account)
        who = peer.uid if peer.uid is not None else peer.address
        if refusal is not None and self.refusals.should_log(who, asyncio.get_running_loop().time()):
            log.warning("refused a control connection: %s", refusal)
        return refusal

    async def answer(self, body: bytes, connection: _Connection) -> tuple[Reply, bool]:
        """The reply, and whether the request asked for its documents `inline`."""
        request = parse_request(body)
        if isinstance(request, InvalidRequest):
            return invalid(request.reason), False
        verb, args = request
        spec = VERBS.get(verb)
        if spec is None or not spec.reads:
            connection.asked()  # a verb that may wait for the daemon's work runs as any other work
        try:
            return await dispatch(self.supervisor, verb, args), args.inline
        except Exception as exc:  # a bug behind a verb must not take the connection down with it
            log.exception("%s failed", verb)
            return fail(f"internal error in {verb}: {exc}"), args.inline

    # --- the memory cap ------------------------------------------------------------------------

    def count(self, connection: _Connection) -> None:
        """Bring the total up to date after `connection`'s buffers changed."""
        held = connection.holding()
        self._held += held - connection.held
        connection.held = held
        if self._held > self.memory_cap:
            self._relieve()

    def _relieve(self) -> None:
        """Recount exactly (written replies drain unseen) and drop the biggest holder while over."""
        for connection in self._connections:
            connection.held = connection.holding()
        self._held = sum(connection.held for connection in self._connections)
        while self._held > self.memory_cap and self._connections:
            biggest = max(self._connections, key=lambda connection: connection.held)
            log.warning("dropped the control connection holding the most (uid %s, %d bytes): connections "
                        "together held more than %d bytes", biggest.peer.uid, biggest.held, self.memory_cap)
            biggest.drop()
            self.forget(biggest)


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, server: ControlServer, peer: Peer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once by connection_made
        self.peer = peer
        self.decoder = FrameDecoder()
        self.opening: bytearray | None = bytearray()  # the first bytes, until they cannot be HTTP
        self.discarding = False  # input is read and dropped (following a stream, lingering)
        self.held = 0  # what the server counted for this connection
        self._waiting: asyncio.Future[None] | None = None  # the task waits for input
        self._drained: asyncio.Future[None] | None = None  # the task waits for the client to read
        self._gone = asyncio.get_running_loop().create_future()  # EOF or connection lost
        self._closed = False
        self._writing_paused = False
        self._asking: asyncio.TimerHandle | None = None  # counted in the foreground until this ends it
        # Only an admitted peer's requests go before the background work: known at its accept when
        # its uid or address admits it, else (its groups) once its account is read.
        self._admitted = server.policy.decide(peer) is None
        self._ask()

    # --- the transport's side ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # not a byte is read before the peer is admitted
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        pending = self.decoder.pending
        if self.discarding or self._waiting is not None and pending >= READ_AHEAD:
            return self.server.scratch  # dropping it, or in the middle of a large message
        return self.server.scratch[:max(4096, READ_AHEAD - pending)]

    def buffer_updated(self, nbytes: int) -> None:
        if self.discarding:
            return
        data = self.server.scratch[:nbytes]
        if self.opening is not None:
            self.opening += data[:DECISIVE - len(self.opening)]
            http = starts_like_http(bytes(self.opening))
            if http:
                self.drop()
                return
            if http is False:
                self.opening = None
        self.decoder.push(data)
        self.server.count(self)
        if self._waiting is None and self.decoder.pending >= READ_AHEAD:
            self.transport.pause_reading()
        if self._waiting is not None:  # the task waits for this request: until it is dispatched
            self._ask()
        self._wake()

    def eof_received(self) -> bool:
        self._end()
        return True  # keep the transport open to answer what came before the EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._end()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _end(self) -> None:
        if not self._gone.done():
            self._gone.set_result(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    def _ask(self) -> None:
        """A request of an admitted peer is coming (accepted, admitted, or its bytes arrive):
        background work waits for its dispatch, HOLD at most (foreground.py). A peer that is refused never
        holds it: it could otherwise slow every spawn by connecting again and again."""
        if self._asking is None and self._admitted:
            self._asking = asyncio.get_running_loop().call_later(HOLD, self.asked)
            self.server.supervisor.foreground.begin()

    def asked(self) -> None:
        """Its verb is dispatched (or it has none, or is gone, or HOLD is up)."""
        if self._asking is not None:
            self._asking.cancel()
            self._asking = None
            self.server.supervisor.foreground.end()

    def holding(self) -> int:
        return 0 if self._closed else self.decoder.pending + self.transport.get_write_buffer_size()

    def drop(self) -> None:
        """Close at once, throwing away what is buffered either way."""
        self.discarding = True
        self.decoder = FrameDecoder()
        self.transport.abort()

    # --- the task's side -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            refusal = await self.server.refusal(self.peer)
            if refusal is not None:
                await self._send(fail(refusal))
                await self._linger_refused()
            elif self.server.admitted >= self.server.max_connections:
                await self._send(self.server.too_many)  # and closed at once: it must not hang
            else:
                self.server.admitted += 1
                self._admitted = True
                self._ask()  # its first request may be here already, or on its way
                try:
                    await self._converse()
                finally:
                    self.server.admitted -= 1
        except (ConnectionError, TimeoutError):
            pass  # the client went away, fell silent, or stopped reading; nobody is left to tell
        finally:
            self.server.forget(self)
            self.decoder = FrameDecoder()
            if not self._closed:
                self.transport.close()

    async def _converse(self) -> None:
        while (body := await self._next_body()) is not None:
            reply, inline = await self.server.answer(body, self)
            if reply.stream is not None:
                self.asked()
                await self._follow(reply, reply.stream, inline)
                return
            await self._send(reply, inline)
            self.asked()
            if self.decoder.pending:
                await asyncio.sleep(0)  # let everyone else in before the next pipelined request

    async def _next_body(self) -> bytes | None:
        """The next request's bytes; None once the client is done (EOF, closed, or cut off)."""
        while True:
            if self.opening is None:
                body = self.decoder.next_frame()
                self.server.count(self)
                if self.discarding:  # dropped to keep the memory cap
                    return None
                if body is not None:
                    return body
                if self.decoder.oversize:
                    self.asked()
                    await self._send(invalid(f"message larger than {self.decoder.limit} bytes before its ';;'; closing"))
                    await self._linger()
                    return None
            if self._gone.done():
                return None
            self._waiting = asyncio.get_running_loop().create_future()
            self.transport.resume_reading()
            try:
                async with asyncio.timeout(self.server.idle_timeout):
                    await self._waiting
            finally:
                self._waiting = None

    async def _send(self, reply: Reply, inline: bool = False) -> None:
        """Write one reply; if the client leaves it unread past the high-water mark, wait for it to
        read, at most `write_timeout`, then drop the connection."""
        if self._closed or self.transport.is_closing():
            raise ConnectionResetError
        self.transport.write(encode_reply(reply, inline))
        self.server.count(self)
        if not self._writing_paused:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.server.write_timeout):
                await self._drained
        except TimeoutError:
            log.info("dropped a control connection that read none of its replies for %g s", self.server.write_timeout)
            self.drop()
            raise
        finally:
            self._drained = None
        if self._closed:
            raise ConnectionResetError

    async def _follow(self, head: Reply, stream: AsyncIterator[Reply], inline: bool) -> None:
        """The head reply, then each reply of the stream until it ends or the client is gone."""
        try:
            await self._send(head, inline)
            self._discard_input()
            try:
                async with asyncio.TaskGroup() as group:  # the pump never outlives this connection
                    pump = group.create_task(self._pump(stream, inline))
                    await asyncio.wait((pump, self._gone), return_when=asyncio.FIRST_COMPLETED)
                    pump.cancel()
            except* (ConnectionError, TimeoutError):
                pass  # the client went away, or stopped reading
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._linger()

    async def _pump(self, stream: AsyncIterator[Reply], inline: bool) -> None:
        async for reply in stream:
            await self._send(reply, inline)

    def _discard_input(self) -> None:
        self.discarding = True
        self.decoder = FrameDecoder()
        self.server.count(self)
        self.transport.resume_reading()

    async def _linger_refused(self) -> None:
        """Linger for a refused peer while few do; a crowd of them is not worth the descriptors."""
        if self.server.refused_lingering >= REFUSED_LINGERING:
            return
        self.server.refused_lingering += 1
        try:
            await self._linger()
        finally:
            self.server.refused_lingering -= 1

    async def _linger(self) -> None:
        """Half-close, then swallow what the client still sends for a moment: closing with unread
        input would reset the connection and could destroy the last reply before it is read."""
        if self._closed:
            return
        self._discard_input()
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:  # reset under us
                return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER):
                await self._gone
