"""The TaskmasterJob definition and the reading of one blueprint: pure, without a server."""
from __future__ import annotations

import json
import pwd

import pytest

from taskmasterd.colonies.blueprint_schema import KIND, RECONCILER_TYPE, definition, handler_of, job_schema
from taskmasterd.colonies.blueprint_spec import read_blueprint, user_refusal
from taskmasterd.colonies.settings import from_sources
from taskmasterd.jobfiles.jobfile import ALIASES, FIELDS
from tests.support.colonies_blueprints import check_against


def blueprint(spec: dict, name: str = "web", **metadata: object) -> dict:
    return {"kind": KIND, "metadata": {"name": name, "colonyname": "dev", **metadata}, "spec": spec}


def test_the_schema_lists_every_field_and_alias_of_a_job_file() -> None:
    assert set(job_schema()["properties"]) == set(FIELDS) | set(ALIASES)
    doc = definition("dev")
    assert doc["spec"]["names"]["kind"] == KIND and doc["metadata"]["colonyname"] == "dev"
    assert handler_of([doc]) == (RECONCILER_TYPE, "reconcile")
    assert handler_of([definition("dev", "other")]) == ("other", "reconcile") and handler_of([{}, None]) is None


@pytest.mark.parametrize("spec, error", [
    ({"hosts": ["web-*"]}, "required field 'job' is missing"),  # seen on the real server
    ({"job": {"cmd": "x"}, "hosts": "web-1"}, "field 'hosts' must be an array, got string"),  # seen on the real server
    ({"job": {"numprocs": "two"}}, "field 'job.numprocs' must be a number, got string"),  # seen on the real server
    ({"job": {"autorestart": "sometimes"}},
     "field 'job.autorestart' must be one of [always never unexpected], got sometimes"),  # seen on the real server
    ({"job": {"cmd": "x"}, "hosts": [3]}, "field 'hosts[0]' must be a string, got float64"),  # seen on the real server
])
def test_the_server_refuses_what_the_schema_types_refuse(spec: dict, error: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_against(spec, definition("dev")["spec"]["schema"])
    assert str(refused.value) == error


def test_the_server_takes_what_only_the_job_file_check_refuses() -> None:
    schema = definition("dev")["spec"]["schema"]
    for job in ({"cmd": ["sleep", "1"], "numprocs": 0}, {"cmd": 3}, {"user": 0}, {"colonies": False}, {"nonsense": 1}):
        check_against({"job": job, "hosts": ["*"]}, schema)


def test_placement_by_host_glob_and_location() -> None:
    job = {"cmd": "sleep 60"}
    on = lambda spec, host="web-1", location="", **md: read_blueprint(blueprint(spec, **md), host, location)  # noqa: E731
    assert on({"job": job, "hosts": ["web-*"]}).placed
    assert not on({"job": job, "hosts": ["web-*"]}, host="db-1").placed
    assert on({"job": job, "hosts": ["db-1", "web-?"]}).placed
    assert on({"job": job, "location": "Lab"}, location="lab").placed  # as the server matches locations
    assert not on({"job": job, "location": "lab"}, location="attic").placed
    assert not on({"job": job, "hosts": ["web-1"], "location": "lab"}).placed  # both must match
    assert not on({"job": job, "hosts": ["*"]}, locationname="lab").placed  # the server routes it to lab only
    found = on({"job": job, "hosts": ["*"]}, generation=4)
    assert (found.job, found.generation, found.problem) == ("colony.web", 4, None)
    assert json.loads(found.data) == job and found.data == on({"hosts": ["x"], "job": dict(reversed(job.items()))}).data


@pytest.mark.parametrize("spec, name, problem", [
    ({"job": {"cmd": "x"}}, "web", "spec: give hosts"),
    ({"job": {"cmd": "x"}, "hosts": []}, "web", "spec.hosts: must be a list"),
    ({"job": {"cmd": "x"}, "location": 3}, "web", "spec.location: must be a location name"),
    ({"job": "sleep 1", "hosts": ["*"]}, "web", "spec.job: must be a job file"),
    ({"job": {"cmd": "x"}, "hosts": ["*"]}, "a/b", "blueprint 'a/b' cannot name a job here"),
    ({"job": {"cmd": "x"}, "hosts": ["*"]}, "x" * 60, "blueprint 'xxxx"),
])
def test_a_blueprint_no_daemon_can_run_says_why(spec: dict, name: str, problem: str) -> None:
    found = read_blueprint(blueprint(spec, name), "web-1", "")
    assert found is not None and not found.placed and found.problem.startswith(problem)


def test_a_blueprints_job_runs_as_root_only_when_allowed() -> None:
    root, nobody = pwd.getpwuid(0), pwd.getpwnam("nobody")
    assert user_refusal("nobody", None, nobody) is None
    assert "does not run as root here" in user_refusal(None, None, root)
    assert "as user 'root'" in user_refusal("root", None, root)
    assert user_refusal("root", ("root",), root) is None and user_refusal(0, ("0",), root) is None
    assert "may run as web here (colonies.blueprint_users), not as user 'nobody'" in user_refusal("nobody", ("web",), nobody)
    assert user_refusal("ghost", None, None) is None  # the job file's check says there is no such user
    settings = from_sources({"colonies": {"host": "h", "blueprints": True, "blueprint_users": ["www", 1000]}}, {})
    assert settings.blueprints and settings.blueprint_users == ("www", "1000")
    for bad in ({"blueprints": "yes"}, {"blueprint_users": "www"}, {"blueprint_users": [True]}, {"hostname": "a b"}):
        with pytest.raises(ValueError):
            from_sources({"colonies": {"host": "h", **bad}}, {})
