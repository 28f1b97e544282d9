"""The wire codec of the control protocol (see docs/protocol.md): framing, requests, replies.

Pure: no sockets, no event loop. The daemon and taskmasterctl both use it, so it imports only what
is cheap; orjson (about 12 ms to import) is loaded by the daemon-side functions on first use, never
by the one-shot client.
"""
from __future__ import annotations

import binascii

from . import leanjson
from .reply import Reply

TYPE_CHECKING = False  # typing costs the one-shot taskmasterctl 5 ms to import
if TYPE_CHECKING:
    import re
    from typing import Any

    from .verbs import Request

TERMINATOR = b";;"
MAX_MESSAGE = 4 * 1024 * 1024  # bytes before the terminator; more is refused and the link closed



def _string_body() -> re.Pattern[bytes]:
    """The rest of a JSON string from inside it: ordinary bytes and complete escapes; it stops at
    the closing quote, or before a backslash whose escaped byte has not arrived yet. Compiled on
    first use: the daemon's replies never hold an escape, so taskmasterctl never imports `re`."""
    global _STRING_BODY
    if _STRING_BODY is None:
        import re

        _STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
    return _STRING_BODY


_STRING_BODY: re.Pattern[bytes] | None = None


def _find_terminator(buf: bytearray, pos: int, stop: int) -> int:
    """Index of the first `;;` in buf[pos:stop], or -1. Single-byte finds run at memchr speed,
    a two-byte find does not, and a large reply is mostly one long base64 string."""
    while True:
        semicolon = buf.find(b";", pos, stop - 1)
        if semicolon < 0 or buf[semicolon + 1] == 0x3B:
            return semicolon
        pos = semicolon + 1


class FrameDecoder:
    """Cuts a byte stream into message bodies at each `;;` that is not inside a JSON string.

    Feed it whatever the socket gave; it returns the complete bodies (without the terminator, in
    order) and keeps the rest. Once a body grows past `limit`, `oversize` turns true, the bodies
    before it have been returned and everything after is dropped.
    """

    __slots__ = ("_buf", "_pos", "_in_string", "limit", "oversize")

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._pos = 0  # bytes of the pending body already scanned
        self._in_string = False  # whether `_pos` is inside a JSON string
        self.limit = limit
        self.oversize = False

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self.oversize:
            return []
        buf = self._buf
        buf += data
        end = len(buf)
        start, pos, in_string = 0, self._pos, self._in_string
        bodies: list[bytes] = []
        while pos < end:
            if not in_string:
                # Fast path, the common case: no escapes and an even number of quotes before the
                # next `;;` means that terminator is outside every string.
                term = _find_terminator(buf, pos, end)
                if term >= 0 and buf.find(b"\\", pos, term) < 0 and buf.count(b'"', pos, term) % 2 == 0:
                    if not self._take(bodies, buf, start, term):
                        return bodies
                    start = pos = term + 2
                    continue
                quote = buf.find(b'"', pos)
                term = _find_terminator(buf, pos, quote if quote >= 0 else end)
                if term >= 0:
                    if not self._take(bodies, buf, start, term):
                        return bodies
                    start = pos = term + 2
                elif quote >= 0:
                    in_string, pos = True, quote + 1
                else:  # a lone `;` at the end may be half of a terminator
                    pos = end - 1 if buf[-1] == 0x3B else end
                    break
            else:
                quote = buf.find(b'"', pos)
                stop = quote if quote >= 0 else end
                if buf.find(b"\\", pos, stop) >= 0:
                    # Escapes ahead: let the regex walk them (memchr-speed finds are for the rest).
                    stop = _string_body().match(buf, pos).end()
                    quote = stop if stop < end and buf[stop] == 0x22 else -1
                if quote < 0:  # the string goes on in a later segment
                    pos = stop
                    break
                in_string, pos = False, quote + 1
        del buf[:start]
        self._pos, self._in_string = pos - start, in_string
        if len(buf) > self.limit:
            self._overflow()
        return bodies

    def _take(self, bodies: list[bytes], buf: bytearray, start: int, term: int) -> bool:
        if term - start > self.limit:
            self._overflow()
            return False
        with memoryview(buf) as view:  # one copy, not two
            bodies.append(bytes(view[start:term]))
        return True

    def _overflow(self) -> None:
        self.oversize = True
        self._buf = bytearray()


