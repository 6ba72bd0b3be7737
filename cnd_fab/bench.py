"""`fab bench`: the figures behind the performance claims, measured on this machine.

1. the worker's scan in one process, then in one process per core (hashes/s per core);
2. the worker itself with each way of using the cores: a unit split across all cores, or
   one whole unit per core (steady rate, and how soon unit 0 is settled);
3. a full search through the scheduler and the local provider, against the raw rate.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from rich.console import Console
from rich.table import Table

from .fleet import FleetSearch
from .journal import RunJournal
from .options import parse_seconds, parse_whole
from .progress import human_rate
from .providers.local import LocalProvider
from .spec import DEFAULT_BLOCK_TEXT, Problem, UnitSpace
from .transport import PipeChannel, protocol, worker_file

NEVER_GOLDEN = 256
BLOCK = DEFAULT_BLOCK_TEXT.encode()


def _scan_for(seconds: float, offset: int, results: "multiprocessing.Queue[int]") -> None:
    """Scan fresh nonces for about `seconds`; put how many were checked."""
    checked = 0
    start = offset
    deadline = time.perf_counter() + seconds
    step = 1 << 16
    while time.perf_counter() < deadline:
        protocol.scan_range(BLOCK, 4, NEVER_GOLDEN, start, start + step)
        start += step
        checked += step
    results.put(checked)


def kernel_rate(processes: int, seconds: float) -> float:
    """Total hashes/s of `processes` processes each running the worker's scan."""
    context = multiprocessing.get_context("fork")
    results: "multiprocessing.Queue[int]" = context.Queue()
    began = time.perf_counter()
    children = [
        context.Process(target=_scan_for, args=(seconds, index << 28, results))
        for index in range(processes)
    ]
    for child in children:
        child.start()
    total = sum(results.get() for _ in children)
    elapsed = time.perf_counter() - began
    for child in children:
        child.join()
    return total / elapsed


@dataclass
class ModeFigures:
    mode: str
    rate: float
    first_unit_seconds: float


def worker_mode_rate(mode: str, processes: int, seconds: float, unit_nonces: int) -> ModeFigures:
    """Run the real worker in `mode` on `processes` cores and read its own heartbeats."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, str(worker_file()), "--processes", str(processes), "--mode", mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    channel = PipeChannel(process)
    try:
        hello = json.loads(channel.read_line())
        units_in_flight = int(hello["prefetch"])
        next_unit = 0

        def send_unit() -> None:
            nonlocal next_unit
            start = next_unit * unit_nonces
            channel.send_line(
                json.dumps(
                    {
                        "type": protocol.WORK,
                        "unit": next_unit,
                        "start": start,
                        "end": start + unit_nonces,
                        "block": BLOCK.hex(),
                        "nonce_bytes": 4,
                        "difficulty": NEVER_GOLDEN,
                    }
                )
            )
            next_unit += 1

        began = time.perf_counter()
        for _ in range(units_in_flight):
            send_unit()
        first_unit: Optional[float] = None
        samples: List[tuple[float, int]] = []
        while time.perf_counter() - began < seconds:
            message = json.loads(channel.read_line())
            if message["type"] == protocol.DONE:
                if message["unit"] == 0:
                    first_unit = time.perf_counter() - began
                send_unit()
            elif message["type"] == protocol.PROGRESS:
                samples.append((time.perf_counter(), int(message["hashes"])))
        channel.send_line(json.dumps({"type": protocol.STOP}))
        # The steady rate: from the first heartbeat that shows work to the last.
        working = [sample for sample in samples if sample[1] > 0]
        if len(working) >= 2:
            (t0, h0), (t1, h1) = working[0], working[-1]
            rate = (h1 - h0) / (t1 - t0)
        else:
            rate = 0.0
        return ModeFigures(mode, rate, first_unit if first_unit is not None else float("nan"))
    finally:
        channel.close()
        process.kill()
        process.wait()


def end_to_end_rate(count: int, seconds: float) -> Dict[str, float]:
    """A real search (local provider, D=256 so nothing is found) stopped at a deadline."""
    provider = LocalProvider()
    journal = RunJournal.start(provider.name)
    began = time.monotonic()
    hosts = provider.launch(count, journal)
    try:
        fleet = FleetSearch(
            Problem(BLOCK, 4, NEVER_GOLDEN),
            UnitSpace(4, 1024),
            hosts,
            journal.run_id,
            deadline=began + seconds,
            stop=threading.Event(),
            started=began,
        )
        outcome = fleet.run()
    finally:
        provider.release(hosts, journal)
        journal.close()
    ready = [h.first_unit_at for h in outcome.hosts if h.first_unit_at is not None]
    startup = (min(ready) - began) if ready else 0.0
    return {
        "wall_rate": outcome.checked / outcome.seconds,
        "startup": startup,
        "seconds": outcome.seconds,
        "checked": float(outcome.checked),
    }


def run(seconds: Optional[str] = None, count: Optional[str] = None) -> int:
    duration = 5.0 if seconds is None else parse_seconds("seconds", seconds)
    hosts = 1 if count is None else parse_whole("count", count, 1, 64)
    cores = protocol.effective_cores()
    console = Console()
    console.print(f"cnd-fab bench: {cores} cores, {duration:g}s per measurement, kernel {protocol.KERNEL_NAME}")

    one = kernel_rate(1, duration)
    every = kernel_rate(cores, duration)
    scan = Table(title="worker scan (pure Python, hashlib)")
    for column in ("processes", "total", "per core", "scaling"):
        scan.add_column(column, justify="right")
    scan.add_row("1", human_rate(one), human_rate(one), "1.00")
    scan.add_row(str(cores), human_rate(every), human_rate(every / cores), f"{every / (cores * one):.2f}")
    console.print(scan)

    unit_nonces = UnitSpace(4, 1024).unit_size
    modes = Table(title=f"worker modes ({cores} cores, units of {unit_nonces:,} nonces)")
    for column in ("mode", "steady rate", "vs raw", "unit 0 settled after"):
        modes.add_column(column, justify="right")
    figures = [worker_mode_rate(mode, cores, duration * 2, unit_nonces) for mode in (protocol.SPLIT, protocol.WHOLE)]
    for figure in figures:
        modes.add_row(
            figure.mode,
            human_rate(figure.rate),
            f"{figure.rate / every:.1%}",
            f"{figure.first_unit_seconds:.2f}s",
        )
    console.print(modes)

    e2e = end_to_end_rate(hosts, duration * 3)
    end = Table(title=f"end-to-end search (local provider, {hosts} host(s), scheduler and protocol included)")
    for column in ("wall time", "checked", "rate", "vs raw all-core rate", "launch to first unit"):
        end.add_column(column, justify="right")
    end.add_row(
        f"{e2e['seconds']:.1f}s",
        f"{int(e2e['checked']):,}",
        human_rate(e2e["wall_rate"]),
        f"{e2e['wall_rate'] / every:.1%}",
        f"{e2e['startup']:.2f}s",
    )
    console.print(end)
    return 0
