"""`taskmasterd`: check what can be checked in the caller's terminal, then run (or detach and run)."""
from __future__ import annotations

import asyncio
import os
import sys

from .colonies.settings import ColoniesSettings
from .config import ConfigError, resolve
from .pidfile import LockedPidfile, PidfileLocked


def main(argv: list[str] | None = None) -> int:
    try:
        config = resolve(argv)
        colonies = ColoniesSettings.from_sources({"colonies": config.colonies}, os.environ)
    except (ConfigError, ValueError) as exc:
        print(f"taskmasterd: {exc}", file=sys.stderr)
        return 1

    from .accounts import resolve_policy
    from .daemon import raise_fd_limit, run, setup_logging
    from .listeners import open_listeners

    # Refuse a second daemon (same pid file, port or socket) here, where the operator sees the message.
    pidfile = LockedPidfile(config.pidfile) if config.pidfile else None
    try:
        policy, control_gids = resolve_policy(config.control_users, config.control_groups, config.allow_remote)
        if pidfile is not None:
            pidfile.acquire()
        listeners = open_listeners(config.host, config.port, config.socket, control_gids[0] if control_gids else None,
                                   policy.users, control_gids[1:])
    except (PidfileLocked, OSError, ValueError) as exc:
        print(f"taskmasterd: {exc}", file=sys.stderr)
        return 1

    if config.daemon:
        import daemon  # python-daemon

        context = daemon.DaemonContext(
            working_directory="/",
            umask=0o022,
            pidfile=pidfile,
            files_preserve=[sock.fileno() for sock in listeners.sockets] + ([pidfile.fd] if pidfile else []),
            signal_map={},  # asyncio installs the handlers once the loop runs
        )
        context.open()
    elif pidfile is not None:
        pidfile.__enter__()

    setup_logging(config)
    raise_fd_limit()
    try:
        return asyncio.run(run(config, listeners, policy, colonies))
    finally:
        listeners.close()
        if pidfile is not None:
            pidfile.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
