"""The wire codec of the control protocol (see docs/protocol.md): framing, requests, replies.

Pure: no sockets, no event loop. The daemon and taskmasterctl both use it, so it imports only what
is cheap; orjson (about 12 ms to import) is loaded by the daemon-side functions on first use, never
by the one-shot client.
"""
from __future__ import annotations

import binascii

from . import leanjson
from ..reply import Reply

TYPE_CHECKING = False  # typing costs the one-shot taskmasterctl 5 ms to import
if TYPE_CHECKING:
    from typing import Any

    from .request import Request

TERMINATOR = b";;"
MAX_MESSAGE = 4 * 1024 * 1024  # bytes before the terminator; more is refused and the link closed

# The framing scan runs in C: bytes methods (translate, replace, find, count) over whole runs of
# input. Python-level work is a few calls per message, never per byte or per string, so 4 MiB of
# adversarial bytes (`";` repeated, escapes, strings full of `;;`) cost milliseconds, not seconds.
_MARK = b"\x01"  # in the neutral image: the first byte of a `;;`
_SPECIAL = (0x22, 0x3B, 0x5C)  # `"`, `;`, backslash
_PLAIN = bytes(b if b in _SPECIAL else 0x61 for b in range(256))  # any other byte becomes `a`
_NOT_QUOTE_OR_MARK = bytes(b for b in range(256) if b not in (0x22, 0x01))
_LONG = 4096  # past this, searches that run at memchr speed beat the plain ones


def _neutral(raw: bytes) -> bytes:
    """raw's neutral image, of the same length, in which every `"` opens or closes a string, every
    MARK begins a `;;`, and no other byte means anything. A backslash pairs with a backslash or a
    quote after it, left to right, and such a pair is never a delimiter: inside strings this is
    JSON's escape, and outside them valid JSON has no backslash (so `x\\;;` still ends a message).
    A `;;` pairs left to right too."""
    if _MARK in raw:  # binary input must not fake a terminator
        raw = raw.translate(_PLAIN)
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"aa").replace(b'\\"', b"aa")
    if len(raw) < _LONG:
        return raw.replace(b";;", b"\x01a")
    first = raw.find(b";")  # memchr speed; a two-byte search is not, and base64 has no `;`
    if first < 0:
        return raw
    return raw[:first] + raw[first:].replace(b";;", b"\x01a")


def _odd_quotes(image: bytearray, stop: int) -> bool:
    """Whether image[:stop] holds an odd number of quotes. In a long stretch a few are found at
    memchr speed (a large reply has a handful); past that, or in a short one, count() walks them."""
    if stop < _LONG:
        return image.count(b'"', 0, stop) % 2 == 1
    found, at = 0, image.find(b'"', 0, stop)
    while at >= 0:
        found += 1
        if found == 16:
            return image.count(b'"', 0, stop) % 2 == 1
        at = image.find(b'"', at + 1, stop)
    return found % 2 == 1


def _first_mark_after_a_string(image: bytearray, first_mark: int) -> int | None:
    """Where the first terminator outside every string is in `image` (a neutral image that starts
    outside a string and whose first MARK, at `first_mark`, lies inside one), or None if it is not
    there.

    Only quotes and marks matter, and two adjacent quotes cancel: what remains alternates a quote
    and a run of marks, so the first mark after the second quote is the first one outside. The
    window doubles until it holds that mark, which keeps the work linear in the message's length.
    """
    size = 2 * first_mark + 64
    while True:
        window = image[:size]
        skeleton = window.translate(None, _NOT_QUOTE_OR_MARK).replace(b'""', b"")
        second_quote = skeleton.find(b'"', 1)
        if 0 < second_quote < len(skeleton) - 1:
            inside = second_quote - 1  # the marks between the first two quotes
            return window.replace(_MARK, b"a", inside).find(_MARK)
        if size >= len(image):
            return None
        size *= 2


