"""The one table of which job-file edits apply live and which need new processes (jobfiles/edits.py):
every field is in it, `JobSpec.spawn_settings` agrees with it field by field, and the README's
table says the same."""
import re
from pathlib import Path

import pytest

from taskmasterd.jobfiles.edits import EDITS, INSTANCES, LIVE, NEW_PROCESSES
from taskmasterd.jobfiles.jobfile import FIELDS, parse_job
from taskmasterd.jobfiles.resources import RESOURCE_FIELDS

README = Path(__file__).resolve().parents[1] / "README.md"

# field -> (what it needs beside it, a value other than its default)
CHANGES = {
    "cmd": ("", '"y"'), "numprocs": ("", "2"), "autostart": ("", "false"), "autorestart": ("", '"always"'),
    "exitcodes": ("", "[0, 2]"), "starttime": ("", "3"), "startretries": ("", "1"), "stopsignal": ("", '"INT"'),
    "stoptime": ("", "2"), "stdout": ("", '"a.log"'), "stderr": ("", "null"), "logmaxbytes": ("", "4096"),
    "logbackups": ("", "1"), "env": ("", '{"A": "1"}'), "workingdir": ("", '"/tmp"'), "umask": ("", '"077"'),
    "user": ("", '"nobody"'), "inherit_env": ("", "true"), "memory_max": ("", '"64M"'), "cpu_quota": ("", '"50%"'),
    "tasks_max": ("", "10"), "nice": ("", "5"), "oom_score_adjust": ("", "100"), "rlimits": ("", '{"core": 0}'),
    "colonies": ("", "false"), "depends_on": ("", '["db"]'), "ready": ("", '"notify"'),
    "ready_timeout": ('"ready": "notify"', "5"), "healthcheck": ("", '{"tcp": "127.0.0.1:1"}'),
    "on_unhealthy": ("", '"none"'), "watchdog": ('"ready": "notify"', "5"),
    "schedule": ("", '"@hourly"'), "timezone": ('"schedule": "@hourly"', '"UTC"'),
    "overlap": ('"schedule": "@hourly"', '"queue"'), "jitter": ('"schedule": "@hourly"', "1"),
    "timeout": ('"schedule": "@hourly"', "5"), "catch_up": ('"schedule": "@hourly"', "true"),
    "essential": ("", "true"), "sockets": ("", '[{"listen": "127.0.0.1:8080"}]'),
    "reuseport": ('"sockets": [{"listen": "127.0.0.1:8080"}]', "true"),
    "rolling": ("", "true"), "max_unavailable": ("", "2"),
}


def parse(*fields: str):
    body = ", ".join(['"cmd": "x"', *(f for f in fields if f)])
    return parse_job("web", ("{" + body + "}").encode(), "web.tm.json")


def test_every_field_has_its_row():
    assert set(EDITS) == set(FIELDS) | set(RESOURCE_FIELDS) == set(CHANGES)
    assert {how for how, _ in EDITS.values()} == {LIVE, NEW_PROCESSES, INSTANCES}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_spawn_settings_change_exactly_for_the_fields_that_need_new_processes(field):
    beside, value = CHANGES[field]
    if field == "cmd":
        before, after = parse(beside), parse_job("web", b'{"cmd": "y"}', "web.tm.json")
    else:
        before, after = parse(beside), parse(beside, f'"{field}": {value}')
    assert before != after
    assert (before.spawn_settings() != after.spawn_settings()) == (EDITS[field][0] == NEW_PROCESSES), field


def test_a_socket_setting_changes_live_but_the_list_does_not():
    base = parse('"sockets": [{"listen": "unix:/run/a.sock"}, {"listen": "127.0.0.1:80"}]')
    live = parse('"sockets": [{"listen": "unix:/run/a.sock", "mode": "0600", "backlog": 5}, {"listen": "127.0.0.1:80"}]')
    assert base.spawn_settings() == live.spawn_settings()
    for other in ('[{"listen": "127.0.0.1:80"}, {"listen": "unix:/run/a.sock"}]',  # moved: other descriptors
                  '[{"listen": "unix:/run/a.sock", "name": "x"}, {"listen": "127.0.0.1:80"}]',
                  '[{"listen": "unix:/run/a.sock"}]'):
        assert parse(f'"sockets": {other}').spawn_settings() != base.spawn_settings()


def test_the_readme_table_says_the_same():
    text = README.read_text()
    section = text.split("### Which edits restart what", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([a-z ]+) \|", section, re.M))
    assert rows == {field: how for field, (how, _) in EDITS.items()}
