"""`fab bench --simulate N --host-rate R`: the real controller against N simulated hosts.

The fleet loop, scheduler, sessions, codec and line framing are the real ones; only the
workers are simulated, and in a process of their own, so that neither their CPU nor their
threads weigh on the controller's process, whose CPU is what the figures give. Each simulated
worker follows the protocol exactly: HELLO, a PROGRESS every heartbeat the controller asks
for, one DONE per grant, FOUND and CANCEL and STOP as a real worker answers them. It "hashes"
R nonces a second by waiting for the time a grant would take. Each host's lines come through
a pipe of its own, read by the controller like any host's channel; what the controller sends
goes to the simulation through one shared pipe.

The run searches an 8-byte space at a low difficulty with a golden nonce planted where the
fleet reaches it after about `seconds`: the lowest nonce at or above that point that is truly
golden (found with hashlib here), so the controller's own check of its hash passes. The
simulated hosts report no golden nonce below it, which the controller cannot tell from a real
search. This measures speed, not correctness.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import select
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from remote import worker

from .checks import SPARE_FILES, ensure_open_files
from .errors import CndError
from .spec import Problem, UnitSpace, default_units
from .transport import Host, WorkerChannel, WorkerPayload, read_ready

#: Low enough that a golden nonce is found with hashlib in milliseconds.
PLANTED_DIFFICULTY = 12
SIMULATED_CORES = 8
#: How long a command waits for room in the simulation's pipe before it counts as stuck.
COMMAND_SECONDS = 10.0
#: Pipe ends handed from the simulation to the controller in one message (SCM_MAX_FD is 253).
HANDOVER_BATCH = 200


def planted_golden(block: bytes, difficulty: int, nonce_bytes: int, at_least: int) -> Tuple[int, str]:
    """The lowest golden nonce at or above `at_least`, and its hash (hex)."""
    target = worker.golden_target(difficulty)
    for nonce in itertools.count(at_least):
        digest = worker.double_sha256(block, nonce_bytes, nonce)
        if digest < target:
            return nonce, digest.hex()
    raise AssertionError("unreachable")


@dataclass
class Grant:
    """One WORK as the simulated worker holds it."""

    first: int
    last: int
    start: int
    end: int
    began: float = 0.0
    #: When the simulated cores finish it (or reach the golden nonce in it).
    finish_at: float = 0.0

    def stop(self, golden: int) -> int:
        """Where its scan ends: just past `golden` if the grant holds it, else at its end."""
        return golden + 1 if self.start <= golden < self.end else self.end


@dataclass
class WorkerTimes:
    """What one simulated worker's cores did, for the idle share."""

    #: When its cores worked on grants, and when it first got one.
    busy: List[Tuple[float, float]] = field(default_factory=list)
    first_work_at: Optional[float] = None
    stopped_at: Optional[float] = None


@dataclass
class SimulatedWorker:
    """One host's worker: its grants in order, its hash count, what it has told the controller."""

    name: str
    rate: float
    unit_size: int
    golden: Tuple[int, str]
    stdout: int
    heartbeat: float
    grants: List[Grant] = field(default_factory=list)
    checked: int = 0
    times: WorkerTimes = field(default_factory=WorkerTimes)
    cancel_above: int = (1 << 64) - 1
    closed: bool = False

    def say(self, message: worker.ToController) -> None:
        """One protocol line on its stdout (the controller's end of the pipe reads it)."""
        if not self.closed:
            os.write(self.stdout, (worker.encode(message) + "\n").encode())

    def close(self) -> None:
        """Its stdout ends: the worker exited."""
        if not self.closed:
            self.closed = True
            os.close(self.stdout)

    def unit_of(self, nonce: int) -> int:
        return nonce // self.unit_size

    def schedule_front(self, now: float) -> Optional[float]:
        """Start the first grant if the cores are free; when it finishes, or None if idle."""
        if not self.grants:
            return None
        front = self.grants[0]
        if front.began == 0.0:
            front.began = now
            front.finish_at = now + (front.stop(self.golden[0]) - front.start) / self.rate
        return front.finish_at

    def finish_front(self, now: float) -> None:
        """The first grant is done: DONE for it (with FOUND first if it holds the golden nonce)."""
        front = self.grants.pop(0)
        nonce, digest = self.golden
        golden = front.start <= nonce < front.end
        stop = front.stop(nonce)
        self.checked += stop - front.start
        self.times.busy.append((front.began, now))
        last = self.unit_of(nonce) if golden else front.last
        if golden:
            self.say(worker.Found(unit=last, nonce=nonce, hash=digest))
        self.say(
            worker.Done(
                unit=front.first,
                hashes=stop - front.start,
                seconds=round(now - front.began, 6),
                nonce=nonce if golden else None,
                hash=digest if golden else None,
                units=last - front.first + 1,
            )
        )

    def cancel(self, above: int, now: float) -> None:
        """Drop every unit above `above`: whole grants, and the top of a grant in progress."""
        self.cancel_above = min(self.cancel_above, above)
        bound = (above + 1) * self.unit_size
        kept: List[Grant] = []
        for grant in self.grants:
            if grant.first > above:
                continue
            if grant.last > above:
                grant.last, grant.end = above, bound
                if grant.began:
                    grant.finish_at = min(grant.finish_at, grant.began + (bound - grant.start) / self.rate)
            kept.append(grant)
        if self.grants and self.grants[0].began and (not kept or kept[0] is not self.grants[0]):
            self.times.busy.append((self.grants[0].began, now))  # the grant in progress was dropped whole
        self.grants = kept

    def stop(self, now: float) -> None:
        """Its cores stop: what was under way counts as busy until now."""
        self.times.stopped_at = now
        if self.grants and self.grants[0].began:
            self.times.busy.append((self.grants[0].began, now))
        self.grants = []

    def progress(self, now: float, final: bool = False) -> worker.Progress:
        running = 0
        if self.grants and self.grants[0].began:
            running = int((now - self.grants[0].began) * self.rate)
            running = min(running, self.grants[0].end - self.grants[0].start)
        return worker.Progress(hashes=self.checked + running, units=tuple(g.first for g in self.grants), final=final)


