"""Job selectors: which jobs and instances a request's `job` field names (an extension, see
docs/protocol.md "Extensions"), and how the replies of every selected target become one reply.

A selector is one or more items separated by single spaces; an item is a job name, `name:N`
(instance N of the job), or a glob over job names (`*`, `?`, `[...]`). None of ` :*?[` can
occur in a job name, so a seed client, which only ever sends a plain name, never sends one.

A selector comes from a peer, so what it may cost is bounded: fnmatch's translation of a pattern
is quadratic in its unclosed `[`, and every pattern is matched against every job. A pattern is at
most MAX_PATTERN characters (it matches names of at most 64), a selector holds at most
MAX_PATTERNS different ones, each compiled once, and an instance number has at most
MAX_INDEX_DIGITS digits.

Pure: strings and replies in, targets and one reply out.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import AbstractSet, Mapping, Sequence

from ..jobfiles.names import job_name_error
from ..reply import REDUNDANT, SUCCESS, Reply

_SELECTOR_CHARS = frozenset(" :*?[")
_GLOB_CHARS = frozenset("*?[")
MAX_PATTERN = 256
MAX_PATTERNS = 32
MAX_INDEX_DIGITS = 9


def is_selector(field: str) -> bool:
    """Whether `field` uses the selector syntax rather than being a plain (seed) job name."""
    return not _SELECTOR_CHARS.isdisjoint(field)


@dataclass(frozen=True, slots=True)
class Item:
    """One space-separated word of a selector."""

    text: str
    name: str | None  # None: `text` is a glob
    index: int | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """What one handler call acts on: a whole job, or one of its instances."""

    name: str
    index: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.index is None else f"{self.name}:{self.index}"


def parse(field: str, many: bool = True, globs: bool = True) -> list[Item] | str:
    """The items of a selector, or why it is not a valid one. `many=False`: exactly one item;
    `globs=False`: names and `name:N` only."""
    words = field.split(" ")
    if not many and len(words) > 1:
        return f"{field!r} names more than one job; give one job or one instance (name:N)"
    items = []
    patterns: set[str] = set()
    for word in words:
        if not word:
            return f"{field!r} is not a selector: separate names with single spaces"
        name, colon, index = word.partition(":")
        if colon:
            if not (index.isascii() and index.isdigit()) or len(index) > MAX_INDEX_DIGITS:
                return f"{_shown(word)}: an instance is written name:N, N a number from 0"
            problem = job_name_error(name)
            if problem:
                return problem
            items.append(Item(word, name, int(index)))
        elif not _GLOB_CHARS.isdisjoint(word):
            if not globs:
                return f"{_shown(word)}: give a job name, not a pattern"
            if len(word) > MAX_PATTERN:
                return f"{_shown(word)}: a pattern is at most {MAX_PATTERN} characters"
            patterns.add(word)
            if len(patterns) > MAX_PATTERNS:
                return f"a selector holds at most {MAX_PATTERNS} different patterns"
            items.append(Item(word, None))
        else:
            problem = job_name_error(word)
            if problem:
                return problem
            items.append(Item(word, word))
    return items


def _shown(word: str) -> str:
    """A word of the selector as an error quotes it: never the whole of a huge one."""
    return repr(word) if len(word) <= 80 else repr(word[:60]) + f"... ({len(word)} characters)"


def resolve(items: Sequence[Item], known: Mapping[str, int],
            unmatched: AbstractSet[str] = frozenset()) -> tuple[list[Target], list[str]]:
    """The targets `items` select among `known` jobs (name -> instance count; 0 for a job whose
    file never loaded), in the order written, each once (a whole job absorbs its instances); and
    one "<item>: <error>" line per item that selects nothing. Patterns skip `unmatched` names
    (`stop all` leaves alone the files that never loaded; naming one still reaches it)."""
    targets: list[Target] = []
    problems: list[str] = []
    for item in dict.fromkeys(items):  # an item written twice selects what it did the first time
        if item.name is None:
            pattern = re.compile(fnmatch.translate(item.text))  # re caches it for the repeats
            matched = sorted(name for name in known if name not in unmatched and pattern.match(name))
            if not matched:
                problems.append(f"{item.text}: no job matches this pattern")
            targets += [Target(name) for name in matched]
        elif item.name not in known:
            problems.append(f'{item.text}: job "{item.name}" does not exist')
        elif item.index is not None and 0 < known[item.name] <= item.index:
            problems.append(f'{item.text}: job "{item.name}" has no instance {item.index} '
                            f"(it has {known[item.name]}: 0 to {known[item.name] - 1})")
        else:
            targets.append(Target(item.name, item.index))
    whole = {target.name for target in targets if target.index is None}
    unique = dict.fromkeys(t for t in targets if t.index is None or t.name not in whole)
    return list(unique), problems


def aggregate(targets: Sequence[Target], replies: Sequence[Reply], problems: Sequence[str]) -> Reply:
    """One reply for a selector: `fail` with one "<target>: <error>" line per failure (items that
    selected nothing included) when anything failed; else `redundant` when every target was
    redundant, `success` otherwise. Its `value` lists each target's own response."""
    results = [{"target": target.label, "response": reply.response, **({"error": reply.error} if reply.error else {}),
                **({"note": reply.value["note"]} if isinstance(reply.value, dict) and "note" in reply.value else {})}
               for target, reply in zip(targets, replies, strict=True)]
    failures = [f"{target.label}: {reply.error or reply.response}"
                for target, reply in zip(targets, replies, strict=True) if reply.response not in ("success", "redundant")]
    failures += problems
    document = {"targets": results}
    if failures:
        return Reply("fail", error="\n".join(failures), value=document)
    if replies and all(reply.response == "redundant" for reply in replies):
        return REDUNDANT.with_(value=document)
    return SUCCESS.with_(value=document)


def merge_status(replies: Sequence[Reply], problems: Sequence[str], targets: Sequence[Target]) -> Reply:
    """One `status` document for a selector: every selected job once, its instances merged when
    several of them were named; `fail` naming what selected nothing or failed."""
    failures = [f"{target.label}: {reply.error}" for target, reply in zip(targets, replies, strict=True) if reply.response != "status"]
    failures += problems
    if failures:
        return Reply("fail", error="\n".join(failures))
    jobs: dict[str, dict] = {}
    for reply in replies:
        for entry in reply.value["jobs"]:
            seen = jobs.get(entry["name"])
            if seen is None:
                jobs[entry["name"]] = entry
            else:
                indexes = {inst["index"] for inst in seen["instances"]}
                seen["instances"] = seen["instances"] + [i for i in entry["instances"] if i["index"] not in indexes]
    for entry in jobs.values():
        entry["instances"].sort(key=lambda inst: inst["index"])
    return Reply("status", value={"jobs": list(jobs.values())})


def only_instance(status: Reply, index: int) -> Reply:
    """A one-job `status` reply cut down to instance `index`."""
    if status.response != "status":
        return status
    jobs = [{**job, "instances": [inst for inst in job["instances"] if inst["index"] == index]}
            for job in status.value["jobs"]]
    return Reply("status", value={"jobs": jobs})
