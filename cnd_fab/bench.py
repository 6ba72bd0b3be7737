"""`fab bench`: the figures behind the performance claims, measured on this machine.

1. the worker's scan in one process, then in one process per core (hashes/s per core);
2. the worker itself with each way of using the cores: a unit split across all cores, or
   one whole unit per core (steady rate, and how soon unit 0 is settled);
3. a full search through the scheduler and the local provider, against the raw rate.

With --provider, `run_fleet` compares that provider's fleet with the local provider: start-up,
rate, stop, and the wall time of a whole D=30 search on each, from the launch's start.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from rich.console import Console
from rich.table import Table

from remote import worker

from .fleet import FleetSearch
from .kernels import ensure_kernels, machine_architecture
from .request import BenchRequest
from .progress import human_rate
from .providers.base import Provider
from .providers.local import LocalProvider
from .run import MEASURING_BLOCK as BLOCK
from .run import NEVER_GOLDEN, launched, measuring_search
from .spec import Problem, UnitSpace
from .transport import PipeChannel, WorkerPayload, worker_file


def _scan_for(seconds: float, offset: int, results: "multiprocessing.Queue[int]") -> None:
    """Scan fresh nonces for about `seconds`; put how many were checked."""
    checked = 0
    start = offset
    deadline = time.perf_counter() + seconds
    step = 1 << 16
    while time.perf_counter() < deadline:
        worker.scan_range(BLOCK, 4, NEVER_GOLDEN, start, start + step)
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
    """One way of using the cores: its steady rate and how soon unit 0 settles."""

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
        hello = worker.decode(channel.read_line(worker.MAX_LINE_CHARS + 1))
        assert isinstance(hello, worker.Hello), hello
        next_unit = 0

        def send_unit() -> None:
            nonlocal next_unit
            start = next_unit * unit_nonces
            work = worker.Work(next_unit, start, start + unit_nonces, BLOCK.hex(), 4, NEVER_GOLDEN)
            channel.send_line(worker.encode(work))
            next_unit += 1

        began = time.perf_counter()
        for _ in range(hello.prefetch):
            send_unit()
        first_unit: Optional[float] = None
        samples: List[Tuple[float, int]] = []
        while time.perf_counter() - began < seconds:
            message = worker.decode(channel.read_line(worker.MAX_LINE_CHARS + 1))
            if isinstance(message, worker.Done):
                if message.unit == 0:
                    first_unit = time.perf_counter() - began
                send_unit()
            elif isinstance(message, worker.Progress):
                samples.append((time.perf_counter(), message.hashes))
        channel.send_line(worker.encode(worker.Stop()))
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


def native_payload(architectures: Tuple[str, ...] = ()) -> WorkerPayload:
    """The payload with native kernels for this machine and `architectures`, built if need be."""
    wanted = tuple(sorted({machine_architecture(), *architectures}))
    folder, _ = ensure_kernels(wanted)
    return WorkerPayload(kernel_dir=folder)


def end_to_end_rate(count: int, seconds: float, payload: WorkerPayload, space: Optional[UnitSpace] = None) -> Dict[str, Any]:
    """The local provider's end-to-end rate, start-up included, over `space` (default 1024 units)."""
    outcome, fleet, run = measuring_search(LocalProvider(), count, seconds, payload, space=space)
    began = run.started
    ready = [h.first_unit_at for h in outcome.hosts if h.first_unit_at is not None]
    startup = (min(ready) - began) if ready else 0.0
    return {
        "kernel": outcome.hosts[0].kernel,
        "wall_rate": outcome.checked / outcome.seconds,
        "startup": startup,
        "seconds": outcome.seconds,
        "checked": float(outcome.checked),
        "grants": fleet.traffic.grants_sent,
    }


#: The unit sizes the end-to-end table compares: (label, space). Small units cost a message
#: each before grants; with grants they should run as fast as the default.
UNIT_SPACES = (
    ("1,024 units of 4,194,304 (default)", UnitSpace(4, 1024)),
    ("65,536 units of 65,536", UnitSpace(4, 1 << 16)),
    ("8-byte, units of 65,536", UnitSpace(8, 1 << 48)),
)


def _processes_of(run_id: str) -> int:
    """Processes on this machine (containers included: same kernel) carrying the run id."""
    marker = run_id.encode()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    count += 1
            except OSError:
                continue
    return count


