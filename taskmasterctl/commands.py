"""The table of taskmasterctl commands: what each is called, does, takes, and which runner does it.

A command is not always one wire verb: `restart JOB` is the extension verb `restart-job`,
`reload` without a job is the wire's `restart` (every file), `tail` and `maintail` are `logs`,
`pid` and `version` read `status`. Parsers are built on demand, for the one command being run.
"""
from __future__ import annotations

from . import actions
from .options import VALUE_OPTIONS, add_global_options, formatter, quick_parse
from .session import EXIT_HELP

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Callable

    from .actions import Runner

JOB_HELP = "a job name, 'all', a pattern like 'web*', or NAME:N for instance N"


class Command:
    __slots__ = ("name", "summary", "configure", "run", "takes_jobs", "takes_all")

    def __init__(self, name: str, summary: str, configure: Callable[[argparse.ArgumentParser], None],
                 run: Runner, takes_jobs: bool = True, takes_all: bool = True) -> None:
        self.name, self.summary, self.configure, self.run = name, summary, configure, run
        self.takes_jobs = takes_jobs  # TAB completes job names after it
        self.takes_all = takes_jobs and takes_all  # ... and `all` (not after a command of one job)


class JobArguments:
    """`JOB...` (or `[JOB...]`), and `--nowait` where the wire verb waits: the arguments a quick
    parse can read without argparse (options.quick_parse); `start` also takes `--with-deps`,
    `restart` `--rolling` (argparse reads those)."""

    __slots__ = ("required", "nowait", "force", "with_deps", "rolling")
    defaults: dict[str, object] = {}  # options of a subclass, as argparse sets them when absent

    def __init__(self, required: bool, nowait: bool = False, force: bool = False, with_deps: bool = False,
                 rolling: bool = False) -> None:
        self.required, self.nowait, self.force, self.with_deps = required, nowait, force, with_deps
        self.rolling = rolling

    def switches(self) -> tuple[str, ...]:
        """Its true-or-false options, by their names (what the quick parse reads)."""
        return tuple(name for name in ("nowait", "force", "with_deps", "rolling") if getattr(self, name))

    def __call__(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("job", nargs="+" if self.required else "*", metavar="JOB",
                            help=JOB_HELP if self.required else f"{JOB_HELP} (default: every job)")
        if self.nowait:
            parser.add_argument("--nowait", action="store_true",
                                help="reply as soon as the action has begun, not when it is done")
        if self.force:
            parser.add_argument("--force", action="store_true",
                                help="also a job whose file on disk is invalid: run its last valid version")
        if self.with_deps:
            parser.add_argument("--with-deps", action="store_true",
                                help="start the jobs it depends on first, as systemctl start pulls in Requires=")
        if self.rolling:
            parser.add_argument("--rolling", action="store_true",
                                help="replace the instances a few at a time (max_unavailable), each new one "
                                     "beside the old until it is ready (a job with \"rolling\": true always is)")



class StatusArguments(JobArguments):
    """`[JOB...]`, and `-n N`: the log lines of each stream that `status JOB` shows."""

    defaults = {"lines": 10}  # what the quick parse gives when -n is not on the line

    def __call__(self, parser: argparse.ArgumentParser) -> None:
        super().__call__(parser)
        parser.add_argument("-n", "--lines", type=count, default=10, metavar="N",
                            help="with one job: the last N lines of each of its logs (default 10)")


def _nothing(parser: argparse.ArgumentParser) -> None:
    pass


def _signal(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_and_signal", nargs="+", metavar="JOB... SIGNAL",
                        help=f"the jobs ({JOB_HELP}), then a signal: HUP, SIGUSR1, 10, ...")


def _following(what: str, job: bool = False) -> Callable[[argparse.ArgumentParser], None]:
    def configure(parser: argparse.ArgumentParser) -> None:
        if job:
            parser.add_argument("job", nargs=1, metavar="JOB[:N]", help="the job (NAME:N for instance N of several)")
            parser.add_argument("--stderr", action="store_true", help="its stderr rather than its stdout")
        parser.add_argument("-n", "--lines", type=count, default=10, metavar="N",
                            help=f"how many of the last {what} to show first (default 10)")
        parser.add_argument("-f", "--follow", action="store_true", help=f"then show new {what} as they come, until Ctrl-C")
    return configure


def count(text: str) -> int:
    number = int(text)
    if number < 0:
        raise ValueError(text)
    return number


def _enablement(parser: argparse.ArgumentParser) -> None:
    JobArguments(True)(parser)
    parser.add_argument("--now", action="store_true", help="also start (enable) or stop (disable) the jobs now")


def _logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="*", metavar="JOB", help=f"{JOB_HELP} (default: all)")
    parser.add_argument("-f", "--follow", action="store_true", help="then show new lines as they come, until Ctrl-C")
    parser.add_argument("-n", "--lines", type=count, default=None, metavar="N",
                        help="the last N lines of each stream first (default 10; with --since, all since then)")
    parser.add_argument("--since", metavar="T", help="only lines written since T: 30s, 5m, 2h, 1d ago, a Unix time, "
                        "or a local date and time (2026-05-01T12:00:00)")
    parser.add_argument("--timestamps", "-t", action="store_true", help="each line begins with when it was written")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stdout", dest="streams", action="store_const", const="stdout", help="stdout only")
    which.add_argument("--stderr", dest="streams", action="store_const", const="stderr", help="stderr only")
    which.add_argument("--both", dest="streams", action="store_const", const="both", help="both (the default)")
    parser.set_defaults(streams="both")
    parser.add_argument("--daemon", action="store_true", help="the daemon's own log instead")


