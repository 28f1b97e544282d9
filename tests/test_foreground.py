"""Control requests go before background batches (taskmasterd/foreground.py): while the daemon
spawns a storm of processes, `status` waits for the slice of spawns under way, not for one slice
per loop iteration it takes to be accepted, read and answered."""
import asyncio
import socket
import statistics
import threading

from taskmasterd.foreground import HOLD, Foreground
from taskmasterd.tasks import Turns

from .support.daemon import Daemon

STORM = 150


def test_status_during_a_storm_of_spawns_waits_for_a_few_spawns_not_dozens(tmp_path):
    """Counted in spawns, not milliseconds, so load cannot blur it: each `status` is sent as the
    last one's reply is read, and the spawns made between two replies are those a request waited
    for. Before the foreground, a request took ~9 loop iterations, each with a 5 ms slice of
    spawns: 44-51 spawns per request (40 ms); with it 2-4."""
    job = {"cmd": ["sleep", "300"], "numprocs": STORM, "autostart": False, "starttime": 0, "stoptime": 1,
           "stdout": None, "stderr": None}
    with Daemon(tmp_path, {"storm": job}) as daemon:
        starting = threading.Thread(target=daemon.request, args=("start", "storm"), kwargs={"timeout": 120})
        starting.start()
        spawned = [0]
        while spawned[-1] < STORM:
            spawned.append(sum(i["pid"] is not None for i in daemon.instances("storm")))
        starting.join()
        during = [after - before for before, after in zip(spawned, spawned[1:]) if 0 < before and after < STORM]
        assert during, spawned  # a storm no request saw the middle of proves nothing
        assert statistics.median(during) <= 12, during


def test_a_held_slice_runs_once_no_request_asks():
    async def scenario() -> None:
        foreground, ran = Foreground(), []
        foreground.begin()
        foreground.after(lambda: ran.append("slice"))
        await asyncio.sleep(HOLD / 4)
        assert ran == []  # held while the request asks
        foreground.end()
        await asyncio.sleep(0.001)
        assert ran == ["slice"]

    asyncio.run(scenario())


def test_a_held_slice_waits_hold_at_most():
    async def scenario() -> None:
        foreground, ran = Foreground(), []
        foreground.begin()  # a request that never ends asking
        loop = asyncio.get_running_loop()
        began = loop.time()
        await foreground.turn()
        assert HOLD <= loop.time() - began < HOLD + 1.0
        foreground.after(lambda: ran.append("again"))
        await asyncio.sleep(HOLD * 2 + 0.05)
        assert ran == ["again"]
        foreground.end()

    asyncio.run(scenario())


def test_a_slice_goes_after_the_io_of_the_next_iteration():
    """So a connection accepted in that iteration asks before the slice starts (a call_soon'd
    slice would run before the I/O callbacks)."""
    async def scenario() -> None:
        foreground, order = Foreground(), []
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.send(b"x")  # readable at the next select
            loop.add_reader(ours, lambda: order.append("io") or loop.remove_reader(ours))
            foreground.after(lambda: order.append("slice"))
            while len(order) < 2:
                await asyncio.sleep(0.001)
        assert order == ["io", "slice"]

    asyncio.run(scenario())


def test_turns_let_their_batch_go_after_the_requests():
    """Job files read and parsed a batch at a time (tasks.Turns) wait for the requests too."""
    async def scenario() -> None:
        foreground, done = Foreground(), []
        turns = Turns(foreground=foreground)

        async def piece(n: int) -> None:
            await turns.turn()
            done.append(n)

        foreground.begin()
        pieces = [asyncio.create_task(piece(n)) for n in range(3)]
        await asyncio.sleep(HOLD / 4)
        assert done == []
        foreground.end()
        await asyncio.gather(*pieces)
        assert sorted(done) == [0, 1, 2]

    asyncio.run(scenario())
