"""The job-file model: parse and validate `jobs/<name>.tm.json` into a `JobSpec`.

Pure logic: `parse_job` reads bytes and returns a spec or raises `JobFileError` with every problem
found, each naming the file and the field. `host_errors` is the separate, system-facing check
(does the working directory exist, does the user exist, may we switch to it).
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

RESTART_POLICIES = ("always", "never", "unexpected")
COLONIES_FUNCTIONS = ("run", "start", "stop", "restart", "status", "kill", "repair")
DEFAULT_COLONIES_FUNCTIONS = ("run", "start", "stop", "restart", "status")


@dataclass(frozen=True, slots=True)
class ColoniesSpec:
    executortype: str | None = None  # None: the job name
    executorname: str | None = None  # None: <job>.<hostname>
    functions: tuple[str, ...] = DEFAULT_COLONIES_FUNCTIONS
    maxconcurrent: int = 1
    location: str | None = None  # None: the daemon's colonies location


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    argv: tuple[str, ...]
    numprocs: int = 1
    autostart: bool = True
    autorestart: str = "unexpected"
    exitcodes: frozenset[int] = frozenset({0})
    starttime: float = 1.0
    startretries: int = 3
    stopsignal: int = int(signal.SIGTERM)
    stoptime: float = 10.0
    stdout: str | None = ""  # "" = default path, None = discard
    stderr: str | None = ""
    logmaxbytes: int = 10 * 1024 * 1024
    logbackups: int = 5
    env: tuple[tuple[str, str], ...] = ()
    workingdir: str | None = None
    umask: int | None = None
    user: str | None = None
    colonies: ColoniesSpec | None = field(default_factory=ColoniesSpec)  # None: kept off ColonyOS

    def spawn_settings(self) -> tuple[Any, ...]:
        """What a running instance was started with: a change here needs a restart."""
        return (self.argv, self.env, self.workingdir, self.umask, self.user, self.stdout, self.stderr)

    def log_path(self, stream: str, index: int, log_dir: str) -> str | None:
        """Where instance `index` writes `stream` ("stdout"/"stderr"); None = discarded."""
        configured = self.stdout if stream == "stdout" else self.stderr
        if configured is None:
            return None
        if configured == "":
            return os.path.join(log_dir, f"{self.name}.{index}.{'out' if stream == 'stdout' else 'err'}")
        path = os.path.join(log_dir, configured)  # an absolute path stays as it is
        if self.numprocs > 1:
            path = path.replace("{index}", str(index)) if "{index}" in path else f"{path}.{index}"
        return path


class JobFileError(ValueError):
    """Every problem of one job file; `str()` gives one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- field converters: each returns the normalized value or raises _Bad(reason) ------------------


class _Bad(Exception):
    pass


