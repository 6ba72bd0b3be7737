"""The library's entry points: search and teardown. The Fabric tasks only call these."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import IO, Any, Dict, Iterator, List, Optional, Union

from rich.console import Console

from .errors import CndError
from .fleet import (
    FOUND_STATUS,
    INTERRUPTED_STATUS,
    NONE_STATUS,
    TIMEOUT_STATUS,
    FleetSearch,
    SearchOutcome,
)
from .journal import CLEANED, OPEN, RunJournal
from .options import SearchRequest, parse_search
from .progress import LiveReporter, PlainReporter, human_rate, human_seconds, print_summary
from .providers import provider_class
from .providers.base import Host

EXIT_OK = 0
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130

Flag = Union[str, int, float, None]


def _text(value: Flag) -> Optional[str]:
    return None if value is None else str(value)


@contextmanager
def stop_on_signals(stop: threading.Event, console: Console) -> Iterator[None]:
    """SIGINT and SIGTERM ask the run to stop cleanly; a second SIGINT gives up waiting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_to_stop(signum: int, frame: Optional[FrameType]) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        console.print("stopping: killing remote workers and releasing hosts…", highlight=False)

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stderr_console() -> Console:
    """Progress and tables go to stderr; off a terminal, lines are not cut at 80 columns."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=max(console.width, 140))
    return console


def describe_odds(request: SearchRequest) -> str:
    problem = request.problem
    none_chance = problem.chance_space_has_none()
    return (
        f"difficulty {problem.difficulty}: each nonce is golden with probability 2^-{problem.difficulty}, "
        f"about 2^{problem.difficulty} nonces to the first; the 2^{8 * problem.nonce_bytes} space holds "
        f"none with probability {none_chance:.3g}"
    )


def search(
    difficulty: Flag = None,
    count: Flag = None,
    block: Optional[str] = None,
    block_hex: Optional[str] = None,
    nonce_bytes: Flag = None,
    units: Flag = None,
    provider: Optional[str] = None,
    timeout: Flag = None,
    first_found_wins: bool = False,
    json_output: bool = False,
    inventory: Optional[str] = None,
    accept_new_host_key: bool = False,
    image: Optional[str] = None,
    out: Optional[IO[str]] = None,
    console: Optional[Console] = None,
) -> int:
    """Run one search end to end and print its result; returns the process exit code."""
    request = parse_search(
        difficulty=_text(difficulty),
        count=_text(count),
        block=block,
        block_hex=block_hex,
        nonce_bytes=_text(nonce_bytes),
        units=_text(units),
        provider=provider,
        timeout=_text(timeout),
        first_found_wins=first_found_wins,
        json_output=json_output,
        inventory=inventory,
        accept_new_host_key=accept_new_host_key,
        image=image,
    )
    chosen = request.provider
    out = out or sys.stdout
    console = console or stderr_console()
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
    try:
        with stop_on_signals(stop, console), reporter:
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
            )
            outcome = fleet.run()
    finally:
        chosen.release(hosts, journal)
        journal.close(CLEANED, outcome=outcome.status if outcome else "failed")
    print_summary(console, outcome)
    if request.json_output:
        out.write(json.dumps(result_record(request, outcome, journal.run_id)) + "\n")
    else:
        out.write(result_text(request, outcome, journal.run_id) + "\n")
    out.flush()
    return {TIMEOUT_STATUS: EXIT_TIMEOUT, INTERRUPTED_STATUS: EXIT_INTERRUPTED}.get(outcome.status, EXIT_OK)


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


def teardown(
    run_id: Optional[str] = None,
    dry_run: bool = False,
    inventory: Optional[str] = None,
    console: Optional[Console] = None,
) -> int:
    """Remove whatever runs left behind: open journals, and containers by their run label.

    Safe to run any number of times. A run whose controller is still alive is skipped
    unless it is named with --run.
    """
    from . import inventory as inventory_file
    from .providers import ProviderOptions
    from .providers.docker import DockerProvider

    console = console or stderr_console()
    options = ProviderOptions(inventory=inventory_file.load(inventory) if inventory else inventory_file.Inventory())
    journals = RunJournal.all()
    if run_id is not None:
        chosen = [j for j in journals if j.run_id == run_id]
    else:
        chosen = []
        for journal in journals:
            if journal.status != OPEN:
                continue
            if _controller_alive(journal):
                console.print(f"skipping {journal.run_id}: its controller is still running (use --run to force)")
                continue
            chosen.append(journal)
    # Containers whose journal is lost or closed are still found by their label.
    docker = DockerProvider(options)
    try:
        labelled = docker.labelled_runs()
    except CndError:
        labelled = []
    known = {j.run_id for j in chosen}
    live = {j.run_id for j in journals if j.status == OPEN and j.run_id not in known}
    for label_run in labelled:
        if label_run not in known and label_run not in live and (run_id is None or label_run == run_id):
            chosen.append(RunJournal(run_id=label_run, provider=DockerProvider.name))
    if run_id is not None and not chosen:
        raise CndError(f"nothing is known of run {run_id!r}: no journal and no labelled container")
    handled = 0
    for journal in chosen:
        provider = provider_class(journal.provider)(options)
        lines = provider.teardown(journal, dry_run=dry_run)
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
        handled += sum(1 for line in lines if not line.startswith(INCOMPLETE))
        if not dry_run and journal.path.name and not any(line.startswith(INCOMPLETE) for line in lines):
            journal.close(CLEANED)
    verb = "would remove" if dry_run else "removed"
    console.print(f"teardown: {verb} {handled} resource(s) from {len(chosen)} run(s)", highlight=False)
    return EXIT_OK
