"""taskmasterctl as a user runs it: every verb, exit statuses, --json, and the shell in a pty."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmasterctl.client import Client, ConnectionFailed
from taskmasterctl.commands import COMMANDS, parser_for
from taskmasterctl.options import command_position, quick_parse
from taskmasterctl.render import reload_report, status_table, uptime
from taskmasterctl.verdict import not_as_wanted
from tests.support.control_fixtures import SLEEPER, daemon
from tests.support.ctl import ctl, err, out
from tests.support.daemon import ROOT, Daemon, wait_for, write_job

__all__ = ["daemon"]  # the fixture


# --- one-shot ----------------------------------------------------------------------------------

def test_status_table_of_every_job_and_of_some(daemon: Daemon) -> None:
    result = ctl(daemon, "status")
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert lines[0].split() == ["JOB", "INSTANCE", "STATE", "PID", "UPTIME", "RESTARTS", "EXIT", "CPU%", "MEM", "INFO"]
    assert "\x1b[" not in out(result)  # not a terminal: no colour
    web = [line.split() for line in lines if line.startswith("web ")]
    assert [row[1] for row in web] == ["0", "1"] and all(row[2] == "RUNNING" for row in web)
    assert {row[3] for row in web} == {str(inst["pid"]) for inst in daemon.instances("web")}
    some = ctl(daemon, "status", "web", "nginx")
    assert {line.split()[0] for line in out(some).splitlines()[1:]} == {"web", "nginx"}


def test_status_of_an_unknown_job_fails_but_shows_the_others(daemon: Daemon) -> None:
    result = ctl(daemon, "status", "web", "nope")
    assert result.returncode == 1
    assert 'status nope: job "nope" does not exist' in err(result)
    assert "web" in out(result)


def test_json_prints_the_decoded_reply_wherever_the_option_is(daemon: Daemon) -> None:
    for args in (["--json", "status", "web"], ["status", "web", "--json"], ["status", "--json", "web"]):
        result = ctl(daemon, *args)
        assert result.returncode == 0, args
        reply = json.loads(out(result))
        assert reply["response"] == "status" and reply["data"]["jobs"][0]["name"] == "web"
    assert ctl(daemon, "status", "web", "--port", str(daemon.port)).returncode == 0  # any option, anywhere
    listing = json.loads(out(ctl(daemon, "--json", "list")))
    assert listing["response"] == "list" and "web" in [job["name"] for job in listing["data"]["jobs"]]
    failed = ctl(daemon, "--json", "stop", "nope")
    assert failed.returncode == 1 and json.loads(out(failed))["response"] == "fail"


def test_list(daemon: Daemon) -> None:
    result = ctl(daemon, "list")
    assert result.returncode == 0
    assert {"nginx", "web", "stubborn"} <= {line.split()[0] for line in out(result).splitlines()}


def test_job_verbs_and_exit_statuses(daemon: Daemon) -> None:
    write_job(daemon.jobs_dir, "ctl-a", {**SLEEPER, "autostart": False})
    write_job(daemon.jobs_dir, "ctl-b", {**SLEEPER, "autostart": False})
    assert ctl(daemon, "reload").returncode == 0  # every file, as SIGHUP does
    started = ctl(daemon, "start", "ctl-a", "ctl-b")
    assert started.returncode == 0 and out(started).splitlines() == ["start ctl-a: success", "start ctl-b: success"]
    instance = ctl(daemon, "stop", "ctl-a:0")
    assert instance.returncode == 0 and out(instance) == "stop ctl-a:0: success\n"
    assert ctl(daemon, "start", "ctl-*").returncode == 0
    again = ctl(daemon, "start", "ctl-a")
    assert again.returncode == 0 and "nothing to do (redundant)" in err(again)
    assert ctl(daemon, "repair", "ctl-a").returncode == 0
    assert ctl(daemon, "reload", "ctl-a").returncode == 0
    assert ctl(daemon, "stop", "--nowait", "ctl-a").returncode == 0
    assert ctl(daemon, "kill", "ctl-b").returncode == 0
    assert ctl(daemon, "delete", "ctl-a").returncode == 0
    assert not (daemon.jobs_dir / "ctl-a.tm.json").exists()
    mixed = ctl(daemon, "stop", "ctl-b", "ctl-a")
    assert mixed.returncode == 1 and 'stop ctl-a: job "ctl-a" does not exist' in err(mixed)
    assert "stop ctl-b: nothing to do (redundant)" in err(mixed)
    assert ctl(daemon, "delete", "ctl-b").returncode == 0


def test_push_and_pull(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "ctl-pushed.tm.json"
    source.write_bytes(json.dumps({**SLEEPER, "autostart": False}, indent=3).encode() + b"\n")
    result = ctl(daemon, "push", str(source))
    assert result.returncode == 0, err(result)
    pulled = ctl(daemon, "pull", "ctl-pushed")
    assert pulled.returncode == 0 and pulled.stdout == source.read_bytes()
    target = tmp_path / "copy.json"
    assert ctl(daemon, "pull", "ctl-pushed", "-o", str(target)).returncode == 0
    assert target.read_bytes() == source.read_bytes()
    assert ctl(daemon, "push", "-", "--name", "ctl-stdin", stdin=b'{"cmd": "sleep 5", "autostart": false}').returncode == 0
    bad = tmp_path / "ctl-bad.tm.json"
    bad.write_text('{"cmd": "sleep 1", "numprocs": "two"}')
    rejected = ctl(daemon, "push", str(bad))
    assert rejected.returncode == 1 and "numprocs" in err(rejected)
    assert not (daemon.jobs_dir / "ctl-bad.tm.json").exists()
    assert ctl(daemon, "push", str(tmp_path / "missing.tm.json")).returncode == 2
    for name in ("ctl-pushed", "ctl-stdin"):
        assert ctl(daemon, "delete", name).returncode == 0


def test_usage_errors_exit_2() -> None:
    for args in (["frobnicate"], ["start"], ["pull"], ["--port", "x", "list"], ["list", "extra"], ["restart"],
                 ["tail"], ["tail", "-n", "-1", "web"], ["signal", "web"], ["completion", "fish"]):
        result = ctl(None, *args)
        assert result.returncode == 2, args
    helped = ctl(None, "--help")
    assert helped.returncode == 0
    for word in ("exit status", "cannot be reached", "restart", "push", "tail", "not running as wanted"):
        assert word in out(helped)


def test_a_misspelt_command_gets_a_suggestion_and_help_explains_one() -> None:
    result = ctl(None, "stauts")
    assert result.returncode == 2 and "did you mean 'status'?" in err(result)
    helped = ctl(None, "help", "tail")
    assert helped.returncode == 0 and "--follow" in out(helped) and "JOB[:N]" in out(helped)
    assert "restart" in out(ctl(None, "help")) and ctl(None, "help", "nope").returncode == 2
    explained = ctl(None, "restart")
    assert "use 'reload'" in err(explained)


def test_version_of_the_client_and_of_the_daemon(daemon: Daemon) -> None:
    from taskmasterd import __version__

    assert out(ctl(None, "--version")) == f"taskmasterctl {__version__}\n"
    both = ctl(daemon, "version")
    assert both.returncode == 0
    assert out(both).splitlines()[:2] == [f"taskmasterctl {__version__}",
                                          f"taskmasterd {__version__} (pid {daemon.proc.pid})"]
    assert out(both).splitlines()[2:] == [f"containment: {daemon.status()['daemon']['containment']}"]
    document = daemon.status()["daemon"]
    assert document["pid"] == daemon.proc.pid and document["version"] == __version__
    assert abs(document["started"] - time.time()) < 3600 and document["jobs_dir"] == str(daemon.jobs_dir)


def test_pid_of_the_daemon_and_of_a_job(daemon: Daemon) -> None:
    assert out(ctl(daemon, "pid")) == f"{daemon.proc.pid}\n"
    pids = [inst["pid"] for inst in daemon.instances("web")]
    assert out(ctl(daemon, "pid", "web")).split() == [str(p) for p in pids]
    assert out(ctl(daemon, "pid", "web:1")).split() == [str(pids[1])]
    down = ctl(daemon, "pid", "stubborn")
    assert down.returncode == 1 and "not running" in err(down)


def test_bad_names_fail_with_1(daemon: Daemon) -> None:
    for name in ("../etc/passwd", "a/b", "x" * 65):
        assert ctl(daemon, "start", name).returncode == 1


def test_cannot_connect_exits_3() -> None:
    result = ctl(None, "status")
    assert result.returncode == 3 and "cannot connect" in err(result)


def test_one_shot_does_not_import_the_heavy_modules(daemon: Daemon) -> None:
    heavy = ('orjson', 'psutil', 'asyncio', 'readline', 'dataclasses', 'typing', 'difflib', 'inspect', 'contextlib',
             'json', 'socket', 'enum', 're', 'collections', 'selectors', 'argparse')
    code = ("import sys; from taskmasterctl.cli import main; main(['--port', sys.argv[1], 'status', 'web']); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    # -S: no site, so nothing but what the command itself imports (and no third-party package at all)
    result = subprocess.run([sys.executable, "-S", "-c", code, str(daemon.port)], capture_output=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.stdout.decode().splitlines()[-1] == "[]"


# --- the library -------------------------------------------------------------------------------

def test_client_reconnects_after_the_daemon_closed_the_connection(tmp_path: Path) -> None:
    with Daemon(tmp_path, jobs={"one": SLEEPER}) as first:
        client = Client(port=first.port, timeout=10)
        assert client.status("one").value["jobs"][0]["name"] == "one"
    with pytest.raises(ConnectionFailed):
        client.status("one")
    with Daemon(tmp_path, jobs={"one": SLEEPER}) as again:
        client.port = again.port
        assert client.list().response == "list"
        client.close()


def test_status_table_shows_errors_exits_and_extra_fields() -> None:
    jobs = [{"name": "bad", "state": "INVALID", "instances": [],
             "error": "bad.tm.json: field \"a\": oops\nbad.tm.json: field \"b\": also"},
            {"name": "c", "state": "RUNNING", "colonies": {"executor": "x"},
             "instances": [{"index": 0, "state": "EXITED", "pid": None, "uptime": None, "restarts": 2,
                            "exitcode": 3, "signal": None, "description": "", "wanted": True},
                           {"index": 1, "state": "STOPPED", "pid": None, "uptime": None, "restarts": 0,
                            "exitcode": None, "signal": 9, "description": "stopped", "wanted": False}]}]
    table = status_table(jobs, colour=True)
    lines = table.splitlines()
    assert lines[1].endswith('error: bad.tm.json: field "a": oops')
    assert lines[2].split() == ["error:", "bad.tm.json:", "field", '"b":', "also"]  # its own row, INFO column
    assert lines[2].index("error") == status_table(jobs).splitlines()[1].index("error")  # aligned
    assert 'colonies={"executor":"x"}' in table and "wanted" not in table
    plain = status_table(jobs).splitlines()
    assert plain[3].split()[6] == "3" and plain[4].split()[6] == "SIGKILL"  # the EXIT column
    assert "\x1b[1;31mINVALID" in table
    assert [uptime(s) for s in (None, 5, 62, 3700, 90000)] == ["-", "5s", "1m02s", "1h01m", "1d01h"]


# --- the interactive shell ---------------------------------------------------------------------

class Terminal:
    """taskmasterctl's shell on a pseudo-terminal; `expect` waits for output, never sleeps."""

    def __init__(self, port: int, history: Path) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "TASKMASTERCTL_HISTORY": str(history), "TERM": "xterm"}
        # The pty is its controlling terminal, so that Ctrl-C typed there is a SIGINT, as for a person.
        self.proc = subprocess.Popen([sys.executable, "-m", "taskmasterctl", "--port", str(port)], cwd=ROOT,
                                     stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                     start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.seen = b""

    def _fate(self) -> str:
        """Whether the shell still runs, and how it ended if not (a failure tells a hang from an exit)."""
        code = self.proc.poll()
        return "still running" if code is None else f"exited with {code}"

    def expect(self, wanted: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.master], [], [], remaining)[0]:
                raise AssertionError(f"no {wanted!r} in {self.seen!r} (the shell: {self._fate()})")
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:  # the shell has exited
                raise AssertionError(f"no {wanted!r} in {self.seen!r} (the shell: {self._fate()})") from None
        found, self.seen = self.seen, self.seen[self.seen.index(wanted) + len(wanted):]
        return found

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> int:
        try:
            return self.proc.wait(20)
        finally:
            os.close(self.master)


