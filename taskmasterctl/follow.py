"""`tail`, `maintail` and `events`: print what a following request streams, as it comes, until
Ctrl-C (which ends the command quietly, with status 0)."""
from __future__ import annotations

import json
import sys

from taskmasterd.reply import Reply

from .session import EXIT_UNREACHABLE, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


def follow_logs(session: Session, job: str | None, options: dict) -> None:
    session.out.flush()
    binary = getattr(session.out, "buffer", None)

    def show(reply: Reply) -> None:
        if session.as_json:
            from .render import reply_document, reply_json

            if options["follow"]:  # a stream: one document per line
                session.streamed = True
                print(reply_json(reply), file=session.out)
            else:
                session.emit(reply_document(reply))
        elif binary is not None:
            binary.write(reply.data or b"")
            binary.flush()
        else:  # a text stream without bytes underneath (the shell's redirections, tests)
            session.out.write((reply.data or b"").decode("utf-8", "replace"))

    _follow(session, "tail" if job is not None else "maintail", "logs", job, options, "file", show)


def follow_events(session: Session, options: dict) -> None:
    from .render import event_line

    def show(reply: Reply) -> None:
        if reply.value.get("lost"):
            session.complain(f"{reply.value['lost']} events were lost here: this client read too slowly", 0)
        if session.as_json and not options["follow"]:
            session.emit(reply.value)
            return
        session.streamed = session.as_json
        for event in reply.value.get("events", []):  # following: one document per line
            print(json.dumps(event, separators=(",", ":")) if session.as_json else event_line(event), file=session.out)

    _follow(session, "events", "events", None, options, "events", show)


def _follow(session: Session, command: str, verb: str, job: str | None, options: dict, response: str,
            show: Callable[[Reply], None]) -> None:
    """Send `verb` and `show` each reply of kind `response` as it arrives (only the first, without
    follow); any other reply is reported and ends the command."""
    replies = session.client.stream(verb, job, json.dumps(options).encode())
    try:
        for reply in replies:
            if reply.response != response:
                return session.report(command, job, reply, quiet_json=options["follow"])
            show(reply)
            session.out.flush()
            if not options["follow"]:
                return
        session.complain("taskmasterd closed the connection", EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        replies.close()
