"""A loopback-only, in-memory ColonyOS-compatible server for tests and benchmarks.

Transport only: HTTP/1.1 (``POST /api``, ``GET /health``) and a minimal RFC6455
``/pubsub`` websocket; the protocol logic lives in colonies_state.py.

    server = ColoniesTestServer()
    await server.start(host="127.0.0.1", port=0)
    ... server.port ...
    await server.stop()

Synchronous tests (pycolonies) use ``with ServerThread() as server:``; benchmarks can
run ``python -m tests.support.colonies_server --port N`` (prints the port).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import hashlib
import http
import ipaddress
import signal
import struct
import threading
from typing import Any, Coroutine, TypeVar

import orjson

from taskmasterd.colonies.crypto import SignatureError, decode_payload, derive_id, encode_payload, recover_id
from tests.support.colonies_state import ApiError, BadJSON, ColonyState

# docker-compose.env server key of the real distribution (vectors.json).
DEFAULT_SERVER_PRVKEY = "fcc79953d8a751bf41db661592dc34d30004b1a651ffa0725b03ac227641499d"
CONTENT_TYPE = "text/plain; charset=utf-8"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_BODY = 16 * 1024 * 1024
_UNSIGNED = {"versionmsg"}
T = TypeVar("T")


class _BadRequest(Exception):
    """A request that is not HTTP we understand; the connection is dropped."""


class _ReplyLost(Exception):
    """The request was carried out, and the connection dropped instead of replying."""


class _Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest("truncated request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(f"bad request line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > _MAX_BODY or "chunked" in headers.get("transfer-encoding", ""):
        raise _BadRequest("unsupported request body")
    return _Request(parts[0], parts[1].split("?", 1)[0], headers, await reader.readexactly(length))


def _response_head(status: int, extra: str) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    return f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {CONTENT_TYPE}\r\n{extra}\r\n".encode("latin-1")


def _reply_body(payloadtype: str, payload: Any, error: bool) -> bytes:
    return orjson.dumps({"payloadtype": payloadtype, "payload": encode_payload(payload), "error": error})


def _error_body(status: int, message: str) -> bytes:
    return _reply_body("error", {"status": status, "message": message}, True)


class _Connection:
    """One client connection; ``busy`` while a request is being answered."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.busy = False


