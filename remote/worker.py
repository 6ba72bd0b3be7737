"""cnd-fab worker: searches nonce ranges for golden nonces and reports over stdin/stdout.

This one file is everything that runs on a host. It is stdlib-only and must run on
Python 3.8+, because it is pushed as-is to machines we know nothing about. The controller
imports this same file for its protocol constants, so the two sides cannot drift apart.

Protocol: one JSON object per line, each with a "type" field.

    worker -> controller   HELLO     first line: version, cores, kernel, prefetch, pid
                           PROGRESS  heartbeat, at least once a second: cumulative hashes;
                                     the answer to STOP is a last one marked "final"
                           FOUND     a golden nonce, as soon as any core sees one
                           DONE      a unit is settled: its hashes, seconds and lowest golden
                           ERROR     a failure, with the traceback text; the worker then exits
    controller -> worker   WORK      one unit: index, [start, end), block, nonce width, D
                           CANCEL    forget every unit above "above"
                           STOP      exit now

stdout carries only the protocol; diagnostics go to stderr.
"""

import argparse
import hashlib
import heapq
import json
import math
import os
import platform
import queue
import re
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple, Dict, Optional, Tuple, Type, Union

PROTOCOL_VERSION = 1

HELLO = "HELLO"
WORK = "WORK"
CANCEL = "CANCEL"
PROGRESS = "PROGRESS"
FOUND = "FOUND"
DONE = "DONE"
ERROR = "ERROR"
STOP = "STOP"

# The codec. Each message is a class whose fields are the JSON keys. encode() writes one line; decode() is the one place a line is checked, on both
# sides, so every field has a type and a range and a bad line is refused naming both.
# Hex text (hash, block) is lowercase. Unknown extra keys are ignored, so a newer peer
# may add fields without breaking an older one.

NONCE_LIMIT = 1 << 64
# Bounds on what one line may cost the reader; a WORK with the largest block still fits.
MAX_LINE_CHARS = 2 << 20
MAX_BLOCK_HEX_CHARS = 1 << 20
MAX_TEXT_CHARS = 4 << 10
MAX_TRACEBACK_CHARS = 64 << 10
MAX_COUNT = 1 << 16


# Each message is a NamedTuple of its JSON keys, declared in the functional form so that
# TYPE, its "type", is a class attribute of the subclass and not a field.


class Hello(
    NamedTuple(
        "Hello",
        [
            ("version", int), ("cores", int), ("kernel", str), ("kernel_note", Optional[str]), ("mode", str),
            ("prefetch", int), ("pid", int), ("pgid", int), ("python", str), ("host", str),
        ],
    )
):
    """The worker's first line: who it is and how much work to keep queued at it."""

    __slots__ = ()
    TYPE = HELLO


class Progress(NamedTuple("Progress", [("hashes", int), ("units", Tuple[int, ...]), ("final", bool)])):
    """A heartbeat: hashes checked so far and the units held; final answers STOP."""

    __slots__ = ()
    TYPE = PROGRESS


class Found(NamedTuple("Found", [("unit", int), ("nonce", int), ("hash", str)])):
    """A golden nonce of a unit, sent as soon as a core sees it."""

    __slots__ = ()
    TYPE = FOUND


class Done(
    NamedTuple(
        "Done",
        [
            ("unit", int),
            ("hashes", int),
            ("seconds", float),
            ("nonce", Optional[int]),
            ("hash", Optional[str]),
        ],
    )
):
    """A settled unit: its hashes, seconds and lowest golden nonce (both null if none)."""

    __slots__ = ()
    TYPE = DONE


class Error(NamedTuple("Error", [("message", str), ("traceback", str)])):
    """A failure with the worker's traceback text; the worker exits after sending it."""

    __slots__ = ()
    TYPE = ERROR


