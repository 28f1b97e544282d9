"""The job-file model: parse and validate `jobs/<name>.tm.json` into a `JobSpec`.

Pure logic: `parse_job` reads bytes and returns a spec or raises `JobFileError` with every problem
found, each naming the file and the field. `host_errors` is the separate, system-facing check
(does the working directory exist, does the user exist, may we switch to it), given the user's
uid by its caller.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from .container_spec import CONTAINER_FIELDS, container_problems
from .fields import FieldError, NonFinite, boolean, command_words, got
from .readiness_spec import READINESS_FIELDS, Dependency, HealthCheckSpec, readiness_problems
from .resources import NO_RESOURCES, RESOURCE_FIELDS, Resources, parse_resources
from .rollout_spec import ROLLOUT_FIELDS
from .schedule_spec import SCHEDULE_FIELDS, Schedule, ScheduleSpec, schedule_problems, scheduled_defaults
from .sockets_spec import SOCKET_FIELDS, SocketSpec, autostart_value, socket_identity, socket_problems

RESTART_POLICIES = ("always", "never", "unexpected")
STDERR_TO_STDOUT = "stdout"  # the value of "stderr" that sends it down stdout's pipe
# Bounds: whatever a file says, the daemon stays responsive and its memory bounded.
MAX_FILE = 1 << 20  # bytes of a job file
MAX_SECONDS = 86400.0  # any timer
MAX_LOGBACKUPS = 1000
MIN_LOGMAXBYTES = 1024  # or 0: never rotate
MAX_LOGMAXBYTES = 1 << 62
MAX_STARTRETRIES = 1_000_000
MAX_PATH = 4096
MAX_NAME_FIELD = 256  # executor names and types
MAX_MAXCONCURRENT = 1024
DEFAULT_MAX_NUMPROCS = 1024
MAX_UID = (1 << 32) - 2
COLONIES_FUNCTIONS = ("run", "start", "stop", "restart", "status", "kill", "repair")
DEFAULT_COLONIES_FUNCTIONS = ("run", "start", "stop", "restart", "status")


@dataclass(frozen=True, slots=True)
class Limits:
    """Daemon-wide bounds on what a job file may ask for."""

    max_numprocs: int = DEFAULT_MAX_NUMPROCS


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
    autostart: bool | str = True  # or "socket": at the first connection to its sockets
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
    depends_on: tuple[Dependency, ...] = ()
    ready: str = "starttime"  # or "notify", "healthy"
    ready_timeout: float | None = None  # None: starttime
    healthcheck: HealthCheckSpec | None = None
    on_unhealthy: str = "restart"  # or "none"
    watchdog: float | None = None  # seconds without WATCHDOG=1 before a restart
    schedule: Schedule | None = None  # None: a job that runs continuously (schedule_spec.py)
    timezone: str | None = None
    overlap: str = "skip"
    jitter: float = 0.0
    timeout: float | None = None
    catch_up: bool = False
    essential: bool = False  # container mode: its end ends the daemon (container_spec.py)
    resources: Resources = NO_RESOURCES  # memory_max, cpu_quota, tasks_max, nice, ... (resources.py)
    inherit_env: bool = False  # a job of another user gets the daemon's environment (spawner.py)
    sockets: tuple[SocketSpec, ...] = ()  # held by the daemon, given to every run (sockets_spec.py)
    reuseport: bool = False  # a SO_REUSEPORT socket of its own per instance
    rolling: bool = False  # every restart replaces the instances a few at a time (rollout_spec.py)
    max_unavailable: int = 1  # ... this many at once

    def schedule_settings(self) -> ScheduleSpec | None:
        """Its scheduling settings, or None when it is not scheduled."""
        if self.schedule is None:
            return None
        return ScheduleSpec(self.schedule, self.timezone, self.overlap, self.jitter, self.timeout, self.catch_up)

    @property
    def starts_on_load(self) -> bool:
        """`autostart: true` (not false, not "socket")."""
        return self.autostart is True

    def spawn_settings(self) -> tuple[Any, ...]:
        """What a running instance was started with: a change here needs new processes (edits.py
        lists which fields; a cgroup limit changes live)."""
        return (self.argv, self.env, self.workingdir, self.umask, self.user, self.stdout, self.stderr,
                self.inherit_env, self.resources.start_settings(), socket_identity(self.sockets, self.reuseport))

    @property
    def stderr_to_stdout(self) -> bool:
        """`"stderr": "stdout"`: one pipe for both streams, so one file in the order written."""
        return self.stderr == STDERR_TO_STDOUT

    def log_path(self, stream: str, index: int, log_dir: str) -> str | None:
        """Where instance `index` writes `stream` ("stdout"/"stderr"); None = discarded."""
        if self.stderr_to_stdout:
            stream = "stdout"
        configured = self.stdout if stream == "stdout" else self.stderr
        if configured is None:
            return None
        if configured == "":
            return os.path.join(log_dir, f"{self.name}.{index}.{'out' if stream == 'stdout' else 'err'}")
        path = os.path.join(log_dir, configured)  # an absolute path stays as it is
        if "{index}" in path:
            return path.replace("{index}", str(index))
        return f"{path}.{index}" if self.numprocs > 1 else path


class JobFileError(ValueError):
    """Every problem of one job file; `str()` gives one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- field converters: each returns the normalized value or raises FieldError(reason) ---------------


