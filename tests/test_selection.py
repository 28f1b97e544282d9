"""Job selectors and the one aggregated reply (taskmasterd/selection.py): pure."""
from __future__ import annotations

import pytest

from taskmasterd.reply import Reply
from taskmasterd.control.selection import Item, Target, aggregate, is_selector, merge_status, only_instance, parse, resolve

KNOWN = {"web": 2, "worker": 3, "db": 1, "broken": 0}


def test_a_plain_name_is_not_a_selector_and_every_selector_form_is() -> None:
    assert not is_selector("web") and not is_selector("a.b_c-1")
    assert all(is_selector(text) for text in ("web:1", "web db", "w*", "w?b", "[wd]*"))


def test_parse_names_instances_and_globs() -> None:
    assert parse("web:1 db w*") == [Item("web:1", "web", 1), Item("db", "db"), Item("w*", None)]


@pytest.mark.parametrize("text", ["web  db", " web", "web ", "web:", "web:x", "web:-1", "web:²", "../x:1", "a/b", ""])
def test_parse_refuses_what_is_not_a_selector(text: str) -> None:
    assert isinstance(parse(text), str)


def test_one_item_only_and_no_globs_where_asked() -> None:
    assert isinstance(parse("web db", many=False), str)
    assert isinstance(parse("w*", globs=False), str)
    assert parse("web:0", many=False, globs=False) == [Item("web:0", "web", 0)]


def test_resolve_in_order_each_once_a_whole_job_absorbing_its_instances() -> None:
    targets, problems = resolve(parse("web:1 db w* web:0"), KNOWN)
    assert targets == [Target("db"), Target("web"), Target("worker")] and problems == []
    targets, _ = resolve(parse("worker:2 worker:0 worker:2"), KNOWN)
    assert [t.label for t in targets] == ["worker:2", "worker:0"]


def test_resolve_names_what_selects_nothing_and_keeps_the_rest() -> None:
    targets, problems = resolve(parse("nope web:5 x* db"), KNOWN)
    assert targets == [Target("db")]
    assert problems == ['nope: job "nope" does not exist', 'web:5: job "web" has no instance 5 (it has 2: 0 to 1)',
                        "x*: no job matches this pattern"]
    assert resolve(parse("*"), KNOWN, unmatched={"broken"})[0] == [Target("db"), Target("web"), Target("worker")]
    assert resolve(parse("broken"), KNOWN, unmatched={"broken"})[0] == [Target("broken")]


def test_aggregate_success_redundant_fail() -> None:
    two = [Target("a"), Target("b", 1)]
    mixed = aggregate(two, [Reply("success"), Reply("redundant")], [])
    assert mixed.response == "success"
    assert mixed.value == {"targets": [{"target": "a", "response": "success"}, {"target": "b:1", "response": "redundant"}]}
    assert aggregate(two, [Reply("redundant")] * 2, []).response == "redundant"
    failed = aggregate(two, [Reply("fail", error="boom"), Reply("success")], ["x*: no job matches this pattern"])
    assert failed.response == "fail" and failed.error == "a: boom\nx*: no job matches this pattern"
    assert aggregate([], [], ["nope: gone"]).response == "fail"


def test_status_of_several_targets_merges_instances() -> None:
    def status(name: str, *indexes: int) -> Reply:
        return Reply("status", value={"jobs": [{"name": name, "instances": [{"index": i} for i in indexes]}]})

    merged = merge_status([status("web", 1), status("web", 0), status("db", 0)], [],
                          [Target("web", 1), Target("web", 0), Target("db")])
    assert merged.value == {"jobs": [{"name": "web", "instances": [{"index": 0}, {"index": 1}]},
                                     {"name": "db", "instances": [{"index": 0}]}]}
    assert merge_status([status("db", 0)], ["nope: gone"], [Target("db")]).response == "fail"
    assert only_instance(status("web", 0, 1), 1).value["jobs"][0]["instances"] == [{"index": 1}]


def test_a_huge_instance_number_is_a_problem_named_not_a_crash() -> None:
    problem = parse("web:" + "9" * 5000)
    assert isinstance(problem, str) and "instance" in problem


@pytest.mark.parametrize("selector", ["[" * 12000, "[a" * 6000, "*[" * 6000, " ".join(["w*[x"] * 3000)])
def test_a_hostile_selector_costs_little_whatever_its_size(selector: str) -> None:
    """fnmatch's translation is quadratic in the '[' that never close: 12 000 of them blocked
    every client for seconds. Patterns are bounded in length and number, and each is compiled once."""
    import gc
    import time

    known = {f"job{n}": 1 for n in range(1000)}
    gc.disable()  # a collection of the test runner's whole heap is not the selector's cost (once 177 ms)
    try:
        started = time.thread_time()  # this thread's CPU: not the runner's other threads, not the wait for a core
        items = parse(selector)
        if not isinstance(items, str):
            resolve(items, known)
        assert time.thread_time() - started < 0.1
    finally:
        gc.enable()
