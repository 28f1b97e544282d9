"""`taskmasterctl logs [SELECTOR...] [-f] [-n N] [--since T] [--timestamps] [--stderr|--stdout|--both]`:
every selected instance's streams in one stream, each line prefixed `web[0] |`.

The daemon resolves the selector (`status` with the `logs` option says which instances there
are and where each stream goes: discarded, or stderr merged into stdout's file), then each
stream is one `logs` request on a connection of its own. Their first replies (the last lines)
are printed merged by the time each part was written; with -f every later reply as it arrives,
the connections multiplexed with `selectors`. A line is printed only once it is whole (its
newline has come), so two streams never interleave inside a line; the daemon's follower reads
across rotations. On a terminal each job's prefix has a colour of its own and the job's control
characters are shown escaped (its colours kept); into a pipe or a file the bytes are as written.
"""
from __future__ import annotations

import json
import sys
import time

from taskmasterd.control.protocol import FrameDecoder, ReplyError, decode_reply, encode_request

from .client import MAX_REPLY, Client, ConnectionFailed, SignalWakeup, drain_wakeup
from .session import EXIT_FAIL, EXIT_UNREACHABLE, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    import selectors
    from argparse import Namespace

    from taskmasterd.reply import Reply

COLOURS = ("36", "33", "32", "35", "34", "91", "96", "93", "92", "95")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Target:
    """One stream of one instance, and what of it is not printed yet."""

    __slots__ = ("job", "index", "stream", "label", "pending", "times", "client", "sock", "decoder", "first")

    def __init__(self, job: str, index: int, stream: str) -> None:
        self.job, self.index, self.stream = job, index, stream
        self.label = f"{job}[{index}]"
        self.pending = b""  # the start of a line whose newline has not come yet
        self.times: float | None = None  # when the pending part was written
        self.client: Client | None = None
        self.sock = None
        self.decoder = FrameDecoder(MAX_REPLY)
        self.first = True

    def lines(self, reply: Reply) -> list[tuple[float | None, bytes]]:
        """The whole lines this reply completes, each with the time it was written (if known):
        a line's time is that of the last mark at or before its start (`times`: [offset, time])."""
        data = reply.data or b""
        marks = (reply.value or {}).get("times") or []
        parts = data.split(b"\n")
        rest = parts.pop()  # after the last newline: the start of a line to come
        if len(marks) <= 1 and (not marks or marks[0][0] == 0):  # a followed chunk: one time for all
            when = marks[0][1] if marks else None
            found = [(when, line) for line in parts]
        else:
            found, offset, position, when = [], 0, 0, None
            for line in parts:
                while position < len(marks) and marks[position][0] <= offset:
                    when = marks[position][1]
                    position += 1
                found.append((when, line))
                offset += len(line) + 1
            while position < len(marks) and marks[position][0] <= offset:
                when = marks[position][1]
                position += 1
        if found and self.pending:  # the first line began in an earlier reply
            found[0] = (self.times, self.pending + found[0][1])
            self.pending = b""
        if rest:
            if not self.pending:
                self.times = when
            self.pending += rest
        return found


def parse_since(text: str) -> float:
    """`30s`, `5m`, `2h`, `1d` ago; a Unix time; or a local date and time (`2026-05-01 12:00`,
    `2026-05-01T12:00:30`, a time alone meaning today)."""
    text = text.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in UNITS:
        return time.time() - float(text[:-1]) * UNITS[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, layout))
        except ValueError:
            continue
    for layout in ("%H:%M:%S", "%H:%M"):
        try:
            clock = time.strptime(text, layout)
        except ValueError:
            continue
        today = time.localtime()
        return time.mktime((today.tm_year, today.tm_mon, today.tm_mday, clock.tm_hour, clock.tm_min, clock.tm_sec,
                            0, 0, -1))
    raise ValueError(f"--since {text!r}: give 30s, 5m, 2h or 1d ago, a Unix time, or a date and time "
                     "like 2026-05-01T12:00:00")


