"""Runs one search over a fleet: a reader thread per host, one loop that owns all state.

Concurrency: each host has a thread that starts its worker (which may mean a slow SSH
connect) and then only reads lines, putting them on one queue. The loop below is the only
code that touches the scheduler, sends units or decides a host is lost, so no state is
shared between threads except that queue and the stop event.

A host is lost when its worker reports ERROR, closes its stdout, fails a write, or sends
nothing (not even a PROGRESS heartbeat) for `heartbeat_timeout` seconds. The last one
catches a paused or partitioned host long before TCP would notice.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import CndError, FleetLostError, WorkerError
from .providers.base import Host
from .schedule import Golden, Scheduler
from .spec import Problem, UnitSpace
from .transport import WorkerChannel, WorkerPayload, protocol

STARTING = "starting"
READY = "ready"
LOST = "lost"
STOPPED = "stopped"

DEFAULT_HEARTBEAT_TIMEOUT = 8.0
HELLO_TIMEOUT = 30.0
# How long the end of a run waits for the workers' exact final hash counts.
FINAL_COUNT_WAIT = 0.5
RATE_SMOOTHING = 0.3

FOUND_STATUS = "found"
NONE_STATUS = "none"
TIMEOUT_STATUS = "timeout"
INTERRUPTED_STATUS = "interrupted"

_EOF = object()


@dataclass
class HostView:
    """What the display and the summary know of one host."""

    name: str
    state: str = STARTING
    cores: int = 0
    kernel: str = ""
    rate: float = 0.0
    units_done: int = 0
    hashes: int = 0
    last_heard: Optional[float] = None
    first_unit_at: Optional[float] = None
    running_at: Optional[float] = None
    error: str = ""


@dataclass
class Snapshot:
    """The state of the run at one moment, for the live display."""

    elapsed: float
    units_total: int
    units_done: int
    units_in_flight: int
    checked: int
    rate: float
    eta: Optional[float]
    hosts: List[HostView]
    candidate: Optional[Golden]
    reissued: int


@dataclass
class SearchOutcome:
    """How a search ended and what it established."""

    status: str
    golden: Optional[Golden]
    lowest: bool
    checked: int
    nonces_settled: int
    units_settled: int
    units_total: int
    seconds: float
    hosts: List[HostView]
    reissued: int
    first_found_wins: bool

    @property
    def rate(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else 0.0


class Reporter:
    """Receives the run's events and snapshots; the base class shows nothing.

    Used as a context manager around the run: start() and stop() bracket it.
    """

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def __enter__(self) -> "Reporter":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def event(self, text: str) -> None:
        pass

    def update(self, snapshot: Snapshot) -> None:
        pass


@dataclass
class _Session:
    host: Host
    view: HostView
    channel: Optional[WorkerChannel] = None
    prefetch: int = 2
    started_at: float = field(default_factory=time.monotonic)
    last_hashes: Tuple[float, int] = (0.0, 0)
    done_hashes: int = 0


class FleetSearch:
    """Drives the scheduler with real workers until the answer is settled or the run stops."""

    def __init__(
        self,
        problem: Problem,
        space: UnitSpace,
        hosts: List[Host],
        run_id: str,
        *,
        first_found_wins: bool = False,
        deadline: Optional[float] = None,
        stop: Optional[threading.Event] = None,
        reporter: Optional[Reporter] = None,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        on_lost: Optional[Callable[[Host], None]] = None,
        started: Optional[float] = None,
        payload: WorkerPayload = WorkerPayload(),
    ) -> None:
        self.payload = payload
        self.problem = problem
        self.space = space
        self.run_id = run_id
        self.scheduler = Scheduler(space, first_found_wins)
        self.deadline = deadline
        self.stop = stop or threading.Event()
        self.reporter = reporter or Reporter()
        self.heartbeat_timeout = heartbeat_timeout
        self.on_lost = on_lost
        self.sessions: Dict[str, _Session] = {
            host.name: _Session(host, HostView(host.name)) for host in hosts
        }
        self.events: "queue.Queue[Tuple[str, Any]]" = queue.Queue()
        # Wall time counts from the caller's start (the launch included), like the deadline.
        self.started = time.monotonic() if started is None else started
        self.candidate: Optional[Golden] = None
        self.finished_at: Optional[float] = None
        self._block_hex = problem.block.hex()

    # --- per-host threads --------------------------------------------------------------
    def _pump(self, session: _Session) -> None:
        name = session.host.name
        try:
            channel = session.host.start_worker(self.run_id, self.payload)
            session.started_at = time.monotonic()  # before the channel shows, for the HELLO deadline
            session.channel = channel
            self.events.put((name, "opened"))
            while True:
                line = channel.read_line()
                if not line:
                    self.events.put((name, _EOF))
                    return
                line = line.strip()
                if line:
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError(f"expected an object, got {line[:80]!r}")
                    self.events.put((name, message))
        except ValueError as error:
            self.events.put((name, WorkerError(f"worker sent a line that is not JSON: {error}")))
        except CndError as error:
            self.events.put((name, error))
        except Exception as error:  # anything else on a host's thread is that host's failure
            self.events.put((name, WorkerError(f"{type(error).__name__}: {error}")))

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        for session in self.sessions.values():
            threading.Thread(
                target=self._pump, args=(session,), name=f"host-{session.host.name}", daemon=True
            ).start()
        status = FOUND_STATUS
        last_update = 0.0
        try:
            while True:
                if self.stop.is_set():
                    status = INTERRUPTED_STATUS
                    break
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline:
                    status = TIMEOUT_STATUS
                    break
                wait = 0.1 if self.deadline is None else max(0.0, min(0.1, self.deadline - now))
                try:
                    name, message = self.events.get(timeout=wait)
                except queue.Empty:
                    pass
                else:
                    self._handle(name, message)
                    # Drain whatever else already arrived before redrawing.
                    while True:
                        try:
                            name, message = self.events.get_nowait()
                        except queue.Empty:
                            break
                        self._handle(name, message)
                self._check_silence()
                if self.scheduler.finished:
                    status = FOUND_STATUS if self.scheduler.best else NONE_STATUS
                    break
                if not any(s.view.state in (STARTING, READY) for s in self.sessions.values()):
                    reasons = "; ".join(s.view.error for s in self.sessions.values() if s.view.error)
                    raise FleetLostError(f"every host was lost before the search finished: {reasons}")
                if time.monotonic() - last_update >= 0.2:
                    self.reporter.update(self.snapshot())
                    last_update = time.monotonic()
        finally:
            self.finished_at = time.monotonic()
            self._stop_all()
        self.reporter.update(self.snapshot())
        return self._outcome(status)

    def _handle(self, name: str, message: Any) -> None:
        session = self.sessions[name]
        if session.view.state in (LOST, STOPPED):
            return
        if message == "opened":
            session.started_at = time.monotonic()
            return
        if message is _EOF:
            tail = session.channel.stderr_tail() if session.channel else ""
            self._lose(session, "the worker exited" + (f": {tail.splitlines()[-1]}" if tail else ""))
            return
        if isinstance(message, Exception):
            self._lose(session, str(message))
            return
        session.view.last_heard = time.monotonic()
        try:
            self._dispatch(session, message)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            self._lose(session, f"malformed message {str(message)[:200]}: {type(error).__name__}: {error}")

    def _dispatch(self, session: _Session, message: Dict[str, Any]) -> None:
        name = session.view.name
        kind = message.get("type")
        if kind == protocol.HELLO:
            self._hello(session, message)
        elif kind == protocol.PROGRESS:
            self._progress(session, int(message.get("hashes", 0)))
            if message.get("units") and session.view.running_at is None:
                session.view.running_at = time.monotonic()
        elif kind == protocol.FOUND:
            self._found(session, message)
        elif kind == protocol.DONE:
            self._done(session, message)
        elif kind == protocol.ERROR:
            self._lose(session, f"worker error: {message.get('message', 'unknown')}")
            if message.get("traceback"):
                self.reporter.event(f"[{name}] remote traceback:\n{message['traceback'].rstrip()}")
        else:
            self._lose(session, f"worker sent an unknown message type {kind!r}")

    def _hello(self, session: _Session, message: Dict[str, Any]) -> None:
        version = message.get("version")
        if version != protocol.PROTOCOL_VERSION:
            self._lose(
                session,
                f"worker speaks protocol {version}, this controller speaks {protocol.PROTOCOL_VERSION}",
            )
            return
        view = session.view
        view.state = READY
        view.cores = int(message.get("cores", 1))
        view.kernel = str(message.get("kernel", "?"))
        session.prefetch = max(1, int(message.get("prefetch", 2)))
        self.scheduler.add_host(view.name)
        note = message.get("kernel_note")
        self.reporter.event(
            f"{view.name} joined: {view.cores} cores, kernel {view.kernel}" + (f" ({note})" if note else "")
        )
        self._fill(session)

    def _progress(self, session: _Session, hashes: int) -> None:
        now = time.monotonic()
        then, before = session.last_hashes
        if then and now > then and hashes >= before:
            instant = (hashes - before) / (now - then)
            view = session.view
            view.rate = instant if view.rate == 0 else (
                RATE_SMOOTHING * instant + (1 - RATE_SMOOTHING) * view.rate
            )
        session.last_hashes = (now, hashes)
        session.view.hashes = max(session.view.hashes, hashes)

    def _found(self, session: _Session, message: Dict[str, Any]) -> None:
        golden = Golden(int(message["unit"]), int(message["nonce"]), str(message["hash"]))
        if not self._verified(session, golden):
            return
        if self.candidate is None or golden.nonce < self.candidate.nonce:
            self.candidate = golden
            self.reporter.event(
                f"golden nonce {golden.nonce} found by {session.view.name} in unit {golden.unit}"
            )
        completion = self.scheduler.found(session.view.name, golden)
        if completion.accepted:
            self._cancel(completion.cancel_hosts, completion.above)

    def _done(self, session: _Session, message: Dict[str, Any]) -> None:
        index = int(message["unit"])
        golden = None
        if message.get("nonce") is not None:
            golden = Golden(index, int(message["nonce"]), str(message["hash"]))
            if not self._verified(session, golden):
                return
        completion = self.scheduler.complete(session.view.name, index, golden)
        if completion.accepted:
            session.view.units_done += 1
            session.done_hashes += int(message.get("hashes", 0))
            session.view.hashes = max(session.view.hashes, session.done_hashes)
            if completion.above is not None:
                self._cancel(completion.cancel_hosts, completion.above)
        for other in self.sessions.values():
            if other.view.state == READY:
                self._fill(other)

    def _verified(self, session: _Session, golden: Golden) -> bool:
        """Re-hash a reported golden nonce here: a wrong answer must never be printed."""
        unit = self.space.unit(golden.unit)
        digest = self.problem.hash(golden.nonce)
        if (
            unit.start <= golden.nonce < unit.end
            and digest.hex() == golden.hash
            and self.problem.is_golden(golden.nonce)
        ):
            return True
        self._lose(session, f"reported nonce {golden.nonce} as golden in unit {golden.unit}, but it is not")
        return False

    def _cancel(self, names: List[str], above: Optional[int]) -> None:
        if above is None:
            return
        line = json.dumps({"type": protocol.CANCEL, "above": above})
        for name in names:
            self._send(self.sessions[name], line)

    def _fill(self, session: _Session) -> None:
        name = session.view.name
        wanted = session.prefetch - len(self.scheduler.held_by(name))
        for unit in self.scheduler.take(name, wanted) if wanted > 0 else []:
            if session.view.first_unit_at is None:
                session.view.first_unit_at = time.monotonic()
            line = json.dumps(
                {
                    "type": protocol.WORK,
                    "unit": unit.index,
                    "start": unit.start,
                    "end": unit.end,
                    "block": self._block_hex,
                    "nonce_bytes": self.problem.nonce_bytes,
                    "difficulty": self.problem.difficulty,
                }
            )
            if not self._send(session, line):
                return

    def _send(self, session: _Session, line: str) -> bool:
        if session.channel is None or session.view.state != READY:
            return False
        try:
            session.channel.send_line(line)
            return True
        except (OSError, EOFError) as error:
            self._lose(session, f"write to the worker failed: {error}")
            return False

    def _check_silence(self) -> None:
        now = time.monotonic()
        for session in self.sessions.values():
            view = session.view
            if view.state == READY and view.last_heard is not None:
                if now - view.last_heard > self.heartbeat_timeout:
                    self._lose(session, f"silent for {now - view.last_heard:.1f}s (heartbeat deadline)")
            elif view.state == STARTING and session.channel is not None:
                if now - session.started_at > HELLO_TIMEOUT:
                    self._lose(session, f"no HELLO within {HELLO_TIMEOUT:.0f}s of starting the worker")

    def _lose(self, session: _Session, reason: str) -> None:
        view = session.view
        if view.state in (LOST, STOPPED):
            return
        view.state = LOST
        view.error = reason if reason.startswith(f"{view.name}:") else f"{view.name}: {reason}"
        view.rate = 0.0
        reissued = self.scheduler.host_lost(view.name)
        self.reporter.event(f"host lost: {view.error}")
        if reissued:
            self.reporter.event(f"units {', '.join(map(str, reissued))} reissued")
        # Killing a lost host's worker may block (a paused host answers nothing), so it
        # happens off the loop; release() at the end makes sure of it either way.
        if self.on_lost is not None:
            threading.Thread(target=self.on_lost, args=(session.host,), daemon=True).start()
        for other in self.sessions.values():
            if other.view.state == READY:
                self._fill(other)

    def _stop_all(self) -> None:
        """Send STOP everywhere, then wait briefly for each worker's final count."""
        stop_line = json.dumps({"type": protocol.STOP})
        waiting = set()
        for session in self.sessions.values():
            if session.view.state == READY and session.channel is not None:
                try:
                    session.channel.send_line(stop_line)
                    waiting.add(session.view.name)
                except (OSError, EOFError):
                    pass
            if session.view.state in (READY, STARTING):
                session.view.state = STOPPED
        deadline = time.monotonic() + FINAL_COUNT_WAIT
        while waiting and time.monotonic() < deadline:
            try:
                name, message = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if name not in waiting:
                continue
            if isinstance(message, dict) and message.get("type") == protocol.PROGRESS:
                self._progress(self.sessions[name], int(message.get("hashes", 0)))
                if message.get("final"):
                    waiting.discard(name)
            elif message is _EOF or isinstance(message, Exception):
                waiting.discard(name)
        for session in self.sessions.values():
            if session.channel is not None:
                session.channel.close()

    # --- views -------------------------------------------------------------------------
    def checked(self) -> int:
        return sum(session.view.hashes for session in self.sessions.values())

    def snapshot(self) -> Snapshot:
        rate = sum(s.view.rate for s in self.sessions.values() if s.view.state == READY)
        scheduler = self.scheduler
        left_nonces = (scheduler.cutoff - scheduler.units_settled) * self.space.unit_size
        return Snapshot(
            elapsed=time.monotonic() - self.started,
            units_total=scheduler.cutoff,
            units_done=scheduler.units_settled,
            units_in_flight=scheduler.in_flight,
            checked=self.checked(),
            rate=rate,
            eta=left_nonces / rate if rate > 0 else None,
            hosts=[s.view for s in self.sessions.values()],
            candidate=self._lowest_known(),
            reissued=scheduler.reissued,
        )

    def _lowest_known(self) -> Optional[Golden]:
        """The lowest verified golden nonce seen so far, settled or not."""
        known = [g for g in (self.scheduler.best, self.candidate) if g is not None]
        return min(known, key=lambda golden: golden.nonce) if known else None

    def _outcome(self, status: str) -> SearchOutcome:
        scheduler = self.scheduler
        golden = scheduler.best
        lowest = status == FOUND_STATUS and not scheduler.first_found_wins
        if status in (TIMEOUT_STATUS, INTERRUPTED_STATUS):
            golden = self._lowest_known()
        return SearchOutcome(
            status=status,
            golden=golden,
            lowest=lowest,
            checked=self.checked(),
            nonces_settled=scheduler.nonces_settled,
            units_settled=scheduler.units_settled,
            units_total=self.space.count,
            seconds=time.monotonic() - self.started,
            hosts=[s.view for s in self.sessions.values()],
            reissued=scheduler.reissued,
            first_found_wins=scheduler.first_found_wins,
        )
