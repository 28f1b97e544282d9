"""How the daemon holds what it starts: a cgroup per spawn, or process groups where it cannot.

**cgroup2** (a writable cgroup v2 hierarchy): every spawn runs in a cgroup of its own, a *cell*,
named `<unit>.<run>.<spawn>` under a subtree the daemon owns — its own cgroup when systemd
delegated it (`Delegate=yes`; the daemon then moves itself into the leaf `supervisor`, since a
cgroup with controllers for its children may hold no process), else `taskmasterd-<state dir>` at
the root of the hierarchy, which it creates (two daemons never share one: they have different
state directories, and a state directory has one daemon). Whatever a spawn forks, setsid or
double-fork, stays in its cell: a stop signals every process of the cell through its pidfd, a
kill is one write to `cgroup.kill`, and the spawn is over when `cgroup.events` says the cell is
empty (inotify: never polled). A restart is another spawn, so another cell.

Placement: Python's posix_spawn cannot clone3(CLONE_INTO_CGROUP), so the spawning thread goes
into the cell, spawns, and comes back: the child is born there, before its first instruction.
In v2 a move takes the whole daemon (cgroup.procs: ~30 µs a write back to back, but the first
after a quiet spell waits for an RCU grace period unless cgroup2 is mounted with favordynmods:
docs/architecture.md), in v1 only the writing thread (`tasks`, ~10 µs). Its threads sit in the cell for those
microseconds: none of them forks meanwhile (spawns are made one at a time, by the thread that
moved), and a cell's limits are written once the daemon is out again (`Cell.apply`), so the
daemon never counts against a job's limits (docs/architecture.md).

**Controllers** (limits and accounting): from the v2 subtree when they are enabled there, else
from cgroup v1 hierarchies (hybrid hosts: v2 for containment and events, v1 for memory, cpu,
pids), where a cell gets a directory under `<own v1 cgroup>/taskmasterd-<state dir>` in each
hierarchy its limits need. A controller that is neither is a clear start failure.

**process-group** (no writable cgroup v2): each spawn leads a process group of its own, the daemon
is child subreaper, escapes are found by their environment marks and a killed daemon's leftovers
through the journal (orphans.py); every signal still goes through a pidfd.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from ..jobfiles.resources import CPU_PERIOD_US, NO_RESOURCES, Resources
from ..kernel import cgroup, inotify, pidfd
from ..kernel.cgroup import Hierarchy, Layout

log = logging.getLogger("taskmasterd.containment")
LIMIT_FIELDS = {"memory": "memory_max", "cpu": "cpu_quota", "pids": "tasks_max"}  # controller -> its field
LIMITED = tuple(LIMIT_FIELDS)
DELEGATED_LEAF = "supervisor"  # the daemon's own leaf in a delegated subtree
STOP_XATTR = "user.taskmaster.stop"  # "<stopsignal> <stoptime>" of a cell, for the next daemon
LEFTOVER_GRACE_CAP = 10.0


class ContainmentError(Exception):
    """A spawn cannot be contained as its job asks (a controller that is not there)."""


def subtree_name(state_dir: str) -> str:
    """`taskmasterd-var-lib-taskmaster-1a2b3c4d`: the state directory, readable, and a hash of it
    (two paths that read alike never share a name)."""
    readable = re.sub(r"[^A-Za-z0-9_.]+", "-", state_dir).strip("-")[:120] or "root"
    return f"taskmasterd-{readable}-{hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:8]}"


def _why(exc: OSError, path: str) -> str:
    return f"{path}: {exc.strerror or exc}"


@dataclass(frozen=True)
class Place:
    """Where a controller's cells go: a v2 subtree (the cell's own directory has it) or a v1 one."""

    controller: str
    hierarchy: Hierarchy
    subtree: str


class Controllers:
    """Where each controller a job may need is, or why it is not there."""

    def __init__(self, layout: Layout, name: str, v2_subtree: str | None, v2_enabled: frozenset[str]) -> None:
        self._layout = layout
        self._name = name
        self._v2_subtree = v2_subtree
        self.v2_enabled = v2_enabled
        self._v1: dict[str, Place | str] = {}  # controller -> its place, or why not

    def v1_place(self, controller: str) -> Place:
        """The v1 place of a controller the v2 subtree does not offer; ContainmentError else."""
        known = self._v1.get(controller)
        if known is None:
            known = self._v1[controller] = self._v1_place(controller)
        if isinstance(known, str):
            raise ContainmentError(known)
        return known

    def _v1_place(self, controller: str) -> Place | str:
        hierarchy = self._layout.v1.get(controller)
        if self._v2_subtree is not None:
            offered = f"not delegated to {self._v2_subtree}"
        elif self._layout.v2 is not None:
            offered = "no writable cgroup2 subtree"
        else:
            offered = "no cgroup2 hierarchy"
        if hierarchy is None:
            return f"the {controller} controller is not available: {offered}, and no cgroup v1 {controller} hierarchy is mounted"
        subtree = os.path.join(hierarchy.own, self._name)
        try:
            os.makedirs(subtree, exist_ok=True)  # at the first spawn that needs it
        except OSError as exc:
            return f"the {controller} controller is not available: {offered}, and cgroup v1 {_why(exc, subtree)}"
        return Place(controller, hierarchy, subtree)

    def describe(self) -> dict[str, str]:
        """controller -> "cgroup2", "cgroup v1" or why it is not available (for status)."""
        described = {}
        for controller in LIMITED:
            hierarchy = self._layout.v1.get(controller)
            if controller in self.v2_enabled:
                described[controller] = "cgroup2"
            elif controller not in self._v1 and hierarchy is not None and os.access(hierarchy.own, os.W_OK):
                described[controller] = "cgroup v1"  # said without making anything
            else:
                try:
                    self.v1_place(controller)
                    described[controller] = "cgroup v1"
                except ContainmentError as exc:
                    described[controller] = str(exc)
        return described


class Cell:
    """One spawn's cgroup: its v2 directory (None in process-group mode) and the v1 directories its
    limits need."""

    __slots__ = ("path", "v2", "v1", "v2_controllers", "home_procs", "resources", "_watch")

    def __init__(self, path: str | None, v2: Hierarchy | None, v1: dict[str, tuple[Hierarchy, str]],
                 v2_controllers: frozenset[str], home_procs: str | None) -> None:
        self.path = path
        self.v2 = v2
        self.v1 = v1  # controller -> (hierarchy, directory)
        self.v2_controllers = v2_controllers
        self.home_procs = home_procs  # where the daemon goes back to after a spawn (v2)
        self.resources = NO_RESOURCES
        self._watch: inotify.Watch | None = None

    # --- placement ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def placed(self) -> Iterator[None]:
        """The calling thread (v1) and the daemon (v2) inside the cell while the body forks."""
        hierarchies = {hierarchy.mountpoint: (hierarchy, directory) for hierarchy, directory in self.v1.values()}
        entered: list[str] = []
        try:
            for hierarchy, directory in hierarchies.values():
                cgroup.write(os.path.join(directory, "tasks"), b"0")
                entered.append(os.path.join(hierarchy.own, "tasks"))
            if self.path is not None:
                cgroup.write(os.path.join(self.path, "cgroup.procs"), b"0")
                assert self.home_procs is not None
                entered.append(self.home_procs)
            yield
        finally:
            for back in reversed(entered):
                _move_back(back)

    # --- limits ---------------------------------------------------------------------------------

    def apply(self, resources: Resources) -> bool:
        """Write the limits (and lift those no longer asked for); False when one needs a
        controller this cell was made without (a restart gives it one). Written once the spawn
        is made and the daemon is out of the cell, never before: with its threads inside, a
        tiny cpu_quota could throttle the daemon, tasks_max count its threads, and an OOM in the
        cell while the child execs choose the daemon (the largest process there) as its victim.
        The job's first microseconds therefore run without them (docs/architecture.md)."""
        for controller, field in LIMIT_FIELDS.items():
            wanted, had = getattr(resources, field), getattr(self.resources, field)
            if wanted is None and had is None:
                continue
            where = self._directory(controller)
            if where is None:
                if wanted is None:
                    continue
                return False
            directory, version = where
            for name, value in _limit_files(controller, version, wanted):
                cgroup.write(os.path.join(directory, name), value)
        self.resources = resources
        return True

    def _directory(self, controller: str) -> tuple[str, int] | None:
        if controller in self.v2_controllers and self.path is not None:
            return self.path, 2
        if controller in self.v1:
            return self.v1[controller][1], 1
        return None

    # --- signals and the end --------------------------------------------------------------------

    def signal(self, sig: int) -> bool:
        """`sig` to every process of the cell, each through its pidfd, once it is seen still in
        the cell; False when none was there."""
        assert self.path is not None and self.v2 is not None
        path, hierarchy = self.path, self.v2
        sent = False
        for pid in cgroup.members(path):
            sent = pidfd.signal_if(pid, sig, lambda p: cgroup.in_cgroup(p, path, hierarchy)) or sent
        return sent

    def kill(self) -> None:
        """SIGKILL to everything in the cell, at once, by the kernel (no pid is involved)."""
        if self.path is not None:
            try:
                cgroup.write(os.path.join(self.path, "cgroup.kill"), b"1")
            except FileNotFoundError:
                pass

    def populated(self) -> bool:
        return self.path is not None and cgroup.populated(self.path)

    def when_empty(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the cell has no live process, as cgroup.events tells inotify (at
        once when it is empty already: a reaped leader alone, the usual case, costs no watch)."""
        assert self.path is not None
        if not self.populated():
            callback()
            return

        def changed(name: str | None) -> None:
            if name in (None, "cgroup.events") and not self.populated():
                self._unwatch()
                callback()

        self._watch = inotify.watch(self.path, inotify.IN_MODIFY, changed, about="cgroup.events", keep_open=True)
        changed(None)  # emptied before the watch was in place

    def _unwatch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def remove(self) -> None:
        """rmdir the cell (empty by now) in every hierarchy; what cannot go yet is removed with
        the subtree at shutdown or by the next daemon."""
        self._unwatch()
        for directory in ([self.path] if self.path else []) + [d for _, d in self.v1.values()]:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.debug("cannot remove %s yet: %s", directory, exc.strerror)

    # --- accounting -----------------------------------------------------------------------------

    def figures(self) -> dict[str, float | int | None]:
        """cpu_seconds, memory_bytes, memory_peak_bytes, tasks, oom_kills; None where the cell has
        no way to know (peak and OOM kills without a memory controller)."""
        figures: dict[str, float | int | None] = {"cpu_seconds": None, "memory_bytes": None,
                                                  "memory_peak_bytes": None, "tasks": None, "oom_kills": None}
        if self.path is not None:
            usage = cgroup.keyed(cgroup.read_or_none(os.path.join(self.path, "cpu.stat"))).get(b"usage_usec")
            figures["cpu_seconds"] = None if usage is None else round(usage / 1e6, 3)
        memory = self._directory("memory")
        if memory is not None:
            directory, version = memory
            if version == 2:
                figures["memory_bytes"] = _number(os.path.join(directory, "memory.current"))
                figures["memory_peak_bytes"] = _number(os.path.join(directory, "memory.peak"))
                figures["oom_kills"] = cgroup.keyed(cgroup.read_or_none(os.path.join(directory, "memory.events"))).get(b"oom_kill")
            else:
                figures["memory_bytes"] = _number(os.path.join(directory, "memory.usage_in_bytes"))
                figures["memory_peak_bytes"] = _number(os.path.join(directory, "memory.max_usage_in_bytes"))
                figures["oom_kills"] = cgroup.keyed(cgroup.read_or_none(os.path.join(directory, "memory.oom_control"))).get(b"oom_kill")
        pids = self._directory("pids")
        if pids is not None:
            figures["tasks"] = _number(os.path.join(pids[0], "pids.current"))
        elif self.path is not None:
            raw = cgroup.read_or_none(os.path.join(self.path, "cgroup.threads"))
            figures["tasks"] = None if raw is None else raw.count(b"\n")
        return figures

    def oom_kills(self) -> int:
        return int(self.figures()["oom_kills"] or 0) if self._directory("memory") else 0

    def member_pids(self) -> list[int]:
        return cgroup.members(self.path) if self.path is not None else []


_homes = threading.local()  # per spawning thread: the spawn thread has a descriptor table of its own


def _move_back(procs: str) -> None:
    """Home again after a spawn, through a descriptor of the home's procs file that each spawning
    thread keeps open (an open costs as much as the move). A daemon left inside a cell would be
    killed with it: one retry, then the daemon stops rather than run on in a job's cgroup."""
    for attempt in (1, 2):
        try:
            fds = _homes.__dict__.setdefault("fds", {})
            if procs not in fds:
                fds[procs] = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            os.write(fds[procs], b"0")
            return
        except OSError as exc:
            if attempt == 2:
                log.critical("cannot leave a job's cgroup (%s: %s): exiting", procs, exc.strerror)
                os._exit(70)  # EX_SOFTWARE; the next daemon drains every cell


def _number(path: str) -> int | None:
    raw = cgroup.read_or_none(path)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _limit_files(controller: str, version: int, value: float | int | None) -> list[tuple[str, bytes]]:
    """The files (and what to write) that set one limit; None: no limit."""
    if controller == "memory":
        if version == 2:
            return [("memory.max", b"max" if value is None else b"%d" % value)]
        return [("memory.limit_in_bytes", b"-1" if value is None else b"%d" % value)]
    if controller == "cpu":
        quota = None if value is None else max(1000, round(value / 100 * CPU_PERIOD_US))
        if version == 2:
            return [("cpu.max", b"max %d" % CPU_PERIOD_US if quota is None else b"%d %d" % (quota, CPU_PERIOD_US))]
        return [("cpu.cfs_period_us", b"%d" % CPU_PERIOD_US), ("cpu.cfs_quota_us", b"-1" if quota is None else b"%d" % quota)]
    return [("pids.max", b"max" if value is None else b"%d" % value)]


class Containment:
    """The daemon's containment: `kind` is "cgroup2" or "process-group"; `reason` why not cgroup2."""

    kind = "process-group"

    def __init__(self, layout: Layout, name: str, reason: str, v2: Hierarchy | None = None,
                 subtree: str | None = None, home: str | None = None, enabled: frozenset[str] = frozenset(),
                 delegated: bool = False) -> None:
        self.layout = layout
        self.delegated = delegated
        self.name = name
        self.reason = reason
        self.v2 = v2
        self.subtree = subtree
        self.home = home
        self.controllers = Controllers(layout, name, subtree, enabled)

    def describe(self) -> str:
        return "cgroup2" if self.kind == "cgroup2" else f"process-group (no writable cgroup2: {self.reason})"

    def status(self) -> dict[str, object]:
        if self.kind != "cgroup2":
            accounting = "summed over the process tree of each instance's leader (/proc)"
        elif "memory" in self.controllers.v2_enabled:
            accounting = "cgroup"
        else:
            accounting = ("cgroup; memory summed over the processes of the cgroup for a job without memory_max "
                          "(no memory controller in its cgroup: its memory_peak_bytes and oom_kills are null)")
        return {"containment": self.describe(), "cgroup": self.subtree, "controllers": self.controllers.describe(),
                "accounting": accounting}

    def cell(self, unit: str, run_id: str, spawn_id: int, resources: Resources,
             stopsignal: int, stoptime: float) -> Cell | None:
        """A new cell for one spawn (its limits are written by `Cell.apply` once the spawn is
        made); None in process-group mode without limits. ContainmentError when a controller its
        limits need is not there."""
        v1_needed = [c for c in resources.controllers() if c not in self.controllers.v2_enabled]
        places = [self.controllers.v1_place(c) for c in v1_needed]
        if self.subtree is None and not places:
            return None
        name = f"{unit}.{run_id}.{spawn_id}"
        made: list[str] = []
        try:
            path = None
            if self.subtree is not None:
                path = os.path.join(self.subtree, name)
                os.mkdir(path)
                made.append(path)
                if (stopsignal, min(stoptime, LEFTOVER_GRACE_CAP)) != _DEFAULT_STOP:  # else what recovery assumes
                    with contextlib.suppress(OSError):
                        os.setxattr(path, STOP_XATTR, f"{stopsignal} {stoptime}".encode())
            v1 = {}
            for place in places:
                directory = os.path.join(place.subtree, name)
                if place.hierarchy.mountpoint not in {h.mountpoint for h, _ in v1.values()}:
                    os.mkdir(directory)
                    made.append(directory)
                v1[place.controller] = (place.hierarchy, directory)
            return Cell(path, self.v2, v1, self.controllers.v2_enabled, self.home)
        except OSError as exc:
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise ContainmentError(f"cannot make its cgroup: {_why(exc, exc.filename or name)}") from None

    async def recover(self) -> int:
        """Drain every cell a previous daemon left in the subtree (its stop signal, then after its
        stoptime cgroup.kill) and remove it; nothing is known or needed of its processes but the
        cell they are in. Returns how many cells held processes."""
        busy: list[str] = []
        if self.subtree is not None:
            leftovers = _cells_in(self.subtree)
            busy = [path for path in leftovers if cgroup.populated(path)]
            if busy:
                log.warning("stopping %d cgroup(s) left by a daemon that did not shut down", len(busy))
                await asyncio.gather(*(self._drain(path) for path in busy))
            for path in leftovers:
                cgroup.remove_tree(path)
        for subtree in self._v1_subtrees():  # their processes: above, or the journal's (process-group mode)
            for path in _cells_in(subtree):
                cgroup.remove_tree(path)
        return len(busy)

    def _v1_subtrees(self) -> list[str]:
        """The v1 subtrees of this daemon's name that exist, whichever run made them."""
        found = []
        for controller in LIMITED:
            hierarchy = self.layout.v1.get(controller)
            if hierarchy is not None and self.name and os.path.isdir(os.path.join(hierarchy.own, self.name)):
                found.append(os.path.join(hierarchy.own, self.name))
        return found

    async def _drain(self, path: str) -> None:
        assert self.v2 is not None
        cell = Cell(path, self.v2, {}, frozenset(), None)
        stopsignal, stoptime = _recorded_stop(path)
        empty = asyncio.get_running_loop().create_future()
        cell.when_empty(lambda: empty.done() or empty.set_result(None))
        try:
            cell.signal(stopsignal)
            try:
                await asyncio.wait_for(asyncio.shield(empty), stoptime)
            except asyncio.TimeoutError:
                cell.kill()
                await asyncio.wait_for(empty, 10.0)
        finally:
            cell._unwatch()

    def close(self) -> None:
        """At a clean shutdown: remove what is left of the cells (empty by now) and a subtree of
        our own making; a delegated subtree stays systemd's."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing was watched
            inotify.release()
        for subtree in self._v1_subtrees():
            cgroup.remove_tree(subtree)
        if self.subtree is not None:
            if self.delegated:  # only the cells go
                for path in _cells_in(self.subtree):
                    cgroup.remove_tree(path)
            else:
                cgroup.remove_tree(self.subtree)


class CgroupContainment(Containment):
    kind = "cgroup2"


def _cells_in(subtree: str) -> list[str]:
    with os.scandir(subtree) as entries:
        return [entry.path for entry in entries if entry.is_dir(follow_symlinks=False) and entry.name != DELEGATED_LEAF]


def _recorded_stop(path: str) -> tuple[int, float]:
    try:
        signal_text, stoptime_text = os.getxattr(path, STOP_XATTR).decode().split()
        sig, stoptime = int(signal_text), float(stoptime_text)
        if sig in signal.valid_signals() and 0 <= stoptime:
            return sig, min(stoptime, LEFTOVER_GRACE_CAP)
    except (OSError, ValueError):
        pass
    return _DEFAULT_STOP


_DEFAULT_STOP = (int(signal.SIGTERM), LEFTOVER_GRACE_CAP)  # a cell without the xattr: most jobs' own


def _delegated(path: str) -> bool:
    """Whether systemd delegated this cgroup to us (Delegate=yes marks it with an xattr)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


def choose(state_dir: str, wanted: str = "auto", layout: Layout | None = None) -> Containment:
    """The containment for a daemon on `state_dir`: cgroup2 where a v2 hierarchy is writable
    (unless `wanted` is "process-group"), process groups else, saying why. With `wanted`
    "cgroup2", ContainmentError when it cannot be had."""
    name = subtree_name(state_dir)
    try:
        layout = layout or cgroup.current_layout()
    except OSError as exc:
        layout, reason = Layout(None), f"cannot read the cgroup layout: {exc.strerror}"
    else:
        reason = "asked for by --containment" if wanted == "process-group" else ""
    if not reason:
        try:
            return _cgroup2(layout, name)
        except ContainmentError as exc:
            reason = str(exc)
    if wanted == "cgroup2":
        raise ContainmentError(f"no writable cgroup2: {reason}")
    return Containment(layout, name, reason)


def probe(state_dir: str, wanted: str = "auto") -> str:
    """What `choose` would say, found without creating or moving anything (--version --json)."""
    if wanted == "process-group":
        return "process-group (no writable cgroup2: asked for by --containment)"
    try:
        layout = cgroup.current_layout()
    except OSError as exc:
        return f"process-group (no writable cgroup2: cannot read the cgroup layout: {exc.strerror})"
    v2 = layout.v2
    if v2 is None:
        return "process-group (no writable cgroup2: no cgroup2 file system is mounted)"
    where = v2.own if _delegated(v2.own) else v2.mountpoint
    if not os.access(where, os.W_OK) or not os.access(os.path.join(v2.own, "cgroup.procs"), os.W_OK):
        return f"process-group (no writable cgroup2: {where}: {os.strerror(errno.EACCES)})"
    return "cgroup2"


def _cgroup2(layout: Layout, name: str) -> CgroupContainment:
    v2 = layout.v2
    if v2 is None:
        raise ContainmentError("no cgroup2 file system is mounted")
    delegated = _delegated(v2.own)
    if delegated:
        subtree, home = v2.own, os.path.join(v2.own, DELEGATED_LEAF)
        try:
            os.makedirs(home, exist_ok=True)
            cgroup.write(os.path.join(home, "cgroup.procs"), b"0")  # the daemon into its leaf
        except OSError as exc:
            raise ContainmentError(_why(exc, home)) from None
    else:
        subtree, home = os.path.join(v2.mountpoint, name), v2.own
        try:
            os.makedirs(subtree, exist_ok=True)
            cgroup.write(os.path.join(v2.own, "cgroup.procs"), b"0")  # may we move ourselves at all?
        except OSError as exc:
            raise ContainmentError(_why(exc, exc.filename or subtree)) from None
    if not os.path.exists(os.path.join(subtree, "cgroup.kill")):
        raise ContainmentError(f"{subtree} has no cgroup.kill (Linux 5.14 or later is needed)")
    enabled = set()
    offered = set((cgroup.read_or_none(os.path.join(subtree, "cgroup.controllers")) or b"").decode().split())
    for controller in LIMITED:
        if controller in offered:
            try:
                cgroup.write(os.path.join(subtree, "cgroup.subtree_control"), f"+{controller}".encode())
                enabled.add(controller)
            except OSError as exc:
                log.info("cannot enable the %s controller in %s: %s", controller, subtree, exc.strerror)
    if "favordynmods" not in v2.options:
        log.info("cgroup2 at %s is mounted without favordynmods: placing a spawn after a quiet spell waits "
                 "for an RCU grace period (0.1 ms idle, up to ~15 ms on a busy host; docs/architecture.md)",
                 v2.mountpoint)
    return CgroupContainment(layout, name, "", v2, subtree, os.path.join(home, "cgroup.procs"), frozenset(enabled),
                             delegated)
