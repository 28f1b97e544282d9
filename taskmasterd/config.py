"""Daemon settings: defaults, then the `--config` JSON file, then command-line options."""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from . import __version__

DEFAULT_PORT = 7777
CONTAINMENTS = ("auto", "cgroup2", "process-group")  # processes/containment.py
APPLY_MODES = ("on-save", "on-reload")  # when a saved job file is applied (lifecycle/supervisor.py)


@dataclass
class DaemonConfig:
    jobs_dir: str = "jobs"
    log_dir: str = "logs"
    state_dir: str = "state"
    host: str = "127.0.0.1"
    port: int | None = DEFAULT_PORT  # None: no TCP listener
    socket: str | None = None  # path of a unix-socket listener
    daemon: bool = False
    pidfile: str | None = None
    log_level: str = "INFO"
    max_connections: int = 1024
    idle_timeout: float = 300.0
    max_numprocs: int = 1024  # the most instances one job file may ask for
    log_mode: str = "0640"  # mode of the log files the daemon creates (octal)
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint; None: off
    config_file: str | None = None  # the --config file read, for status's `daemon` object (not a setting)
    check: str | None = None  # --check: validate this jobs directory or file ("" = the configured directory) and exit
    write_timeout: float = 30.0  # a client that reads none of its replies for this long is dropped
    control_users: list[str | int] = field(default_factory=list)  # who may connect, beyond root and
    control_groups: list[str] = field(default_factory=list)  # the daemon's own uid (see access.py)
    allow_remote: list[str] = field(default_factory=list)  # networks of peers on other hosts
    notify_dir: str | None = None  # the instances' NOTIFY_SOCKETs; None: a short directory of its own
    containment: str = "auto"  # "cgroup2", "process-group" or whichever is possible (processes/containment.py)
    version: str | None = None  # --version: "text" or "json" (print it and exit; not a setting)
    colonies: dict[str, Any] = field(default_factory=dict)  # see taskmasterd.colonies.settings
    container: bool = False  # a container's first process: jobs' output on stdout/stderr, exit codes (docs/container.md)
    apply: str = "on-save"  # "on-reload": a saved job file waits for `reload`/SIGHUP

    def absolutize(self) -> None:
        """Daemon mode changes directory to /: resolve every path against the caller's cwd first."""
        for name in ("jobs_dir", "log_dir", "state_dir", "pidfile", "socket", "notify_dir"):
            value = getattr(self, name)
            if value:
                setattr(self, name, os.path.abspath(value))


class ConfigError(ValueError):
    pass


_COMMAND_LINE_ONLY = {"config_file", "check", "version"}
DIRECTORIES = ("jobs_dir", "log_dir", "state_dir")


