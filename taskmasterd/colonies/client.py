"""Asyncio RPC client for a ColonyOS server (reference.md §2).

Every call is ``POST /api`` with a signed envelope; the reply is
``{"payloadtype", "payload": base64(JSON), "error": bool}``. A tiny HTTP/1.1 client
on asyncio streams keeps a few keep-alive connections so that many concurrent
long-polls and short calls do not each pay a TCP (and TLS) handshake.
"""

from __future__ import annotations

import asyncio
import binascii
import ssl
import time
from typing import Any, Iterable

import orjson

from taskmasterd.colonies.crypto import build_envelope, decode_payload

NO_PROCESS_MESSAGE = "No process available for assignment"
# What must not happen twice: such a call is never sent again once it may have reached the server.
NOT_REPEATABLE = frozenset({"assignprocessmsg", "closesuccessfulmsg", "closefailedmsg", "addlogmsg",
                            "submitfuncspecmsg"})
# Servers close kept-alive connections that sit idle (Go's http.Server after 120 s); one idle
# longer than this is not reused, so a request rarely meets a connection closing under it.
IDLE_REUSE_LIMIT = 30.0
_MAX_HEADER_BYTES = 64 * 1024


class ColoniesError(Exception):
    """An error reply from the server (its status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ColoniesUnavailable(ColoniesError):
    """The server could not be reached or answered garbage; back off and retry."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(status, message)


def transient(exc: ColoniesError) -> bool:
    """Worth retrying: the server is away or failing, rather than refusing."""
    return isinstance(exc, ColoniesUnavailable) or exc.status >= 500 or exc.status == 408


