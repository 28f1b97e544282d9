"""`taskmasterd`: check what can be checked in the caller's terminal, then run (or detach and run)."""
from __future__ import annotations

import asyncio
import os
import socket
import sys

from .colonies.settings import ColoniesSettings
from .config import ConfigError, resolve
from .pidfile import LockedPidfile, PidfileLocked, StateDirectoryLock


def main(argv: list[str] | None = None) -> int:
    try:
        config = resolve(argv)
        if config.version is not None:
            return _print_version(config)
        if config.check is not None:  # offline: nothing else of the settings matters
            from .jobfiles.check import run_check
            from .jobfiles.jobfile import Limits

            return run_check(os.path.abspath(config.check) if config.check else config.jobs_dir,
                             Limits(config.max_numprocs))
        colonies = ColoniesSettings.from_sources({"colonies": config.colonies}, os.environ)
    except (ConfigError, ValueError) as exc:
        print(f"taskmasterd: {exc}", file=sys.stderr)
        return 1

    from .control.accounts import resolve_policy
    from .daemon import run, setup_logging
    from .control.listeners import open_listeners
    from .processes.start import close_inherited_on_exec
    from .processes.table import raise_fd_limit

    close_inherited_on_exec()  # what we were started with is no child's business
    if colonies is not None:
        # Loaded before the control port listens: importing the bridge (its crypto, its client)
        # holds the start for tens of milliseconds, which a request must not wait through.
        from .colonies import bridge  # noqa: F401  # only a daemon given a server loads any of it

    # Refuse a second daemon (same pid file, port or socket) here, where the operator sees the message.
    pidfile = LockedPidfile(config.pidfile) if config.pidfile else None
    state_lock = StateDirectoryLock(os.path.abspath(config.state_dir))
    try:
        _refuse_unsafe_directories(config.state_dir, config.jobs_dir)
        state_lock.acquire()
        policy, control_gids = resolve_policy(config.control_users, config.control_groups, config.allow_remote)
        if pidfile is not None:
            pidfile.acquire()
        listeners = open_listeners(config.host, config.port, config.socket, control_gids[0] if control_gids else None,
                                   policy.users, control_gids[1:])
        metrics = _bind_metrics(config.metrics) if config.metrics else None
    except (PidfileLocked, OSError, ValueError) as exc:
        print(f"taskmasterd: {exc}", file=sys.stderr)
        return 1

    if config.daemon:
        import daemon  # python-daemon

        context = daemon.DaemonContext(
            working_directory="/",
            umask=0o022,
            pidfile=pidfile,
            files_preserve=[sock.fileno() for sock in listeners.sockets] + ([pidfile.fd] if pidfile else [])
            + [state_lock.fd]
            + ([metrics.fileno()] if metrics else []),
            signal_map={},  # asyncio installs the handlers once the loop runs
        )
        context.open()
    elif pidfile is not None:
        pidfile.__enter__()
    state_lock.__enter__()  # the pid a second daemon names: the final one

    log_writer = setup_logging(config)
    raise_fd_limit()
    try:
        return asyncio.run(run(config, listeners, policy, colonies, metrics=metrics))
    finally:
        log_writer.stop()  # writes out what is still queued
        listeners.close()
        if pidfile is not None:
            pidfile.__exit__(None, None, None)
        state_lock.__exit__(None, None, None)


def _refuse_unsafe_directories(state_dir: str, jobs_dir: str) -> None:
    """ValueError naming the problem when another user could read the keys or plant a journal in
    the state directory, or have the daemon run a job file of theirs."""
    from .jobfiles.jobsdir import JobsDirectory
    from .kernel.safepath import private_directory_problem

    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    unsafe = private_directory_problem(state_dir)
    if unsafe is not None:
        raise ValueError(f"the state directory {state_dir} is not private: {unsafe}")
    os.makedirs(jobs_dir, exist_ok=True)
    unsafe = JobsDirectory(os.path.abspath(jobs_dir)).problem()
    if unsafe is not None:
        raise ValueError(unsafe)


def _print_version(config) -> int:
    """`taskmasterd --version [--json]`: with --json, also the containment a daemon on these
    settings would have, and why (found without creating or moving anything)."""
    from . import __version__

    if config.version == "text":
        print(f"taskmasterd {__version__}")
        return 0
    import json

    from .processes.containment import probe

    print(json.dumps({"version": __version__, "containment": probe(os.path.abspath(config.state_dir), config.containment)}))
    return 0


def _bind_metrics(address: str) -> socket.socket:
    from .observe.metrics import bind  # prometheus_client is loaded only when metrics are on

    return bind(address)


if __name__ == "__main__":
    sys.exit(main())
