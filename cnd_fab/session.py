"""One host for the length of a search: its worker channel, set-up and writes, heartbeat,
progress checks, grants and rate.

A host is untrusted: every line it sends is decoded by the worker's own codec, and what the
codec cannot know (how many nonces a host could have hashed, whether it keeps making progress,
whether it reads its input) is checked here. A host that breaks a rule is given up alone.

Concurrency: each session owns one set-up thread. It starts the worker (which may mean a
slow SSH connect and push), and hands the channel to the fleet's loop, which reads it
(poller.py); a channel that cannot be polled is read on that thread, which then only reads
lines, decodes them and hands them in. A channel that can be written without blocking (a
pipe) is written by the loop itself, and what the worker does not take yet waits for the
loop's next turn; any other channel has a writer thread, fed through a bounded outbox, so that
the fleet's loop never blocks on a host that does not read its stdin. Everything else here is
called from the fleet's loop alone, so a session's fields are never written by two threads,
except the writer's two progress stamps, which the loop only reads.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Container, Deque, Dict, List, Optional, Set, Tuple, Union

from remote import worker

from .errors import CndError
from .outcome import READY, STARTING, STOPPED, HostView
from .schedule import GRANTS_AHEAD, grant_size, joining_prefetch
from .spec import UnitSpace
from .transport import Host, WorkerChannel, WorkerPayload, host_text

if TYPE_CHECKING:
    from .poller import HostInbox

RATE_SMOOTHING = 0.3
#: Lines waiting for a host's stdin; a host that lets this many pile up is not reading.
OUTBOX_LIMIT = 256


@dataclass(frozen=True)
class WorkerOpened:
    """The worker's channel exists: the HELLO deadline starts now."""


@dataclass(frozen=True)
class WorkerClosed:
    """The worker closed its stdout."""


@dataclass(frozen=True)
class HostFailed:
    """Starting or reading the worker failed; the host is lost for this reason."""

    reason: str


HostEvent = Union[WorkerOpened, WorkerClosed, HostFailed, worker.ToController]


