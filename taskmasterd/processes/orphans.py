"""What survives a daemon killed with SIGKILL.

The daemon journals every process group it starts in `<state_dir>/children.json`, one JSON array
per line, appended at the moment of the spawn (`["+", pid, identity, stopsignal, stoptime]`) and
of the reap (`["-", pid]`). `identity` tells that very process from any later one with the same
pid, without the wall clock: `"pidfs:N"`, the inode of its pidfd (unique for the kernel's uptime
since Linux 6.9, and an fstat away), or on older kernels `"ticks:N"`, its start time in clock
ticks since boot (/proc/<pid>/stat). A
daemon that starts and finds entries of a predecessor that died without cleaning up stops those
groups — also the ones whose leader died meanwhile but whose members live on — before it starts
any job. Under systemd, KillMode=mixed already kills the cgroup; this covers every other way.

Escapes (a grandchild that called setsid, in a group of its own) were the dead daemon's to stop
as child subreaper, and its death gave them to init: each daemon run has a random id, every child
gets it in its environment (RUN_VARIABLE) and the journal starts with it (`["run", id]`), so the
next daemon also stops every process whose initial environment carries its predecessor's id. A
clean shutdown leaves an empty journal, so only a daemon that died makes its successor look.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from dataclasses import dataclass
from typing import Iterable

import orjson

from ..kernel import pidfd
from .launch import RUN_VARIABLE

log = logging.getLogger("taskmasterd.orphans")
MAX_JOURNAL = 16 * 1024 * 1024  # bytes of a predecessor's journal we are willing to read
ESCAPE_STOPTIME = 1.0  # seconds an escape gets between SIGTERM and SIGKILL (its job's is not known)
COMPACT_AFTER = 4096  # journal lines beyond twice the live groups before it is rewritten
LEFTOVER_GRACE_CAP = 10.0  # a leftover's recorded stoptime, but never longer than this
# Built once: signal.valid_signals() makes 64 enum members per call, which was 95% of the time
# of reading a journal (70 µs a line: a 95 000-line journal held the first answer 6.7 s).
_VALID_SIGNALS = frozenset(int(sig) for sig in signal.valid_signals())


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as src:
            raw = src.read()
    except OSError:
        return None
    return raw.rpartition(b")")[2].split()


def start_ticks(pid: int) -> int | None:
    """Clock ticks since boot at which `pid` started (field 22), or None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _pidfs(other: int) -> bool:
    """Whether pidfds have an inode of their own per process (pidfs, Linux 6.9+): compared on
    this process and its parent, or `other` (a process being identified) when this one has no
    parent to open (PID 1 of a namespace: getppid() is 0). Unknown until told: False."""
    global _HAS_PIDFS
    if _HAS_PIDFS is None:
        peer = os.getppid() or other
        if peer == os.getpid():
            return False
        try:
            mine, theirs = os.pidfd_open(os.getpid()), os.pidfd_open(peer)
        except OSError:
            return False  # gone, or out of descriptors: the start time identifies as well
        try:
            _HAS_PIDFS = os.fstat(mine).st_ino != os.fstat(theirs).st_ino
        finally:
            os.close(mine)
            os.close(theirs)
    return _HAS_PIDFS


_HAS_PIDFS: bool | None = None


def identity(pid: int) -> str | None:
    """What tells process `pid` from any later one with its pid (see the module's docstring);
    None when it is gone."""
    if _pidfs(pid):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            pass  # out of descriptors, say: the start time identifies it as well, only slower
        else:
            try:
                return f"pidfs:{os.fstat(fd).st_ino}"
            finally:
                os.close(fd)
    ticks = start_ticks(pid)
    return None if ticks is None else f"ticks:{ticks}"