#: The lowest golden nonce of the default block at D = 30 (SPEC): the answer the timed search finds.
D30_ANSWER = 346_714_796


@dataclass
class FleetFigures:
    """Start-up, rate and stop figures of one provider's fleet, and its D=30 search's wall times
    (seconds from the launch's start)."""

    kernel: str
    hosts: int
    launch_to_reachable: float
    reachable_to_running: float
    rate: float
    checked: int
    found_to_no_worker: Optional[float]
    found_to_released: float
    first_joined: float
    all_joined: float
    answer_at: float
    released_at: float
    nonce: Optional[int]


def fleet_figures(provider: Provider, count: int, seconds: float, payload: WorkerPayload) -> FleetFigures:
    """One search that finds the D=30 answer, then one timed search (nothing to find), on
    `provider`'s hosts."""
    gone: List[float] = []
    # Started early where that is free (local workers), as a search's are.
    with launched(provider, count, details={"purpose": "benchmark"}, payload=payload) as run:
        # D = 30 on the default block: seconds of work, so every host joins before the answer
        # settles, and the wall time from the launch's start compares providers whole.
        found = FleetSearch(
            Problem(BLOCK, 4, 30), UnitSpace(4, 1024), run.hosts, run.run_id, payload=payload, started=run.started
        )
        answer = found.run()
        run.outcome = answer.status
        assert found.finished_at is not None

        def watch() -> None:
            while _processes_of(run.run_id):
                time.sleep(0.002)
            gone.append(time.monotonic())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    released = time.monotonic()
    watcher.join(10)
    joined = sorted(host["joined_at"] for host in found.joblog.hosts.values() if host["joined_at"] is not None)
    all_joined = joined[-1] if len(joined) == count else float("nan")

    # The timed search runs `seconds` once its hosts are up: it allows them as long to start
    # as the D=30 search's took, and a second more. (A fleet of 48 containers on two cores
    # takes some 14 s; a fixed `seconds` from the launch would measure nothing.)
    grace = 1.0 + (all_joined if len(joined) == count else found.finished_at - run.started)
    outcome, fleet, measured = measuring_search(provider, count, seconds, payload, grace=grace)
    began = measured.started
    reachable = max(host.reachable_at or began for host in measured.hosts)
    running = max(view.running_at or reachable for view in outcome.hosts)
    assert fleet.finished_at is not None
    rate = outcome.checked / (fleet.finished_at - reachable)
    return FleetFigures(
        kernel=outcome.hosts[0].kernel,
        hosts=count,
        launch_to_reachable=reachable - began,
        reachable_to_running=running - reachable,
        rate=rate,
        checked=outcome.checked,
        found_to_no_worker=gone[0] - found.finished_at if gone else None,
        found_to_released=released - found.finished_at,
        first_joined=joined[0] if joined else float("nan"),
        all_joined=all_joined,
        answer_at=found.finished_at - run.started,
        released_at=released - run.started,
        nonce=answer.golden.nonce if answer.golden else None,
    )


def run_fleet(provider: Provider, count: int, seconds: float, kernel: str) -> int:
    """Fleet figures for `provider` next to the local provider's."""
    console = Console(width=160)
    console.print(f"cnd-fab bench: {count} {provider.name} host(s) against the local provider, {seconds:g}s searches")
    payload = native_payload(provider.architectures()) if kernel != "python" else WorkerPayload(kernel="python")
    local = fleet_figures(LocalProvider(), 1, seconds, payload)
    fleet = fleet_figures(provider, count, seconds, payload)
    table = Table(title="fleet figures")
    for column in ("provider", "kernel", "hosts", "launch to reachable", "reachable to a unit on every host", "rate", "vs local", "found to no worker process", "found to hosts released"):
        table.add_column(column, justify="right")
    for name, figures in (("local", local), (provider.name, fleet)):
        table.add_row(
            name,
            figures.kernel,
            str(figures.hosts),
            f"{figures.launch_to_reachable:.2f}s",
            f"{figures.reachable_to_running:.2f}s",
            human_rate(figures.rate),
            f"{figures.rate / local.rate:.1%}",
            "-" if figures.found_to_no_worker is None else f"{figures.found_to_no_worker:.2f}s",
            f"{figures.found_to_released:.2f}s",
        )
    console.print(table)
    wall = Table(title=f"a D=30 search of the default block (answer {D30_ANSWER:,}), seconds from the launch's start")
    for column in (
        "provider", "hosts", "first host joined", "every host joined", "answer settled", "hosts released",
        "answer vs local", "released vs local",
    ):
        wall.add_column(column, justify="right")
    for name, figures in (("local", local), (provider.name, fleet)):
        wall.add_row(
            name,
            str(figures.hosts),
            f"{figures.first_joined:.2f}s",
            f"{figures.all_joined:.2f}s",
            f"{figures.answer_at:.2f}s",
            f"{figures.released_at:.2f}s",
            f"{figures.answer_at / local.answer_at:.2f}×",
            f"{figures.released_at / local.released_at:.2f}×",
        )
    console.print(wall)
    for name, figures in (("local", local), (provider.name, fleet)):
        if figures.nonce != D30_ANSWER:
            console.print(f"warning: the {name} search answered {figures.nonce}, not {D30_ANSWER:,}", highlight=False)
    return 0


