"""Every task's flags, declared once, and the pure parsers that turn them into requests.

OPTIONS is the one table: each Option has its flag spelling, kind, default, help text and the
tasks that take it. cnd_fab.tasks builds the Invoke tasks' signatures and help from it, and
parse_search, parse_calibrate and parse_bench read it to turn raw flag values into a frozen
request, or one InputError line.

Parsing is pure: text in, a frozen request (cnd_fab.request) out. Nothing here reads a file,
makes a provider or opens a socket; cnd_fab.checks.open_provider does that afterwards, still
before anything is launched. The kinds of flag and their checks are in cnd_fab.flags. Value flags reach the parsers as text (their Invoke default is None), because
Invoke's own int parsing would turn `--difficulty abc` into a ValueError traceback.
"""

from __future__ import annotations

import binascii
from typing import Iterable, Mapping, Optional, Tuple

from .errors import InputError
from .flags import CHOICE, FLAG, NAME, PROBABILITY, SECONDS, TEXT, USD, WHOLE, Option, RawFlags, parse_confidence
from .providers import COUNT_MEANINGS, PROVIDER_NAMES
from .request import BenchRequest, CalibrateRequest, ProviderRequest, SearchRequest
from .spec import DEFAULT_BLOCK_TEXT, MIN_UNIT_NONCES, NONCE_WIDTHS, Problem, UnitSpace, default_units

# The requests and parse_confidence (for `fab stats --level`) are re-exported: callers need
# only this module to go from flags to a request.
__all__ = [
    "OPTIONS", "BenchRequest", "CalibrateRequest", "ProviderRequest", "SearchRequest",
    "options_for", "parse_bench", "parse_calibrate", "parse_confidence", "parse_search",
]

DEFAULT_DIFFICULTY = 6
#: `fab bench --simulate`: what each simulated host hashes, about an 8-vCPU SHA-NI instance.
DEFAULT_HOST_RATE = 200e6
DEFAULT_PROVIDER = "local"
KERNEL_CHOICES = ("auto", "native", "python")
SEARCH, CALIBRATE, BENCH = "search", "calibrate", "bench"
TEARDOWN, STATS, STATUS = "teardown", "stats", "status"
#: The largest block a WORK line carries (the worker codec's limit, in bytes); the worker
#: module itself is not imported here, so that parsing stays light.
MAX_BLOCK_BYTES = 512 << 10
#: The flags that state the problem: a resumed run takes them from its checkpoint instead.
PROBLEM_FLAGS = ("difficulty", "block", "block-hex", "nonce-bytes", "units", "any")

#: Search's provider settings given as text; each flag is its ProviderRequest field, dashes as '_'.
PROVIDER_TEXT_FLAGS = ("image", "region", "instance-type", "ami", "ssh-cidr")

_ANY_HOST = "; ".join(f"{name}: {meaning}" for name, meaning in sorted(COUNT_MEANINGS.items()))

