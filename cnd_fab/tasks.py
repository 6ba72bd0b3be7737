"""The Fabric/Invoke tasks: flags in, cnd_fab.api out. fabfile.py and `cnd-fab` share them.

Numeric flags default to None so Invoke passes their text through untouched; cnd_fab.options
checks them and says what is wrong in one line (Invoke's own int parsing would crash with
a ValueError traceback on `--difficulty abc`).
"""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable, Optional, TypeVar, cast

from invoke import task
from invoke.context import Context
from invoke.exceptions import Exit

from . import api
from .errors import CndError
from .options import DEFAULT_DIFFICULTY, DEFAULT_PROVIDER
from .providers import PROVIDERS

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(body: F) -> F:
    """Show a CndError as its one-line message and exit code, never as a traceback."""

    @wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            code = body(*args, **kwargs)
        except CndError as error:
            raise Exit(f"cnd-fab: {error}", code=error.exit_code) from None
        if code:
            raise Exit(code=code)
        return code

    return cast(F, wrapper)


_COUNT_HELP = "; ".join(f"{name}: {cls.count_meaning}" for name, cls in sorted(PROVIDERS.items()))


@task(
    help={
        "difficulty": f"leading zero bits a golden hash needs, 1..256 (default {DEFAULT_DIFFICULTY})",
        "count": f"number of hosts (default 1; static: every inventory host); {_COUNT_HELP}",
        "block": "the block as UTF-8 text (default COMSM0010cloud)",
        "block-hex": "the block as hex bytes, NUL included; instead of --block",
        "nonce-bytes": "nonce width in bytes: 4 (default, 2^32 nonces) or 8 (2^64)",
        "units": "units the space is cut into, a power of two (default 1024; 2^42 for 8-byte nonces)",
        "provider": f"where hosts come from: {', '.join(sorted(PROVIDERS))} (default {DEFAULT_PROVIDER})",
        "timeout": "stop everything after this many seconds and report how far it got",
        "any": "stop at the first golden nonce any host finds, which may not be the lowest",
        "json": "print the result as one JSON object on stdout",
        "inventory": "YAML file of static hosts and provider settings (see inventory.example.yaml)",
        "accept-new-host-key": "trust unknown static host keys on first use and save them (unsafe; says so)",
        "image": "docker provider: the SSH host image (default cnd-fab-sshd:latest)",
        "region": "ec2: the AWS region (default: ec2.region, then AWS_DEFAULT_REGION)",
        "instance-type": "ec2: the instance type (default c7a.large)",
        "ami": "ec2: the AMI (default: the current Ubuntu LTS, from its public SSM parameter)",
        "ssh-cidr": "ec2: who may reach port 22 (default: this machine's public address /32)",
        "yes": "ec2: launch without asking to confirm the cost estimate",
        "max-cost": "ec2: refuse to launch if the estimate is above this many USD",
        "kernel": "auto (native where it runs, else Python), native (required) or python",
        "within": "size the fleet to settle the answer within this many seconds (with --confidence)",
        "confidence": "the probability, such as 0.95 or 95%, of settling it --within the time",
        "best-effort": "with --within: run the best fleet even when it cannot reach the confidence",
    }
)
@one_line_errors
def search(
    c: Context,
    difficulty: Optional[str] = None,
    count: Optional[str] = None,
    block: Optional[str] = None,
    block_hex: Optional[str] = None,
    nonce_bytes: Optional[str] = None,
    units: Optional[str] = None,
    provider: Optional[str] = None,
    timeout: Optional[str] = None,
    any_: bool = False,
    json_: bool = False,
    inventory: Optional[str] = None,
    accept_new_host_key: bool = False,
    image: Optional[str] = None,
    region: Optional[str] = None,
    instance_type: Optional[str] = None,
    ami: Optional[str] = None,
    ssh_cidr: Optional[str] = None,
    yes: bool = False,
    max_cost: Optional[str] = None,
    kernel: Optional[str] = None,
    within: Optional[str] = None,
    confidence: Optional[str] = None,
    best_effort: bool = False,
) -> int:
    """Find the lowest golden nonce over a fleet of hosts, with live progress."""
    return api.search(
        difficulty=difficulty,
        count=count,
        block=block,
        block_hex=block_hex,
        nonce_bytes=nonce_bytes,
        units=units,
        provider=provider,
        timeout=timeout,
        first_found_wins=any_,
        json_output=json_,
        inventory=inventory,
        accept_new_host_key=accept_new_host_key,
        image=image,
        region=region,
        instance_type=instance_type,
        ami=ami,
        ssh_cidr=ssh_cidr,
        confirmed=yes,
        max_cost=max_cost,
        kernel=kernel,
        within=within,
        confidence=confidence,
        best_effort=best_effort,
    )


