"""Readiness by notification: the sd_notify parser, and each instance's socket with real programs,
hostile datagrams, passed descriptors, and the permissions of the directory and the sockets."""
import array
import asyncio
import collections
import os
import pwd
import socket
import stat
import subprocess

import pytest

from taskmasterd.health.notify_message import MAX_DATAGRAM, Notification, parse_notification
from taskmasterd.health.notify_socket import MAX_PER_WAKEUP, NotifyDirectory
from tests.support.notify import NOTIFY_READY, PYTHON, short_tempdir
from tests.support.supervised import run

SYSTEM_PYTHON = "/usr/bin/python3"  # one that every user may run


# --- the protocol --------------------------------------------------------------------------------


def test_a_datagram_of_several_assignments():
    assert parse_notification(b"READY=1\nSTATUS=Serving 4 clients\nX_CUSTOM=1\n") == Notification(
        ready=True, status="Serving 4 clients")
    assert parse_notification(b"STOPPING=1") == Notification(stopping=True)
    assert parse_notification(b"WATCHDOG=1\nWATCHDOG_USEC=2500000") == Notification(watchdog_ping=True,
                                                                                  watchdog_usec=2500000)
    assert parse_notification(b"WATCHDOG=trigger") == Notification(watchdog_trigger=True)


def test_unknown_and_malformed_lines_are_ignored():
    assert parse_notification(b"") == Notification()
    assert parse_notification(b"READY=0\nREADY\nREADY=yes\n=1\nMAINPID=12") == Notification()
    assert parse_notification(b"WATCHDOG_USEC=0\nWATCHDOG_USEC=-5") == Notification()
    assert parse_notification(b"WATCHDOG_USEC=" + b"9" * 30) == Notification()
    assert parse_notification(b"WATCHDOG_USEC=86400000001") == Notification()  # more than a day
    assert parse_notification(b"STATUS=\xff\xfe\nREADY=1") == Notification(ready=True)


def test_a_status_cannot_reach_the_terminal_with_control_characters():
    assert parse_notification("STATUS=ok \x1b[2J\x07 ünïcode".encode()).status == "ok ?[2J? ünïcode"


def test_datagrams_with_nul_bytes_or_too_long_are_dropped_whole():
    assert parse_notification(b"READY=1\0") is None
    assert parse_notification(b"READY=1\n" + b"x" * MAX_DATAGRAM) is None
    assert parse_notification(b"READY=1\nSTATUS=" + b"x" * (MAX_DATAGRAM - 15)) is not None


# --- the directory -------------------------------------------------------------------------------


