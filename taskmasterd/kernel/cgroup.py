"""The cgroup hierarchies this process sees, and the few files of a cgroup the daemon uses.

Three layouts are met in the field: pure cgroup v2 (one `cgroup2` mount holding every
controller), hybrid (a `cgroup2` mount without controllers beside cgroup v1 mounts that hold
them: memory, cpu, pids...) and legacy v1 only. Where each hierarchy is mounted comes from
/proc/self/mountinfo, and where this process sits in each from /proc/self/cgroup; a mount whose
root is not the hierarchy's root (a container's cgroup namespace, a bind mount) is accounted for.

Pure: nothing here decides what the daemon does with them (processes/containment.py does).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

V2_FILES = ("cgroup.procs", "cgroup.kill", "cgroup.events")  # what containment needs of a v2 cgroup


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy: where it is mounted, the controllers it holds (v1; for v2 read
    cgroup.controllers) and this process's cgroup in it, as a path in the file system."""

    version: int
    mountpoint: str
    controllers: frozenset[str]
    own: str  # this process's cgroup directory
    root: str = "/"  # the cgroup the mount shows at its mount point
    options: frozenset[str] = frozenset()  # the super block's (favordynmods, nsdelegate, ...)

    def directory(self, cgroup: str) -> str | None:
        """The directory of a cgroup named as in /proc/<pid>/cgroup; None when this mount does
        not show it."""
        return _inside(self.mountpoint, self.root, cgroup)


@dataclass(frozen=True)
class Layout:
    v2: Hierarchy | None
    v1: dict[str, Hierarchy] = field(default_factory=dict)  # controller -> its hierarchy

    def describe(self) -> str:
        kinds = []
        if self.v2 is not None:
            kinds.append(f"cgroup2 at {self.v2.mountpoint}")
        if self.v1:
            kinds.append("cgroup v1 " + ",".join(sorted(self.v1)))
        return " + ".join(kinds) or "no cgroup hierarchy mounted"


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit() and len(text[i + 1:i + 4]) == 3:
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_layout(mountinfo: str, own_cgroups: str) -> Layout:
    """The layout from the text of /proc/self/mountinfo and /proc/self/cgroup."""
    memberships: dict[str, str] = {}  # "" for v2, else the controller list of a v1 line
    for line in own_cgroups.splitlines():
        number, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep and sep2:
            memberships[controllers] = path
    v2: Hierarchy | None = None
    v1: dict[str, Hierarchy] = {}
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or dash + 3 > len(fields):
            continue
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup2" and v2 is None and "" in memberships:
            own = _inside(mountpoint, root, memberships[""])
            if own is not None:
                v2 = Hierarchy(2, mountpoint, frozenset(), own, root, frozenset(options))
        elif fstype == "cgroup":
            names = frozenset(opt for opt in options if opt not in ("rw", "ro") and "=" not in opt
                              and opt not in ("relatime", "noatime", "nosuid", "nodev", "noexec",
                                              "clone_children", "xattr", "noprefix", "cpuset_v2_mode"))
            key = next((k for k in memberships if k and frozenset(k.split(",")) == names), None)
            if key is None or not names:
                continue
            own = _inside(mountpoint, root, memberships[key])
            if own is None:
                continue
            hierarchy = Hierarchy(1, mountpoint, names, own, root)
            for name in names:
                v1.setdefault(name, hierarchy)
    return Layout(v2, v1)


def _inside(mountpoint: str, root: str, path: str) -> str | None:
    """The directory of cgroup `path` under a mount of the hierarchy's `root`; None when the
    cgroup is not visible through that mount."""
    if root != "/":
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None
        path = path[len(root.rstrip("/")):] or "/"
    return os.path.join(mountpoint, path.lstrip("/")).rstrip("/") or "/"


def current_layout() -> Layout:
    with open("/proc/self/mountinfo") as mounts, open("/proc/self/cgroup") as own:
        return parse_layout(mounts.read(), own.read())


# --- files --------------------------------------------------------------------------------------


def write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def read_or_none(path: str) -> bytes | None:
    try:
        return read(path)
    except OSError:
        return None


def keyed(raw: bytes | None) -> dict[bytes, int]:
    """A flat-keyed file (cgroup.events, memory.events, cpu.stat, memory.oom_control)."""
    values: dict[bytes, int] = {}
    for line in (raw or b"").splitlines():
        key, _, value = line.partition(b" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def populated(path: str) -> bool:
    """Whether a v2 cgroup has a live process in it or below it (zombies do not count)."""
    try:
        return keyed(read(os.path.join(path, "cgroup.events"))).get(b"populated", 0) != 0
    except FileNotFoundError:
        return False


def members(path: str) -> list[int]:
    """The processes of a cgroup (cgroup.procs of v2, or of v1)."""
    try:
        return [int(pid) for pid in read_all(os.path.join(path, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def read_all(path: str) -> bytes:
    """A file that may be longer than one read (cgroup.procs of a large cgroup)."""
    with open(path, "rb", buffering=0) as src:
        return src.readall()


def in_cgroup(pid: int, path: str, hierarchy: Hierarchy) -> bool:
    """Whether process `pid` is in the cgroup directory `path` of `hierarchy`, or below it, now."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as src:
            lines = src.read().decode(errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, cgroup = rest.partition(":")
        if (controllers == "") if hierarchy.version == 2 else (frozenset(controllers.split(",")) == hierarchy.controllers):
            where = hierarchy.directory(cgroup)
            return where is not None and (where == path or where.startswith(path + "/"))
    return False


def remove_tree(path: str) -> bool:
    """rmdir a cgroup and every cgroup below it, deepest first; False when one is still busy."""
    done = True
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return True
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            done = remove_tree(entry.path) and done
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return done