class Work(
    NamedTuple(
        "Work",
        [("unit", int), ("start", int), ("end", int), ("block", str), ("nonce_bytes", int), ("difficulty", int)],
    )
):
    """One unit: nonces [start, end) of block (hex) with nonce_bytes-wide nonces, at D."""

    __slots__ = ()
    TYPE = WORK


class Cancel(NamedTuple("Cancel", [("above", int)])):
    """Forget every unit numbered above "above"."""

    __slots__ = ()
    TYPE = CANCEL


class Stop(NamedTuple("Stop", [])):
    """Answer with a final PROGRESS and exit."""

    __slots__ = ()
    TYPE = STOP


Message = Union[Hello, Progress, Found, Done, Error, Work, Cancel, Stop]
ToController = Union[Hello, Progress, Found, Done, Error]
ToWorker = Union[Work, Cancel, Stop]


class ProtocolError(ValueError):
    """A line that is not a valid protocol message; the text names the type and field."""


def encode(message: Message) -> str:
    """One compact JSON line for message, without the newline."""
    fields: Dict[str, Any] = {"type": message.TYPE}
    fields.update(message._asdict())
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


# A field check returns the value as the message holds it, or raises _Unfit with what the
# value must be; decode() adds the message type, the field and the offending value.
_Check = Callable[[Any], Any]


class _Unfit(Exception):
    pass


def _power(number: int) -> str:
    if number == NONCE_LIMIT:
        return "2^64"
    if number == NONCE_LIMIT - 1:
        return "2^64-1"
    return str(number)


def _whole(low: int, high: int) -> _Check:
    def check(value: Any) -> int:
        # bool is a subclass of int, and JSON true must not pass for 1.
        if type(value) is not int or not low <= value <= high:
            raise _Unfit("a whole number from %s to %s" % (_power(low), _power(high)))
        return value

    return check


def _any_whole(value: Any) -> int:
    if type(value) is not int:
        raise _Unfit("a whole number")
    return value


def _one_of(*choices: int) -> _Check:
    def check(value: Any) -> int:
        if type(value) is not int or value not in choices:
            raise _Unfit("one of " + ", ".join(str(choice) for choice in choices))
        return value

    return check


def _seconds(value: Any) -> float:
    if type(value) in (int, float):
        try:
            seconds = float(value)
        except OverflowError:  # a whole number too big for a float
            seconds = math.inf
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    raise _Unfit("a finite number of seconds, at least 0")


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise _Unfit("true or false")
    return value


def _text(limit: int) -> _Check:
    def check(value: Any) -> str:
        if type(value) is not str or len(value) > limit:
            raise _Unfit("text of at most %d characters" % limit)
        return value

    return check


_HEX_DIGITS = re.compile("[0-9a-f]*").fullmatch


def _hex(shortest: int, longest: int, want: str) -> _Check:
    def check(value: Any) -> str:
        if type(value) is not str or not shortest <= len(value) <= longest or len(value) % 2 or not _HEX_DIGITS(value):
            raise _Unfit(want)
        return value

    return check


