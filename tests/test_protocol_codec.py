"""The pure wire codec: framing, request parsing, reply encoding and decoding."""
from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmasterd.control.protocol import (
    MAX_MESSAGE,
    FrameDecoder,
    InvalidRequest,
    decode_reply,
    encode_reply,
    encode_request,
    parse_request,
)
from taskmasterd.control.verbs import VERBS, Reply, Request


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def random_pieces(wire: bytes, data: st.DataObject, cuts: int) -> list[bytes]:
    """wire cut at up to `cuts` places that hypothesis chooses."""
    places = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=cuts)))
    return [wire[a:b] for a, b in zip([0, *places], [*places, len(wire)])]


def feed_all(chunks: list[bytes], limit: int = MAX_MESSAGE) -> tuple[list[bytes], FrameDecoder]:
    decoder = FrameDecoder(limit)
    bodies: list[bytes] = []
    for chunk in chunks:
        bodies += decoder.feed(chunk)
    return bodies, decoder


# --- framing -----------------------------------------------------------------------------------

def test_one_message_one_byte_at_a_time() -> None:
    wire = b'{"command":"status"};;'
    bodies, decoder = feed_all([wire[i:i + 1] for i in range(len(wire))])
    assert bodies == [b'{"command":"status"}']
    assert decoder.pending == 0


def test_three_messages_in_one_segment_and_whitespace_between() -> None:
    bodies, _ = feed_all([b'{"a":1};;\n{"b":2};; \r\n\t{ "c" : 3 }\n;;\n'])
    assert [json.loads(body) for body in bodies] == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_terminator_inside_a_string_is_not_a_terminator() -> None:
    wire = b'{"x":"a;;b","y":"\\";;"};;'
    for split in range(len(wire) + 1):
        bodies, _ = feed_all([wire[:split], wire[split:]])
        assert [json.loads(body) for body in bodies] == [{"x": "a;;b", "y": '";;'}], split


def test_escaped_backslash_before_closing_quote() -> None:
    wire = b'{"x":"\\\\"};;{"y":1};;'
    for split in range(len(wire) + 1):
        bodies, _ = feed_all([wire[:split], wire[split:]])
        assert [json.loads(body) for body in bodies] == [{"x": "\\"}, {"y": 1}], split


def test_terminator_split_between_segments() -> None:
    bodies, decoder = feed_all([b'{"a":1};', b';{"b":', b"2};", b";"])
    assert bodies == [b'{"a":1}', b'{"b":2}']


def test_garbage_is_a_body_of_its_own() -> None:
    bodies, _ = feed_all([b"not json;;;;{};;"])
    assert bodies == [b"not json", b"", b"{}"]


def test_oversize_reports_what_came_before_then_stops() -> None:
    decoder = FrameDecoder(limit=16)
    assert decoder.feed(b'{"a":1};;') == [b'{"a":1}']
    assert decoder.feed(b'{"b":"' + b"x" * 20) == []
    assert decoder.oversize
    assert decoder.feed(b'"};;{};;') == []


def test_oversize_complete_message_in_one_segment() -> None:
    decoder = FrameDecoder(limit=8)
    assert decoder.feed(b"{};;" + b" " * 9 + b"{};;{};;") == [b"{}"]
    assert decoder.oversize


def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(limit=10)
    assert decoder.feed(b'{"a":"12"};;') == [b'{"a":"12"}']
    assert not decoder.oversize


def test_unterminated_string_of_4_mib_in_segments_is_linear_and_oversize() -> None:
    decoder = FrameDecoder()
    decoder.feed(b'{"x":"')
    chunk = b"\\n" * 32768
    while not decoder.oversize:
        assert decoder.feed(chunk) == []
    assert decoder.pending == 0


messages = st.dictionaries(
    st.text(max_size=8), st.one_of(st.text(alphabet=st.sampled_from('ab;"\\\n é'), max_size=12),
                                   st.integers(), st.none()), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=6), st.data())