class SimulatedChannel(WorkerChannel):
    """The controller's end of one simulated worker: its own pipe to read, the shared one to write."""

    sends_without_blocking = True
    closes_without_blocking = True

    def __init__(self, fleet: "SimulatedFleet", name: str, stdout: int) -> None:
        self.fleet = fleet
        self.name = name
        self.stdout = stdout
        self._line_command = f"{name}\tline\t".encode()

    def send_line(self, line: str) -> None:
        if not self.fleet.command(self.name, "line", line):
            raise OSError(f"the simulated hosts took no line for {COMMAND_SECONDS:g}s")
        self.written_at = time.monotonic()

    def send_nowait(self, data: bytes) -> int:
        # The loop writes whole lines (each ends in a newline), so the command is its bytes.
        if not self.fleet.write_command(self._line_command + data, wait=0):
            return 0
        self.written_at = time.monotonic()
        return len(data)

    def fileno(self) -> Optional[int]:
        return self.stdout

    def read_available(self, limit: int) -> Optional[bytes]:
        return read_ready(self.stdout, limit)

    def read_line(self, limit: int) -> str:
        raise NotImplementedError("read through fileno()")

    def close(self) -> None:
        """Close the worker's stdin: it exits, and its stdout ends. Only tried now: when the
        command pipe is full, the simulation's end stops this worker with the others."""
        self.fleet.command(self.name, "close", wait=0)


class SimulatedHost(Host):
    """A host whose worker is simulated."""

    setup_seconds = 60.0

    def __init__(self, fleet: "SimulatedFleet", name: str) -> None:
        self.fleet = fleet
        self.name = name

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        self.reachable_at = time.monotonic()
        if not self.fleet.command(self.name, "open", f"{payload.heartbeat or worker.HEARTBEAT_SECONDS:g}"):
            raise CndError(f"{self.name}: the simulated hosts took no command for {COMMAND_SECONDS:g}s")
        return SimulatedChannel(self.fleet, self.name, self.fleet.stdouts[self.name])

    def stop_worker(self) -> None:
        self.fleet.command(self.name, "kill")


