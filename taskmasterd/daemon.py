"""The running daemon: wires the supervisor, the control server and signals into one event loop."""
from __future__ import annotations

import asyncio
import gc
import logging
import logging.handlers
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Callable

# Imported with this module, which cli.py loads before the control port listens: a first request
# that arrives meanwhile waits in the backlog for the loop, which once took 10 ms to import these.
from .control.access import AccessPolicy
from .control.server import ControlServer
from .colonies.settings import ColoniesSettings
from .config import DaemonConfig
from .daemonhandle import DaemonHandle
from .jobfiles.jobfile import Limits
from .processes.containment import ContainmentError, choose
from .observe.daemonlog import DaemonLogHandler, LogWriter, RingHandler
from .control.listeners import Listeners
from .kernel.sdnotify import notify
from .lifecycle.supervisor import Supervisor
from .tasks import TaskOwner

if TYPE_CHECKING:
    from .colonies.bridge import ColoniesBridge

log = logging.getLogger("taskmasterd")


def setup_logging(config: DaemonConfig) -> LogWriter:
    """The daemon's log, written by a thread of its own: a slow terminal, journald or disk never
    blocks the event loop (a log call only queues the record). Stop the returned writer last."""
    if config.daemon:
        os.makedirs(config.log_dir, exist_ok=True)
        # Watched: after logrotate moves the file, the next line goes to a fresh one.
        handler: logging.StreamHandler = logging.handlers.WatchedFileHandler(os.path.join(config.log_dir, "taskmasterd.log"))
    else:
        handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    ring = RingHandler()  # the last lines in memory, for `maintail` (foreground mode too)
    ring.setFormatter(formatter)
    writer = LogWriter(handler)
    # Records carry nothing the format uses beyond time, level, name and message: skip the rest
    # (the caller's frame, thread and process names), which costs more than the line itself.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [DaemonLogHandler(writer, ring)]
    root.setLevel(config.log_level)
    writer.start()
    return writer


async def run(config: DaemonConfig, listeners: Listeners, policy: AccessPolicy,
              colonies: ColoniesSettings | None, metrics: socket.socket | None = None) -> int:
    loop = asyncio.get_running_loop()
    _freeze_heap()  # the modules, the configuration
    try:
        containment = choose(os.path.abspath(config.state_dir), config.containment)
    except ContainmentError as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("containment: %s%s", containment.describe(),
             f" (cells under {containment.subtree})" if containment.subtree else "")
    console = None
    if config.container:
        from .container.console import Console

        console = Console()
    supervisor = Supervisor(config.jobs_dir, config.log_dir, config.state_dir, limits=Limits(config.max_numprocs),
                            log_mode=int(config.log_mode, 8), adopt_orphans=True, notify_dir=config.notify_dir,
                            console=console, containment=containment, apply=config.apply)
    if colonies is not None:
        from .colonies.bridge import ColoniesBridge  # loaded already, before the port listened (cli.py)

        if colonies.blueprints:
            from .colonies.jobsource import install  # the blueprints' jobs load with the others, before any call

            install(supervisor, colonies.colony_name)
    tasks = TaskOwner(log)  # the daemon's own: the load of the jobs, and the stop of every job
    stopping = asyncio.Event()
    woken = asyncio.Event()  # a stop was asked for, or the load ended

    def stop() -> None:
        stopping.set()
        woken.set()

    exit_code = 0
    if config.container:
        from .container.exitwatch import ExitWatch

        def exit_with(code: int, why: str) -> None:
            nonlocal exit_code
            exit_code = code
            stop()

        ExitWatch(supervisor, exit_with)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: supervisor.background(_reload(supervisor), "SIGHUP reload"))
    loop.add_signal_handler(signal.SIGUSR2, supervisor.reopen_logs)
    bridge: ColoniesBridge | None = None
    opening: asyncio.Task[None] | None = None
    jobs_stopped: asyncio.Task[None] | None = None

    async def stop_jobs() -> None:
        """Once, whether SIGTERM or the `shutdown` verb asked first: a load still in progress
        (it stops at the next file), the bridge, then every job. A caller that goes away (the
        verb's connection closed) leaves the stop going: `wait` never cancels what it waits for."""
        nonlocal jobs_stopped
        if jobs_stopped is None:
            jobs_stopped = tasks.spawn(_stop_jobs(supervisor, opening, lambda: bridge), None)
        await asyncio.wait([jobs_stopped])
        jobs_stopped.result()

    dirs = {"jobs_dir": config.jobs_dir, "log_dir": config.log_dir, "state_dir": config.state_dir}
    supervisor.daemon = DaemonHandle(config.config_file, dirs, stop_jobs, stop, containment.status())
    # The port answers from the start: while the jobs load, status shows what is loaded so far.
    server = ControlServer(supervisor, policy, max_connections=config.max_connections,
                           idle_timeout=config.idle_timeout, write_timeout=config.write_timeout)
    await server.start(listeners.sockets)
    metrics_server = None
    if metrics is not None:
        from .observe.metrics import MetricsServer

        metrics_server = MetricsServer(supervisor, lambda: server.connections)
        await metrics_server.start(metrics)
    opening = tasks.spawn(supervisor.open(), None)  # its failure ends the daemon, below
    opening.add_done_callback(lambda _: woken.set())
    await woken.wait()
    if opening.done() and not stopping.is_set():
        opening.result()
        if colonies is not None:
            bridge = ColoniesBridge(supervisor, colonies)
            bridge.open()
        _freeze_heap()  # and the jobs just loaded
        log.info("taskmasterd ready: %d job(s) from %s, control on %s",
                 len(supervisor.jobs), config.jobs_dir, listeners.describe())
        notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=supervising {len(supervisor.jobs)} job(s)")
        await stopping.wait()
    log.info("shutting down")
    notify("STOPPING=1")
    if metrics_server is not None:
        await metrics_server.close()
    await server.close()
    await stop_jobs()
    await tasks.close()
    if supervisor.console is not None:
        supervisor.console.close()
    return exit_code


def _freeze_heap() -> None:
    """Take every object alive now out of the cyclic collector's sight (gc.freeze): what the
    daemon has loaded by then lives as long as it does, and each full collection walked it all,
    stopping the loop for 8-18 ms (27 000 objects once the modules are loaded, on the 2-core VM).
    Cyclic garbage alive at this moment is kept for good: none after the imports, 326 objects at
    READY with 100 blueprint jobs loaded (a one-time cost of some kB)."""
    gc.freeze()


async def _stop_jobs(supervisor: Supervisor, opening: asyncio.Task[None] | None,
                     bridge: Callable[[], ColoniesBridge | None]) -> None:
    supervisor.closing = True
    if opening is not None:
        await asyncio.wait([opening])  # its failure, if any, is the daemon's to raise
    if bridge() is not None:
        await bridge().close()  # type: ignore[union-attr]
    await supervisor.shutdown()


async def _reload(supervisor: Supervisor) -> None:
    log.info("SIGHUP: reloading every job file")
    reply = await supervisor.reload_all()
    if reply.error:
        log.error("reload finished with errors")