@pytest.fixture
def terminal(daemon: Daemon, tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(daemon.port, tmp_path / "history")
    yield term
    if term.proc.poll() is None:
        term.proc.kill()
        term.close()


def test_shell_completes_job_names_and_recalls_history(terminal: Terminal, daemon: Daemon, tmp_path: Path) -> None:
    terminal.expect(b"taskmaster> ")
    terminal.type(b"sta\t")
    terminal.expect(b"sta")  # 'start', 'status' and 'stop'... share 'sta': nothing unique yet
    terminal.type(b"tus ngi\t")
    terminal.expect(b"tus nginx")  # completed from the daemon's job list
    terminal.type(b"\n")
    terminal.expect(b"taskmaster> ")
    terminal.type(b"list\n")
    terminal.expect(b"stubborn")
    terminal.expect(b"taskmaster> ")
    terminal.type(b"\x1b[A\x1b[A\n")  # up, up: the status line again
    terminal.expect(b"status nginx")
    terminal.expect(b"nginx[0]: RUNNING")  # one job: its block
    terminal.expect(b"taskmaster> ")
    terminal.type(b"help\n")
    terminal.expect(b"restart")
    terminal.expect(b"taskmaster> ")
    terminal.type(b"\x04")  # Ctrl-D
    assert terminal.close() == 0
    assert (tmp_path / "history").read_text().splitlines() == ["status nginx", "list", "status nginx", "help"]

    again = Terminal(daemon.port, tmp_path / "history")  # the history outlives the session
    again.expect(b"taskmaster> ")
    again.type(b"\x1b[A\x1b[A")
    again.expect(b"status nginx")
    again.type(b"\x15exit\n")  # Ctrl-U clears the line
    assert again.close() == 0


def test_shell_survives_a_daemon_restart(tmp_path: Path) -> None:
    first = Daemon(tmp_path / "d", jobs={"alpha": SLEEPER}).start()
    port = first.port
    term = Terminal(port, tmp_path / "history")
    try:
        term.expect(b"taskmaster> ")
        term.type(b"status alpha\n")
        term.expect(b"RUNNING")
        term.expect(b"taskmaster> ")
        first.stop()
        term.type(b"status alpha\n")
        term.expect(b"cannot connect")
        term.expect(b"taskmaster> ")
        second = Daemon(tmp_path / "d", jobs={"alpha": SLEEPER})
        second.port = port
        with second:
            term.type(b"status alpha\n")
            term.expect(b"RUNNING")
            term.expect(b"taskmaster> ")
            term.type(b"exit\n")
            assert term.close() == 0
    finally:
        first.stop()
        if term.proc.poll() is None:
            term.proc.kill()


# --- parsing the command line (pure) -------------------------------------------------------------

def test_the_command_is_the_first_word_that_is_not_an_option_or_its_value() -> None:
    assert command_position(["status", "web"]) == 0
    assert command_position(["--port", "7777", "--json", "stop", "web"]) == 3
    assert command_position(["--json", "--timeout", "5"]) is None
    assert command_position([]) is None


WORDS = ["web", "all", "w*", "db:1", "--json", "--nowait", "--force", "--port", "7778", "--host", "h", "--timeout", "2.5",
         "-n", "--", "--port=1", "x", "--rolling", "--with-deps"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["status", "stop", "restart", "start", "pid", "delete"]), st.lists(st.sampled_from(WORDS), max_size=6))
