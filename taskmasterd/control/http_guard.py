"""Cross-protocol requests: a connection that opens like HTTP is no control client.

A web page in a local browser, or a server-side request forgery in a local web application, can
make an HTTP client POST any body to the control port, and that body can be a valid request. No
control message starts with an HTTP request line (a JSON text never begins with an upper-case
letter), so such a connection is closed before anything on it is taken as a request.
"""
from __future__ import annotations

import re

DECISIVE = 32  # this many opening bytes always decide
_METHOD = rb"[A-Z][A-Z0-9_-]{0,23}"  # GET, POST, OPTIONS, PROPFIND, M-SEARCH, ...
_REQUEST_LINE = re.compile(rb"[ \t\r\n]*" + _METHOD + rb" ")  # HTTP allows blank lines before it
_UNDECIDED = re.compile(rb"[ \t\r\n]*(?:" + _METHOD + rb")?")


def starts_like_http(opening: bytes) -> bool | None:
    """True if `opening`, the first bytes of a connection, begins an HTTP request line; False if
    it cannot; None while more bytes are needed to tell."""
    if _REQUEST_LINE.match(opening):
        return True
    if len(opening) < DECISIVE and _UNDECIDED.fullmatch(opening):
        return None
    return False
