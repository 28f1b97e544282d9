"""Prometheus metrics at http://HOST:PORT/metrics (`--metrics`), in prometheus_client's text format.

At each scrape the daemon's state is copied into a snapshot on the event loop's thread; a custom
collector turns the snapshot into metric families and prometheus_client formats them in a worker
thread, which touches nothing of the daemon (the text for 1000 instances takes tens of
milliseconds the loop must not wait for). The HTTP side is a small asyncio server: one request
per connection, read within a time limit and a size limit, answered within a time limit (the
connection is dropped when its reader does not take the answer); a few scrapes at once at most.

Families (labels in braces):
- taskmaster_instance_state{job,instance,state}: 1 for the instance's state, 0 for the others
- taskmaster_instance_restarts_total{job,instance}, taskmaster_instance_uptime_seconds{job,instance}
- taskmaster_instance_last_exit_code{job,instance}, ..._last_exit_signal: after an exit, until the next spawn
- taskmaster_instance_healthy{job,instance}: 1 healthy, 0 unhealthy, for the instances whose health
  check has given a verdict in the current run (none without a check, or before its first verdict)
- taskmaster_log_written_bytes_total / taskmaster_log_dropped_bytes_total{job,instance,stream}: per open log file
- taskmaster_job_file_invalid{job}: 1 when the job's file on disk is invalid
- taskmaster_job_runs_total{job,result}, taskmaster_job_last_success_timestamp_seconds{job}: a
  scheduled job's runs by result (lifecycle/runs.py), and when its last successful run ended
- taskmaster_control_connections, taskmaster_control_requests_total{verb,response}
- taskmaster_colonies_processes_total{result}, taskmaster_build_info{version}, taskmaster_start_time_seconds
- taskmaster_rollouts_total{outcome}: rolling restarts begun, done, halted (a new run not ready), interrupted
- taskmaster_instance_cpu_seconds_total, ..._memory_bytes, ..._memory_peak_bytes, ..._tasks,
  ..._oom_kills_total{job,instance}: the figures of the instance's current run (its cgroup's, or summed
  over its processes: observe/accounting.py, read once per scrape), where known
- taskmaster_containment_info{containment}: "cgroup2" or "process-group (no writable cgroup2: <reason>)"
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from .. import __version__
from . import counters
from .accounting import accounting
from ..processes.table import Child
from ..reply import Reply
from ..tasks import TaskOwner

log = logging.getLogger("taskmasterd.metrics")
REQUEST_TIMEOUT = 10.0  # seconds a scraper has to send its request
WRITE_TIMEOUT = 10.0  # ... and to take the answer: one that never reads must not hold a slot for good
MAX_REQUEST = 16 * 1024  # bytes of request line and headers
MAX_SCRAPES = 8  # scrapes served at once; more are refused with 503
_INSTANCE = ["job", "instance"]


def parse_address(text: str) -> tuple[str, int]:
    """`9100` (loopback), `127.0.0.1:9100`, `[::1]:9100`, `0.0.0.0:9100` → (host, port)."""
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"--metrics {text!r}: give PORT or HOST:PORT, PORT from 1 to 65535")
    return host, int(port)


def bind(address: str) -> socket.socket:
    """The listening socket of the metrics endpoint; OSError with a readable message if not.
    Bound before daemonizing, like the control port, so that a taken port fails the start."""
    host, port = parse_address(address)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=64)
    except (OSError, socket.gaierror) as exc:
        raise OSError(getattr(exc, "errno", None), f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: say it, whatever it resolves to
        loopback = False
    if not loopback:
        log.warning("metrics are served on %s:%d, which is not a loopback address: whoever can reach it "
                    "can read every job's name and state", host, port)
    return sock


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a scrape reports, copied from the daemon on the loop thread in one go (a status
    document is built fresh for each call); the text is then made from it off the loop."""

    jobs: list[dict]
    log_bytes: list[tuple[str, int, str, int, int]]  # job, instance, stream, written, dropped
    connections: int
    requests: dict[tuple[str, str], int]
    colonies: dict[str, int]
    started: float
    states: tuple[str, ...]
    containment: str = ""
    rollouts: dict[str, int] = field(default_factory=dict)


