"""The running daemon: wires the supervisor, the control server and signals into one event loop."""
from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import resource
import signal
import socket
import sys

from .colonies.settings import ColoniesSettings
from .config import DaemonConfig
from .sdnotify import notify
from .supervisor import Supervisor

log = logging.getLogger("taskmasterd")


def setup_logging(config: DaemonConfig) -> None:
    if config.daemon:
        os.makedirs(config.log_dir, exist_ok=True)
        # Watched: after logrotate moves the file, the next line goes to a fresh one.
        handler: logging.Handler = logging.handlers.WatchedFileHandler(os.path.join(config.log_dir, "taskmasterd.log"))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


def raise_fd_limit() -> None:
    """1000 instances hold ~5000 descriptors (pipes, pidfds, log files): take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


async def run(config: DaemonConfig, listener: socket.socket, colonies: ColoniesSettings | None) -> int:
    from .jobfile import Limits
    from .server import ControlServer

    loop = asyncio.get_running_loop()
    supervisor = Supervisor(config.jobs_dir, config.log_dir, config.state_dir, limits=Limits(config.max_numprocs),
                            log_mode=int(config.log_mode, 8), adopt_orphans=True)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: supervisor.background(_reload(supervisor), "SIGHUP reload"))
    loop.add_signal_handler(signal.SIGUSR2, supervisor.reopen_logs)

    # The port answers from the start: while the jobs load, status shows what is loaded so far.
    server = ControlServer(supervisor, max_connections=config.max_connections, idle_timeout=config.idle_timeout)
    await server.start(listener)
    opening = loop.create_task(supervisor.open())
    stop_requested = loop.create_task(stopping.wait())
    await asyncio.wait([opening, stop_requested], return_when=asyncio.FIRST_COMPLETED)
    bridge = None
    if opening.done():
        opening.result()
        if colonies is not None:
            from .colonies.bridge import ColoniesBridge  # only a daemon given a server loads any of it

            bridge = ColoniesBridge(supervisor, colonies)
            bridge.open()
        host, port = listener.getsockname()[:2]
        log.info("taskmasterd ready: %d job(s) from %s, control on %s:%d",
                 len(supervisor.jobs), config.jobs_dir, host, port)
        notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=supervising {len(supervisor.jobs)} job(s)")
        await stopping.wait()
    stop_requested.cancel()
    log.info("shutting down")
    notify("STOPPING=1")
    supervisor.closing = True  # a load still in progress stops at the next file
    await asyncio.gather(opening, return_exceptions=True)
    await server.close()
    if bridge is not None:
        await bridge.close()
    await supervisor.shutdown()
    return 0


async def _reload(supervisor: Supervisor) -> None:
    log.info("SIGHUP: reloading every job file")
    reply = await supervisor.reload_all()
    if reply.error:
        log.error("reload finished with errors")
