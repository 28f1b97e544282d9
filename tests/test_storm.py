"""A bounded concurrency storm against the real daemon: 20 clients, every verb, three job names.
Afterwards the jobs are the files on disk, every request was answered, and every live process
is one the daemon owns."""
import json
import random
import threading
import time

from .support.daemon import Daemon, wait_for
from .support.processes import marked, new_mark

NAMES = ("a", "b", "c")
VERBS = ("start", "stop", "kill", "repair", "reload", "push", "push", "delete", "status", "restart")
CLIENTS = 20
DURATION = 8.0


def job_file(mark, rng):
    return json.dumps({"cmd": ["sleep", "300"], "numprocs": rng.randint(1, 3), "starttime": rng.choice([0, 0.1]),
                       "stoptime": 0.3, "stdout": None, "stderr": None, "env": {**mark, "V": str(rng.random())},
                       "autostart": rng.random() < 0.7}).encode()


def test_storm_of_verbs_leaves_a_consistent_daemon(tmp_path):
    mark = new_mark()
    rng = random.Random(8)
    with Daemon(tmp_path, {name: json.loads(job_file(mark, rng)) for name in NAMES}) as daemon:
        answered, failures = [0], []
        deadline = time.monotonic() + DURATION

        def client(seed):
            local = random.Random(seed)
            while time.monotonic() < deadline:
                verb, name = local.choice(VERBS), local.choice(NAMES)
                try:
                    if verb == "push":
                        reply = daemon.request("push", name, job_file(mark, local), timeout=30)
                    elif verb == "restart":
                        reply = daemon.request("restart", timeout=30)
                    else:
                        reply = daemon.request(verb, name, timeout=30)
                except OSError as exc:  # a timeout or a dropped connection is a request not answered
                    failures.append(f"{verb} {name}: {exc!r}")
                    return
                if reply["response"] not in ("success", "fail", "redundant", "status"):
                    failures.append(f"{verb} {name}: {reply}")
                answered[0] += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, failures[:5]
        assert answered[0] > 200

        on_disk = lambda: sorted(p.name[: -len(".tm.json")] for p in (tmp_path / "jobs").glob("*.tm.json"))  # noqa: E731
        loaded = lambda: sorted(job["name"] for job in daemon.status()["jobs"])  # noqa: E731
        wait_for(lambda: loaded() == on_disk(), 10, what="the job list equal to the files on disk")

        def owned():
            pids = {i["pid"] for job in daemon.status()["jobs"] for i in job["instances"] if i["pid"]}
            return set(marked(mark)) <= pids

        wait_for(owned, 10, what="every live process owned by the daemon")
        assert "Traceback" not in daemon.stderr()
    assert not marked(mark)