class SimulatedFleet:
    """The controller's side of the simulated hosts: the process that runs them, a pipe per
    host for what its worker says, and one shared pipe for what the controller sends."""

    def __init__(self, names: List[str], rate: float, unit_size: int, golden: Tuple[int, str]) -> None:
        ensure_open_files(len(names) + SPARE_FILES, f"a simulated fleet of {len(names):,} hosts")
        commands_read, self._commands = os.pipe()
        os.set_blocking(self._commands, False)
        handover, handover_end = socket.socketpair()
        context = multiprocessing.get_context("fork")
        self._results, results_end = context.Pipe(duplex=False)
        self.process = context.Process(
            target=run_simulated_hosts,
            args=(names, rate, unit_size, golden, commands_read, handover_end, results_end),
            name="simulated-hosts",
            daemon=True,
        )
        self.process.start()
        os.close(commands_read)
        results_end.close()
        handover_end.close()
        # The simulation makes each host's pipe and hands its read end over, so that neither
        # process holds both ends of ten thousand pipes.
        self.stdouts: Dict[str, int] = {}
        with handover:
            handover.settimeout(60.0)
            for batch in range(0, len(names), HANDOVER_BATCH):
                wanted = names[batch : batch + HANDOVER_BATCH]
                _, descriptors, _, _ = socket.recv_fds(handover, 1, len(wanted))
                if len(descriptors) != len(wanted):
                    raise CndError("the simulated hosts could not be started")
                for name, read_end in zip(wanted, descriptors):
                    os.set_blocking(read_end, False)
                    self.stdouts[name] = read_end
        self._lock = threading.Lock()

    def command(self, name: str, kind: str, text: str = "", wait: float = COMMAND_SECONDS) -> bool:
        """Tell the simulation about host `name`: open, line (what the controller wrote), close,
        kill. Returns False when its pipe had no room within `wait` seconds (0: only now)."""
        return self.write_command(f"{name}\t{kind}\t{text}\n".encode(), wait)

    def write_command(self, data: bytes, wait: float = COMMAND_SECONDS) -> bool:
        """Write one command line (see command())."""
        # One write of at most PIPE_BUF bytes goes into a pipe whole or not at all, so hosts'
        # commands never interleave in the one pipe they share.
        assert len(data) <= select.PIPE_BUF, "the simulation's lines are short"
        give_up = time.monotonic() + wait
        while True:
            with self._lock:
                if self._commands < 0:
                    return True  # the simulation is over: nothing is listening
                try:
                    os.write(self._commands, data)
                    return True
                except BlockingIOError:
                    pass
            if time.monotonic() >= give_up:
                return False
            time.sleep(0.001)

    def finish(self) -> Tuple[Dict[str, WorkerTimes], Optional[float]]:
        """End the simulation: each worker's times, and when the golden nonce was reached."""
        self.command("", "end")
        results: Tuple[Dict[str, WorkerTimes], Optional[float]] = ({}, None)
        if self._results.poll(30.0):
            results = self._results.recv()
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
        with self._lock:
            os.close(self._commands)
            self._commands = -1
        for read_end in self.stdouts.values():
            os.close(read_end)
        self._results.close()
        return results


def run_simulated_hosts(
    names: List[str], rate: float, unit_size: int, golden: Tuple[int, str], commands: int, handover: socket.socket,
    results: Any,
) -> None:
    """The simulation process: makes every host's pipe, then runs every simulated worker on one
    clock until "end"."""
    ensure_open_files(len(names) + SPARE_FILES, f"a simulated fleet of {len(names):,} hosts")
    stdouts: Dict[str, int] = {}
    with handover:
        for batch in range(0, len(names), HANDOVER_BATCH):
            read_ends = []
            for name in names[batch : batch + HANDOVER_BATCH]:
                read_end, stdouts[name] = os.pipe()
                read_ends.append(read_end)
            socket.send_fds(handover, [b"."], read_ends)
            for read_end in read_ends:
                os.close(read_end)
    clock = SimulationClock(rate, unit_size, golden, stdouts)
    clock.run(commands)
    results.send(({name: simulated.times for name, simulated in clock.workers.items()}, clock.found_at))
    results.close()


