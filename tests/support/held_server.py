"""A small HTTP server for jobs with held sockets (tests and bench/bench_rolling.py).

It serves on descriptor 3 (or, without LISTEN_FDS, binds PORT itself with SO_REUSEADDR and
SO_REUSEPORT, as programs of several instances that hold their own sockets do). Every answer is `<pid> <VERSION> <instance>`. It sends
READY=1 when $NOTIFY_SOCKET is set, after READY_DELAY seconds; with BROKEN set it exits 3 at once.
At SIGTERM it stops accepting, finishes the connection it serves, and exits 0: what a server that
drains does. Every instance sets the shared socket non-blocking (they all agree) and waits for it
with select, so a connection is either accepted and served whole, or left for another process.
"""
import os
import select
import signal
import socket
import sys
import time


def listener() -> socket.socket:
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) >= 1:
        return socket.socket(fileno=3)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", int(os.environ["PORT"])))
    sock.listen(128)
    return sock


def notify(message: bytes) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, path)


def serve(conn: socket.socket, answer: bytes) -> None:
    conn.setblocking(True)
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer))


def ask(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> tuple[bytes, bytes]:
    """What its clients do: one GET on a new connection; the answer's head and body (OSError when
    the connection is refused or reset)."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def main() -> None:
    if os.environ.get("BROKEN"):
        sys.exit(3)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sock = listener()
    sock.setblocking(False)
    answer = f"{os.getpid()} {os.environ.get('VERSION', '-')} {os.environ.get('TASKMASTER_INSTANCE', '-')}\n".encode()
    time.sleep(float(os.environ.get("READY_DELAY", "0")))
    notify(b"READY=1")
    while not stopping:
        readable, _, _ = select.select([sock, wake_r], [], [])
        if stopping:
            break
        if wake_r in readable:
            os.read(wake_r, 512)
        if sock in readable:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue  # another instance took it
            with conn:
                try:
                    serve(conn, answer)
                except OSError:
                    pass
    sys.exit(0)


if __name__ == "__main__":
    main()