def _logs_run(session: actions.Session, args: argparse.Namespace) -> None:
    from .logs import logs

    logs(session, args)


def _top_run(session: actions.Session, args: argparse.Namespace) -> None:
    from .top import top

    top(session, args)


def _pull(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs=1, metavar="JOB")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the file here (default: stdout)")


def _push(parser: argparse.ArgumentParser) -> None:
    from taskmasterd.jobfiles.names import SUFFIX as JOB_SUFFIX

    parser.add_argument("file", metavar="FILE", help="the job file to send ('-': standard input)")
    parser.add_argument("--name", metavar="JOB", help=f"job name (default: FILE's name without {JOB_SUFFIX})")
    parser.add_argument("--nowait", action="store_true", help="reply as soon as the job is applied, not when it runs")


def _restart_run(session: actions.Session, args: argparse.Namespace) -> None:
    if not args.job:
        return actions.restart_without_job(session, args)
    return actions.act("restart-job")(session, args)


def _help(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to explain")


def _completion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")


def _completion_run(session: actions.Session, args: argparse.Namespace) -> None:
    from .completion import script

    _text(session, "script", script(args.shell, sorted(VALUE_OPTIONS)))


def _help_run(session: actions.Session, args: argparse.Namespace) -> None:
    if args.topic is None:
        _text(session, "help", commands_help() + "\n")
    elif args.topic in COMMANDS:
        _text(session, "help", parser_for(args.topic).format_help())
    else:
        session.complain(unknown_command(args.topic), actions.EXIT_INVALID)


def _text(session: actions.Session, key: str, text: str) -> None:
    if session.as_json:
        session.emit({key: text})
    else:
        session.out.write(text)


COMMANDS: dict[str, Command] = {command.name: command for command in (
    Command("status", "one job in detail, or a table of every job (or of those named); exit 3 if one is not "
            "as wanted", StatusArguments(False), actions.status),
    Command("start", "start every instance that is not running (--with-deps: its dependencies first)",
            JobArguments(True, nowait=True, force=True, with_deps=True), actions.act("start")),
    Command("stop", "stop every instance gracefully (stop signal, SIGKILL after stoptime)",
            JobArguments(True, nowait=True), actions.act("stop")),
    Command("restart", "stop, then start (to re-read every job file: reload)",
            JobArguments(False, nowait=True, force=True, rolling=True), _restart_run),
    Command("kill", "SIGKILL every instance's process group now", JobArguments(True, nowait=True), actions.act("kill")),
    Command("repair", "clear FATAL/BACKOFF and start what should run", JobArguments(True, nowait=True, force=True),
            actions.act("repair")),
    Command("signal", "send a signal to every running instance's process group", _signal, actions.send_signal),
    Command("tail", "the last lines of a job's output; -f to follow it", _following("lines", job=True), actions.tail,
            takes_all=False),
    Command("logs", "every selected instance's output in one stream, each line prefixed (default: all); -f to "
            "follow", _logs, _logs_run),
    Command("top", "a live view of every job: state, uptime, restarts, health, CPU, memory (q quits)", _nothing,
            _top_run, takes_jobs=False),
    Command("maintail", "the last lines of the daemon's own log; -f to follow it", _following("lines"),
            actions.maintail, takes_jobs=False),
    Command("events", "the last state changes; -f to follow them as they happen", _following("events"),
            actions.events, takes_jobs=False),
    Command("enable", "let the jobs autostart again and be started by 'start all' (--now: and start them)",
            _enablement, actions.enablement("enable")),
    Command("disable", "keep the jobs from autostart and 'start all', kept across restarts (--now: and stop them)",
            _enablement, actions.enablement("disable")),
    Command("pid", "the daemon's pid, or the pids of a job's running instances", JobArguments(False), actions.pid),
    Command("list", "the job names, with a state summary", _nothing, actions.job_list, takes_jobs=False),
    Command("reload", "re-read every job file (as SIGHUP does), or the named jobs' files",
            JobArguments(False, nowait=True), actions.reload),
    Command("pull", "the job's file, byte for byte", _pull, actions.pull, takes_all=False),
    Command("push", "validate, write and apply a job file", _push, actions.push, takes_jobs=False),
    Command("delete", "stop the job, remove its file, forget it", JobArguments(True), actions.delete),
    Command("version", "the versions of taskmasterctl and of the daemon", _nothing, actions.version, takes_jobs=False),
    Command("shutdown", "stop every job as SIGTERM does, then stop the daemon", _nothing, actions.shutdown,
            takes_jobs=False),
    Command("help", "this list, or how to use one command", _help, _help_run, takes_jobs=False),
    Command("completion", "a bash or zsh completion script (see docs/taskmasterctl.md)", _completion,
            _completion_run, takes_jobs=False),
)}


def parse(name: str, words: list[str]) -> argparse.Namespace:
    """The arguments of command `name` on the line `words` (the command word taken out); raises
    SystemExit after argparse's message for a usage error, or for --help."""
    arguments = COMMANDS[name].configure
    if isinstance(arguments, JobArguments):
        quick = quick_parse(words, arguments.required, arguments.switches())
        if quick is not None:
            vars(quick).update(arguments.defaults)
            return quick  # type: ignore[return-value]  # the runners only read its attributes
    return parser_for(name).parse_intermixed_args(words)


def parser_for(name: str) -> argparse.ArgumentParser:
    """The arguments of one command, with the options of every command among them (options may
    come anywhere on the line); shared by the one-shot command line and the shell."""
    import argparse

    command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"taskmasterctl {name}", description=command.summary, epilog=EXIT_HELP,
                                     formatter_class=formatter, allow_abbrev=False)
    command.configure(parser)
    add_global_options(parser)
    return parser


def commands_help() -> str:
    width = max(map(len, COMMANDS))
    return "commands:\n" + "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items())


def unknown_command(word: str) -> str:
    import difflib  # only a misspelt command pays for it

    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; 'taskmasterctl help' lists them"
    return f"unknown command {word!r}{hint}"