def native_rate(binary: Path, path: str, processes: int, nonces: int) -> float:
    """Total nonces/s of `processes` kernel processes, each scanning `nonces` fresh nonces."""
    import subprocess

    began = time.perf_counter()
    children = [
        subprocess.Popen(
            [str(binary), "--path", path, "--once", BLOCK.hex(), "4", str(NEVER_GOLDEN), str(index * nonces), str((index + 1) * nonces)],
            stdout=subprocess.DEVNULL,
        )
        for index in range(processes)
    ]
    for child in children:
        child.wait()
    return processes * nonces / (time.perf_counter() - began)


# Per-core ratios between two native paths that issue 13 asks for, and its targets: the
# six-lane SHA-NI loop against the two-lane one, and AVX2 (for x86-64 CPUs without SHA
# extensions) against plain C.
PATH_RATIOS = (("sha-ni", "sha-ni-2", 1.08), ("avx2", "portable", 3.0))
# Short runs per path in kernel_table, taken in turns with the other paths.
ROUNDS = 5


def kernel_table(console: Console, cores: int, duration: float, python_one: float) -> Optional[float]:
    """Per-path rates with one process and with one per core, then the ratios between paths
    that PATH_RATIOS names; returns the best all-core rate. Each path runs for about
    2 * `duration` seconds in all."""
    import subprocess

    folder, problems = ensure_kernels((machine_architecture(),))
    for problem in problems:
        console.print(f"warning: {problem}")
    binary = None if folder is None else folder / f"sha256d-{machine_architecture()}"
    if binary is None or not binary.exists():
        return None
    paths = subprocess.run([str(binary), "--paths"], capture_output=True, text=True).stdout.split()
    table = Table(title="native kernel (remote/kernel/sha256d.c)")
    for column in ("path", "1 process", f"{cores} processes", "per core", "scaling 1→" + str(cores), "vs pure Python"):
        table.add_column(column, justify="right")
    # The paths take turns, ROUNDS short runs each, and each figure is a path's best run: on a
    # shared machine, load from elsewhere then lowers every path alike (or none), instead of
    # whichever path it happened to land on, and the ratios between paths stay meaningful.
    sizes = {path: max(1 << 20, int(native_rate(binary, path, 1, 1 << 20) * duration / ROUNDS)) for path in paths}
    ones = dict.fromkeys(paths, 0.0)
    everies = dict.fromkeys(paths, 0.0)
    for _ in range(ROUNDS):
        for path in paths:
            ones[path] = max(ones[path], native_rate(binary, path, 1, sizes[path]))
            everies[path] = max(everies[path], native_rate(binary, path, cores, sizes[path]))
    per_core = {path: everies[path] / cores for path in paths}
    for path in paths:
        one, every = ones[path], everies[path]
        table.add_row(
            path,
            human_rate(one),
            human_rate(every),
            human_rate(every / cores),
            f"{every / (cores * one):.1%}",
            f"{one / python_one:.1f}×",
        )
    console.print(table)
    best = max(everies.values(), default=None)
    ratios = Table(title="path ratios, per core")
    for column in ("paths", "ratio", "target"):
        ratios.add_column(column, justify="right")
    for faster, slower, target in PATH_RATIOS:
        if faster in per_core and slower in per_core:
            ratios.add_row(f"{faster} ÷ {slower}", f"{per_core[faster] / per_core[slower]:.2f}", f"≥ {target:g}")
    if ratios.row_count:
        console.print(ratios)
    return best


