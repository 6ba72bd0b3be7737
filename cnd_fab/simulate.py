"""`fab bench --simulate N --host-rate R`: the real controller against N simulated hosts.

The fleet loop, scheduler, sessions (one reader and one writer thread each), codec and line
framing are the real ones; only the workers are simulated. Each simulated worker follows the
protocol exactly: HELLO, a PROGRESS every heartbeat the controller asks for, one DONE per grant, FOUND and
CANCEL and STOP as a real worker answers them. It "hashes" R nonces a second by waiting for
the time a grant would take, on one clock thread shared by every host, so the figures measure
the controller and not the simulation.

The run searches an 8-byte space at a low difficulty with a golden nonce planted where the
fleet reaches it after about `seconds`: the lowest nonce at or above that point that is truly
golden (found with hashlib here), so the controller's own check of its hash passes. The
simulated hosts report no golden nonce below it, which the controller cannot tell from a real
search. This measures speed, not correctness.
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from remote import worker

from .spec import Problem, UnitSpace, default_units
from .transport import Host, WorkerChannel, WorkerPayload

#: Low enough that a golden nonce is found with hashlib in milliseconds.
PLANTED_DIFFICULTY = 12
SIMULATED_CORES = 8


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
class SimulatedWorker:
    """One host's worker: its grants in order, its hash count, what it has told the controller."""

    name: str
    rate: float
    unit_size: int
    golden: Tuple[int, str]
    channel: "SimulatedChannel"
    heartbeat: float
    grants: List[Grant] = field(default_factory=list)
    checked: int = 0
    #: When its cores worked on grants, and when it first got one (for the idle share).
    busy: List[Tuple[float, float]] = field(default_factory=list)
    first_work_at: Optional[float] = None
    stopped_at: Optional[float] = None
    cancel_above: int = (1 << 64) - 1

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
        self.busy.append((front.began, now))
        last = self.unit_of(nonce) if golden else front.last
        if golden:
            self.channel.say(worker.Found(unit=last, nonce=nonce, hash=digest))
        self.channel.say(
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
            self.busy.append((self.grants[0].began, now))  # the grant in progress was dropped whole
        self.grants = kept

    def progress(self, now: float, final: bool = False) -> worker.Progress:
        running = 0
        if self.grants and self.grants[0].began:
            running = int((now - self.grants[0].began) * self.rate)
            running = min(running, self.grants[0].end - self.grants[0].start)
        return worker.Progress(hashes=self.checked + running, units=tuple(g.first for g in self.grants), final=final)


class SimulatedChannel(WorkerChannel):
    """The line channel of one simulated worker: lines the controller writes go to the clock
    thread; lines the worker says go through a real pipe, read like any host's channel."""

    def __init__(self, clock: "SimulationClock", name: str) -> None:
        self.clock = clock
        self.name = name
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._read_end, False)
        self._closed = False
        # The clock thread says lines and closes on STOP; the controller closes when it lets go.
        self._lock = threading.Lock()

    def say(self, message: worker.ToController) -> None:
        with self._lock:
            if not self._closed:
                os.write(self._write_end, (worker.encode(message) + "\n").encode())

    def send_line(self, line: str) -> None:
        began = time.thread_time()
        message = worker.decode_to_worker(line)
        self.clock.post(self.name, message)
        self.clock.add_simulation_cpu(time.thread_time() - began)
        self.written_at = time.monotonic()

    def fileno(self) -> Optional[int]:
        return self._read_end

    def read_available(self, limit: int) -> Optional[bytes]:
        try:
            return os.read(self._read_end, limit)
        except BlockingIOError:
            return None

    def read_line(self, limit: int) -> str:
        raise NotImplementedError("read through fileno()")

    def close(self) -> None:
        """The worker's stdout ends: it has said its last line."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._write_end)

    def release(self) -> None:
        """Close the controller's end too, once the run is over."""
        self.close()
        os.close(self._read_end)


class SimulatedHost(Host):
    """A host whose worker is simulated."""

    setup_seconds = 60.0

    def __init__(self, clock: "SimulationClock", name: str) -> None:
        self.clock = clock
        self.name = name

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        self.reachable_at = time.monotonic()
        return self.clock.open(self.name, payload.heartbeat or worker.HEARTBEAT_SECONDS)

    def stop_worker(self) -> None:
        self.clock.post(self.name, worker.Stop())