class FrameDecoder:
    """Cuts a byte stream into message bodies at each `;;` that is not inside a JSON string.

    `push` what the socket gave and take the complete bodies (without the terminator, in order) one
    at a time with `next_frame`, or both at once with `feed`. Each byte is scanned once, when the
    body it belongs to is asked for. Once a body grows past `limit`, `oversize` turns true, the
    bodies before it have been returned and everything after is dropped.
    """

    __slots__ = ("_raw", "_image", "_pos", "_in_string", "limit", "oversize")

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._raw = bytearray()  # received bytes from the start of the pending body on
        # The neutral image of _raw[_pos:_pos + len(_image)]: what has been neutralized but not
        # yet scanned. At most one byte of _raw lies beyond it: a `;` or a backslash whose
        # partner has not arrived.
        self._image = bytearray()
        self._pos = 0  # _raw before this has been scanned; `_in_string` tells the state there
        self._in_string = False
        self.limit = limit
        self.oversize = False

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned in a body."""
        return len(self._raw)

    def push(self, data: bytes | bytearray | memoryview) -> None:
        if not self.oversize:
            self._raw += data

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self.push(data)
        bodies = []
        while (body := self.next_frame()) is not None:
            bodies.append(body)
        return bodies

    def next_frame(self) -> bytes | None:
        """The next complete body, or None until more bytes arrive (or for good, once oversize)."""
        if self.oversize or self._pos == len(self._raw):  # nothing that has not been scanned
            return None
        if not self._image and not self._in_string and len(self._raw) - self._pos < _LONG:
            body = self._plain_message()
            if body is not None:
                return body
        self._neutralize_arrivals()
        image = self._image
        if self._in_string:
            quote = image.find(b'"')
            if quote < 0:
                return self._scanned_all()
            self._skip(quote + 1, in_string=False)
        mark = image.find(_MARK)
        if mark < 0:
            self._in_string = _odd_quotes(image, len(image))
            return self._scanned_all()
        if _odd_quotes(image, mark):
            found = _first_mark_after_a_string(image, mark)
            if found is None:
                self._in_string = _odd_quotes(image, len(image))
                return self._scanned_all()
            mark = found
        end = self._pos + mark
        if end > self.limit:
            return self._overflow()
        body = bytes(self._raw[:end])
        del self._raw[:end + 2]
        del image[:mark + 2]
        self._pos, self._in_string = 0, False
        return body

    def _plain_message(self) -> bytes | None:
        """The common short message, with no backslash before its terminator, cut straight from
        the received bytes (its quotes pair up, so the terminator is outside every string)."""
        raw = self._raw
        end = raw.find(b";;", self._pos)
        if end < 0 or end > self.limit or raw.find(b"\\", self._pos, end) >= 0 or raw.count(b'"', self._pos, end) % 2:
            return None
        body = bytes(raw[:end])
        del raw[:end + 2]
        self._pos = 0
        return body

    def _neutralize_arrivals(self) -> None:
        known = self._pos + len(self._image)
        if known == len(self._raw):
            return
        with memoryview(self._raw) as raw:
            image = _neutral(bytes(raw[known:]))
        unpaired = 1 if image[-1] in (0x3B, 0x5C) else 0
        with memoryview(image) as view:
            self._image += view[:len(image) - unpaired]

    def _skip(self, count: int, in_string: bool) -> None:
        del self._image[:count]
        self._pos += count
        self._in_string = in_string

    def _scanned_all(self) -> None:
        self._skip(len(self._image), self._in_string)
        if self._pos > self.limit:
            self._overflow()
        return None

    def _overflow(self) -> None:
        self.oversize = True
        self._raw, self._image = bytearray(), bytearray()
        return None


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

    from .request import Request
    from .verbs import VERBS

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
    flags = {}
    for name in ("nowait", "deps", "rolling", "inline"):  # all but `nowait`: extensions a seed client never sends
        value = message.get(name)
        if value is not None and not isinstance(value, bool):
            return InvalidRequest(f'field "{name}" must be true or false')
        flags[name] = bool(value)
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
    return verb, Request(job=job, data=data, **flags)


_CONSTANT_REPLIES = {
    "success": b'{"response":"success"};;',
    "redundant": b'{"response":"redundant"};;',
}


def encode_reply(reply: Reply, inline: bool = False) -> bytes:
    """A Reply as the bytes on the wire, terminator included. `inline` (the request asked for it,
    an extension): its JSON document (`data` of status, list, events and of the extension
    documents) is written as JSON itself, not as the base64 of it: a big status then costs
    neither side a base64 pass nor the client a second JSON parse."""
    constant = _CONSTANT_REPLIES.get(reply.response)
    if constant is not None and reply.value is None:
        return constant
    import orjson

    if reply.response in ("status", "events"):  # the largest replies: base64 needs no JSON escaping
        document = orjson.dumps(reply.value)
        if inline:
            return b'{"response":"%s","data":%s}' % (reply.response.encode(), _unframed(document)) + TERMINATOR
        data = binascii.b2a_base64(document, newline=False)
        return b'{"response":"%s","data":"%s"}' % (reply.response.encode(), data) + TERMINATOR
    wire: dict[str, Any] = {"response": reply.response}
    if reply.response == "list":
        wire["list"] = _b64(orjson.dumps(reply.value))
        if not inline:
            wire["data"] = wire["list"]
        else:
            return b'{"response":"list","list":"%s","data":%s}' % (
                wire["list"].encode(), _unframed(orjson.dumps(reply.value))) + TERMINATOR
    elif reply.response == "file":
        wire["job"] = _b64((reply.job or "").encode("utf-8"))
        wire["data"] = _b64(reply.data or b"")
        if reply.value is not None:  # extension: when each part of `data` was written
            wire["times"] = reply.value["times"]
    else:  # success, redundant, fail, invalid
        if reply.error is not None:
            wire["error"] = _b64(reply.error.encode("utf-8"))
        if reply.value is not None:  # extension: per-target results, the reload report
            if inline:
                head = orjson.dumps(wire)[:-1]
                return b'%s,"data":%s}' % (head, _unframed(orjson.dumps(reply.value))) + TERMINATOR
            wire["data"] = _b64(orjson.dumps(reply.value))
    return orjson.dumps(wire) + TERMINATOR


def _unframed(document: bytes) -> bytes:
    """JSON that never holds the terminator: `;` is only ever inside a string, where `\\u003b`
    is the same character. (Looking for one `;` is a memchr, 50x faster than for two.)"""
    return document.replace(b";;", b";\\u003b") if b";" in document else document


def invalid(reason: str) -> Reply:
    return Reply("invalid", error=reason)


# --- the client's side (no json package: the one-shot taskmasterctl must start fast) -----------

def encode_request(verb: str, job: str | None = None, data: bytes | None = None,
                   nowait: bool = False, deps: bool = False, rolling: bool = False, inline: bool = False) -> bytes:
    """Compact JSON, as json.dumps(..., separators=(",", ":")) writes it. The extensions `deps`
    (`start` starts the job's dependencies too), `rolling` (`restart-job` replaces the
    instances a few at a time) and `inline` (JSON documents in the reply as JSON, not base64)
    are only written when true."""
    fields = ['{"command":', leanjson.quote(verb)]
    if job is not None:
        fields += [',"job":"', _b64(job.encode("utf-8")), '"']
    if data is not None:
        fields += [',"data":"', _b64(data), '"']
    if nowait:
        fields.append(',"nowait":true')
    if deps:
        fields.append(',"deps":true')
    if rolling:
        fields.append(',"rolling":true')
    if inline:
        fields.append(',"inline":true')
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


def _document(data: Any) -> Any:
    """A reply's JSON document: inline (the request said `inline`), or the base64 of it."""
    return _loads(_reply_b64("data", data)) if isinstance(data, str) else data


def decode_reply(body: bytes) -> Reply:
    """One framed body from the daemon → Reply (`invalid` included); raises ReplyError."""
    try:
        message = _loads(body)
        response = message["response"]
        error = message.get("error")
        if error is not None:
            error = _reply_b64("error", error).decode("utf-8", "replace")
        if response in ("status", "list", "events"):
            return Reply(response, value=_document(message["data"]))
        if response == "file":
            job = _reply_b64("job", message["job"]).decode("utf-8", "replace")
            times = message.get("times")  # extension: [[offset in data, Unix time], ...]
            return Reply(response, job=job, data=_reply_b64("data", message["data"]),
                         value=None if times is None else {"times": times})
        if not isinstance(response, str):
            raise ReplyError("the reply's response is not a string")
        data = message.get("data")  # extension on success/redundant/fail: a JSON document
        return Reply(response, error=error, value=None if data is None else _document(data))
    except (ValueError, TypeError, KeyError) as exc:
        raise ReplyError(f"malformed reply from the daemon: {exc}") from None
