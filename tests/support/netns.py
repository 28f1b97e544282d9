"""Network namespaces of a test's own: a host of its own, and a second host joined by a veth pair.

Made with iproute2 (`ip netns add`), deleted when the test ends; nothing is routed outside them.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid
from contextlib import ExitStack, contextmanager
from typing import Iterator

import pytest


@functools.cache
def available() -> str | None:
    """None when this machine lets a test make namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    name = f"tmprobe{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return None


needs_netns = pytest.mark.skipif(available() is not None, reason=str(available()))


def run_in(namespace: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True, check=check)


def exec_prefix(namespace: str) -> list[str]:
    """What to put before a command so that it runs in `namespace`."""
    return ["ip", "netns", "exec", namespace]


@contextmanager
def namespace() -> Iterator[str]:
    """A new network namespace with its loopback up; its name."""
    name = f"tm{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        run_in(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@contextmanager
def two_hosts(here: str = "10.213.0.1", there: str = "10.213.0.2") -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair, `here` and `there` their addresses on it."""
    with ExitStack() as stack:
        first, second = stack.enter_context(namespace()), stack.enter_context(namespace())
        link = f"v{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "link", "add", f"{link}a", "netns", first, "type", "veth",
                        "peer", "name", f"{link}b", "netns", second], check=True, capture_output=True)
        for name, end, address in ((first, f"{link}a", here), (second, f"{link}b", there)):
            run_in(name, "ip", "addr", "add", f"{address}/24", "dev", end)
            run_in(name, "ip", "link", "set", end, "up")
        yield first, second