class Observed(Protocol):
    """What a scrape reads of the daemon (the supervisor)."""

    @property
    def state_names(self) -> Sequence[str]:
        """Every state an instance can be in."""

    def status(self) -> Reply: ...

    def log_counts(self) -> list[tuple[str, int, str, int, int]]:
        """(job, instance, stream, bytes written, bytes dropped) of every open log file."""

    def running_children(self) -> dict[tuple[str, int], Child]:
        """(job, instance) -> the spawn it runs now."""

    def containment(self) -> str:
        """How the daemon holds what it starts: "cgroup2", or "process-group (…)"."""


def take_snapshot(observed: Observed, connections: int, started: float) -> Snapshot:
    jobs = observed.status().value["jobs"]
    spawns = observed.running_children()
    usages = accounting(spawns) if spawns else {}  # once per scrape
    for job in jobs:
        for inst in job["instances"]:
            usage = usages.get((job["name"], inst["index"]))
            if usage is not None:
                inst.update(usage.document())
    return Snapshot(jobs, observed.log_counts(), connections, dict(counters.requests),
                    dict(counters.colonies_processes), started, tuple(observed.state_names), observed.containment(),
                    dict(counters.rollouts))


class SnapshotCollector:
    """The metric families of one snapshot (prometheus_client calls `collect`)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        state = GaugeMetricFamily("taskmaster_instance_state", "1 for the state the instance is in, 0 for the others",
                                  labels=[*_INSTANCE, "state"])
        restarts = CounterMetricFamily("taskmaster_instance_restarts", "automatic restarts after an exit from RUNNING",
                                       labels=_INSTANCE)
        uptime = GaugeMetricFamily("taskmaster_instance_uptime_seconds", "seconds in the current run (0 when down)",
                                   labels=_INSTANCE)
        exit_code = GaugeMetricFamily("taskmaster_instance_last_exit_code", "exit code of the last exit",
                                      labels=_INSTANCE)
        exit_signal = GaugeMetricFamily("taskmaster_instance_last_exit_signal", "signal that ended the last run",
                                        labels=_INSTANCE)
        invalid = GaugeMetricFamily("taskmaster_job_file_invalid", "1 when the job's file on disk is invalid",
                                    labels=["job"])
        healthy = GaugeMetricFamily("taskmaster_instance_healthy",
                                    "1 when the instance's health check passes, 0 when it fails (checked instances only)",
                                    labels=_INSTANCE)
        figures = {name: kind(f"taskmaster_instance_{metric}", text, labels=_INSTANCE)
                   for name, (kind, metric, text) in _FIGURES.items()}
        for job in snapshot.jobs:
            invalid.add_metric([job["name"]], 1 if job.get("error") else 0)
            for inst in job["instances"]:
                labels = [job["name"], str(inst["index"])]
                for name in snapshot.states:
                    state.add_metric([*labels, name], 1 if inst["state"] == name else 0)
                restarts.add_metric(labels, inst["restarts"])
                uptime.add_metric(labels, inst["uptime"] or 0)
                if inst["exitcode"] is not None:
                    exit_code.add_metric(labels, inst["exitcode"])
                if inst["signal"] is not None:
                    exit_signal.add_metric(labels, inst["signal"])
                verdict = inst.get("health")
                if verdict in ("healthy", "unhealthy"):
                    healthy.add_metric(labels, 1 if verdict == "healthy" else 0)
                for name, family in figures.items():
                    if inst.get(name) is not None:
                        family.add_metric(labels, inst[name])
        yield from (state, restarts, uptime, exit_code, exit_signal, invalid, healthy, *figures.values(),
                    *_run_families(snapshot.jobs))
        labels = [*_INSTANCE, "stream"]
        written = CounterMetricFamily("taskmaster_log_written_bytes", "bytes captured into the open log file",
                                      labels=labels)
        dropped = CounterMetricFamily("taskmaster_log_dropped_bytes", "bytes of output lost before the log file",
                                      labels=labels)
        for job_name, index, stream, written_bytes, dropped_bytes in snapshot.log_bytes:
            written.add_metric([job_name, str(index), stream], written_bytes)
            dropped.add_metric([job_name, str(index), stream], dropped_bytes)
        connections = GaugeMetricFamily("taskmaster_control_connections", "open control connections")
        connections.add_metric([], snapshot.connections)
        requests = CounterMetricFamily("taskmaster_control_requests", "answered control requests",
                                       labels=["verb", "response"])
        for (verb, response), count in sorted(snapshot.requests.items()):
            requests.add_metric([verb, response], count)
        colonies = CounterMetricFamily("taskmaster_colonies_processes", "ColonyOS processes run to the end",
                                       labels=["result"])
        for result in ("succeeded", "failed"):
            colonies.add_metric([result], snapshot.colonies.get(result, 0))
        rollouts = CounterMetricFamily("taskmaster_rollouts", "rolling restarts, begun and by how they ended",
                                       labels=["outcome"])
        for outcome in ("begun", "done", "halted", "interrupted"):
            rollouts.add_metric([outcome], snapshot.rollouts.get(outcome, 0))
        started = GaugeMetricFamily("taskmaster_start_time_seconds", "Unix time the daemon started")
        started.add_metric([], snapshot.started)
        yield from (written, dropped, connections, requests, colonies, rollouts, started,
                    InfoMetricFamily("taskmaster_build", "the daemon's version", value={"version": __version__}),
                    InfoMetricFamily("taskmaster_containment", "how the daemon holds what it starts",
                                     value={"containment": snapshot.containment}))


_FIGURES = {  # status field -> (family kind, metric name, help)
    "cpu_seconds": (CounterMetricFamily, "cpu_seconds", "CPU seconds used by the current run, all its processes"),
    "memory_bytes": (GaugeMetricFamily, "memory_bytes", "memory of the current run, all its processes"),
    "memory_peak_bytes": (GaugeMetricFamily, "memory_peak_bytes", "the most memory the current run held"),
    "tasks": (GaugeMetricFamily, "tasks", "processes and threads of the current run"),
    "oom_kills": (CounterMetricFamily, "oom_kills", "processes of the current run the OOM killer ended"),
}


def _run_families(jobs: list[dict]) -> tuple[Metric, Metric]:
    """The runs of scheduled jobs, so that a run that failed, or never came, can alert."""
    runs = CounterMetricFamily("taskmaster_job_runs", "runs of a scheduled job, by result", labels=["job", "result"])
    last_success = GaugeMetricFamily("taskmaster_job_last_success_timestamp_seconds",
                                     "Unix time the scheduled job's last successful run ended", labels=["job"])
    for job in jobs:
        schedule = job.get("schedule")
        if schedule:
            for result, count in schedule["runs_total"].items():
                runs.add_metric([job["name"], result], count)
            if schedule["last_success"] is not None:
                last_success.add_metric([job["name"]], schedule["last_success"])
    return runs, last_success


def exposition(snapshot: Snapshot) -> bytes:
    """The Prometheus text of a snapshot; touches nothing of the daemon, so it may run in a thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


