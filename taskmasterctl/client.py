"""A small synchronous client of the control protocol: one method per verb, `Reply` answers.

    with Client(port=7777) as daemon:   # or Client(socket_path="/run/taskmaster/taskmasterd.sock")
        reply = daemon.status("web")      # Reply(response="status", value={"jobs": [...]})

It connects on the first request and again after the daemon closed the connection (an idle
timeout, a restart). Transport trouble — cannot connect, no reply in time, connection lost, a
reply that is not the protocol — raises `ConnectionFailed`; everything the daemon answers,
`fail` and `invalid` included, comes back as a `Reply`. It asks for replies' JSON documents
`inline` (an extension: no base64 pass on either side, one JSON parse here).
"""
from __future__ import annotations

import _signal
import _socket
import os
import select
import time

from taskmasterd.control.protocol import FrameDecoder, ReplyError, decode_reply, encode_request
from taskmasterd.reply import Reply

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Generator

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777
DEFAULT_TIMEOUT = 60.0  # a stop waits for the job's stoptime before the daemon answers
MAX_REPLY = 1 << 30  # replies are not capped by the protocol; this only bounds a runaway peer


class ConnectionFailed(Exception):
    """The daemon could not be reached, or stopped answering."""


class Client:
    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 timeout: float = DEFAULT_TIMEOUT, socket_path: str | None = None) -> None:
        self.host = host
        self.port = port
        self.socket_path = socket_path  # when set, the daemon's unix socket instead of TCP
        self.timeout = timeout
        self._sock: _socket.socket | None = None
        self._decoder = FrameDecoder(MAX_REPLY)
        self._bodies: list[bytes] = []

    @property
    def address(self) -> str:
        return self.socket_path or f"{self.host}:{self.port}"

    # --- one method per verb --------------------------------------------------------------------

    def start(self, job: str, nowait: bool = False, deps: bool = False) -> Reply:
        return self.request("start", job, nowait=nowait, deps=deps)

    def stop(self, job: str, nowait: bool = False) -> Reply:
        return self.request("stop", job, nowait=nowait)

    def kill(self, job: str, nowait: bool = False) -> Reply:
        return self.request("kill", job, nowait=nowait)

    def repair(self, job: str, nowait: bool = False) -> Reply:
        return self.request("repair", job, nowait=nowait)

    def reload(self, job: str, nowait: bool = False) -> Reply:
        return self.request("reload", job, nowait=nowait)

    def status(self, job: str | None = None) -> Reply:
        return self.request("status", job)

    def pull(self, job: str) -> Reply:
        return self.request("pull", job)

    def push(self, job: str, data: bytes, nowait: bool = False) -> Reply:
        return self.request("push", job, data, nowait=nowait)

    def delete(self, job: str) -> Reply:
        return self.request("delete", job)

    def list(self) -> Reply:
        return self.request("list")

    def restart(self) -> Reply:
        return self.request("restart")

    # --- transport -------------------------------------------------------------------------------

    def request(self, verb: str, job: str | None = None, data: bytes | None = None,
                nowait: bool = False, deps: bool = False, rolling: bool = False) -> Reply:
        sock = self._connection()
        try:
            sock.sendall(encode_request(verb, job, data, nowait, deps, rolling, inline=True))
            while not self._bodies:
                chunk = _receive(sock, self.timeout)
                if not chunk:
                    raise ConnectionFailed(f"taskmasterd at {self.address} closed the connection")
                self._bodies += self._decoder.feed(chunk)
            return decode_reply(self._bodies.pop(0))
        except TimeoutError:
            self.close()
            raise ConnectionFailed(f"no reply from taskmasterd at {self.address} within {self.timeout:g} s") from None
        except OSError as exc:
            self.close()
            raise ConnectionFailed(f"lost the connection to taskmasterd at {self.address}: {exc.strerror or exc}") from None
        except ReplyError as exc:
            self.close()
            raise ConnectionFailed(f"taskmasterd at {self.address}: {exc}") from None
        except ConnectionFailed:
            self.close()
            raise

    def stream(self, verb: str, job: str | None = None, data: bytes | None = None) -> Generator[Reply, None, None]:
        """Send a following request (`logs`, `events`) and yield each reply as it arrives. The
        first must come within the timeout; then the connection may stay quiet for as long as
        the followed thing does. Ends when the daemon closes the connection; the connection is
        not reused afterwards."""
        sock = self._connection()
        try:
            sock.sendall(encode_request(verb, job, data, inline=True))
            timeout: float | None = self.timeout
            while True:
                while self._bodies:
                    yield decode_reply(self._bodies.pop(0))
                    timeout = None
                chunk = _receive(sock, timeout)
                if not chunk:
                    return
                self._bodies += self._decoder.feed(chunk)
        except TimeoutError:
            raise ConnectionFailed(f"no reply from taskmasterd at {self.address} within {self.timeout:g} s") from None
        except OSError as exc:
            raise ConnectionFailed(f"lost the connection to taskmasterd at {self.address}: {exc.strerror or exc}") from None
        except ReplyError as exc:
            raise ConnectionFailed(f"taskmasterd at {self.address}: {exc}") from None
        finally:
            self.close()

    def _connection(self) -> _socket.socket:
        # Between exchanges nothing may arrive; a readable socket means the daemon has closed it.
        if self._sock is not None and select.select([self._sock], [], [], 0)[0]:
            self.close()
        if self._sock is None:
            try:
                sock = self._connect()
            except OSError as exc:
                why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
                raise ConnectionFailed(f"cannot connect to taskmasterd at {self.address}: {why}") from None
            self._sock = sock
        return self._sock

    def _connect(self) -> _socket.socket:
        if self.socket_path is None:
            # An ASCII host as bytes: a str would make getaddrinfo load the IDNA codec (3 ms).
            host = self.host.encode("ascii") if self.host.isascii() else self.host
            sock = _connect(host, self.port, self.timeout)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return sock
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._decoder = FrameDecoder(MAX_REPLY)
        self._bodies = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(host: str | bytes, port: int, timeout: float) -> _socket.socket:
    """socket.create_connection without the socket module, whose enums cost a one-shot
    taskmasterctl 3 ms: each address getaddrinfo gives, in turn, until one connects."""
    error: OSError = OSError(f"no address for {host!r}")
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