@task(
    help={
        "run": "tear down only this run id (even if its controller still runs)",
        "all": "every run found by journal, label or tag, even with a live controller",
        "expired": "only EC2 runs whose cnd-fab:expires-at tag has passed",
        "dry-run": "say what would be removed, remove nothing",
        "inventory": "the inventory of static hosts, to clean their run directories",
        "region": "also search this AWS region for tagged instances",
    }
)
@one_line_errors
def teardown(
    c: Context,
    run: Optional[str] = None,
    all_: bool = False,
    expired: bool = False,
    dry_run: bool = False,
    inventory: Optional[str] = None,
    region: Optional[str] = None,
) -> int:
    """Kill and remove everything that runs left behind (safe to repeat)."""
    return api.teardown(
        run_id=run, all_runs=all_, expired=expired, dry_run=dry_run, inventory=inventory, region=region
    )


@task(
    help={
        "provider": "the provider to measure (default local)",
        "count": "hosts to launch for the measurement (default 1)",
        "seconds": "how long the measuring search runs (default 15)",
        "inventory": "inventory file (static hosts, provider settings)",
        "instance-type": "ec2: the instance type to measure",
        "region": "ec2: the AWS region",
        "kernel": "auto (default), native or python",
        "yes": "ec2: confirm the paid launch",
    }
)
@one_line_errors
def calibrate(
    c: Context,
    provider: Optional[str] = None,
    count: Optional[str] = None,
    seconds: Optional[str] = None,
    inventory: Optional[str] = None,
    instance_type: Optional[str] = None,
    region: Optional[str] = None,
    kernel: Optional[str] = None,
    yes: bool = False,
) -> int:
    """Measure a provider's per-host hash rate and start-up time for --within plans."""
    return api.calibrate(
        provider=provider, count=count, seconds=seconds, inventory=inventory,
        instance_type=instance_type, region=region, kernel=kernel, yes=yes,
    )


@task(
    help={
        "level": "confidence level of the intervals (default 0.95)",
        "plot": "also draw time and efficiency against the number of hosts into this PNG file",
    }
)
@one_line_errors
def stats(c: Context, level: Optional[str] = None, plot: Optional[str] = None) -> int:
    """Timing statistics over past runs: mean, spread, interval, speedup, efficiency."""
    return api.stats(level=level, plot_file=plot)


@task(help={"region": "also search this AWS region for tagged instances"})
@one_line_errors
def status(c: Context, region: Optional[str] = None) -> int:
    """List live runs and their resources (journals, containers, instances)."""
    return api.status(region=region)


@task(
    help={
        "seconds": "seconds per measurement (default 5; fleet searches run 3 times as long)",
        "count": "hosts for the end-to-end search (default 1)",
        "provider": "measure a fleet of this provider against the local one (docker, static)",
        "inventory": "inventory file for --provider static or docker settings",
        "kernel": "auto (measure the native kernel too; the default) or python",
    }
)
@one_line_errors
def bench(
    c: Context,
    seconds: Optional[str] = None,
    count: Optional[str] = None,
    provider: Optional[str] = None,
    inventory: Optional[str] = None,
    kernel: Optional[str] = None,
) -> int:
    """Measure hash rates per core, end-to-end search rates and fleet start/stop times."""
    from .bench import run as run_benchmark

    return run_benchmark(seconds=seconds, count=count, provider=provider, inventory=inventory, kernel=kernel)