def test_the_quick_parse_of_job_commands_is_what_argparse_makes_of_them(command: str, words: list[str]) -> None:
    arguments = COMMANDS[command].configure
    quick = quick_parse(words, arguments.required, arguments.switches())
    if quick is None:
        return  # argparse decides
    vars(quick).update(arguments.defaults)
    assert vars(quick) == vars(parser_for(command).parse_intermixed_args(words))


def test_the_reload_report_one_line_per_kind_of_change() -> None:
    report = reload_report([{"job": "new", "change": "added"}, {"job": "web", "change": "restarted"},
                            {"job": "a", "change": "unchanged"}, {"job": "b", "change": "unchanged"},
                            {"job": "cfg", "change": "applied"}, {"job": "old", "change": "removed"},
                            {"job": "bad", "change": "invalid", "error": "bad.tm.json: x\nbad.tm.json: y"}])
    assert report.splitlines() == ["  added: new", "  removed: old", "  restarted: web", "  applied in place: cfg",
                                   "  invalid: bad: bad.tm.json: x", "  invalid: bad: bad.tm.json: y",
                                   "  unchanged: 2 job(s)"]


def test_not_as_wanted_from_the_status_document() -> None:
    def job(name: str, *instances: tuple[str, bool], state: str = "RUNNING") -> dict:
        return {"name": name, "state": state,
                "instances": [{"index": i, "state": s, "wanted": w} for i, (s, w) in enumerate(instances)]}

    assert not_as_wanted([job("ok", ("RUNNING", True), ("STOPPED", False), ("EXITED", False), ("STARTING", True))]) == []
    assert not_as_wanted([job("w", ("FATAL", False), ("BACKOFF", True), ("STOPPED", True), ("EXITED", True))]) == [
        "w[0]: FATAL", "w[1]: BACKOFF", "w[2]: STOPPED", "w[3]: EXITED"]
    assert not_as_wanted([{"name": "bad", "state": "INVALID", "instances": [], "error": "x"}]) == ["bad: INVALID"]
    assert not_as_wanted([job("old-daemon", ("STOPPED", False))]) == []  # no `wanted`: never counted down
    assert not_as_wanted([job("deps", ("WAITING", True))]) == ["deps[0]: WAITING"]
    sick = job("web", ("RUNNING", True))
    sick["instances"][0]["health"] = "unhealthy"
    assert not_as_wanted([sick]) == ["web[0]: RUNNING, unhealthy"]