_wake_pipe: tuple[int, int] | None = None  # the signal wakeup pipe, made on the first wait


class SignalWakeup:
    """Around a wait for the daemon: `with SignalWakeup() as wake` gives the read end of a pipe
    that the interpreter's C signal handler writes to whenever a signal comes (`set_wakeup_fd`),
    to wait on beside the sockets. A Ctrl-C that lands after the interpreter last looked at its
    signals and before the wait began (microseconds, but a person types right after a line is
    shown) would otherwise be seen only when the daemon next writes, which, following, may be
    never. None off the main thread (its signals are not this thread's), or where a wakeup fd is
    set already (an event loop's). A class, not contextlib: a one-shot taskmasterctl does not
    import it."""

    def __init__(self) -> None:
        self._installed = False

    def __enter__(self) -> int | None:
        global _wake_pipe
        try:
            if _wake_pipe is None:
                _wake_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            previous = _signal.set_wakeup_fd(_wake_pipe[1], warn_on_full_buffer=False)
        except ValueError:
            return None
        if previous != -1:
            _signal.set_wakeup_fd(previous)
            return None
        self._installed = True
        return _wake_pipe[0]

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            _signal.set_wakeup_fd(-1)
            self._installed = False


def drain_wakeup(fd: int) -> None:
    """The wakeup fd was readable: empty it. The interpreter runs the handlers (KeyboardInterrupt)
    at its next step."""
    try:
        while os.read(fd, 64):
            pass
    except BlockingIOError:
        pass


def _receive(sock: _socket.socket, timeout: float | None) -> bytes:
    """The next bytes from the daemon (b"": it closed), waiting `timeout` seconds at most (None:
    for as long as a follow stays quiet); a signal ends the wait (`SignalWakeup`)."""
    with SignalWakeup() as wake:
        if wake is not None:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            poller.register(wake, select.POLLIN)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0) * 1000
                ready = {fd for fd, _ in poller.poll(left)}
                if not ready:
                    raise TimeoutError
                if wake in ready:
                    drain_wakeup(wake)
                if sock.fileno() in ready:
                    break
        sock.settimeout(timeout)
        return sock.recv(1 << 18)
