"""The job-file fields of readiness and health: `depends_on`, `ready`, `ready_timeout`,
`healthcheck`, `on_unhealthy`, `watchdog`. Pure logic, like the rest of the job-file model.

`jobfile.FIELDS` takes `READINESS_FIELDS` (one converter per field); `readiness_problems` checks
the rules that join several fields, once the spec is built. None of these fields is a spawn
setting: a change is applied to a running instance by reload, without restarting it.
"""
from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from .fields import FieldError, command_words, one_of, refuse, timer_seconds
from .names import job_name_error

READY_MODES = ("starttime", "notify", "healthy")
CONDITIONS = ("running", "healthy", "completed")
ON_UNHEALTHY = ("restart", "none")
MAX_DEPENDENCIES = 100
MAX_RETRIES = 1000
MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class Dependency:
    job: str
    condition: str = "running"


@dataclass(frozen=True, slots=True)
class CmdCheck:
    argv: tuple[str, ...]

    def describe(self) -> str:
        return "cmd " + " ".join(self.argv)


@dataclass(frozen=True, slots=True)
class TcpCheck:
    host: str  # an IPv6 address without its brackets
    port: int

    def describe(self) -> str:
        return f"tcp {netloc(self.host, self.port)}"


@dataclass(frozen=True, slots=True)
class HttpCheck:
    host: str
    port: int
    target: str  # the request target: path and query, e.g. "/health?full=1"

    def describe(self) -> str:
        return f"http http://{netloc(self.host, self.port)}{self.target}"


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    """Docker's HEALTHCHECK: `retries` failures in a row make an instance unhealthy, one pass makes
    it healthy; failures within `start_period` of the start do not count until a check has passed.
    Checks are `start_interval` apart until the first verdict, then `interval` apart, each measured
    from the end of the previous check (the first one `start_interval` after the start).

    Two defaults differ from Docker's, so that a check never kills what is still booting and
    still catches what hangs: `start_period` 30 s (a database or a JVM service opens its port
    within half a minute; Docker's 0 let `retries` failures one second apart kill it again and
    again), and `timeout` 5 s (a check is a quick question; with Docker's 30 s three timed-out
    checks alone took a minute and a half). A service hung at boot is restarted within
    30 + 3 × (1 + 5) = 48 s."""

    probe: CmdCheck | TcpCheck | HttpCheck
    interval: float = 30.0
    timeout: float = 5.0
    retries: int = 3
    start_period: float = 30.0
    start_interval: float = 1.0


