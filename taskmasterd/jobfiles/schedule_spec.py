"""The job-file fields of scheduled jobs: `schedule`, `timezone`, `overlap`, `jitter`, `timeout`,
`catch_up`. Pure logic, like the rest of the job-file model.

A cron expression is parsed, and its next due times computed, by cronsim (5 fields, or 6 with
the seconds first; Debian cron's day-of-month/day-of-week rule and its handling of DST
transitions): no cron arithmetic of our own. The macros `@hourly` … `@monthly` are the standard
cron expressions they stand for; `@reboot` runs once when the daemon loads the job; `@every 90s`
runs at a fixed interval from the previous due time.

A scheduled job never autostarts and never autorestarts: its spec says so (`autostart` false,
`autorestart` "never"), and a file that sets either beside `schedule` is refused. Its `starttime`
defaults to 0, so a run that ends at once is a run that ended, not a failed start: `startretries`
covers a start that fails (the program cannot be spawned), never a run that fails.
"""
from __future__ import annotations

import os
import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Callable

from .fields import boolean, one_of, refuse, timer_seconds

OVERLAP_POLICIES = ("skip", "queue", "replace")
MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
REBOOT = "@reboot"
_EVERY = re.compile(r"@every\s+(\d+(?:\.\d+)?)(s|m|h|d)\Z")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MIN_EVERY = 1.0  # seconds: a shorter interval is a busy loop, not a schedule
MAX_EVERY = 366 * 86400.0
MAX_EXPRESSION = 256
SCHEDULED_FIELDS = ("timezone", "overlap", "jitter", "timeout", "catch_up")  # only with `schedule`
NOT_WITH_SCHEDULE = {"autostart": "a scheduled job starts at its due times",
                     "autorestart": "a scheduled job is started by its schedule, and a run that ends is over",
                     "restart": "a scheduled job is started by its schedule, and a run that ends is over"}


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a job runs: `kind` is "cron" (`expression`, 6 fields), "every" (`interval` seconds)
    or "reboot"; `text` is what the file said."""

    text: str
    kind: str
    expression: str = ""
    interval: float = 0.0


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    schedule: Schedule
    timezone: str | None = None  # an IANA name; None: the host's
    overlap: str = "skip"
    jitter: float = 0.0
    timeout: float | None = None
    catch_up: bool = False


def cron_error(expression: str) -> str | None:
    """What cronsim says is wrong with a cron expression, or None when it parses."""
    from cronsim import CronSim, CronSimError

    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        return f"cronsim: {exc}"
    return None


def parse_schedule(value: Any) -> Schedule:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_EXPRESSION:
        raise refuse(f'must be a cron expression, "@hourly"-like macro or "@every 5m" (at most '
                   f"{MAX_EXPRESSION} characters)", value)
    text = value.strip()
    lowered = text.lower()
    if lowered == REBOOT:
        return Schedule(text, "reboot")
    if lowered.startswith("@every"):
        match = _EVERY.match(lowered)
        if match is None:
            raise refuse('"@every" needs a duration like "90s", "5m", "2h" or "1d"', value)
        interval = float(match.group(1)) * _UNIT[match.group(2)]
        if not MIN_EVERY <= interval <= MAX_EVERY:
            raise refuse(f'"@every" must be from {MIN_EVERY:g}s to {MAX_EVERY / 86400:g} days', value)
        return Schedule(text, "every", interval=interval)
    if lowered.startswith("@"):
        if lowered not in MACROS:
            raise refuse("unknown macro (use @hourly, @daily, @weekly, @monthly, @yearly, @reboot or @every)", value)
        return Schedule(text, "cron", expression=MACROS[lowered])
    fields = text.split()
    if len(fields) not in (5, 6):
        raise refuse(f"must have 5 fields (minute hour day month weekday) or 6 (seconds first), "
                   f"has {len(fields)}", value)
    error = cron_error(text)
    if error is not None:
        raise refuse(error, value)
    return Schedule(text, "cron", expression=" ".join(fields))


def parse_timezone(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise refuse('must be an IANA time zone name like "Europe/Paris"', value)
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise refuse("is not a time zone this host knows (an IANA name like \"Europe/Paris\")", value) from None
    return value


SCHEDULE_FIELDS: dict[str, Callable[[Any], Any]] = {
    "schedule": parse_schedule,
    "timezone": parse_timezone,
    "overlap": one_of(OVERLAP_POLICIES),
    "jitter": lambda v: timer_seconds(v, zero_ok=True),
    "timeout": timer_seconds,
    "catch_up": boolean,
}


def schedule_problems(document: dict[str, Any], source: str) -> list[str]:
    """What no single field can tell: the scheduling fields without a schedule, and the fields
    a scheduled job cannot have."""
    if "schedule" not in document:
        return [f'{source}: field "{key}": only applies with a "schedule"' for key in SCHEDULED_FIELDS if key in document]
    problems = [f'{source}: field "{key}": does not apply to a scheduled job ({why})'
                for key, why in NOT_WITH_SCHEDULE.items() if key in document]
    if document.get("catch_up") is True and str(document["schedule"]).strip().lower() == REBOOT:
        problems.append(f'{source}: field "catch_up": an "@reboot" job has no due time to miss')
    return problems


def scheduled_defaults(document: dict[str, Any]) -> dict[str, Any]:
    """What a scheduled job's spec says beyond its file: no autostart, no autorestart, and a
    starttime of 0 unless the file gives one (a run is not a failed start for ending quickly)."""
    if "schedule" not in document:
        return {}
    defaults: dict[str, Any] = {"autostart": False, "autorestart": "never"}
    if "starttime" not in document and "startTime" not in document:
        defaults["starttime"] = 0.0
    return defaults


def host_timezone(environ: dict[str, str] | os._Environ[str] = os.environ) -> tzinfo:
    """The host's time zone with its DST rules: $TZ when it names a zone, else /etc/localtime,
    else UTC. (A fixed offset, as `datetime.now().astimezone()` gives, would ignore DST.)"""
    name = environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as file:
            return zoneinfo.ZoneInfo.from_file(file, key="localtime")
    except (OSError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def zone_of(spec: ScheduleSpec, host: tzinfo) -> tzinfo:
    """The zone `spec`'s expression is read in: its `timezone`, else `host` (host_timezone())."""
    return host if spec.timezone is None else zoneinfo.ZoneInfo(spec.timezone)


def next_due(schedule: Schedule, zone: tzinfo, after: float) -> float | None:
    """The first due time (Unix time) strictly after `after`, by cronsim for a cron expression;
    None for `@reboot` (no due time) or an expression that matches nothing in the next 50 years."""
    if schedule.kind == "every":
        return after + schedule.interval
    if schedule.kind != "cron":
        return None
    from cronsim import CronSim

    try:
        return next(CronSim(schedule.expression, datetime.fromtimestamp(int(after), zone))).timestamp()
    except StopIteration:
        return None
