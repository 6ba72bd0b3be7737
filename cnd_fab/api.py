"""The library's entry points: search, calibrate, stats, teardown and status.

The tasks parse flags into requests (options.py) and call these; each entry point wires
the modules that do the work and decides the exit code.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from typing import IO, TYPE_CHECKING, Any, Optional, Union, cast

from .errors import CndError, InputError, ReleaseError
from .request import CalibrateRequest, SearchRequest
from .outcome import INTERRUPTED_STATUS, TIMEOUT_STATUS, SearchOutcome

if TYPE_CHECKING:
    from rich.console import Console

    from .resume import Resumption

EXIT_OK = 0
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130


def stderr_console(stderr: bool = True) -> "Console":
    """Progress and tables go to stderr; off a terminal, lines are not cut at 80 columns."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=max(console.width, 140))
    return console


class DeferredConsole:
    """stderr_console(), made on first use. Importing rich takes about 45 ms, which a local
    search spends better once its worker has started to boot."""

    def __init__(self) -> None:
        self._console: Optional["Console"] = None

    def made(self) -> "Console":
        """The console, made now if it was not yet."""
        if self._console is None:
            self._console = stderr_console()
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.made(), name)


def search(request: SearchRequest, *, out: Optional[IO[str]] = None, console: Optional["Console"] = None) -> int:
    """Run one search end to end and print its result; returns the process exit code."""
    from .checkpoint import Checkpoint, CheckpointKeeper
    from .checks import open_provider
    from .kernels import prepare_payload
    from .planner import confirm_cost, plan_fleet
    from .run import launched

    deferred = DeferredConsole() if console is None else None
    # Before the launch the console prints only on occasion (a kernel build, a cost prompt).
    console = console or cast("Console", deferred)
    out = out or sys.stdout
    resumption = None
    if request.resume is not None:
        from .resume import open_resumption

        resumption = open_resumption(request)
        request = resumption.request
        if resumption.checkpoint.answered():
            return _answer_from_checkpoint(resumption, out)
    provider, count = open_provider(request.provider, request.count)
    timeout = request.timeout
    problem, space = request.problem, request.space
    base = resumption.base() if resumption else Checkpoint(problem, space, request.first_found_wins)
    if request.within is not None:
        count, timeout = plan_fleet(request, provider, console, base if resumption else None)
    confirm_cost(provider, count, timeout, request.max_cost, request.confirmed, console)
    payload = prepare_payload(request.kernel, provider.architectures(), console)
    if provider.interruption_notices:
        payload = dataclasses.replace(payload, metadata_url=provider.interruption_notices)
    stop = threading.Event()
    outcome: Optional[SearchOutcome] = None
    release_error: Optional[ReleaseError] = None
    details = dict(difficulty=problem.difficulty, block_hex=problem.block.hex(), nonce_bytes=problem.nonce_bytes, units=space.count)
    if resumption is not None:
        details["resumed_from"] = resumption.run_id
    say = lambda text: console.print(text, highlight=False, markup=False)  # noqa: E731
    try:
        with launched(provider, count, details=details, stop=stop, say=say, payload=payload) as run:
            keeper = CheckpointKeeper(run.journal, base)
            if resumption is not None:
                resumption.hand_over(run.run_id)
            # Imported only now: local workers boot meanwhile.
            if deferred is not None:
                console = deferred.made()
            from .fleet import FleetSearch
            from .progress import LiveReporter, PlainReporter
            from .results import describe_odds, describe_resumption

            console.print(describe_odds(problem), highlight=False, soft_wrap=True)
            if resumption is not None:
                console.print(describe_resumption(resumption.run_id, base), highlight=False, soft_wrap=True)
            console.print(
                f"run {run.run_id}: {len(run.hosts)} host(s) on {provider.name}, {space.count} units of {space.unit_size:,} nonces",
                highlight=False,
                soft_wrap=True,
            )
            reporter: Union[LiveReporter, PlainReporter]
            reporter = LiveReporter(console, f"cnd-fab {run.run_id}") if console.is_terminal else PlainReporter(console)
            with reporter:
                fleet = FleetSearch(
                    problem,
                    space,
                    run.hosts,
                    run.run_id,
                    first_found_wins=request.first_found_wins,
                    deadline=None if timeout is None else run.started + timeout,
                    stop=stop,
                    reporter=reporter,
                    on_lost=lambda host: host.stop_worker(),
                    started=run.started,
                    payload=payload,
                    scheduler=base.scheduler(),
                    checkpoint=keeper,
                )
                outcome = fleet.run()
            run.outcome = outcome.status
    except ReleaseError as error:
        if outcome is None:
            raise
        release_error = error  # shown after the result, which is still true
    assert outcome is not None
    from .progress import print_summary
    from .results import result_record, result_text, save_run_record

    print_summary(console, outcome)
    cost = provider.incurred_cost()
    if cost is not None:
        console.print(
            f"cost incurred: about ${cost:.4f} from launch to termination: instances per second (60 s minimum), "
            "CPU surplus credits of unlimited t types at 100% CPU, and public IPv4 per second; prices and "
            "sources as in the estimate",
            highlight=False,
            soft_wrap=True,
        )
    record = result_record(request, outcome, run.run_id, provider.name, cost, base)
    if provider.notices:  # what went wrong on the side, such as a failed keep-alive
        record["notices"] = list(provider.notices)
    save_run_record(request, record, run.started, outcome, provider.instance_type, fleet.joblog, keeper)
    out.write((json.dumps(record) if request.json_output else result_text(request, outcome, record)) + "\n")
    out.flush()
    if release_error is not None:
        raise release_error
    return {TIMEOUT_STATUS: EXIT_TIMEOUT, INTERRUPTED_STATUS: EXIT_INTERRUPTED}.get(outcome.status, EXIT_OK)


