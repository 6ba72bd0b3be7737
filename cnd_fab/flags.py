"""Flags as data: an Option says how its flag reads, and RawFlags reads raw values through them.

cnd_fab.options declares the tasks' table of Options; this module knows only the kinds of
value a flag may take and how each is checked, every failure being one InputError line that
names the flag. Nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, TypeVar, cast

from .errors import InputError

# The kinds of value a flag takes; each has one reader on RawFlags.
TEXT = "text"  # taken as typed, "" included
NAME = "name"  # stripped, and never empty
WHOLE = "whole"
SECONDS = "seconds"  # finite and above 0
PROBABILITY = "probability"  # 0.95 or 95%
USD = "usd"
CHOICE = "choice"
FLAG = "flag"  # a bare --flag (a True default would also give --no-flag)


@dataclass(frozen=True)
class Option:
    """One flag: its spelling, kind, default, help text and the tasks that take it."""

    name: str
    kind: str
    #: The value when the flag is not given; None means "decided later" (by the provider).
    default: object
    help: str
    tasks: Tuple[str, ...]
    low: int = 0
    high: Optional[int] = None
    choices: Tuple[str, ...] = ()

    @property
    def param(self) -> str:
        """The task's parameter name; Invoke turns it back into the flag's dashes."""
        return self.name.replace("-", "_")


def parse_whole(flag: str, raw: object, low: int, high: Optional[int] = None) -> int:
    """A whole number from `low` to `high`, or one InputError line naming --flag."""
    text = str(raw).strip()
    try:
        value = int(text, 10)
    except ValueError:
        raise InputError(f"--{flag} must be a whole number, not {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InputError(f"--{flag} must be {bounds}, not {value}")
    return value


def parse_seconds(flag: str, raw: object) -> float:
    """A finite number of seconds above 0."""
    text = str(raw).strip()
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--{flag} must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--{flag} must be a number of seconds above 0, not {text!r}")
    return value


def parse_confidence(raw: object, flag: str = "confidence") -> float:
    """A probability strictly between 0 and 1, written 0.95 or 95%."""
    text = str(raw).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"--{flag} must be a probability such as 0.95 or 95%, not {text!r}") from None
    if not 0 < value < 1:
        raise InputError(f"--{flag} must be above 0 and below 1 (or 100%), not {text!r}")
    return value


def parse_usd(flag: str, raw: object) -> float:
    """An amount in USD of 0 or more; a leading $ is allowed."""
    text = str(raw).strip()
    try:
        value = float(text.lstrip("$"))
    except ValueError:
        raise InputError(f"--{flag} must be an amount in USD, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"--{flag} must be an amount in USD of 0 or more, not {text!r}")
    return value


Given = TypeVar("Given")


def _given(value: Optional[Given], name: str) -> Given:
    assert value is not None, f"--{name} has no default"
    return value


class RawFlags:
    """One task's raw flag values, read one option at a time through its options.

    Keys are flag spellings or parameter names (`block-hex`, `block_hex`, `any_`); None, or a
    bare flag's default, means the flag was not given, and the table's default applies.
    """

    def __init__(self, task: str, options: Sequence[Option], raw: Mapping[str, object]) -> None:
        self.table = {option.name: option for option in options}
        self.given: Dict[str, object] = {}
        for key, value in raw.items():
            name = key.strip("_").replace("_", "-")
            if name not in self.table:
                raise TypeError(f"{task} takes no option {key!r}")
            # Invoke passes every bare flag, given or not: only a change from the default counts.
            if value is not None and not (self.table[name].kind == FLAG and value == self.table[name].default):
                self.given[name] = value

    def _raw(self, name: str, kind: str) -> Tuple[Option, Optional[str]]:
        option = self.table[name]
        assert option.kind == kind, f"--{name} is a {option.kind} option, not {kind}"
        value = self.given.get(name)
        return option, None if value is None else str(value)

    def text(self, name: str) -> Optional[str]:
        """The text as typed, or None when not given."""
        return self._raw(name, TEXT)[1]

    def name(self, name: str) -> Optional[str]:
        """Stripped text that must not be empty, or None when not given."""
        text = self._raw(name, NAME)[1]
        if text is None:
            return None
        if not text.strip():
            raise InputError(f"--{name} is empty")
        return text.strip()

    def flag(self, name: str) -> bool:
        """A bare --flag: True when given."""
        option = self.table[name]
        assert option.kind == FLAG
        return bool(self.given.get(name, option.default))

    def maybe_whole(self, name: str) -> Optional[int]:
        """A whole number in the option's bounds, or its default."""
        option, text = self._raw(name, WHOLE)
        if text is None:
            return cast(Optional[int], option.default)
        return parse_whole(name, text, option.low, option.high)

    def whole(self, name: str) -> int:
        """As maybe_whole, for options whose default is a number."""
        return _given(self.maybe_whole(name), name)

    def maybe_seconds(self, name: str) -> Optional[float]:
        """Seconds above 0, or the default."""
        option, text = self._raw(name, SECONDS)
        return cast(Optional[float], option.default) if text is None else parse_seconds(name, text)

    def seconds(self, name: str) -> float:
        """As maybe_seconds, for options whose default is a number."""
        return _given(self.maybe_seconds(name), name)

    def probability(self, name: str) -> Optional[float]:
        """A probability strictly between 0 and 1, or the default."""
        option, text = self._raw(name, PROBABILITY)
        return cast(Optional[float], option.default) if text is None else parse_confidence(text, name)

    def usd(self, name: str) -> Optional[float]:
        """An amount in USD, or the default."""
        option, text = self._raw(name, USD)
        return cast(Optional[float], option.default) if text is None else parse_usd(name, text)

    def maybe_choice(self, name: str) -> Optional[str]:
        """One of the option's choices, or its default."""
        option, text = self._raw(name, CHOICE)
        if text is None:
            return cast(Optional[str], option.default)
        choice = text.strip()
        if choice not in option.choices:
            raise InputError(f"--{name} must be one of {', '.join(option.choices)}, not {choice!r}")
        return choice

    def choice(self, name: str) -> str:
        """As maybe_choice, for options with a default choice."""
        value = self.maybe_choice(name)
        assert value is not None, f"--{name} has no default"
        return value
