"""Log files keep lines whole: size rotation at a line boundary (a line longer than logmaxbytes is
the one that is split), `stderr: "stdout"` merging both streams into one file in arrival order,
and a job's words reaching the operator's terminal only escaped."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.ctl import ctl, err, out
from tests.support.daemon import Daemon, wait_for

MAX = 1024
# Lines of 1 to 200 characters, each written in two pieces (the cut is where a pipe read may end
# too), then one line longer than logmaxbytes, then a marker.
WRITER = r"""
import os, random, sys
random.seed(7)
for number in range(600):
    line = (f"{number}:" + "x" * random.randrange(1, 200) + "\n").encode()
    cut = random.randrange(len(line))
    os.write(1, line[:cut]); os.write(1, line[cut:])
os.write(1, b"long:" + b"y" * 3000 + b"\n")
os.write(1, b"done\n")
"""


def _read(path: Path) -> bytes:
    """The file as it is now; nothing while it is rotated away (between its rename and its reopening)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_rotation_happens_at_a_line_boundary(tmp_path: Path) -> None:
    job = {"cmd": [sys.executable, "-c", WRITER], "starttime": 0, "autorestart": "never", "exitcodes": [0],
           "logmaxbytes": MAX, "logbackups": 1000, "stderr": None}
    with Daemon(tmp_path, jobs={"writer": job}) as daemon:
        base = daemon.log_dir / "writer.0.out"
        # its exit may come before the daemon has drained its pipe (a loaded machine): the last line
        wait_for(lambda: _read(base).endswith(b"done\n"), what="the writer's output captured")
    files = sorted(base.parent.glob("writer.0.out.*"), key=lambda p: -int(p.suffix[1:])) + [base]
    contents = [path.read_bytes() for path in files]
    assert len(contents) > 40
    long_pieces = [text for text in contents if b"y" * 100 in text]
    for text in contents:
        if text in long_pieces:
            continue
        assert text.endswith(b"\n") and len(text) <= 2 * MAX, text[-80:]  # whole lines only
        assert all(line.split(b":")[0].isdigit() or line == b"done" for line in text.splitlines()), text
    whole = b"".join(contents)
    numbers = [int(line.split(b":")[0]) for line in whole.splitlines() if line[:1].isdigit()]
    assert numbers == list(range(600))  # nothing lost, nothing reordered
    # the one exception: a line longer than logmaxbytes is split, and only that line
    assert b"long:" + b"y" * 3000 + b"\n" in whole and len(long_pieces) >= 3


def test_stderr_stdout_merges_both_streams_in_arrival_order(tmp_path: Path) -> None:
    both = {"cmd": ["sh", "-c", "for i in $(seq 1 50); do echo out $i; echo err $i >&2; done"], "starttime": 0,
            "autorestart": "never", "stderr": "stdout"}
    with Daemon(tmp_path, jobs={"both": both}) as daemon:
        wait_for(lambda: daemon.instances("both")[0]["state"] == "EXITED", what="both done")
        lines = (daemon.log_dir / "both.0.out").read_text().splitlines()
        assert lines == [f"{kind} {i}" for i in range(1, 51) for kind in ("out", "err")]
        assert not (daemon.log_dir / "both.0.err").exists()
        merged = ctl(daemon, "tail", "--stderr", "-n", "2", "both")
        assert merged.returncode == 0 and out(merged) == "out 50\nerr 50\n"  # the one file, whichever stream


NOTIFIER = r"""
import os, socket, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto("READY=1\nSTATUS=ok \u202egnp.exe\x1b]0;owned\x07 \u2066x\u2069".encode(), os.environ["NOTIFY_SOCKET"])
time.sleep(1000)
"""


def test_a_jobs_status_text_reaches_the_terminal_escaped(tmp_path: Path) -> None:
    job = {"cmd": [sys.executable, "-c", NOTIFIER], "ready": "notify", "ready_timeout": 10, "stdout": None,
           "stderr": None}
    with Daemon(tmp_path, jobs={"sly": job}) as daemon:
        wait_for(lambda: daemon.instances("sly")[0].get("notify_status"), what="the STATUS= text")
        for line in (["status"], ["status", "sly"], ["status", "sly", "sly"]):
            result = ctl(daemon, *line)
            shown = out(result)
            assert "\u202e" not in shown and "\x1b" not in shown and "\u2066" not in shown and "\x07" not in shown
            assert "\\u202egnp.exe?]0;owned? \\u2066x\\u2069" in shown, shown  # controls: '?' by the daemon
        as_json = json.loads(out(ctl(daemon, "status", "sly", "--json")))  # a script gets the text itself
        assert "\u202e" in json.dumps(as_json, ensure_ascii=False)
    assert "Traceback" not in err(result)
