"""`tail`, `maintail` and `events`: print what a following request streams, as it comes, until
Ctrl-C (which ends the command quietly, with status 0)."""
from __future__ import annotations

import json
import sys

from .session import EXIT_UNREACHABLE, Session


def follow_logs(session: Session, job: str | None, options: dict) -> None:
    command = "tail" if job is not None else "maintail"
    session.out.flush()
    binary = getattr(session.out, "buffer", None)
    replies = session.client.stream("logs", job, json.dumps(options).encode())
    try:
        for reply in replies:
            if reply.response != "file":
                return session.report(command, job, reply)
            if session.as_json:
                from .render import reply_json

                print(reply_json(reply), file=session.out, flush=True)
            elif binary is not None:
                binary.write(reply.data or b"")
                binary.flush()
            else:  # a text stream without bytes underneath (tests, the shell's redirections)
                session.out.write((reply.data or b"").decode("utf-8", "replace"))
                session.out.flush()
            if not options["follow"]:
                return
        session.complain("taskmasterd closed the connection", EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        replies.close()


def follow_events(session: Session, options: dict) -> None:
    from .render import event_line

    replies = session.client.stream("events", None, json.dumps(options).encode())
    try:
        for reply in replies:
            if reply.response != "events":
                return session.report("events", None, reply)
            if reply.value.get("lost"):
                session.complain(f"{reply.value['lost']} events were lost here: this client read too slowly", 0)
            for event in reply.value.get("events", []):
                print(json.dumps(event, separators=(",", ":")) if session.as_json else event_line(event),
                      file=session.out)
            session.out.flush()
            if not options["follow"]:
                return
        session.complain("taskmasterd closed the connection", EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        replies.close()