class SimulationClock:
    """Runs every simulated worker: the controller's commands, their grants' ends, heartbeats."""

    def __init__(self, rate: float, unit_size: int, golden: Tuple[int, str], stdouts: Dict[str, int]) -> None:
        self.rate = rate
        self.unit_size = unit_size
        self.golden = golden
        self.stdouts = stdouts
        self.workers: Dict[str, SimulatedWorker] = {}
        self._timers: List[Tuple[float, int, str, str]] = []
        self._sequence = itertools.count()
        self.found_at: Optional[float] = None

    def run(self, commands: int) -> None:
        selector = selectors.DefaultSelector()
        selector.register(commands, selectors.EVENT_READ)
        pending = b""
        while True:
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 0.5
            if selector.select(timeout):
                data = os.read(commands, 1 << 16)
                if not data:
                    return
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    name, kind, text = line.decode().split("\t", 2)
                    if kind == "end":
                        return
                    self._command(name, kind, text)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, name, what = heapq.heappop(self._timers)
                self._fire(name, what, now)

    def _timer(self, when: float, name: str, what: str) -> None:
        heapq.heappush(self._timers, (when, next(self._sequence), name, what))

    def _command(self, name: str, kind: str, text: str) -> None:
        now = time.monotonic()
        if kind == "open":
            simulated = SimulatedWorker(name, self.rate, self.unit_size, self.golden, self.stdouts[name], float(text))
            self.workers[name] = simulated
            simulated.say(
                worker.Hello(
                    version=worker.PROTOCOL_VERSION, cores=SIMULATED_CORES, kernel="simulated", kernel_note=None,
                    mode=worker.SPLIT, prefetch=3, pid=os.getpid(), pgid=os.getpgid(0), python="simulated", host=name,
                )
            )
            self._timer(now + simulated.heartbeat, name, "beat")
            return
        found = self.workers.get(name)
        if found is None or found.closed:
            return
        simulated = found
        if kind in ("close", "kill"):
            simulated.stop(now)
            simulated.close()
            return
        message = worker.decode_to_worker(text)
        if isinstance(message, worker.Work):
            if message.unit > simulated.cancel_above:
                return
            simulated.grants.append(Grant(message.unit, message.unit + message.units - 1, message.start, message.end))
            if simulated.times.first_work_at is None:
                simulated.times.first_work_at = now
        elif isinstance(message, worker.Cancel):
            simulated.cancel(message.above, now)
        elif isinstance(message, worker.Stop):
            simulated.stop(now)
            simulated.say(simulated.progress(now, final=True))
            simulated.close()
            return
        self._advance(simulated, now)

    def _advance(self, simulated: SimulatedWorker, now: float) -> None:
        finish_at = simulated.schedule_front(now)
        if finish_at is not None:
            self._timer(finish_at, simulated.name, "finish")

    def _fire(self, name: str, what: str, now: float) -> None:
        simulated = self.workers[name]
        if simulated.closed:
            return
        if what == "beat":
            simulated.say(simulated.progress(now))
            self._timer(now + simulated.heartbeat, name, "beat")
        elif simulated.grants and simulated.grants[0].began and simulated.grants[0].finish_at <= now:
            nonce = self.golden[0]
            front = simulated.grants[0]
            if front.start <= nonce < front.end and self.found_at is None:
                self.found_at = now
            simulated.finish_front(now)
            self._advance(simulated, now)


@dataclass(frozen=True)
class SimulationFigures:
    """What one simulated search measured."""

    hosts: int
    host_rate: float
    seconds: float
    controller_cpu: float
    idle_until_found: float
    idle_until_settled: float
    stop_spread: float
    grants: int
    status: str

    @property
    def controller_cores(self) -> float:
        """Controller CPU seconds per second of search."""
        return self.controller_cpu / self.seconds if self.seconds else 0.0


def simulate(hosts: int, host_rate: float, seconds: float) -> SimulationFigures:
    """Run one search over `hosts` simulated hosts of `host_rate` nonces a second, with the
    golden nonce planted about `seconds` of fleet work in."""
    from .fleet import FleetSearch

    space = UnitSpace(8, default_units(8))
    block = b"COMSM0010cloud"
    golden = planted_golden(block, PLANTED_DIFFICULTY, 8, int(hosts * host_rate * seconds))
    names = [f"sim-{index + 1}" for index in range(hosts)]
    simulation = SimulatedFleet(names, host_rate, space.unit_size, golden)
    fleet_hosts: List[Host] = [SimulatedHost(simulation, name) for name in names]
    # A controller that cannot keep up still ends, its status then "timeout".
    deadline = time.monotonic() + 10 * seconds + 60
    try:
        fleet = FleetSearch(Problem(block, 8, PLANTED_DIFFICULTY), space, fleet_hosts, "simulation", deadline=deadline)
        cpu_before = time.process_time()
        started = time.monotonic()
        outcome = fleet.run()
        cpu_after = time.process_time()
        time.sleep(0.2)  # the last STOPs reach the simulation
    finally:
        times, found_at = simulation.finish()
    settled = fleet.finished_at or time.monotonic()
    workers = list(times.values())
    stops = [w.stopped_at for w in workers if w.stopped_at is not None]
    found = found_at or settled

    def idle_share(until: float) -> float:
        spans = busy = 0.0
        for w in workers:
            if w.first_work_at is None or w.first_work_at >= until:
                continue
            spans += until - w.first_work_at
            busy += sum(max(0.0, min(end, until) - began) for began, end in w.busy)
        return 1 - busy / spans if spans else 0.0

    return SimulationFigures(
        hosts=hosts,
        host_rate=host_rate,
        seconds=settled - started,
        controller_cpu=cpu_after - cpu_before,
        idle_until_found=idle_share(found),
        idle_until_settled=idle_share(settled),
        stop_spread=(max(stops) - settled) if stops else float("nan"),
        grants=fleet.traffic.grants_sent,
        status=outcome.status,
    )