def test_any_split_yields_the_same_messages(docs: list[dict], data: st.DataObject) -> None:
    wire = b"".join(json.dumps(doc).encode() + b";;\n" for doc in docs)
    bodies, decoder = feed_all(random_pieces(wire, data, 10))
    assert [json.loads(body) for body in bodies] == docs
    assert not decoder.oversize


def reference_bodies(wire: bytes) -> list[bytes]:
    """The framing rule one byte at a time: a backslash pairs with a backslash or a quote after it,
    a quote not in such a pair opens or closes a string, and `;;` outside strings ends a body."""
    bodies, start, i, in_string = [], 0, 0, False
    while i < len(wire):
        byte = wire[i]
        if byte == 0x5C and wire[i + 1:i + 2] in (b"\\", b'"'):
            i += 2
            continue
        if byte == 0x22:
            in_string = not in_string
        elif byte == 0x3B and not in_string and wire[i + 1:i + 2] == b";":
            bodies.append(wire[start:i])
            start = i = i + 2
            continue
        i += 1
    return bodies


tricky_bytes = st.lists(st.sampled_from([b'"', b";", b"\\", b"a", b"{", b"\x01", b" ", b";;", b'\\"', b'"a"']),
                        max_size=60).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(tricky_bytes, st.data())
def test_any_bytes_split_anywhere_frame_as_the_byte_by_byte_rule(wire: bytes, data: st.DataObject) -> None:
    expected = reference_bodies(wire)
    bodies, decoder = feed_all(random_pieces(wire, data, 12))
    assert bodies == expected
    assert decoder.pending == len(wire) - sum(len(body) + 2 for body in expected)


def framing_seconds(wire: bytes, segment: int) -> tuple[float, int]:
    """CPU seconds of this thread (what the loop would lose; other processes, and threads an earlier
    test left in this one, do not count) and bodies."""
    decoder = FrameDecoder()
    started, bodies = time.thread_time(), 0
    for offset in range(0, len(wire), segment):
        bodies += len(decoder.feed(wire[offset:offset + segment]))
    return time.thread_time() - started, bodies


def repeated(pattern: bytes, size: int) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


# Each makes a scanner that works per byte, per quote or per `;` in Python (or one that rescans)
# slow: a string per 3 bytes, a `;` per 2, an escape per 2, strings full of candidate `;;`.
ADVERSARIAL = [b'";', b";x", b'"\\"', b"\\\\", b'"a"', b'";;"x', b'"', b"\\;", b'"\\;;\\""', b"\x01;", b"{[", b'"' + b";;" * 8 + b'"']


@pytest.mark.parametrize("pattern", ADVERSARIAL)
def test_4_mib_of_adversarial_bytes_are_framed_well_under_100_ms(pattern: bytes) -> None:
    wire = repeated(pattern, MAX_MESSAGE)
    for segment in (len(wire), 64 * 1024):
        elapsed = min(framing_seconds(wire, segment)[0] for _ in range(3))
        assert elapsed < 0.1, f"{pattern!r} in {segment}-byte segments: {elapsed * 1000:.0f} ms"