class ChildJournal:
    """Append-only record of the live groups; rewritten when mostly made of ended entries."""

    def __init__(self, path: str, run: str | None = None) -> None:
        """`run`: this daemon run's id (RUN_VARIABLE), the journal's first line while it lives."""
        self.path = path
        self._run = run
        self._fd = -1
        self._live: dict[int, bytes] = {}  # pid -> its "+" line
        self._lines = 0
        self._failed = False

    def open(self) -> None:
        """Start a fresh journal (after `stop_leftovers` consumed the predecessor's)."""
        self._rewrite()

    def started(self, spawns: Iterable[tuple[int, str | None, int, float]]) -> None:
        """(pid, its `identity` (None: gone already), stop signal, stoptime) of each, in one write."""
        lines = []
        for pid, who, stopsignal, stoptime in spawns:
            if who is not None:
                line = self._live[pid] = orjson.dumps(["+", pid, who, stopsignal, stoptime]) + b"\n"
                lines.append(line)
        if lines:
            self._append(b"".join(lines), len(lines))

    def ended(self, pid: int) -> None:
        if self._live.pop(pid, None) is None:
            return
        self._append(orjson.dumps(["-", pid]) + b"\n", 1)
        if self._lines > 2 * len(self._live) + COMPACT_AFTER:
            self._rewrite()

    def _append(self, lines: bytes, count: int) -> None:
        """Whole lines in one O_APPEND write (no torn interleaving). A write that failed or went in
        part (a full disk) leaves the file behind the records kept here: from then on the journal
        is rewritten whole (atomically) at each record until that succeeds, never appended to
        after a torn line, which would make every later record unreadable."""
        if self._fd < 0:
            return
        if self._failed:
            self._rewrite()
            return
        try:
            written = os.write(self._fd, lines)
        except OSError as exc:
            self._complain(exc)
            return
        if written < len(lines):
            self._complain(OSError(errno.ENOSPC, f"wrote {written} of {len(lines)} bytes"))
            return
        self._lines += count

    def _rewrite(self, closing: bool = False) -> None:
        tmp = f"{self.path}.tmp"
        header = [] if closing or self._run is None else [orjson.dumps(["run", self._run]) + b"\n"]
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                whole = b"".join([*header, *self._live.values()])
                if os.write(fd, whole) < len(whole):  # never put a cut journal in place
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self._complain(exc)
            return
        if self._fd >= 0:
            os.close(self._fd)
        if self._failed:
            log.warning("recording children in %s again: every live one is in it", self.path)
        self._fd, self._lines, self._failed = fd, len(self._live), False

    def _complain(self, exc: OSError) -> None:
        if not self._failed:
            log.warning("cannot record children in %s: %s (a daemon killed now would leave them running; "
                        "the journal is rewritten whole once it can be)", self.path, exc.strerror or exc)
            self._failed = True

    def close(self) -> None:
        """A clean shutdown leaves an empty journal: nothing to recover."""
        if self._fd >= 0:
            self._live.clear()
            self._rewrite(closing=True)
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class Leftover:
    pgid: int  # the group signalled (through its leader's pidfd); with `whole_group` False, the one process
    stopsignal: int
    stoptime: float
    members: tuple[int, ...]
    whole_group: bool = True
    # What the process signalled must still be when the signal goes (seen with its pidfd open):
    # ("identity", recorded) — the journaled leader itself; ("mark", run) — a process started
    # with that run's id in its environment.
    proof: tuple[str, str] = ("mark", "")

    def holds(self, pid: int) -> bool:
        kind, value = self.proof
        if kind == "identity":
            return _identity_like(pid, value) == value
        return bool(value) and (RUN_VARIABLE, value) in environment_of(pid)


@dataclass(frozen=True)
class Journal:
    live: dict[int, tuple[str, int, float]]  # pid -> (identity, stop signal, stoptime)
    run: str | None = None  # the id of the daemon run that wrote it, if it did not shut down


def read_journal(path: str) -> Journal:
    """The groups a journal says are live, and the run that wrote it. Whatever does not have the
    journal's shape is skipped with one warning, never raised."""
    try:
        with open(path, "rb") as src:
            raw = src.read(MAX_JOURNAL + 1)
    except FileNotFoundError:
        return Journal({})
    except OSError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc.strerror)
        return Journal({})
    if len(raw) > MAX_JOURNAL:
        log.warning("%s is larger than %d bytes; reading only its start", path, MAX_JOURNAL)
    live: dict[int, tuple[str, int, float]] = {}
    run = None
    bad = 0
    for line in raw[:MAX_JOURNAL].splitlines():
        entry = _entry(line)
        if entry is None:
            bad += bool(line.strip())
        elif entry[0] == "run":
            run = entry[1]
        elif entry[0] == "+":
            live[entry[1]] = entry[2:]  # type: ignore[assignment]
        else:
            live.pop(entry[1], None)
    if bad:
        log.warning("ignoring %d line(s) of %s that are not journal entries", bad, path)
    return Journal(live, run)


def _entry(line: bytes) -> tuple | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, list) or not value:
        return None
    if value[0] == "-" and len(value) == 2 and _positive_int(value[1]):
        return ("-", value[1])
    if value[0] == "run" and len(value) == 2 and isinstance(value[1], str) and value[1].isascii() \
            and value[1].isalnum() and 0 < len(value[1]) <= 64:
        return ("run", value[1])
    if value[0] == "+" and len(value) == 5 and _positive_int(value[1]) and _identity_text(value[2]) \
            and isinstance(value[3], int) and value[3] in _VALID_SIGNALS \
            and isinstance(value[4], (int, float)) and 0 <= value[4] < float("inf"):
        return ("+", value[1], value[2], value[3], float(value[4]))
    return None


def _identity_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    kind, _, number = value.partition(":")
    return kind in ("pidfs", "ticks") and number.isascii() and number.isdigit()


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31