def test_shell_options_anywhere_help_of_a_command_and_a_follow_ended_by_ctrl_c(terminal: Terminal) -> None:
    terminal.expect(b"taskmaster> ")
    terminal.type(b"status nginx --json\n")
    terminal.expect(b'{"response":"status"')
    terminal.expect(b"taskmaster> ")
    terminal.type(b"help stop\n")
    terminal.expect(b"--nowait")
    terminal.expect(b"taskmaster> ")
    terminal.type(b"stpo nginx\n")
    terminal.expect(b"did you mean 'stop'?")
    terminal.expect(b"taskmaster> ")
    terminal.type(b"events -f -n 1\n")
    terminal.expect(b" -> ")  # the last event: following now
    terminal.type(b"\x03")  # Ctrl-C ends the follow, not the shell
    terminal.expect(b"taskmaster> ")
    terminal.type(b"exit\n")
    assert terminal.close() == 0


# The main thread blocks SIGINT, so the kernel hands it to the other thread: the main thread's
# wait is never interrupted, as when the signal lands just before the wait begins (the shell
# hung after Ctrl-C ended `events -f`: once in tens of runs).
CTL_WITH_SIGINT_ELSEWHERE = """
import signal, sys, threading
from taskmasterctl.cli import main
threading.Thread(target=threading.Event().wait, daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
code = main(sys.argv[1:])
print("ended", flush=True)
sys.exit(code)
"""