def netloc(host: str, port: int) -> str:
    """`host:port` as a URL or a Host header writes it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- converters: each returns the normalized value or raises FieldError --------------------------

def _keyed(key: str, convert: Callable[[Any], Any], value: Any) -> Any:
    """`convert(value)` for the key `key` of an object field: its reason names the key."""
    try:
        return convert(value)
    except FieldError as bad:
        raise refuse(f'"{key}" {bad}') from None


def _depends_on(value: Any) -> tuple[Dependency, ...]:
    if not isinstance(value, list):
        raise refuse('must be a list of job names or {"job": …, "condition": …} objects', value)
    if len(value) > MAX_DEPENDENCIES:
        raise refuse(f"must name at most {MAX_DEPENDENCIES} jobs, got {len(value)}")
    dependencies: dict[str, Dependency] = {}
    for item in value:
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"job", "condition"})
            if unknown:
                raise refuse(f'unknown key {unknown[0]!r} (an entry has "job" and "condition")')
            if "job" not in item:
                raise refuse('an object entry needs "job"', item)
            name, condition = item["job"], item.get("condition", "running")
            if condition not in CONDITIONS:
                raise refuse('"condition" must be one of ' + ", ".join(f'"{c}"' for c in CONDITIONS), condition)
        else:
            name, condition = item, "running"
        if not isinstance(name, str):
            raise refuse("a job name must be a string", name)
        error = job_name_error(name)
        if error:
            raise refuse(error)
        if name in dependencies:
            raise refuse(f"names {name!r} twice")
        dependencies[name] = Dependency(name, condition)
    return tuple(dependencies.values())


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _host(text: str) -> str:
    """An IP address (IPv6 in brackets) or a DNS name; the brackets are removed."""
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise refuse("must have an IPv6 address in the brackets", text) from None
    labels = text.split(".")
    if all(label.isdigit() for label in labels):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise refuse("must have a valid IPv4 address", text) from None
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise refuse("must have a host name or an IP address (an IPv6 address in brackets)", text)
    return text


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise refuse("must have a port 1…65535", text)
    return int(text)


def _address(value: Any) -> TcpCheck:
    if not isinstance(value, str) or ":" not in value:
        raise refuse('must be a "host:port" string', value)
    host, _, port = value.rpartition(":")
    return TcpCheck(_host(host), _port(port))


def _url(value: Any) -> HttpCheck:
    # Printable ASCII without spaces: nothing that could end the request line or add a header.
    if not isinstance(value, str) or len(value) > MAX_URL or not re.fullmatch(r"[!-~]+", value):
        raise refuse(f"must be a URL of at most {MAX_URL} printable ASCII characters", value)
    if value[:7].lower() != "http://":
        raise refuse("must be an http:// URL (https is not supported)", value)
    parts = urlsplit(value)
    if "@" in parts.netloc or parts.fragment:
        raise refuse("must not carry a user, a password or a #fragment", value)
    if parts.netloc.endswith("]") or ":" not in parts.netloc:
        host, port = parts.netloc, "80"
    else:
        host, _, port = parts.netloc.rpartition(":")
    if not host:
        raise refuse("needs a host", value)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return HttpCheck(_host(host), _port(port), target)


def _check_cmd(value: Any) -> CmdCheck:
    return CmdCheck(command_words(value))  # NUL bytes: refused for every field by jobfile.parse_job


_PROBES: dict[str, Callable[[Any], CmdCheck | TcpCheck | HttpCheck]] = {
    "cmd": _check_cmd, "tcp": _address, "http": _url}


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETRIES:
        raise refuse(f"must be an integer 1…{MAX_RETRIES}", value)
    return value


_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "interval": timer_seconds,
    "timeout": timer_seconds,
    "retries": _retries,
    "start_period": lambda v: timer_seconds(v, zero_ok=True),
    "start_interval": timer_seconds,
}


def _healthcheck(value: Any) -> HealthCheckSpec:
    if not isinstance(value, dict):
        raise refuse('must be an object with one of "cmd", "tcp", "http"', value)
    known = {*_PROBES, *_SETTINGS}
    unknown = sorted(set(value) - known)
    if unknown:
        import difflib  # only a misspelt file pays for it

        hint = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.6)
        raise refuse(f"unknown key {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    kinds = [kind for kind in _PROBES if kind in value]
    if len(kinds) != 1:
        raise refuse('needs exactly one of "cmd", "tcp", "http"' + (f", got {' and '.join(kinds)}" if kinds else ""))
    settings = {key: _keyed(key, convert, value[key]) for key, convert in _SETTINGS.items() if key in value}
    return HealthCheckSpec(probe=_keyed(kinds[0], _PROBES[kinds[0]], value[kinds[0]]), **settings)


READINESS_FIELDS: dict[str, Callable[[Any], Any]] = {
    "depends_on": _depends_on,
    "ready": one_of(READY_MODES),
    "ready_timeout": timer_seconds,
    "healthcheck": _healthcheck,
    "on_unhealthy": one_of(ON_UNHEALTHY),
    "watchdog": timer_seconds,
}


# --- rules across fields, and what they mean for an instance -------------------------------------


class Readiness(Protocol):
    """The fields of a job's spec these rules read (a `JobSpec` has them)."""

    @property
    def ready(self) -> str: ...
    @property
    def ready_timeout(self) -> float | None: ...
    @property
    def starttime(self) -> float: ...
    @property
    def healthcheck(self) -> HealthCheckSpec | None: ...
    @property
    def watchdog(self) -> float | None: ...


def ready_deadline(spec: Readiness) -> float | None:
    """How long a `notify` or `healthy` instance may take to be ready: `ready_timeout`, else
    `starttime`; None (no deadline) when that is 0."""
    deadline = spec.ready_timeout if spec.ready_timeout is not None else spec.starttime
    return deadline or None


def readiness_problems(spec: Readiness, source: str) -> list[str]:
    """What no single field can tell: fields that only mean something together."""
    problems = []
    if spec.watchdog is not None and spec.ready != "notify":
        problems.append(f'{source}: field "watchdog": needs "ready": "notify" (the program pings the '
                        'watchdog through $NOTIFY_SOCKET)')
    if spec.ready_timeout is not None and spec.ready == "starttime":
        problems.append(f'{source}: field "ready_timeout": only applies with "ready": "notify" or "healthy"')
    if spec.ready == "healthy":
        deadline = ready_deadline(spec)
        if spec.healthcheck is None:
            problems.append(f'{source}: field "ready": "healthy" needs a "healthcheck"')
        elif deadline is not None and deadline <= spec.healthcheck.start_interval:
            which = "ready_timeout" if spec.ready_timeout is not None else "starttime"
            problems.append(
                f'{source}: field "ready": "healthy" must pass a check within {deadline:g}s ("{which}"), but the '
                f'first check runs {spec.healthcheck.start_interval:g}s after the start ("start_interval"); '
                'give a longer "ready_timeout"')
    return problems


def effective_healthcheck(spec: Readiness) -> HealthCheckSpec | None:
    """The check an instance runs. With `ready: "healthy"` its start period lasts at least until the
    ready deadline: a failure before the first pass is not yet a verdict, the deadline is."""
    check = spec.healthcheck
    if check is None or spec.ready != "healthy":
        return check
    deadline = ready_deadline(spec)
    return replace(check, start_period=max(check.start_period, math.inf if deadline is None else deadline))