def stamp(when: float | None) -> str:
    """ISO 8601 local time to the millisecond; dashes when not known (written before the
    daemon noted times: by an earlier daemon, or the file's first part)."""
    if when is None:
        return "-" * 23
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"


class Printer:
    """Prefixed, aligned, coloured lines (on a terminal), or JSON documents."""

    def __init__(self, session: Session, targets: list[Target], timestamps: bool) -> None:
        self.session = session
        self.width = max((len(target.label) for target in targets), default=0)
        self.colour = session.colour
        self.timestamps = timestamps
        self.binary = getattr(session.out, "buffer", None)
        self.gathered: list[dict] = []  # --json without -f: the one document's lines
        jobs = sorted({target.job for target in targets})
        self.colours = {job: COLOURS[position % len(COLOURS)] for position, job in enumerate(jobs)}

    def show(self, target: Target, lines: list[tuple[float | None, bytes]], stream_json: bool) -> None:
        if not lines:
            return
        if self.session.as_json:
            for when, line in lines:
                record = {"job": target.job, "instance": target.index, "stream": target.stream,
                          "time": when, "line": line.decode("utf-8", "replace")}
                if stream_json:
                    print(json.dumps(record, ensure_ascii=False), file=self.session.out)
                else:
                    self.gathered.append(record)
            return
        label = target.label.ljust(self.width)
        if self.colour:
            from .safetext import safe_output

            label = f"\x1b[{self.colours[target.job]}m{label}\x1b[0m"
            text = "".join((f"{stamp(when)} " if self.timestamps else "") + f"{label} | "
                           + safe_output(line.decode("utf-8", "replace")) + "\n" for when, line in lines)
            self.session.out.write(text)
            return
        prefix = f"{label} | ".encode()
        chunk = b"".join((f"{stamp(when)} ".encode() if self.timestamps else b"") + prefix + line + b"\n"
                         for when, line in lines)
        if self.binary is not None:
            self.binary.write(chunk)
        else:  # a text stream without bytes underneath (the shell's redirections, tests)
            self.session.out.write(chunk.decode("utf-8", "replace"))

    def flush(self) -> None:
        (self.binary or self.session.out).flush()


def logs(session: Session, args: Namespace) -> None:
    if args.daemon:
        from .follow import follow_logs

        return follow_logs(session, None, {"last": args.lines, "follow": args.follow})
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        return session.complain(str(exc), 2)
    targets = _targets(session, args)
    if targets is None:
        return
    last = (10 if since is None else 100_000) if args.lines is None else args.lines  # --since: all since then
    options = {"last": last, "follow": args.follow, "times": True}
    if since is not None:
        options["since"] = since
    printer = Printer(session, targets, args.timestamps)
    session.out.flush()
    try:
        _run(session, targets, options, printer)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        for target in targets:
            if target.client is not None:
                target.client.close()
    if session.as_json and not args.follow:
        session.emit({"lines": printer.gathered})


def _targets(session: Session, args: Namespace) -> list[Target] | None:
    """Every stream to show, from one `status` of the selector (docs/protocol.md, status options)."""
    from .actions import selector

    words = args.job or ["all"]
    reply = session.client.request("status", selector(words), b'{"logs":true}')
    if reply.response != "status":
        session.report("logs", " ".join(words), reply, quiet_json=True)
        return None
    streams = ("stdout", "stderr") if args.streams == "both" else (args.streams,)
    targets: list[Target] = []
    for job in reply.value["jobs"]:
        for inst in job["instances"]:
            files = inst.get("logs")
            if files is None:  # a daemon without the option: ask each stream, the daemon says
                files = {stream: {"path": "?"} for stream in streams}
            chosen: list[str] = []
            for stream in streams:
                found = files.get(stream) or {}
                if found.get("merged"):  # stderr is in stdout's file: read that file once
                    stream = "stdout"
                if found.get("path") is not None and stream not in chosen:
                    chosen.append(stream)
            targets += [Target(job["name"], inst["index"], stream) for stream in chosen]
    if not targets:
        session.complain(f"logs {' '.join(words)}: nothing to show (no instance, or its output is discarded)",
                         EXIT_FAIL)
        return None
    return targets


