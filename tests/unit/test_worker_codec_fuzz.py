"""Random and mutated lines through the codec, in both directions: a message or a ProtocolError.

decode() is the one place a line from the other side is checked: whatever the line, it must
return a message or raise ProtocolError, never another exception (OverflowError from
Infinity, RecursionError from deep nesting, UnicodeError, KeyError...). A line it accepts
must encode back to a line that decodes to the same message.
"""

from __future__ import annotations

import json
from typing import Any, Callable, List, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remote import worker as protocol
from tests.unit.test_codec import EXAMPLES, fields_of

DECODERS: List[Callable[[str], Any]] = [protocol.decode, protocol.decode_to_worker, protocol.decode_to_controller]
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Raw JSON (or not quite JSON) that a lying or broken peer might put where a value belongs.
HOSTILE_VALUES = [
    "Infinity", "-Infinity", "NaN", "1e400", "-1e400", "-1", "-0", "0.5", "1E2", "1e-400",
    "18446744073709551615", "18446744073709551616", "-18446744073709551616", "1" * 4300, "1" * 5000,
    "true", "false", "null", '""', '"x"', '"\\ud800"', '"\\u0000"', '"' + "f" * 70 + '"', "[]", "{}",
    "[1,2,3]", '{"type":"STOP"}', "[" * 50_000 + "]" * 50_000, "[" * 50_000, '"' + "ab" * (1 << 19) + '"',
]
PLACEHOLDER = "\u2603placeholder\u2603"


def outcome(decoder: Callable[[str], Any], line: str) -> Optional[Any]:
    """The decoded message, or None when refused; any other exception fails the test."""
    try:
        return decoder(line)
    except protocol.ProtocolError:
        return None


def assert_decodes_or_refuses(line: str) -> None:
    for decoder in DECODERS:
        message = outcome(decoder, line)
        if message is not None:
            again = protocol.encode(message)
            assert protocol.decode(again) == message, (line[:200], again[:200])


@st.composite
def mutated_lines(draw: st.DrawFn) -> str:
    """A valid line of some message with one change to its fields or its text."""
    example = draw(st.sampled_from(EXAMPLES))
    fields = fields_of(example)
    keys = sorted(fields) + ["extra", "type"]
    kind = draw(st.sampled_from(["hostile", "drop", "retype", "text"]))
    key = draw(st.sampled_from(keys))
    if kind == "drop":
        fields.pop(key, None)
        return json.dumps(fields)
    if kind == "retype":
        fields[key] = draw(
            st.one_of(st.integers(-(1 << 70), 1 << 70), st.floats(), st.text(max_size=80), st.booleans(), st.none(),
                      st.lists(st.integers(), max_size=5), st.sampled_from(list(protocol.MESSAGE_CLASSES) + ["work", ""]))
        )
        return json.dumps(fields)
    if kind == "hostile":
        fields[key] = PLACEHOLDER
        return json.dumps(fields).replace(json.dumps(PLACEHOLDER), draw(st.sampled_from(HOSTILE_VALUES)))
    text = protocol.encode(example)
    position = draw(st.integers(0, len(text)))
    change = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
    char = draw(st.characters())
    if change == "insert":
        return text[:position] + char + text[position:]
    if change == "delete":
        return text[:position] + text[position + 1 :]
    if change == "replace":
        return text[:position] + char + text[position + 1 :]
    return text[:position]


@FUZZ
@given(line=mutated_lines())
def test_mutated_lines_decode_or_are_refused(line: str) -> None:
    assert_decodes_or_refuses(line)


@FUZZ
@given(line=st.one_of(st.text(max_size=400), st.binary(max_size=400).map(lambda raw: raw.decode("utf-8", "surrogateescape"))))
def test_random_text_decodes_or_is_refused(line: str) -> None:
    assert_decodes_or_refuses(line)


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["type", "unit", "start", "end", "block", "nonce_bytes", "difficulty", "above", "hashes", "units",
                         "final", "nonce", "hash", "seconds", "message", "traceback", "cores", "prefetch", "version"]),
        st.one_of(st.integers(-(1 << 66), 1 << 66), st.floats(), st.text(max_size=70), st.booleans(), st.none(),
                  st.lists(st.integers(-5, 1 << 65), max_size=4), st.sampled_from(list(protocol.MESSAGE_CLASSES))),
        max_size=10,
    )
)
def test_random_objects_decode_or_are_refused(fields: dict) -> None:
    """Objects with the protocol's own keys and any values: the checks, not the parser, decide."""
    assert_decodes_or_refuses(json.dumps(fields))


def test_every_hostile_value_in_every_field_is_refused_or_fits() -> None:
    for example in EXAMPLES:
        for key in fields_of(example):
            for value in HOSTILE_VALUES:
                fields = fields_of(example)
                fields[key] = PLACEHOLDER
                assert_decodes_or_refuses(json.dumps(fields).replace(json.dumps(PLACEHOLDER), value))