@pytest.mark.parametrize("pattern", [b";;", b"{};;", b'";;";;', b'"\\";;";;', b'"' + b";;" * 8])
def test_many_tiny_messages_cost_a_bounded_time_each(pattern: bytes) -> None:
    elapsed, bodies = framing_seconds(repeated(pattern, 1024 * 1024), 64 * 1024)
    assert bodies >= 1024 * 1024 // len(pattern) - 1
    assert elapsed < 0.1 + bodies * 10e-6, f"{pattern!r}: {elapsed * 1e6 / bodies:.1f} us per message"


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=8), st.sampled_from([4096, 65536, 1 << 20]))
def test_any_repeated_pattern_is_framed_in_linear_time(pattern: bytes, segment: int) -> None:
    wire = repeated(pattern, 1024 * 1024)
    elapsed, bodies = min(framing_seconds(wire, segment) for _ in range(3))  # the best of 3: no GC pass
    assert elapsed < 0.05 + bodies * 10e-6, f"{pattern!r}: {elapsed * 1000:.0f} ms for {bodies} messages"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_decoder_never_raises_and_never_exceeds_its_limit(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(limit=100)
    for chunk in chunks:
        for body in decoder.feed(chunk):
            assert len(body) <= 100
            parse_request(body)  # answers, never raises
        assert decoder.pending <= 100 + len(chunk)


# --- requests ----------------------------------------------------------------------------------

def test_request_with_job_data_and_nowait() -> None:
    body = json.dumps({"command": "push", "job": b64("web"), "data": b64(b"{}"), "nowait": True,
                       "extra": [1]}).encode()
    assert parse_request(body) == ("push", Request(job="web", data=b"{}", nowait=True))


def test_cmd_is_a_synonym_and_may_agree() -> None:
    assert parse_request(b'{"cmd":"list"}') == ("list", Request())
    assert parse_request(b'{"cmd":"list","command":"list"}') == ("list", Request())


@pytest.mark.parametrize("body, reason", [
    (b'{"cmd":"list","command":"status"}', "disagree"),
    (b"[1,2]", "JSON object"),
    (b'"status"', "JSON object"),
    (b"{", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'{"command":"status"', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"{}", 'no "command"'),
    (b'{"command":"frobnicate"}', "unknown command"),
    (b'{"command":"STATUS"}', "unknown command"),
    (b'{"command":7}', "unknown command"),
    (b'{"command":"status","job":"bm9wZQ"}', "base64"),
    (b'{"command":"status","job":"bm9w ZQ=="}', "base64"),
    (b'{"command":"status","job":"bm9-ZQ=="}', "base64"),
    (b'{"command":"status","job":"bm9wZQ==="}', "base64"),
    (b'{"command":"status","job":"d2Vi="}', "base64"),
    (b'{"command":"status","job":"d2Vi===="}', "base64"),
    (b'{"command":"status","job":5}', "base64"),
    (b'{"command":"push","job":"d2Vi","data":"***"}', "base64"),
    (b'{"command":"status","job":"/w=="}', "UTF-8"),
    (b'{"command":"stop","job":"d2Vi","nowait":"yes"}', "nowait"),
    (b'{"command":"start","job":"d2Vi","deps":1}', "deps"),
    (b'{"command":"restart-job","job":"d2Vi","rolling":"yes"}', 'field "rolling" must be true or false'),
    (b'{"command":"status","inline":1}', 'field "inline" must be true or false'),
])
def test_invalid_requests(body: bytes, reason: str) -> None:
    answer = parse_request(body)
    assert isinstance(answer, InvalidRequest)
    assert reason in answer.reason


def test_every_verb_parses() -> None:
    for verb in VERBS:
        assert parse_request(json.dumps({"command": verb}).encode()) == (verb, Request())


def test_names_are_passed_through_for_dispatch_to_judge() -> None:
    # The codec only decodes; `verbs.dispatch` answers `fail` for names like these.
    assert parse_request(b'{"command":"stop","job":"Li4vZXRjL3Bhc3N3ZA=="}') == (
        "stop", Request(job="../etc/passwd"))
    assert parse_request(b'{"command":"stop","job":""}') == ("stop", Request(job=""))


# --- replies -----------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, wire", [
    (Reply("success"), {"response": "success"}),
    (Reply("redundant"), {"response": "redundant"}),
    (Reply("fail", error="job \"nope\" does not exist"),
     {"response": "fail", "error": b64('job "nope" does not exist')}),
    (Reply("invalid"), {"response": "invalid"}),
    (Reply("invalid", error="why"), {"response": "invalid", "error": b64("why")}),
    (Reply("status", value={"jobs": []}), {"response": "status", "data": b64('{"jobs":[]}')}),
    (Reply("list", value={"jobs": [{"name": "a"}]}),
     {"response": "list", "list": b64('{"jobs":[{"name":"a"}]}'), "data": b64('{"jobs":[{"name":"a"}]}')}),
    (Reply("file", job="web", data=b"\x00\xff"), {"response": "file", "job": b64("web"), "data": b64(b"\x00\xff")}),
])
def test_reply_encoding(reply: Reply, wire: dict) -> None:
    encoded = encode_reply(reply)
    assert encoded.endswith(b";;") and b" " not in encoded
    assert json.loads(encoded[:-2]) == wire
    decoded = decode_reply(encoded[:-2])
    assert decoded.response == reply.response
    assert (decoded.error, decoded.value, decoded.data, decoded.job) == (reply.error, reply.value, reply.data, reply.job)