# Declaration order is Invoke's order for picking short flags (-d, -c, ...): keep it.
OPTIONS: Tuple[Option, ...] = (
    Option("difficulty", WHOLE, DEFAULT_DIFFICULTY,
           f"leading zero bits a golden hash needs, 1..256 (default {DEFAULT_DIFFICULTY})",
           (SEARCH,), low=1, high=256),
    Option("count", WHOLE, None, f"number of hosts (default 1; static: every inventory host); {_ANY_HOST}",
           (SEARCH,), low=1),
    Option("count", WHOLE, 1, "hosts to launch for the measurement, 1..64 (default 1)",
           (CALIBRATE, BENCH), low=1, high=64),
    Option("block", TEXT, None, f"the block as UTF-8 text (default {DEFAULT_BLOCK_TEXT})", (SEARCH,)),
    Option("block-hex", TEXT, None, "the block as hex bytes, NUL included; instead of --block", (SEARCH,)),
    Option("nonce-bytes", WHOLE, 4, "nonce width in bytes: 4 (default, 2^32 nonces) or 8 (2^64)", (SEARCH,)),
    Option("units", WHOLE, None, "units the space is cut into, a power of two (default 1024; 2^42 for 8-byte nonces)",
           (SEARCH,), low=1),
    Option("provider", CHOICE, DEFAULT_PROVIDER,
           f"where hosts come from: {', '.join(PROVIDER_NAMES)} (default {DEFAULT_PROVIDER})",
           (SEARCH, CALIBRATE), choices=PROVIDER_NAMES),
    Option("provider", CHOICE, None, "measure a fleet of this provider against the local one (docker, static)",
           (BENCH,), choices=PROVIDER_NAMES),
    Option("timeout", SECONDS, None, "stop everything after this many seconds and report how far it got", (SEARCH,)),
    Option("seconds", SECONDS, 15.0, "how long the measuring search runs (default 15)", (CALIBRATE,)),
    Option("seconds", SECONDS, 5.0, "seconds per measurement (default 5; fleet searches run 4 times as long)",
           (BENCH,)),
    Option("any", FLAG, False, "stop at the first golden nonce any host finds, which may not be the lowest",
           (SEARCH,)),
    Option("json", FLAG, False, "print the result as one JSON object on stdout", (SEARCH,)),
    Option("inventory", NAME, None, "YAML file of static hosts and provider settings (see inventory.example.yaml)",
           (SEARCH, CALIBRATE, BENCH)),
    Option("accept-new-host-key", FLAG, False,
           "trust unknown static host keys on first use and save them (unsafe; says so)", (SEARCH,)),
    Option("image", NAME, None, "docker provider: the SSH host image (default cnd-fab-sshd:latest)", (SEARCH,)),
    Option("region", NAME, None, "ec2: the AWS region (default: ec2.region, then AWS_DEFAULT_REGION)",
           (SEARCH, CALIBRATE)),
    Option("instance-type", NAME, None, "ec2: the instance type (default c7a.large)", (SEARCH, CALIBRATE)),
    Option("ami", NAME, None, "ec2: the AMI (default: the current Ubuntu LTS, from its public SSM parameter)",
           (SEARCH,)),
    Option("ssh-cidr", NAME, None, "ec2: who may reach port 22 (default: this machine's public address /32)",
           (SEARCH,)),
    Option("yes", FLAG, False, "ec2: confirm the paid launch without being asked",
           (SEARCH, CALIBRATE)),
    Option("max-cost", USD, None, "ec2: refuse to launch if the estimate is above this many USD", (SEARCH,)),
    Option("kernel", CHOICE, "auto", "auto (native where it runs, else Python), native (required) or python",
           (SEARCH, CALIBRATE), choices=KERNEL_CHOICES),
    Option("kernel", CHOICE, "auto", "auto (measure the native kernel too; the default) or python",
           (BENCH,), choices=("auto", "python")),
    Option("within", SECONDS, None, "size the fleet to settle the answer within this many seconds (with --confidence)",
           (SEARCH,)),
    Option("confidence", PROBABILITY, None,
           "the probability, such as 0.95 or 95%, of settling it --within the time", (SEARCH,)),
    Option("best-effort", FLAG, False, "with --within: run the best fleet even when it cannot reach the confidence",
           (SEARCH,)),
    Option("resume", NAME, None,
           "continue the stopped run RUN_ID on fresh hosts: its problem, and none of its settled units again",
           (SEARCH,)),
    # Added after the first release: declared last, so that no earlier flag's short form moves.
    Option("instance-types", NAME, None,
           "ec2: several types of one architecture, comma-separated, such as c7a.large,c6a.large,m7a.large, "
           "launched through an EC2 Fleet (lowest price on-demand; deepest capacity with --spot)", (SEARCH,)),
    Option("spot", FLAG, False,
           "ec2: spot instances through an EC2 Fleet, typically 60-90% cheaper; a reclaimed host's units are reissued",
           (SEARCH,)),
    Option("min-count", WHOLE, None,
           "ec2: go on if at least this many instances launch (default: all of --count; with --within, the plan's)",
           (SEARCH,), low=1),
    Option("startup", FLAG, False,
           "only time `cnd-fab --help` and a D=8 local search as whole processes (5 runs each)", (BENCH,)),
    Option("checkpoints", FLAG, False,
           "only measure what checkpoints cost a local search and what resuming a killed D=30 search saves",
           (BENCH,)),
    Option("simulate", WHOLE, None,
           "only run the real controller against this many simulated hosts (and a tenth and ten times as many)",
           (BENCH,), low=1, high=100_000),
    Option("host-rate", SECONDS, None, "with --simulate: nonces a second each simulated host hashes (default 200e6)",
           (BENCH,)),
    Option("run", NAME, None, "tear down only this run id, even if it looks alive (another user's, say)",
           (TEARDOWN,)),
    Option("all", FLAG, False,
           "every run found by journal, label or tag, even one that looks alive (asked on a terminal)", (TEARDOWN,)),
    Option("expired", FLAG, False,
           "only runs no live controller keeps: EC2 alive-until passed, containers whose controller is gone",
           (TEARDOWN,)),
    Option("dry-run", FLAG, False, "say what would be removed, remove nothing", (TEARDOWN,)),
    Option("inventory", NAME, None, "the inventory of static hosts, to clean their run directories", (TEARDOWN,)),
    Option("region", NAME, None, "also search this AWS region for tagged instances", (TEARDOWN, STATUS)),
    Option("level", TEXT, None, "confidence level of the intervals (default 0.95)", (STATS,)),
    Option("plot", NAME, None, "also draw time and efficiency against the number of hosts into this PNG file",
           (STATS,)),
    Option("joblog", NAME, None, "print run RUN_ID's per-unit log as CSV on stdout", (STATS,)),
    Option("timeline", NAME, None, "draw run RUN_ID's hosts over time into the --plot PNG file", (STATS,)),
)