class ColoniesOutcomeUnknown(ColoniesUnavailable):
    """A call in NOT_REPEATABLE may have reached the server, but no reply came back; it is not
    sent again, and the caller finds out from the server what happened."""


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the peer before answering."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.reusable = False
        self.writer.close()

    async def post(self, host_header: str, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
            "Content-Type: application/json\r\nAccept: */*\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        self.writer.write(head + body)
        await self.writer.drain()
        status, headers = await self._read_head()
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return status, await self._read_body(headers)

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection() from None
            raise
        if len(head) > _MAX_HEADER_BYTES:
            raise ValueError("HTTP header too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"bad HTTP status line {lines[0]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            self.reusable = False
        return int(parts[1]), headers

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked()
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        self.reusable = False  # body delimited by the end of the connection
        return await self.reader.read()

    async def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Skip trailers up to the blank line that ends the message.
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


class ColoniesClient:
    """One server; every method signs with the private key it is given."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: bool = False,
        timeout: float = 30.0,
        max_idle: int = 4,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ssl = (ssl_context or ssl.create_default_context()) if tls else None
        self._host_header = f"{host}:{port}"
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._closed = False

    def __repr__(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"ColoniesClient({scheme}://{self.host}:{self.port})"

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def __aenter__(self) -> ColoniesClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ transport

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._ssl, limit=_MAX_HEADER_BYTES * 16
        )
        return _Connection(reader, writer)

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and not self._closed and len(self._idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def _reusable_idle(self) -> _Connection | None:
        """A kept-alive connection neither idle too long nor already closed by the server."""
        oldest = time.monotonic() - IDLE_REUSE_LIMIT
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_since >= oldest and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    async def _exchange(self, body: bytes, repeatable: bool, sent: list[bool]) -> tuple[int, bytes]:
        """POST on a kept-alive connection, or a new one; `sent` becomes [True] once the request
        may have reached the server. A kept-alive connection the server closed while idle shows
        as EOF before any reply byte: a repeatable request is then sent again on a fresh one."""
        while (conn := self._reusable_idle()) is not None:
            sent[:] = [True]
            try:
                result = await conn.post(self._host_header, "/api", body)
            except (_StaleConnection, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not repeatable:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            self._release(conn)
            return result
        conn = await self._connect()
        sent[:] = [True]
        try:
            result = await conn.post(self._host_header, "/api", body)
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return result

    async def rpc(
        self,
        msgtype: str,
        fields: dict[str, Any],
        prvkey: str | None,
        timeout: float | None = None,
    ) -> Any:
        """Send one signed message and return the decoded reply payload."""
        if self._closed:
            raise ColoniesUnavailable("client is closed")
        body = build_envelope(msgtype, {"msgtype": msgtype, **fields}, prvkey)
        repeatable = msgtype not in NOT_REPEATABLE
        sent = [False]
        try:
            # Not asyncio.wait_for: on Python 3.11 it returns a reply that arrives as the caller is
            # cancelled and loses the cancellation (the caller then runs on, and a close waits forever).
            async with asyncio.timeout(timeout or self.timeout):
                status, raw = await self._exchange(body, repeatable, sent)
        except TimeoutError:
            failure = f"{msgtype}: no reply from {self._host_header}"
        except (OSError, EOFError, asyncio.LimitOverrunError, _StaleConnection, ValueError) as exc:
            failure = f"{msgtype}: {self._host_header}: {exc!r}"
        else:
            return _decode_reply(status, raw)
        if sent[0] and not repeatable:
            raise ColoniesOutcomeUnknown(f"{failure} (it may have been done; not sent again)")
        raise ColoniesUnavailable(failure)

    # ------------------------------------------------------------------ server & colony

    async def version(self) -> dict[str, Any]:
        return await self.rpc("versionmsg", {"buildversion": "", "buildtime": ""}, None)

    async def add_colony(self, colonyid: str, name: str, prvkey: str) -> dict[str, Any]:
        return await self.rpc("addcolonymsg", {"colony": {"colonyid": colonyid, "name": name}}, prvkey)

    async def add_user(
        self,
        colonyname: str,
        userid: str,
        name: str,
        prvkey: str,
        email: str = "",
        phone: str = "",
    ) -> dict[str, Any]:
        user = {"colonyname": colonyname, "userid": userid, "name": name, "email": email, "phone": phone}
        return await self.rpc("addusermsg", {"user": user}, prvkey)

    # ------------------------------------------------------------------ executors

    async def add_executor(
        self,
        colonyname: str,
        executorname: str,
        executortype: str,
        executorid: str,
        prvkey: str,
        capabilities: dict[str, Any] | None = None,
        locationname: str = "",
    ) -> dict[str, Any]:
        executor: dict[str, Any] = {
            "executorid": executorid,
            "executorname": executorname,
            "executortype": executortype,
            "colonyname": colonyname,
        }
        if capabilities is not None:
            executor["capabilities"] = capabilities
        if locationname:
            executor["locationname"] = locationname
        return await self.rpc("addexecutormsg", {"executor": executor}, prvkey)

    async def _executor_call(self, msgtype: str, colonyname: str, executorname: str, prvkey: str) -> Any:
        return await self.rpc(msgtype, {"colonyname": colonyname, "executorname": executorname}, prvkey)

    async def approve_executor(self, colonyname: str, executorname: str, prvkey: str) -> None:
        await self._executor_call("approveexecutormsg", colonyname, executorname, prvkey)

    async def reject_executor(self, colonyname: str, executorname: str, prvkey: str) -> None:
        await self._executor_call("rejectexecutormsg", colonyname, executorname, prvkey)

    async def remove_executor(self, colonyname: str, executorname: str, prvkey: str) -> None:
        await self._executor_call("removeexecutormsg", colonyname, executorname, prvkey)

    async def get_executor(self, colonyname: str, executorname: str, prvkey: str) -> dict[str, Any]:
        return await self._executor_call("getexecutormsg", colonyname, executorname, prvkey)

    async def get_executors(self, colonyname: str, prvkey: str) -> list[dict[str, Any]]:
        return await self.rpc("getexecutorsmsg", {"colonyname": colonyname}, prvkey) or []

    async def add_executor_log(self, colonyname: str, executorname: str, message: str, prvkey: str) -> None:
        fields = {"colonyname": colonyname, "executorname": executorname, "message": message}
        await self.rpc("addexecutorlogmsg", fields, prvkey)

    # ------------------------------------------------------------------ functions

    async def add_function(
        self,
        colonyname: str,
        executorname: str,
        funcname: str,
        prvkey: str,
        description: str = "",
    ) -> dict[str, Any]:
        fun = {"colonyname": colonyname, "executorname": executorname, "funcname": funcname}
        if description:
            fun["description"] = description
        return await self.rpc("addfunctionmsg", {"fun": fun}, prvkey)

    async def get_functions(self, colonyname: str, prvkey: str, executorname: str = "") -> list[dict[str, Any]]:
        fields = {"colonyname": colonyname, "executorname": executorname}
        return await self.rpc("getfunctionsmsg", fields, prvkey) or []

    # ------------------------------------------------------------------ processes

    async def submit(self, spec: dict[str, Any], prvkey: str) -> dict[str, Any]:
        return await self.rpc("submitfuncspecmsg", {"spec": spec}, prvkey)

    async def assign(
        self,
        colonyname: str,
        timeout: int,
        prvkey: str,
        availablecpu: str = "",
        availablemem: str = "",
    ) -> dict[str, Any] | None:
        """Long-poll for a process; None when the server had nothing within ``timeout`` s."""
        fields: dict[str, Any] = {"colonyname": colonyname, "timeout": timeout}
        if availablecpu:
            fields["availablecpu"] = availablecpu
        if availablemem:
            fields["availablemem"] = availablemem
        try:
            return await self.rpc("assignprocessmsg", fields, prvkey, timeout=max(timeout, 0) + self.timeout)
        except ColoniesError as exc:
            if exc.status == 404 and exc.message == NO_PROCESS_MESSAGE:
                return None
            raise

    async def get_process(self, processid: str, prvkey: str) -> dict[str, Any]:
        return await self.rpc("getprocessmsg", {"processid": processid}, prvkey)

    async def get_processes(
        self,
        colonyname: str,
        state: int,
        prvkey: str,
        count: int = 100,
        executortype: str = "",
        label: str = "",
        initiator: str = "",
    ) -> list[dict[str, Any]]:
        fields = {
            "colonyname": colonyname,
            "state": state,
            "count": count,
            "executortype": executortype,
            "label": label,
            "initiator": initiator,
        }
        return await self.rpc("getprocessesmsg", fields, prvkey) or []

    async def get_process_hist(self, colonyname: str, state: int, prvkey: str, executorid: str = "",
                               seconds: int = 10 * 365 * 86400) -> list[dict[str, Any]]:
        """Every process in `state` (of one executor, or the colony) submitted in the last `seconds`,
        oldest first, without the count limit of getprocessesmsg."""
        fields = {"colonyname": colonyname, "executorid": executorid, "seconds": seconds, "state": state}
        return await self.rpc("getprocesshistmsg", fields, prvkey) or []

    async def close_successful(self, processid: str, out: Iterable[Any], prvkey: str) -> None:
        await self.rpc("closesuccessfulmsg", {"processid": processid, "out": list(out)}, prvkey)

    async def close_failed(self, processid: str, errors: Iterable[str], prvkey: str) -> None:
        await self.rpc("closefailedmsg", {"processid": processid, "errors": list(errors)}, prvkey)

    async def set_output(self, processid: str, out: Iterable[Any], prvkey: str) -> None:
        await self.rpc("setoutputmsg", {"processid": processid, "out": list(out)}, prvkey)

    async def cancel_process(self, processid: str, prvkey: str) -> None:
        await self.rpc("cancelprocessmsg", {"processid": processid}, prvkey)

    async def remove_process(self, processid: str, prvkey: str) -> None:
        await self.rpc("removeprocessmsg", {"processid": processid, "all": False}, prvkey)

    # ------------------------------------------------------------------ blueprints
    # pkg/rpc/*blueprint*_msg.go (v1.9.12): definitions go by `colonyname`, blueprints by `namespace`
    # (the colony's name too), except updateblueprintstatusmsg.

    async def add_blueprint_definition(self, definition: dict[str, Any], prvkey: str) -> dict[str, Any]:
        """Colony owner only."""
        return await self.rpc("addblueprintdefinitionmsg", {"blueprintdefinition": definition}, prvkey)

    async def get_blueprint_definitions(self, colonyname: str, prvkey: str) -> list[dict[str, Any]]:
        return await self.rpc("getblueprintdefinitionsmsg", {"colonyname": colonyname}, prvkey) or []

    async def remove_blueprint_definition(self, colonyname: str, name: str, prvkey: str) -> None:
        await self.rpc("removeblueprintdefinitionmsg", {"namespace": colonyname, "name": name}, prvkey)

    async def add_blueprint(self, blueprint: dict[str, Any], prvkey: str) -> dict[str, Any]:
        return await self.rpc("addblueprintmsg", {"blueprint": blueprint}, prvkey)

    async def get_blueprint(self, colonyname: str, name: str, prvkey: str) -> dict[str, Any]:
        return await self.rpc("getblueprintmsg", {"namespace": colonyname, "name": name}, prvkey)

    async def get_blueprints(self, colonyname: str, prvkey: str, kind: str = "", location: str = "") -> list[dict[str, Any]]:
        fields = {"namespace": colonyname, "kind": kind, "locationname": location}
        return await self.rpc("getblueprintsmsg", fields, prvkey) or []

    async def update_blueprint(self, blueprint: dict[str, Any], prvkey: str, force_generation: bool = False) -> dict[str, Any]:
        """The whole blueprint, status included: the server stores what it is sent."""
        return await self.rpc("updateblueprintmsg", {"blueprint": blueprint, "forcegeneration": force_generation},
                              prvkey)

    async def remove_blueprint(self, colonyname: str, name: str, prvkey: str) -> None:
        await self.rpc("removeblueprintmsg", {"namespace": colonyname, "name": name}, prvkey)

    async def update_blueprint_status(self, colonyname: str, name: str, status: dict[str, Any], prvkey: str) -> None:
        """Replaces the whole status (jsonb_set of `status`)."""
        fields = {"colonyname": colonyname, "blueprintname": name, "status": status}
        await self.rpc("updateblueprintstatusmsg", fields, prvkey)

    # ------------------------------------------------------------------ logs

    async def add_log(self, processid: str, message: str, prvkey: str) -> None:
        await self.rpc("addlogmsg", {"processid": processid, "message": message}, prvkey)

    async def get_logs(
        self,
        colonyname: str,
        prvkey: str,
        processid: str = "",
        executorname: str = "",
        count: int = 100,
        since: int = 0,
        latest: bool = False,
    ) -> list[dict[str, Any]]:
        """Logs of a process (or of an executor), oldest first; ``since`` is unix ns, exclusive."""
        fields = {
            "colonyname": colonyname,
            "processid": processid,
            "executorname": executorname,
            "count": count,
            "since": since,
            "latest": latest,
        }
        return await self.rpc("getlogsmsg", fields, prvkey) or []


def func_spec(
    funcname: str,
    colonyname: str,
    executortype: str,
    args: Iterable[Any] = (),
    kwargs: dict[str, Any] | None = None,
    executornames: list[str] | None = None,
    priority: int = 0,
    maxexectime: int = -1,
    maxwaittime: int = -1,
    maxretries: int = -1,
    env: dict[str, str] | None = None,
    label: str = "",
) -> dict[str, Any]:
    """A FunctionSpec; limits default to -1 because 0 means "expire at once" (§2.8)."""
    return {
        "nodename": funcname,
        "funcname": funcname,
        "args": list(args),
        "kwargs": kwargs or {},
        "priority": priority,
        "maxwaittime": maxwaittime,
        "maxexectime": maxexectime,
        "maxretries": maxretries,
        "conditions": {
            "colonyname": colonyname,
            "executortype": executortype,
            "executornames": executornames or [],
        },
        "label": label,
        "env": env or {},
    }


def _decode_reply(status: int, raw: bytes) -> Any:
    try:
        reply = orjson.loads(raw)
        payload = decode_payload(reply["payload"])
        is_error = reply["error"]
    except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError, ValueError):
        excerpt = raw[:200].decode("utf-8", "replace")
        if status >= 500 or status == 0:
            raise ColoniesUnavailable(f"HTTP {status}: {excerpt}", status) from None
        raise ColoniesError(status, f"malformed reply: {excerpt}") from None
    if is_error:
        if isinstance(payload, dict):
            raise ColoniesError(int(payload.get("status") or status), str(payload.get("message", "")))
        raise ColoniesError(status, str(payload))
    return payload