def test_the_contract_examples_byte_for_byte() -> None:
    assert encode_request("kill", "nginx") == b'{"command":"kill","job":"bmdpbng="};;'
    assert encode_reply(Reply("success")) == b'{"response":"success"};;'
    assert encode_request("start", "nope") == b'{"command":"start","job":"bm9wZQ=="};;'
    assert encode_reply(Reply("fail", error='job "nope" does not exist')) == (
        b'{"response":"fail","error":"am9iICJub3BlIiBkb2VzIG5vdCBleGlzdA=="};;')


def test_request_encoding_round_trips() -> None:
    wire = encode_request("push", "web", b"\x00{}", nowait=True)
    assert parse_request(wire[:-2]) == ("push", Request(job="web", data=b"\x00{}", nowait=True))
    wire = encode_request("start", "api", deps=True)
    assert wire == b'{"command":"start","job":"YXBp","deps":true};;'  # docs/protocol.md, bytes and all
    assert parse_request(wire[:-2]) == ("start", Request(job="api", deps=True))
    wire = encode_request("restart-job", "web", rolling=True)
    assert wire == b'{"command":"restart-job","job":"d2Vi","rolling":true};;'  # docs/protocol.md, bytes and all
    assert parse_request(wire[:-2]) == ("restart-job", Request(job="web", rolling=True))


@pytest.mark.parametrize("reply, wire", [
    (Reply("status", value={"jobs": [{"name": "a"}]}), b'{"response":"status","data":{"jobs":[{"name":"a"}]}};;'),
    (Reply("events", value={"events": []}), b'{"response":"events","data":{"events":[]}};;'),
    (Reply("list", value={"jobs": []}), b'{"response":"list","list":"eyJqb2JzIjpbXX0=","data":{"jobs":[]}};;'),
    (Reply("success", value={"results": []}), b'{"response":"success","data":{"results":[]}};;'),
    (Reply("fail", error="no", value={"results": []}), b'{"response":"fail","error":"bm8=","data":{"results":[]}};;'),
    (Reply("file", job="web", data=b"x"), b'{"response":"file","job":"d2Vi","data":"eA=="};;'),  # bytes stay base64
    (Reply("success"), b'{"response":"success"};;'),
])
def test_an_inline_reply_carries_its_document_as_json_and_decodes_the_same(reply: Reply, wire: bytes) -> None:
    """docs/protocol.md, bytes and all: only a request with "inline":true gets these."""
    assert encode_reply(reply, inline=True) == wire
    decoded = decode_reply(wire[:-2])
    assert (decoded.response, decoded.error, decoded.value, decoded.data, decoded.job) == (
        reply.response, reply.error, reply.value, reply.data, reply.job)


def test_inline_is_asked_only_by_our_client_and_parsed_as_a_flag() -> None:
    wire = encode_request("status", inline=True)
    assert wire == b'{"command":"status","inline":true};;'  # docs/protocol.md, bytes and all
    assert parse_request(wire[:-2]) == ("status", Request(inline=True))
    assert parse_request(encode_request("status")[:-2]) == ("status", Request())  # a seed client's: base64


@pytest.mark.parametrize("response", ["status", "events", "list", "success", "fail"])
def test_an_inline_document_never_holds_the_terminator(response: str) -> None:
    """`;` inside a string is written `\\u003b` where two would meet: the frame ends at its `;;`."""
    value = {"reason": "a;;b;;;c;", "cmd": [";;", ";"]}
    wire = encode_reply(Reply(response, error="x" if response == "fail" else None, value=value), inline=True)
    assert wire.index(b";;") == len(wire) - 2
    assert decode_reply(wire[:-2]).value == value