def run(request: BenchRequest) -> int:
    """`fab bench`: print the figures for this machine, a fleet, or the start-up time."""
    if request.startup:
        from .startup_bench import startup_figures

        return startup_figures(Console(width=160))
    if request.checkpoints:
        from .resume_bench import checkpoint_figures

        return checkpoint_figures(Console(width=160), request.seconds)
    if request.simulate is not None:
        return simulated_figures(Console(width=160), request.simulate, request.host_rate, request.seconds)
    duration, hosts, choice = request.seconds, request.count, request.kernel
    if request.provider is not None and request.provider.name != LocalProvider.name:
        from .checks import open_provider

        provider, hosts = open_provider(request.provider, hosts)
        return run_fleet(provider, hosts, duration * 4, choice)
    cores = worker.effective_cores()
    console = Console(width=160)
    console.print(f"cnd-fab bench: {cores} cores, {duration:g}s per measurement")

    one = kernel_rate(1, duration)
    every = kernel_rate(cores, duration)
    scan = Table(title="worker scan (pure Python, hashlib)")
    for column in ("processes", "total", "per core", "scaling"):
        scan.add_column(column, justify="right")
    scan.add_row("1", human_rate(one), human_rate(one), "1.00")
    scan.add_row(str(cores), human_rate(every), human_rate(every / cores), f"{every / (cores * one):.2f}")
    console.print(scan)
    native_best = kernel_table(console, cores, duration, one) if choice == "auto" else None
    raw = native_best or every
    payload = native_payload() if native_best else WorkerPayload(kernel="python")

    unit_nonces = UnitSpace(4, 1024).unit_size
    modes = Table(title=f"worker modes ({cores} cores, units of {unit_nonces:,} nonces, pure Python)")
    for column in ("mode", "steady rate", "vs raw", "unit 0 settled after"):
        modes.add_column(column, justify="right")
    figures = [worker_mode_rate(mode, cores, duration * 2, unit_nonces) for mode in (worker.SPLIT, worker.WHOLE)]
    for figure in figures:
        modes.add_row(
            figure.mode,
            human_rate(figure.rate),
            f"{figure.rate / every:.1%}",
            f"{figure.first_unit_seconds:.2f}s",
        )
    console.print(modes)

    end = Table(title=f"end-to-end search (local provider, {hosts} host(s), scheduler and protocol included)")
    for column in ("units", "kernel", "wall time", "checked", "rate", "vs raw all-core rate", "vs default units",
                   "grants", "launch to first unit"):
        end.add_column(column, justify="right")
    default_rate = 0.0
    for label, space in UNIT_SPACES:
        e2e = end_to_end_rate(hosts, duration * 4, payload, space)
        default_rate = default_rate or e2e["wall_rate"]
        end.add_row(
            label,
            str(e2e["kernel"]),
            f"{e2e['seconds']:.1f}s",
            f"{int(e2e['checked']):,}",
            human_rate(e2e["wall_rate"]),
            f"{e2e['wall_rate'] / raw:.1%}",
            f"{e2e['wall_rate'] / default_rate:.1%}",
            f"{e2e['grants']:,}",
            f"{e2e['startup']:.2f}s",
        )
    console.print(end)
    return 0


def simulated_figures(console: Console, hosts: int, host_rate: float, seconds: float) -> int:
    """`fab bench --simulate N --host-rate R`: the controller against simulated hosts (simulate.py),
    for N and, to show the growth, a tenth and ten times N."""
    from .simulate import simulate

    table = Table(title=f"simulated fleet: the real controller, hosts hashing {human_rate(host_rate)} each")
    for column in ("hosts", "search", "controller CPU", "per second of search", "idle until found",
                   "idle until settled", "settled to last STOP", "grants"):
        table.add_column(column, justify="right")
    for count in sorted({max(1, hosts // 10), hosts, hosts * 10}):
        figures = simulate(count, host_rate, seconds)
        table.add_row(
            f"{count:,}",
            f"{figures.seconds:.1f}s ({figures.status})",
            f"{figures.controller_cpu:.2f}s",
            f"{figures.controller_cores:.3f} cores",
            f"{figures.idle_until_found:.2%}",
            f"{figures.idle_until_settled:.2%}",
            f"{figures.stop_spread * 1000:.0f} ms",
            f"{figures.grants:,}",
        )
    console.print(table)
    return 0