@pytest.mark.parametrize("command", [["events", "-f", "-n", "1"], ["logs", "-f", "talker"]])
def test_ctrl_c_ends_a_quiet_follow_even_when_the_wait_itself_is_not_interrupted(tmp_path: Path,
                                                                                   command: list[str]) -> None:
    with Daemon(tmp_path, {"talker": {"cmd": ["sh", "-c", "echo said; exec sleep 1000"], "starttime": 0}}) as daemon:
        wait_for(lambda: (tmp_path / "logs" / "talker.0.out").exists(), 20)
        proc = subprocess.Popen([sys.executable, "-c", CTL_WITH_SIGINT_ELSEWHERE, "--port", str(daemon.port), *command],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline()  # the last event, or the line said: following now
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
            assert proc.stdout.read().endswith("ended\n")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_rollout_and_a_pending_file_show_in_the_table_and_a_halt_exits_3() -> None:
    from taskmasterctl.detail import job_block

    rolling = {"name": "web", "state": "RUNNING", "rollout": "rolling 1/3", "sockets": ["127.0.0.1:8080"],
               "instances": [{"index": 0, "state": "RUNNING", "pid": 14, "description": "pid 14",
                              "second": {"phase": "draining", "pid": 12, "spawn": 3}}]}
    table = status_table([rolling])
    assert "rolling 1/3" in table and "second" not in table and "127.0.0.1:8080" not in table
    assert not_as_wanted([rolling]) == []
    halted = {**rolling, "rollout": "rollout halted: web:2 not ready (exited too soon (exited with code 3))"}
    assert not_as_wanted([halted]) == [f"web: {halted['rollout']}"]
    pending = {"name": "api", "state": "NEW", "instances": [], "error": None,
               "pending": "a new file, not loaded (reload loads it)"}
    assert "NEW" in status_table([pending]) and "reload loads it" in status_table([pending])
    block = job_block(rolling)
    assert "Sockets" in block and "127.0.0.1:8080" in block and "rolling 1/3" in block
