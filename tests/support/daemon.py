"""Run a real taskmasterd as a subprocess for a test, and talk to it over its real socket."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_job(jobs_dir: Path, name: str, spec: dict | str) -> Path:
    path = jobs_dir / f"{name}.tm.json"
    tmp = jobs_dir / f".{name}.tmp"
    tmp.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    os.replace(tmp, path)  # atomic, as an operator's tool would
    return path


class Daemon:
    """`with Daemon(tmp_path, jobs={...}) as d:` starts taskmasterd and waits for READY=1."""

    def __init__(self, root: Path, jobs: dict[str, dict] | None = None, args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.root = root
        self.jobs_dir = root / "jobs"
        self.log_dir = root / "logs"
        self.state_dir = root / "state"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        for name, spec in (jobs or {}).items():
            write_job(self.jobs_dir, name, spec)
        self.port = free_port()
        self.args = args or []
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.pass_fds: tuple[int, ...] = ()  # descriptors the daemon inherits, as from a careless parent
        self.stderr_fd: int | None = None  # where its log goes instead of daemon.stderr (a pipe, say)
        self.stdout_path: Path | None = None  # where its stdout goes (container mode writes jobs' output there)
        self.notify_path = str(root / "notify.sock")
        self.notify_sock: socket.socket | None = None
        self.messages: list[str] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "taskmasterd", "--jobs-dir", str(self.jobs_dir), "--log-dir", str(self.log_dir),
                "--state-dir", str(self.state_dir), "--host", "127.0.0.1", "--port", str(self.port), *self.args]

    def start(self, wait: bool = True) -> "Daemon":
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if os.path.exists(self.notify_path):
            os.unlink(self.notify_path)
        self.notify_sock.bind(self.notify_path)
        env = {**os.environ, "NOTIFY_SOCKET": self.notify_path, **self.env}
        self.stderr_path = self.root / "daemon.stderr"
        with open(self.stderr_path, "ab") as stderr, \
                open(self.stdout_path or os.devnull, "ab") as stdout:  # the child keeps its own copies
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=stdout, stderr=stderr if self.stderr_fd is None
                                         else self.stderr_fd, pass_fds=self.pass_fds)
        if wait:
            self.wait_notify("READY=1")
        return self

    def wait_notify(self, word: str, timeout: float = READY_TIMEOUT) -> str:
        assert self.notify_sock is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {word} from the daemon; stderr:\n{self.stderr()}")
            self.notify_sock.settimeout(remaining)
            try:
                message = self.notify_sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.messages.append(message)
            if word in message.split("\n"):
                return message

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def request(self, verb: str, job: str | None = None, data: bytes | None = None, timeout: float = 60.0,
                **extra: Any) -> dict:
        """One raw protocol exchange; base64 fields decoded in the result."""
        message: dict[str, Any] = {"command": verb, **extra}
        if job is not None:
            message["job"] = base64.b64encode(job.encode()).decode()
        if data is not None:
            message["data"] = base64.b64encode(data).decode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b";;")
            buf = b""
            while not buf.endswith(b";;"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed after {buf!r}")
                buf += chunk
        reply = json.loads(buf[:-2])
        for key in ("job", "data", "error", "list"):
            if key in reply:
                reply[key] = base64.b64decode(reply[key])
        for key in ("data", "list"):
            if reply.get("response") in ("status", "list") and key in reply:
                reply[key] = json.loads(reply[key])
        return reply

    def status(self, job: str | None = None) -> dict:
        reply = self.request("status", job)
        assert reply["response"] == "status", reply
        return reply["data"]

    def instances(self, job: str) -> list[dict]:
        return self.status(job)["jobs"][0]["instances"]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self.notify_sock is not None:
                self.notify_sock.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Wait for an observable outcome of another process (which can tell us nothing directly)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    return True
