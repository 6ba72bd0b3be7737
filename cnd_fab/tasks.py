"""The Fabric/Invoke tasks: flags in, cnd_fab.api out. fabfile.py and `cnd-fab` share them.

search, calibrate and bench take the flags of cnd_fab.options.OPTIONS: `from_table` gives
each task the signature and help Invoke reads, and the task body passes the raw values to
the matching options.parse_* function. Every heavy import (api, providers, rich, ...) is
made inside a task body, so `cnd-fab --help` loads only Invoke and the option table.
"""

from __future__ import annotations

import inspect
from functools import wraps
from typing import Any, Callable, Optional, TypeVar, cast

from invoke import task
from invoke.context import Context
from invoke.exceptions import Exit

from . import flags, options
from .errors import CndError

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


def table_signature(task_name: str) -> inspect.Signature:
    """(c, one keyword per option of `task_name`): value options default to None, so their
    text reaches the parser untouched; bare flags default to their table default."""
    parameters = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for option in options.options_for(task_name):
        default = option.default if option.kind == flags.FLAG else None
        parameters.append(inspect.Parameter(option.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(parameters, return_annotation=int)


def from_table(task_name: str) -> Callable[[Callable[..., int]], Any]:
    """Make `body(c, **raw)` the Invoke task `task_name`, with the table's flags and help."""

    def make(body: Callable[..., int]) -> Any:
        wrapped = one_line_errors(body)
        # inspect.signature, which Invoke uses to find the flags, stops at __signature__.
        setattr(wrapped, "__signature__", table_signature(task_name))
        return task(name=task_name, help={option.name: option.help for option in options.options_for(task_name)})(
            wrapped
        )

    return make


@from_table(options.SEARCH)
def search(c: Context, **raw: object) -> int:
    """Find the lowest golden nonce over a fleet of hosts, with live progress."""
    request = options.parse_search(raw)
    from . import api

    return api.search(request)


@from_table(options.CALIBRATE)
def calibrate(c: Context, **raw: object) -> int:
    """Measure a provider's per-host hash rate and start-up time for --within plans."""
    request = options.parse_calibrate(raw)
    from . import api

    return api.calibrate(request)


@from_table(options.BENCH)
def bench(c: Context, **raw: object) -> int:
    """Measure hash rates per core, end-to-end search rates and fleet start/stop times."""
    request = options.parse_bench(raw)
    from . import bench as benchmarks

    return benchmarks.run(request)


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
    from . import api

    return api.teardown(
        run_id=run, all_runs=all_, expired=expired, dry_run=dry_run, inventory=inventory, region=region
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
    from . import api

    return api.stats(level=level, plot_file=plot)


@task(help={"region": "also search this AWS region for tagged instances"})
@one_line_errors
def status(c: Context, region: Optional[str] = None) -> int:
    """List live runs and their resources (journals, containers, instances)."""
    from . import api

    return api.status(region=region)
