"""Hostile and mistyped job files: validation raises nothing but JobFileError, for any bytes, and
bounds every number that could exhaust the daemon. Pure, except host_errors and push."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmasterd.jobfiles.jobfile import FIELDS, JobFileError, JobSpec, Limits, host_errors, parse_job
from taskmasterd.kernel.nss import uid_of

from .support.supervised import run, supervised

SOURCE = "jobs/x.tm.json"


def outcome(raw: bytes, limits: Limits = Limits()):
    try:
        spec = parse_job("x", raw, SOURCE, limits)
    except JobFileError as exc:
        return exc
    host_errors(spec, SOURCE, uid_of(spec.user) if spec.user is not None else None)  # must not raise either
    return spec


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_a_spec_or_a_job_file_error(raw):
    assert isinstance(outcome(raw), (JobSpec, JobFileError))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([*FIELDS, "procNr", "runas", "stopSig", "bogus"]), json_values, max_size=6))
def test_any_document_of_known_fields_gives_a_spec_or_a_job_file_error(document):
    raw = json.dumps({"cmd": "true", **document}).encode()
    assert isinstance(outcome(raw), (JobSpec, JobFileError))


@pytest.mark.parametrize("raw, expected", [
    (b'{"cmd": "x", "user": "\xc2\xb2"}', None),  # "²" is a name (no such user), not a uid
    (b'{"cmd": "x", "starttime": NaN}', 'field "starttime": must be a number of seconds from 0 to 86400, got NaN'),
    (b'{"cmd": "x", "stoptime": Infinity}', 'field "stoptime": must be a number of seconds from 0 to 86400, got Infinity'),
    (b'{"cmd": "x", "env": {"A": NaN}}', "variable 'A' must be a string or a number, got NaN"),
    (b'{"cmd": "x", "stoptime": 1e400}', "must be a number of seconds"),
    (b'{"cmd": "x", "starttime": 86401}', "from 0 to 86400"),
    (b'{"cmd": "x", "numprocs": 1e9}', "must be an integer"),
    (b'{"cmd": "x", "numprocs": 1000000000}', "at most 1024"),
    (b'{"cmd": "x", "logbackups": 1000000000000000000}', "from 0 to 1000"),
    (b'{"cmd": "x", "logmaxbytes": 1}', "0 (never rotate) or an integer from 1024"),
    (b'{"cmd": ["sle\\u0000ep"]}', "NUL byte"),
    (b'{"cmd": "x", "env": {"A": "b\\u0000c"}}', "NUL byte"),
    (b'{"cmd": "x", "env": {"A\\u0000": "b"}}', "NUL byte"),
    (b'{"cmd": "x", "stdout": "\\ud800"}', "lone surrogate"),
    (b'{"cmd": "x", "user": 99999999999}', "a uid from 0 to"),
    (b'{"cmd": "x", "user": "99999999999"}', "a uid from 0 to"),
    (b'{"cmd": "x", "cmd": "y"}', "given twice"),
    (b'[' * 100_000 + b']' * 100_000, "invalid JSON"),
    (b'{"cmd": "x", "numprocs": 1' + b'0' * 5000 + b'}', "invalid JSON"),
    (b'{"cmd": "' + b'a' * (128 * 1024 + 1) + b'"}', "longer than"),
    (b' ' * (1 << 20) + b'{}', "larger than"),
])
def test_hostile_values_are_refused_with_the_field_named(raw, expected):
    result = outcome(raw)
    if expected is None:
        assert isinstance(result, JobSpec)
        assert host_errors(result, SOURCE, uid_of(result.user)) == [f'{SOURCE}: field "user": no such user \'²\'']
    else:
        assert isinstance(result, JobFileError) and expected in str(result), str(result)


def test_max_numprocs_is_a_daemon_setting():
    assert isinstance(outcome(b'{"cmd": "x", "numprocs": 2000}', Limits(max_numprocs=4096)), JobSpec)


def test_push_checks_everything_before_the_file_is_written(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {}) as sup:
            for data in (b'{"cmd": "sleep 1", "numprocs": 1000000000}', b'{"cmd": "sleep 1", "user": "no-such-user"}',
                         b'{"cmd": "sleep 1", "logbackups": 1000000000000000000}'):
                reply = await sup.push("big", data)
                assert reply.response == "fail" and "big.tm.json" in reply.error
                assert not (tmp_path / "jobs" / "big.tm.json").exists()
            assert (await sup.start("big")).response == "fail"

    run(scenario())


def test_index_expands_whatever_numprocs_and_is_appended_only_for_several():
    one = parse_job("web", b'{"cmd": "x", "stdout": "web-{index}.log", "stderr": "web.err"}', SOURCE)
    assert one.log_path("stdout", 0, "/l") == "/l/web-0.log" and one.log_path("stderr", 0, "/l") == "/l/web.err"
    two = parse_job("web", b'{"cmd": "x", "numprocs": 2, "stderr": "web.err"}', SOURCE)
    assert two.log_path("stdout", 1, "/l") == "/l/web.1.out" and two.log_path("stderr", 1, "/l") == "/l/web.err.1"


def test_ignored_files_are_logged_once_with_the_reason(tmp_path, caplog):
    from taskmasterd.jobfiles.jobsdir import JobsDirectory

    for name in ("web.json", "bad name.tm.json", ".hidden.tm.json", "notes.txt", "ok.tm.json", "vim.tm.json.swp"):
        (tmp_path / name).write_text("{}")
    directory = JobsDirectory(str(tmp_path))
    with caplog.at_level("INFO", logger="taskmasterd"):
        assert directory.names() == {"ok"} and directory.names() == {"ok"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # once each, only for the near misses
    assert any("web.json" in line and "end in .tm.json" in line for line in lines)
    assert any("bad name.tm.json" in line and "invalid job name" in line for line in lines)
