"""Scheduled jobs on a real daemon, real processes and the real clock: every schedule here is of
seconds (6-field cron expressions, `@every 2s`), so no test waits for a wall-clock minute."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from taskmasterd.jobfiles.jobfile import JobFileError, parse_job
from taskmasterd.jobfiles.schedule_spec import host_timezone, next_due, parse_schedule
from taskmasterd.lifecycle.runs import HISTORY, RunBook, Run, run_result

from .support.ctl import ctl, err, out
from .support.daemon import ROOT, Daemon, free_port, wait_for, write_job
from .support.supervised import eventually, run, supervised

EVERY_SECOND = "* * * * * *"


def _marks(path) -> list[tuple[str, float]]:
    """The lines `start <time>` / `end <time>` a job appended to `path`."""
    if not path.exists():
        return []
    return [(word, float(when)) for word, when in (line.split() for line in path.read_text().splitlines() if line)]


def _logging(path, body: str) -> list[str]:
    """A command that marks its start and end in `path` around `body`."""
    return ["sh", "-c", f'echo start $(date +%s.%N) >> {path}; {body}; code=$?; echo end $(date +%s.%N) >> {path}; '
                        "exit $code"]


def _schedule(daemon: Daemon, job: str) -> dict:
    return daemon.status(job)["jobs"][0]["schedule"]


def _results(daemon: Daemon, job: str) -> list[str]:
    return [run["result"] for run in _schedule(daemon, job)["last_runs"]]


# --- the fields ----------------------------------------------------------------------------------


def _parse(document: dict):
    return parse_job("j", json.dumps(document).encode(), "j.tm.json")


def test_schedule_forms_and_what_a_scheduled_spec_says():
    assert parse_schedule("*/5 * * * *").expression == "*/5 * * * *"
    assert parse_schedule("*/15 * * * * *").kind == "cron"
    assert parse_schedule("@hourly").expression == "0 * * * *"
    assert parse_schedule("@daily").expression == "0 0 * * *"
    assert parse_schedule("@weekly").expression == "0 0 * * 0"
    assert parse_schedule("@monthly").expression == "0 0 1 * *"
    assert parse_schedule("@reboot").kind == "reboot"
    assert parse_schedule("@every 90s").interval == 90 and parse_schedule("@every 5m").interval == 300
    spec = _parse({"cmd": "true", "schedule": "@daily"})
    assert (spec.autostart, spec.autorestart, spec.starttime) == (False, "never", 0.0)
    assert _parse({"cmd": "true", "schedule": "@daily", "starttime": 2}).starttime == 2


@pytest.mark.parametrize("document, message", [
    ({"schedule": "61 * * * *"}, 'field "schedule": cronsim: Bad minute'),
    ({"schedule": "* 25 * * *"}, 'field "schedule": cronsim: Bad hour'),
    ({"schedule": "* * *"}, "must have 5 fields"),
    ({"schedule": "@sometimes"}, "unknown macro"),
    ({"schedule": "@every 0.5s"}, "must be from 1s"),
    ({"schedule": "@every soon"}, '"@every" needs a duration'),
    ({"schedule": "@daily", "timezone": "Mars/Olympus"}, 'field "timezone": is not a time zone'),
    ({"schedule": "@daily", "overlap": "pile"}, 'field "overlap": must be one of'),
    ({"schedule": "@daily", "timeout": 0}, 'field "timeout"'),
    ({"schedule": "@daily", "autorestart": "always"}, 'field "autorestart": does not apply to a scheduled job'),
    ({"schedule": "@daily", "autostart": True}, 'field "autostart": does not apply to a scheduled job'),
    ({"schedule": "@reboot", "catch_up": True}, '"@reboot" job has no due time to miss'),
    ({"schedule": "@daily", "essential": True}, 'field "essential": a scheduled job'),
    ({"overlap": "queue"}, 'field "overlap": only applies with a "schedule"'),
    ({"catch_up": True}, 'field "catch_up": only applies with a "schedule"'),
])
def test_bad_schedules_are_refused_naming_the_field(document, message):
    with pytest.raises(JobFileError) as caught:
        _parse({"cmd": "true", **document})
    assert message in str(caught.value)


def test_check_names_the_libraries_error(tmp_path):
    (tmp_path / "nightly.tm.json").write_text(json.dumps({"cmd": "true", "schedule": "0 2 * * 8"}))
    os.chmod(tmp_path, 0o755)
    result = subprocess.run([sys.executable, "-m", "taskmasterd", "--check", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'nightly.tm.json: field "schedule": cronsim: Bad day-of-week, got "0 2 * * 8"' in result.stdout


def test_spring_forward_day_as_cronsim_documents_it():
    """New York skips 02:00-03:00 on 2026-03-08. A 5-field job due at 02:30 runs at 03:00, right
    after the change (Debian cron's rule, which cronsim follows); on the next day at 02:30 again.
    A 6-field expression is not Debian's: cronsim schedules it on the real clock, so the day
    without a 02:30 has no run."""
    zone = ZoneInfo("America/New_York")
    before = datetime(2026, 3, 8, 1, 0, tzinfo=zone).timestamp()
    due = next_due(parse_schedule("30 2 * * *"), zone, before)
    assert datetime.fromtimestamp(due, zone).isoformat() == "2026-03-08T03:00:00-04:00"
    assert datetime.fromtimestamp(next_due(parse_schedule("30 2 * * *"), zone, due), zone).isoformat() == \
        "2026-03-09T02:30:00-04:00"
    assert datetime.fromtimestamp(next_due(parse_schedule("0 30 2 * * *"), zone, before), zone).isoformat() == \
        "2026-03-09T02:30:00-04:00"
    # an hourly job keeps its hours: 01:00 EST is followed by 03:00 EDT, one hour later
    one = datetime(2026, 3, 8, 1, 0, tzinfo=zone).timestamp()
    assert next_due(parse_schedule("@hourly"), zone, one) - one == 3600


def test_the_host_time_zone_keeps_its_dst_rules():
    assert host_timezone({"TZ": ":Asia/Tokyo"}).key == "Asia/Tokyo"
    local = host_timezone({})  # /etc/localtime, as a zone with rules, not today's fixed offset
    assert local.key == "localtime" or local.key == "UTC"
    assert host_timezone({"TZ": "Not/AZone"}).utcoffset(datetime(2026, 1, 1)) == local.utcoffset(datetime(2026, 1, 1))


def test_run_result():
    exited = {"index": 0, "state": "EXITED", "exitcode": 0, "signal": None, "description": "exited with code 0"}
    assert run_result([exited], frozenset({0}), None)[0] == "success"
    assert run_result([{**exited, "exitcode": 3}], frozenset({0}), None)[0] == "failed"
    assert run_result([{**exited, "exitcode": 3}], frozenset({3}), None)[0] == "success"
    assert run_result([{**exited, "exitcode": None, "signal": 9}], frozenset({0}), None)[0] == "failed"
    assert run_result([{**exited, "state": "FATAL"}], frozenset({0}), None)[0] == "failed"
    assert run_result([{**exited, "state": "STOPPED"}], frozenset({0}), "timed out")[0] == "timed out"
    assert run_result([exited, {**exited, "state": "RUNNING"}], frozenset({0}), None) is None
    assert run_result([{**exited, "state": "BACKOFF"}], frozenset({0}), None) is None  # a start retried


def test_the_last_ten_runs_are_kept_and_every_one_counted():
    book = RunBook()
    for number in range(HISTORY + 3):
        book.finished(Run("schedule", float(number)).end("success" if number % 2 else "failed", ""))
    document = book.document()
    assert HISTORY == 10 and len(document["last_runs"]) == 10
    assert document["runs_total"]["success"] + document["runs_total"]["failed"] == 13
    assert document["last_success"] is not None


# --- runs on a real daemon -----------------------------------------------------------------------


def test_due_runs_their_results_status_events_and_metrics(tmp_path):
    metrics_port = free_port()
    jobs = {
        "tick": {"cmd": _logging(tmp_path / "tick", "true"), "schedule": EVERY_SECOND},
        "failing": {"cmd": ["sh", "-c", f"echo ran >> {tmp_path / 'failing'}; exit 3"], "schedule": EVERY_SECOND},
        "three_ok": {"cmd": ["sh", "-c", "exit 3"], "schedule": EVERY_SECOND, "exitcodes": [3]},
        "pair": {"cmd": _logging(tmp_path / "pair", "sleep 0.2"), "schedule": "@every 2s", "numprocs": 2},
        "later": {"cmd": ["true"], "schedule": "0 0 0 1 1 *", "timezone": "Pacific/Kiritimati"},
    }
    with Daemon(tmp_path, jobs, args=["--metrics", f"127.0.0.1:{metrics_port}"]) as d:
        wait_for(lambda: _results(d, "tick").count("success") >= 3, what="three runs of tick")
        wait_for(lambda: len(_results(d, "failing")) >= 2 and len(_results(d, "pair")) >= 1, what="the others")
        # a run per due time, each starting within the second it was due
        starts = [when for word, when in _marks(tmp_path / "tick") if word == "start"]
        assert len({int(when) for when in starts}) == len(starts)
        assert all(when - int(when) < 0.8 for when in starts)  # sh and date included, on a busy machine
        # a run's exit code decides (exitcodes), and a failed run is not restarted (autorestart
        # does not apply): one process per due time
        assert set(_results(d, "failing")) == {"failed"} and set(_results(d, "three_ok")) == {"success"}
        failing = _schedule(d, "failing")
        ran = (tmp_path / "failing").read_text().count("ran")
        assert ran <= failing["runs_total"]["failed"] + 1
        assert d.instances("failing")[0]["restarts"] == 0
        # a run starts every instance; @every keeps its interval
        pair = [when for word, when in _marks(tmp_path / "pair") if word == "start"]
        assert len(pair) >= 2 and max(pair[:2]) - min(pair[:2]) < 0.8
        # status: next run, last runs with start, duration, result
        tick = _schedule(d, "tick")
        assert 0 <= tick["next_run"] - time.time() <= 1.5
        last = tick["last_runs"][-1]
        assert last["result"] == "success" and 0 < last["duration"] < 1 and abs(last["start"] - time.time()) < 5
        later = _schedule(d, "later")
        assert datetime.fromtimestamp(later["next_run"], ZoneInfo("Pacific/Kiritimati")).strftime("%m-%d %H:%M:%S") \
            == "01-01 00:00:00" and later["last_runs"] == []
        assert ctl(d, "status", "failing").returncode == 3  # a failed last run: not as wanted
        assert ctl(d, "status", "three_ok").returncode == 0
        table = out(ctl(d, "status", "tick"))
        assert "next run" in table and "last runs:" in table and "success" in table
        # events for each run
        events = d.request("events", data=json.dumps({"last": 1000}).encode())
        runs = [e for e in json.loads(events["data"])["events"] if e["kind"] == "run" and e["job"] == "tick"]
        assert {"started", "success"} <= {e["new"] for e in runs}
        # metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
            text = response.read().decode()
        assert 'taskmaster_job_runs_total{job="failing",result="failed"}' in text
        assert 'taskmaster_job_last_success_timestamp_seconds{job="tick"}' in text
        assert 'taskmaster_job_last_success_timestamp_seconds{job="failing"}' not in text


def test_overlap_skip_queue_replace_and_timeout(tmp_path):
    stubborn = "trap '' TERM; sleep 30 & wait; sleep 30"
    jobs = {
        "skip": {"cmd": _logging(tmp_path / "skip", "sleep 2.2"), "schedule": EVERY_SECOND},
        "queue": {"cmd": _logging(tmp_path / "queue", "sleep 1.5"), "schedule": EVERY_SECOND, "overlap": "queue"},
        "replace": {"cmd": ["sh", "-c", "trap 'exit 143' TERM; sleep 30 & wait"], "schedule": "*/2 * * * * *",
                    "overlap": "replace"},
        "slow": {"cmd": ["sleep", "30"], "schedule": EVERY_SECOND, "timeout": 1},
        "stubborn": {"cmd": ["sh", "-c", stubborn], "schedule": "@every 30s", "timeout": 1, "stoptime": 1},
    }
    with Daemon(tmp_path, jobs) as d:
        assert ctl(d, "start", "stubborn").returncode == 0  # the first run now, not in 30 s
        wait_for(lambda: "skipped" in _results(d, "skip") and "success" in _results(d, "skip"), what="a skipped run")
        wait_for(lambda: _results(d, "queue").count("success") >= 2, timeout=30, what="queued runs")
        wait_for(lambda: "replaced" in _results(d, "replace"), timeout=30, what="a replaced run")
        wait_for(lambda: "timed out" in _results(d, "slow"), what="a timed-out run")
        wait_for(lambda: "timed out" in _results(d, "stubborn"), what="a stubborn run timed out")
        # skip: never two runs at once
        marks = _marks(tmp_path / "skip")
        depth = 0
        for word, _ in marks:
            depth += 1 if word == "start" else -1
            assert depth <= 1
        # queue: one waits, and starts as soon as the run under way ends; never two at once
        queue = _marks(tmp_path / "queue")
        ends = [when for word, when in queue if word == "end"]
        starts = [when for word, when in queue if word == "start"][1:]
        assert starts and all(0 <= start - end < 0.75 for start, end in zip(starts, ends))
        assert "skipped" in _results(d, "queue")  # a third due time finds one already waiting
        # replace: the old run was stopped with its stop signal and the new one started
        replaced = next(run for run in _schedule(d, "replace")["last_runs"] if run["result"] == "replaced")
        assert 1.5 < replaced["duration"] < 3.5
        # timeout: stopped after it; a process deaf to its stop signal is killed after stoptime
        slow = next(run for run in _schedule(d, "slow")["last_runs"] if run["result"] == "timed out")
        assert 0.9 < slow["duration"] < 2.5
        hard = next(run for run in _schedule(d, "stubborn")["last_runs"] if run["result"] == "timed out")
        assert 1.9 < hard["duration"] < 4 and "SIGKILL" in hard["detail"]
        assert d.instances("stubborn")[0]["pid"] is None


def test_start_runs_a_scheduled_job_now_once(tmp_path):
    jobs = {"manual": {"cmd": _logging(tmp_path / "manual", "sleep 0.3"), "schedule": "0 0 0 1 1 *"},
            "broken": {"cmd": ["/nonexistent/program"], "schedule": "0 0 0 1 1 *", "startretries": 1}}
    with Daemon(tmp_path, jobs) as d:
        assert d.instances("manual")[0]["state"] == "STOPPED"  # a scheduled job does not autostart
        assert ctl(d, "start", "manual").returncode == 0
        wait_for(lambda: _results(d, "manual") == ["success"], what="the run")
        time.sleep(1)  # nothing else comes: not restarted, not run again
        assert [word for word, _ in _marks(tmp_path / "manual")] == ["start", "end"]
        assert _schedule(d, "manual")["last_runs"][0]["cause"] == "start command"
        # startretries applies to a start that fails: 1 + 1 attempts, then the run failed
        ctl(d, "start", "broken")
        wait_for(lambda: _results(d, "broken") == ["failed"], timeout=30, what="the failed start")
        assert d.instances("broken")[0]["state"] == "FATAL"
        assert "gave up after 2 attempts" in _schedule(d, "broken")["last_runs"][0]["detail"]
        # repair: a run now when the last one failed, nothing when it succeeded
        repaired = ctl(d, "repair", "manual")
        assert repaired.returncode == 0 and "nothing to do" in out(repaired) + err(repaired)
        assert len(_results(d, "manual")) == 1
        ctl(d, "repair", "broken")
        wait_for(lambda: _results(d, "broken") == ["failed", "failed"], timeout=30, what="a repair run")
        # a reload that changes the schedule moves the next run; more instances wait for the next run
        write_job(d.jobs_dir, "manual", {**jobs["manual"], "schedule": "*/30 * * * * *", "numprocs": 2})
        wait_for(lambda: _schedule(d, "manual")["next_run"] - time.time() <= 30, what="the new schedule")
        assert [inst["state"] for inst in d.instances("manual")] == ["EXITED", "STOPPED"]


def test_a_due_time_reached_late_is_missed_unless_catch_up_and_a_clock_set_back_replans(tmp_path):
    """In process, with the scheduler's alarm rung by hand: the host that slept and the clock
    stepped back are hard to make on a shared test machine."""
    yearly = "0 0 0 1 1 *"

    async def scenario():
        jobs = {"caught": {"cmd": ["true"], "schedule": yearly, "catch_up": True},
                "missed": {"cmd": ["true"], "schedule": yearly}}
        async with supervised(tmp_path, jobs) as sup:
            scheduler = sup.scheduler
            for name in jobs:  # due a minute ago: the host was asleep
                scheduler._plan(scheduler.jobs[name], time.time() - 60)
            scheduler._due(False)
            await eventually(lambda: sup.status("caught").value["jobs"][0]["schedule"]["last_runs"])
            caught = sup.status("caught").value["jobs"][0]["schedule"]
            assert [(r["cause"], r["result"]) for r in caught["last_runs"]] == [("catch-up", "success")]
            assert sup.status("missed").value["jobs"][0]["schedule"]["last_runs"] == []
            assert caught["next_run"] > time.time() + 86400  # planned from now: next year
            # the clock was set back a year: the next due time comes from the new now
            table = scheduler.jobs["missed"]
            scheduler._plan(table, table.following(time.time() + 400 * 86400))
            scheduler._due(True)
            assert table.nominal < time.time() + 366 * 86400

    run(scenario())


def test_catch_up_runs_a_missed_due_time_once_at_start(tmp_path):
    hourly = "0 0 * * * *"
    jobs = {"catch": {"cmd": _logging(tmp_path / "catch", "true"), "schedule": hourly, "catch_up": True},
            "nocatch": {"cmd": _logging(tmp_path / "nocatch", "true"), "schedule": hourly},
            "reboot": {"cmd": _logging(tmp_path / "reboot", "true"), "schedule": "@reboot"}}
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # the last runs two hours ago: two due times passed while the daemon was down
    (state / "schedule.json").write_text(json.dumps({"catch": time.time() - 7200, "nocatch": time.time() - 7200}))
    d = Daemon(tmp_path, jobs)
    with d:
        wait_for(lambda: _results(d, "catch") == ["success"] and _results(d, "reboot") == ["success"],
                 what="the catch-up and @reboot runs")
        assert _schedule(d, "catch")["last_runs"][0]["cause"] == "catch-up"
        time.sleep(0.5)
        assert _results(d, "nocatch") == [] and not (tmp_path / "nocatch").exists()
        assert len(_marks(tmp_path / "catch")) == 2  # once, however many were missed
        recorded = json.loads((state / "schedule.json").read_text())
        assert recorded["catch"] > time.time() - 7200 + 1
    # a killed daemon leaves a whole file behind (atomic replace), and the next start reads it
    d2 = Daemon(tmp_path, jobs)
    with d2:
        wait_for(lambda: _results(d2, "reboot") == ["success"], what="@reboot again")
        d2.signal(signal.SIGKILL)
        d2.proc.wait(30)
    json.loads((state / "schedule.json").read_text())
    assert not [name for name in os.listdir(state) if name.startswith(".schedule.json")]


def test_jitter_delays_each_run_up_to_it(tmp_path):
    jobs = {"fleet": {"cmd": _logging(tmp_path / "fleet", "true"), "schedule": EVERY_SECOND, "jitter": 0.6}}
    with Daemon(tmp_path, jobs) as d:
        wait_for(lambda: len(_results(d, "fleet")) >= 6, timeout=30, what="six runs")
    offsets = [when - int(when) for word, when in _marks(tmp_path / "fleet") if word == "start"]
    assert all(offset < 0.9 for offset in offsets)  # never past the jitter (and a spawn's time)
    assert max(offsets) - min(offsets) > 0.05  # spread, not all at the due time


def test_one_timer_for_every_scheduled_job(tmp_path):
    """Two hundred scheduled jobs between their runs hold one timerfd, and no loop timer each."""

    def timerfds() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
            except FileNotFoundError:  # the descriptor listdir itself held
                pass
        return count

    async def scenario():
        jobs = {f"y{i}": {"cmd": ["true"], "schedule": "0 0 0 1 1 *", "stdout": None, "stderr": None}
                for i in range(200)}
        before = timerfds()
        async with supervised(tmp_path, jobs, watch=False) as sup:
            assert len(sup.scheduler.jobs) == 200
            assert timerfds() == before + 1
            assert len(asyncio.get_running_loop()._scheduled) < 10  # asyncio's own heap of timers

    run(scenario())