def _answer_from_checkpoint(resumption: "Resumption", out: IO[str]) -> int:
    """The stopped run had settled the answer already: print it, launch nothing."""
    from .results import answered_outcome, result_record, result_text

    request, checkpoint = resumption.request, resumption.checkpoint
    outcome = answered_outcome(checkpoint)
    record = result_record(request, outcome, resumption.run_id, resumption.journal.provider, None, resumption.base())
    resumption.close_answered(outcome.status)
    out.write((json.dumps(record) if request.json_output else result_text(request, outcome, record)) + "\n")
    out.flush()
    return EXIT_OK


def calibrate(request: CalibrateRequest, console: Optional["Console"] = None) -> int:
    """Measure one provider's per-host rate and start-up, and keep them for --within."""
    from .calibration import DEFAULT_STARTUP, calibration_file, key, record
    from .checks import open_provider
    from .kernels import prepare_payload
    from .planner import confirm_cost
    from .run import measuring_search

    console = console or stderr_console()
    provider, hosts = open_provider(request.provider, request.count)
    confirm_cost(provider, hosts, request.seconds, None, request.confirmed, console)
    payload = prepare_payload(request.kernel, provider.architectures(), console)
    if provider.interruption_notices:
        payload = dataclasses.replace(payload, metadata_url=provider.interruption_notices)
    stop = threading.Event()
    # Start-up is measured, not part of the measuring window: allow generously for it.
    grace = 5 * DEFAULT_STARTUP.get(provider.name, 10.0)
    outcome, fleet, run = measuring_search(provider, hosts, request.seconds, payload, grace=grace, stop=stop)
    assert fleet.finished_at is not None
    working = [view for view in outcome.hosts if view.running_at is not None]
    if not working:
        raise CndError(f"calibration failed: no {provider.name} host started working; see the errors above")
    rates = [view.hashes / max(1e-9, fleet.finished_at - view.running_at) for view in working if view.running_at]
    startups = [view.running_at - run.started for view in working if view.running_at]
    rate, startup = sum(rates) / len(rates), sum(startups) / len(startups)
    kernel_name = working[0].kernel
    entry = record(provider.name, provider.instance_type, "python" if kernel_name == "python-hashlib" else "native", rate, startup)
    console.print(
        f"calibrated {key(provider.name, provider.instance_type, request.kernel)}: {rate / 1e6:.2f} MH/s per host "
        f"({kernel_name}), start-up {startup:.2f}s; running mean over {entry['samples']} run(s) "
        f"kept in {calibration_file()}",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_OK


def stats(
    level: Optional[str] = None,
    plot_file: Optional[str] = None,
    console: Optional["Console"] = None,
    joblog_run: Optional[str] = None,
    timeline_run: Optional[str] = None,
    out: Optional[IO[str]] = None,
) -> int:
    """Print timing statistics over the run records; optionally draw them. With a run id:
    that run's per-unit log as CSV (`joblog_run`), or its timeline drawn (`timeline_run`)."""
    from pathlib import Path

    from .options import parse_confidence
    from .records import load_record, load_records, plot, stats_table, summarise

    if joblog_run is not None or timeline_run is not None:
        if joblog_run is not None and timeline_run is not None:
            raise InputError("give --joblog or --timeline, not both")
        if timeline_run is not None and not plot_file:
            raise InputError("--timeline RUN_ID draws into a PNG file: add --plot FILE.png")
        if joblog_run is not None and plot_file:
            raise InputError("--joblog prints CSV on stdout; --plot goes with --timeline")
        record = load_record(joblog_run or timeline_run or "")
        if "joblog" not in record:
            raise InputError(f"run {record['run_id']} has no per-unit log (its record predates them)")
        try:
            if joblog_run is not None:
                from .joblog import joblog_csv

                (out or sys.stdout).write(joblog_csv(record["joblog"]))
                return EXIT_OK
            from .timeline import draw_timeline

            draw_timeline(record, Path(plot_file or ""))
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"the per-unit log of run {record['run_id']} is unreadable: {error}") from None
        (console or stderr_console()).print(f"timeline of {record['run_id']} written to {plot_file}", highlight=False)
        return EXIT_OK

    chosen_level = 0.95 if level is None else parse_confidence(level)
    console = console or stderr_console(stderr=False)
    records = load_records()
    rows = summarise(records, chosen_level)
    console.print(stats_table(rows, len(records), chosen_level))
    if plot_file:
        if not rows:
            raise InputError("--plot: there are no settled runs to draw yet")
        plot(rows, Path(plot_file), chosen_level)
        console.print(f"plot written to {plot_file}")
    return EXIT_OK


def teardown(
    run_id: Optional[str] = None,
    all_runs: bool = False,
    expired: bool = False,
    dry_run: bool = False,
    inventory: Optional[str] = None,
    region: Optional[str] = None,
    console: Optional["Console"] = None,
) -> int:
    """Remove whatever runs left behind. Safe to run any number of times."""
    from . import leftovers

    leftovers.teardown(run_id, all_runs, expired, dry_run, inventory, region, console or stderr_console())
    return EXIT_OK


def status(region: Optional[str] = None, console: Optional["Console"] = None) -> int:
    """Print the live runs: open journals, cnd-fab containers and tagged EC2 instances."""
    from . import leftovers

    leftovers.status(region, console or stderr_console(stderr=False))
    return EXIT_OK
