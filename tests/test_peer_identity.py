"""A TCP peer's uid comes from its own connected socket, or from nowhere.

The attack these tests replay: the kernel's exact socket lookup, asked for an address pair that no
connection holds, answers with the socket *listening* on that port. A peer that connects from the
port of a root service (sshd's 22 on a host elsewhere; on loopback a port that root listens on
once the peer has gone) was taken for root. Each case runs in network namespaces of the test's
own, so ports 22 and the sysctls are ours to use.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from taskmasterd.control.peercred import PeerIdentifier, _proc_owner

from .support import netns
from .support.daemon import ROOT, Daemon, wait_for

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a root listener and a nobody peer need root")


def _listening(family: int, address: str) -> socket.socket:
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, 0))
    listener.listen(1)
    return listener


@needs_root
@pytest.mark.parametrize("family, bound, peer", [(socket.AF_INET, "127.0.0.1", "127.0.0.1"),
                                                 (socket.AF_INET, "0.0.0.0", "127.0.0.1"),
                                                 (socket.AF_INET6, "::1", "::1"),
                                                 (socket.AF_INET6, "::", "::1")])
def test_a_listener_on_the_peers_port_is_not_the_peer(family: int, bound: str, peer: str) -> None:
    """No connection holds (peer:P, ours:Q); root listens on P. Nobody owns that peer."""
    identifier = PeerIdentifier()
    try:
        with _listening(family, bound) as root_service, _listening(family, peer) as ours:
            theirs = (peer, root_service.getsockname()[1])
            mine = (peer, ours.getsockname()[1])
            assert identifier.tcp_owner(family, theirs, mine) is None
            assert _proc_owner(family, theirs, mine) is None
    finally:
        identifier.close()


def _python_in(namespace: str, script: str, *, background: bool = False) -> subprocess.Popen | str:
    command = [*netns.exec_prefix(namespace), sys.executable, "-c", textwrap.dedent(script)]
    if background:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# Runs in the namespace: a peer as uid nobody connects from `port`, sends what it is given, and
# closes; with no TIME_WAIT buckets its socket is then gone at once, and the script waits until the
# kernel's table shows no socket on that port any more.
_GONE_PEER = textwrap.dedent("""
    import os, socket, sys, time
    port, target, payload = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
    os.setgroups([]); os.setgid({nobody}); os.setuid({nobody})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.connect(("127.0.0.1", target))
    sock.sendall(payload)
    sock.close()
    needle = ":%04X " % port
    deadline = time.monotonic() + 20
    while any(needle in line.split()[1] + " " for line in open("/proc/net/tcp").readlines()[1:]):
        assert time.monotonic() < deadline, "the peer's socket lingers"
        time.sleep(0.01)
""").format(nobody=NOBODY)

# A root service listening on the given loopback port until killed.
_ROOT_SERVICE = """
    import socket, sys, time
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((sys.argv[1], int(sys.argv[2])))
    sock.listen(8)
    print("listening", flush=True)
    time.sleep(120)
