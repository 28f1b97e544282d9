"""What each taskmasterctl command does with the daemon: the requests it sends and what it prints.

Job arguments are names, `all`, shell patterns (`web*`) or `name:N`. Commands that act on jobs
send them as one selector, so the daemon acts on all of them at once; commands whose wire verb
takes plain names only (reload, delete) expand patterns from `list` first.
"""
from __future__ import annotations

import os
import sys

from taskmasterd import __version__
from taskmasterd.reply import Reply

from .session import EXIT_FAIL, EXIT_INVALID, EXIT_NOT_AS_WANTED, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import Namespace
    from typing import Callable

    Runner = Callable[[Session, Namespace], None]

_PATTERN_CHARS = frozenset("*?[")


def selector(words: list[str]) -> str:
    """The wire selector for the job words of a command line (`all` is every job)."""
    return " ".join("*" if word == "all" else word for word in words)


# --- acting on jobs -----------------------------------------------------------------------------

def act(verb: str) -> Runner:
    """A command that sends `verb` once for all the jobs named (start, stop, kill, repair, restart).
    Its options ask the daemon for its caveats (a stop that had to kill, a forced start of a job
    whose file is invalid: docs/protocol.md), which a seed daemon ignores."""
    def run(session: Session, args: Namespace) -> None:
        job = selector(args.job)
        options = b'{"report":true,"force":true}' if getattr(args, "force", False) else REPORT
        deps = getattr(args, "with_deps", False)  # start only; a quick parse leaves it out
        rolling = getattr(args, "rolling", False)  # restart only
        session.report(verb_name(verb), job, session.client.request(verb, job, options, nowait=args.nowait,
                                                                    deps=deps, rolling=rolling))
    return run


def enablement(verb: str) -> Runner:
    """`enable`/`disable JOB...`; with --now, then start/stop them (as systemctl does)."""
    def run(session: Session, args: Namespace) -> None:
        job = selector(args.job)
        session.report(verb, job, session.client.request(verb, job))
        if args.now and session.exit == 0:
            then = "start" if verb == "enable" else "stop"
            session.report(then, job, session.client.request(then, job, REPORT))
    return run


def verb_name(wire: str) -> str:
    return "restart" if wire == "restart-job" else wire


def send_signal(session: Session, args: Namespace) -> None:
    from taskmasterd.jobfiles.signames import signal_number

    *jobs, name = args.job_and_signal
    if not jobs:
        return session.complain("signal needs a job and a signal: signal JOB... SIGNAL", EXIT_INVALID)
    if signal_number(name) is None:
        hint = f" (did you mean: signal {' '.join(jobs[1:] + [name])} {jobs[0]}?)" if signal_number(jobs[0]) else ""
        return session.complain(f"signal: unknown signal {name!r}{hint}", EXIT_INVALID)
    job = selector(jobs)
    session.report("signal", job, session.client.request("signal", job, name.encode()))


def restart_without_job(session: Session, args: Namespace) -> None:
    session.complain("restart needs a job: 'restart JOB...' stops then starts it ('restart all' for every "
                     "job); to re-read every job file, as SIGHUP does, use 'reload'", EXIT_INVALID)


REPORT = b'{"report":true}'  # asks the daemon for the reload report (docs/protocol.md)


def reload(session: Session, args: Namespace) -> None:
    """`reload` re-reads every file (the wire's `restart`); `reload JOB...` those jobs' files."""
    if not args.job:
        reply = session.client.request("restart", data=REPORT)
        session.report("reload", None, reply)
        _print_changes(session, reply)
        return
    for name in _plain_names(session, args.job):
        reply = session.client.request("reload", name, data=REPORT, nowait=args.nowait)
        session.report("reload", name, reply)
        _print_changes(session, reply)


def _print_changes(session: Session, reply: Reply) -> None:
    changes = reply.value.get("changes") if isinstance(reply.value, dict) else None
    if changes and not session.as_json and any(entry.get("change") != "unchanged" for entry in changes):
        from .render import reload_report
        from .safetext import safe

        session.out.write(safe(reload_report(changes), newlines=True))


def delete(session: Session, args: Namespace) -> None:
    for name in _plain_names(session, args.job):
        session.report("delete", name, session.client.request("delete", name))


