"""The real worker as a subprocess, spoken to line by line as the controller does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, List, Type, TypeVar

import pytest

from cnd_fab.transport import worker_file
from remote import worker as protocol
from tests.helpers import wait_for_no_workers, worker_processes

BLOCK = b"COMSM0010cloud"
Wanted = TypeVar("Wanted", protocol.Hello, protocol.Progress, protocol.Found, protocol.Done, protocol.Error)


class WorkerProcess:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(worker_file()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def send(self, message: protocol.ToWorker) -> None:
        self.send_line(protocol.encode(message))

    def send_line(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def read(self) -> protocol.ToController:
        """The next line, which must pass the controller's own strict decode."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker closed stdout; stderr: {self.process.stderr.read() if self.process.stderr else ''}"
        return protocol.decode_to_controller(line)

    def read_until(self, kind: Type[Wanted], limit: float = 30.0) -> Wanted:
        return self.read_all_until(kind, limit)[-1]

    def read_all_until(self, kind: Type[Wanted], limit: float = 30.0) -> tuple[List[protocol.ToController], Wanted]:
        """Every message up to and including the first of kind."""
        seen: List[protocol.ToController] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            message = self.read()
            seen.append(message)
            if isinstance(message, kind):
                return seen, message
        raise AssertionError(f"no {kind.TYPE} within {limit}s: {seen[-5:]}")

    def work(self, unit: int, start: int, end: int, difficulty: int, block: bytes = BLOCK, width: int = 4) -> None:
        self.send(protocol.Work(unit=unit, start=start, end=end, block=block.hex(), nonce_bytes=width, difficulty=difficulty))

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


@pytest.fixture
def worker() -> Iterator[WorkerProcess]:
    process = WorkerProcess("--processes", "2", "--run-id", "test-run")
    yield process
    process.kill()


def test_hello_is_first_and_describes_the_host(worker: WorkerProcess) -> None:
    hello = worker.read()
    assert isinstance(hello, protocol.Hello)
    assert hello.version == protocol.PROTOCOL_VERSION
    assert hello.cores == 2
    assert hello.kernel == protocol.KERNEL_NAME
    assert hello.prefetch >= 2
    assert hello.pid == worker.process.pid


def test_done_reports_lowest_golden_of_the_unit(worker: WorkerProcess) -> None:
    worker.read()
    worker.work(0, 0, 1 << 20, 16)
    messages, done = worker.read_all_until(protocol.Done)
    assert done.unit == 0 and done.nonce == 133050
    assert done.hash is not None and done.hash.startswith("0000a77c6f4fa81e")
    assert done.hashes >= 133051 and done.seconds > 0
    found = [m for m in messages if isinstance(m, protocol.Found)]
    assert found and found[-1] == protocol.Found(unit=0, nonce=133050, hash=done.hash)


def test_eight_byte_nonces_and_hex_blocks(worker: WorkerProcess) -> None:
    worker.read()
    block = bytes.fromhex("00ff" * 50)
    worker.work(3, 0, 1 << 19, 16, block=block, width=8)
    done = worker.read_until(protocol.Done)
    assert done.unit == 3 and done.nonce == 167263
    assert done.hash is not None and done.hash.startswith("00006fb3b68d0baf")


def test_unit_without_golden_reports_every_hash(worker: WorkerProcess) -> None:
    worker.read()
    worker.work(7, 5000, 5000 + 40000, 30)
    done = worker.read_until(protocol.Done)
    assert done == done._replace(unit=7, nonce=None, hash=None, hashes=40000)


def test_a_grant_settles_its_units_in_order_up_to_the_golden_one(worker: WorkerProcess) -> None:
    worker.read()
    # Sixteen units of 2^14 nonces; the D=16 answer, 133,050, is in unit 8 (from 131,072).
    size = 1 << 14
    worker.send(protocol.Work(unit=0, start=0, end=16 * size, block=BLOCK.hex(), nonce_bytes=4, difficulty=16, units=16))
    dones: List[protocol.Done] = []
    while not dones or dones[-1].nonce is None:
        dones.append(worker.read_until(protocol.Done))
    # Every unit from 0 up is reported once, in order, and nothing above the golden unit.
    assert [d.unit for d in dones] == [sum(d.units for d in dones[:i]) for i in range(len(dones))]
    assert sum(d.units for d in dones) == 9 and dones[-1].nonce == 133050
    assert [d.hashes for d in dones[:-1]] == [d.units * size for d in dones[:-1]]
    assert dones[-1].hashes == 133050 - dones[-1].unit * size + 1
    for _ in range(3):
        heartbeat = worker.read()
        assert not isinstance(heartbeat, protocol.Done)
        if isinstance(heartbeat, protocol.Progress):
            assert heartbeat.units == ()


def test_cancel_shrinks_a_grant_to_the_units_below_it(worker: WorkerProcess) -> None:
    worker.read()
    size = 1 << 15
    worker.send(protocol.Work(unit=4, start=4 * size, end=12 * size, block=BLOCK.hex(), nonce_bytes=4, difficulty=60, units=8))
    worker.send(protocol.Cancel(above=6))
    reported = 0
    while reported < 3:
        done = worker.read_until(protocol.Done)
        assert done.unit == 4 + reported and done.nonce is None and done.hashes == done.units * size
        reported += done.units
    assert reported == 3  # units 4, 5 and 6; 7 to 11 were cancelled


