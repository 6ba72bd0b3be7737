"""The library's entry points: search and teardown. The Fabric tasks only call these."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from types import FrameType
from typing import IO, Any, Dict, Iterator, List, Optional, Union

from rich.console import Console

from .errors import CndError, InputError
from .fleet import (
    FOUND_STATUS,
    INTERRUPTED_STATUS,
    NONE_STATUS,
    TIMEOUT_STATUS,
    FleetSearch,
    SearchOutcome,
)
from .journal import CLEANED, OPEN, RunJournal
from .kernels import ensure_kernels
from .transport import WorkerPayload
from .checks import open_provider
from .request import CalibrateRequest, SearchRequest
from .progress import LiveReporter, PlainReporter, human_rate, human_seconds, print_summary
from .providers import Provider, provider_class
from .providers.base import Host

EXIT_OK = 0
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130

@contextmanager
def stop_on_signals(stop: threading.Event, console: Console) -> Iterator[None]:
    """SIGINT and SIGTERM ask the run to stop cleanly. Further ones are refused while the
    hosts are released: giving up then would leave instances and containers running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_to_stop(signum: int, frame: Optional[FrameType]) -> None:
        if stop.is_set():
            console.print("still stopping: every worker is being killed and every host released…", highlight=False)
            return
        stop.set()
        console.print("stopping: killing remote workers and releasing hosts…", highlight=False)

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stderr_console(stderr: bool = True) -> Console:
    """Progress and tables go to stderr; off a terminal, lines are not cut at 80 columns."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=max(console.width, 140))
    return console


def plan_fleet(request: SearchRequest, provider: Provider, console: Console) -> SearchRequest:
    """Size the fleet for --within T --confidence L, or refuse before anything launches."""
    from .calibration import host_model
    from .model import FleetModel, describe, smallest_fleet

    assert request.within is not None and request.confidence is not None
    host = host_model(provider.name, provider.instance_type, request.kernel, provider.cores_per_host())
    model = FleetModel(
        difficulty=request.problem.difficulty,
        space=request.problem.space,
        unit_size=request.space.unit_size,
        prefetch=2,
        first_found_wins=request.first_found_wins,
    )
    plan = smallest_fleet(model, host, request.within, request.confidence, provider.max_hosts())
    console.print(describe(model, host, plan, request.within, request.confidence), highlight=False, soft_wrap=True)
    if not request.best_effort:
        if model.space_holds_one() < request.confidence:
            raise InputError(
                f"the 2^{8 * request.problem.nonce_bytes} space holds a golden nonce at difficulty "
                f"{request.problem.difficulty} only with probability {model.space_holds_one():.3f}, below "
                f"--confidence {request.confidence:g}; nothing was launched (try --nonce-bytes 8, or --best-effort)"
            )
        if not plan.reached:
            raise InputError(
                f"no fleet of at most {provider.max_hosts()} {provider.name} host(s) settles the answer within "
                f"{request.within:g}s with probability {request.confidence:g}: the best, {plan.hosts} host(s), "
                f"reaches {plan.probability:.3f}; nothing was launched (allow more time, use a faster provider, "
                "or --best-effort)"
            )
    provider.check(plan.hosts)
    timeout = request.timeout if request.timeout is not None else request.within
    return replace(request, count=plan.hosts, timeout=timeout)


def confirm_cost(request: SearchRequest, provider: Provider, count: int, console: Console) -> None:
    """Show what a paid run may cost; refuse or ask before anything is launched."""
    estimate = provider.cost_estimate(count, request.timeout)
    if estimate is None:
        return
    console.print(estimate.describe(), highlight=False, soft_wrap=True)
    if request.max_cost is not None:
        if estimate.total is None:
            raise InputError(f"--max-cost cannot be checked: no built-in price for {estimate.instance_type}")
        if estimate.total > request.max_cost:
            raise InputError(
                f"the estimate ${estimate.total:.4f} is above --max-cost ${request.max_cost:.4f}; nothing was launched"
            )
    if request.confirmed:
        return
    if not sys.stdin.isatty():
        raise InputError("this run launches paid instances: pass --yes to confirm it when not on a terminal")
    answer = console.input(f"launch {count} {provider.name} instance(s)? [y/N] ", markup=False)
    if answer.strip().lower() not in ("y", "yes"):
        raise InputError("not confirmed; nothing was launched")


def prepare_payload(kernel: str, console: Console) -> WorkerPayload:
    """Build (or find cached) native kernels for every host architecture before launching."""
    if kernel == "python":
        return WorkerPayload(kernel="python")
    folder, problems = ensure_kernels(
        on_build=lambda arch: console.print(
            f"building the native kernel for {arch} (once; cached after that)…", highlight=False
        )
    )
    for problem in problems:
        console.print(f"warning: {problem}; those hosts will use pure Python", highlight=False)
    if folder is None and kernel == "native":
        raise CndError("--kernel native: no native kernel could be built; see the warnings above")
    return WorkerPayload(kernel_dir=folder, kernel=kernel)


def describe_odds(request: SearchRequest) -> str:
    problem = request.problem
    none_chance = problem.chance_space_has_none()
    return (
        f"difficulty {problem.difficulty}: each nonce is golden with probability 2^-{problem.difficulty}, "
        f"about 2^{problem.difficulty} nonces to the first; the 2^{8 * problem.nonce_bytes} space holds "
        f"none with probability {none_chance:.3g}"
    )


def search(request: SearchRequest, *, out: Optional[IO[str]] = None, console: Optional[Console] = None) -> int:
    """Run one search end to end and print its result; returns the process exit code."""
    chosen, count = open_provider(request.provider, request.count)
    request = replace(request, count=count)
    console = console or stderr_console()
    if request.within is not None:
        request = plan_fleet(request, chosen, console)
    assert request.count is not None
    out = out or sys.stdout
    confirm_cost(request, chosen, request.count, console)
    payload = prepare_payload(request.kernel, console)
    started = time.monotonic()
    deadline = None if request.timeout is None else started + request.timeout
    journal = RunJournal.start(chosen.name)
    journal.details["controller_pid"] = os.getpid()
    journal.details.update(
        difficulty=request.problem.difficulty,
        block_hex=request.problem.block.hex(),
        nonce_bytes=request.problem.nonce_bytes,
        units=request.space.count,
        count=request.count,
    )
    console.print(describe_odds(request), highlight=False)
    console.print(
        f"run {journal.run_id}: {request.count} host(s) on {chosen.name}, "
        f"{request.space.count} units of {request.space.unit_size:,} nonces",
        highlight=False,
        soft_wrap=True,
    )
    stop = threading.Event()
    hosts: List[Host] = []
    outcome: Optional[SearchOutcome] = None
    reporter: Union[LiveReporter, PlainReporter]
    if console.is_terminal:
        reporter = LiveReporter(console, f"cnd-fab {journal.run_id}")
    else:
        reporter = PlainReporter(console)
    release_error: Optional[CndError] = None
    with stop_on_signals(stop, console):
        try:
            with reporter:
                hosts = chosen.launch(request.count, journal)
                fleet = FleetSearch(
                    request.problem,
                    request.space,
                    hosts,
                    journal.run_id,
                    first_found_wins=request.first_found_wins,
                    deadline=deadline,
                    stop=stop,
                    reporter=reporter,
                    on_lost=lambda host: host.stop_worker(),
                    started=started,
                    payload=payload,
                )
                outcome = fleet.run()
        finally:
            try:
                chosen.release(hosts, journal)
            except CndError as error:
                # The journal stays open, so `fab teardown` finds what is left.
                release_error = error
                if outcome is None:
                    raise
            else:
                journal.close(CLEANED, outcome=outcome.status if outcome else "failed")
    assert outcome is not None
    print_summary(console, outcome)
    cost = chosen.incurred_cost()
    if cost is not None:
        console.print(f"cost incurred: about ${cost:.4f} (per-second billing, 60 s minimum per instance)", highlight=False)
    record = result_record(request, outcome, journal.run_id)
    record["cost_usd"] = None if cost is None else round(cost, 6)
    write_run_record(request, chosen, record, started, outcome, cost)
    if request.json_output:
        out.write(json.dumps(record) + "\n")
    else:
        out.write(result_text(request, outcome, journal.run_id) + "\n")
    out.flush()
    if release_error is not None:
        raise release_error
    return {TIMEOUT_STATUS: EXIT_TIMEOUT, INTERRUPTED_STATUS: EXIT_INTERRUPTED}.get(outcome.status, EXIT_OK)


def write_run_record(
    request: SearchRequest,
    provider: Provider,
    result: Dict[str, Any],
    started: float,
    outcome: SearchOutcome,
    cost: Optional[float],
) -> None:
    from .records import build_record, write_record

    parameters = {
        "difficulty": request.problem.difficulty,
        "nonce_bytes": request.problem.nonce_bytes,
        "block_hex": request.problem.block.hex(),
        "units": request.space.count,
        "any": request.first_found_wins,
        "timeout": request.timeout,
        "within": request.within,
        "confidence": request.confidence,
        "kernel": request.kernel,
    }
    write_record(
        build_record(
            result["run_id"],
            provider.name,
            provider.instance_type,
            parameters,
            result,
            started,
            outcome.hosts,
            cost,
        )
    )


def stats(level: Optional[str] = None, plot_file: Optional[str] = None, console: Optional[Console] = None) -> int:
    """Print timing statistics over the run records; optionally draw them."""
    from pathlib import Path

    from rich.table import Table

    from .options import parse_confidence
    from .records import load_records, plot, records_dir, summarise

    chosen_level = 0.95 if level is None else parse_confidence(level)
    console = console or stderr_console(stderr=False)
    records = load_records()
    rows = summarise(records, chosen_level)
    table = Table(title=f"settled runs by provider, instance type, difficulty and hosts ({len(records)} records in {records_dir()})")
    for column in ("provider", "type", "D", "hosts", "runs", "mean s", "std dev s", f"{chosen_level:.0%} interval s", "speedup", "efficiency"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.provider,
            row.instance_type,
            str(row.difficulty),
            str(row.hosts),
            str(row.runs),
            f"{row.mean:.2f}",
            "-" if row.stdev is None else f"{row.stdev:.2f}",
            "-" if row.interval is None else f"{row.interval[0]:.2f} – {row.interval[1]:.2f}",
            "-" if row.speedup is None else f"{row.speedup:.2f}×",
            "-" if row.efficiency is None else f"{row.efficiency:.0%}",
        )
    console.print(table)
    if plot_file:
        if not rows:
            raise InputError("--plot: there are no settled runs to draw yet")
        plot(rows, Path(plot_file), chosen_level)
        console.print(f"plot written to {plot_file}")
    return EXIT_OK


def result_record(request: SearchRequest, outcome: SearchOutcome, run_id: str) -> Dict[str, Any]:
    problem = request.problem
    golden = outcome.golden
    nonce = golden.nonce if golden else None
    return {
        "status": outcome.status,
        "found": golden is not None,
        "nonce": nonce,
        "nonce_hex": None if nonce is None else f"{nonce:0{2 * problem.nonce_bytes}x}",
        "hash": golden.hash if golden else None,
        "zero_bits": None if nonce is None else problem_zero_bits(request, nonce),
        "lowest": outcome.lowest,
        "difficulty": problem.difficulty,
        "block_hex": problem.block.hex(),
        "nonce_bytes": problem.nonce_bytes,
        "units": request.space.count,
        "checked": outcome.checked,
        "nonces_settled": outcome.nonces_settled,
        "space": problem.space,
        "seconds": round(outcome.seconds, 6),
        "rate": round(outcome.rate, 1),
        "provider": request.provider.name,
        "run_id": run_id,
        "reissued": outcome.reissued,
        "hosts": [
            {
                "name": host.name,
                "state": host.state,
                "cores": host.cores,
                "kernel": host.kernel,
                "units": host.units_done,
                "hashes": host.hashes,
                "error": host.error or None,
            }
            for host in outcome.hosts
        ],
    }


def problem_zero_bits(request: SearchRequest, nonce: int) -> int:
    from .spec import zero_bits

    return zero_bits(request.problem.hash(nonce))


def result_text(request: SearchRequest, outcome: SearchOutcome, run_id: str) -> str:
    record = result_record(request, outcome, run_id)
    space_bits = 8 * request.problem.nonce_bytes
    checked = (
        f"{outcome.checked:,} nonces in {human_seconds(outcome.seconds)} "
        f"({human_rate(outcome.rate)})"
    )
    lines: List[str] = []
    if outcome.status == NONE_STATUS:
        lines.append(
            f"no golden nonce: the whole 2^{space_bits} space holds none at difficulty "
            f"{request.problem.difficulty}"
        )
    elif outcome.status in (TIMEOUT_STATUS, INTERRUPTED_STATUS):
        share = outcome.nonces_settled / request.problem.space
        why = "timed out" if outcome.status == TIMEOUT_STATUS else "interrupted"
        lines.append(
            f"{why} after {human_seconds(outcome.seconds)}: {outcome.nonces_settled:,} nonces "
            f"({share:.4%} of the space) settled; {outcome.units_settled} units done"
        )
    if record["found"]:
        if outcome.status == FOUND_STATUS:
            lines.append(f"golden nonce   {record['nonce']}  (0x{record['nonce_hex']})")
        else:
            lines.append(f"best so far    {record['nonce']}  (0x{record['nonce_hex']})")
        lines.append(f"hash           {record['hash']}")
        lines.append(f"zero bits      {record['zero_bits']} (difficulty {request.problem.difficulty})")
        if outcome.lowest:
            lines.append("lowest         yes: every nonce below it was checked")
        elif outcome.first_found_wins and outcome.status == FOUND_STATUS:
            lines.append("lowest         not checked (--any): the first golden nonce found, maybe not the lowest")
        else:
            lines.append("lowest         not proven: some nonces below it were not checked")
    lines.append(f"checked        {checked}")
    lines.append(f"run            {run_id} on {request.provider.name}, {len(outcome.hosts)} host(s)")
    return "\n".join(lines)


INCOMPLETE = ("could not", "cannot")


def _controller_alive(journal: RunJournal) -> bool:
    """True while the controller that wrote an open journal still runs."""
    pid = journal.details.get("controller_pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"fab" in handle.read()
    except OSError:
        return False


def _journal_regions(journals: List[RunJournal], extra: Optional[str]) -> List[str]:
    regions = {str(j.details["region"]) for j in journals if j.provider == "ec2" and j.details.get("region")}
    if extra:
        regions.add(extra)
    return sorted(regions)


def find_leftovers(
    run_id: Optional[str], all_runs: bool, expired: bool, region: Optional[str], console: Console
) -> List[RunJournal]:
    """The runs to tear down: open journals whose controller is gone, plus containers and
    instances found by their run label or tag (their journal may be lost or closed)."""
    from .providers.docker import DockerProvider
    from .providers.ec2 import Ec2Provider

    journals = RunJournal.all()
    chosen: Dict[str, RunJournal] = {}
    busy = set()
    for journal in journals:
        if run_id is not None:
            if journal.run_id == run_id:
                chosen[run_id] = journal
            continue
        if journal.status != OPEN or expired:
            continue
        if _controller_alive(journal) and not all_runs:
            busy.add(journal.run_id)
            console.print(f"skipping {journal.run_id}: its controller is still running (use --run or --all)")
            continue
        chosen[journal.run_id] = journal

    def consider(found_run: str, provider: str, **details: Any) -> None:
        if found_run in chosen or found_run in busy or (run_id is not None and found_run != run_id):
            return
        chosen[found_run] = RunJournal(run_id=found_run, provider=provider, details=dict(details))

    if not expired:
        try:
            for found_run in DockerProvider().labelled_runs():
                consider(found_run, DockerProvider.name)
        except CndError:
            pass  # no Docker engine here: nothing of ours can run on it
    regions = _journal_regions(journals, region)
    if regions:
        ec2 = Ec2Provider()
        try:
            for found_run, found_region in ec2.labelled_runs(regions, expired_only=expired).items():
                consider(found_run, Ec2Provider.name, region=found_region)
        except Exception as error:  # botocore's errors: report and go on with what is known
            console.print(f"cannot search EC2 in {', '.join(regions)} by tag: {error}", highlight=False)
    return list(chosen.values())


def teardown(
    run_id: Optional[str] = None,
    all_runs: bool = False,
    expired: bool = False,
    dry_run: bool = False,
    inventory: Optional[str] = None,
    region: Optional[str] = None,
    console: Optional[Console] = None,
) -> int:
    """Remove whatever runs left behind. Safe to run any number of times."""
    from . import inventory as inventory_file
    from .providers import ProviderOptions

    console = console or stderr_console()
    options = ProviderOptions(
        inventory=inventory_file.load(inventory) if inventory else inventory_file.Inventory(), region=region
    )
    chosen = find_leftovers(run_id, all_runs, expired, region, console)
    if run_id is not None and not chosen:
        raise CndError(f"nothing is known of run {run_id!r}: no journal, no labelled container or tagged instance")
    handled = 0
    incomplete = 0
    for journal in chosen:
        provider = provider_class(journal.provider)(options)
        lines = provider.teardown(journal, dry_run=dry_run)
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
        failed = [line for line in lines if line.startswith(INCOMPLETE)]
        incomplete += len(failed)
        handled += len(lines) - len(failed)
        if not dry_run and journal.path.name and not failed:
            journal.close(CLEANED)
    verb = "would remove" if dry_run else "removed"
    console.print(f"teardown: {verb} {handled} resource(s) from {len(chosen)} run(s)", highlight=False)
    if incomplete:
        raise CndError(f"teardown left {incomplete} resource(s) it could not remove; see above, then run it again")
    return EXIT_OK


def calibrate(request: CalibrateRequest, console: Optional[Console] = None) -> int:
    """Measure one provider's per-host rate and start-up, and keep them for --within."""
    from .bench import timed_search
    from .calibration import calibration_file, key, record

    console = console or stderr_console()
    duration, choice = request.seconds, request.kernel
    chosen, hosts = open_provider(request.provider, request.count)
    estimate = chosen.cost_estimate(hosts, duration)
    if estimate is not None:
        console.print(estimate.describe(), highlight=False, soft_wrap=True)
        if not request.confirmed:
            raise InputError("calibrating launches paid instances: pass --yes to confirm")
    from .calibration import DEFAULT_STARTUP

    payload = prepare_payload(choice, console)
    stop = threading.Event()
    # Start-up is measured, not part of the measuring window: allow generously for it.
    grace = 5 * DEFAULT_STARTUP.get(chosen.name, 10.0)
    with stop_on_signals(stop, console):
        outcome, fleet, _, began = timed_search(chosen, hosts, duration, payload, grace=grace, stop=stop)
    assert fleet.finished_at is not None
    working = [view for view in outcome.hosts if view.running_at is not None]
    if not working:
        raise CndError(f"calibration failed: no {chosen.name} host started working; see the errors above")
    rates, startups = [], []
    for view in working:
        assert view.running_at is not None
        rates.append(view.hashes / max(1e-9, fleet.finished_at - view.running_at))
        startups.append(view.running_at - began)
    rate, startup = sum(rates) / len(rates), sum(startups) / len(startups)
    kernel_name = working[0].kernel
    entry = record(chosen.name, chosen.instance_type, "python" if kernel_name == "python-hashlib" else "native", rate, startup)
    console.print(
        f"calibrated {key(chosen.name, chosen.instance_type, choice)}: {rate / 1e6:.2f} MH/s per host "
        f"({kernel_name}), start-up {startup:.2f}s; running mean over {entry['samples']} run(s) "
        f"kept in {calibration_file()}",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_OK


def status(region: Optional[str] = None, console: Optional[Console] = None) -> int:
    """Print the live runs: open journals, cnd-fab containers and tagged EC2 instances."""
    from rich.table import Table

    from .providers.docker import RUN_LABEL, DockerProvider
    from .providers.ec2 import Ec2Provider, EXPIRES_TAG, LIVE_STATES, RUN_TAG, TOOL_TAG

    console = console or Console()
    journals = [j for j in RunJournal.all() if j.status == OPEN]
    table = Table(title="open runs")
    for column in ("run", "provider", "started", "controller", "resources"):
        table.add_column(column)
    for journal in journals:
        table.add_row(
            journal.run_id,
            journal.provider,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(journal.created)),
            "running" if _controller_alive(journal) else "gone",
            ", ".join(sorted({str(r.get("kind")) for r in journal.resources})) or "-",
        )
    console.print(table)
    try:
        containers = DockerProvider()._containers()
    except CndError:
        containers = []
    if containers:
        boxes = Table(title="cnd-fab containers")
        for column in ("container", "state", "run"):
            boxes.add_column(column)
        for container in containers:
            boxes.add_row(container.name, container.status, container.labels.get(RUN_LABEL, "?"))
        console.print(boxes)
    regions = _journal_regions(RunJournal.all(), region)
    if regions:
        instances = Table(title=f"cnd-fab instances in {', '.join(regions)}")
        for column in ("instance", "type", "state", "run", "expires"):
            instances.add_column(column)
        ec2 = Ec2Provider()
        for each in regions:
            found = ec2.client("ec2", each).describe_instances(
                Filters=[{"Name": f"tag:{TOOL_TAG}", "Values": ["cnd-fab"]}, {"Name": "instance-state-name", "Values": LIVE_STATES}]
            )
            for reservation in found["Reservations"]:
                for instance in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    instances.add_row(
                        instance["InstanceId"], instance["InstanceType"], instance["State"]["Name"],
                        tags.get(RUN_TAG, "?"), tags.get(EXPIRES_TAG, "?"),
                    )
        console.print(instances)
    return EXIT_OK