class ColoniesTestServer:
    def __init__(
        self,
        server_prvkey: str = DEFAULT_SERVER_PRVKEY,
        allow_reregister: bool = True,
        deadline_tick: float = 0.25,
        stale_executor_duration: float | None = None,
        cleanup_interval: float = 0.25,
    ) -> None:
        self.server_id = derive_id(server_prvkey)
        self.state = ColonyState(self.server_id, allow_reregister=allow_reregister,
                                 stale_executor_duration=stale_executor_duration)
        # Tests flip this to exercise a client's chunked-body parsing.
        self.chunked_replies = False
        # msgtype -> how many of its next replies are lost (done, then the connection reset).
        self.lose_replies: collections.Counter[str] = collections.Counter()
        self.reply_delays: dict[str, float] = {}  # msgtype -> seconds each one takes (a slow server)
        self.requests_served = 0
        self.host = "127.0.0.1"
        self.port = 0
        self._deadline_tick = deadline_tick
        self._cleanup_interval = cleanup_interval  # COLONIES_CLEANUP_INTERVAL (60 s on the real server)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections: set[_Connection] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the test server only listens on loopback, not {host}")
        self._server = await asyncio.start_server(self._serve, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._spawn(self._deadline_loop())
        self._spawn(self._cleanup_loop())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def drop_idle_connections(self) -> int:
        """Close every kept-alive connection that is between requests (like an idle timeout)."""
        idle = [c for c in self._connections if not c.busy]
        for conn in idle:
            conn.writer.close()
        return len(idle)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deadline_loop(self) -> None:
        while True:
            await asyncio.sleep(self._deadline_tick)
            self.state.check_deadlines()

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cleanup_interval)
            self.state.remove_stale_executors()

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection(writer)
        self._connections.add(conn)
        try:
            while True:
                conn.busy = False
                request = await _read_request(reader)
                if request is None:
                    return
                conn.busy = True
                if request.path == "/pubsub" and request.headers.get("upgrade", "").lower() == "websocket":
                    await self._websocket(reader, writer, request)
                    return
                keep_alive = await self._answer(reader, writer, request)
                if not keep_alive:
                    return
        except (_BadRequest, _ReplyLost, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly, asyncio's start_server callback logs cancelled handlers
        finally:
            self._connections.discard(conn)
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: _Request) -> bool:
        if request.method == "POST" and request.path == "/api":
            # A long-poll must notice the client leaving, as Go's request context does.
            gone = asyncio.ensure_future(reader.read(1))
            try:
                status, body = await self._api(request.body, gone)
            finally:
                await _cancel(gone)
            self.requests_served += 1
            if gone.done() and not gone.cancelled() and gone.result():
                request.headers["connection"] = "close"  # pipelining is not supported
        elif request.method == "GET" and request.path == "/health":
            status, body = 200, b""
        else:
            status, body = 404, b"404 page not found"
        await self._send(writer, status, body)
        return request.keep_alive

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        if self.chunked_replies and body:
            half = len(body) // 2
            chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[:half], body[half:]) if c)
            writer.write(_response_head(status, "Transfer-Encoding: chunked\r\n") + chunks + b"0\r\n\r\n")
        else:
            writer.write(_response_head(status, f"Content-Length: {len(body)}\r\n") + body)
        await writer.drain()

    async def _api(self, raw: bytes, gone: asyncio.Future[Any] | None) -> tuple[int, bytes]:
        try:
            caller, msgtype, msg = self._open_envelope(raw)
            if msgtype == "versionmsg":
                return 200, _reply_body(msgtype, {"buildversion": "", "buildtime": "", "msgtype": msgtype}, False)
            action, handler = self.state.handlers[msgtype]
            if msgtype in self.reply_delays:
                await asyncio.sleep(self.reply_delays[msgtype])
            try:
                reply = await handler(caller, msg, gone)
            except BadJSON:
                raise ApiError(400, f"Failed to {action}, invalid JSON") from None
            if self.lose_replies[msgtype] > 0:
                self.lose_replies[msgtype] -= 1
                raise _ReplyLost(msgtype)
            return 200, _reply_body(msgtype, reply, False)
        except ApiError as exc:
            return exc.status, _error_body(exc.status, exc.message)

    def _open_envelope(self, raw: bytes, actions: dict[str, str] | None = None) -> tuple[str, str, dict[str, Any]]:
        """Check the envelope in the Go server's order; the caller's id, msgtype and payload.

        ``actions`` maps the accepted payload types to Go's "Failed to <action>" wording.
        """
        if actions is None:
            actions = {msgtype: action for msgtype, (action, _) in self.state.handlers.items()}
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, str(exc)) from None
        if not isinstance(envelope, dict):
            raise ApiError(400, "json: cannot unmarshal into Go value of type rpc.RPCMsg")
        payloadtype = str(envelope.get("payloadtype") or "")
        payload = str(envelope.get("payload") or "")
        caller = ""
        if payloadtype not in _UNSIGNED:
            try:
                caller = recover_id(payload, str(envelope.get("signature") or ""))
            except SignatureError as exc:
                raise ApiError(403, f"Failed to recover public key: {exc}") from None
            if payloadtype not in actions:
                raise ApiError(403, f"invalid rpcMsg.PayloadType: {payloadtype or 'empty'}")
        action = actions.get(payloadtype, "get version")
        try:
            msg = decode_payload(payload)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"Failed to {action}, invalid JSON") from None
        if not isinstance(msg, dict):
            raise ApiError(400, f"Failed to {action}, invalid JSON")
        if msg.get("msgtype") != payloadtype:
            raise ApiError(400, f"Failed to {action}, msg.MsgType does not match payloadType")
        return caller, payloadtype, msg

    # ------------------------------------------------------------------ websocket

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: _Request) -> None:
        key = request.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode("ascii")).digest()).decode("ascii")
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode("ascii")
        )
        await writer.drain()
        opcode, data = await _read_frame(reader)
        if opcode != 0x1:
            return
        gone = asyncio.ensure_future(_read_frame(reader))
        try:
            frame = await self._subscription(data, gone)
        finally:
            await _cancel(gone)
        if frame is None:
            return  # timeout: Go just drops the socket, no close frame
        writer.write(_frame(0x1, frame))
        await writer.drain()
        # Let the client's close handshake complete before dropping the socket.
        try:
            opcode, _ = await asyncio.wait_for(_read_frame(reader), timeout=5)
            if opcode == 0x8:
                writer.write(_frame(0x8, b"\x03\xe8"))
                await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass

    async def _subscription(self, data: bytes, gone: asyncio.Future[Any]) -> bytes | None:
        try:
            caller, msgtype, msg = self._open_envelope(data, {"subscribeprocessmsg": "subscribe process"})
            try:
                process = await self.state.wait_for_state(caller, msg, gone)
            except BadJSON:
                raise ApiError(400, "Failed to subscribe process, invalid JSON") from None
        except ApiError as exc:
            return _error_body(exc.status, exc.message)
        return None if process is None else _reply_body("subscribeprocessmsg", process, False)


