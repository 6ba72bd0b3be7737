"""What the hosts say and what they are sent, for one search.

Every decoded message is checked (a lie costs its host alone) and applied to the scheduler:
units issued up to each host's prefetch, golden nonces verified and remembered, CANCEL sent
above a golden unit, and a lost host's units reissued at once. Each step goes into the run's
per-unit log. The fleet loop (fleet.py) owns the clock, the deadlines and the ending, and is
the only caller, so nothing here is touched by two threads.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional, Set

from remote import worker

from .joblog import JobLog
from .ledger import GoldenLedger
from .outcome import GONE, LOST, READY, RECLAIMED, Reporter
from .schedule import GRANTS_AHEAD, Completion, GoldenNonce, Scheduler
from .session import HostSession, traceback_event
from .spec import Problem, UnitSpace
from .transport import Host, host_text

READY_COUNT_SECONDS = 0.5
#: Fleets up to this size are told each host's join; a larger one, every tenth of the fleet.
JOINS_TOLD_ONE_BY_ONE = 20


def runs_text(units: List[int]) -> str:
    """Ascending unit numbers as runs: "3, 7-9, 12"."""
    pieces: List[str] = []
    start = previous = units[0]
    for unit in units[1:] + [-1]:
        if unit != previous + 1:
            pieces.append(str(start) if start == previous else f"{start}-{previous}")
            start = unit
        previous = unit
    return ", ".join(pieces)


class HostTraffic:
    """Applies the hosts' messages to the scheduler and sends them their units."""

    def __init__(
        self,
        problem: Problem,
        space: UnitSpace,
        scheduler: Scheduler,
        sessions: Dict[str, HostSession],
        reporter: Reporter,
        joblog: JobLog,
        on_lost: Optional[Callable[[Host], None]] = None,
    ) -> None:
        self.problem = problem
        self.space = space
        self.scheduler = scheduler
        self.sessions = sessions
        self.reporter = reporter
        self.joblog = joblog
        self.on_lost = on_lost
        self.ledger = GoldenLedger(problem, space)
        #: The lowest verified golden nonce reported so far (or known before), settled or not.
        self.candidate: Optional[GoldenNonce] = scheduler.known
        #: WORK messages sent: one per grant.
        self.grants_sent = 0
        self._ready_count = 1
        self._ready_counted_at = float("-inf")
        self._block_hex = problem.block.hex()
        #: Ready hosts that asked for more than the scheduler had free: the only ones a lost
        #: host's units can go to at once (the rest get theirs as they settle).
        self._hungry: Set[str] = set()
        self._joined = 0
        #: Hosts whose worker's channel opened and whose HELLO is not answered yet: the loop
        #: answers them one after another (see schedule.joining_prefetch).
        self._awaiting_hello: Set[str] = set()

    def opened(self, session: HostSession) -> None:
        """`session`'s worker started: its HELLO is on the way."""
        self._awaiting_hello.add(session.name)

    def on_message(self, session: HostSession, message: worker.ToController) -> None:
        """Check one decoded message from `session`'s worker and act on it."""
        # The commonest first: a DONE for every grant.
        if isinstance(message, worker.Done):
            self._done(session, message)
        elif isinstance(message, worker.Hello):
            self._hello(session, message)
        elif isinstance(message, worker.Progress):
            lie = session.count_progress(message.hashes)
            if lie is not None:
                self.lose(session, lie)
                return
            if message.units:
                now = time.monotonic()
                if session.view.running_at is None:
                    session.view.running_at = now
                self.joblog.started_units(session.name, message.units, now)
        elif isinstance(message, worker.Found):
            if self.ledger.repeated(message):
                return
            golden = GoldenNonce(message.unit, message.nonce, message.hash)
            if self._verified(session, golden):
                self._note_candidate(session, golden)
                self._apply(self.scheduler.found(session.name, golden))
        elif isinstance(message, worker.Leaving):
            # Reissued now, not when the host vanishes: the notice gives two minutes at most.
            notice = f"spot interruption notice: {host_text(message.action)} at {host_text(message.time)}"
            self.lose(session, notice, state=RECLAIMED)
        else:
            self.lose(session, f"worker error: {host_text(message.message)}")
            if message.traceback:
                self.reporter.event(traceback_event(session.name, message.traceback))

    def _hello(self, session: HostSession, hello: worker.Hello) -> None:
        # This host and those still waiting for an answer (it counts even if its channel was
        # never announced).
        joining = len(self._awaiting_hello) + (session.name not in self._awaiting_hello)
        self._awaiting_hello.discard(session.name)
        refusal = "sent a second HELLO" if session.view.state == READY else session.joined(hello, joining)
        if refusal is not None:
            self.lose(session, refusal)
            return
        self.scheduler.add_host(session.name)
        self.log_setup(session)
        self._joined += 1
        fleet = len(self.sessions)
        # A large fleet's joins are told in tenths, not a line a host.
        if fleet <= JOINS_TOLD_ONE_BY_ONE or self._joined in (1, fleet) or self._joined % (fleet // 10) == 0:
            note = f" ({host_text(hello.kernel_note)})" if hello.kernel_note else ""
            told = f"{session.name} joined: {hello.cores} cores, kernel {session.view.kernel}{note}"
            self.reporter.event(told if fleet <= JOINS_TOLD_ONE_BY_ONE else f"{told} ({self._joined:,} of {fleet:,} hosts)")
        self._fill(session)

    def _done(self, session: HostSession, done: worker.Done) -> None:
        lie = session.impossible_done(done, self.space)
        if lie is None and self.scheduler.holds(session.name, done.unit):
            lie = self.ledger.denied_by(done)
        if lie is not None:
            self.lose(session, lie)
            return
        last = done.unit + done.units - 1
        golden = None
        if done.nonce is not None and done.hash is not None:
            golden = GoldenNonce(last, done.nonce, done.hash)
            if not self._verified(session, golden):
                return
        # Only the units this host holds are accepted; each one stays settled exactly once.
        accepted, completion = self.scheduler.complete_run(session.name, done.unit, done.units, golden)
        if accepted:
            now = time.monotonic()
            size = self.space.unit_size
            seconds = done.seconds / done.units
            last_hashes = done.hashes - size * (done.units - 1)
            accepted_hashes = 0
            for start, end in accepted:
                if end > last and (done.nonce is not None or last_hashes != size):
                    # The DONE's last unit is short: it holds the golden nonce, or ends the space.
                    if end - 1 > start:
                        self.joblog.settled_run(start, end - 1, session.name, now, size, None, seconds)
                    self.joblog.settled_run(last, end, session.name, now, last_hashes, done.nonce, seconds)
                    accepted_hashes += size * (end - 1 - start) + last_hashes
                else:
                    self.joblog.settled_run(start, end, session.name, now, size, None, seconds)
                    accepted_hashes += size * (end - start)
            session.count_unit(accepted_hashes, sum(end - start for start, end in accepted))
            self._apply(completion)
        session.settled_in_grant(done.unit, done.units)
        # Settling frees no unit for another host (only a loss does), so only this one is topped up.
        self._fill(session)

    def _verified(self, session: HostSession, golden: GoldenNonce) -> bool:
        lie = self.ledger.check(golden)
        if lie is not None:
            self.lose(session, lie)
        return lie is None

    def _note_candidate(self, session: HostSession, golden: GoldenNonce) -> None:
        if self.candidate is None or golden.nonce < self.candidate.nonce:
            self.candidate = golden
            self.reporter.event(f"golden nonce {golden.nonce} found by {session.name} in unit {golden.unit}")

    def _apply(self, completion: Completion) -> None:
        """Tell the hosts a golden nonce cancelled to drop their units above it."""
        if completion.accepted and completion.above is not None:
            scheduler = self.scheduler
            self.joblog.cancelled(0 if scheduler.first_found_wins else scheduler.cutoff, time.monotonic())
            for name in completion.cancel_hosts:
                self._send(self.sessions[name], worker.Cancel(above=completion.above))

    def _fill(self, session: HostSession) -> None:
        """Keep GRANTS_AHEAD grants at the host, each sized to its rate (see HostSession.grant_units)."""
        scheduler, name, size = self.scheduler, session.name, self.space.unit_size
        held = session.grants_held(scheduler.held_runs(name))
        while held < GRANTS_AHEAD:
            idle = scheduler.held_count(name) == 0
            # Near the end, no host takes more than its share of what is left.
            fair_share = max(1, scheduler.units_left() // (2 * self._ready_hosts()))
            indices = scheduler.take_run(name, session.grant_units(size, fair_share))
            if not indices:
                self._hungry.add(name)
                return
            held += 1
            start, end = indices.start * size, indices.stop * size
            session.note_issued(end - start, idle=idle)
            session.open_grant(indices.start, indices.stop - 1)
            now = time.monotonic()
            self.joblog.issued_run(indices.start, indices.stop, name, now)
            if session.view.first_unit_at is None:
                session.view.first_unit_at = now
            problem = self.problem
            work = worker.Work(
                indices.start, start, end, self._block_hex, problem.nonce_bytes, problem.difficulty, len(indices)
            )
            self.grants_sent += 1
            if not self._send(session, work):
                return

    def _ready_hosts(self) -> int:
        """How many hosts are ready, counted at most every READY_COUNT_SECONDS: a fleet of a
        thousand would otherwise be counted at every grant."""
        now = time.monotonic()
        if now - self._ready_counted_at > READY_COUNT_SECONDS:
            self._ready_count = max(1, sum(1 for other in self.sessions.values() if other.view.state == READY))
            self._ready_counted_at = now
        return self._ready_count

    def fill_all(self) -> None:
        """Top up every ready host that went without for want of free units."""
        hungry, self._hungry = self._hungry, set()
        for name in hungry:
            session = self.sessions[name]
            if session.view.state == READY:
                self._fill(session)

    def _send(self, session: HostSession, message: worker.ToWorker) -> bool:
        failure = session.send(message)
        if failure is not None:
            self.lose(session, failure)
        return failure is None

    def lose(self, session: HostSession, reason: str, state: str = LOST) -> None:
        """Drop `session`'s host for `reason`: its units go back to be reissued at once."""
        view = session.view
        if view.state in GONE:
            return
        view.state = state
        self._awaiting_hello.discard(view.name)
        view.error = reason if reason.startswith(f"{view.name}:") else f"{view.name}: {reason}"
        view.rate = 0.0
        reissued = self.scheduler.host_lost(view.name)
        now = time.monotonic()
        self.log_setup(session)
        self.joblog.host_stage(view.name, "lost", now)
        self.joblog.host(view.name)["error"] = view.error
        self.joblog.host_lost(view.name, reissued, now)
        self.reporter.event(f"host {state}: {view.error}")
        if reissued:
            self.reporter.event(f"units {runs_text(reissued)} reissued")
            self.fill_all()
        # Killing a lost host's worker may block (a paused host answers nothing), so it
        # happens off the loop; the run's release makes sure of it either way.
        if self.on_lost is not None:
            threading.Thread(target=self.on_lost, args=(session.host,), daemon=True).start()

    def log_setup(self, session: HostSession) -> None:
        """Log the host's start-up stages for the timeline: reachable, worker opened, joined."""
        self.joblog.host_stage(session.name, "reachable", session.host.reachable_at)
        self.joblog.host_stage(session.name, "opened", session.opened_at)
        if session.view.state == READY:
            self.joblog.host_stage(session.name, "joined", time.monotonic())
