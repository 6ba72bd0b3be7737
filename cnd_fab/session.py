"""One host for the length of a search: its worker channel, reader thread, heartbeat and rate.

Concurrency: each session owns one reader thread. It starts the worker (which may mean a
slow SSH connect and push), then only reads lines, decodes them with the worker's own codec
and puts them on the fleet's one event queue. Everything else here is called from the
fleet's loop alone, so a session's fields are never written by two threads.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from remote import worker

from .errors import CndError
from .outcome import READY, STARTING, STOPPED, HostView
from .transport import Host, WorkerChannel, WorkerPayload

RATE_SMOOTHING = 0.3


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

    def __init__(self, host: Host) -> None:
        self.host = host
        self.view = HostView(host.name)
        self.channel: Optional[WorkerChannel] = None
        #: Units this host wants queued so its cores never wait (from its HELLO).
        self.prefetch = 2
        self.started_at = time.monotonic()
        self._last_count: Tuple[float, int] = (0.0, 0)
        self._done_hashes = 0

    @property
    def name(self) -> str:
        """The host's name, as every message about it says it."""
        return self.view.name

    # --- the reader thread ---------------------------------------------------------------
    def start_reader(self, run_id: str, payload: WorkerPayload, events: "queue.Queue[Tuple[str, HostEvent]]") -> None:
        """Start the worker and read its lines on a thread of their own."""
        threading.Thread(
            target=self._read_worker_lines, args=(run_id, payload, events), name=f"host-{self.name}", daemon=True
        ).start()

    def _read_worker_lines(self, run_id: str, payload: WorkerPayload, events: "queue.Queue[Tuple[str, HostEvent]]") -> None:
        try:
            channel = self.host.start_worker(run_id, payload)
            self.channel = channel
            events.put((self.name, WorkerOpened()))
            while True:
                line = channel.read_line()
                if not line:
                    events.put((self.name, WorkerClosed()))
                    return
                if line.strip():
                    events.put((self.name, worker.decode_to_controller(line)))
        except worker.ProtocolError as error:
            events.put((self.name, HostFailed(f"worker sent a bad line: {error}")))
        except CndError as error:
            events.put((self.name, HostFailed(str(error))))
        except Exception as error:  # anything else on a host's thread is that host's failure
            events.put((self.name, HostFailed(f"{type(error).__name__}: {error}")))

    # --- called from the fleet's loop --------------------------------------------------
    def send(self, message: worker.ToWorker) -> Optional[str]:
        """Write one message; returns why it failed, or None."""
        if self.channel is None or self.view.state != READY:
            return "the worker is not ready"
        try:
            self.channel.send_line(worker.encode(message))
            return None
        except (OSError, EOFError) as error:
            return f"write to the worker failed: {error}"

    def joined(self, hello: worker.Hello) -> None:
        """The worker said HELLO: take its cores, kernel and prefetch."""
        self.view.state = READY
        self.view.cores = hello.cores
        self.view.kernel = hello.kernel
        self.prefetch = hello.prefetch

    def count_progress(self, hashes: int) -> None:
        """A cumulative hash count arrived: update the smoothed rate and the total."""
        now = time.monotonic()
        then, before = self._last_count
        view = self.view
        if then and now > then and hashes >= before:
            instant = (hashes - before) / (now - then)
            view.rate = instant if view.rate == 0 else RATE_SMOOTHING * instant + (1 - RATE_SMOOTHING) * view.rate
        self._last_count = (now, hashes)
        view.hashes = max(view.hashes, hashes)

    def count_unit(self, hashes: int) -> None:
        """A unit this host held was accepted as settled."""
        self.view.units_done += 1
        self._done_hashes += hashes
        self.view.hashes = max(self.view.hashes, self._done_hashes)

    def overdue(self, now: float, heartbeat_timeout: float, hello_timeout: float) -> Optional[str]:
        """Why this host must be given up for silence, or None while it keeps its deadlines."""
        view = self.view
        if view.state == READY and view.last_heard is not None and now - view.last_heard > heartbeat_timeout:
            return f"silent for {now - view.last_heard:.1f}s (heartbeat deadline)"
        if view.state == STARTING and self.channel is not None and now - self.started_at > hello_timeout:
            return f"no HELLO within {hello_timeout:.0f}s of starting the worker"
        return None

    def exit_reason(self) -> str:
        """Why the worker's stdout closed, from the last line of its stderr."""
        tail = self.channel.stderr_tail() if self.channel else ""
        return "the worker exited" + (f": {tail.splitlines()[-1]}" if tail else "")

    def close(self) -> None:
        """Close the channel; the worker exits on stdin EOF."""
        if self.channel is not None:
            self.channel.close()


def stop_sessions(sessions: List[HostSession], events: "queue.Queue[Tuple[str, HostEvent]]", wait: float) -> None:
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
    while waiting and time.monotonic() < deadline:
        try:
            name, event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if name not in waiting:
            continue
        if isinstance(event, worker.Progress):
            by_name[name].count_progress(event.hashes)
            if event.final:
                waiting.discard(name)
        elif isinstance(event, (WorkerClosed, HostFailed)):
            waiting.discard(name)
    for session in sessions:
        session.close()
