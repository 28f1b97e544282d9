"""Following without processes: the last lines of a file, a follower across rotation and
truncation (real files, real inotify), bounded subscriber queues, and the options of following verbs."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from taskmasterd.observe.fanout import Fanout
from taskmasterd.observe.following import FollowOptions, parse_options
from taskmasterd.observe.logfollow import FileFollower, cut_last_lines, last_lines, tail
from taskmasterd.kernel.safepath import UnsafePath

WAIT = 5.0  # seconds an event-driven read may take before the test fails


def test_cut_last_lines() -> None:
    assert cut_last_lines(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert cut_last_lines(b"a\nb\nc", 2) == b"b\nc"  # a last line without its newline counts
    assert cut_last_lines(b"a\nb\n", 5) == b"a\nb\n"
    assert cut_last_lines(b"", 3) == b""


def test_last_lines_reads_only_the_end_of_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    with open(path, "wb") as out:
        out.truncate(10 * 1024 ** 3)  # 10 GiB, sparse: reading it whole would take minutes
        out.seek(0, os.SEEK_END)
        out.write(b"".join(b"line %d\n" % i for i in range(100_000)))
    fd = os.open(path, os.O_RDONLY)
    try:
        text = asyncio.run(asyncio.wait_for(last_lines(fd, os.fstat(fd).st_size, 3), WAIT))
    finally:
        os.close(fd)
    assert text == b"line 99997\nline 99998\nline 99999\n"


async def _next(follower: FileFollower) -> bytes:
    reply = await asyncio.wait_for(anext(follower), WAIT)
    return reply.data


async def _read_until(follower: FileFollower, wanted: bytes) -> bytes:
    seen = b""
    while not seen.endswith(wanted):
        seen += await _next(follower)
    return seen


def test_a_follower_loses_nothing_across_rename_rotation_truncation_and_a_late_file(tmp_path: Path) -> None:
    path = tmp_path / "job.0.out"

    async def scenario() -> None:
        path.write_bytes(b"old 1\nold 2\n")
        first = await tail(str(path), "job:0", 1, follow=True)
        follower = first.stream
        assert first.data == b"old 2\n" and isinstance(follower, FileFollower)
        try:
            with open(path, "ab") as out:
                out.write(b"new 1\n")
            assert await _next(follower) == b"new 1\n"
            # The daemon's rotation: rename, then a new file. logrotate without copytruncate too,
            # with a late write to the moved file before the writer reopens.
            with open(path, "ab") as old:
                old.write(b"before rotation\n")
                os.replace(path, f"{path}.1")
                old.write(b"late, into the moved file\n")
                with open(path, "ab") as new:
                    new.write(b"after rotation\n")
            assert await _read_until(follower, b"after rotation\n") == (
                b"before rotation\nlate, into the moved file\nafter rotation\n")
            reading = asyncio.ensure_future(_read_until(follower, b"after truncation\n"))  # as the server does
            with open(path, "r+b") as same:  # copytruncate
                same.truncate(0)
                # Only what is written between the copy and the truncation can be lost (that is
                # copytruncate's own window); the writer goes on later.
                await asyncio.sleep(0.2)
                same.write(b"after truncation\n")
            assert await reading == b"after truncation\n"
            os.unlink(path)
            os.unlink(f"{path}.1")
            path.write_bytes(b"a file again\n")
            assert await _read_until(follower, b"a file again\n") == b"a file again\n"
        finally:
            await follower.aclose()

    asyncio.run(scenario())


def test_a_log_replaced_by_empty_files_again_and_again_holds_few_descriptors(tmp_path: Path) -> None:
    """The job's user owns its log directory: it can put a fresh empty file at the path 2000 times.
    A follower kept every replaced file open until the newest had data (1600+ descriptors)."""
    path = tmp_path / "job.0.out"

    async def scenario() -> None:
        path.write_bytes(b"first\n")
        first = await tail(str(path), "job:0", 1, follow=True)
        follower = first.stream
        try:
            before = len(os.listdir("/proc/self/fd"))
            for n in range(2000):
                fresh = tmp_path / "fresh"
                fresh.write_bytes(b"")
                os.replace(fresh, path)
                if n % 10 == 0:
                    await asyncio.sleep(0)
                    follower._read_some()  # what each wake-up does
            follower._read_some()
            assert len(os.listdir("/proc/self/fd")) - before < 10
            with open(path, "ab") as out:
                out.write(b"still followed\n")
            assert await _read_until(follower, b"still followed\n") == b"still followed\n"
        finally:
            await follower.aclose()

    asyncio.run(scenario())


def test_following_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "later.out"

    async def scenario() -> None:
        first = await tail(str(path), "later:0", 10, follow=True)
        assert first.data == b""
        try:
            path.write_bytes(b"hello\n")
            assert await _next(first.stream) == b"hello\n"
        finally:
            await first.stream.aclose()

    asyncio.run(scenario())


def test_a_slow_subscriber_loses_the_oldest_and_is_told_how_many() -> None:
    async def scenario() -> None:
        fanout: Fanout[int] = Fanout(limit=3)
        slow, other = fanout.subscribe(), fanout.subscribe()
        for number in range(10):
            fanout.publish(number)
        assert await slow.batch() == ([7, 8, 9], 7)
        fanout.publish(10)
        assert await slow.batch() == ([10], 0)
        other.close()
        assert len(fanout.subscribers) == 1
        waiting = asyncio.ensure_future(slow.batch())
        await asyncio.sleep(0)
        fanout.publish(11)
        assert await asyncio.wait_for(waiting, WAIT) == ([11], 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("data, expected", [
    (None, FollowOptions()),
    (b'{"last": 0, "follow": true, "stream": "stderr", "other": 1}', FollowOptions(0, True, "stderr")),
    (b"nope", 'the options in "data" are not JSON'),
    (b"[]", 'the options in "data" must be a JSON object'),
    (b'{"last": -1}', 'option "last" must be a number of lines from 0 to 100000'),
    (b'{"last": true}', 'option "last" must be a number of lines from 0 to 100000'),
    (b'{"follow": 1}', 'option "follow" must be true or false'),
    (b'{"stream": "stdin"}', 'option "stream" must be "stdout" or "stderr"'),
])
def test_follow_options(data: bytes | None, expected: FollowOptions | str) -> None:
    assert parse_options(data) == expected


def test_a_fifo_at_a_log_path_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "web.0.out"
    os.mkfifo(fifo)

    async def scenario():
        try:
            await asyncio.wait_for(tail(str(fifo), "web:0", 10, False), 5)
        except UnsafePath as exc:
            return str(exc)
        return "read"

    assert "not a regular file" in asyncio.run(scenario())
