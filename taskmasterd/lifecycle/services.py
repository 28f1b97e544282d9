"""What the daemon gives every job and instance when it makes them: the one owner of processes,
the log files, the event bus, where notify sockets live, and what a job's change means beyond it
(its dependants, its listeners). Jobs and instances reach the daemon through this alone, never
back through the supervisor, so each can be made and tested with what it is given."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from ..health.notify_socket import NotifyDirectory
from ..observe.events import EventBus
from ..processes.logcapture import ConsoleSink, LogFiles
from ..processes.table import ProcessTable
from ..tasks import TaskOwner
from .dependencies import ConditionsOf

if TYPE_CHECKING:
    from ..jobfiles.jobfile import JobSpec


class ConsoleStreams(Protocol):
    """Container mode's console (container/console.py): where an instance's stream goes when its
    job names no log file."""

    def stream_for(self, spec: JobSpec, stream: str, index: int) -> ConsoleSink | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Services:
    processes: ProcessTable  # every spawn goes through it, and every stop
    events: EventBus  # state and health changes, for `events`
    log_files: LogFiles
    log_dir: str
    base_environment: Mapping[str, str]  # what every child inherits, before its job's `env`
    notify_directory: Callable[[], NotifyDirectory]  # made when a job first needs a notify socket
    conditions_of: ConditionsOf  # the conditions another job meets for its dependants
    standing_changed: Callable[[str], None]  # job `name` changed state, health or wish: look again
    hold: Callable[[str], None]  # job `name` has instances WAITING: release them when dependencies allow
    checks: TaskOwner  # the tasks of http and command health checks, awaited at shutdown
    console: ConsoleStreams | None = None  # container mode: the daemon's own stdout and stderr
    may_autostart: Callable[[str], bool] = lambda name: True  # job `name` is not disabled
