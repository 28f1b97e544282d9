"""The job-file model, without processes: parsing, defaults, aliases and every error message."""
import os
import signal

import pytest

from taskmasterd.jobfiles.jobfile import JobFileError, host_errors, parse_job
from taskmasterd.kernel.nss import uid_of
from taskmasterd.jobfiles.names import job_name_error, job_name_from_filename

SRC = "jobs/web.tm.json"


def parse(text: str, name: str = "web"):
    return parse_job(name, text.encode(), SRC)


def problems(text: str) -> list[str]:
    with pytest.raises(JobFileError) as err:
        parse(text)
    return err.value.problems


def test_minimal_file_gets_the_documented_defaults():
    spec = parse('{"cmd": "sleep 10"}')
    assert spec.argv == ("sleep", "10")
    assert (spec.numprocs, spec.autostart, spec.autorestart) == (1, True, "unexpected")
    assert spec.exitcodes == {0} and spec.starttime == 1 and spec.startretries == 3
    assert spec.stopsignal == signal.SIGTERM and spec.stoptime == 10
    assert spec.logmaxbytes == 10 * 1024 * 1024 and spec.logbackups == 5
    assert spec.colonies is not None and spec.colonies.maxconcurrent == 1


def test_cmd_string_is_split_like_a_shell_and_list_is_kept():
    assert parse('{"cmd": "echo \'a b\' c"}').argv == ("echo", "a b", "c")
    assert parse('{"cmd": ["sh", "-c", "echo $X; exit 2"]}').argv == ("sh", "-c", "echo $X; exit 2")


def test_every_field_is_read():
    spec = parse('{"cmd":"x","numprocs":3,"autostart":false,"autorestart":"always","exitcodes":[0,2],'
                 '"starttime":0.5,"startretries":-1,"stopsignal":"SIGUSR1","stoptime":2,"stdout":null,'
                 '"stderr":"e-{index}.log","logmaxbytes":0,"logbackups":1,"env":{"A":"1","N":2},'
                 '"workingdir":"/tmp","umask":"027","user":"root","colonies":{"maxconcurrent":4}}')
    assert spec.numprocs == 3 and spec.autostart is False and spec.autorestart == "always"
    assert spec.exitcodes == {0, 2} and spec.starttime == 0.5 and spec.startretries == -1
    assert spec.stopsignal == signal.SIGUSR1 and spec.stoptime == 2
    assert spec.log_path("stdout", 1, "/l") is None
    assert spec.log_path("stderr", 2, "/l") == "/l/e-2.log"
    assert dict(spec.env) == {"A": "1", "N": "2"}
    assert spec.umask == 0o027 and spec.user == "root" and spec.colonies.maxconcurrent == 4


def test_log_paths_default_and_index_suffix():
    one = parse('{"cmd":"x","stdout":"out.log"}')
    assert one.log_path("stdout", 0, "/l") == "/l/out.log"
    assert one.log_path("stderr", 0, "/l") == "/l/web.0.err"
    many = parse('{"cmd":"x","numprocs":2,"stdout":"/abs/out.log"}')
    assert many.log_path("stdout", 1, "/l") == "/abs/out.log.1"


def test_syntax_error_names_line_and_column():
    (message,) = problems('{\n  "cmd": "x",\n  oops\n}')
    assert message.startswith(SRC) and "line 3 column 3" in message


def test_wrong_type_names_file_field_and_value():
    assert problems('{"cmd":"x","numprocs":"two"}') == [
        'jobs/web.tm.json: field "numprocs": must be an integer ≥ 1, got "two"']


def test_numprocs_zero_and_negative_times():
    assert 'field "numprocs"' in problems('{"cmd":"x","numprocs":0}')[0]
    assert 'field "stoptime"' in problems('{"cmd":"x","stoptime":-1}')[0]


def test_unknown_field_suggests_the_closest():
    (message,) = problems('{"cmd":"x","autorestrat":"always"}')
    assert "unknown field 'autorestrat'" in message and "did you mean 'autorestart'?" in message


def test_bad_signal_name():
    (message,) = problems('{"cmd":"x","stopsignal":"TERMINATE"}')
    assert 'field "stopsignal"' in message and "TERMINATE" in message


def test_several_problems_are_all_reported_and_cmd_is_required():
    found = problems('{"numprocs":true,"autorestart":"sometimes"}')
    assert len(found) == 3
    assert any('"cmd": is required' in p for p in found)


def test_alias_and_field_both_given_is_an_error():
    (message,) = problems('{"cmd":"x","procNr":2,"numprocs":2}')
    assert "'procNr' is an alias of 'numprocs'" in message


def test_original_taskmaster_format_is_accepted():
    spec = parse('{"cmd":"x","procNr":2,"autoStart":false,"restart":2,"startTime":3,"normalExitCode":[0,1],'
                 '"restartTimes":4,"stopSig":15,"stopTime":6,"dir":"/tmp","runas":"root",'
                 '"env":[{"name":"A","value":"b"}]}')
    assert (spec.numprocs, spec.autostart, spec.autorestart, spec.starttime) == (2, False, "always", 3)
    assert spec.exitcodes == {0, 1} and spec.startretries == 4 and spec.stopsignal == 15
    assert spec.stoptime == 6 and spec.workingdir == "/tmp" and spec.user == "root" and spec.env == (("A", "b"),)


def test_colonies_false_and_bad_colonies_section():
    assert parse('{"cmd":"x","colonies":false}').colonies is None
    assert "functions" in problems('{"cmd":"x","colonies":{"functions":["fly"]}}')[0]


def test_not_an_object_and_not_utf8():
    assert "must be a JSON object" in problems("[1]")[0]
    with pytest.raises(JobFileError):
        parse_job("web", b'{"cmd":"\xff"}', SRC)


def test_host_errors_missing_workingdir_and_unknown_user(tmp_path):
    spec = parse(f'{{"cmd":"x","workingdir":"{tmp_path}/nope","user":"no-such-user-xyz"}}')
    found = host_errors(spec, SRC, uid_of(spec.user))
    assert any('field "workingdir"' in p and "does not exist" in p for p in found)
    assert any('field "user"' in p and "no such user" in p for p in found)


def test_user_without_root_is_a_clear_error():
    spec = parse('{"cmd":"x","user":"root"}')
    assert host_errors(spec, SRC, 0, daemon_uid=0) == []
    (message,) = host_errors(spec, SRC, 0, daemon_uid=12345)
    assert "needs a daemon started as root" in message


@pytest.mark.parametrize("name", ["", "../x", "a/b", "x\0y", "a" * 65, ".hidden", "-x", "web.tm.json"])
def test_bad_job_names(name):
    assert job_name_error(name)


@pytest.mark.parametrize("name", ["web", "a" * 64, "my_job-1.v2"])
def test_good_job_names(name):
    assert job_name_error(name) is None


def test_which_files_are_jobs():
    assert job_name_from_filename("web.tm.json") == "web"
    for ignored in (".web.tm.json.swp", "web.json", ".web.tm.json", "web.tm.json~", "4913"):
        assert job_name_from_filename(ignored) is None
    assert os.sep not in (job_name_from_filename("a.tm.json") or "")
