"""The pure pieces of a run: its argv words, its output on the way to the logs, its time limit."""
from __future__ import annotations

import pytest

from taskmasterd.colonies.arguments import BadArguments, command_words
from taskmasterd.colonies.assignment import exec_time_left
from taskmasterd.colonies.output import LogBatch, Tail


def test_args_then_kwargs_as_sorted_options() -> None:
    assert command_words(None, None) == ()
    assert command_words(["a", 1, 2.5], {}) == ("a", "1", "2.5")
    assert command_words(["x"], {"b": "2", "a": 1, "list": ["p", 3], "dotted.name": "", "k:v-w_1": "="}) == (
        "x", "--a=1", "--b=2", "--dotted.name=", "--k:v-w_1==", "--list=p", "--list=3")
    assert command_words([], {"none": []}) == ()  # an empty list: the option zero times


@pytest.mark.parametrize("args, kwargs, why", [
    ("word", None, "args must be a list"),
    ([True], None, "neither a string nor a number"),
    ([None], None, "neither a string nor a number"),
    (None, ["a"], "kwargs must be an object"),
    (None, {"": "x"}, "cannot be an option name"),
    (None, {"-x": "x"}, "cannot be an option name"),
    (None, {"a b": "x"}, "cannot be an option name"),
    (None, {"flag": False}, "kwarg 'flag': false is neither a string nor a number"),
    (None, {"n": None}, "'n': null"),
    (None, {"o": {"k": 1}}, "'o'"),
    (None, {"nested": [["a"]]}, "'nested'"),
])
def test_what_one_word_cannot_carry_is_refused(args: object, kwargs: object, why: str) -> None:
    with pytest.raises(BadArguments, match=why):
        command_words(args, kwargs)


def test_log_batch_never_drops_and_says_when_to_pause() -> None:
    batch = LogBatch(batch=10, high_water=40)
    batch.feed(b"one\ntw")
    assert batch.peek(final=False) == b"one\n" and batch.peek(final=True) == b"one\ntw"
    batch.feed(b"o\nthr" + b"x" * 100)  # far past the high water: all of it is kept
    assert len(batch) == 111 and batch.backlogged and not batch.drained
    sent = b""
    while chunk := batch.peek(final=True):
        assert len(chunk) <= 10
        sent += chunk
        batch.consume(len(chunk))
    assert sent == b"one\ntwo\nthr" + b"x" * 100 and batch.drained and not batch.backlogged


def test_log_batch_cuts_long_lines_between_characters() -> None:
    batch = LogBatch(batch=8, high_water=100)
    text = "aaaaaaé€😀z".encode()
    batch.feed(text)
    chunks = []
    while chunk := batch.peek(final=True):
        chunks.append(chunk.decode())  # every chunk is whole UTF-8
        batch.consume(len(chunk))
    assert "".join(chunks).encode() == text and all(len(c.encode()) <= 8 for c in chunks)


def test_tail_keeps_the_last_bytes_and_counts_the_rest() -> None:
    tail = Tail(8)
    tail.feed(b"0123456789")
    tail.feed(b"ab")
    assert tail.text() == "[4 earlier bytes are in the logs]\n456789ab"
    assert Tail(8).text() == ""


def test_maxexectime_counts_from_the_assignment() -> None:
    assert exec_time_left({"maxexectime": -1}, 100.0, 150.0) is None
    assert exec_time_left({"maxexectime": 0}, 100.0, 100.0) is None
    assert exec_time_left({}, 100.0, 100.0) is None
    assert exec_time_left({"maxexectime": True}, 100.0, 100.0) is None
    # Assigned at 100 on the loop's clock: spawning at 103 leaves 7 of 10 s, not 10.
    assert exec_time_left({"maxexectime": 10}, 100.0, 103.0) == 7.0
    assert exec_time_left({"maxexectime": 10}, 100.0, 120.0) == 0.0
