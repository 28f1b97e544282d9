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
    """Output on its way to the logs: whole lines, at most `batch` bytes a message. Nothing is ever
    dropped: past `high_water` bytes waiting it is `backlogged`, and the reader stops reading the
    program's pipes (the program then waits on its writes) until it is `drained` again."""

    def __init__(self, batch: int, high_water: int) -> None:
        self._batch = batch
        self._high_water = high_water
        self._pending = bytearray()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def backlogged(self) -> bool:
        return len(self._pending) >= self._high_water

    @property
    def drained(self) -> bool:
        return len(self._pending) <= self._high_water // 2

    def feed(self, data: bytes) -> None:
        self._pending += data

    def peek(self, final: bool) -> bytes:
        """The next message; a trailing partial line waits for its end unless `final`."""
        if len(self._pending) > self._batch:
            cut = self._pending.rfind(b"\n", 0, self._batch) + 1 or _utf8_boundary(self._pending, self._batch)
        elif final:
            cut = len(self._pending)
        else:
            cut = self._pending.rfind(b"\n") + 1
        return bytes(self._pending[:cut])

    def consume(self, sent: int) -> None:
        del self._pending[:sent]

    def take_all(self) -> bytes:
        """Everything waiting, partial line included; the batch is then empty."""
        pending, self._pending = bytes(self._pending), bytearray()
        return pending


def _utf8_boundary(data: bytearray, cut: int) -> int:
    """`cut`, moved back (at most 3 bytes) so that it does not split a UTF-8 character."""
    for back in range(4):
        if cut - back > 0 and data[cut - back] & 0xC0 != 0x80:
            return cut - back
    return cut