class HostSession:
    """The controller's side of one host: what it holds, when it was last heard, its rate."""

    def __init__(self, host: Host, backlog: Optional[Set[str]] = None) -> None:
        """`backlog`: the fleet's names of hosts with lines still to write (see flush())."""
        self.host = host
        self.backlog: Set[str] = set() if backlog is None else backlog
        self._unsent: Deque[bytes] = deque()
        self.view = HostView(host.name)
        self.channel: Optional[WorkerChannel] = None
        #: Units this host wants queued so its cores never wait (from its HELLO).
        self.prefetch = 2
        self.started_at = time.monotonic()
        self._last_count: Tuple[float, int] = (0.0, 0)
        self._done_hashes = 0
        #: Nonces in every unit sent to this host: more hashes than this are a lie.
        self.issued_nonces = 0
        #: When this host last showed progress (more hashes, or a unit settled).
        self.last_advance = time.monotonic()
        #: When it last settled a unit, or got work after holding none.
        self.last_settled = time.monotonic()
        #: When its worker's channel opened (set before the channel is published).
        self.opened_at: Optional[float] = None
        self._settled_units = 0
        self._working_seconds = 0.0
        self._outbox: "queue.Queue[Optional[str]]" = queue.Queue(maxsize=OUTBOX_LIMIT)
        #: Since when one write has been blocked, and why writing failed (set by the writer
        #: thread, or by flush()).
        self.writing_since: Optional[float] = None
        self.write_failure: Optional[str] = None
        #: Grants sent and not yet all settled: the unit each began with -> (lowest unsettled, last).
        self.grants: Dict[int, Tuple[int, int]] = {}
        #: Units in the largest grant it has settled whole: what its next grants may grow from.
        self.largest_settled_grant = 0

    @property
    def name(self) -> str:
        """The host's name, as every message about it says it."""
        return self.view.name

    # --- the reader thread ---------------------------------------------------------------
    def start_reader(
        self,
        run_id: str,
        payload: WorkerPayload,
        inbox: "HostInbox",
    ) -> None:
        """Start the worker on a thread of its own. The fleet's loop then reads its lines
        through `inbox` when the channel can be polled, else that same thread reads them."""
        threading.Thread(
            target=self._read_worker_lines, args=(run_id, payload, inbox), name=f"host-{self.name}", daemon=True
        ).start()

    def _read_worker_lines(
        self,
        run_id: str,
        payload: WorkerPayload,
        inbox: "HostInbox",
    ) -> None:
        try:
            channel = self.host.start_worker(run_id, payload)
            self.opened_at = time.monotonic()
            self.channel = channel
            if not channel.sends_without_blocking:
                threading.Thread(target=self._write_lines, args=(channel,), name=f"host-{self.name}-writer", daemon=True).start()
            if channel.fileno() is not None:
                inbox.add_channel(self.name, channel)  # the loop reads it from now on
                return
            inbox.put(self.name, WorkerOpened())  # as the inbox says it of a channel it reads
            while True:
                # One more than the codec takes: an over-long line is refused, never buffered whole.
                line = channel.read_line(worker.MAX_LINE_CHARS + 1)
                if not line:
                    inbox.put(self.name, WorkerClosed())
                    return
                if line.strip():
                    inbox.put(self.name, worker.decode_to_controller(line))
        except worker.ProtocolError as error:
            inbox.put(self.name, HostFailed(f"worker sent a bad line: {error}"))
        except CndError as error:
            inbox.put(self.name, HostFailed(str(error)))
        except Exception as error:  # anything else on a host's thread is that host's failure
            inbox.put(self.name, HostFailed(f"{type(error).__name__}: {error}"))

    def _write_lines(self, channel: WorkerChannel) -> None:
        """The writer thread: the only place a write to this host may block."""
        while True:
            line = self._outbox.get()
            if line is None:
                return
            self.writing_since = time.monotonic()
            try:
                channel.send_line(line)
            except Exception as error:  # any failure of the channel is this host's failure
                self.write_failure = f"write to the worker failed: {error}"
                return
            self.writing_since = None

    # --- called from the fleet's loop --------------------------------------------------
    def send(self, message: worker.ToWorker) -> Optional[str]:
        """Write one message, or queue it for the writer thread; returns why it cannot be
        sent, or None."""
        channel = self.channel
        if channel is None or self.view.state != READY:
            return "the worker is not ready"
        if self.write_failure is not None:
            return self.write_failure
        if not channel.sends_without_blocking:
            try:
                self._outbox.put_nowait(worker.encode(message))
                return None
            except queue.Full:
                return f"not reading its input ({OUTBOX_LIMIT} messages waiting)"
        if len(self._unsent) >= OUTBOX_LIMIT:
            return f"not reading its input ({OUTBOX_LIMIT} messages waiting)"
        self._unsent.append((worker.encode(message) + "\n").encode())
        return self.flush()

    def flush(self) -> Optional[str]:
        """Write what the worker takes now of the lines not yet written (a channel the loop
        writes itself); returns why writing failed, or None. Lines left over wait in
        `backlog` for the loop's next turn."""
        channel = self.channel
        assert channel is not None
        try:
            while self._unsent:
                data = self._unsent[0]
                sent = channel.send_nowait(data)
                if sent < len(data):
                    self._unsent[0] = data[sent:]
                    if self.writing_since is None:
                        self.writing_since = time.monotonic()
                    self.backlog.add(self.name)
                    return None
                self._unsent.popleft()
        except OSError as error:
            self.write_failure = f"write to the worker failed: {error}"
        self.writing_since = None
        self.backlog.discard(self.name)
        return self.write_failure

    def joined(self, hello: worker.Hello, joining: int) -> Optional[str]:
        """The worker said HELLO: take its cores, kernel and prefetch (scaled to the `joining`
        hosts whose HELLO the loop answers now, see schedule.joining_prefetch). Returns why it
        cannot join (another protocol version), or None."""
        if hello.version != worker.PROTOCOL_VERSION:
            return f"worker speaks protocol {hello.version}, this controller speaks {worker.PROTOCOL_VERSION}"
        self.view.state = READY
        self.view.cores = hello.cores
        self.view.kernel = host_text(hello.kernel)
        self.prefetch = joining_prefetch(hello.prefetch, hello.cores, joining)
        return None

    @staticmethod
    def impossible_done(done: worker.Done, space: UnitSpace) -> Optional[str]:
        """Why a DONE cannot be true (units outside the space, more hashes than they hold, a
        golden nonce outside its last unit), or None."""
        last = done.unit + done.units - 1

        def named() -> str:
            return f"unit {last}" if done.units == 1 else f"units {done.unit} to {last}"

        if last >= space.count:
            return f"DONE for {named()}, but the space has {space.count} units"
        if done.hashes > done.units * space.unit_size:
            holds = "the unit holds" if done.units == 1 else "they hold"
            return f"DONE for {named()} claims {done.hashes:,} hashes, more than {holds}"
        if done.nonce is not None and space.unit_of(done.nonce) != last:
            return f"DONE for {named()} gives golden nonce {done.nonce}, which is not in unit {last}"
        return None

    def grant_units(self, unit_size: int, fair_share: int) -> int:
        """How many units the next grant to this host holds (see schedule.grant_size)."""
        return grant_size(self.prefetch, self.largest_settled_grant, self.working_rate(), unit_size, fair_share)

    def working_rate(self) -> float:
        """Nonces a second: the smoothed rate of its PROGRESS counts, or until two of them
        have given one (a large fleet's heartbeats are seconds apart) the settled hashes over
        the time spent settling them, as this controller clocked it (0: nothing settled yet).
        That clock includes the loop's own delays, so it errs low, never high."""
        if self.view.rate > 0:
            return self.view.rate
        return self._done_hashes / self._working_seconds if self._working_seconds > 0 else 0.0

    def open_grant(self, first: int, last: int) -> None:
        """A grant of units `first` to `last` was sent."""
        self.grants[first] = (first, last)

    def settled_in_grant(self, first: int, count: int) -> None:
        """Units `first`.. (`count` of them) of one of its grants settled: the grant goes on above them."""
        for key, (lowest, last) in self.grants.items():
            if lowest <= first <= last:
                self.grants[key] = (first + count, last)
                if first + count > last:
                    self.largest_settled_grant = max(self.largest_settled_grant, last - key + 1)
                return

    def grants_held(self, held: Container[int]) -> int:
        """Grants with units still `held` (the units the scheduler has this host hold);
        forgets those all settled or cancelled."""
        for key, (lowest, last) in list(self.grants.items()):
            if lowest > last or lowest not in held:
                del self.grants[key]
        return len(self.grants)

    def count_progress(self, hashes: int) -> Optional[str]:
        """A cumulative hash count arrived: update the smoothed rate and the total.

        Returns why the count cannot be true, or None."""
        if hashes > self.issued_nonces:
            return f"claims {hashes:,} hashes, more than the {self.issued_nonces:,} nonces it was given"
        now = time.monotonic()
        then, before = self._last_count
        view = self.view
        if then and now > then and hashes >= before:
            instant = (hashes - before) / (now - then)
            view.rate = instant if view.rate == 0 else RATE_SMOOTHING * instant + (1 - RATE_SMOOTHING) * view.rate
        self._last_count = (now, hashes)
        if hashes > view.hashes:
            self.last_advance = now
        view.hashes = max(view.hashes, hashes)
        return None

    def count_unit(self, hashes: int, units: int = 1) -> None:
        """Units this host held (`units` of them, with `hashes` in all) were accepted as settled."""
        self.view.units_done += units
        now = time.monotonic()
        self._settled_units += units
        self._working_seconds += now - self.last_settled
        self.last_advance = self.last_settled = now
        self._done_hashes += hashes
        self.view.hashes = max(self.view.hashes, self._done_hashes)

    def overdue(self, now: float, heartbeat_timeout: float, hello_timeout: float, holding: bool) -> Optional[str]:
        """Why this host must be given up, or None while it keeps its deadlines.

        `holding`: it holds units, so it must be making progress on them."""
        view = self.view
        if self.write_failure is not None:
            return self.write_failure
        writing_since = self.writing_since
        if writing_since is not None and self.channel is not None:
            stalled_since = max(writing_since, self.channel.written_at)
            if now - stalled_since > heartbeat_timeout:
                return f"has not read its input for {now - stalled_since:.1f}s"
        if view.state == READY:
            if view.last_heard is not None and now - view.last_heard > heartbeat_timeout:
                return f"silent for {now - view.last_heard:.1f}s (heartbeat deadline)"
            if holding and now - self.last_advance > heartbeat_timeout:
                return f"made no progress on its units for {now - self.last_advance:.1f}s"
        if view.state == STARTING:
            if self.channel is None and now - self.started_at > self.host.setup_seconds:
                return f"not set up (connect, push, start) within {self.host.setup_seconds:g}s"
            if self.opened_at is not None and now - self.opened_at > hello_timeout:
                return f"no HELLO within {hello_timeout:.0f}s of starting the worker"
        return None

    def unit_seconds(self) -> Optional[float]:
        """Its measured seconds per settled unit, once it has settled two."""
        return self._working_seconds / self._settled_units if self._settled_units >= 2 else None

    def settle_overdue(self, now: float, limit: float) -> Optional[str]:
        """Why a host that holds units but settles none within `limit` seconds is given up."""
        if now - self.last_settled > limit:
            return f"settled none of its units for {now - self.last_settled:.1f}s (limit {limit:.1f}s)"
        return None

    def exit_reason(self) -> str:
        """Why the worker's stdout closed, from the last line of its stderr."""
        tail = self.channel.stderr_tail() if self.channel else ""
        return "the worker exited" + (f": {host_text(tail.splitlines()[-1])}" if tail.strip() else "")

    def note_issued(self, nonces: int, idle: bool) -> None:
        """A unit of `nonces` was sent: the host may now have hashed that many more.

        `idle`: it held no unit until now, so its progress clock starts with this one."""
        if idle:
            self.last_advance = self.last_settled = time.monotonic()
        self.issued_nonces += nonces

    def close(self) -> None:
        """Stop the writer and close the channel, off this thread unless its close cannot
        block: a host that reads nothing may hold the channel's write side for ever; the
        release then kills it."""
        try:
            self._outbox.put_nowait(None)
        except queue.Full:
            pass
        if self.channel is None:
            return
        if self.channel.closes_without_blocking:
            try:
                self.channel.close()  # a thread each would cost a fleet of a thousand more than this
            except OSError:
                pass  # the worker is gone already; the release makes sure of it
        else:
            threading.Thread(target=self.channel.close, name=f"host-{self.name}-close", daemon=True).start()


