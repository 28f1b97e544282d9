"""What a process's returncode says, in words (for states, health checks and Colonies runs)."""
from __future__ import annotations

import signal


def describe_exit(returncode: int) -> str:
    """"exited with code 3", "killed by SIGKILL": a negative returncode is a death by that signal."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"