async def _cancel(task: asyncio.Future[Any]) -> None:
    # The stream allows one reader at a time: the watcher must be gone before the next read.
    task.cancel()
    await asyncio.wait([task])


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (RFC6455 §5.2); fragmented messages are not needed here."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if length > _MAX_BODY:
        raise _BadRequest("websocket frame too large")
    mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(length)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _frame(opcode: int, data: bytes) -> bytes:
    length = len(data)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return head + data


class ServerThread:
    """The test server on its own event loop in a daemon thread (for synchronous callers)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **server_kwargs: Any) -> None:
        self._address = (host, port)
        self._server_kwargs = server_kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="colonies-test-server", daemon=True)
        self.server: ColoniesTestServer

    def __enter__(self) -> ColoniesTestServer:
        self._thread.start()
        self.server = self.call(self._start())
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        self.call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> ColoniesTestServer:
        server = ColoniesTestServer(**self._server_kwargs)
        await server.start(*self._address)
        return server

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)


async def _serve_forever(host: str, port: int, server_prvkey: str, allow_reregister: bool,
                         stale_executor_duration: float | None, reply_delays: dict[str, float]) -> None:
    server = ColoniesTestServer(server_prvkey=server_prvkey, allow_reregister=allow_reregister,
                                stale_executor_duration=stale_executor_duration)
    server.reply_delays.update(reply_delays)
    await server.start(host, port)
    print(server.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="In-memory ColonyOS-compatible test server (loopback only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; the port is printed")
    parser.add_argument("--server-prvkey", default=DEFAULT_SERVER_PRVKEY)
    parser.add_argument("--no-reregister", action="store_true", help="executor names can never be reused")
    parser.add_argument("--stale-executor-duration", type=float, default=None,
                        help="seconds without an assign after which an executor is removed (default: never)")
    parser.add_argument("--reply-delay", action="append", default=[], metavar="MSGTYPE=SECONDS",
                        help="every such request takes this long more (a database round trip)")
    args = parser.parse_args(argv)
    delays = {msgtype: float(seconds) for msgtype, _, seconds in (d.partition("=") for d in args.reply_delay)}
    asyncio.run(_serve_forever(args.host, args.port, args.server_prvkey, not args.no_reregister,
                               args.stale_executor_duration, delays))


if __name__ == "__main__":
    main()
