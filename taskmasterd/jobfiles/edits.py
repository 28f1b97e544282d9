"""Which edits of a job file restart what: the one table, read by people (README, "Which edits
restart what", is checked against it by tests/test_edits.py) and by `JobSpec.spawn_settings`
(tests check every field's class against it).

- live: the running instances take the new value at once, or the daemon uses it the next time
  it applies (the next stop, the next due time, the next run's readiness);
- new processes: a running instance must be replaced to get it. The job's restart mode applies
  it: all at once (each instance stopped, then started), or with `"rolling": true` a few at a
  time, each new run beside the old one until it is ready (lifecycle/rollout.py);
- instances: `numprocs` adds instances (the old ones untouched) or retires the last ones (stop
  signal first, SIGKILL after `stoptime`).
"""
from __future__ import annotations

LIVE = "live"
NEW_PROCESSES = "new processes"
INSTANCES = "instances"

# field -> (class, what exactly), in the README's order
EDITS: dict[str, tuple[str, str]] = {
    "cmd": (NEW_PROCESSES, ""),
    "numprocs": (INSTANCES, "added, or the last ones retired; an instance whose log path moves "
                            "(numprocs crossing 1) gets new processes"),
    "autostart": (LIVE, "read when the job is loaded; `\"socket\"` arms or disarms the held sockets at once"),
    "autorestart": (LIVE, "the next exit"),
    "exitcodes": (LIVE, "the next exit"),
    "starttime": (LIVE, "the next run"),
    "startretries": (LIVE, "the next failed start"),
    "stopsignal": (LIVE, "the next stop"),
    "stoptime": (LIVE, "the next stop"),
    "stdout": (NEW_PROCESSES, "the file an instance writes to"),
    "stderr": (NEW_PROCESSES, "the file an instance writes to"),
    "logmaxbytes": (LIVE, ""),
    "logbackups": (LIVE, ""),
    "env": (NEW_PROCESSES, ""),
    "workingdir": (NEW_PROCESSES, ""),
    "umask": (NEW_PROCESSES, ""),
    "user": (NEW_PROCESSES, ""),
    "inherit_env": (NEW_PROCESSES, ""),
    "memory_max": (LIVE, "new processes when the running cgroup lacks the controller"),
    "cpu_quota": (LIVE, "new processes when the running cgroup lacks the controller"),
    "tasks_max": (LIVE, "new processes when the running cgroup lacks the controller"),
    "nice": (NEW_PROCESSES, "given at the start"),
    "oom_score_adjust": (NEW_PROCESSES, "given at the start"),
    "rlimits": (NEW_PROCESSES, "given at the start"),
    "colonies": (LIVE, "the executor is updated, or registered again when its type, name or "
                          "location changed"),
    "depends_on": (LIVE, "the next start"),
    "ready": (LIVE, "the next run"),
    "ready_timeout": (LIVE, "the next run"),
    "healthcheck": (LIVE, "the running checks"),
    "on_unhealthy": (LIVE, ""),
    "watchdog": (LIVE, ""),
    "schedule": (LIVE, "the next due time"),
    "timezone": (LIVE, "the next due time"),
    "overlap": (LIVE, "the next due time"),
    "jitter": (LIVE, "the next due time"),
    "timeout": (LIVE, "the next run"),
    "catch_up": (LIVE, "the next start of the daemon"),
    "essential": (LIVE, ""),
    "sockets": (NEW_PROCESSES, "a socket added, removed, renamed or moved in the list (the others stay open, "
                               "never rebound); `backlog`, `mode`, `owner`, `group` change live"),
    "reuseport": (NEW_PROCESSES, ""),
    "rolling": (LIVE, "the next restart"),
    "max_unavailable": (LIVE, "the next restart"),
}


def needs_new_processes(field: str) -> bool:
    return EDITS[field][0] == NEW_PROCESSES