def options_for(task: str) -> Tuple[Option, ...]:
    """The options `task` takes, in declaration order."""
    return tuple(option for option in OPTIONS if task in option.tasks)


def parse_block(text: Optional[str], hex_text: Optional[str]) -> bytes:
    """The block from --block (UTF-8 text) or --block-hex, never both, never empty."""
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
    if len(block) > MAX_BLOCK_BYTES:
        raise InputError(f"the block is {len(block):,} bytes; at most {MAX_BLOCK_BYTES:,} (512 KiB) are accepted")
    return block


def parse_units(units: Optional[int], nonce_bytes: int) -> int:
    """--units cuts the space into equal units of at least MIN_UNIT_NONCES nonces."""
    if units is None:
        return default_units(nonce_bytes)
    if units & (units - 1):
        raise InputError(
            f"--units {units} does not split the 2^{8 * nonce_bytes} space into equal units; "
            "use a power of two such as 1024"
        )
    most = (1 << (8 * nonce_bytes)) // MIN_UNIT_NONCES
    if units > most:
        raise InputError(
            f"--units {units} makes units smaller than {MIN_UNIT_NONCES} nonces; "
            f"use at most {most} units for {nonce_bytes}-byte nonces"
        )
    return units


#: The search flags only the ec2 provider takes (the others would silently ignore them).
EC2_ONLY_FLAGS = ("instance-types", "spot", "min-count")


def check_ec2_only(provider: str, given: Iterable[str]) -> None:
    """Refuse an EC2 capacity flag given with another provider, rather than ignore it."""
    for name in EC2_ONLY_FLAGS:
        if name in given and provider != "ec2":
            raise InputError(f"--{name} is for --provider ec2, not {provider}")


def parse_instance_types(types_text: Optional[str], single: Optional[str]) -> Optional[Tuple[str, ...]]:
    """--instance-types as a tuple of names, in the order given; None when not given."""
    if types_text is None:
        return None
    if single is not None:
        raise InputError("give --instance-type or --instance-types, not both")
    types = tuple(name.strip() for name in types_text.split(","))
    if not all(types):
        raise InputError(f"--instance-types {types_text!r} has an empty name; give names such as c7a.large,c6a.large")
    return types


def check_plan(within: Optional[float], confidence: Optional[float], count: Optional[int], best_effort: bool) -> None:
    """--within and --confidence come together, and instead of --count."""
    if within is None and confidence is None:
        if best_effort:
            raise InputError("--best-effort goes with --within and --confidence")
        return
    if within is None or confidence is None:
        raise InputError("give --within SECONDS and --confidence L together")
    if count is not None:
        raise InputError("give --count, or --within with --confidence to have the fleet sized for you, not both")


