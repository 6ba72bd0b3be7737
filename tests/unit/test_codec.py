"""The protocol codec in remote/worker.py: encode, and decode's strict checks on every field."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote import worker as protocol

# What a peer may leave out: PROGRESS.final (false), ERROR.traceback (empty), and the units
# of a WORK or DONE (1: one unit, as before grants).
OPTIONAL_FIELDS = {
    protocol.PROGRESS: ("final",), protocol.ERROR: ("traceback",), protocol.WORK: ("units",), protocol.DONE: ("units",),
}


HASH = "0000a77c6f4fa81ede0bb05ea58430a21d2bceeb80660c573e678a703d006afd"
LIMIT = 1 << 64

# One of each, with every defaulted field set away from its default, so a field the codec
# forgot to read would not round-trip.
EXAMPLES: List[protocol.Message] = [
    protocol.Hello(
        version=1, cores=8, kernel="native:sha-ni", kernel_note=None, mode="split", prefetch=3,
        pid=4242, pgid=4242, python="3.8.18", host="box",
    ),
    protocol.Hello(
        version=-7, cores=1, kernel="python-hashlib", kernel_note="no native kernel for riscv64", mode="whole",
        prefetch=65536, pid=1, pgid=1, python="3.12.1", host="h\u00e9te \"quoted\"\n",
    ),
    protocol.Progress(hashes=LIMIT, units=(0, 5, LIMIT), final=True),
    protocol.Progress(hashes=0, units=(), final=False),
    protocol.Found(unit=3, nonce=LIMIT - 1, hash=HASH),
    protocol.Done(unit=0, hashes=133051, seconds=0.125, nonce=133050, hash=HASH),
    protocol.Done(unit=LIMIT, hashes=0, seconds=0.0, nonce=None, hash=None),
    protocol.Error(message="RuntimeError: a core failed", traceback="Traceback (most recent call last):\n  ...\n"),
    protocol.Error(message="x", traceback=""),
    protocol.Leaving(action="terminate", time="2026-11-30T12:00:00Z"),
    protocol.Work(unit=0, start=0, end=LIMIT, block="", nonce_bytes=8, difficulty=256),
    protocol.Work(unit=9, start=5, end=1 << 32, block="434f4d534d30303130636c6f7564", nonce_bytes=4, difficulty=1),
    protocol.Cancel(above=LIMIT),
    protocol.Stop(),
]


def fields_of(message: protocol.Message) -> Dict[str, Any]:
    """The JSON object that encode writes for message."""
    return dict(json.loads(protocol.encode(message)))


def line(fields: Dict[str, Any]) -> str:
    return json.dumps(fields)


def refused(text: str) -> str:
    """The ProtocolError text decode raises for text."""
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode(text)
    return str(caught.value)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda message: message.TYPE)
def test_every_message_round_trips(message: protocol.Message) -> None:
    text = protocol.encode(message)
    assert text == json.dumps(json.loads(text), separators=(",", ":"))  # compact, one line
    assert json.loads(text)["type"] == message.TYPE
    decoded = protocol.decode(text)
    assert decoded == message and type(decoded) is type(message)


def test_every_type_has_an_example_and_a_class() -> None:
    assert {message.TYPE for message in EXAMPLES} == set(protocol.MESSAGE_CLASSES)
    assert set(protocol.MESSAGE_CLASSES) == {
        protocol.HELLO, protocol.PROGRESS, protocol.FOUND, protocol.DONE, protocol.ERROR, protocol.LEAVING,
        protocol.WORK, protocol.CANCEL, protocol.STOP,
    }


def test_type_is_a_class_constant_not_a_field() -> None:
    assert "TYPE" not in protocol.Work._fields and protocol.Work.TYPE == protocol.WORK
    assert protocol.Stop()._fields == ()


def test_unknown_extra_fields_are_ignored() -> None:
    fields = fields_of(protocol.Cancel(above=3))
    fields["from_the_future"] = {"anything": [1, 2.5, None]}
    assert protocol.decode(line(fields)) == protocol.Cancel(above=3)


def test_defaulted_fields_may_be_left_out() -> None:
    assert protocol.decode('{"type":"PROGRESS","hashes":1,"units":[2]}') == protocol.Progress(1, (2,), False)
    assert protocol.decode('{"type":"ERROR","message":"m"}') == protocol.Error("m", "")
    work = '{"type":"WORK","unit":3,"start":0,"end":8,"block":"00","nonce_bytes":4,"difficulty":1}'
    assert protocol.decode(work) == protocol.Work(3, 0, 8, "00", 4, 1, 1)


def test_a_grant_must_split_into_equal_units() -> None:
    grant = protocol.Work(4, 1024, 1024 + 3 * 256, "00", 4, 9, units=3)
    assert protocol.decode(protocol.encode(grant)) == grant and grant.unit_size == 256
    assert refused(protocol.encode(grant._replace(units=5))) == "WORK.units must split its 768 nonces into equal units, not 5"


def required_fields() -> List[Tuple[str, str]]:
    cases = []
    for message in EXAMPLES:
        for name in message._fields:
            if name not in OPTIONAL_FIELDS.get(message.TYPE, ()):
                cases.append((message.TYPE, name))
    return sorted(set(cases))


def example(kind: str) -> Dict[str, Any]:
    return fields_of(next(message for message in EXAMPLES if message.TYPE == kind))


@pytest.mark.parametrize("kind, name", required_fields())
def test_a_missing_field_is_named(kind: str, name: str) -> None:
    fields = example(kind)
    del fields[name]
    assert refused(line(fields)) == f"{kind}.{name} is missing"


# Every field with values it must refuse: each case is the JSON text put in that field.
WRONG: Dict[Tuple[str, str], List[str]] = {}
WHOLE_NUMBERS = [("PROGRESS", "hashes"), ("FOUND", "unit"), ("FOUND", "nonce"), ("DONE", "unit"), ("DONE", "hashes"),
                 ("WORK", "unit"), ("WORK", "start"), ("WORK", "end"), ("CANCEL", "above")]
for field in WHOLE_NUMBERS:
    WRONG[field] = ["true", "false", "null", "-1", str(LIMIT + 1), "1e999", "-1e999", "1.5", "2.0", '"7"', "[1]"]
WRONG[("FOUND", "nonce")].append(str(LIMIT))
WRONG[("DONE", "nonce")] = ["true", "-1", str(LIMIT), "1.0", '"1"']
for field in [("HELLO", "cores"), ("HELLO", "prefetch")]:
    WRONG[field] = ["0", "65537", "true", "1.0", "null"]
for field in [("HELLO", "pid"), ("HELLO", "pgid")]:
    WRONG[field] = ["-1", str(1 << 31), "false", '"1"']
WRONG[("HELLO", "version")] = ["true", "1.0", '"1"', "null"]
for field in [("HELLO", "kernel"), ("HELLO", "mode"), ("HELLO", "python"), ("HELLO", "host"), ("ERROR", "message")]:
    WRONG[field] = ["null", "5", "true", '["a"]', json.dumps("x" * (4096 + 1))]
WRONG[("HELLO", "kernel_note")] = ["5", "false", json.dumps("x" * (4096 + 1))]
WRONG[("ERROR", "traceback")] = ["null", "1", json.dumps("x" * (65536 + 1))]
WRONG[("PROGRESS", "units")] = ["null", "5", "[true]", "[-1]", f"[{LIMIT + 1}]", "[1.0]", '["1"]', "[[1]]", json.dumps([0] * 65537)]
WRONG[("PROGRESS", "final")] = ["1", "0", "null", '"true"']
WRONG[("DONE", "seconds")] = ["-0.5", "1e999", "-1e999", "true", "null", '"1"', str(10**400)]
for field in [("FOUND", "hash"), ("DONE", "hash")]:
    WRONG[field] = ['"' + HASH[:-1] + '"', '"' + HASH + '0"', '"' + HASH.upper() + '"', '"' + HASH[:-1] + 'g"', "5", "true"]
WRONG[("FOUND", "hash")].append("null")
WRONG[("WORK", "block")] = ['"abc"', '"ABCD"', '"zz"', '"00 ff"', "null", "5", json.dumps("00" * (1 << 19) + "00")]
WRONG[("WORK", "nonce_bytes")] = ["0", "2", "5", "7", "16", "true", "4.0", '"4"']
WRONG[("WORK", "difficulty")] = ["0", "257", "-1", "true", "8.0", "null"]
WRONG[("WORK", "units")] = ["0", "-1", "65537", "true", "2.0", "null", '"2"']
WRONG[("DONE", "units")] = ["0", "-1", "65537", "true", "2.0", "null", '"2"']
for field in [("LEAVING", "action"), ("LEAVING", "time")]:
    WRONG[field] = ["null", "5", "true", '["terminate"]', json.dumps("x" * 65)]

WRONG_CASES = [(kind, name, value) for (kind, name), values in WRONG.items() for value in values]


@pytest.mark.parametrize("kind, name, value", WRONG_CASES)
def test_a_wrong_value_is_refused_naming_its_field(kind: str, name: str, value: str) -> None:
    fields = example(kind)
    fields[name] = "@@"
    # Put the raw JSON text in, so values json.dumps would refuse (1e999) reach decode as sent.
    text = line(fields).replace('"@@"', value)
    message = refused(text)
    assert message.startswith(f"{kind}.{name} must be "), message
    assert len(message) < 300


def test_the_message_names_type_field_rule_and_value() -> None:
    text = '{"type":"PROGRESS","hashes":1e999,"units":[]}'
    assert refused(text) == "PROGRESS.hashes must be a whole number from 0 to 2^64, not inf"
    assert refused('{"type":"FOUND","unit":true,"nonce":1,"hash":"%s"}' % HASH) == (
        "FOUND.unit must be a whole number from 0 to 2^64, not true"
    )
    assert refused('{"type":"FOUND","unit":1,"nonce":%d,"hash":"%s"}' % (LIMIT, HASH)) == (
        "FOUND.nonce must be a whole number from 0 to 2^64-1, not 18446744073709551616"
    )
    assert refused('{"type":"DONE","unit":1,"hashes":1,"seconds":1,"nonce":1,"hash":"AB"}') == (
        "DONE.hash must be null or 64 lowercase hex digits, not 'AB'"
    )


@pytest.mark.parametrize("token", ["Infinity", "-Infinity", "NaN"])
@pytest.mark.parametrize("kind, name", [("PROGRESS", "hashes"), ("DONE", "seconds"), ("WORK", "start")])
def test_non_json_number_tokens_are_refused(token: str, kind: str, name: str) -> None:
    fields = example(kind)
    fields[name] = "@@"
    assert refused(line(fields).replace('"@@"', token)).startswith(f"line is not JSON ({token} is not a JSON number)")


def test_non_json_tokens_are_refused_even_in_ignored_fields() -> None:
    assert "not JSON" in refused('{"type":"STOP","extra":NaN}')


@pytest.mark.parametrize("text", ["", "not json", "{", '"STOP"', "5", "null", "[]", '["type","STOP"]', "[" * 100000])
def test_lines_that_are_not_json_objects_are_refused(text: str) -> None:
    assert refused(text).startswith(("line is not JSON", "line is not a JSON object"))


@pytest.mark.parametrize("kind", ['"HI"', '"stop"', "null", "5", '["STOP"]', None])
def test_an_unknown_or_missing_type_is_refused(kind: Any) -> None:
    text = '{"above":1}' if kind is None else '{"type":%s,"above":1}' % kind
    assert refused(text).startswith("unknown message type ")


def test_an_over_long_line_is_refused_before_parsing() -> None:
    text = '{"type":"STOP","pad":"' + "x" * protocol.MAX_LINE_CHARS + '"}'
    assert refused(text) == f"line of {len(text)} characters is longer than {protocol.MAX_LINE_CHARS}"


def test_the_largest_block_fits_in_a_line() -> None:
    work = protocol.Work(unit=0, start=0, end=1, block="ab" * (protocol.MAX_BLOCK_HEX_CHARS // 2), nonce_bytes=4, difficulty=1)
    assert protocol.decode(protocol.encode(work)) == work


@pytest.mark.parametrize("start, end", [(5, 5), (10, 5), (LIMIT, LIMIT)])
def test_work_must_start_below_its_end(start: int, end: int) -> None:
    fields = example("WORK")
    fields.update(start=start, end=end, nonce_bytes=8)
    assert refused(line(fields)).startswith("WORK.start must be below end")


def test_work_must_fit_its_nonce_width() -> None:
    fields = example("WORK")
    fields.update(start=0, end=(1 << 32) + 1, nonce_bytes=4)
    assert refused(line(fields)) == "WORK.end must be at most 2^32 for 4-byte nonces, not 4294967297"


@pytest.mark.parametrize("nonce, hash_", [(None, HASH), (5, None)])
def test_done_has_both_nonce_and_hash_or_neither(nonce: Any, hash_: Any) -> None:
    fields = example("DONE")
    fields.update(nonce=nonce, hash=hash_)
    assert refused(line(fields)).startswith("DONE.hash must be null exactly when DONE.nonce is")


def test_direction_is_checked_by_the_directed_decoders() -> None:
    command = protocol.encode(protocol.Stop())
    hello = protocol.encode(EXAMPLES[0])
    assert protocol.decode_to_worker(command) == protocol.Stop()
    assert protocol.decode_to_controller(hello) == EXAMPLES[0]
    with pytest.raises(protocol.ProtocolError, match="STOP is sent to a worker, never by one"):
        protocol.decode_to_controller(command)
    with pytest.raises(protocol.ProtocolError, match="HELLO is sent by a worker, never to one"):
        protocol.decode_to_worker(hello)


@pytest.mark.parametrize("fast", [True, False], ids=["c-encoder", "json-encoder"])
def test_encode_refuses_numbers_json_cannot_carry(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not fast:
        monkeypatch.setattr(protocol, "_C_ENCODE", None)
    for seconds in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            protocol.encode(protocol.Done(unit=0, hashes=0, seconds=seconds, nonce=None, hash=None))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda message: message.TYPE)
def test_the_fast_encoder_writes_what_json_writes(message: protocol.Message, monkeypatch: pytest.MonkeyPatch) -> None:
    assert protocol._C_ENCODE is not None  # CPython has it; other Pythons fall back
    fast = protocol.encode(message)
    monkeypatch.setattr(protocol, "_C_ENCODE", None)
    assert fast == protocol.encode(message) == json.dumps({"type": message.TYPE, **message._asdict()}, separators=(",", ":"))


def test_a_protocol_error_is_a_value_error() -> None:
    assert issubclass(protocol.ProtocolError, ValueError)


whole = st.integers(min_value=0, max_value=LIMIT)
works = st.builds(
    lambda unit, width, bounds, block, difficulty: protocol.Work(
        unit=unit, start=min(bounds), end=max(bounds), block=block.hex(), nonce_bytes=width, difficulty=difficulty
    ),
    whole,
    st.just(8),
    st.tuples(whole, whole).filter(lambda pair: pair[0] != pair[1]),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=256),
)
progresses = st.builds(protocol.Progress, whole, st.lists(whole, max_size=50).map(tuple), st.booleans())
dones = st.builds(
    lambda unit, hashes, seconds, golden: protocol.Done(unit, hashes, seconds, *golden),
    whole,
    whole,
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.one_of(st.just((None, None)), st.tuples(st.integers(0, LIMIT - 1), st.binary(min_size=32, max_size=32).map(bytes.hex))),
)
errors = st.builds(protocol.Error, st.text(max_size=4096), st.text(max_size=2000))


@given(st.one_of(works, progresses, dones, errors))
def test_decode_inverts_encode(message: protocol.Message) -> None:
    assert protocol.decode(protocol.encode(message)) == message
