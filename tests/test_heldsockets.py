"""Held sockets with real sockets, files and uids: where their descriptors are, what survives a new
version of the job file, unix socket files made safely, and the refusals that name the socket."""
import errno
import fcntl
import os
import pwd
import socket
import stat

import pytest

from taskmasterd.jobfiles.sockets_spec import SocketSpec, parse_listen
from taskmasterd.processes.heldsockets import FIRST_HELD_FD, NO_SOCKETS, HeldSockets, SocketError, bind, owners_of
from tests.support.daemon import free_port

NOBODY = pwd.getpwnam("nobody")


def spec(listen: str, **settings) -> SocketSpec:
    normalized, family, host, port = parse_listen(listen)
    return SocketSpec(normalized, family, host, port, **settings)


def test_a_tcp_socket_is_high_close_on_exec_blocking_and_listening():
    port = free_port()
    held = bind(spec(f"127.0.0.1:{port}"))
    try:
        assert held.fd >= FIRST_HELD_FD
        assert fcntl.fcntl(held.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.get_blocking(held.fd)
        assert held.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the kernel completes the handshake: queued until a program accepts
    finally:
        held.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_ipv6_is_v6_only():
    port = free_port()
    held = bind(spec(f"[::1]:{port}"))
    try:
        assert held.sock.family == socket.AF_INET6
        assert held.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        held.close()


def test_a_new_version_keeps_what_it_lists_again_and_refuses_as_a_whole():
    a, b, c = (spec(f"127.0.0.1:{free_port()}") for _ in range(3))
    first = NO_SOCKETS.prepare((a, b), False, 1)
    kept = {listen: held.fd for (listen, _), held in first.held.items()}
    # one that cannot be bound: nothing of the new version is left open, the old one untouched
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = spec(f"127.0.0.1:{squatter.getsockname()[1]}")
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(SocketError, match=f"cannot hold {busy.listen}: Address already in use"):
            first.prepare((a, c, busy), False, 1)
        assert set(os.listdir("/proc/self/fd")) == before
    second = first.prepare((b, c), False, 1)
    first.commit(second)
    assert {listen: held.fd for (listen, _), held in second.held.items()}[b.listen] == kept[b.listen]
    assert [h.spec.listen for h in second.for_instance(0)] == [b.listen, c.listen]
    with pytest.raises(ConnectionRefusedError):  # a is closed
        socket.create_connection(("127.0.0.1", a.port), timeout=5)
    second.close()


def test_reuseport_gives_each_instance_its_own_socket():
    listen = spec(f"127.0.0.1:{free_port()}")
    held = NO_SOCKETS.prepare((listen,), True, 3)
    try:
        fds = [held.for_instance(i)[0].fd for i in range(3)]
        assert len(set(fds)) == 3
        for fd in fds:
            assert socket.socket(fileno=os.dup(fd)).getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        fewer = held.prepare((listen,), True, 2)
        held.commit(fewer)
        assert [h.fd for h in (fewer.for_instance(0)[0], fewer.for_instance(1)[0])] == fds[:2]
        assert fewer.for_instance(2) == ()
    finally:
        held.close()
        fewer.close()


def test_a_unix_socket_is_made_in_a_new_directory_with_its_mode_and_owner(tmp_path):
    path = tmp_path / "run" / "app" / "app.sock"
    unix = spec(f"unix:{path}", mode=0o600, owner="nobody", group=str(NOBODY.pw_gid))
    held = bind(unix, owner=owners_of((unix,))[unix.listen])
    try:
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert (info.st_uid, info.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o755
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
        changed = spec(f"unix:{path}", mode=0o666)
        held.update(changed, (-1, -1))
        info = os.lstat(path)
        assert stat.S_IMODE(info.st_mode) == 0o666 and info.st_uid == os.geteuid()
    finally:
        held.close()
    assert not path.exists()


def test_a_stale_socket_file_is_replaced_a_live_one_and_other_files_refused(tmp_path):
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    held = bind(spec(f"unix:{path}"))
    with pytest.raises(SocketError, match="another process listens on"):
        bind(spec(f"unix:{path}"))
    held.close()
    path.write_text("not a socket")
    with pytest.raises(SocketError, match="exists and is not a socket"):
        bind(spec(f"unix:{path}"))
    assert path.read_text() == "not a socket"


def test_a_unix_socket_is_never_made_through_a_lesser_users_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "run"
    link.symlink_to(elsewhere)
    os.lchown(link, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(SocketError, match="is a symbolic link owned by uid"):
        bind(spec(f"unix:{link}/app.sock"))
    assert list(elsewhere.iterdir()) == []


def test_a_file_put_in_place_of_the_socket_is_not_removed_at_close(tmp_path):
    path = tmp_path / "app.sock"
    held = bind(spec(f"unix:{path}"))
    os.unlink(path)
    path.write_text("someone else's")
    held.close()
    assert path.read_text() == "someone else's"


def test_unknown_owners_are_named():
    with pytest.raises(SocketError, match="no such user 'no-such-user-x'"):
        owners_of((spec("unix:/tmp/x.sock", owner="no-such-user-x"),))
    with pytest.raises(SocketError, match="no such group 'no-such-group-x'"):
        owners_of((spec("unix:/tmp/x.sock", group="no-such-group-x"),))
    assert owners_of((spec("unix:/tmp/x.sock", owner="12345"),)) == {"unix:/tmp/x.sock": (12345, -1)}