def _got(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _int(value: Any, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(f"must be {what}, got {_got(value)}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _Bad(f"must be a number ≥ 0 (seconds), got {_got(value)}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_got(value)}")
    return value


def _cmd(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise _Bad(f"cannot be split into words: {exc}") from None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = value
    else:
        raise _Bad(f"must be a string or a list of strings, got {_got(value)}")
    if not argv or not argv[0]:
        raise _Bad("must name a program")
    return tuple(argv)


def _restart_policy(value: Any) -> str:
    if value not in RESTART_POLICIES:
        raise _Bad(f"must be one of \"always\", \"never\", \"unexpected\", got {_got(value)}")
    return value


def _legacy_restart(value: Any) -> str:
    if isinstance(value, bool) or value not in (0, 1, 2):
        raise _Bad(f"must be 0 (never), 1 (unexpected) or 2 (always), got {_got(value)}")
    return ("never", "unexpected", "always")[value]


def _exitcodes(value: Any) -> frozenset[int]:
    codes = value if isinstance(value, list) else [value]
    if not codes or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in codes):
        raise _Bad(f"must be an exit code 0…255 or a list of them, got {_got(value)}")
    return frozenset(codes)


def _signal(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value in signal.valid_signals():
            return value
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        number = getattr(signal.Signals, name, None) if not name.startswith("SIG_") else None
        if number is not None:
            return int(number)
    raise _Bad(f"must be a signal name like \"TERM\" or a signal number, got {_got(value)}")


def _log_target(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Bad(f"must be a path or null, got {_got(value)}")
    return value


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, list):  # the original daemon's [{"name":…, "value":…}] form
        try:
            value = {item["name"]: item["value"] for item in value}
        except (TypeError, KeyError):
            raise _Bad("as a list, every entry must be {\"name\": …, \"value\": …}") from None
    if not isinstance(value, dict):
        raise _Bad(f"must be an object of names to strings, got {_got(value)}")
    pairs = []
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise _Bad(f"has an invalid variable name {_got(key)}")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)) or "\0" in str(val):
            raise _Bad(f"variable {key!r} must be a string or a number, got {_got(val)}")
        pairs.append((key, str(val)))
    return tuple(sorted(pairs))


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Bad(f"must be a directory path, got {_got(value)}")
    return value


def _umask(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{1,3}", value):
        return int(value, 8)
    raise _Bad(f"must be an octal string like \"022\", got {_got(value)}")


def _user(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value and "\0" not in value:
        return value
    raise _Bad(f"must be a user name or uid, got {_got(value)}")


def _colonies(value: Any) -> ColoniesSpec | None:
    if value is False:
        return None
    if not isinstance(value, dict):
        raise _Bad(f"must be an object or false, got {_got(value)}")
    unknown = set(value) - {"executortype", "executorname", "functions", "maxconcurrent", "location"}
    if unknown:
        raise _Bad(f"unknown key {_got(sorted(unknown)[0])}")
    for key in ("executortype", "executorname", "location"):
        if key in value and (not isinstance(value[key], str) or not value[key]):
            raise _Bad(f"{key} must be a non-empty string, got {_got(value[key])}")
    functions = value.get("functions", list(DEFAULT_COLONIES_FUNCTIONS))
    if not isinstance(functions, list) or any(f not in COLONIES_FUNCTIONS for f in functions):
        raise _Bad(f"functions must be a list drawn from {', '.join(COLONIES_FUNCTIONS)}, got {_got(functions)}")
    return ColoniesSpec(
        executortype=value.get("executortype"),
        executorname=value.get("executorname"),
        functions=tuple(dict.fromkeys(functions)),
        maxconcurrent=_int(value.get("maxconcurrent", 1), 1, "an integer ≥ 1"),
        location=value.get("location"),
    )


_Converter = Callable[[Any], Any]
FIELDS: dict[str, _Converter] = {
    "cmd": _cmd,
    "numprocs": lambda v: _int(v, 1, "an integer ≥ 1"),
    "autostart": _bool,
    "autorestart": _restart_policy,
    "exitcodes": _exitcodes,
    "starttime": _number,
    "startretries": lambda v: _int(v, -1, "an integer ≥ -1"),
    "stopsignal": _signal,
    "stoptime": _number,
    "stdout": _log_target,
    "stderr": _log_target,
    "logmaxbytes": lambda v: _int(v, 0, "an integer ≥ 0"),
    "logbackups": lambda v: _int(v, 0, "an integer ≥ 0"),
    "env": _env,
    "workingdir": _path,
    "umask": _umask,
    "user": _user,
    "colonies": _colonies,
}
# Names used by files written for the original Taskmaster daemon: alias -> (field, converter).
ALIASES: dict[str, tuple[str, _Converter]] = {
    "procNr": ("numprocs", FIELDS["numprocs"]),
    "autoStart": ("autostart", _bool),
    "restart": ("autorestart", _legacy_restart),
    "startTime": ("starttime", _number),
    "normalExitCode": ("exitcodes", _exitcodes),
    "restartTimes": ("startretries", FIELDS["startretries"]),
    "stopSig": ("stopsignal", _signal),
    "stopTime": ("stoptime", _number),
    "dir": ("workingdir", _path),
    "runas": ("user", _user),
}
_SPEC_FIELD = {"cmd": "argv"}


def parse_job(name: str, raw: bytes, source: str) -> JobSpec:
    """Parse the bytes of job `name`'s file; `source` is the path shown in messages."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise JobFileError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    except json.JSONDecodeError as exc:
        raise JobFileError([f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    if not isinstance(document, dict):
        raise JobFileError([f"{source}: must be a JSON object, got {type(document).__name__}"])

    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key in FIELDS:
            target, convert = key, FIELDS[key]
        elif key in ALIASES:
            target, convert = ALIASES[key]
            if target in document:
                problems.append(f"{source}: field {key!r} is an alias of {target!r}; give only one of them")
                continue
        else:
            import difflib  # only a misspelt file pays for it

            hint = difflib.get_close_matches(key, [*FIELDS, *ALIASES], n=1, cutoff=0.6)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{source}: unknown field {key!r}{suggestion}")
            continue
        try:
            values[_SPEC_FIELD.get(target, target)] = convert(value)
        except _Bad as bad:
            problems.append(f'{source}: field "{key}": {bad}')
    if "cmd" not in document:
        problems.append(f'{source}: field "cmd": is required')
    if problems:
        raise JobFileError(problems)
    return JobSpec(name=name, **values)


def host_errors(spec: JobSpec, source: str, daemon_uid: int | None = None) -> list[str]:
    """Problems only this machine can tell: a missing working directory, an unknown user, a user
    switch the daemon has no right to make."""
    problems = []
    if spec.workingdir is not None and not os.path.isdir(spec.workingdir):
        problems.append(f'{source}: field "workingdir": directory {spec.workingdir!r} does not exist')
    if spec.user is not None:
        try:
            account = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
        except (KeyError, OverflowError):
            problems.append(f'{source}: field "user": no such user {spec.user!r}')
        else:
            uid = os.geteuid() if daemon_uid is None else daemon_uid
            if uid != 0 and account.pw_uid != uid:
                problems.append(f'{source}: field "user": running as {spec.user!r} needs a daemon started as root')
    return problems