def parse_search(raw: Mapping[str, object]) -> SearchRequest:
    """The raw flags of `search` (see OPTIONS) as a checked SearchRequest; no I/O."""
    flags = RawFlags(SEARCH, options_for(SEARCH), raw)
    difficulty = flags.whole("difficulty")
    count = flags.maybe_whole("count")
    block = parse_block(flags.text("block"), flags.text("block-hex"))
    width = flags.whole("nonce-bytes")
    if width not in NONCE_WIDTHS:
        raise InputError(f"--nonce-bytes must be 4 or 8, not {width}")
    space = UnitSpace(width, parse_units(flags.maybe_whole("units"), width))
    provider = flags.choice("provider")
    timeout = flags.maybe_seconds("timeout")
    inventory = flags.name("inventory")
    within, confidence = flags.maybe_seconds("within"), flags.probability("confidence")
    best_effort = flags.flag("best-effort")
    check_plan(within, confidence, count, best_effort)
    resume = flags.name("resume")
    check_ec2_only(provider, flags.given)
    min_count = flags.maybe_whole("min-count")
    if min_count is not None and within is not None:
        raise InputError("--min-count goes with --count; with --within the planned fleet is the least the run takes")
    return SearchRequest(
        problem=Problem(block, width, difficulty),
        space=space,
        count=count,
        provider=ProviderRequest(
            provider,
            inventory,
            flags.flag("accept-new-host-key"),
            timeout=timeout,
            instance_types=parse_instance_types(flags.name("instance-types"), flags.name("instance-type")),
            spot=flags.flag("spot"),
            min_count=min_count,
            **{flag.replace("-", "_"): flags.name(flag) for flag in PROVIDER_TEXT_FLAGS},
        ),
        timeout=timeout,
        first_found_wins=flags.flag("any"),
        json_output=flags.flag("json"),
        confirmed=flags.flag("yes"),
        max_cost=flags.usd("max-cost"),
        kernel=flags.choice("kernel"),
        within=within,
        confidence=confidence,
        best_effort=best_effort,
        resume=resume,
        problem_flags_given=tuple(name for name in PROBLEM_FLAGS if name in flags.given),
    )


def parse_calibrate(raw: Mapping[str, object]) -> CalibrateRequest:
    """The raw flags of `calibrate` as a checked CalibrateRequest; no I/O."""
    flags = RawFlags(CALIBRATE, options_for(CALIBRATE), raw)
    seconds = flags.seconds("seconds")
    return CalibrateRequest(
        provider=ProviderRequest(
            name=flags.choice("provider"),
            inventory_path=flags.name("inventory"),
            region=flags.name("region"),
            instance_type=flags.name("instance-type"),
            timeout=seconds,
        ),
        count=flags.whole("count"),
        seconds=seconds,
        kernel=flags.choice("kernel"),
        confirmed=flags.flag("yes"),
    )


def parse_bench(raw: Mapping[str, object]) -> BenchRequest:
    """The raw flags of `bench` as a checked BenchRequest; no I/O."""
    flags = RawFlags(BENCH, options_for(BENCH), raw)
    startup = flags.flag("startup")
    if startup and set(flags.given) - {"startup"}:
        others = ", ".join(f"--{name}" for name in sorted(set(flags.given) - {"startup"}))
        raise InputError(f"--startup only times the CLI's start-up; give it without {others}")
    checkpoints = flags.flag("checkpoints")
    if checkpoints and set(flags.given) - {"checkpoints", "seconds"}:
        others = ", ".join(f"--{name}" for name in sorted(set(flags.given) - {"checkpoints", "seconds"}))
        raise InputError(f"--checkpoints measures the local provider only; give it without {others}")
    simulate = flags.maybe_whole("simulate")
    host_rate = flags.maybe_seconds("host-rate")
    if simulate is None and host_rate is not None:
        raise InputError("--host-rate goes with --simulate")
    if simulate is not None and set(flags.given) - {"simulate", "host-rate", "seconds"}:
        others = ", ".join(f"--{name}" for name in sorted(set(flags.given) - {"simulate", "host-rate", "seconds"}))
        raise InputError(f"--simulate runs simulated hosts only; give it without {others}")
    provider = flags.maybe_choice("provider")
    inventory = flags.name("inventory")
    return BenchRequest(
        seconds=flags.seconds("seconds"),
        count=flags.whole("count"),
        # The local provider is always measured; another one is compared against it.
        provider=None if provider in (None, DEFAULT_PROVIDER) else ProviderRequest(provider, inventory),
        kernel=flags.choice("kernel"),
        startup=startup,
        checkpoints=checkpoints,
        simulate=simulate,
        host_rate=DEFAULT_HOST_RATE if host_rate is None else host_rate,
    )
