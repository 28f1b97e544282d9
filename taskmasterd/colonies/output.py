"""A run's output, bounded: the tail kept for `out` and `errors`, and the lines on their way to the logs."""
from __future__ import annotations

MAX_LINE = 1000  # characters of one stderr line quoted in `errors`


class Tail:
    """The last `limit` bytes of a stream, and how many came before them."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self._limit
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def text(self) -> str:
        marker = f"[{self.dropped} earlier bytes are in the logs]\n" if self.dropped else ""
        return marker + self._buf.decode("utf-8", "replace")

    def last_lines(self, count: int) -> list[str]:
        lines = [line for line in self._buf.decode("utf-8", "replace").splitlines() if line.strip()]
        return [line[-MAX_LINE:] for line in lines[-count:]]


class LogBatch:
    """Output waiting to be sent as log messages: whole lines, at most `batch` bytes a message, and
    at most `pending_limit` bytes waiting, so a chatty program cannot flood the server or our memory."""

    def __init__(self, batch: int, pending_limit: int) -> None:
        self._batch = batch
        self._pending_limit = pending_limit
        self._pending = bytearray()
        self._dropped = 0

    def feed(self, data: bytes) -> None:
        if len(self._pending) + len(data) > self._pending_limit:
            self._dropped += len(data)
        else:
            self._pending += data

    def peek(self, final: bool) -> bytes:
        """The next message; a trailing partial line waits for its end unless `final`."""
        if len(self._pending) > self._batch:
            cut = self._pending.rfind(b"\n", 0, self._batch) + 1 or self._batch
        elif final:
            cut = len(self._pending)
        else:
            cut = self._pending.rfind(b"\n") + 1
        return bytes(self._pending[:cut])

    def consume(self, sent: int) -> None:
        del self._pending[:sent]
        if self._dropped:
            self._pending += f"[taskmasterd: {self._dropped} bytes of output were not logged]\n".encode()
            self._dropped = 0