def test_the_directory_is_created_private_and_left_sockets_are_removed(tmp_path):
    path = tmp_path / "notify"
    NotifyDirectory(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o711
    stale = path / "0123456789abcdef.sock"
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(str(stale))
    path.chmod(0o777)
    (path / "keep.txt").write_text("not ours to remove")
    NotifyDirectory(str(path))
    assert not stale.exists() and (path / "keep.txt").exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o711


def test_a_symlink_in_place_of_the_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "notify").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        NotifyDirectory(str(tmp_path / "notify"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another user")
def test_a_directory_of_another_user_is_refused(tmp_path):
    (tmp_path / "notify").mkdir(mode=0o700)
    os.chown(tmp_path / "notify", 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        NotifyDirectory(str(tmp_path / "notify"))


def test_a_directory_under_a_parent_others_can_write_is_refused(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(PermissionError, match="writable by others and not sticky"):
        NotifyDirectory(str(tmp_path / "open" / "notify"))
    (tmp_path / "open").chmod(0o1777)  # sticky, like /tmp: others cannot move our entries
    NotifyDirectory(str(tmp_path / "open" / "notify"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another user")
def test_a_directory_under_a_parent_of_another_user_is_refused():
    with short_tempdir() as base:  # a socket path is short: pytest's own tmp_path may be too long
        theirs = os.path.join(base, "theirs")
        os.mkdir(theirs)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(PermissionError, match="belongs to uid 65534, who could replace it"):
            NotifyDirectory(os.path.join(theirs, "notify"))


def test_a_path_too_long_for_a_unix_socket_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too long for a unix socket path"):
        NotifyDirectory(str(tmp_path / ("d" * 100)))


# --- the socket ----------------------------------------------------------------------------------


@pytest.fixture
def directory():
    with short_tempdir() as base:
        yield NotifyDirectory(os.path.join(base, "notify"))


class Inbox:
    """The messages of one socket, awaitable."""

    def __init__(self):
        self.messages: list[Notification] = []
        self._read = 0
        self._arrived = asyncio.Event()

    def __call__(self, message: Notification) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def next(self, timeout: float = 20.0) -> Notification:
        while len(self.messages) == self._read:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), timeout)
        self._read += 1
        return self.messages[self._read - 1]


def test_a_real_notify_program_says_ready_and_the_socket_is_removed_at_close(directory):
    async def scenario():
        inbox = Inbox()
        sock = directory.open_socket(inbox)
        assert stat.S_IMODE(os.stat(sock.path).st_mode) == 0o600
        env = {**os.environ, **sock.environment(), "STARTUP_SECONDS": "0"}
        child = subprocess.Popen([PYTHON, str(NOTIFY_READY)], env=env)
        try:
            message = await inbox.next()
        finally:
            child.kill()
            child.wait()
        assert message == Notification(ready=True, status="serving")
        sock.close()
        sock.close()  # idempotent
        assert not os.path.exists(sock.path)
        other = directory.open_socket(inbox)
        assert other.path != sock.path  # every run of an instance gets a fresh name
        other.close()

    run(scenario())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_hostile_datagrams_never_reach_the_owner_and_passed_fds_are_closed(directory):
    async def scenario():
        inbox = Inbox()
        sock = directory.open_socket(inbox)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        before = open_fds()
        passed = [os.open("/dev/null", os.O_RDONLY) for _ in range(40)]
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", passed))]
        sender.sendmsg([b"STATUS=with fds"], rights, 0, sock.path)
        sender.sendmsg([b"x" * 65000], rights, 0, sock.path)  # oversized, with fds too
        sender.sendto(b"READY=1\0garbage", sock.path)
        sender.sendto(bytes(range(256)) * 8, sock.path)
        sender.sendto(b"", sock.path)
        sender.sendto(b"READY=1", sock.path)
        for fd in passed:
            os.close(fd)
        assert (await inbox.next()).status == "with fds"
        assert await inbox.next() == Notification()  # the empty datagram
        assert await inbox.next() == Notification(ready=True)
        assert sock.dropped == 3
        assert open_fds() == before  # every passed fd was closed, or never installed
        sender.close()
        sock.close()

    run(scenario())


def test_a_flood_is_read_fully_in_bounded_batches(directory):
    async def scenario():
        loop = asyncio.get_running_loop()
        iteration = 0
        flooding = True

        def tick():  # counts the loop's iterations while the flood is read
            nonlocal iteration
            iteration += 1
            if flooding:
                loop.call_soon(tick)

        read_at: list[int] = []
        inbox = Inbox()
        sock = directory.open_socket(lambda message: (read_at.append(iteration), inbox(message)))
        sent = 500

        def flood():  # blocking sends: as fast as the socket's queue lets them in
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                for i in range(sent):
                    sender.sendto(f"STATUS={i}".encode(), sock.path)

        loop.call_soon(tick)
        sender = asyncio.create_task(asyncio.to_thread(flood))
        while len(inbox.messages) < sent:
            await inbox.next()
        await sender
        flooding = False
        assert [m.status for m in inbox.messages] == [str(i) for i in range(sent)]
        assert max(collections.Counter(read_at).values()) <= MAX_PER_WAKEUP
        sock.close()

    run(scenario())


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="needs root to run a child as another user, and a system python")
def test_only_the_instances_user_can_reach_its_socket(directory):
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chmod(os.path.dirname(directory.path), 0o755)  # the parents must be searchable by the job's user

    def send_as(uid: int, path: str) -> subprocess.CompletedProcess:
        code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n"
                "try:\n s.sendto(b'READY=1\\nSTATUS=from '+str(__import__('os').getuid()).encode(), sys.argv[1])\n"
                "except PermissionError:\n sys.exit(13)\n")
        return subprocess.run([SYSTEM_PYTHON, "-c", code, path], user=uid, group=uid if uid != nobody else None,
                              capture_output=True, timeout=30)

    async def scenario():
        inbox = Inbox()
        sock = directory.open_socket(inbox, uid=nobody)
        assert os.stat(sock.path).st_uid == nobody
        intruder = await asyncio.to_thread(send_as, 4242, sock.path)
        assert intruder.returncode == 13, intruder.stderr
        assert os.stat(directory.path).st_mode & 0o077 == 0o011  # others pass through, never list
        job = await asyncio.to_thread(send_as, nobody, sock.path)
        assert job.returncode == 0, job.stderr
        assert (await inbox.next()).status == f"from {nobody}"
        assert inbox.messages == [Notification(ready=True, status=f"from {nobody}")]
        sock.close()

    run(scenario())
