"""Who may control a real daemon, tried from real uids over TCP and the unix socket.

The clients run as other users (subprocess with `user=`), so everything here needs root, as CI
has. The daemon runs as root; its unix socket lives in a directory other uids can enter.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from taskmasterd.control.verbs import VERBS, JobArg
from tests.support.control_fixtures import SLEEPER, Raw, message, text, tree
from tests.support.daemon import ROOT, Daemon

# The project's interpreter may sit under a directory only root enters (~root/.pyenv): other uids
# run the stdlib-only probe with the system's.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="clients of other uids need root to start"),
              pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no system python3 for clients of other uids")]

NOBODY = 65534
PROBE = ROOT / "tests" / "support" / "probe_client.py"
INTRUDER = {"cmd": ["sleep", "4242"], "starttime": 0}
REFUSED = "permission denied: uid 65534 (nobody) may not control this daemon"


def refusal_bytes(text: str) -> str:
    return '{"response":"fail","error":"' + base64.b64encode(text.encode()).decode() + '"};;'


def every_verb_frame() -> list[bytes]:
    frames = []
    for name, verb in VERBS.items():
        job = "intruder" if verb.job is not JobArg.NONE else None
        data = json.dumps(INTRUDER).encode() if verb.needs_data else None
        frames.append(message(name, job, data))
    return frames


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="tm-sock-"))  # pytest's tmp_path is closed to other uids
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class AccessDaemon(Daemon):
    """A daemon that also listens on a unix socket, with control settings from a config file."""

    def __init__(self, root: Path, socket_dir: Path, settings: dict | None = None, args: list[str] | None = None):
        config = root / "taskmasterd.json"
        root.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(settings or {}))
        self.socket = socket_dir / "taskmasterd.sock"
        super().__init__(root, {"web": SLEEPER}, ["--config", str(config), "--socket", str(self.socket), *(args or [])])

    def processes(self) -> set[tuple[int, float]]:
        assert self.proc is not None
        return {(child.pid, child.create_time()) for child in psutil.Process(self.proc.pid).children(recursive=True)}


def run_as(uid: int, gid: int, exchanges: list[dict], groups: list[int] | None = None) -> list[dict]:
    # Its source on the command line: the checkout may be in a directory other uids cannot enter
    # (a clone in a `mktemp -d` folder, mode 0700).
    out = subprocess.run([str(SYSTEM_PYTHON), "-c", PROBE.read_text()], input=json.dumps(exchanges),
                         capture_output=True, text=True, user=uid, group=gid, extra_groups=groups or [], cwd="/",
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def over_both(daemon: AccessDaemon, frame: bytes, replies: int = 1, close_wait: float = 0) -> list[dict]:
    """One exchange over TCP and one over the unix socket; `close_wait`: see probe_client."""
    spec = {"send": base64.b64encode(frame).decode(), "replies": replies, "close_wait": close_wait}
    return [{"tcp": daemon.port, **spec}, {"unix": str(daemon.socket), **spec}]


def test_a_user_not_admitted_is_refused_every_verb_on_both_transports_and_nothing_changes(
        tmp_path: Path, socket_dir: Path) -> None:
    with AccessDaemon(tmp_path, socket_dir) as daemon:
        # The file's mode already keeps nobody out (see below); open it to reach the daemon's own check.
        daemon.socket.chmod(0o666)
        files, processes = tree(daemon.root), daemon.processes()
        exchanges = [spec for frame in every_verb_frame() for spec in over_both(daemon, frame, close_wait=10)]
        for spec, result in zip(exchanges, run_as(NOBODY, NOBODY, exchanges)):
            assert result == {"replies": [refusal_bytes(REFUSED)], "closed": True, "error": None}, spec
        assert tree(daemon.root) == files and not (daemon.jobs_dir / "intruder.tm.json").exists()
        assert daemon.processes() == processes
        assert [job["name"] for job in daemon.status()["jobs"]] == ["web"]
    refusals = [line for line in daemon.stderr().splitlines() if "refused a control connection" in line]
    assert len(refusals) == 1 and REFUSED in refusals[0], refusals  # 24 refusals, one line a minute


def test_the_unix_socket_is_0660_in_the_first_control_group_and_keeps_others_out(
        tmp_path: Path, socket_dir: Path) -> None:
    with AccessDaemon(tmp_path, socket_dir, args=["--control-group", "nogroup", "--control-group", "root"]) as daemon:
        info = daemon.socket.stat()
        assert info.st_mode & 0o7777 == 0o660 and info.st_uid == 0 and info.st_gid == 65534
        (denied,) = run_as(1, 1, [{"unix": str(daemon.socket), "send": "", "replies": 1}])  # daemon:daemon
        assert denied["error"] == "Permission denied"
    assert not daemon.socket.exists()  # removed on exit


def test_control_users_admits_that_user_on_both_transports(tmp_path: Path, socket_dir: Path) -> None:
    with AccessDaemon(tmp_path, socket_dir, {"control_users": ["nobody"]}) as daemon:
        assert daemon.socket.stat().st_mode & 0o777 == 0o660  # reached through an ACL entry
        pushed = message("push", "by-nobody", json.dumps(SLEEPER).encode())
        exchanges = over_both(daemon, message("status", "web") + message("list"), 2) + \
            over_both(daemon, pushed + message("pull", "by-nobody") + message("delete", "by-nobody"), 3)
        results = run_as(NOBODY, NOBODY, exchanges)
        for result in results:
            assert result["error"] is None and not result["closed"], result
        assert [json.loads(reply[:-2])["response"] for reply in results[0]["replies"]] == ["status", "list"]
        assert [json.loads(reply[:-2])["response"] for reply in results[2]["replies"]] == ["success", "file", "success"]


@pytest.fixture
def member() -> Iterator[tuple[int, int]]:
    """A throwaway user whose control group is a supplementary one (its primary group is nogroup)."""
    group, user = "tmctl-test", "tmctl-member"
    subprocess.run(["userdel", user], capture_output=True)
    subprocess.run(["groupdel", group], capture_output=True)
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "--no-create-home", "--no-user-group", "--gid", "nogroup", "--groups", group,
                        "--shell", "/usr/sbin/nologin", user], check=True)
        try:
            yield int(subprocess.check_output(["id", "-u", user])), int(subprocess.check_output(["getent", "group", group]).split(b":")[2])
        finally:
            subprocess.run(["userdel", user], check=True)
    finally:
        subprocess.run(["groupdel", group], check=True)


@pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd is needed to make a group member")
def test_control_groups_admit_members_by_supplementary_or_primary_group(
        tmp_path: Path, socket_dir: Path, member: tuple[int, int]) -> None:
    uid, gid = member
    with AccessDaemon(tmp_path / "one", socket_dir, {"control_groups": ["tmctl-test"]}) as daemon:
        assert daemon.socket.stat().st_gid == gid
        for result in run_as(uid, 65534, over_both(daemon, message("list")), groups=[gid]):
            assert result["error"] is None and json.loads(result["replies"][0][:-2])["response"] == "list", result
        (outsider,) = run_as(NOBODY, NOBODY, over_both(daemon, message("list"))[:1])
        assert outsider["replies"] == [refusal_bytes(REFUSED)]
    with AccessDaemon(tmp_path / "two", socket_dir, args=["--control-group", "nogroup"]) as daemon:
        (primary,) = run_as(NOBODY, NOBODY, over_both(daemon, message("list"))[:1])  # nobody's own group
        assert json.loads(primary["replies"][0][:-2])["response"] == "list", primary


CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed (make test installs it)")
def test_an_http_post_of_a_valid_push_creates_nothing_and_starts_nothing(tmp_path: Path, socket_dir: Path) -> None:
    body = tmp_path / "frame"
    body.write_bytes(message("push", "intruder", json.dumps(INTRUDER).encode()))
    with AccessDaemon(tmp_path, socket_dir) as daemon:
        files, processes = tree(daemon.root), daemon.processes()
        for where in ([f"http://127.0.0.1:{daemon.port}/"], ["--unix-socket", str(daemon.socket), "http://taskmaster/"]):
            out = subprocess.run([CURL, "-sS", "--max-time", "10", "-X", "POST", "--data-binary", f"@{body}", *where],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode in (52, 56), out  # empty reply, or reset: nothing answered
            assert out.stdout == ""
        assert tree(daemon.root) == files and not (daemon.jobs_dir / "intruder.tm.json").exists()
        assert daemon.processes() == processes
        assert [job["name"] for job in daemon.status()["jobs"]] == ["web"]


def test_refused_peers_cannot_crowd_out_admitted_ones(tmp_path: Path, socket_dir: Path) -> None:
    with AccessDaemon(tmp_path, socket_dir, {"max_connections": 5}) as daemon:
        ready_read, ready_write = os.pipe()
        crowd = os.fork()
        if crowd == 0:  # nobody opens 60 connections and holds them, never closing its side
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                held = [socket.socket() for _ in range(60)]
                for sock in held:  # not create_connection: its idna codec is not importable as nobody
                    sock.connect(("127.0.0.1", daemon.port))
                os.write(ready_write, str(len(held)).encode())
                time.sleep(60)
            finally:
                os._exit(0)
        os.close(ready_write)
        try:
            assert os.read(ready_read, 8) == b"60"
            admitted = [Raw(daemon.port) for _ in range(5)]
            for raw in admitted:
                assert raw.exchange(message("list"))["response"] == "list"
            with Raw(daemon.port) as sixth:
                assert "too many connections" in text(sixth.reply()["error"])
            for raw in admitted:
                raw.close()
        finally:
            os.kill(crowd, 9)
            os.waitpid(crowd, 0)
            os.close(ready_read)


IP = shutil.which("ip")


@pytest.fixture
def elsewhere() -> Iterator[tuple[str, str, str]]:
    """Another host: a network namespace joined to ours by a veth pair. (our address, its address,
    the namespace.)"""
    tag = os.getpid() % 10000
    namespace, ours, theirs = f"tmtest{tag}", f"tmva{tag}", f"tmvb{tag}"
    here, there = "10.213.7.1", "10.213.7.2"
    steps = [["netns", "add", namespace], ["link", "add", ours, "type", "veth", "peer", "name", theirs],
             ["link", "set", theirs, "netns", namespace], ["addr", "add", f"{here}/30", "dev", ours],
             ["link", "set", ours, "up"], ["-n", namespace, "addr", "add", f"{there}/30", "dev", theirs],
             ["-n", namespace, "link", "set", theirs, "up"], ["-n", namespace, "link", "set", "lo", "up"]]
    try:
        for step in steps:
            made = subprocess.run([str(IP), *step], capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"cannot make a network namespace here: ip {' '.join(step)}: {made.stderr.strip()}")
        yield here, there, namespace
    finally:
        subprocess.run([str(IP), "link", "del", ours], capture_output=True)
        subprocess.run([str(IP), "netns", "del", namespace], capture_output=True)


def from_namespace(namespace: str, exchanges: list[dict]) -> list[dict]:
    out = subprocess.run([str(IP), "netns", "exec", namespace, str(SYSTEM_PYTHON), str(PROBE)],
                         input=json.dumps(exchanges), capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(IP is None, reason="ip (iproute2) is needed to make a second host")
def test_a_host_elsewhere_needs_allow_remote_and_a_local_user_cannot_pass_for_one(
        tmp_path: Path, socket_dir: Path, elsewhere: tuple[str, str, str]) -> None:
    here, there, namespace = elsewhere
    wire = base64.b64encode(message("list")).decode()
    with AccessDaemon(tmp_path / "closed", socket_dir, args=["--host", here]) as daemon:
        exchange = {"tcp": daemon.port, "host": here, "send": wire, "replies": 1, "close_wait": 10}
        (remote,) = from_namespace(namespace, [exchange])
        assert remote == {"replies": [refusal_bytes(f"permission denied: {there} is not on this host and not "
                                                    "in allow_remote")], "closed": True, "error": None}
    with AccessDaemon(tmp_path / "open", socket_dir, {"allow_remote": ["10.213.7.0/30"]}, ["--host", here]) as daemon:
        exchange = {"tcp": daemon.port, "host": here, "send": wire, "replies": 1}
        (remote,) = from_namespace(namespace, [exchange])
        assert json.loads(remote["replies"][0][:-2])["response"] == "list", remote
        # nobody, from this host, through the same address (inside allow_remote): still judged by uid
        (local,) = run_as(NOBODY, NOBODY, [exchange])
        assert local["replies"] == [refusal_bytes(REFUSED)], local
