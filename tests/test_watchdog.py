"""The watchdog: a timer the pings keep from firing, with the real notify program pinging it."""
import asyncio
import os
import signal
import subprocess

from taskmasterd.health.notify_socket import NotifyDirectory
from taskmasterd.health.watchdog import Watchdog, watchdog_environment
from tests.support.notify import NOTIFY_READY, PYTHON, short_tempdir
from tests.support.supervised import run


def test_the_child_is_told_its_timeout_in_microseconds():
    assert watchdog_environment(2.5) == {"WATCHDOG_USEC": "2500000"}
    assert watchdog_environment(1e-9) == {"WATCHDOG_USEC": "1"}


def test_pings_keep_it_quiet_and_silence_fires_it_with_the_reason():
    async def scenario():
        loop = asyncio.get_running_loop()
        missed: asyncio.Future[tuple[float, str]] = loop.create_future()
        dog = Watchdog(0.2, lambda why: missed.set_result((loop.time(), why)))
        dog.arm()
        for _ in range(10):  # 0.5 s of pings every 0.05 s
            await asyncio.sleep(0.05)
            dog.ping()
        assert not missed.done() and dog.armed
        last_ping = loop.time()
        fired_at, why = await asyncio.wait_for(missed, 10)
        assert why == "no WATCHDOG=1 for 0.2s"
        assert fired_at - last_ping >= 0.19 and not dog.armed

    run(scenario())


def test_trigger_and_a_new_timeout():
    async def scenario():
        loop = asyncio.get_running_loop()
        reasons: list[str] = []
        dog = Watchdog(30, reasons.append)
        dog.arm()
        dog.trigger()
        assert reasons == ["the program sent WATCHDOG=trigger"] and not dog.armed
        dog.arm()
        began = loop.time()
        dog.set_timeout(0.1)  # WATCHDOG_USEC=100000 from the program
        while not reasons[1:]:
            await asyncio.sleep(0.02)
        assert reasons[1] == "no WATCHDOG=1 for 0.1s" and loop.time() - began < 5
        dog.set_timeout(0.05)  # not armed: only remembered
        await asyncio.sleep(0.2)
        assert len(reasons) == 2
        dog.arm()
        dog.close()
        await asyncio.sleep(0.2)
        assert len(reasons) == 2

    run(scenario())


def test_a_real_program_pings_and_a_stopped_one_misses():
    async def scenario():
        loop = asyncio.get_running_loop()
        missed = loop.create_future()
        dog = Watchdog(0.4, lambda why: missed.set_result(why))
        pings = 0

        def on_message(message):
            nonlocal pings
            if message.ready:
                dog.arm()
            if message.watchdog_ping:
                pings += 1
                dog.ping()

        with short_tempdir() as base:
            sock = NotifyDirectory(os.path.join(base, "notify")).open_socket(on_message)
            env = {**os.environ, **sock.environment(), **watchdog_environment(dog.timeout), "STARTUP_SECONDS": "0"}
            child = subprocess.Popen([PYTHON, str(NOTIFY_READY)], env=env)
            try:
                await asyncio.sleep(1.5)  # the program pings every 0.2 s
                assert not missed.done() and pings >= 3
                child.send_signal(signal.SIGSTOP)  # hung
                assert await asyncio.wait_for(missed, 20) == "no WATCHDOG=1 for 0.4s"
            finally:
                child.kill()
                child.wait()
                sock.close()

    run(scenario())