def _plain_names(session: Session, words: list[str]) -> list[str]:
    """Job names for a verb that takes one plain name per request: patterns and `all` are
    matched against the daemon's job list here."""
    if not any(word == "all" or not _PATTERN_CHARS.isdisjoint(word) for word in words):
        return words
    import fnmatch

    listing = session.client.request("list")
    known = [job["name"] for job in listing.value.get("jobs", [])] if listing.response == "list" else []
    names: list[str] = []
    for word in words:
        pattern = "*" if word == "all" else word
        if _PATTERN_CHARS.isdisjoint(pattern):
            names.append(word)
            continue
        matched = [name for name in known if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            session.complain(f"{word}: no job matches this pattern", EXIT_FAIL)
        names += [name for name in matched if name not in names]
    return names


def pull(session: Session, args: Namespace) -> None:
    reply = session.client.request("pull", args.job[0])
    if reply.response != "file" or session.as_json:
        return session.report("pull", args.job[0], reply)
    if args.output is None:
        session.out.flush()
        buffer = getattr(session.out, "buffer", sys.stdout.buffer)
        buffer.write(reply.data or b"")
        buffer.flush()
        return
    try:
        with open(args.output, "wb") as dst:
            dst.write(reply.data or b"")
    except OSError as exc:
        session.complain(f"cannot write {args.output}: {exc.strerror}", EXIT_FAIL)


def push(session: Session, args: Namespace) -> None:
    from taskmasterd.jobfiles.names import SUFFIX as JOB_SUFFIX

    path, name = args.file, args.name
    if name is None:
        if path == "-":
            return session.complain("push from standard input needs --name", EXIT_INVALID)
        name = os.path.basename(path).removesuffix(JOB_SUFFIX).removesuffix(".json")
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as src:
                data = src.read()
    except OSError as exc:
        return session.complain(f"cannot read {path}: {exc.strerror}", EXIT_INVALID)
    session.report("push", name, session.client.request("push", name, data, nowait=args.nowait))


# --- asking ------------------------------------------------------------------------------------

def status(session: Session, args: Namespace) -> None:
    """One job (`status web`, `status web:1`) as a block like `systemctl status`; else a table of
    the jobs named (one request each, on one connection), or of every job. Exit 3 when one of
    them is not in its wanted state, when a job file is invalid or could not be loaded, or when
    the daemon does not read its jobs directory (it says why)."""
    lines = getattr(args, "lines", DETAIL_LINES)
    one = len(args.job) == 1 and args.job[0] != "all" and _PATTERN_CHARS.isdisjoint(args.job[0])
    # CPU and memory of each instance (and for one job its detail): options a seed daemon ignores
    options = (b'{"detail":true,"lines":%d}' % lines) if one else b'{"accounting":true}'
    jobs: list[dict] = []
    answered: list[Reply] = []
    for word in args.job or [None]:
        job = None if word is None else selector([word])
        reply = session.client.request("status", job, options)
        if reply.response != "status":
            session.report("status", job, reply, quiet_json=True)
            continue
        answered.append(reply)
        jobs += reply.value["jobs"]
    if len(args.job) > 1:  # overlapping patterns name a job twice: show it once
        first: dict[str, dict] = {}
        for entry in jobs:
            first.setdefault(entry["name"], entry)
        jobs = list(first.values())
    everything = answered[0].value if answered and not args.job else {}
    unread = (everything.get("daemon") or {}).get("jobs_dir_problem")  # why the jobs directory is not read
    ignored = everything.get("ignored") or []  # files of the directory that could not be loaded
    if session.as_json:
        if answered:
            from .render import reply_document

            session.emit(reply_document(answered[0]) if len(answered) == 1 and len(args.job) <= 1
                         else {"response": "status", "data": {"jobs": jobs}})
    elif answered and one:
        from .detail import job_block

        session.out.write("\n".join(job_block(job) for job in jobs))
    elif answered:
        from .render import status_table

        session.out.write(status_table(jobs, session.colour, ignored))
        if unread:
            session.out.write(f"job files not read: {unread}\n")
    from .verdict import not_as_wanted

    # a deploy that is not applied is as much "not as wanted" as a job that is down
    if unread or ignored or not_as_wanted(jobs):
        session.exit = max(session.exit, EXIT_NOT_AS_WANTED)


DETAIL_LINES = 10  # log lines per stream in `status JOB`


def job_list(session: Session, args: Namespace) -> None:
    reply = session.client.request("list")
    if reply.response != "list" or session.as_json:
        return session.report("list", None, reply)
    from .render import job_list as render

    session.out.write(render(reply.value))


def pid(session: Session, args: Namespace) -> None:
    """The daemon's pid, or one line per running instance of the jobs named."""
    if not args.job:
        document = _daemon_document(session)
        if document is not None:
            session.emit({"pid": document["pid"]}) if session.as_json else print(document["pid"], file=session.out)
        return
    found: dict[str, list[int]] = {}
    for word in args.job:
        job = selector([word])
        reply = session.client.request("status", job)
        if reply.response != "status":
            session.report("pid", job, reply, quiet_json=True)
            continue
        pids = found[word] = [inst["pid"] for entry in reply.value["jobs"] for inst in entry["instances"] if inst["pid"]]
        if not pids:
            session.complain(f"pid {word}: not running", EXIT_FAIL)
        if not session.as_json:
            for number in pids:
                print(number, file=session.out)
    if session.as_json:
        session.emit({"pids": found})


def _daemon_document(session: Session) -> dict | None:
    """The `daemon` object of the status of every job: who answers."""
    reply = session.client.request("status")
    if reply.response != "status":
        session.report("status", None, reply)
        return None
    document = reply.value.get("daemon")
    if document is None:
        session.complain("the daemon does not say who it is (a taskmasterd older than this client?)", EXIT_FAIL)
    return document


def version(session: Session, args: Namespace) -> None:
    if not session.as_json:
        print(f"taskmasterctl {__version__}", file=session.out)
        session.out.flush()
    document = _daemon_document(session)
    if session.as_json:
        session.documents = [{"taskmasterctl": __version__, "taskmasterd": document}]
        return
    if document is None:
        return
    config = f", config {document['config']}" if document.get("config") else ""
    print(f"taskmasterd {document['version']} (pid {document['pid']}{config})", file=session.out)
    if document.get("containment"):  # a daemon older than this client does not say
        print(f"containment: {document['containment']}", file=session.out)


def shutdown(session: Session, args: Namespace) -> None:
    session.report("shutdown", None, session.client.request("shutdown"))


# --- following ---------------------------------------------------------------------------------

def tail(session: Session, args: Namespace) -> None:
    from .follow import follow_logs

    options = {"last": args.lines, "follow": args.follow, "stream": "stderr" if args.stderr else "stdout"}
    follow_logs(session, args.job[0], options)


def maintail(session: Session, args: Namespace) -> None:
    from .follow import follow_logs

    follow_logs(session, None, {"last": args.lines, "follow": args.follow})


def events(session: Session, args: Namespace) -> None:
    from .follow import follow_events

    follow_events(session, {"last": args.lines, "follow": args.follow})
