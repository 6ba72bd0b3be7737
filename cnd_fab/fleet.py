"""Runs one search over a fleet: one loop that owns the schedule, one session per host.

Concurrency: this loop reads every host's channel itself (poller.py); a host whose channel
cannot be polled has a reader thread of its own (session.py), which only hands decoded
messages in. The loop below is the only code that touches the scheduler, sends units or decides
a host is lost, so no state is shared between threads except that queue and the stop event.

A host is lost when its worker reports ERROR, closes its stdout, sends a line the codec
rejects, fails a write, or sends nothing (not even a PROGRESS heartbeat) for
`heartbeat_timeout` seconds. The last one catches a paused or partitioned host long before
TCP would notice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Set, Tuple

from .errors import FleetLostError
from remote import worker

from .joblog import JobLog
from .poller import HostInbox
from .traffic import HostTraffic
from .outcome import (
    FOUND_STATUS,
    GONE,
    INTERRUPTED_STATUS,
    LOST,
    RECLAIMED,
    NONE_STATUS,
    READY,
    RUNNING_STATUS,
    STARTING,
    TIMEOUT_STATUS,
    Reporter,
    SearchOutcome,
    Snapshot,
    lowest_of,
    outcome_of,
    snapshot_of,
)
from .schedule import GoldenNonce, Scheduler
from .session import (
    HostEvent,
    HostFailed,
    HostSession,
    WorkerClosed,
    WorkerOpened,
    median_unit_seconds,
    stop_sessions,
)
from .spec import Problem, UnitSpace
from .transport import Host, WorkerPayload

DEFAULT_HEARTBEAT_TIMEOUT = 8.0
HELLO_TIMEOUT = 30.0
# How long the end of a run waits for the workers' exact final hash counts.
FINAL_COUNT_WAIT = 0.5
REDRAW_SECONDS = 0.2
OVERDUE_CHECK_SECONDS = 0.1
#: Hosts a fleet may have before it checks their deadlines less often than OVERDUE_CHECK_SECONDS.
OVERDUE_CHECK_HOSTS = 200
#: The longest the loop handles messages before it looks at the clock, the stop event and the
#: deadlines again: a host that floods it cannot keep --timeout or Ctrl-C from taking effect.
DRAIN_SECONDS = 0.05
#: A host holding units must settle one within this many times the time the fleet's median
#: host takes for as many units as it holds (and never less than the heartbeat deadline).
SETTLE_MARGIN = 20.0
#: How often the run's settled work is handed to `checkpoint` (and at every ending). A killed
#: controller loses at most this much settled work; a flush costs well under a millisecond.
CHECKPOINT_SECONDS = 2.0
#: Heartbeats a second the whole fleet may send: a larger fleet's hosts each beat less often.
FLEET_HEARTBEATS_PER_SECOND = 500
#: The longest gap between heartbeats a fleet asks for, and at most this share of the deadline.
MAX_HEARTBEAT_SECONDS = 2.0
HEARTBEATS_PER_DEADLINE = 4
#: A fleet lost whole names this many hosts' errors, then counts the rest.
LOST_REASONS_SHOWN = 5
#: A run's ending when the loop raised (every host lost, or a bug): resumable like any other.
FAILED_STATUS = "failed"

#: checkpoint(scheduler, lowest verified golden nonce, status): keeps what is settled so far.
Checkpointer = Callable[[Scheduler, Optional[GoldenNonce], str], None]


def heartbeat_for(hosts: int, heartbeat_timeout: float) -> Optional[float]:
    """Seconds between each worker's heartbeats for a fleet of `hosts`: the worker's own
    default (None) up to FLEET_HEARTBEATS_PER_SECOND / 2 hosts, then longer, so that a
    thousand hosts do not keep the controller busy with heartbeats alone."""
    seconds = hosts / FLEET_HEARTBEATS_PER_SECOND
    if seconds <= worker.HEARTBEAT_SECONDS:
        return None
    return round(max(worker.HEARTBEAT_SECONDS, min(seconds, MAX_HEARTBEAT_SECONDS, heartbeat_timeout / HEARTBEATS_PER_DEADLINE)), 2)


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
        scheduler: Optional[Scheduler] = None,
        checkpoint: Optional[Checkpointer] = None,
    ) -> None:
        """`scheduler`: one that starts from a checkpoint (see checkpoint.py), else a fresh one.
        `checkpoint` is called every CHECKPOINT_SECONDS while the search runs and once at its end."""
        self.payload = payload
        if payload.heartbeat is None:
            self.payload = replace(payload, heartbeat=heartbeat_for(len(hosts), heartbeat_timeout))
        self.problem = problem
        self.space = space
        self.run_id = run_id
        self.scheduler = scheduler or Scheduler(space, first_found_wins)
        self.checkpoint = checkpoint
        self.deadline = deadline
        self.stop = stop or threading.Event()
        self.reporter = reporter or Reporter()
        self.heartbeat_timeout = heartbeat_timeout
        #: Hosts with lines the loop could not write yet (see HostSession.flush).
        self.backlog: Set[str] = set()
        self.sessions: Dict[str, HostSession] = {host.name: HostSession(host, self.backlog) for host in hosts}
        self.inbox = HostInbox()
        # Wall time counts from the caller's start (the launch included), like the deadline.
        self.started = time.monotonic() if started is None else started
        self.joblog = JobLog(self.started)
        self.traffic = HostTraffic(problem, space, self.scheduler, self.sessions, self.reporter, self.joblog, on_lost)
        self.finished_at: Optional[float] = None
        # Deadlines are seconds long, and looking at every host costs a large fleet: it looks
        # less often, never less than once a second.
        self.overdue_check_seconds = min(1.0, OVERDUE_CHECK_SECONDS * max(1.0, len(hosts) / OVERDUE_CHECK_HOSTS))

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        """Search until the answer is settled, the deadline passes or `stop` is set."""
        for session in self.sessions.values():
            session.start_reader(self.run_id, self.payload, self.inbox)
        last_update = last_overdue_check = 0.0
        last_checkpoint = time.monotonic()
        status: Optional[str] = None
        try:
            while True:
                status = self._ending()
                if status is not None:
                    break
                now = time.monotonic()
                wait = 0.1 if self.deadline is None else max(0.0, min(0.1, self.deadline - now))
                arrived = self.inbox.wait(wait)
                # Take what else has arrived before redrawing, within a budget.
                budget = time.monotonic() + DRAIN_SECONDS
                while arrived:
                    for name, event in arrived:
                        self._handle(name, event)
                    arrived = self.inbox.wait(0) if time.monotonic() < budget else []
                for name in list(self.backlog):
                    self._flush(self.sessions[name])
                now = time.monotonic()
                # Deadlines are seconds long: looking at every host after every message would
                # cost a large fleet more than the messages themselves.
                if now - last_overdue_check >= self.overdue_check_seconds:
                    self._lose_overdue(now)
                    last_overdue_check = now
                if now - last_update >= REDRAW_SECONDS:
                    self.reporter.update(self.snapshot())
                    last_update = now
                if self.checkpoint is not None and now - last_checkpoint >= CHECKPOINT_SECONDS:
                    self.checkpoint(self.scheduler, self.lowest_known(), RUNNING_STATUS)
                    last_checkpoint = now
        finally:
            self.finished_at = time.monotonic()
            self._stop_all()
            self.inbox.close()
            self._log_ending(self.finished_at)
            if self.checkpoint is not None:
                self.checkpoint(self.scheduler, self.lowest_known(), status or FAILED_STATUS)
        assert status is not None
        self.reporter.update(self.snapshot())
        return self._outcome(status)

    def _ending(self) -> Optional[str]:
        """How the run ends now, or None while it goes on."""
        if self.stop.is_set():
            return INTERRUPTED_STATUS
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return TIMEOUT_STATUS
        if self.scheduler.finished:
            return FOUND_STATUS if self.scheduler.best else NONE_STATUS
        if not any(s.view.state in (STARTING, READY) for s in self.sessions.values()):
            errors = [s.view.error for s in self.sessions.values() if s.view.error]
            # One line: a thousand hosts lost for one cause would otherwise fill the screen.
            shown = "; ".join(errors[:LOST_REASONS_SHOWN])
            more = f"; and {len(errors) - LOST_REASONS_SHOWN:,} more" if len(errors) > LOST_REASONS_SHOWN else ""
            raise FleetLostError(f"every host was lost before the search finished: {shown}{more}")
        return None

    def _lose_overdue(self, now: float) -> None:
        unit_seconds = median_unit_seconds(list(self.sessions.values()))
        for session in self.sessions.values():
            held = self.scheduler.held_count(session.name)
            reason = session.overdue(now, self.heartbeat_timeout, HELLO_TIMEOUT, held > 0)
            if reason is None and held and unit_seconds is not None:
                reason = session.settle_overdue(now, max(self.heartbeat_timeout, SETTLE_MARGIN * held * unit_seconds))
            if reason:
                self.traffic.lose(session, reason)

    def _handle(self, name: str, event: HostEvent) -> None:
        session = self.sessions[name]
        if session.view.state in GONE:
            return
        try:
            if isinstance(event, (WorkerClosed, HostFailed)):
                self.traffic.lose(session, session.exit_reason() if isinstance(event, WorkerClosed) else event.reason)
            elif isinstance(event, WorkerOpened):
                self.traffic.opened(session)  # the HELLO deadline counts from session.opened_at
            else:
                session.view.last_heard = time.monotonic()
                self.traffic.on_message(session, event)
        except FleetLostError:
            raise
        except Exception as error:  # whatever a host's message triggers, it costs that host alone
            self.traffic.lose(session, f"its message could not be handled: {type(error).__name__}: {error}")

    def _flush(self, session: HostSession) -> None:
        if session.view.state in GONE:
            self.backlog.discard(session.name)
            return
        failure = session.flush()
        if failure is not None:
            self.traffic.lose(session, failure)

    def _log_ending(self, now: float) -> None:
        self.joblog.finish(now)
        for session in self.sessions.values():
            self.traffic.log_setup(session)
            if session.view.state not in (LOST, RECLAIMED):
                self.joblog.host_stage(session.name, "stopped", now)

    def _stop_all(self) -> None:
        """Send STOP everywhere, then wait briefly for each worker's final count."""
        stop_sessions(list(self.sessions.values()), self.inbox, FINAL_COUNT_WAIT)

    # --- views -------------------------------------------------------------------------
    def checked(self) -> int:
        """Nonces checked by every host so far, as their workers counted them."""
        return sum(session.view.hashes for session in self.sessions.values())

    def lowest_known(self) -> Optional[GoldenNonce]:
        """The lowest verified golden nonce seen so far, settled or not."""
        return lowest_of(self.scheduler.best, self.traffic.candidate)

    def snapshot(self) -> Snapshot:
        """The run's state now, for the display."""
        views = [s.view for s in self.sessions.values()]
        return snapshot_of(self.scheduler, views, time.monotonic() - self.started, self.lowest_known())

    def _outcome(self, status: str) -> SearchOutcome:
        views = [s.view for s in self.sessions.values()]
        return outcome_of(status, self.scheduler, views, time.monotonic() - self.started, self.traffic.candidate)
