"""Cycles among the jobs' `depends_on`, as pure logic: a file whose dependencies would close one is
invalid (at load, reload, push and `taskmasterd --check`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from .jobfile import JobSpec

Graph = Mapping[str, Iterable[str]]  # job -> the names it depends on (loaded or not)


def dependency_graph(specs: Iterable[JobSpec]) -> dict[str, list[str]]:
    return {spec.name: [d.job for d in spec.depends_on] for spec in specs}


def cycle_problem(graph: Graph, name: str, source: str) -> str | None:
    """The validation error of job `name` (its file `source`) when its dependencies close a cycle."""
    cycle = find_cycle(graph, start=name)
    return f'{source}: field "depends_on": a cycle: {describe_cycle(cycle)}' if cycle else None


def find_cycle(graph: Graph, start: str | None = None) -> tuple[str, ...] | None:
    """A cycle among the loaded jobs as a closed path (`("a", "b", "a")`), or None. With `start`,
    only what `start` reaches is searched: when a new version of one job's file is the only
    change to an acyclic graph, every new cycle goes through that job and is found from it.
    Iterative, so a long chain of jobs cannot exhaust the stack."""
    done: set[str] = set()
    for root in [start] if start is not None else sorted(graph):
        if root in done or root not in graph:
            continue
        path: list[str] = [root]
        on_path = {root}
        pending = [iter(sorted(graph[root]))]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif nxt in on_path:
                return (*path[path.index(nxt):], nxt)
            elif nxt in graph and nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                pending.append(iter(sorted(graph[nxt])))
    return None


def describe_cycle(cycle: Sequence[str]) -> str:
    return " -> ".join(cycle)