def find_leftovers(journal: dict[int, tuple[str, int, float]], run: str | None = None) -> list[Leftover]:
    """The recorded groups that still have members. A leader that is alive must have the
    recorded identity (else its pid was reused: not ours). A leader that died leaves its pid
    held by the group while any member lives (the kernel does not reuse a pid still in use as a
    process group id), so its surviving members are ours. With `run`, also the processes outside
    them whose environment carries that run's id: escapes, each with its group if it leads one."""
    if not journal and run is None:
        return []
    groups: dict[int, list[int]] = {}
    outside: dict[int, list[int]] = {}  # pgid -> members, of the groups not journaled
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None or len(fields) < 20:
            continue
        pgid, session = int(fields[2]), int(fields[3])
        if pgid in journal and session == pgid:
            groups.setdefault(pgid, []).append(int(entry))
        elif run is not None:
            outside.setdefault(pgid, []).append(int(entry))
    found = []
    for pgid, members in groups.items():
        recorded, stopsignal, stoptime = journal[pgid]
        stoptime = min(stoptime, LEFTOVER_GRACE_CAP)
        leader = _identity_like(pgid, recorded)
        if leader == recorded:  # the leader itself: its group is ours
            found.append(Leftover(pgid, stopsignal, stoptime, tuple(members), proof=("identity", recorded)))
        elif leader is None and run is not None:
            # The leader died while no daemon ran, so its pid may be a new process's group now
            # (a daemonizer: setsid, fork, exit). Only members started by that run are ours.
            found.extend(Leftover(pid, stopsignal, stoptime, (pid,), whole_group=False, proof=("mark", run))
                         for pid in members if (RUN_VARIABLE, run) in environment_of(pid))
    if run is not None:
        found.extend(_escapes_of_run(run, outside))
    return found


def _escapes_of_run(run: str, groups: dict[int, list[int]]) -> list[Leftover]:
    mark = (RUN_VARIABLE, run)
    own = os.getpid()
    found = []
    for pgid, members in groups.items():
        marked = [pid for pid in members if pid != own and mark in environment_of(pid)]
        if pgid in marked:  # it leads its group (setsid): the group goes with it
            found.append(Leftover(pgid, signal.SIGTERM, ESCAPE_STOPTIME, tuple(members), proof=("mark", run)))
        else:
            found.extend(Leftover(pid, signal.SIGTERM, ESCAPE_STOPTIME, (pid,), whole_group=False, proof=("mark", run))
                         for pid in marked)
    return found


def environment_of(pid: int, limit: int = 256 * 1024) -> frozenset[tuple[str, str]]:
    """The TASKMASTER_* and COLONIES_PROCESS_ID variables `pid` was started with."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as src:
            raw = src.read(limit)
    except OSError:
        return frozenset()
    pairs = set()
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name.startswith((b"TASKMASTER_", b"COLONIES_PROCESS_ID")):
            pairs.add((name.decode(errors="replace"), value.decode(errors="replace")))
    return frozenset(pairs)


def _identity_like(pid: int, recorded: str) -> str | None:
    """`pid`'s identity in the scheme `recorded` was written in."""
    if recorded.startswith("ticks:"):
        ticks = start_ticks(pid)
        return None if ticks is None else f"ticks:{ticks}"
    return identity(pid)


async def stop_leftovers(path: str) -> int:
    """Stop the process groups a previous daemon left running, and its escapes; returns how many
    groups and escapes there were."""
    journal = read_journal(path)
    leftovers = find_leftovers(journal.live, journal.run)
    if not leftovers:
        return 0
    log.warning("stopping %d process group(s) left by a daemon that did not shut down", len(leftovers))
    for group in leftovers:
        _signal(group, group.stopsignal)
    members = [pid for group in leftovers for pid in group.members]
    await wait_gone(members, max(group.stoptime for group in leftovers))
    for group in leftovers:
        _signal(group, signal.SIGKILL)
    await wait_gone(members, 5.0)
    return len(leftovers)


def _signal(leftover: Leftover, sig: int) -> None:
    """Through the pidfd of the process (or group leader) named, once it is seen to be still the
    one found: a pid that changed hands meanwhile is never signalled."""
    pidfd.signal_if(leftover.pgid, sig, leftover.holds, group=leftover.whole_group)


async def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait on their pidfds (they need not be our children) until every pid has exited."""
    loop = asyncio.get_running_loop()
    waiters: list[tuple[int, asyncio.Future[None]]] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno in (errno.ESRCH, errno.EINVAL):
                continue
            raise
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve_once, loop, fd, done)
        waiters.append((fd, done))
    try:
        if waiters:
            await asyncio.wait([done for _, done in waiters], timeout=timeout)
    finally:
        for fd, done in waiters:
            loop.remove_reader(fd)
            os.close(fd)
            done.cancel()


def _resolve_once(loop: asyncio.AbstractEventLoop, fd: int, done: asyncio.Future[None]) -> None:
    loop.remove_reader(fd)  # a pidfd stays readable: one wake-up is enough
    if not done.done():
        done.set_result(None)