def _optional(check: _Check) -> _Check:
    def optional(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except _Unfit as unfit:
            raise _Unfit("null or %s" % unfit) from None

    return optional


def _units(value: Any) -> Tuple[int, ...]:
    if type(value) is list and len(value) <= MAX_COUNT:
        try:
            return tuple(_COUNT(unit) for unit in value)
        except _Unfit:
            pass
    raise _Unfit("a list of at most %d whole numbers from 0 to 2^64" % MAX_COUNT)


_COUNT = _whole(0, NONCE_LIMIT)
_NONCE = _whole(0, NONCE_LIMIT - 1)
_SIZE = _whole(1, MAX_COUNT)
_PROCESS_ID = _whole(0, (1 << 31) - 1)
_TEXT = _text(MAX_TEXT_CHARS)
_HASH = _hex(64, 64, "64 lowercase hex digits")
_BLOCK = _hex(0, MAX_BLOCK_HEX_CHARS, "an even number of lowercase hex digits, at most %d" % MAX_BLOCK_HEX_CHARS)

_CHECKS: Dict[Type[Any], Dict[str, _Check]] = {
    Hello: {
        "version": _any_whole,
        "cores": _SIZE,
        "kernel": _TEXT,
        "kernel_note": _optional(_TEXT),
        "mode": _TEXT,
        "prefetch": _SIZE,
        "pid": _PROCESS_ID,
        "pgid": _PROCESS_ID,
        "python": _TEXT,
        "host": _TEXT,
    },
    Progress: {"hashes": _COUNT, "units": _units, "final": _flag},
    Found: {"unit": _COUNT, "nonce": _NONCE, "hash": _HASH},
    Done: {"unit": _COUNT, "hashes": _COUNT, "seconds": _seconds, "nonce": _optional(_NONCE), "hash": _optional(_HASH)},
    Error: {"message": _TEXT, "traceback": _text(MAX_TRACEBACK_CHARS)},
    Work: {
        "unit": _COUNT,
        "start": _COUNT,
        "end": _COUNT,
        "block": _BLOCK,
        "nonce_bytes": _one_of(4, 8),
        "difficulty": _whole(1, 256),
    },
    Cancel: {"above": _COUNT},
    Stop: {},
}

MESSAGE_CLASSES: Dict[str, Type[Any]] = {cls.TYPE: cls for cls in _CHECKS}
# Fields an older or terser peer may leave out, and what they then mean.
_DEFAULTS: Dict[Type[Any], Dict[str, Any]] = {Progress: {"final": False}, Error: {"traceback": ""}}


def _shown(value: Any) -> str:
    # JSON's spelling for null, true and false; repr (quoted, escaped) for the rest.
    text = json.dumps(value) if value is None or type(value) is bool else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_constant(name: str) -> Any:
    raise ValueError("%s is not a JSON number" % name)


def _consistent(message: Message) -> Message:
    """message, after the checks that span fields (each field alone is checked already)."""
    if isinstance(message, Work):
        if message.start >= message.end:
            raise ProtocolError("WORK.start must be below end (%d), not %d" % (message.end, message.start))
        bits = 8 * message.nonce_bytes
        if message.end > 1 << bits:
            raise ProtocolError(
                "WORK.end must be at most 2^%d for %d-byte nonces, not %d" % (bits, message.nonce_bytes, message.end)
            )
    elif isinstance(message, Done) and (message.nonce is None) != (message.hash is None):
        raise ProtocolError(
            "DONE.hash must be null exactly when DONE.nonce is, not %s with nonce %s"
            % (_shown(message.hash), _shown(message.nonce))
        )
    return message


def decode(line: str) -> Message:
    """The message on one line, checked strictly; raises ProtocolError naming the field."""
    if len(line) > MAX_LINE_CHARS:
        raise ProtocolError("line of %d characters is longer than %d" % (len(line), MAX_LINE_CHARS))
    try:
        fields = json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # RecursionError: "[[[[..." nested too deep
        raise ProtocolError("line is not JSON (%s): %s" % (error, _shown(line))) from None
    if type(fields) is not dict:
        raise ProtocolError("line is not a JSON object: %s" % _shown(line))
    kind = fields.get("type")
    cls = MESSAGE_CLASSES.get(kind) if type(kind) is str else None
    if cls is None:
        raise ProtocolError("unknown message type %s" % _shown(kind))
    values: Dict[str, Any] = {}
    for name, check in _CHECKS[cls].items():
        if name not in fields:
            if name not in _DEFAULTS.get(cls, {}):
                raise ProtocolError("%s.%s is missing" % (kind, name))
            values[name] = _DEFAULTS[cls][name]
            continue
        try:
            values[name] = check(fields[name])
        except _Unfit as unfit:
            raise ProtocolError("%s.%s must be %s, not %s" % (kind, name, unfit, _shown(fields[name]))) from None
    message: Message = cls(**values)
    return _consistent(message)


def decode_to_controller(line: str) -> ToController:
    """decode() for lines a worker sends: a command on them is a ProtocolError."""
    message = decode(line)
    if isinstance(message, (Work, Cancel, Stop)):
        raise ProtocolError("%s is sent to a worker, never by one" % message.TYPE)
    return message


def decode_to_worker(line: str) -> ToWorker:
    """decode() for lines a worker reads: only commands are allowed."""
    message = decode(line)
    if not isinstance(message, (Work, Cancel, Stop)):
        raise ProtocolError("%s is sent by a worker, never to one" % message.TYPE)
    return message


KERNEL_NAME = "python-hashlib"
NATIVE_PREFIX = "native:"
KERNEL_BINARY_PREFIX = "sha256d-"
HEARTBEAT_SECONDS = 0.5
# Chunks are the pieces a unit is cut into for the cores: about a quarter of a second of
# work each (2^18 nonces in Python, 2^22 in the native kernel), so cancellation and
# progress stay prompt while the per-chunk overhead (a queue hop, and for the kernel a pipe
# round trip of some tens of microseconds) stays far below 1%.
DEFAULT_CHUNK_NONCES = 1 << 18
NATIVE_CHUNK_NONCES = 1 << 22
MIN_CHUNK_NONCES = 1 << 14
# Chunks are listed when a unit arrives: a huge unit (8-byte nonces, few units) gets bigger
# chunks instead of an endless list. Progress and cancel still come every stride.
MAX_CHUNKS_PER_UNIT = 1 << 12
# The kernel must find this SPEC vector before it is trusted: COMSM0010cloud, D = 16.
SELF_TEST = ("434f4d534d30303130636c6f7564", "4", "16", "0", "140000")
SELF_TEST_ANSWER = "1 133050 133051 0000a77c6f4fa81ede0bb05ea58430a21d2bceeb80660c573e678a703d006afd"
# How often a core publishes its hash count and looks for a cancel.
COUNT_STRIDE = 1 << 14
NO_CANCEL = (1 << 64) - 1

SPLIT = "split"
WHOLE = "whole"


def golden_target(difficulty):
    """A hash is golden when, read as a 256-bit big-endian number, it is below this."""
    return (1 << (256 - difficulty)).to_bytes(32, "big")


def scan_range(block, nonce_bytes, difficulty, start, end, on_stride=None):
    """Return (nonce, hash, checked) for the lowest golden nonce in [start, end).

    nonce and hash are None when the range holds none. on_stride(checked_so_far) is
    called every COUNT_STRIDE nonces; when it returns True the scan stops early.
    """
    prefix = hashlib.sha256(block)
    copy_prefix = prefix.copy
    sha256 = hashlib.sha256
    pack = struct.Struct(">I" if nonce_bytes == 4 else ">Q").pack
    target = golden_target(difficulty)
    position = start
    while position < end:
        stride_end = min(end, position + COUNT_STRIDE)
        for nonce in range(position, stride_end):
            inner = copy_prefix()
            inner.update(pack(nonce))
            digest = sha256(inner.digest()).digest()
            if digest < target:
                return nonce, digest, nonce - start + 1
        position = stride_end
        if on_stride is not None and on_stride(position - start):
            return None, None, position - start
    return None, None, end - start


def _cgroup_cpu_limit():
    """The CPU quota of this process's cgroup in cores (v2, then v1), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
        try:
            with open(folder + "/cpu.cfs_quota_us") as handle:
                quota = int(handle.read())
            with open(folder + "/cpu.cfs_period_us") as handle:
                period = int(handle.read())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def effective_cores():
    """Cores this process may really use: affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, int(-(-limit // 1)))
    return max(1, cores)


def machine_architecture():
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def select_kernel(kernel_dir, choice="auto", forced_path=None):
    """(argv of the native kernel or None, its name for HELLO, a note on why not native).

    The binary for this machine must run, list its paths and pass the SPEC self-test;
    anything less falls back to the pure-Python scan, and says why.
    """
    import subprocess

    if choice == "python":
        return None, KERNEL_NAME, "pure Python was asked for"
    binary = os.path.join(kernel_dir or "", KERNEL_BINARY_PREFIX + machine_architecture())
    note = None
    if not kernel_dir or not os.path.isfile(binary):
        note = "no native kernel for %s" % machine_architecture()
    else:
        try:
            if not os.access(binary, os.X_OK):
                os.chmod(binary, 0o755)
            listed = subprocess.run([binary, "--paths"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
            paths = listed.stdout.decode().split()
            if listed.returncode != 0 or not paths:
                note = "the native kernel does not run here (exit %d)" % listed.returncode
            elif forced_path and forced_path not in paths:
                note = "kernel path %s is not available on this CPU (it has: %s)" % (forced_path, ", ".join(paths))
            else:
                path = forced_path or paths[0]
                argv = [binary, "--path", path]
                tested = subprocess.run(argv + ["--once"] + list(SELF_TEST), stdout=subprocess.PIPE, timeout=30)
                if tested.stdout.decode().strip() != SELF_TEST_ANSWER:
                    note = "the native kernel failed its self-test"
                else:
                    return argv, NATIVE_PREFIX + path, None
        except (OSError, subprocess.SubprocessError) as error:
            note = "the native kernel does not run here (%s)" % error
    if choice == "native":
        raise RuntimeError("a native kernel was required: " + note)
    return None, KERNEL_NAME, note


class NativeScanner(object):
    """One long-lived kernel process per core, fed one chunk per line."""

    def __init__(self, argv):
        self.argv = argv
        self._start()

    def _start(self):
        import subprocess

        self.process = subprocess.Popen(self.argv + ["--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready = self.process.stdout.readline().decode()
        if not ready.startswith("ready "):
            raise RuntimeError("the native kernel did not start: %r" % ready)

    def scan(self, block, nonce_bytes, difficulty, start, end, on_stride=None):
        """(nonce, hash, checked) like scan_range, or None when the kernel refuses the job.

        The kernel's "p <checked>" lines go to on_stride; when it asks to stop, the kernel
        is killed mid-chunk and a fresh one started, so a cancel takes effect at once.
        """
        if end == 1 << 64:
            # The kernel's range ends are 64-bit: the very last nonce is checked here.
            head = self.scan(block, nonce_bytes, difficulty, start, end - 1, on_stride) if end - 1 > start else (None, None, 0)
            if head is None or head[0] is not None or head[2] < end - 1 - start:
                return head
            nonce, digest, checked = scan_range(block, nonce_bytes, difficulty, end - 1, end)
            return nonce, digest, head[2] + checked
        request = "%s %d %d %d %d\n" % (block.hex() or "-", nonce_bytes, difficulty, start, end)
        self.process.stdin.write(request.encode())
        self.process.stdin.flush()
        while True:
            answer = self.process.stdout.readline().decode().split()
            if len(answer) == 2 and answer[0] == "p":
                if on_stride is not None and on_stride(int(answer[1])):
                    self.process.kill()
                    self.process.wait()
                    self._start()
                    return None, None, int(answer[1])
                continue
            break
        if len(answer) != 4 or answer[0] not in ("0", "1"):
            return None
        if answer[0] == "1":
            return int(answer[1]), bytes.fromhex(answer[3]), int(answer[2])
        return None, None, int(answer[2])


def _die_with_parent():
    """Ask Linux to SIGKILL this process when its parent dies, so no core outlives the worker."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _core_main(slot, tasks, results, counters, cancel_above, parent_pid, kernel_argv):
    """One core: take chunks off the task queue until told to quit or orphaned."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    native = None
    if kernel_argv:
        try:
            native = NativeScanner(kernel_argv)
        except Exception:
            results.put(("error", traceback.format_exc()))
            return
    base = 0
    while True:
        task = tasks.get()
        if task is None:
            return
        unit, start, end, block, nonce_bytes, difficulty = task
        began = time.monotonic()

        def on_stride(checked, unit=unit):
            counters[slot] = base + checked
            if os.getppid() != parent_pid:
                os._exit(1)
            return unit > cancel_above.value

        if unit > cancel_above.value:
            results.put(("chunk", unit, start, end, None, None, 0, 0.0, True))
            continue
        try:
            answer = native.scan(block, nonce_bytes, difficulty, start, end, on_stride) if native else None
            if answer is None:  # pure Python, or a job the kernel refuses (a huge block)
                answer = scan_range(block, nonce_bytes, difficulty, start, end, on_stride)
            nonce, digest, checked = answer
        except Exception:  # reported, not raised: the main process turns it into ERROR
            results.put(("error", traceback.format_exc()))
            return
        base += checked
        counters[slot] = base
        cancelled = nonce is None and checked < end - start
        results.put(("chunk", unit, start, end, nonce, digest, checked, time.monotonic() - began, cancelled))


class UnitState(object):
    """What the main process knows of one unit while its chunks are out."""

    def __init__(self, index, start, end, chunks):
        self.index = index
        self.start = start
        self.end = end
        self.began = time.monotonic()
        self.chunks_left = set(chunks)
        self.best_nonce = None
        self.best_hash = None
        self.hashes = 0

    def settled(self):
        """True when every chunk that could hold a lower golden nonce has reported."""
        if self.best_nonce is None:
            return not self.chunks_left
        return all(start > self.best_nonce for start in self.chunks_left)


class Worker(object):
    """The main process: reads the protocol, feeds the cores, writes results."""

    def __init__(self, processes, mode, chunk_nonces, kernel_argv=None, kernel_name=KERNEL_NAME, kernel_note=None, out=None):
        import multiprocessing

        self.kernel_name = kernel_name
        self.kernel_note = kernel_note
        self.out = out or sys.stdout
        self.out_lock = threading.Lock()
        self.processes = processes
        self.mode = mode
        self.chunk_nonces = chunk_nonces
        self.inbox = queue.Queue()
        self.units = {}
        self.pending = []  # heap of (unit, start, end, block, nonce_bytes, difficulty)
        self.outstanding = 0
        self.cancel_floor = NO_CANCEL
        context = multiprocessing.get_context("fork")
        self.tasks = context.SimpleQueue()
        self.results = context.SimpleQueue()
        self.counters = context.Array("Q", processes, lock=False)
        self.cancel_above = context.Value("Q", NO_CANCEL, lock=False)
        # The cores are forked before any thread starts, so no lock is copied held.
        self.cores = [
            context.Process(
                target=_core_main,
                args=(slot, self.tasks, self.results, self.counters, self.cancel_above, os.getpid(), kernel_argv),
                daemon=True,
            )
            for slot in range(processes)
        ]
        for core in self.cores:
            core.start()

    def send(self, message: ToController) -> None:
        """Write one protocol line to the controller."""
        line = encode(message)
        with self.out_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def progress(self, final=False):
        """A PROGRESS with the cores' current counts."""
        return Progress(hashes=sum(self.counters), units=tuple(sorted(self.units)), final=final)

    def prefetch(self):
        """Units the controller should keep queued here so no core waits between units."""
        if self.mode == WHOLE:
            return self.processes + 1
        return 2 + self.processes // 8

    def run(self):
        self.send(
            Hello(
                version=PROTOCOL_VERSION,
                cores=self.processes,
                kernel=self.kernel_name,
                kernel_note=self.kernel_note,
                mode=self.mode,
                prefetch=self.prefetch(),
                pid=os.getpid(),
                pgid=os.getpgid(0),
                python=platform.python_version(),
                host=platform.node(),
            )
        )
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        threading.Thread(target=self._read_results, name="results", daemon=True).start()
        parent = os.getppid()
        next_beat = 0.0
        try:
            while True:
                timeout = max(0.0, next_beat - time.monotonic())
                try:
                    kind, payload = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    kind, payload = None, None
                if kind == "stdin":
                    if payload is None:
                        return 0
                    # A line the codec refuses raises here, and main() reports it as ERROR.
                    command = decode_to_worker(payload)
                    if isinstance(command, Stop):
                        # The exact count, so a stopped run reports what was really checked.
                        self.send(self.progress(final=True))
                        return 0
                    self._handle_command(command)
                elif kind == "result":
                    self._handle_result(payload)
                if time.monotonic() >= next_beat:
                    if os.getppid() != parent:
                        return 1
                    self.send(self.progress())
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
        finally:
            self.shutdown()

    def _read_stdin(self):
        for raw in sys.stdin:
            raw = raw.strip()
            if raw:
                self.inbox.put(("stdin", raw))
        self.inbox.put(("stdin", None))

    def _read_results(self):
        while True:
            try:
                result = self.results.get()
            except (EOFError, OSError):
                return
            self.inbox.put(("result", result))

    def _handle_command(self, command):
        if isinstance(command, Work):
            self._accept_unit(command)
        else:
            self._cancel_above(command.above)
        self._feed_cores()

    def _accept_unit(self, work):
        index, start, end = work.unit, work.start, work.end
        block = bytes.fromhex(work.block)
        nonce_bytes, difficulty = work.nonce_bytes, work.difficulty
        if index > self.cancel_floor:
            return
        if self.mode == WHOLE:
            step = end - start
        else:
            # At least one chunk per core, so a single unit keeps every core busy.
            step = max(MIN_CHUNK_NONCES, min(self.chunk_nonces, -(-(end - start) // self.processes)))
            step = max(step, -(-(end - start) // MAX_CHUNKS_PER_UNIT))
        starts = list(range(start, end, step))
        self.units[index] = UnitState(index, start, end, starts)
        for chunk_start in starts:
            heapq.heappush(
                self.pending,
                (index, chunk_start, min(end, chunk_start + step), block, nonce_bytes, difficulty),
            )
        if len(self.units) == 1:
            # Tell the controller at once that this host went from idle to working.
            self.send(self.progress())

    def _cancel_above(self, above):
        self.cancel_floor = min(self.cancel_floor, above)
        self.cancel_above.value = self.cancel_floor
        self.pending = [task for task in self.pending if task[0] <= above]
        heapq.heapify(self.pending)
        for index in [index for index in self.units if index > above]:
            del self.units[index]

    def _feed_cores(self):
        # Only a couple of chunks per core sit in the shared queue; the rest wait in our
        # heap, where a reissued lower unit can still jump ahead of them.
        while self.pending and self.outstanding < 2 * self.processes:
            self.tasks.put(heapq.heappop(self.pending))
            self.outstanding += 1

    def _handle_result(self, result):
        if result[0] == "error":
            raise RuntimeError("a core failed:\n" + result[1])
        _, index, start, end, nonce, digest, checked, seconds, cancelled = result
        self.outstanding -= 1
        state = self.units.get(index)
        if state is not None:
            state.hashes += checked
            state.chunks_left.discard(start)
            if nonce is not None and (state.best_nonce is None or nonce < state.best_nonce):
                state.best_nonce, state.best_hash = nonce, digest
                self.send(Found(unit=index, nonce=nonce, hash=digest.hex()))
                # Chunks above a golden nonce cannot change this unit's answer.
                self.pending = [t for t in self.pending if not (t[0] == index and t[1] > nonce)]
                heapq.heapify(self.pending)
                state.chunks_left = set(s for s in state.chunks_left if s <= nonce)
            if state.settled():
                del self.units[index]
                self.send(
                    Done(
                        unit=index,
                        hashes=state.hashes,
                        seconds=round(time.monotonic() - state.began, 6),
                        nonce=state.best_nonce,
                        hash=None if state.best_hash is None else state.best_hash.hex(),
                    )
                )
        self._feed_cores()

    def shutdown(self):
        for core in self.cores:
            if core.is_alive():
                core.terminate()
        deadline = time.monotonic() + 2.0
        for core in self.cores:
            core.join(max(0.0, deadline - time.monotonic()))
            if core.is_alive():
                core.kill()
                core.join()


RUN_DIR_PREFIX = "cnd-fab-"
PIDFILE_NAME = "worker.pid"


def parse_args(argv):
    parser = argparse.ArgumentParser(description="cnd-fab worker (speaks JSON lines on stdin/stdout)")
    parser.add_argument("--processes", type=int, default=0, help="cores to use (0: all this host may use)")
    parser.add_argument("--mode", choices=(SPLIT, WHOLE), default=SPLIT)
    parser.add_argument("--chunk-nonces", type=int, default=0, help="nonces per chunk (0: suit the kernel)")
    parser.add_argument("--kernel-dir", default="", help="folder holding sha256d-<architecture> binaries")
    parser.add_argument("--kernel", choices=("auto", "python", "native"), default="auto")
    parser.add_argument("--kernel-path", default=None, help="force a native kernel path, such as portable")
    parser.add_argument("--run-id", default="", help="only to label the process for teardown")
    parser.add_argument("--own-session", action="store_true", help="lead a new session, so one kill ends every core")
    parser.add_argument("--pidfile", default="", help="write the session's process group id here")
    parser.add_argument("--cleanup", default="", metavar="RUN_DIR", help="kill the worker of RUN_DIR, then remove it")
    return parser.parse_args(argv)


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup(run_dir, grace=1.0):
    """Kill the process group named in RUN_DIR's pidfile (TERM, then KILL), remove RUN_DIR.

    Runs on the host, started by the controller over SSH, so killing needs no shell and no
    procps. Only directories named like ours are removed.
    """
    import shutil

    run_dir = os.path.abspath(run_dir)
    if not os.path.basename(run_dir).startswith(RUN_DIR_PREFIX):
        sys.stderr.write("refusing to clean %r: not a cnd-fab run directory\n" % run_dir)
        return 2
    killed = None
    try:
        with open(os.path.join(run_dir, PIDFILE_NAME)) as handle:
            pgid = int(handle.read().strip())
    except (OSError, ValueError):
        pgid = None
    if pgid is not None and pgid > 1 and pgid != os.getpgid(0):
        killed = False
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
            killed = True
    shutil.rmtree(run_dir, ignore_errors=True)
    sys.stdout.write(json.dumps({"cleaned": run_dir, "pgid": pgid, "killed": killed}) + "\n")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cleanup:
        return cleanup(args.cleanup)
    if args.own_session:
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader, as under sshd: the group is ours either way
    if args.pidfile:
        with open(args.pidfile, "w") as handle:
            handle.write("%d\n" % os.getpgid(0))
    processes = args.processes if args.processes > 0 else effective_cores()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    worker = None
    try:
        kernel_argv, kernel_name, kernel_note = select_kernel(args.kernel_dir, args.kernel, args.kernel_path)
        chunk = args.chunk_nonces or (NATIVE_CHUNK_NONCES if kernel_argv else DEFAULT_CHUNK_NONCES)
        worker = Worker(processes, args.mode, max(1, chunk), kernel_argv, kernel_name, kernel_note)
        return worker.run()
    except SystemExit:
        raise
    except BaseException as error:
        # Cut to what decode() accepts; a traceback's end names the failure, so keep that.
        message = ("%s: %s" % (type(error).__name__, error))[:MAX_TEXT_CHARS]
        line = encode(Error(message=message, traceback=traceback.format_exc()[-MAX_TRACEBACK_CHARS:]))
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
