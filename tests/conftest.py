"""Whatever a test's daemons leave in the cgroup hierarchies (a daemon killed with SIGKILL and not
followed by another) is killed and removed when the test ends: tests clean up the cgroups they
make, and a test's subtree is the one named after a state directory under its tmp_path."""
import os
import re

import pytest

from taskmasterd.kernel import cgroup


def _subtrees_under(tmp_path):
    readable = re.sub(r"[^A-Za-z0-9_.]+", "-", str(tmp_path)).strip("-")
    prefix = f"taskmasterd-{readable}"
    try:
        layout = cgroup.current_layout()
    except OSError:
        return []
    found = []
    for hierarchy in [h for h in [layout.v2, *layout.v1.values()] if h is not None]:
        for base in {hierarchy.mountpoint, hierarchy.own}:
            try:
                names = os.listdir(base)
            except OSError:
                continue
            found.extend(os.path.join(base, name) for name in names if name.startswith(prefix))
    return found


def _kill_all(path):
    for directory, subdirs, files in os.walk(path):
        if "cgroup.kill" in files:
            try:
                cgroup.write(os.path.join(directory, "cgroup.kill"), b"1")
            except OSError:
                pass


@pytest.fixture(autouse=True)
def _no_cgroup_left(tmp_path):
    yield
    for subtree in _subtrees_under(tmp_path):
        _kill_all(subtree)
        for _ in range(100):
            if cgroup.remove_tree(subtree):
                break
            import time

            time.sleep(0.02)
