"""systemd's notification protocol, receiving side, as pure logic: one datagram of newline-separated
`KEY=VALUE` assignments (sd_notify(3)) into a `Notification`. Unknown or malformed lines are
ignored, as systemd ignores them, so programs written for `Type=notify` work unchanged."""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_DATAGRAM = 4096  # systemd's NOTIFY_BUFFER_MAX; a longer datagram is dropped whole
MAX_WATCHDOG_USEC = 86400 * 1_000_000  # the bound of the job file's `watchdog`: one day
# Control characters of a STATUS text would reach the operator's terminal through `status`.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Notification:
    ready: bool = False  # READY=1: start-up is complete
    stopping: bool = False  # STOPPING=1: the program is shutting down by itself
    status: str | None = None  # STATUS=…: free text for `status`
    watchdog_ping: bool = False  # WATCHDOG=1: still alive
    watchdog_trigger: bool = False  # WATCHDOG=trigger: count this as a watchdog miss now
    watchdog_usec: int | None = None  # WATCHDOG_USEC=…: a new watchdog timeout, in microseconds


def parse_notification(datagram: bytes) -> Notification | None:
    """The message in one datagram; None for one that is dropped whole (too long, NUL bytes)."""
    if len(datagram) > MAX_DATAGRAM or b"\0" in datagram:
        return None
    fields: dict[str, object] = {}
    for line in datagram.split(b"\n"):
        key, sep, value = line.partition(b"=")
        if not sep:
            continue
        if key == b"READY" and value == b"1":
            fields["ready"] = True
        elif key == b"STOPPING" and value == b"1":
            fields["stopping"] = True
        elif key == b"WATCHDOG" and value == b"1":
            fields["watchdog_ping"] = True
        elif key == b"WATCHDOG" and value == b"trigger":
            fields["watchdog_trigger"] = True
        elif key == b"STATUS":
            try:
                fields["status"] = _CONTROL.sub("?", value.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        elif key == b"WATCHDOG_USEC" and value.isdigit() and len(value) <= 20 and 0 < int(value) <= MAX_WATCHDOG_USEC:
            fields["watchdog_usec"] = int(value)
    return Notification(**fields)  # type: ignore[arg-type]
