"""`taskmasterctl`: one command per run, or the interactive shell when no verb is given.

The one-shot path is kept light (no orjson, no readline, no asyncio): a status is a whole process
that should take tens of milliseconds.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import IO, Callable

from taskmasterd.names import SUFFIX as JOB_SUFFIX
from taskmasterd.verbs import VERBS, JobArg, Reply

from .client import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, Client, ConnectionFailed

EXIT_OK, EXIT_FAIL, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3
NOWAIT_VERBS = ("start", "stop", "kill", "repair", "reload", "push")  # the verbs that wait (protocol.md)

EXIT_HELP = """exit status:
  0  success (also "redundant": nothing needed doing, noted on stderr)
  1  the daemon answered fail (unknown job, bad name, spawn error, invalid job file, ...)
  2  usage error, or the daemon answered invalid
  3  cannot connect to the daemon, or no reply within --timeout"""


def verbs_help() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {name:<{width}}  {verb.summary}" for name, verb in VERBS.items()]
    return "verbs:\n" + "\n".join(lines)


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmasterctl",
        usage="%(prog)s [--host H] [--port P | --socket PATH] [--json] [--timeout S] [VERB [ARGS...]]",
        description="Control taskmasterd. Without a verb, start an interactive shell.",
        epilog=f"{verbs_help()}\n\n'taskmasterctl VERB --help' shows a verb's arguments.\n\n{EXIT_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"daemon address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"daemon port (default {DEFAULT_PORT})")
    parser.add_argument("--socket", metavar="PATH", default=os.environ.get("TASKMASTER_SOCKET") or None,
                        help="the daemon's unix socket instead of TCP (default: $TASKMASTER_SOCKET; '' for TCP)")
    parser.add_argument("--json", action="store_true", help="print each decoded reply as one line of JSON")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds to wait for the daemon (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("verb", nargs="?", metavar="VERB", help="one of the verbs below")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help=argparse.SUPPRESS)
    return parser


def verb_parser(verb: str) -> argparse.ArgumentParser:
    """The arguments of one verb; shared by the one-shot command and the shell."""
    spec = VERBS[verb]
    parser = argparse.ArgumentParser(prog=f"taskmasterctl {verb}", description=spec.summary,
                                     epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    if verb == "pull":
        parser.add_argument("job", nargs=1, metavar="JOB")
        parser.add_argument("-o", "--output", metavar="FILE", help="write the file here (default: stdout)")
    elif verb == "push":
        parser.add_argument("file", metavar="FILE", help="the job file to send ('-': standard input)")
        parser.add_argument("--name", metavar="JOB", help=f"job name (default: FILE's name without {JOB_SUFFIX})")
    elif spec.job is JobArg.REQUIRED:
        parser.add_argument("job", nargs="+", metavar="JOB")
    elif spec.job is JobArg.OPTIONAL:
        parser.add_argument("job", nargs="*", metavar="JOB", help="default: every job")
    if verb in NOWAIT_VERBS:
        parser.add_argument("--nowait", action="store_true",
                            help="reply as soon as the action has begun, not when it is done")
    return parser


class Command:
    """One verb with its parsed arguments, run against a client; output goes to out/err."""

    def __init__(self, verb: str, args: argparse.Namespace, as_json: bool,
                 out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.verb, self.args, self.as_json = verb, args, as_json
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.exit = EXIT_OK

    def run(self, client: Client) -> int:
        try:
            if self.verb == "push":
                self._push(client)
            else:
                jobs = getattr(self.args, "job", None) or [None]
                replies = [(job, client.request(self.verb, job, nowait=getattr(self.args, "nowait", False)))
                           for job in jobs]
                self._show(replies)
        except ConnectionFailed as exc:
            self._complain(str(exc), EXIT_UNREACHABLE)
        return self.exit

    def _push(self, client: Client) -> None:
        path, name = self.args.file, self.args.name
        if name is None:
            if path == "-":
                return self._complain("push from standard input needs --name", EXIT_INVALID)
            name = os.path.basename(path).removesuffix(JOB_SUFFIX).removesuffix(".json")
        try:
            if path == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as src:
                    data = src.read()
        except OSError as exc:
            return self._complain(f"cannot read {path}: {exc.strerror}", EXIT_INVALID)
        self._show([(name, client.push(name, data, nowait=self.args.nowait))])

    def _show(self, replies: list[tuple[str | None, Reply]]) -> None:
        for job, reply in replies:
            self._judge(job, reply)
        if self.as_json:
            from .render import reply_json

            for _, reply in replies:
                print(reply_json(reply), file=self.out)
            return
        shown = [reply for _, reply in replies if reply.response in ("status", "list", "file")]
        if not shown:
            return
        from . import render

        if shown[0].response == "file":
            self._write_file(shown[0].data or b"")
        elif shown[0].response == "list":
            self.out.write(render.job_list(shown[0].value))
        else:
            colour = self.out.isatty() and "NO_COLOR" not in os.environ
            self.out.write(render.status_table([job for r in shown for job in r.value["jobs"]], colour))

    def _judge(self, job: str | None, reply: Reply) -> None:
        what = f"{self.verb} {job}" if job is not None else self.verb
        if reply.response == "fail":
            self._complain(f"{what}: {reply.error or 'failed'}", EXIT_FAIL)
        elif reply.response == "invalid":
            self._complain(f"{what}: the daemon found the request invalid: {reply.error or 'no reason given'}",
                           EXIT_INVALID)
        elif reply.response == "redundant":
            self._complain(f"{what}: nothing to do (redundant)", EXIT_OK)
        elif reply.response == "success" and not self.as_json:
            print(f"{what}: success", file=self.out)

    def _write_file(self, data: bytes) -> None:
        if self.args.output is None:
            self.out.flush()
            getattr(self.out, "buffer", sys.stdout.buffer).write(data)
            return
        try:
            with open(self.args.output, "wb") as dst:
                dst.write(data)
        except OSError as exc:
            self._complain(f"cannot write {self.args.output}: {exc.strerror}", EXIT_FAIL)

    def _complain(self, message: str, code: int) -> None:
        print(f"taskmasterctl: {message}", file=self.err)
        self.exit = max(self.exit, code)


def parse_command(words: list[str], as_json: bool) -> Command | int:
    """A Command for `VERB ARGS...`, or the exit status of a usage error / --help."""
    verb, args = words[0], words[1:]
    if verb not in VERBS:
        print(f"taskmasterctl: unknown verb {verb!r}\n{verbs_help()}", file=sys.stderr)
        return EXIT_INVALID
    try:
        return Command(verb, verb_parser(verb).parse_args(args), as_json)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_INVALID


def main(argv: list[str] | None = None) -> int:
    options = main_parser().parse_args(argv)
    client = Client(options.host, options.port, options.timeout, socket_path=options.socket or None)
    if options.verb is None:
        from .shell import Shell

        return Shell(client, options.json).run()
    command = parse_command([options.verb, *options.args], options.json)
    if isinstance(command, int):
        return command
    return _quiet_broken_pipe(lambda: command.run(client))


def _quiet_broken_pipe(run: Callable[[], int]) -> int:
    """`taskmasterctl status | head` must not end in a traceback."""
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
