"""The cgroup layout read from mountinfo and /proc/self/cgroup (pure: no cgroup is touched), and the
resource fields of a job file."""
import json

import pytest

from taskmasterd.jobfiles.jobfile import JobFileError, parse_job
from taskmasterd.jobfiles.resources import Resources, memory_text
from taskmasterd.kernel.cgroup import parse_layout
from taskmasterd.processes.containment import subtree_name

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""
HYBRID_OWN = """\
9:name=systemd:/system.slice/taskmasterd.service
8:pids:/system.slice/taskmasterd.service
4:memory:/process_api/0445
2:cpu,cpuacct:/
0::/system.slice/taskmasterd.service
"""


def test_a_hybrid_layout_gives_v2_for_containment_and_v1_controllers():
    layout = parse_layout(HYBRID_MOUNTS, HYBRID_OWN)
    assert layout.v2.own == "/sys/fs/cgroup/unified/system.slice/taskmasterd.service"
    assert layout.v2.options == {"rw", "nsdelegate"}
    assert layout.v1["memory"].own == "/sys/fs/cgroup/memory/process_api/0445"
    assert layout.v1["cpu"] is layout.v1["cpuacct"] and layout.v1["cpu"].own == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["pids"].own == "/sys/fs/cgroup/pids/system.slice/taskmasterd.service"
    assert "systemd" not in layout.v1 and "name=systemd" not in layout.v1
    assert layout.describe() == "cgroup2 at /sys/fs/cgroup/unified + cgroup v1 cpu,cpuacct,memory,pids"


def test_pure_v2_v1_only_and_none():
    pure = parse_layout("30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,memory_recursiveprot\n",
                        "0::/user.slice/user-1000.slice/session-2.scope\n")
    assert pure.v2.own == "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope" and pure.v1 == {}
    legacy = parse_layout("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "4:memory:/a\n")
    assert legacy.v2 is None and legacy.v1["memory"].own == "/sys/fs/cgroup/memory/a"
    assert parse_layout("", "").describe() == "no cgroup hierarchy mounted"


def test_a_mount_of_a_subtree_is_accounted_for():
    """A container's cgroup namespace (or a bind mount) shows a cgroup below the root at the mount
    point: its paths in /proc/<pid>/cgroup are translated, and one outside it is not shown."""
    layout = parse_layout("30 25 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "0::/docker/abc/app\n")
    assert layout.v2.own == "/sys/fs/cgroup/app"
    assert layout.v2.directory("/docker/abc") == "/sys/fs/cgroup"
    assert layout.v2.directory("/elsewhere") is None
    escaped = parse_layout("30 25 0:26 / /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n", "0::/\n")
    assert escaped.v2.mountpoint == "/sys/fs/cgroup x"


def test_subtree_names_are_readable_and_never_shared():
    assert subtree_name("/var/lib/taskmaster").startswith("taskmasterd-var-lib-taskmaster-")
    assert subtree_name("/a-b") != subtree_name("/a/b")
    assert len(subtree_name("/" + "x" * 4000)) < 255


def spec(**fields):
    return parse_job("web", json.dumps({"cmd": "sleep 1", **fields}).encode(), "/jobs/web.tm.json")


def test_resource_fields_with_units():
    resources = spec(memory_max="512M", cpu_quota="150%", tasks_max=64, nice=-5, oom_score_adjust=-1000,
                     rlimits={"nofile": [1024, 65536], "core": 0, "stack": "infinity"}).resources
    assert resources.memory_max == 512 << 20 and memory_text(resources.memory_max) == "512M"
    assert resources.cpu_quota == 150 and resources.tasks_max == 64
    assert resources.controllers() == ("memory", "cpu", "pids")
    assert dict((name, (soft, hard)) for name, soft, hard in resources.rlimits)["nofile"] == (1024, 65536)
    assert spec(memory_max=1 << 30).resources.memory_max == 1 << 30
    assert spec(memory_max="1.5G").resources.memory_max == 3 << 29
    assert spec().resources == Resources() and spec(memory_max=None).resources == Resources()


@pytest.mark.parametrize("field, value, message", [
    ("memory_max", "12Q", 'must be a number of bytes or a size like "512M"'),
    ("memory_max", 100, "must be from 1M"),
    ("memory_max", True, 'must be a number of bytes'),
    ("cpu_quota", 50, 'must be a percentage of one CPU like "50%"'),
    ("cpu_quota", "0%", "must be from 1% to"),
    ("tasks_max", 0, "must be an integer from 1 to 4194304"),
    ("nice", 20, "must be an integer from -20 to 19"),
    ("oom_score_adjust", -1001, "must be an integer from -1000 to 1000"),
    ("rlimits", {"nofiles": 1}, "unknown limit 'nofiles': use one of as, core, cpu"),
    ("rlimits", {"nofile": [10, 5]}, "nofile: the soft limit 10 is above the hard limit 5"),
    ("rlimits", {"core": -1}, 'core: must be an integer from 0 to'),
    ("rlimits", [1], "must be an object of limits by name"),
])
def test_a_bad_resource_field_names_the_file_the_field_and_the_problem(field, value, message):
    with pytest.raises(JobFileError) as bad:
        spec(**{field: value})
    assert str(bad.value).startswith(f'/jobs/web.tm.json: field "{field}": {message}')


def test_only_a_cgroup_limit_changes_in_place():
    base = spec(memory_max="64M")
    assert spec(memory_max="128M", cpu_quota="20%").spawn_settings() == base.spawn_settings()
    assert spec(memory_max="64M", nice=1).spawn_settings() != base.spawn_settings()
    assert spec(memory_max="64M", rlimits={"core": 0}).spawn_settings() != base.spawn_settings()
