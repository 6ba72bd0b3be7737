"""Everything the hosts say, read by the fleet's own loop: no thread per host.

A thousand hosts with a reader thread each spend more CPU handing the GIL around than on
their messages. Channels that have a file descriptor to wait on (local pipes, SSH channels,
the simulated fleet's pipes) are read by the fleet's loop itself, through one selector, and
every line is split, bounded and decoded exactly as a host's own reader thread would (session.py
keeps that thread for channels that cannot be polled). Threads (set-up, and those reader
threads) hand their events in through a bounded queue and wake the selector.
"""

from __future__ import annotations

import os
import queue
import selectors
import threading
from typing import Dict, List, Tuple

from remote import worker

from .errors import CndError
from .session import HostEvent, HostFailed, WorkerClosed, WorkerOpened
from .transport import WorkerChannel

#: Bytes read from one channel per turn, so that a flooding host cannot starve the others.
READ_PIECE = 64 << 10
#: One more than the codec takes: an over-long line is refused, never buffered whole.
LINE_LIMIT = worker.MAX_LINE_CHARS + 1
#: Events handed in by threads and not yet taken. When this many wait, those threads wait
#: too, so a flooding host fills its own pipe instead of the controller's memory.
MAX_QUEUED_EVENTS = 4096

HostEvents = List[Tuple[str, HostEvent]]


class HostInbox:
    """The hosts' events, as (host name, event): from polled channels and from threads."""

    def __init__(self) -> None:
        self._queue: "queue.Queue[Tuple[str, HostEvent]]" = queue.Queue(maxsize=MAX_QUEUED_EVENTS)
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._joining: "queue.SimpleQueue[Tuple[str, WorkerChannel]]" = queue.SimpleQueue()
        self._partial: Dict[int, bytearray] = {}
        # A set-up thread may hand an event in after close(): it must never write to the
        # closed wake pipe's number, which the process may have given to another file.
        self._wake_lock = threading.Lock()

    # --- any thread ----------------------------------------------------------------------
    def put(self, name: str, event: HostEvent) -> None:
        """Hand in an event from a thread; blocks while the queue is full."""
        self._queue.put((name, event))
        self._wake()

    def add_channel(self, name: str, channel: WorkerChannel) -> None:
        """Read `channel` (which has a fileno()) in the loop from now on, its events under `name`,
        the first of them WorkerOpened."""
        self._joining.put((name, channel))
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_write < 0:
                return
            try:
                os.write(self._wake_write, b".")
            except OSError:
                pass  # the pipe is full, so the loop is awake anyway

    # --- the fleet's loop ----------------------------------------------------------------
    def wait(self, timeout: float) -> HostEvents:
        """What has arrived, waiting up to `timeout` seconds for something."""
        events: HostEvents = []
        for key, _ in self._selector.select(0 if not self._queue.empty() else timeout):
            if len(events) >= MAX_QUEUED_EVENTS:
                break  # the channels left are still ready at the next call
            if key.data is None:
                self._take_joining(events)
            else:
                self._read(key.fd, key.data[0], key.data[1], events)
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        """Stop reading; the channels themselves are closed by their sessions."""
        with self._wake_lock:
            self._selector.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_write = -1

    def _take_joining(self, events: HostEvents) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                name, channel = self._joining.get_nowait()
            except queue.Empty:
                return
            descriptor = channel.fileno()
            assert descriptor is not None, "only pollable channels are added"
            self._partial[descriptor] = bytearray()
            self._selector.register(descriptor, selectors.EVENT_READ, (name, channel))
            events.append((name, WorkerOpened()))  # before any of its lines

    def _read(self, descriptor: int, name: str, channel: WorkerChannel, events: HostEvents) -> None:
        try:
            data = channel.read_available(READ_PIECE)
            if data is None:
                return
            if data:
                self._lines(descriptor, data, name, events)
                return
            ending: HostEvent = WorkerClosed()
        except worker.ProtocolError as error:
            ending = HostFailed(f"worker sent a bad line: {error}")
        except CndError as error:
            ending = HostFailed(str(error))
        except Exception as error:  # anything else on a host's channel is that host's failure
            ending = HostFailed(f"{type(error).__name__}: {error}")
        self._selector.unregister(descriptor)
        del self._partial[descriptor]
        events.append((name, ending))

    def _lines(self, descriptor: int, data: bytes, name: str, events: HostEvents) -> None:
        """Decode the complete lines in what has arrived; raises ProtocolError at the first bad
        one (the good ones before it are kept)."""
        buffer = self._partial[descriptor]
        buffer += data
        start = 0
        try:
            while True:
                end = buffer.find(b"\n", start)
                if end < 0 or end - start >= LINE_LIMIT:
                    if len(buffer) - start >= LINE_LIMIT:
                        # Over-long: the codec refuses it, as it refuses it from a reader thread.
                        worker.decode_to_controller(bytes(buffer[start : start + LINE_LIMIT]).decode("utf-8", "replace"))
                        raise worker.ProtocolError(f"a line of more than {worker.MAX_LINE_CHARS} characters")
                    return
                line = bytes(buffer[start : end + 1]).decode("utf-8", "replace")
                start = end + 1
                if line.strip():
                    events.append((name, worker.decode_to_controller(line)))
        finally:
            del buffer[:start]