def default_directories(cwd: str, euid: int, environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """Where jobs, logs and state go when nothing says: a checkout's (or any directory's) own
    `jobs/` with `logs/` and `state/` beside it; else a system service's directories for root;
    else the user's XDG directories."""
    if os.path.isdir(os.path.join(cwd, "jobs")):
        return {"jobs_dir": "jobs", "log_dir": "logs", "state_dir": "state"}
    if euid == 0:
        return {"jobs_dir": "/etc/taskmaster/jobs", "log_dir": "/var/log/taskmaster", "state_dir": "/var/lib/taskmaster"}
    home = environ.get("HOME") or os.path.expanduser("~")
    config = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    state = environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return {"jobs_dir": os.path.join(config, "taskmaster", "jobs"),
            "log_dir": os.path.join(state, "taskmaster", "logs"),
            "state_dir": os.path.join(state, "taskmaster", "state")}


_TYPES = {"port": (int, type(None)), "max_connections": int, "idle_timeout": (int, float),
          "write_timeout": (int, float), "daemon": bool, "container": bool, "colonies": dict,
          "control_users": list, "control_groups": list, "allow_remote": list, "max_numprocs": int}
_NUMBERS = (int, (int, float), (int, type(None)))


def check_listeners(config: DaemonConfig) -> None:
    port, path = config.port, config.socket
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range: give 1-65535, or none to turn TCP off")
    if port is None and not path:
        raise ConfigError("nothing to listen on: with port none, give a unix socket (--socket PATH)")
    if path is not None and len(os.fsencode(os.path.abspath(path))) > 107:
        raise ConfigError(f"socket path {path!r} is too long for a unix socket (107 bytes at most)")
    if config.write_timeout <= 0:
        raise ConfigError("write_timeout must be positive")


def _check_lists(path: str, document: dict[str, Any]) -> None:
    for key, kinds in (("control_users", (str, int)), ("control_groups", (str,)), ("allow_remote", (str,))):
        for item in document.get(key, []):
            if isinstance(item, bool) or not isinstance(item, kinds):
                raise ConfigError(f"{path}: {key} must list {' or '.join(k.__name__ for k in kinds)} values, "
                                  f"not {json.dumps(item)}")


def load_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as src:
            document = json.loads(src.read())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    if isinstance(document.get("max_numprocs"), int) and not 1 <= document["max_numprocs"] <= 1 << 20:
        raise ConfigError(f"{path}: setting 'max_numprocs' must be from 1 to {1 << 20}")
    if "containment" in document and document["containment"] not in CONTAINMENTS:
        raise ConfigError(f"{path}: setting 'containment' must be \"auto\", \"cgroup2\" or \"process-group\"")
    if "apply" in document and document["apply"] not in APPLY_MODES:
        raise ConfigError(f"{path}: setting 'apply' must be \"on-save\" or \"on-reload\"")
    if "log_mode" in document and not (isinstance(document["log_mode"], str)
                                       and re.fullmatch(r"0?[0-7]{3}", document["log_mode"])):
        raise ConfigError(f"{path}: setting 'log_mode' must be an octal mode like \"0640\"")
    known = {f.name for f in fields(DaemonConfig)} - _COMMAND_LINE_ONLY
    for key, value in document.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        expected = _TYPES.get(key, (str, type(None)))
        if isinstance(value, bool) and expected in _NUMBERS or not isinstance(value, expected):
            raise ConfigError(f"{path}: setting {key!r} has the wrong type: {json.dumps(value)}")
    _check_lists(path, document)
    return document


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmasterd",
        description="Supervise the jobs described by *.tm.json files in a jobs directory.",
        epilog="Signals: HUP reloads every job file, TERM/INT stop every job and exit, "
               "USR2 reopens every log file.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (options given here override it)")
    parser.add_argument("--jobs-dir", help="directory of *.tm.json job files (default: ./jobs if there is "
                        "one; else /etc/taskmaster/jobs for root, $XDG_CONFIG_HOME/taskmaster/jobs for others)")
    parser.add_argument("--log-dir", help="directory of the jobs' output logs (default: ./logs beside ./jobs; "
                        "else /var/log/taskmaster, or $XDG_STATE_HOME/taskmaster/logs)")
    parser.add_argument("--state-dir", help="directory of the daemon's own state (default: ./state beside ./jobs; "
                        "else /var/lib/taskmaster, or $XDG_STATE_HOME/taskmaster/state)")
    parser.add_argument("--host", help="address of the control protocol (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=argparse.SUPPRESS,
                        help=f"TCP port of the control protocol, 1-65535, or 'none' to listen on the unix "
                             f"socket only (default: {DEFAULT_PORT})")
    parser.add_argument("--socket", metavar="PATH", help="also listen on a unix socket at PATH (mode 0660)")
    parser.add_argument("--control-group", dest="control_groups", metavar="GROUP", action="append",
                        help="members of GROUP may control the daemon (repeatable; replaces the config "
                             "file's control_groups; the first is the unix socket's group)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--foreground", dest="daemon", action="store_false", default=None,
                      help="stay in the foreground (the default; right under systemd)")
    mode.add_argument("--daemon", dest="daemon", action="store_true", default=None,
                      help="detach and run in the background")
    parser.add_argument("--container", action="store_true", default=None,
                        help="run as a container's first process: reap every zombie, write the jobs' output "
                             "to stdout/stderr with a prefix, exit when an essential job ends "
                             "(implied when taskmasterd is PID 1; see docs/container.md)")
    parser.add_argument("--pidfile", help="write and lock this pid file (refuse to start if locked)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="daemon log level (default: INFO)")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics on http://HOST:PORT/metrics "
                        "(off by default; a bare PORT means 127.0.0.1:PORT)")
    parser.add_argument("--check", nargs="?", const="", metavar="DIR|FILE",
                        help="validate every job file of DIR (default: the jobs directory), or one FILE, and exit: "
                        "1 if any is invalid")
    parser.add_argument("--containment", choices=CONTAINMENTS,
                        help="a cgroup per instance (cgroup2), process groups, or cgroup2 wherever a writable "
                             "cgroup v2 hierarchy allows it (auto, the default)")
    parser.add_argument("--apply", choices=APPLY_MODES,
                        help="when a saved job file is applied: at once (on-save, the default), or only at "
                             "taskmasterctl reload or SIGHUP (on-reload); status shows what waits")
    parser.add_argument("--version", action="store_true", help="print the version (and the containment in force "
                        "with --json) and exit")
    parser.add_argument("--json", action="store_true", help="with --version: as a JSON object")
    return parser


def _port(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r} (give 1-65535, or none)") from None


def resolve(argv: list[str] | None = None) -> DaemonConfig:
    args = build_parser().parse_args(argv)
    settings: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for name in ("jobs_dir", "log_dir", "state_dir", "host", "daemon", "pidfile", "log_level", "socket",
                 "control_groups", "metrics", "containment", "container", "apply"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if hasattr(args, "port"):  # absent unless given: `--port none` is None, and means it
        settings["port"] = args.port
    if any(name not in settings for name in DIRECTORIES):
        defaults = default_directories(os.getcwd(), os.geteuid(), os.environ)
        settings = {**{name: defaults[name] for name in DIRECTORIES}, **settings}
    config = DaemonConfig(**settings, config_file=os.path.abspath(args.config) if args.config else None,
                          check=args.check, version=("json" if args.json else "text") if args.version else None)
    if os.getpid() == 1:
        config.container = True  # init of a PID namespace: a container, whatever was said
    if config.container and config.daemon:
        raise ConfigError("--container runs in the foreground: it cannot be combined with --daemon")
    check_listeners(config)
    config.absolutize()
    return config