class InvalidRequest:
    """A request the daemon cannot act on; answered with `invalid` and this reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"InvalidRequest({self.reason!r})"


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _unb64(field: str, value: Any) -> bytes:
    """Strict standard base64 with padding; raises ValueError naming the field."""
    if not isinstance(value, str):
        raise ValueError(f'field "{field}" must be a base64 string')
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raw = None
    # strict_mode still lets stray padding through ("d2Vi=", "d2Vi===="): the length must be
    # exactly that of the standard encoding.
    if raw is None or len(value) != (len(raw) + 2) // 3 * 4:
        raise ValueError(f'field "{field}" is not valid base64')
    return raw


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- the daemon's side -------------------------------------------------------------------------

def parse_request(body: bytes) -> tuple[str, Request] | InvalidRequest:
    """One framed body → (verb, Request), or why it is `invalid`. Unknown fields are ignored;
    `null` counts as absent."""
    import orjson

    from .verbs import VERBS, Request

    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return InvalidRequest(f"the message is not valid JSON: {exc}")
    if not isinstance(message, dict):
        return InvalidRequest("a request must be a JSON object")
    verb, alias = message.get("command"), message.get("cmd")
    if verb is None:
        verb = alias
    elif alias is not None and alias != verb:
        return InvalidRequest('"cmd" and "command" disagree')
    if verb is None:
        return InvalidRequest('the request has no "command"')
    if not isinstance(verb, str) or verb not in VERBS:
        return InvalidRequest(f"unknown command {_short(verb)}")
    nowait = message.get("nowait")
    if nowait is not None and not isinstance(nowait, bool):
        return InvalidRequest('field "nowait" must be true or false')
    job, data = message.get("job"), message.get("data")
    try:
        if job is not None:
            try:
                job = _unb64("job", job).decode("utf-8")
            except UnicodeDecodeError:
                return InvalidRequest('field "job" does not decode to UTF-8')
        if data is not None:
            data = _unb64("data", data)
    except ValueError as exc:
        return InvalidRequest(str(exc))
    return verb, Request(job=job, data=data, nowait=bool(nowait))


_CONSTANT_REPLIES = {
    "success": b'{"response":"success"};;',
    "redundant": b'{"response":"redundant"};;',
}


def encode_reply(reply: Reply) -> bytes:
    """A Reply as the bytes on the wire, terminator included."""
    constant = _CONSTANT_REPLIES.get(reply.response)
    if constant is not None and reply.value is None:
        return constant
    import orjson

    wire: dict[str, str] = {"response": reply.response}
    if reply.response in ("status", "events"):
        wire["data"] = _b64(orjson.dumps(reply.value))
    elif reply.response == "list":
        wire["list"] = wire["data"] = _b64(orjson.dumps(reply.value))
    elif reply.response == "file":
        wire["job"] = _b64((reply.job or "").encode("utf-8"))
        wire["data"] = _b64(reply.data or b"")
    else:  # success, redundant, fail, invalid
        if reply.error is not None:
            wire["error"] = _b64(reply.error.encode("utf-8"))
        if reply.value is not None:  # extension: per-target results, the reload report
            wire["data"] = _b64(orjson.dumps(reply.value))
    return orjson.dumps(wire) + TERMINATOR


def invalid(reason: str) -> Reply:
    return Reply("invalid", error=reason)


# --- the client's side (no json package: the one-shot taskmasterctl must start fast) -----------

def encode_request(verb: str, job: str | None = None, data: bytes | None = None,
                   nowait: bool = False) -> bytes:
    """Compact JSON, as json.dumps(..., separators=(",", ":")) writes it."""
    fields = ['{"command":', leanjson.quote(verb)]
    if job is not None:
        fields += [',"job":"', _b64(job.encode("utf-8")), '"']
    if data is not None:
        fields += [',"data":"', _b64(data), '"']
    if nowait:
        fields.append(',"nowait":true')
    return "".join(fields).encode("ascii") + b"}" + TERMINATOR


class ReplyError(ValueError):
    """The daemon's answer does not follow the protocol."""


LARGE_DOCUMENT = 16 * 1024


def _loads(raw: bytes | str) -> Any:
    """A big status (dozens of jobs or more) parses several times faster with orjson; a small one
    is not worth orjson's import time in a one-shot command."""
    if len(raw) < LARGE_DOCUMENT:
        return leanjson.loads(raw)
    import orjson

    return orjson.loads(raw)


def _reply_b64(field: str, value: Any) -> bytes:
    """The daemon's own base64 needs no strictness check (which costs 5x the decoding)."""
    if not isinstance(value, str):
        raise ValueError(f'field "{field}" must be a base64 string')
    try:
        return binascii.a2b_base64(value)
    except binascii.Error:
        raise ValueError(f'field "{field}" is not valid base64') from None


def decode_reply(body: bytes) -> Reply:
    """One framed body from the daemon → Reply (`invalid` included); raises ReplyError."""
    try:
        message = _loads(body)
        response = message["response"]
        error = message.get("error")
        if error is not None:
            error = _reply_b64("error", error).decode("utf-8", "replace")
        if response in ("status", "list", "events"):
            return Reply(response, value=_loads(_reply_b64("data", message["data"])))
        if response == "file":
            job = _reply_b64("job", message["job"]).decode("utf-8", "replace")
            return Reply(response, job=job, data=_reply_b64("data", message["data"]))
        if not isinstance(response, str):
            raise ReplyError("the reply's response is not a string")
        data = message.get("data")  # extension on success/redundant/fail: a JSON document
        return Reply(response, error=error, value=None if data is None else _loads(_reply_b64("data", data)))
    except (ValueError, TypeError, KeyError) as exc:
        raise ReplyError(f"malformed reply from the daemon: {exc}") from None
