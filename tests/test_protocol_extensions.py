"""The extensions of docs/protocol.md, byte for byte against a real daemon: selectors and their one
reply, the new verbs, the `logs` and `events` streams, and seed requests answered exactly as before."""
from __future__ import annotations

import json
import time

from tests.support.control_fixtures import Raw, b64, daemon, message, text
from tests.support.daemon import Daemon, wait_for

__all__ = ["daemon"]  # the fixture


def document(reply: dict) -> dict:
    return json.loads(text(reply["data"]))


def test_a_seed_request_is_answered_with_the_seed_bytes(daemon: Daemon) -> None:
    with Raw(daemon.port) as raw:
        raw.send(message("stop", "nginx"))
        assert raw.reply_bytes() == b'{"response":"success"};;'
        raw.send(message("start", "nginx"))
        assert raw.reply_bytes() == b'{"response":"success"};;'
        raw.send(message("start", "nope"))
        assert raw.reply_bytes() == b'{"response":"fail","error":"am9iICJub3BlIiBkb2VzIG5vdCBleGlzdA=="};;'


def test_a_selector_gets_one_reply_with_each_targets_outcome(daemon: Daemon) -> None:
    with Raw(daemon.port) as raw:
        reply = raw.exchange(message("start", "nginx web:1"))
        assert reply["response"] == "redundant" and set(reply) == {"response", "data"}
        assert document(reply) == {"targets": [{"target": "nginx", "response": "redundant"},
                                               {"target": "web:1", "response": "redundant"}]}
        failed = raw.exchange(message("start", "w* nope web:7"))
        assert failed["response"] == "fail"
        assert text(failed["error"]).splitlines() == [
            'nope: job "nope" does not exist', 'web:7: job "web" has no instance 7 (it has 2: 0 to 1)']
        assert document(failed) == {"targets": [{"target": "web", "response": "redundant"}]}
        status = raw.exchange(message("status", "web:1 nginx"))
        jobs = document(status)["jobs"]
        assert [(job["name"], [i["index"] for i in job["instances"]]) for job in jobs] == [("web", [1]), ("nginx", [0])]
        assert "daemon" not in document(status)
        for bad in ("web  nginx", "web:x", "web:1 ../x"):
            assert raw.exchange(message("stop", bad))["response"] == "fail"


def test_restart_job_signal_and_the_daemon_object(daemon: Daemon) -> None:
    before = daemon.instances("web")[0]["pid"]
    with Raw(daemon.port) as raw:
        restarted = raw.exchange(message("restart-job", "web:0"))
        assert restarted["response"] == "success" and document(restarted)["targets"][0]["target"] == "web:0"
        assert daemon.instances("web")[0]["pid"] != before
        assert raw.exchange(message("signal", "web", b"SIGCONT")) == {"response": "success"}
        assert raw.exchange(message("signal", "stubborn", b"HUP")) == {"response": "redundant"}
        unknown = raw.exchange(message("signal", "web", b"SIGNOPE"))
        assert unknown["response"] == "fail" and text(unknown["error"]) == "unknown signal 'SIGNOPE'"
        assert raw.exchange(message("signal", "web"))["response"] == "fail"  # no data
        about = document(raw.exchange(message("status")))["daemon"]
        assert about["pid"] == daemon.proc.pid and set(about) == {"version", "pid", "started", "config", "jobs_dir",
                                                                  "log_dir", "state_dir", "jobs_dir_problem", "apply",
                                                                  "containment", "cgroup", "controllers", "accounting"}
        assert about["jobs_dir_problem"] is None
        wanted = document(raw.exchange(message("status", "web")))["jobs"][0]["instances"][0]["wanted"]
        assert wanted is True


def test_logs_of_the_daemon_and_a_following_stream_that_ends_with_the_connection(daemon: Daemon) -> None:
    with Raw(daemon.port) as raw:
        reply = raw.exchange(message("logs", data=b'{"last":3}'))
        assert reply["response"] == "file" and text(reply["job"]) == ""
        assert len(text(reply["data"]).splitlines()) == 3
        assert raw.exchange(message("logs", "web"))["response"] == "fail"  # two instances: name one
        assert raw.exchange(message("logs", "w*:0"))["response"] == "fail"
        assert raw.exchange(message("logs", data=b'{"last":-1}'))["response"] == "fail"
        raw.send(message("logs", data=b'{"last":0,"follow":true}'))
        first = raw.reply()
        assert first == {"response": "file", "job": "", "data": ""}
        with Raw(daemon.port) as other:  # something the daemon logs: a state change
            other.exchange(message("stop", "nginx"))
            other.exchange(message("start", "nginx"))
        seen = ""
        while "nginx[0]: STOPPED -> STARTING" not in seen:
            follow = raw.reply()
            assert follow["response"] == "file" and set(follow) == {"response", "job", "data"}
            seen += text(follow["data"])
    wait_for(lambda: daemon.request("status")["response"] == "status", what="the daemon serving on")


def test_events_with_follow_stream_each_change(daemon: Daemon) -> None:
    with Raw(daemon.port) as raw:
        recent = raw.exchange(message("events", data=b'{"last":2}'))
        assert recent["response"] == "events" and set(document(recent)) == {"events", "lost"}
        assert len(document(recent)["events"]) == 2
        raw.send(message("events", data=b'{"last":0,"follow":true}'))
        assert raw.reply_bytes() == b'{"response":"events","data":"eyJldmVudHMiOltdLCJsb3N0IjowfQ=="};;'
        started = time.time()
        with Raw(daemon.port) as other:
            other.exchange(message("kill", "nginx"))
        events: list[dict] = []
        while not any(event["new"] == "STOPPED" for event in events):
            events += document(raw.reply())["events"]
        assert [(e["kind"], e["job"], e["instance"], e["old"], e["new"]) for e in events] == [
            ("state", "nginx", 0, "RUNNING", "STOPPING"), ("state", "nginx", 0, "STOPPING", "STOPPED")]
        assert events[0]["reason"] == "kill command" and events[0]["time"] >= started - 1
    with Raw(daemon.port) as raw:
        assert raw.exchange(message("start", "nginx")) == {"response": "success"}


def test_inline_documents_for_a_client_that_asks_and_base64_for_one_that_does_not(daemon: Daemon) -> None:
    with Raw(daemon.port) as raw:
        seed = raw.exchange(message("status", "nginx"))
        inline = raw.exchange(message("status", "nginx", inline=True))
        assert isinstance(seed["data"], str) and inline["data"]["jobs"][0]["name"] == "nginx"
        assert document(seed)["jobs"][0]["instances"][0]["pid"] == inline["data"]["jobs"][0]["instances"][0]["pid"]
        selected = raw.exchange(message("start", "nginx web", inline=True))
        assert selected == {"response": "redundant", "data": {"targets": [
            {"target": "nginx", "response": "redundant"}, {"target": "web", "response": "redundant"}]}}
        raw.send(message("events", data=b'{"last":0,"follow":true}', inline=True))
        assert raw.reply_bytes() == b'{"response":"events","data":{"events":[],"lost":0}};;'
        with Raw(daemon.port) as other:
            other.exchange(message("kill", "nginx"))
        assert raw.reply()["data"]["events"][0]["new"] == "STOPPING"  # the stream's replies too
    with Raw(daemon.port) as raw:
        assert raw.exchange(message("start", "nginx")) == {"response": "success"}
