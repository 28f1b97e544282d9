"""Flow control of the console (container mode): a stream read slowly slows the jobs that write
to it and costs no line; only a stream that takes nothing for LogWriter.STALL seconds costs lines,
which are counted and said; the daemon answers throughout."""
from __future__ import annotations

import logging
import os
import re
import select
import threading
import time

from taskmasterd.observe.daemonlog import LogWriter

from .support.daemon import Daemon, wait_for

LINES = 1_000_000  # ~19 MB prefixed: more than the writer's queue, the job's pipe and the FIFO hold


def _read_until(fd: int, end: bytes, timeout: float) -> bytes:
    data, deadline = bytearray(), time.monotonic() + timeout
    while end not in data[-4096:]:
        assert time.monotonic() < deadline, data[-300:]
        if select.select([fd], [], [], 1)[0]:
            chunk = os.read(fd, 1 << 20)
            assert chunk, "the daemon closed its stdout"
            data += chunk
    return bytes(data)


def test_a_console_read_slowly_holds_the_job_back_and_loses_no_line(tmp_path):
    console = tmp_path / "console"
    os.mkfifo(console)
    reader = os.open(console, os.O_RDONLY | os.O_NONBLOCK)
    finished = tmp_path / "finished"
    jobs = {"burst": {"cmd": ["sh", "-c", f"seq 1 {LINES}; touch {finished}; exec sleep 600"], "starttime": 0,
                      "stderr": None}}
    daemon = Daemon(tmp_path, jobs, args=["--container"])
    daemon.stdout_path = console
    try:
        daemon.start()
        time.sleep(1.5)  # nothing read: the FIFO, the writer's queue and then the job's pipe fill
        assert not finished.exists(), "the job wrote everything: the console dropped or hoarded it"
        started = time.monotonic()
        assert daemon.instances("burst")[0]["state"] == "RUNNING"
        assert time.monotonic() - started < 5  # the loop is not the one waiting
        out = _read_until(reader, f"burst[0] | {LINES}\n".encode(), 120).decode()
        wait_for(finished.exists, 30)
    finally:
        daemon.stop()
        os.close(reader)
    assert "were dropped" not in out
    numbers = re.findall(r"^burst\[0\] \| (\d+)$", out, re.MULTILINE)
    assert len(numbers) == LINES and numbers[0] == "1" and numbers[-1] == str(LINES)
    assert numbers == [str(n) for n in range(1, LINES + 1)]


def test_a_stalled_stream_drops_what_comes_and_says_how_many_once_it_moves_again():
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    stream = os.fdopen(write_fd, "w")
    handler = logging.StreamHandler(stream)
    writer = LogWriter(handler, what="the jobs' output")
    writer.MAX_PENDING_TEXT, writer.STALL = 1000, 0.3
    resumed = threading.Event()
    writer.start()
    try:
        line = "x" * 99 + "\n"
        writer.put_text(line * 2000, 2000)  # 200 kB: more than the pipe holds, the write waits
        wait_for(lambda: not writer._pending, 10)  # the thread took it and is stuck writing
        writer.put_text(line * 20, 20)
        assert not writer.room_or_wait(resumed.set)  # full, but not stalled yet: the pipe waits
        wait_for(writer.stalled, 10)
        assert writer.room_or_wait(lambda: None)  # stalled: the pipes are read again, and ...
        writer.put_text(line * 7, 7)  # ... what comes is dropped
        out = bytearray()
        while b"dropped" not in out or out.count(b"\n") < 2021:
            if select.select([read_fd], [], [], 10)[0]:
                out += os.read(read_fd, 1 << 16)
            else:
                raise AssertionError(out[-200:])
        assert resumed.wait(10)  # once it took the text, the paused pipes are called back
        assert out.count(b"x" * 99 + b"\n") == 2020
        assert b"[taskmasterd: 7 lines of the jobs' output were dropped" in out
    finally:
        writer.stop()
        stream.close()
        os.close(read_fd)
