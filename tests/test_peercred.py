"""Peer identity from the kernel, with real sockets and a real second uid."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Iterator

import pytest

from taskmasterd.control.peercred import Peer, PeerIdentifier, _proc_owner

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a connection owned by another uid needs root to set up")


@pytest.fixture
def identifier() -> Iterator[PeerIdentifier]:
    found = PeerIdentifier()
    yield found
    found.close()


def connected_as(uid: int, family: int, address: object) -> tuple[socket.socket, int]:
    """Our end of a connection that a child running as `uid` opened and holds open, and the child's pid."""
    listener = socket.socket(family)
    listener.bind(address)
    listener.listen(1)
    if family == socket.AF_UNIX:
        os.chmod(address, 0o666)
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become uid, connect, keep the socket until killed
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            client = socket.socket(family)
            client.connect(listener.getsockname())
            os.write(ready_write, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"x"
    os.close(ready_read)
    ours, _ = listener.accept()
    listener.close()
    return ours, pid


def finish(pid: int) -> None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)


@needs_root
@pytest.mark.parametrize("family, address", [(socket.AF_INET, ("127.0.0.1", 0)), (socket.AF_INET6, ("::1", 0))])
def test_a_loopback_tcp_peer_is_named_by_the_owner_of_its_socket(identifier: PeerIdentifier, family: int,
                                                                  address: tuple) -> None:
    ours, pid = connected_as(NOBODY, family, address)
    try:
        peer = identifier.identify(ours)
        assert peer == Peer(NOBODY, address[0])
        theirs, mine = ours.getpeername()[:2], ours.getsockname()[:2]
        assert _proc_owner(family, theirs, mine) == NOBODY  # the fallback agrees
    finally:
        finish(pid)
        ours.close()


@needs_root
def test_once_sock_diag_is_given_up_peers_are_named_from_proc(identifier: PeerIdentifier) -> None:
    identifier._diag.give_up()  # what a failed lookup, or a sandbox without AF_NETLINK, leaves
    ours, pid = connected_as(NOBODY, socket.AF_INET, ("127.0.0.1", 0))
    try:
        assert identifier.identify(ours) == Peer(NOBODY, "127.0.0.1")
    finally:
        finish(pid)
        ours.close()


@needs_root
def test_an_ipv4_peer_of_a_dual_stack_listener_is_unmapped(identifier: PeerIdentifier) -> None:
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen(1)
    with listener, socket.create_connection(("127.0.0.1", listener.getsockname()[1])):
        ours, _ = listener.accept()
        with ours:
            assert ours.getpeername()[0].startswith("::ffff:")
            assert identifier.identify(ours) == Peer(os.geteuid(), "127.0.0.1")


@needs_root
def test_a_unix_peer_is_named_by_so_peercred(identifier: PeerIdentifier) -> None:
    with tempfile.TemporaryDirectory() as folder:  # pytest's own tmp_path is closed to other uids
        os.chmod(folder, 0o755)
        ours, pid = connected_as(NOBODY, socket.AF_UNIX, os.path.join(folder, "s.sock"))
        try:
            assert identifier.identify(ours) == Peer(NOBODY)
        finally:
            finish(pid)
            ours.close()


def test_a_peer_that_closed_before_it_was_looked_at_is_nobody_known(identifier: PeerIdentifier) -> None:
    """Its socket lingers in TIME_WAIT or FIN_WAIT2, which the kernel reports as uid 0: not root."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        client.close()
        time.sleep(0.05)
        with ours:
            assert identifier.identify(ours) == Peer(None, "127.0.0.1")
            assert _proc_owner(socket.AF_INET, ours.getpeername(), ours.getsockname()) is None


def test_no_such_socket_on_this_host(identifier: PeerIdentifier) -> None:
    assert identifier.tcp_owner(socket.AF_INET, ("127.0.0.1", 1), ("127.0.0.1", 2)) is None
    assert _proc_owner(socket.AF_INET6, ("::1", 1), ("::1", 2)) is None


def test_the_netlink_lookup_costs_well_under_a_fifth_of_a_millisecond(identifier: PeerIdentifier) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()):
        ours, _ = listener.accept()
        with ours:
            started = time.thread_time()  # CPU time of this thread: the kernel answers within the send
            for _ in range(1000):
                identifier.identify(ours)
            per_lookup = (time.thread_time() - started) / 1000
    assert per_lookup < 0.0002, f"{per_lookup * 1e6:.0f} us per identification"
