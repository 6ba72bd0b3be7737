"""The real worker when its own processes fail, its kernel lies, or its block is huge.

A core or kernel process SIGKILLed mid-unit (as the OOM killer does) must not stall the unit:
the worker notices at once, redoes the chunk on a fresh process, and the unit still comes
back DONE with the right lowest nonce and an exact hash count. A kernel that answers anything
but the job it was given is never believed. Blocks up to the largest a WORK may carry are
answered right, and heartbeats keep their interval while they are.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from cnd_fab.kernels import ensure_kernels, machine_architecture
from cnd_fab.spec import Problem, zero_bits
from remote import worker as protocol
from tests.helpers import wait_for_no_workers
from tests.unit.test_worker_protocol import BLOCK, WorkerProcess

# COMSM0010cloud at D = 28: the lowest golden nonce, found by the kernel (itself checked
# against hashlib in test_kernel.py); a unit of 2^26 nonces takes about a second on two
# cores to reach it, time enough to kill something on the way.
DEEP_DIFFICULTY = 28
DEEP_NONCE = 43983181
DEEP_UNIT_END = 1 << 26
MARKER = b"fault-run"


def children(pid: int) -> List[int]:
    """The pids of a process's children, from /proc (no psutil)."""
    found: List[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True while pid runs (a zombie waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def core_pids(worker_pid: int) -> List[int]:
    return [pid for pid in children(worker_pid) if "worker.py" in command_line(pid)]


def kernel_pids(worker_pid: int) -> List[int]:
    return [kernel for core in core_pids(worker_pid) for kernel in children(core) if "sha256d" in command_line(kernel)]


def wait_for(what: Callable[[], List[int]], count: int, within: float = 10.0) -> List[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = what()
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} processes within {within}s: {what()}")


@pytest.fixture(scope="module")
def kernel_folder() -> Path:
    folder, problems = ensure_kernels((machine_architecture(),))
    assert folder is not None and not problems, problems
    return folder


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerProcess]]:
    started: List[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        process = WorkerProcess("--processes", "2", "--run-id", MARKER.decode(), *args)
        started.append(process)
        hello = process.read()
        assert isinstance(hello, protocol.Hello), hello
        return process

    yield start
    for process in started:
        process.kill()
    assert not wait_for_no_workers(MARKER)


def read_done(process: WorkerProcess, limit: float) -> Tuple[List[protocol.ToController], protocol.Done]:
    return process.read_all_until(protocol.Done, limit)


def assert_counts_never_go_back(messages: List[protocol.ToController]) -> None:
    counts = [m.hashes for m in messages if isinstance(m, protocol.Progress)]
    assert counts == sorted(counts), counts


def test_a_killed_python_core_is_replaced_and_its_chunk_redone(start_worker: Callable[..., WorkerProcess]) -> None:
    process = start_worker("--kernel", "python")
    cores = wait_for(lambda: core_pids(process.process.pid), 2)
    unit_end = 1 << 22  # D = 64: no golden nonce, so every nonce must be counted exactly once
    process.work(0, 0, unit_end, 64)
    process.read_until(protocol.Progress)
    time.sleep(0.3)
    os.kill(cores[0], signal.SIGKILL)
    # Before cores were replaced, this DONE never came; how soon it comes is a figure, not a test.
    messages, done = read_done(process, 20)
    assert done == done._replace(unit=0, nonce=None, hash=None, hashes=unit_end)
    assert_counts_never_go_back(messages)
    now = wait_for(lambda: core_pids(process.process.pid), 2)
    assert cores[0] not in now and cores[1] in now  # one replacement, in the dead core's place
    # The count may hold the killed core's lost progress, never more than its chunks.
    final = process.read_until(protocol.Progress)
    assert unit_end <= final.hashes <= unit_end + 2 * protocol.DEFAULT_CHUNK_NONCES


def test_a_killed_python_core_still_gives_the_lowest_nonce(start_worker: Callable[..., WorkerProcess]) -> None:
    process = start_worker("--kernel", "python", "--chunk-nonces", str(1 << 19))
    cores = wait_for(lambda: core_pids(process.process.pid), 2)
    # SPEC: COMSM0010cloud, 8-byte nonces, D = 18 -> 951771, in the second of two chunks.
    process.work(0, 0, 1 << 20, 18, width=8)
    process.read_until(protocol.Progress)
    time.sleep(0.1)
    for core in cores:
        os.kill(core, signal.SIGKILL)
    _, done = read_done(process, 20)
    assert done.unit == 0 and done.nonce == 951771
    assert done.hash is not None and done.hash.startswith("00003afee8f6b734")
    assert done.hashes == 951771 + 1  # the first chunk whole, the second up to the answer


@pytest.mark.parametrize("victim", ["core", "kernel"])
def test_a_killed_native_core_or_kernel_still_gives_the_lowest_nonce(
    start_worker: Callable[..., WorkerProcess], kernel_folder: Path, victim: str
) -> None:
    process = start_worker("--kernel", "native", "--kernel-dir", str(kernel_folder))
    wait_for(lambda: kernel_pids(process.process.pid), 2)
    process.work(0, 0, DEEP_UNIT_END, DEEP_DIFFICULTY)
    process.read_until(protocol.Progress)
    time.sleep(0.25)
    before = kernel_pids(process.process.pid)
    target = core_pids(process.process.pid)[0] if victim == "core" else before[0]
    os.kill(target, signal.SIGKILL)
    killed_at = time.monotonic()
    messages, done = read_done(process, 30)
    assert time.monotonic() - killed_at < 10
    assert done.unit == 0 and done.nonce == DEEP_NONCE
    assert done.hash == Problem(BLOCK, 4, DEEP_DIFFICULTY).hash(DEEP_NONCE).hex()
    assert zero_bits(bytes.fromhex(done.hash)) >= DEEP_DIFFICULTY
    # Chunks below the answer counted once (a redone one too); only chunks above it that
    # finished first may add theirs.
    assert DEEP_NONCE + 1 <= done.hashes <= DEEP_NONCE + 1 + 2 * protocol.NATIVE_CHUNK_NONCES
    assert not [m for m in messages if isinstance(m, protocol.Error)]
    assert_counts_never_go_back(messages)
    after = wait_for(lambda: kernel_pids(process.process.pid), 2)
    assert target not in after and not set(before) <= set(after)  # a fresh kernel took over


FAKE_KERNEL = """\
#!{python}
# A kernel that passes the worker's checks (--paths, --once: the real binary) and then
# misbehaves in --serve mode as MODE says.
import os, signal, subprocess, sys
MODE, REAL = {mode!r}, {real!r}
if "--serve" not in sys.argv:
    os.execv(REAL, [REAL] + sys.argv[1:])
print("ready portable", flush=True)
previous = real = None
for line in sys.stdin:
    job, block, width, difficulty, start, end = line.split()
    size = int(end) - int(start)
    if MODE == "wrong-id":
        print(int(job) + 1, 0, 0, size, "-", flush=True)
    elif MODE == "stale":  # the answer meant for the job before
        print(previous or "error - not yet", flush=True)
        previous = "%s 0 0 %d -" % (job, size)
    elif MODE == "unframed":  # the old kernel's reply, without the id
        print(0, 0, size, "-", flush=True)
    elif MODE == "lie":  # a golden nonce with a made-up hash
        print(job, 1, start, 1, "00" * 32, flush=True)
    elif MODE == "short-count":  # "none" after checking half the range
        print(job, 0, 0, size // 2, "-", flush=True)
    elif MODE == "foreign-progress":
        print("p", int(job) + 1, 1, flush=True)
        print(job, 0, 0, size, "-", flush=True)
    elif MODE == "kill-core":  # the core dies on its first chunk, every time
        os.kill(os.getppid(), signal.SIGKILL)
        signal.pause()
    elif MODE == "die-once":  # the first job kills its kernel; every other is relayed to a real one
        if not os.path.exists(REAL + ".died"):
            open(REAL + ".died", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        if real is None:
            real = subprocess.Popen([REAL, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            real.stdout.readline()
        real.stdin.write(line)
        real.stdin.flush()
        reply = "p"
        while reply.startswith("p"):
            reply = real.stdout.readline()
            sys.stdout.write(reply)
            sys.stdout.flush()
"""


def fake_kernel(folder: Path, kernel_folder: Path, mode: str) -> Path:
    """A folder with a fake sha256d-<arch> in the given mode, and a copy of the real one."""
    real = folder / "real-sha256d"
    real.write_bytes((kernel_folder / f"sha256d-{machine_architecture()}").read_bytes())
    real.chmod(0o755)
    fake = folder / f"sha256d-{machine_architecture()}"
    fake.write_text(FAKE_KERNEL.format(python=sys.executable, mode=mode, real=str(real)))
    fake.chmod(0o755)
    return folder


@pytest.mark.parametrize("mode", ["wrong-id", "stale", "unframed", "lie", "short-count", "foreign-progress"])
def test_a_reply_to_another_job_is_never_taken_as_the_answer(tmp_path: Path, kernel_folder: Path, mode: str) -> None:
    folder = fake_kernel(tmp_path, kernel_folder, mode)
    scanner = protocol.NativeScanner([str(folder / f"sha256d-{machine_architecture()}")])
    try:
        with pytest.raises(protocol.KernelFailure, match="does not answer it|not its own|on job 1"):
            scanner.scan(BLOCK, 4, 16, 0, 140000)
    finally:
        scanner.close()


def faked_native_worker(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path, kernel_folder: Path, mode: str
) -> WorkerProcess:
    """A worker on a kernel faked as `mode` says, given unit 0 of the SPEC block at D=16."""
    folder = fake_kernel(tmp_path, kernel_folder, mode)
    process = start_worker("--kernel", "native", "--kernel-dir", str(folder))
    process.work(0, 0, 1 << 20, 16)
    return process


def test_a_lying_kernel_makes_the_worker_fail_not_answer(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path, kernel_folder: Path
) -> None:
    process = faked_native_worker(start_worker, tmp_path, kernel_folder, "wrong-id")
    messages, error = process.read_all_until(protocol.Error, 20)
    assert "does not answer it" in error.traceback and "core process" in error.message
    assert not [m for m in messages if isinstance(m, (protocol.Done, protocol.Found))]
    assert process.process.wait(timeout=10) == 1


def test_a_kernel_that_dies_once_is_restarted_and_the_chunk_redone(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path, kernel_folder: Path
) -> None:
    process = faked_native_worker(start_worker, tmp_path, kernel_folder, "die-once")
    _, done = read_done(process, 20)
    assert done.nonce == 133050 and done.hashes >= 133051
    assert (tmp_path / "real-sha256d.died").exists()


def test_a_chunk_that_kills_every_core_ends_in_an_error_naming_the_dead(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path, kernel_folder: Path
) -> None:
    process = faked_native_worker(start_worker, tmp_path, kernel_folder, "kill-core")
    _, error = process.read_all_until(protocol.Error, 30)
    assert "was killed by signal 9" in error.message and "core process" in error.message
    assert process.process.wait(timeout=10) == 1


def random_block(length: int) -> bytes:
    import random

    return random.Random(length).randbytes(length)


@pytest.mark.parametrize("length", [65537, 100_000, 131_400])
def test_big_blocks_many_units_native_against_python(
    start_worker: Callable[..., WorkerProcess], kernel_folder: Path, length: int
) -> None:
    """The issue's cases: 131,400 bytes at D = 16 lost its answer; 100,000 with many units hung."""
    process = start_worker("--kernel", "native", "--kernel-dir", str(kernel_folder))
    block = random_block(length)
    unit_size = 1 << 16
    for unit in range(6):
        process.work(unit, unit * unit_size, (unit + 1) * unit_size, 14, block=block)
    answers: Dict[int, protocol.Done] = {}
    while len(answers) < 6:
        done = process.read_until(protocol.Done, 30)
        answers[done.unit] = done
    for unit, done in answers.items():
        nonce, digest, checked = protocol.scan_range(block, 4, 14, unit * unit_size, (unit + 1) * unit_size)
        assert (done.nonce, done.hash) == (nonce, None if digest is None else digest.hex()), unit
        # A chunk above the answer that finished first adds its count; nothing else does.
        assert checked <= done.hashes <= unit_size, unit


def test_heartbeats_keep_their_interval_with_the_largest_block(
    start_worker: Callable[..., WorkerProcess], kernel_folder: Path
) -> None:
    process = start_worker("--kernel", "native", "--kernel-dir", str(kernel_folder))
    block = random_block(protocol.MAX_BLOCK_HEX_CHARS // 2)
    units = 8
    for unit in range(units):
        process.work(unit, unit << 22, (unit + 1) << 22, 64, block=block)
    beats: List[float] = []
    done: List[protocol.Done] = []
    deadline = time.monotonic() + 60
    while len(done) < units and time.monotonic() < deadline:
        message = process.read()
        if isinstance(message, protocol.Progress):
            beats.append(time.monotonic())
        elif isinstance(message, protocol.Done):
            done.append(message)
    assert sorted(d.unit for d in done) == list(range(units))
    assert all(d.nonce is None and d.hashes == 1 << 22 for d in done)
    gaps = [later - earlier for earlier, later in zip(beats, beats[1:])]
    assert len(beats) >= 3 and max(gaps) < 0.9, gaps
    # The answer with that block is still right: a unit with a golden nonce, against hashlib.
    process.work(units, 0, 1 << 16, 10, block=block)
    found = process.read_until(protocol.Done, 30)
    nonce, digest, checked = protocol.scan_range(block, 4, 10, 0, 1 << 16)
    assert found.nonce == nonce and digest is not None and found.hash == digest.hex()
    assert checked <= found.hashes <= 1 << 16


def test_a_native_core_killed_mid_unit_costs_no_count_and_leaves_nothing(
    start_worker: Callable[..., WorkerProcess], kernel_folder: Path
) -> None:
    process = start_worker("--kernel", "native", "--kernel-dir", str(kernel_folder))
    kernels = set(wait_for(lambda: kernel_pids(process.process.pid), 2))
    unit_end = 1 << 25  # D = 64: no golden nonce, every nonce counted exactly once
    process.work(0, 0, unit_end, 64)
    process.read_until(protocol.Progress)
    time.sleep(0.3)
    os.kill(core_pids(process.process.pid)[0], signal.SIGKILL)
    messages, done = read_done(process, 30)
    assert done == done._replace(unit=0, nonce=None, hash=None, hashes=unit_end)
    assert_counts_never_go_back(messages)
    kernels |= set(wait_for(lambda: kernel_pids(process.process.pid), 2))
    assert len(kernels) == 3  # the two first kernels, and the replacement core's
    process.send(protocol.Stop())
    final = process.read_until(protocol.Progress)
    while not final.final:
        final = process.read_until(protocol.Progress)
    assert process.process.wait(timeout=10) == 0
    assert not wait_for_no_workers(MARKER)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in kernels) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in kernels if alive(pid)]