class MetricsServer:
    def __init__(self, observed: Observed, connections: Callable[[], int]) -> None:
        self.observed = observed
        self.connections = connections
        self.started = time.time()
        self._server: asyncio.Server | None = None
        self._scrapes = 0
        self._tasks = TaskOwner(log)  # one per scrape

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accepted, sock=sock, limit=MAX_REQUEST)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A plain callback: asyncio makes no task of its own, the scrape is one of ours (which
        close() awaits; asyncio's server does not cancel its connections' tasks)."""
        self._tasks.spawn(self._serve(reader, writer), "a metrics scrape")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._tasks.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._scrapes += 1
        # drain() returns only once the whole answer is with the kernel: what the transport still
        # buffered at close would otherwise stay, with the socket, for as long as nobody reads.
        writer.transport.set_write_buffer_limits(0)
        try:
            if self._scrapes > MAX_SCRAPES:
                writer.write(_response(b"503 Service Unavailable", b"too many scrapes at once\n"))
                return
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                writer.write(_response(b"405 Method Not Allowed", b"GET /metrics\n"))
            elif path not in (b"/metrics", b"/"):
                writer.write(_response(b"404 Not Found", b"the metrics are at /metrics\n"))
            else:
                # Copied on the loop, formatted in a worker thread: 1000 instances are ~12 000
                # lines, tens of milliseconds of Python the loop must not wait for.
                snapshot = take_snapshot(self.observed, self.connections(), self.started)
                body = await asyncio.to_thread(exposition, snapshot)
                writer.write(_response(b"200 OK", b"" if method == b"HEAD" else body, CONTENT_TYPE_LATEST, len(body)))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a scraper that went away, or never sent a request: nobody to answer
        except asyncio.CancelledError:
            pass  # the daemon is closing (quietly: see server.ControlServer._serve)
        finally:
            self._scrapes -= 1
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # not taken in time: dropped, its buffers freed now
            else:
                writer.close()


def _response(status: bytes, body: bytes, content_type: str = "text/plain; charset=utf-8",
              length: int | None = None) -> bytes:
    head = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type.encode() +
            b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (len(body) if length is None else length))
    return head + body
