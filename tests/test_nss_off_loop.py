"""A job's `user` is looked up in NSS (which may be LDAP or SSSD, seconds away) on a worker thread,
never on the event loop: when its file is validated, and for its spawns and health checks."""
import grp
import os
import pwd
import threading

import pytest

from taskmasterd.lifecycle.states import State

from .support.supervised import reach, run, supervised


def test_a_jobs_user_is_looked_up_off_the_loop(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root (user: nobody)")
    on_loop: list[str] = []
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread

    def spy(module, name):
        real = getattr(module, name)

        def looked_up(*args):
            if threading.get_ident() == loop_thread:
                on_loop.append(f"{name}{args}")
            return real(*args)

        monkeypatch.setattr(module, name, looked_up)

    for module, name in ((pwd, "getpwnam"), (pwd, "getpwuid"), (os, "getgrouplist"), (grp, "getgrnam"),
                         (grp, "getgrgid")):
        spy(module, name)
    spec = {"cmd": ["sleep", "300"], "user": "nobody", "starttime": 0, "stdout": None, "stderr": None,
            "healthcheck": {"cmd": ["true"], "start_interval": 0.1}}

    async def scenario():
        async with supervised(tmp_path, {"as_nobody": spec}, watch=False) as sup:
            inst = sup.jobs["as_nobody"].instances[0]
            await reach(inst, State.RUNNING)
            assert (await sup.reload("as_nobody")).response in ("success", "redundant")
            await sup.kill("as_nobody")
            assert (await sup.start("as_nobody")).response == "success"

    run(scenario())
    assert on_loop == []