"""


def _root_service(namespace: str, address: str, port: int) -> subprocess.Popen:
    service = subprocess.Popen([*netns.exec_prefix(namespace), sys.executable, "-c", textwrap.dedent(_ROOT_SERVICE),
                                address, str(port)], stdout=subprocess.PIPE, text=True)
    assert service.stdout is not None and service.stdout.readline().strip() == "listening"
    return service


def _finish(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


@needs_root
@netns.needs_netns
def test_a_peer_gone_before_the_lookup_is_not_the_root_service_that_took_its_port() -> None:
    """The identifier, on its own: the peer closed, its socket is gone, root listens on its port."""
    with netns.namespace() as name:
        netns.run_in(name, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0")
        script = f"""
            import socket, subprocess, sys, json
            sys.path.insert(0, {str(ROOT)!r})
            from taskmasterd.control.peercred import PeerIdentifier
            listener = socket.create_server(("127.0.0.1", 0))
            port = 2222
            subprocess.run([sys.executable, "-c", {_GONE_PEER!r}, str(port), str(listener.getsockname()[1]), "x"],
                           check=True)
            root = socket.socket(); root.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            root.bind(("127.0.0.1", port)); root.listen(1)
            ours, _ = listener.accept()
            identifier = PeerIdentifier()
            print(json.dumps([identifier.identify(ours).uid, ours.getpeername()[1]]))
        """
        uid, peer_port = json.loads(_python_in(name, script))
        assert peer_port == 2222
        assert uid is None


class _DaemonIn(Daemon):
    """A taskmasterd started inside a network namespace, listening on `host`."""

    def __init__(self, root: Path, namespace: str, host: str) -> None:
        super().__init__(root)
        self.namespace = namespace
        self.host = host

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--host") + 1] = self.host
        return [*netns.exec_prefix(self.namespace), *command]


def _push(name: str) -> bytes:
    import base64

    job = json.dumps({"cmd": "/bin/true", "autostart": False}).encode()
    return json.dumps({"command": "push", "job": base64.b64encode(name.encode()).decode(),
                       "data": base64.b64encode(job).decode()}, separators=(",", ":")).encode() + b";;"


@needs_root
@netns.needs_netns
def test_a_late_lookup_does_not_lend_a_gone_peer_the_uid_of_roots_listener(tmp_path: Path) -> None:
    """uid nobody connects from port 2222 while the daemon's loop is stalled (SIGSTOP), pushes a job
    and closes; root then listens on 2222. The daemon, resumed, must refuse the push."""
    with netns.namespace() as name:
        netns.run_in(name, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0")
        daemon = _DaemonIn(tmp_path, name, "127.0.0.1").start()
        service = None
        try:
            assert daemon.proc is not None
            os.kill(daemon.proc.pid, signal.SIGSTOP)
            _python_in(name, f"""
                import subprocess, sys
                subprocess.run([sys.executable, "-c", {_GONE_PEER!r}, "2222", "{daemon.port}", {_push("intruder").decode()!r}],
                               check=True)
            """)
            service = _root_service(name, "127.0.0.1", 2222)
            os.kill(daemon.proc.pid, signal.SIGCONT)
            wait_for(lambda: "refused a control connection" in daemon.stderr()
                     or (daemon.jobs_dir / "intruder.tm.json").exists(), what="the daemon to judge the peer")
            assert not (daemon.jobs_dir / "intruder.tm.json").exists(), "a gone peer was taken for root"
            assert "the kernel cannot tell who owns this connection" in daemon.stderr()
        finally:
            if daemon.proc is not None:
                os.kill(daemon.proc.pid, signal.SIGCONT)
            daemon.stop()
            if service is not None:
                _finish(service)


@needs_root
@netns.needs_netns
@pytest.mark.parametrize("source_port", [22, 23])
def test_a_host_elsewhere_is_never_root_whatever_port_it_comes_from(tmp_path: Path, source_port: int) -> None:
    """The daemon listens on 10.213.0.1 with no allow_remote, sshd-like root listens on *:22 there;
    a host at 10.213.0.2 connects from port 22 (and 23) and pushes a job: refused both times."""
    with netns.two_hosts() as (here, there):
        service = _root_service(here, "0.0.0.0", 22)
        daemon = _DaemonIn(tmp_path, here, "10.213.0.1").start()
        try:
            reply = _python_in(there, f"""
                import socket
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("10.213.0.2", {source_port}))
                sock.settimeout(20)
                sock.connect(("10.213.0.1", {daemon.port}))
                sock.sendall({_push("intruder")!r})
                reply = b""
                while not reply.endswith(b";;"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                print(reply.decode())
            """)
            answer = json.loads(reply.strip()[:-2])
            assert answer["response"] == "fail"
            import base64

            assert base64.b64decode(answer["error"]).decode().startswith("permission denied: 10.213.0.2 ")
            assert not (daemon.jobs_dir / "intruder.tm.json").exists()
        finally:
            daemon.stop()
            _finish(service)


@needs_root
@netns.needs_netns
def test_the_kernel_routes_says_which_addresses_are_this_hosts() -> None:
    with netns.two_hosts() as (here, _there):
        script = f"""
            import socket, sys, json
            sys.path.insert(0, {str(ROOT)!r})
            from taskmasterd.kernel.localaddress import LocalAddresses
            routes = LocalAddresses()
            print(json.dumps([routes.is_local(socket.AF_INET, a) for a in ("127.0.0.1", "10.213.0.1", "10.213.0.2",
                                                                        "192.0.2.1")]
                             + [routes.is_local(socket.AF_INET6, "::1"), routes.is_local(socket.AF_INET6, "2001:db8::1")]))
        """
        assert json.loads(_python_in(here, script)) == [True, True, False, False, True, False]
