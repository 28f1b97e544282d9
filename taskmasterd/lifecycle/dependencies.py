"""Dependencies between jobs, as pure logic: what a job meets, what it still waits on, and the
order in which a set of jobs stops (a cycle is a job file's problem: jobfiles/cycles.py).

A job meets `running` when every instance is RUNNING; `healthy` when every instance is RUNNING
and passes its health check (a job without a health check: RUNNING is enough); `completed` when
every instance has exited with an expected code (a one-shot setup job).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..jobfiles.cycles import Graph
from ..jobfiles.readiness_spec import Dependency


@dataclass(frozen=True, slots=True)
class Standing:
    """What a dependant can observe of one instance."""

    running: bool  # RUNNING
    healthy: bool  # RUNNING and its health check says healthy (no health check: RUNNING)
    completed: bool  # EXITED with an expected code


def conditions_met(instances: Sequence[Standing]) -> frozenset[str]:
    """The conditions a job of these instances meets (a job of no instances meets none)."""
    if not instances:
        return frozenset()
    met = (("running", all(i.running for i in instances)), ("healthy", all(i.healthy for i in instances)),
           ("completed", all(i.completed for i in instances)))
    return frozenset(name for name, ok in met if ok)


# A job's met conditions, or None when no job of that name is loaded.
ConditionsOf = Callable[[str], "frozenset[str] | None"]


def unmet(depends_on: Iterable[Dependency], conditions_of: ConditionsOf) -> list[Dependency]:
    """The dependencies that do not meet their condition yet, in the file's order."""
    waiting = []
    for dependency in depends_on:
        met = conditions_of(dependency.job)
        if met is None or dependency.condition not in met:
            waiting.append(dependency)
    return waiting


def waiting_text(depends_on: Iterable[Dependency], conditions_of: ConditionsOf) -> str | None:
    """For `status`: "waiting for db (healthy), cache (not loaded)"; None when nothing is awaited."""
    waits = [f"{d.job} ({'not loaded' if conditions_of(d.job) is None else d.condition})"
             for d in unmet(depends_on, conditions_of)]
    return "waiting for " + ", ".join(waits) if waits else None


def stop_layers(names: Iterable[str], graph: Graph) -> list[list[str]]:
    """The order to stop `names` in: dependants before what they depend on. Each layer can stop in
    parallel once the layers before it have stopped. Only dependencies inside `names` count;
    a cycle (which validation refuses) ends up in the last layer rather than hanging."""
    remaining = set(names)
    layers = []
    while remaining:
        # A job can stop once nothing still running depends on it.
        needed = {dep for name in remaining for dep in graph.get(name, ()) if dep in remaining and dep != name}
        layer = sorted(remaining - needed) or sorted(remaining)
        layers.append(layer)
        remaining.difference_update(layer)
    return layers