class SimulationClock:
    """The one thread that runs every simulated worker: their grants' ends and heartbeats."""

    def __init__(self, rate: float, unit_size: int, golden: Tuple[int, str]) -> None:
        self.rate = rate
        self.unit_size = unit_size
        self.golden = golden
        self.workers: Dict[str, SimulatedWorker] = {}
        self._inbox: "queue.Queue[Tuple[str, Any]]" = queue.Queue()
        self._timers: List[Tuple[float, int, str, str]] = []
        self._sequence = itertools.count()
        self._cpu = 0.0
        self._cpu_lock = threading.Lock()
        self._done = threading.Event()
        self.found_at: Optional[float] = None
        self.thread = threading.Thread(target=self._run, name="simulation-clock", daemon=True)
        self.thread.start()

    def add_simulation_cpu(self, seconds: float) -> None:
        with self._cpu_lock:
            self._cpu += seconds

    @property
    def simulation_cpu(self) -> float:
        """CPU seconds spent simulating workers, on any thread: not the controller's."""
        with self._cpu_lock:
            return self._cpu

    def open(self, name: str, heartbeat: float) -> SimulatedChannel:
        channel = SimulatedChannel(self, name)
        self._inbox.put(("open", (name, channel, heartbeat)))
        return channel

    def post(self, name: str, message: Any) -> None:
        self._inbox.put((name, message))

    def close(self) -> None:
        self._done.set()
        self._inbox.put(("", None))
        self.thread.join(5.0)

    def _timer(self, when: float, name: str, what: str) -> None:
        heapq.heappush(self._timers, (when, next(self._sequence), name, what))

    def _run(self) -> None:
        while not self._done.is_set():
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 0.5
            try:
                name, message = self._inbox.get(timeout=timeout)
                began = time.thread_time()
                self._handle(name, message)
                self.add_simulation_cpu(time.thread_time() - began)
            except queue.Empty:
                pass
            began = time.thread_time()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, name, what = heapq.heappop(self._timers)
                self._fire(name, what, now)
            self.add_simulation_cpu(time.thread_time() - began)

    def _handle(self, name: str, message: Any) -> None:
        now = time.monotonic()
        if name == "open":
            host, channel, heartbeat = message
            self.workers[host] = SimulatedWorker(host, self.rate, self.unit_size, self.golden, channel, heartbeat)
            channel.say(
                worker.Hello(
                    version=worker.PROTOCOL_VERSION, cores=SIMULATED_CORES, kernel="simulated", kernel_note=None,
                    mode=worker.SPLIT, prefetch=3, pid=os.getpid(), pgid=os.getpgid(0), python="simulated", host=host,
                )
            )
            self._timer(now + heartbeat, host, "beat")
            return
        found = self.workers.get(name)
        if found is None or found.stopped_at is not None:
            return
        simulated = found
        if isinstance(message, worker.Work):
            if message.unit > simulated.cancel_above:
                return
            simulated.grants.append(Grant(message.unit, message.unit + message.units - 1, message.start, message.end))
            if simulated.first_work_at is None:
                simulated.first_work_at = now
        elif isinstance(message, worker.Cancel):
            simulated.cancel(message.above, now)
        elif isinstance(message, worker.Stop):
            simulated.stopped_at = now
            if simulated.grants and simulated.grants[0].began:
                simulated.busy.append((simulated.grants[0].began, now))
            simulated.channel.say(simulated.progress(now, final=True))
            simulated.channel.close()
            return
        self._advance(simulated, now)

    def _advance(self, simulated: SimulatedWorker, now: float) -> None:
        finish_at = simulated.schedule_front(now)
        if finish_at is not None:
            self._timer(finish_at, simulated.name, "finish")

    def _fire(self, name: str, what: str, now: float) -> None:
        simulated = self.workers[name]
        if simulated.stopped_at is not None:
            return
        if what == "beat":
            simulated.channel.say(simulated.progress(now))
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
    clock = SimulationClock(host_rate, space.unit_size, golden)
    fleet_hosts: List[Host] = [SimulatedHost(clock, f"sim-{index + 1}") for index in range(hosts)]
    # A controller that cannot keep up still ends, its status then "timeout".
    deadline = time.monotonic() + 10 * seconds + 60
    fleet = FleetSearch(Problem(block, 8, PLANTED_DIFFICULTY), space, fleet_hosts, "simulation", deadline=deadline)
    cpu_before, simulated_before = time.process_time(), clock.simulation_cpu
    started = time.monotonic()
    try:
        outcome = fleet.run()
    finally:
        cpu_after, simulated_after = time.process_time(), clock.simulation_cpu
        time.sleep(0.2)  # the last STOPs reach the clock thread
        clock.close()
        for simulated in clock.workers.values():
            simulated.channel.release()
    settled = fleet.finished_at or time.monotonic()
    workers = list(clock.workers.values())
    stops = [w.stopped_at for w in workers if w.stopped_at is not None]
    found = clock.found_at or settled

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
        controller_cpu=(cpu_after - cpu_before) - (simulated_after - simulated_before),
        idle_until_found=idle_share(found),
        idle_until_settled=idle_share(settled),
        stop_spread=(max(stops) - settled) if stops else float("nan"),
        grants=fleet.traffic.grants_sent,
        status=outcome.status,
    )