def _short_repr(text: str, limit: int = 80) -> str:
    shown = repr(text)  # escapes what cannot be printed, lone surrogates included
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _int(value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
        raise FieldError(f"must be an integer {bounds}, got {got(value)}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SECONDS:
        raise FieldError(f"must be a number of seconds from 0 to {MAX_SECONDS:g}, got {got(value)}")
    return float(value)


def _restart_policy(value: Any) -> str:
    if value not in RESTART_POLICIES:
        raise FieldError(f"must be one of \"always\", \"never\", \"unexpected\", got {got(value)}")
    return value


def _legacy_restart(value: Any) -> str:
    if isinstance(value, bool) or value not in (0, 1, 2):
        raise FieldError(f"must be 0 (never), 1 (unexpected) or 2 (always), got {got(value)}")
    return ("never", "unexpected", "always")[value]


def _exitcodes(value: Any) -> frozenset[int]:
    codes = value if isinstance(value, list) else [value]
    if not codes or len(codes) > 256 or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in codes):
        raise FieldError(f"must be an exit code 0…255 or a list of them, got {got(value)}")
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
    raise FieldError(f"must be a signal name like \"TERM\" or a signal number, got {got(value)}")


def _log_target(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_PATH:
        raise FieldError(f"must be a path (at most {MAX_PATH} characters) or null, got {got(value)}")
    return value


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, list):  # the original daemon's [{"name":…, "value":…}] form
        try:
            value = {item["name"]: item["value"] for item in value}
        except (TypeError, KeyError):
            raise FieldError("as a list, every entry must be {\"name\": …, \"value\": …}") from None
    if not isinstance(value, dict):
        raise FieldError(f"must be an object of names to strings, got {got(value)}")
    pairs = []
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise FieldError(f"has an invalid variable name {got(key)}")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise FieldError(f"variable {key!r} must be a string or a number, got {got(val)}")
        pairs.append((key, str(val)))
    return tuple(sorted(pairs))


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PATH:
        raise FieldError(f"must be a directory path (at most {MAX_PATH} characters), got {got(value)}")
    return value


def _umask(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{1,3}", value):
        return int(value, 8)
    raise FieldError(f"must be an octal string like \"022\", got {got(value)}")


def _user(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UID:
        return str(value)
    if isinstance(value, str) and value and len(value) <= MAX_NAME_FIELD and not value.startswith("-"):
        if not (value.isascii() and value.isdigit()) or int(value) <= MAX_UID:
            return value
    raise FieldError(f"must be a user name or a uid from 0 to {MAX_UID}, got {got(value)}")


def _colonies(value: Any) -> ColoniesSpec | None:
    if value is False:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"must be an object or false, got {got(value)}")
    unknown = set(value) - {"executortype", "executorname", "functions", "maxconcurrent", "location"}
    if unknown:
        raise FieldError(f"unknown key {got(sorted(unknown)[0])}")
    for key in ("executortype", "executorname", "location"):
        if key in value and (not isinstance(value[key], str) or not 0 < len(value[key]) <= MAX_NAME_FIELD):
            raise FieldError(f"{key} must be a non-empty string of at most {MAX_NAME_FIELD} characters, "
                       f"got {got(value[key])}")
    functions = value.get("functions", list(DEFAULT_COLONIES_FUNCTIONS))
    if not isinstance(functions, list) or any(f not in COLONIES_FUNCTIONS for f in functions):
        raise FieldError(f"functions must be a list drawn from {', '.join(COLONIES_FUNCTIONS)}, got {got(functions)}")
    return ColoniesSpec(
        executortype=value.get("executortype"),
        executorname=value.get("executorname"),
        functions=tuple(dict.fromkeys(functions)),
        maxconcurrent=_int(value.get("maxconcurrent", 1), 1, MAX_MAXCONCURRENT),
        location=value.get("location"),
    )


def _logmaxbytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (
            value == 0 or MIN_LOGMAXBYTES <= value <= MAX_LOGMAXBYTES):
        raise FieldError(f"must be 0 (never rotate) or an integer from {MIN_LOGMAXBYTES} to {MAX_LOGMAXBYTES}, "
                   f"got {got(value)}")
    return value


_Converter = Callable[[Any], Any]
_NUMPROCS = "numprocs"  # bounded by Limits, checked in parse_job
FIELDS: dict[str, _Converter] = {
    "cmd": command_words,
    "numprocs": lambda v: _int(v, 1),
    "autostart": autostart_value,
    "autorestart": _restart_policy,
    "exitcodes": _exitcodes,
    "starttime": _seconds,
    "startretries": lambda v: _int(v, -1, MAX_STARTRETRIES),
    "stopsignal": _signal,
    "stoptime": _seconds,
    "stdout": _log_target,
    "stderr": _log_target,
    "logmaxbytes": _logmaxbytes,
    "logbackups": lambda v: _int(v, 0, MAX_LOGBACKUPS),
    "env": _env,
    "workingdir": _path,
    "umask": _umask,
    "user": _user,
    "colonies": _colonies,
    "inherit_env": boolean,
    **READINESS_FIELDS,  # depends_on, ready, ready_timeout, healthcheck, on_unhealthy, watchdog
    **SCHEDULE_FIELDS,  # schedule, timezone, overlap, jitter, timeout, catch_up
    **CONTAINER_FIELDS,  # essential
    **SOCKET_FIELDS,  # sockets, reuseport (and autostart "socket")
    **ROLLOUT_FIELDS,  # rolling, max_unavailable
}
# Names used by files written for the original Taskmaster daemon: alias -> (field, converter).
ALIASES: dict[str, tuple[str, _Converter]] = {
    "procNr": ("numprocs", FIELDS["numprocs"]),
    "autoStart": ("autostart", boolean),
    "restart": ("autorestart", _legacy_restart),
    "startTime": ("starttime", _seconds),
    "normalExitCode": ("exitcodes", _exitcodes),
    "restartTimes": ("startretries", FIELDS["startretries"]),
    "stopSig": ("stopsignal", _signal),
    "stopTime": ("stoptime", _seconds),
    "dir": ("workingdir", _path),
    "runas": ("user", _user),
}
_SPEC_FIELD = {"cmd": "argv"}


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise FieldError(f"key {got(twice)} is given twice")
    return document


def _load(raw: bytes, source: str) -> Any:
    """The JSON document of a job file; JobFileError (and nothing else) for any bytes."""
    if len(raw) > MAX_FILE:
        raise JobFileError([f"{source}: larger than {MAX_FILE} bytes"])
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=NonFinite, object_pairs_hook=_refuse_duplicates)
    except UnicodeDecodeError as exc:
        raise JobFileError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    except json.JSONDecodeError as exc:
        raise JobFileError([f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    except FieldError as bad:
        raise JobFileError([f"{source}: invalid JSON: {bad}"]) from None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits, nesting 100k deep
        raise JobFileError([f"{source}: invalid JSON: {exc}"]) from None


def _text_problem(value: Any) -> str | None:
    """Why some string inside `value` cannot reach a process or a file name (NUL, lone
    surrogates), or None. Iterative: a file is nested at most as deep as JSON allows."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\0" in item:
                return "contains a NUL byte"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "contains a lone surrogate escape (\\ud800-\\udfff)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def parse_job(name: str, raw: bytes, source: str, limits: Limits = Limits()) -> JobSpec:
    """Parse the bytes of job `name`'s file; `source` is the path shown in messages. Raises
    JobFileError, and nothing else, for any bytes."""
    document = _load(raw, source)
    if not isinstance(document, dict):
        raise JobFileError([f"{source}: must be a JSON object, got {type(document).__name__}"])

    resources, problems = parse_resources(document, source)
    values: dict[str, Any] = {"resources": resources} if resources.any() else {}
    for key, value in document.items():
        if key in RESOURCE_FIELDS:
            continue
        if key in FIELDS:
            target, convert = key, FIELDS[key]
        elif key in ALIASES:
            target, convert = ALIASES[key]
            if target in document:
                problems.append(f"{source}: field {key!r} is an alias of {target!r}; give only one of them")
                continue
        else:
            import difflib  # only a misspelt file pays for it

            hint = difflib.get_close_matches(key, [*FIELDS, *ALIASES, *RESOURCE_FIELDS], n=1, cutoff=0.6)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{source}: unknown field {_short_repr(key)}{suggestion}")
            continue
        text_problem = _text_problem(value)
        try:
            if text_problem:
                raise FieldError(text_problem)
            converted = convert(value)
            if target == _NUMPROCS and converted > limits.max_numprocs:
                raise FieldError(f"must be at most {limits.max_numprocs} (the daemon's max_numprocs), got {converted}")
            values[_SPEC_FIELD.get(target, target)] = converted
        except FieldError as bad:
            problems.append(f'{source}: field "{key}": {bad}')
    if "cmd" not in document:
        problems.append(f'{source}: field "cmd": is required')
    problems += schedule_problems(document, source) + container_problems(document, source)
    if problems:
        raise JobFileError(problems)
    spec = JobSpec(name=name, **{**values, **scheduled_defaults(document)})
    problems = readiness_problems(spec, source) + socket_problems(spec, source)
    if problems:
        raise JobFileError(problems)
    return spec


def host_errors(spec: JobSpec, source: str, user_uid: int | None = None, daemon_uid: int | None = None) -> list[str]:
    """Problems only this machine can tell: a missing working directory, an unknown user, a user
    switch the daemon has no right to make. `user_uid`: the uid the spec's `user` stands for, as
    the caller looked it up (NSS may be far away: not here), None when there is no such user."""
    problems = []
    if spec.workingdir is not None and not os.path.isdir(spec.workingdir):
        problems.append(f'{source}: field "workingdir": directory {spec.workingdir!r} does not exist')
    if spec.user is not None:
        if user_uid is None:
            problems.append(f'{source}: field "user": no such user {spec.user!r}')
        else:
            uid = os.geteuid() if daemon_uid is None else daemon_uid
            if uid != 0 and user_uid != uid:
                problems.append(f'{source}: field "user": running as {spec.user!r} needs a daemon started as root')
    return problems