def median_unit_seconds(sessions: List[HostSession]) -> Optional[float]:
    """How long the fleet's median host takes to settle a unit, once two hosts have shown it."""
    paces = sorted(pace for pace in (session.unit_seconds() for session in sessions) if pace is not None)
    return paces[len(paces) // 2] if len(paces) >= 2 else None


def traceback_event(name: str, traceback: str) -> str:
    """A host's traceback as an event, every line prefixed so it cannot pass for one of ours."""
    lines = host_text(traceback.rstrip(), lines=True).splitlines()
    return f"{name} remote traceback:\n" + "\n".join(f"  | {line}" for line in lines)


def stop_sessions(sessions: List[HostSession], inbox: "HostInbox", wait: float) -> None:
    """Send STOP to every ready worker, then wait up to `wait` seconds for their exact final
    counts (a PROGRESS marked final), so a stopped run reports what was really checked."""
    by_name = {session.name: session for session in sessions}
    waiting = set()
    for session in sessions:
        if session.view.state == READY and session.send(worker.Stop()) is None:
            waiting.add(session.name)
        if session.view.state in (READY, STARTING):
            session.view.state = STOPPED
    deadline = time.monotonic() + wait
    backlog = sessions[0].backlog if sessions else set()
    while waiting and time.monotonic() < deadline:
        for name in list(backlog):
            by_name[name].flush()
        for name, event in inbox.wait(max(0.0, deadline - time.monotonic())):
            if name not in waiting:
                continue
            if isinstance(event, worker.Progress):
                if by_name[name].count_progress(event.hashes) is not None:
                    waiting.discard(name)  # a lie is not waited for; the fleet already counted the truth
                elif event.final:
                    waiting.discard(name)
            elif isinstance(event, (WorkerClosed, HostFailed)):
                waiting.discard(name)
    for session in sessions:
        session.close()