def test_progress_heartbeats_at_least_once_a_second(worker: WorkerProcess) -> None:
    worker.read()
    worker.work(0, 0, 1 << 24, 64)
    stamps = []
    hashes = []
    for _ in range(6):
        message = worker.read()
        assert isinstance(message, protocol.Progress) and not message.final
        stamps.append(time.monotonic())
        hashes.append(message.hashes)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) < 1.0
    assert hashes[-1] > hashes[0]


def test_cancel_drops_units_above(worker: WorkerProcess) -> None:
    worker.read()
    worker.work(5, 0, 1 << 24, 64)
    worker.work(1, 0, 20000, 64)
    worker.send(protocol.Cancel(above=1))
    done = worker.read_until(protocol.Done)
    assert done.unit == 1
    # Unit 5 is gone: the heartbeats stop listing it and no DONE ever comes for it.
    for _ in range(4):
        heartbeat = worker.read()
        assert isinstance(heartbeat, protocol.Progress)
        units = heartbeat.units
    assert units == ()


def test_malformed_work_comes_back_as_error_with_traceback(worker: WorkerProcess) -> None:
    worker.read()
    # The codec would not encode a unit that ends before it starts, so the line is by hand.
    worker.send_line('{"type":"WORK","unit":0,"start":10,"end":5,"block":"00","nonce_bytes":4,"difficulty":8}')
    error = worker.read_until(protocol.Error)
    assert error.message == "ProtocolError: WORK.start must be below end (5), not 10"
    assert "Traceback" in error.traceback
    assert worker.process.wait(timeout=10) == 1


@pytest.mark.parametrize(
    "line, named",
    [
        ("not json at all", "line is not JSON"),
        ('{"type":"CANCEL","above":-1}', "CANCEL.above must be"),
        ('{"type":"WORK","unit":0,"start":0,"end":5,"block":"00","nonce_bytes":4,"difficulty":true}', "WORK.difficulty must be"),
        (protocol.encode(protocol.Error(message="a worker's line, sent back", traceback="")), "ERROR is sent by a worker"),
    ],
)
def test_any_line_the_codec_refuses_is_an_error_and_an_exit(worker: WorkerProcess, line: str, named: str) -> None:
    """The controller is the only writer of the worker's stdin: a bad line is its bug, said loudly."""
    worker.read()
    worker.send_line(line)
    error = worker.read_until(protocol.Error)
    assert error.message.startswith("ProtocolError: ") and named in error.message
    assert worker.process.wait(timeout=10) == 1


def test_stop_answers_with_a_final_progress_and_exits_leaving_no_child(worker: WorkerProcess) -> None:
    worker.read()
    worker.work(0, 0, 1 << 24, 64)
    worker.read_until(protocol.Progress)
    worker.send(protocol.Stop())
    final = worker.read_until(protocol.Progress)
    while not final.final:
        final = worker.read_until(protocol.Progress)
    assert final.units == (0,)
    assert worker.process.wait(timeout=10) == 0
    assert not wait_for_no_workers(b"test-run")


def test_stdin_eof_exits_and_leaves_no_child(worker: WorkerProcess) -> None:
    worker.read()
    worker.work(0, 0, 1 << 24, 64)
    worker.read_until(protocol.Progress)
    assert worker.process.stdin is not None
    worker.process.stdin.close()
    assert worker.process.wait(timeout=10) == 0
    assert not wait_for_no_workers(b"test-run")


def test_worker_and_cores_die_with_their_parent(tmp_path: Any) -> None:
    """A parent that is SIGKILLed leaves an orphan worker; it must notice and go."""
    marker = "orphan-test-" + str(os.getpid())
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys, time
            # Keep the worker's stdin open through a pipe inherited by nobody else, so
            # only the parent check (not EOF) can end it.
            read_end, write_end = __import__("os").pipe()
            worker = subprocess.Popen([sys.executable, {str(worker_file())!r}, "--processes", "2", "--run-id", {marker!r}], stdin=read_end, stdout=subprocess.DEVNULL)
            print(worker.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(launcher)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout is not None
    int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while len(worker_processes(marker.encode())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(worker_processes(marker.encode())) == 3  # the worker and its two cores
    parent.kill()
    parent.wait()
    assert not wait_for_no_workers(marker.encode(), within=5.0)


def test_worker_file_is_stdlib_only_and_python38_compatible() -> None:
    import ast

    tree = ast.parse(worker_file().read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "vermin"), "--no-tips", "--violations", "-t=3.8-", "--no-parse-comments", str(worker_file())],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_huge_unit_is_cut_into_a_bounded_number_of_chunks(worker: WorkerProcess) -> None:
    worker.read()
    # 8-byte nonces in 1024 units: units of 2^54 nonces. The answer (SPEC) is 340817.
    worker.work(0, 0, 1 << 54, 16, width=8)
    done = worker.read_until(protocol.Done)
    assert done.unit == 0 and done.nonce == 340817
