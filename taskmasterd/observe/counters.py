"""Process-wide counters read by the metrics endpoint (metrics.py). Counting is a dict update, so
every door may count without caring whether metrics are on.

- `requests`: answered control requests, by verb and response; counted in `verbs.dispatch`.
- `colonies_processes`: ColonyOS processes this daemon ran to the end, by outcome. The Colonies
  bridge calls `count_colonies_process(succeeded)` once per assigned process, when it closes the
  process on the server (successful or failed) — not for a process it never got to run.
- `rollouts`: rolling restarts (lifecycle/rollout.py): `begun`, then one of `done`, `halted`
  (a new run was not ready) or `interrupted` (a command or a newer rollout took over).
"""
from __future__ import annotations

from collections import Counter

requests: Counter[tuple[str, str]] = Counter()
colonies_processes: Counter[str] = Counter()
rollouts: Counter[str] = Counter()


def count_request(verb: str, response: str) -> None:
    requests[(verb, response)] += 1


def count_colonies_process(succeeded: bool) -> None:
    colonies_processes["succeeded" if succeeded else "failed"] += 1


def count_rollout(outcome: str) -> None:
    rollouts[outcome] += 1