def _run(session: Session, targets: list[Target], options: dict, printer: Printer) -> None:
    import selectors

    base = session.client
    poll = selectors.DefaultSelector()
    for target in targets:
        target.client = Client(base.host, base.port, base.timeout, socket_path=base.socket_path)
        target.sock = target.client._connection()
        request = encode_request("logs", f"{target.job}:{target.index}",
                                 json.dumps({**options, "stream": target.stream}).encode())
        target.sock.sendall(request)
        poll.register(target.sock, selectors.EVENT_READ, target)
    with SignalWakeup() as wake:
        _multiplex(session, targets, options, printer, poll, wake)


def _multiplex(session: Session, targets: list[Target], options: dict, printer: Printer,
               poll: selectors.BaseSelector, wake: int | None) -> None:
    """Every stream's replies as they come, until each has ended; `wake` (client.SignalWakeup)
    is watched too, so a Ctrl-C always ends the wait."""
    import selectors

    base = session.client
    backlog: list[tuple[float, int, Target, float | None, bytes]] = []
    waiting = len(targets)  # first replies still to come
    deadline = time.monotonic() + base.timeout
    if wake is not None:
        poll.register(wake, selectors.EVENT_READ, None)
    while len(poll.get_map()) > (wake is not None):  # a stream is still open
        timeout = None if waiting == 0 else max(deadline - time.monotonic(), 0)
        events = poll.select(timeout)
        if not events and waiting:
            raise ConnectionFailed(f"no reply from taskmasterd at {base.address} within {base.timeout:g} s")
        for key, _ in events:
            target = key.data
            if target is None:
                drain_wakeup(key.fd)
                continue
            try:
                chunk = target.sock.recv(1 << 18)
            except OSError as exc:
                raise ConnectionFailed(f"lost the connection to taskmasterd: {exc.strerror or exc}") from None
            if not chunk:
                poll.unregister(target.sock)
                if options["follow"]:
                    session.complain(f"taskmasterd closed the stream of {target.label} {target.stream}",
                                     EXIT_UNREACHABLE)
                continue
            for body in target.decoder.feed(chunk):
                try:
                    reply = decode_reply(body)
                except ReplyError as exc:
                    raise ConnectionFailed(f"taskmasterd: {exc}") from None
                if reply.response != "file":
                    session.report("logs", f"{target.job}:{target.index} {target.stream}", reply, quiet_json=True)
                    poll.unregister(target.sock)
                    if target.first:
                        target.first = False
                        waiting -= 1
                    break
                lines = target.lines(reply)
                if target.first:  # the last lines: printed together once every stream has sent them
                    target.first = False
                    waiting -= 1
                    backlog += [(when or 0.0, len(backlog), target, when, line) for when, line in lines]
                    if not options["follow"]:
                        poll.unregister(target.sock)
                    if waiting == 0:
                        _print_backlog(printer, backlog, options["follow"])
                else:
                    printer.show(target, lines, stream_json=True)
            if waiting == 0:
                printer.flush()
    if waiting:
        _print_backlog(printer, backlog, options["follow"])


def _print_backlog(printer: Printer, backlog: list, follow: bool) -> None:
    """The last lines of every stream, in the order they were written (to the second; lines of
    unknown time first, each stream's in its own order)."""
    backlog.sort(key=lambda entry: (entry[0], entry[1]))
    for _, _, target, when, line in backlog:
        printer.show(target, [(when, line)], stream_json=follow)
    backlog.clear()
    printer.flush()
