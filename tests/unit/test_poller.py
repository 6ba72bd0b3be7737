"""The fleet's one reader (poller.HostInbox) and the loop's own writes (HostSession.flush)."""

from __future__ import annotations

import os
import threading
import time
from typing import List, Optional, Tuple

from cnd_fab.outcome import READY
from cnd_fab.poller import LINE_LIMIT, HostEvents, HostInbox
from cnd_fab.session import HostFailed, HostSession, WorkerClosed, WorkerOpened
from cnd_fab.transport import Host, WorkerChannel, WorkerPayload, read_ready
from remote import worker


class PipeEnd(WorkerChannel):
    """The controller's end of a pipe that the test writes the worker's lines into."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)

    def say(self, data: bytes) -> None:
        os.write(self.write_end, data)

    def send_line(self, line: str) -> None:
        raise AssertionError("not written in these tests")

    def read_line(self, limit: int) -> str:
        raise AssertionError("read through fileno()")

    def fileno(self) -> Optional[int]:
        return self.read_end

    def read_available(self, limit: int) -> Optional[bytes]:
        return read_ready(self.read_end, limit)

    def close(self) -> None:
        os.close(self.write_end)


def take(inbox: HostInbox, wanted: int, seconds: float = 5.0) -> HostEvents:
    """Events until `wanted` have arrived (or the time is up)."""
    events: HostEvents = []
    deadline = time.monotonic() + seconds
    while len(events) < wanted and time.monotonic() < deadline:
        events += inbox.wait(0.1)
    return events


PROGRESS = worker.encode(worker.Progress(hashes=5, units=(1,), final=False)).encode() + b"\n"


def test_lines_split_across_reads_arrive_whole_and_in_order() -> None:
    inbox, channel = HostInbox(), PipeEnd()
    inbox.add_channel("a", channel)
    inbox.wait(0.1)  # the channel joins the selector
    channel.say(PROGRESS[:10])
    assert take(inbox, 1, 0.3) == []
    channel.say(PROGRESS[10:] + b"\n   \n" + PROGRESS)  # a blank line is skipped
    events = take(inbox, 2)
    assert [name for name, _ in events] == ["a", "a"]
    assert all(isinstance(event, worker.Progress) and event.hashes == 5 for _, event in events)
    channel.close()
    assert take(inbox, 1) == [("a", WorkerClosed())]
    inbox.close()


def test_a_bad_line_ends_its_host_alone_after_the_good_lines_before_it() -> None:
    inbox, good, bad = HostInbox(), PipeEnd(), PipeEnd()
    inbox.add_channel("good", good)
    inbox.add_channel("bad", bad)
    inbox.wait(0.1)
    bad.say(PROGRESS + b'{"type":"WORK"}\n' + PROGRESS)
    events = take(inbox, 2)
    assert isinstance(events[0][1], worker.Progress) and events[0][0] == "bad"
    assert events[1][0] == "bad" and isinstance(events[1][1], HostFailed)
    assert events[1][1].reason.startswith("worker sent a bad line")
    good.say(PROGRESS)  # the other host is still read
    assert [name for name, _ in take(inbox, 1)] == ["good"]
    inbox.close()


def test_an_over_long_line_is_refused_without_waiting_for_its_end() -> None:
    inbox, channel = HostInbox(), PipeEnd()
    inbox.add_channel("long", channel)
    inbox.wait(0.1)
    writer = threading.Thread(target=channel.say, args=(b"x" * (LINE_LIMIT + 10),), daemon=True)
    writer.start()
    events = take(inbox, 1, 10.0)
    assert len(events) == 1 and isinstance(events[0][1], HostFailed) and "longer than" in events[0][1].reason
    inbox.close()


def test_events_from_threads_wake_the_loop() -> None:
    inbox = HostInbox()
    threading.Timer(0.2, inbox.put, args=("t", WorkerOpened())).start()
    began = time.monotonic()
    assert inbox.wait(5.0) == [("t", WorkerOpened())]
    assert time.monotonic() - began < 4.0
    inbox.close()


class Trickle(WorkerChannel):
    """A worker that takes `room` bytes, then nothing until the test makes room again."""

    sends_without_blocking = True

    def __init__(self, room: int) -> None:
        self.room = room
        self.taken = b""
        self.gone = False

    def send_nowait(self, data: bytes) -> int:
        if self.gone:
            raise OSError("broken pipe")
        sent = data[: self.room]
        self.room -= len(sent)
        self.taken += sent
        return len(sent)

    def send_line(self, line: str) -> None:
        raise AssertionError("the loop writes itself")

    def read_line(self, limit: int) -> str:
        return ""

    def close(self) -> None:
        pass


class NoHost(Host):
    name = "slow"

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        raise AssertionError

    def stop_worker(self) -> None:
        pass


def ready_session(channel: WorkerChannel) -> Tuple[HostSession, set]:
    backlog: set = set()
    session = HostSession(NoHost(), backlog)
    session.view.state = READY
    session.channel = channel
    return session, backlog


def test_what_a_worker_does_not_take_waits_for_the_next_turn_in_order() -> None:
    channel = Trickle(room=10)
    session, backlog = ready_session(channel)
    assert session.send(worker.Cancel(above=7)) is None
    assert session.send(worker.Stop()) is None
    assert backlog == {"slow"} and session.writing_since is not None
    channel.room = 1 << 20
    assert session.flush() is None
    assert backlog == set() and session.writing_since is None
    lines: List[str] = channel.taken.decode().splitlines()
    assert [type(worker.decode_to_worker(line)) for line in lines] == [worker.Cancel, worker.Stop]


def test_a_worker_that_reads_nothing_is_refused_more_lines_and_a_broken_one_fails() -> None:
    from cnd_fab.session import OUTBOX_LIMIT

    session, backlog = ready_session(Trickle(room=0))
    for _ in range(OUTBOX_LIMIT):
        assert session.send(worker.Stop()) is None
    assert session.send(worker.Stop()) == f"not reading its input ({OUTBOX_LIMIT} messages waiting)"
    broken = Trickle(room=0)
    session, backlog = ready_session(broken)
    session.send(worker.Stop())
    broken.gone = True
    assert session.flush() == "write to the worker failed: broken pipe" and backlog == set()
    assert session.send(worker.Stop()) == "write to the worker failed: broken pipe"


def test_an_event_handed_in_after_close_writes_to_no_file() -> None:
    inbox = HostInbox()
    inbox.close()
    reused_read, reused_write = os.pipe()  # likely given the wake pipe's old numbers
    try:
        inbox.put("late", WorkerClosed())
        os.set_blocking(reused_read, False)
        try:
            leaked = os.read(reused_read, 16)
        except BlockingIOError:
            leaked = b""
        assert leaked == b""
    finally:
        os.close(reused_read)
        os.close(reused_write)
