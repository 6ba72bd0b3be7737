"""Turns the raw flag values of `search` into a checked SearchRequest, or one InputError.

Every numeric flag arrives as text: Invoke would turn `--difficulty abc` into a bare
ValueError traceback if the task declared an int default, so the tasks take strings and
the checks live here, where they give one clear line.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from typing import Optional, Tuple

from . import inventory as inventory_file
from .errors import InputError
from .providers import Provider, ProviderOptions, provider_class
from .spec import (
    DEFAULT_BLOCK_TEXT,
    MIN_UNIT_NONCES,
    NONCE_WIDTHS,
    Problem,
    UnitSpace,
    default_units,
)

DEFAULT_DIFFICULTY = 6
DEFAULT_PROVIDER = "local"
KERNEL_CHOICES = ("auto", "native", "python")


@dataclass(frozen=True)
class SearchRequest:
    """A search as the user asked for it, every value checked."""

    problem: Problem
    space: UnitSpace
    count: int
    provider: Provider
    timeout: Optional[float]
    first_found_wins: bool
    json_output: bool
    confirmed: bool = False
    max_cost: Optional[float] = None
    kernel: str = "auto"
    #: --within T --confidence L: the planner picks `count` (see cnd_fab.model).
    within: Optional[float] = None
    confidence: Optional[float] = None
    best_effort: bool = False


def parse_whole(flag: str, raw: object, low: int, high: Optional[int] = None) -> int:
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
    text = str(raw).strip()
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--{flag} must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--{flag} must be a number of seconds above 0, not {text!r}")
    return value


def parse_block(text: Optional[str], hex_text: Optional[str]) -> bytes:
    if text is not None and hex_text is not None:
        raise InputError("give --block or --block-hex, not both")
    if hex_text is not None:
        cleaned = hex_text.strip()
        if len(cleaned) % 2:
            raise InputError(f"--block-hex has an odd number of hex digits ({len(cleaned)})")
        try:
            block = binascii.unhexlify(cleaned)
        except (binascii.Error, ValueError):
            raise InputError(f"--block-hex is not hex: {hex_text[:40]!r}") from None
    else:
        block = (DEFAULT_BLOCK_TEXT if text is None else text).encode("utf-8")
    if not block:
        raise InputError("the block is empty; give a non-empty --block or --block-hex")
    return block


def parse_kernel(raw: Optional[str]) -> str:
    choice = (raw or "auto").strip()
    if choice not in KERNEL_CHOICES:
        raise InputError(f"--kernel must be one of {', '.join(KERNEL_CHOICES)}, not {choice!r}")
    return choice


def parse_confidence(raw: str) -> float:
    text = str(raw).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"--confidence must be a probability such as 0.95 or 95%, not {text!r}") from None
    if not 0 < value < 1:
        raise InputError(f"--confidence must be above 0 and below 1 (or 100%), not {text!r}")
    return value


def parse_plan(
    within: Optional[str], confidence: Optional[str], count: Optional[int], best_effort: bool
) -> Tuple[Optional[float], Optional[float]]:
    """--within and --confidence come together, and instead of --count."""
    if within is None and confidence is None:
        if best_effort:
            raise InputError("--best-effort goes with --within and --confidence")
        return None, None
    if within is None or confidence is None:
        raise InputError("give --within SECONDS and --confidence L together")
    if count is not None:
        raise InputError("give --count, or --within with --confidence to have the fleet sized for you, not both")
    return parse_seconds("within", within), parse_confidence(confidence)


def parse_units(raw: Optional[str], nonce_bytes: int) -> int:
    space = 1 << (8 * nonce_bytes)
    most = space // MIN_UNIT_NONCES
    if raw is None:
        return default_units(nonce_bytes)
    units = parse_whole("units", raw, 1)
    if units & (units - 1):
        raise InputError(
            f"--units {units} does not split the 2^{8 * nonce_bytes} space into equal units; "
            "use a power of two such as 1024"
        )
    if units > most:
        raise InputError(
            f"--units {units} makes units smaller than {MIN_UNIT_NONCES} nonces; "
            f"use at most {most} units for {nonce_bytes}-byte nonces"
        )
    return units


def parse_search(
    *,
    difficulty: Optional[str],
    count: Optional[str],
    block: Optional[str],
    block_hex: Optional[str],
    nonce_bytes: Optional[str],
    units: Optional[str],
    provider: Optional[str],
    timeout: Optional[str],
    first_found_wins: bool,
    json_output: bool,
    inventory: Optional[str] = None,
    accept_new_host_key: bool = False,
    image: Optional[str] = None,
    region: Optional[str] = None,
    instance_type: Optional[str] = None,
    ami: Optional[str] = None,
    ssh_cidr: Optional[str] = None,
    confirmed: bool = False,
    max_cost: Optional[str] = None,
    kernel: Optional[str] = None,
    within: Optional[str] = None,
    confidence: Optional[str] = None,
    best_effort: bool = False,
) -> SearchRequest:
    parsed_difficulty = parse_whole(
        "difficulty", DEFAULT_DIFFICULTY if difficulty is None else difficulty, 1, 256
    )
    width = parse_whole("nonce-bytes", 4 if nonce_bytes is None else nonce_bytes, 0)
    if width not in NONCE_WIDTHS:
        raise InputError(f"--nonce-bytes must be 4 or 8, not {width}")
    problem = Problem(parse_block(block, block_hex), width, parsed_difficulty)
    space = UnitSpace(width, parse_units(units, width))
    requested_hosts = None if count is None else parse_whole("count", count, 1)
    planned_within, planned_confidence = parse_plan(within, confidence, requested_hosts, best_effort)
    chosen_class = provider_class((provider or DEFAULT_PROVIDER).strip())
    deadline = None if timeout is None else parse_seconds("timeout", timeout)
    kernel_choice = parse_kernel(kernel)
    texts = {"image": image, "region": region, "instance-type": instance_type, "ami": ami, "ssh-cidr": ssh_cidr}
    for flag, value in texts.items():
        if value is not None and not value.strip():
            raise InputError(f"--{flag} is empty")
    cost_cap = None
    if max_cost is not None:
        try:
            cost_cap = float(str(max_cost).strip().lstrip("$"))
        except ValueError:
            raise InputError(f"--max-cost must be an amount in USD, not {max_cost!r}") from None
        if not math.isfinite(cost_cap) or cost_cap < 0:
            raise InputError(f"--max-cost must be an amount in USD of 0 or more, not {max_cost!r}")
    options = ProviderOptions(
        inventory=inventory_file.load(inventory) if inventory else inventory_file.Inventory(),
        accept_new_host_key=accept_new_host_key,
        image=image.strip() if image else None,
        region=region.strip() if region else None,
        instance_type=instance_type.strip() if instance_type else None,
        ami=ami.strip() if ami else None,
        ssh_cidr=ssh_cidr.strip() if ssh_cidr else None,
        timeout=deadline,
    )
    chosen = chosen_class(options)
    hosts = chosen.default_count() if requested_hosts is None else requested_hosts
    # The provider's own checks (count limits, image present, keys readable) also come
    # before anything is launched.
    chosen.check(hosts)
    return SearchRequest(
        problem=problem,
        space=space,
        count=hosts,
        provider=chosen,
        timeout=deadline,
        first_found_wins=first_found_wins,
        json_output=json_output,
        confirmed=confirmed,
        max_cost=cost_cap,
        kernel=kernel_choice,
        within=planned_within,
        confidence=planned_confidence,
        best_effort=best_effort,
    )
