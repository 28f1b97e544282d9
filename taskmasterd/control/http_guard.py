"""Cross-protocol requests: a connection that opens like HTTP is no control client.

A web page in a local browser, or a server-side request forgery in a local web application, can
make an HTTP client POST any body to the control port, and that body can be a valid request. No
control message starts with an HTTP request line (a JSON text never begins with a letter and a
space), so such a connection is closed before anything on it is taken as a request.

A request line is a method token, spaces, then a request target. Methods are case-sensitive in
HTTP, yet servers accept other cases and a browser's fetch() sends methods it does not know
(`patch`, `propfind`) as written: any case counts. An upper-case token and a space decide at
once; a token in another case needs the target's first bytes too (`/`, `*`, `scheme://` or
`host:port`), so that a line of prose such as `not json at all;;` is still answered `invalid`
as the protocol asks.
"""
from __future__ import annotations

import re

DECISIVE = 32  # this many opening bytes always decide
_BLANK = rb"[ \t\r\n]*"  # HTTP allows blank lines before the request line
_UPPER_METHOD = rb"[A-Z][A-Z0-9_-]{0,23} "  # GET, POST, OPTIONS, PROPFIND, M-SEARCH, ...
_ANY_METHOD = rb"[A-Za-z][A-Za-z0-9_-]{0,23} +"
_TARGET = rb"(?:[/*]|[A-Za-z][A-Za-z0-9+.-]*://|[^\s;/]+:[0-9])"  # origin, *, absolute or authority form
_REQUEST_LINE = re.compile(_BLANK + rb"(?:" + _UPPER_METHOD + rb"|" + _ANY_METHOD + _TARGET + rb")")
_UNDECIDED = re.compile(_BLANK + rb"(?:[A-Za-z][A-Za-z0-9_-]{0,23}(?: +[^\s;]*)?)?")


def starts_like_http(opening: bytes) -> bool | None:
    """True if `opening`, the first bytes of a connection, begins an HTTP request line; False if
    it cannot; None while more bytes are needed to tell."""
    if _REQUEST_LINE.match(opening):
        return True
    if len(opening) < DECISIVE and _UNDECIDED.fullmatch(opening):
        return None
    return False
