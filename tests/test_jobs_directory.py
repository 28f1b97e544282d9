"""The jobs directory on a deploy's bad day: special files, a swapped directory, an editor's save,
jobs added with ln and ln -s — through the real daemon and its inotify watch."""
import json
import os
import time

import pytest

from .support.ctl import ctl, out
from .support.daemon import Daemon, wait_for, write_job

SLEEP = {"cmd": "sleep 300", "starttime": 0, "stdout": None, "stderr": None}


def pid_of(daemon, job):
    jobs = {j["name"]: j for j in daemon.status()["jobs"]}
    instances = jobs.get(job, {}).get("instances") or [{}]
    return instances[0].get("pid")


def states(daemon):
    return {job["name"]: job["state"] for job in daemon.status()["jobs"]}


def test_a_fifo_or_a_link_to_dev_zero_neither_hangs_nor_exhausts_the_daemon(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    os.mkfifo(jobs / "fifo.tm.json")
    (jobs / "zero.tm.json").symlink_to("/dev/zero")
    with Daemon(tmp_path, {"ok": SLEEP}) as daemon:
        status = {job["name"]: job for job in daemon.status()["jobs"]}
        assert status["ok"]["state"] == "RUNNING"
        for name in ("fifo", "zero"):
            assert status[name]["state"] == "INVALID" and "not a regular file" in status[name]["error"]
        os.mkfifo(jobs / "late.tm.json")  # noticed live too
        wait_for(lambda: states(daemon).get("late") == "INVALID", 5, what="the new FIFO refused")
        reply = daemon.request("start", "late")
        assert reply["response"] == "fail" and b"invalid" in reply["error"]


def test_a_swapped_jobs_directory_rearms_the_watch_and_keeps_unchanged_jobs(tmp_path):
    with Daemon(tmp_path, {"keep": SLEEP, "gone": SLEEP}) as daemon:
        keep = pid_of(daemon, "keep")
        new = tmp_path / "jobs.new"
        new.mkdir()
        write_job(new, "keep", SLEEP)
        write_job(new, "added", SLEEP)
        os.rename(tmp_path / "jobs", tmp_path / "jobs.old")  # the deploy's rename dance
        time.sleep(0.3)  # a moment with no jobs directory at all: nothing is stopped for it
        assert set(states(daemon)) == {"keep", "gone"} and pid_of(daemon, "keep") == keep
        os.rename(new, tmp_path / "jobs")
        wait_for(lambda: set(states(daemon)) == {"keep", "added"}, 10, what="rescan of the new directory")
        assert pid_of(daemon, "keep") == keep
        write_job(tmp_path / "jobs", "later", SLEEP)  # and the new directory is watched
        wait_for(lambda: "later" in states(daemon), 5, what="a job dropped in the new directory")


def test_a_symlinked_jobs_directory_swapped_with_ln_sfn(tmp_path):
    releases = tmp_path / "releases"
    one, two = releases / "1", releases / "2"
    for release in (one, two):
        release.mkdir(parents=True)
        write_job(release, "keep", SLEEP)
    write_job(two, "fresh", SLEEP)
    (tmp_path / "jobs").symlink_to(one)
    with Daemon(tmp_path, {}) as daemon:
        keep = pid_of(daemon, "keep")
        (tmp_path / "jobs.tmp").symlink_to(two)
        os.rename(tmp_path / "jobs.tmp", tmp_path / "jobs")  # ln -sfn, atomically
        wait_for(lambda: "fresh" in states(daemon), 10, what="the new release loaded")
        assert pid_of(daemon, "keep") == keep


def test_an_editors_save_of_an_unchanged_file_restarts_nothing(tmp_path):
    with Daemon(tmp_path, {"web": SLEEP}) as daemon:
        pid = pid_of(daemon, "web")
        path = tmp_path / "jobs" / "web.tm.json"
        os.rename(path, tmp_path / "jobs" / "web.tm.json~")  # vim: rename the old file away...
        time.sleep(0.15)
        path.write_text(json.dumps(SLEEP))  # ...then write the new one
        time.sleep(1.5)
        assert pid_of(daemon, "web") == pid and states(daemon)["web"] == "RUNNING"
        path.unlink()  # a real removal still counts, after the grace
        wait_for(lambda: "web" not in states(daemon), 5, what="the removed job forgotten")


def test_jobs_added_with_ln_and_ln_s_are_loaded(tmp_path):
    elsewhere = tmp_path / "library"
    elsewhere.mkdir()
    write_job(elsewhere, "soft", SLEEP)
    write_job(elsewhere, "hard", SLEEP)
    with Daemon(tmp_path, {}) as daemon:
        (tmp_path / "jobs" / "soft.tm.json").symlink_to(elsewhere / "soft.tm.json")
        os.link(elsewhere / "hard.tm.json", tmp_path / "jobs" / "hard.tm.json")
        wait_for(lambda: states(daemon) == {"soft": "RUNNING", "hard": "RUNNING"}, 10, what="both links loaded")


def test_a_directory_swapped_in_later_is_checked_like_the_one_the_daemon_started_with(tmp_path):
    """A deploy that swaps in a directory everyone may write must not let everyone define root
    jobs: its files are not read (the running jobs go on as they are), `reload` says why, and once
    the directory is made safe it is read."""
    marker = tmp_path / "planted"
    with Daemon(tmp_path, {"keep": SLEEP}) as daemon:
        keep = pid_of(daemon, "keep")
        open_to_all = tmp_path / "jobs.new"
        open_to_all.mkdir()
        write_job(open_to_all, "keep", SLEEP)
        write_job(open_to_all, "planted", {"cmd": ["touch", str(marker)], "starttime": 0, "autorestart": "never"})
        os.chmod(open_to_all, 0o777)
        os.rename(tmp_path / "jobs", tmp_path / "jobs.old")
        os.rename(open_to_all, tmp_path / "jobs")
        wait_for(lambda: "writable by others" in daemon.stderr(), 10, what="the swapped directory refused")
        reply = daemon.request("restart")  # reload every file, as SIGHUP does
        assert reply["response"] == "fail" and b"writable by others" in reply["error"]
        reply = daemon.request("reload", "planted")
        assert reply["response"] == "fail" and b"writable by others" in reply["error"]
        write_job(tmp_path / "jobs", "later", SLEEP)  # nor is a file dropped in it later read
        time.sleep(1)
        assert set(states(daemon)) == {"keep"} and pid_of(daemon, "keep") == keep and not marker.exists()
        assert "writable by others" in daemon.status()["daemon"]["jobs_dir_problem"]
        shown = ctl(daemon, "status")  # the operator sees why the deploy is not applied
        assert shown.returncode == 3 and "writable by others" in out(shown), shown
        os.chmod(tmp_path / "jobs", 0o755)  # made safe: read at once, no SIGHUP needed
        wait_for(lambda: {"planted", "later"} <= set(states(daemon)), 10, what="the directory read once safe")
        wait_for(marker.exists, 5, what="the job run")
        assert pid_of(daemon, "keep") == keep and daemon.status()["daemon"]["jobs_dir_problem"] is None


def test_a_reload_while_the_jobs_directory_is_gone_stops_nothing(tmp_path):
    with Daemon(tmp_path, {"keep": SLEEP}) as daemon:
        keep = pid_of(daemon, "keep")
        os.rename(tmp_path / "jobs", tmp_path / "jobs.old")
        for reply in daemon.request("restart"), daemon.request("reload", "keep"):
            assert reply["response"] == "fail" and b"is not there" in reply["error"]
        assert states(daemon) == {"keep": "RUNNING"} and pid_of(daemon, "keep") == keep


def test_a_deleted_jobs_directory_shows_in_status_at_once_and_a_new_one_is_read(tmp_path):
    """Deleting the directory told status nothing (exit 0, no note) until someone reloaded."""
    with Daemon(tmp_path, {"keep": SLEEP}) as daemon:
        keep = pid_of(daemon, "keep")
        for entry in (tmp_path / "jobs").iterdir():
            entry.unlink()
        (tmp_path / "jobs").rmdir()
        problem = wait_for(lambda: daemon.status()["daemon"]["jobs_dir_problem"], 10, what="the deletion noticed")
        assert "is not there" in problem
        shown = ctl(daemon, "status")
        assert shown.returncode == 3 and b"is not there" in shown.stdout + shown.stderr
        assert states(daemon) == {"keep": "RUNNING"} and pid_of(daemon, "keep") == keep
        (tmp_path / "jobs").mkdir()
        write_job(tmp_path / "jobs", "keep", SLEEP)
        wait_for(lambda: daemon.status()["daemon"]["jobs_dir_problem"] is None, 10, what="the directory back")
        assert pid_of(daemon, "keep") == keep


def test_a_parent_opened_to_everyone_stops_the_reading_until_it_is_closed_again(tmp_path):
    """Whoever may write the parent may swap the jobs directory: the same refusal, lifted as soon
    as the parent is closed again (its mode change is watched too)."""
    with Daemon(tmp_path, {"keep": SLEEP}) as daemon:
        os.chmod(tmp_path, 0o777)
        write_job(tmp_path / "jobs", "new", SLEEP)
        wait_for(lambda: daemon.status()["daemon"]["jobs_dir_problem"], 10, what="the parent's mode noticed")
        assert set(states(daemon)) == {"keep"}
        os.chmod(tmp_path, 0o755)
        wait_for(lambda: "new" in states(daemon), 10, what="the directory read again")
        assert daemon.status()["daemon"]["jobs_dir_problem"] is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_a_job_file_someone_else_may_write_is_not_run(tmp_path):
    """Job files run as root by default: one that a user who may not define jobs can write (open
    to everyone, another user's file linked in, a link into a directory everyone may write) is
    INVALID and never run. A team member's file in the team's directory is fine."""
    jobs, library, shared = tmp_path / "jobs", tmp_path / "library", tmp_path / "shared"
    for where in (jobs, library, shared):
        where.mkdir()
    marker = tmp_path / "ran"
    planted = {"cmd": ["touch", str(marker)], "starttime": 0, "autorestart": "never"}
    write_job(jobs, "open", planted)
    os.chmod(jobs / "open.tm.json", 0o666)
    write_job(library, "bobs", planted)
    os.chown(library / "bobs.tm.json", 65534, 1)  # not the team's group
    (jobs / "bobs.tm.json").symlink_to(library / "bobs.tm.json")
    write_job(shared, "far", planted)
    os.chmod(shared, 0o777)
    (jobs / "far.tm.json").symlink_to(shared / "far.tm.json")
    os.chown(jobs, 0, 65534)
    os.chmod(jobs, 0o2775)  # the team's directory, through its group...
    write_job(jobs, "teams", SLEEP)
    os.chown(jobs / "teams.tm.json", 65534, 65534)  # ...and a member's file in it
    with Daemon(tmp_path, {}) as daemon:
        status = {job["name"]: job for job in daemon.status()["jobs"]}
        assert status["teams"]["state"] == "RUNNING"
        assert "writable by others" in status["open"]["error"]
        assert "belongs to uid 65534" in status["bobs"]["error"]
        assert f"{shared} is writable by others" in status["far"]["error"]
        time.sleep(0.5)
        assert not marker.exists()
