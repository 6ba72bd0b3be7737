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

A core process or native kernel that dies (the OOM killer, a stray kill) is noticed at once
and its chunk redone on a fresh one, so the unit still settles with its lowest nonce; when
that keeps failing, the worker sends ERROR and the controller reissues its units.
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
LEAVING = "LEAVING"

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
MAX_NOTICE_CHARS = 64


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
    """A heartbeat: hashes checked so far and the first unit of each grant held; final answers STOP."""

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
            ("units", int),
        ],
    )
):
    """Settled units: `units` of them from `unit` up, their hashes, the seconds since their
    grant arrived, and the lowest golden nonce (both null if none), which is always in the
    last of them: the units of a grant above a golden one cannot hold the answer."""

    __slots__ = ()
    TYPE = DONE

    def __new__(cls, unit, hashes, seconds, nonce, hash, units=1):
        return super().__new__(cls, unit, hashes, seconds, nonce, hash, units)


class Error(NamedTuple("Error", [("message", str), ("traceback", str)])):
    """A failure with the worker's traceback text; the worker exits after sending it."""

    __slots__ = ()
    TYPE = ERROR


class Leaving(NamedTuple("Leaving", [("action", str), ("time", str)])):
    """A spot interruption notice: the host will be reclaimed (`action`) at `time` (UTC)."""

    __slots__ = ()
    TYPE = LEAVING


class Work(
    NamedTuple(
        "Work",
        [
            ("unit", int), ("start", int), ("end", int), ("block", str), ("nonce_bytes", int), ("difficulty", int),
            ("units", int),
        ],
    )
):
    """A grant: `units` consecutive units of equal size from `unit` up, together nonces
    [start, end) of block (hex) with nonce_bytes-wide nonces, at D."""

    __slots__ = ()
    TYPE = WORK

    def __new__(cls, unit, start, end, block, nonce_bytes, difficulty, units=1):
        return super().__new__(cls, unit, start, end, block, nonce_bytes, difficulty, units)

    @property
    def unit_size(self) -> int:
        """Nonces in each unit of the grant."""
        return (self.end - self.start) // self.units


class Cancel(NamedTuple("Cancel", [("above", int)])):
    """Forget every unit numbered above "above"."""

    __slots__ = ()
    TYPE = CANCEL


class Stop(NamedTuple("Stop", [])):
    """Answer with a final PROGRESS and exit."""

    __slots__ = ()
    TYPE = STOP


Message = Union[Hello, Progress, Found, Done, Error, Leaving, Work, Cancel, Stop]
ToController = Union[Hello, Progress, Found, Done, Error, Leaving]
ToWorker = Union[Work, Cancel, Stop]


class ProtocolError(ValueError):
    """A line that is not a valid protocol message; the text names the type and field."""


# json.dumps() and json.loads() build a new encoder or decoder at every call that passes an
# option, and JSONEncoder.encode() its C encoder at every call: a fleet's controller codes
# tens of thousands of lines a second, so these are made once. The C encoder is the one
# JSONEncoder itself uses (flat messages need no check for cycles); a Python without it, or
# whose encoder does not answer as expected, uses JSONEncoder.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _c_encoder() -> Optional[Callable[[Dict[str, Any], int], Any]]:
    make = getattr(json.encoder, "c_make_encoder", None)  # None without the C accelerator
    if make is None:
        return None
    try:
        made = make(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
        if "".join(made({"a": [1, None, True, "\u00e9"], "b": 0.5}, 0)) != '{"a":[1,null,true,"\\u00e9"],"b":0.5}':
            return None
    except Exception:  # another signature: JSONEncoder does the same, only slower
        return None
    try:
        made({"a": float("nan")}, 0)
    except ValueError:
        return made  # and it refuses NaN, as allow_nan=False does
    return None


_C_ENCODE = _c_encoder()


def encode(message: Message) -> str:
    """One compact JSON line for message, without the newline."""
    fields: Dict[str, Any] = {"type": message.TYPE}
    fields.update(message._asdict())
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(fields, 0))
    return _ENCODER.encode(fields)


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
    Done: {
        "unit": _COUNT,
        "hashes": _COUNT,
        "seconds": _seconds,
        "nonce": _optional(_NONCE),
        "hash": _optional(_HASH),
        "units": _SIZE,
    },
    Error: {"message": _TEXT, "traceback": _text(MAX_TRACEBACK_CHARS)},
    Leaving: {"action": _text(MAX_NOTICE_CHARS), "time": _text(MAX_NOTICE_CHARS)},
    Work: {
        "unit": _COUNT,
        "start": _COUNT,
        "end": _COUNT,
        "block": _BLOCK,
        "nonce_bytes": _one_of(4, 8),
        "difficulty": _whole(1, 256),
        "units": _SIZE,
    },
    Cancel: {"above": _COUNT},
    Stop: {},
}

MESSAGE_CLASSES: Dict[str, Type[Any]] = {cls.TYPE: cls for cls in _CHECKS}
# Fields an older or terser peer may leave out, and what they then mean.
_DEFAULTS: Dict[Type[Any], Dict[str, Any]] = {
    Progress: {"final": False},
    Error: {"traceback": ""},
    Work: {"units": 1},
    Done: {"units": 1},
}


def _shown(value: Any) -> str:
    # JSON's spelling for null, true and false; repr (quoted, escaped) for the rest.
    text = json.dumps(value) if value is None or type(value) is bool else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_constant(name: str) -> Any:
    raise ValueError("%s is not a JSON number" % name)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


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
        if (message.end - message.start) % message.units:
            raise ProtocolError(
                "WORK.units must split its %d nonces into equal units, not %d" % (message.end - message.start, message.units)
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
        fields = _DECODER.decode(line)
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
# The controller may ask a large fleet's workers to beat less often (--heartbeat): a thousand
# hosts at two lines a second would keep it busy with heartbeats alone.
HEARTBEAT_RANGE = (0.05, 10.0)
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


# Spot interruption notices, read from the instance metadata service (IMDSv2) on the host.
SPOT_POLL_SECONDS = 5.0
METADATA_TIMEOUT = 2.0
#: The only metadata services the worker will ask: the instance's own, or a test stand-in.
METADATA_HOSTS = ("169.254.169.254", "127.0.0.1")


def metadata_base(url):
    """`url` if it is an http URL on one of METADATA_HOSTS, else ValueError."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in METADATA_HOSTS or parts.path not in ("", "/"):
        raise ValueError("--metadata-url must be http://169.254.169.254 or a loopback stand-in, not %r" % url)
    return url.rstrip("/")


def spot_notice(base_url):
    """The spot interruption notice at the metadata service `base_url`, as Leaving, or None."""
    import urllib.error
    import urllib.request

    # No proxy, whatever the environment says: the request must reach base_url itself.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    token_request = urllib.request.Request(
        base_url + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with opener.open(token_request, timeout=METADATA_TIMEOUT) as reply:
        token = reply.read(4096).decode("ascii", "replace").strip()
    notice_request = urllib.request.Request(
        base_url + "/latest/meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": token}
    )
    try:
        with opener.open(notice_request, timeout=METADATA_TIMEOUT) as reply:
            notice = json.loads(reply.read(4096).decode("utf-8", "replace"))
    except urllib.error.HTTPError as error:
        if error.code == 404:  # no interruption scheduled
            return None
        raise
    if not isinstance(notice, dict):
        raise ValueError("the interruption notice is not a JSON object")
    action, when = notice.get("action"), notice.get("time")
    if type(action) is not str or type(when) is not str:
        raise ValueError("the interruption notice has no action and time")
    return Leaving(action=action[:MAX_NOTICE_CHARS], time=when[:MAX_NOTICE_CHARS])


def watch_spot_notices(base_url, send):
    """Ask the metadata service every SPOT_POLL_SECONDS; send LEAVING once on a notice."""
    while True:
        try:
            notice = spot_notice(base_url)
        except (OSError, ValueError):
            notice = None  # the service did not answer this time: search on, and ask again
        if notice is not None:
            send(notice)
            return
        time.sleep(SPOT_POLL_SECONDS)


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


class KernelFailure(RuntimeError):
    """The kernel process died, or sent a line that is not the answer to the job it was given."""


# A kernel's reply is one short line; anything longer is not a reply.
MAX_KERNEL_REPLY = 4096
_DECIMAL = re.compile("[0-9]+").fullmatch
_HASH_TEXT = re.compile("[0-9a-f]{64}").fullmatch


def double_sha256(block, nonce_bytes, nonce):
    """SHA-256(SHA-256(block || nonce)), the nonce big-endian in nonce_bytes bytes."""
    return hashlib.sha256(hashlib.sha256(block + nonce.to_bytes(nonce_bytes, "big")).digest()).digest()


class NativeScanner(object):
    """One long-lived kernel process per core, fed one chunk per line, every reply checked.

    Each job carries an id that the kernel echoes on its progress, answer and error lines, so
    a reply to some other line (a stale answer, a piece of a split line) is never taken for
    this job's answer. The kernel remembers the last block it accepted ("="), so a big block
    crosses the pipe once, not once per chunk.
    """

    def __init__(self, argv):
        self.argv = argv
        self.process = None
        self.job_id = 0
        self.kernel_block = None  # the block "=" names in the kernel, once a job with it is answered
        self._start()

    def _start(self):
        import subprocess

        self.process = subprocess.Popen(self.argv + ["--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.kernel_block = None
        ready = self.process.stdout.readline(MAX_KERNEL_REPLY).decode("ascii", "replace")
        if not ready.startswith("ready "):
            raise KernelFailure("the native kernel did not start: %r" % ready)

    def close(self):
        """Kill the kernel process, if it still runs, and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.kill()
        except OSError:
            pass
        process.wait()
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:  # unsent bytes for a dead process
                pass

    def restart(self):
        """A fresh kernel process in place of this one, whatever became of it."""
        self.close()
        self._start()

    def _failure(self, job, what):
        process = self.process
        try:
            # A kernel that closed its output is exiting: give it a moment to say how.
            status = process.wait(timeout=0.5)
        except Exception:
            status = None
        if status is None:
            state = "is running"
        elif status < 0:
            state = "was killed by signal %d" % -status
        else:
            state = "exited with status %d" % status
        return KernelFailure("kernel process %d %s, on job %d: %s" % (process.pid, state, job, what))

    def _reply(self, job):
        line = self.process.stdout.readline(MAX_KERNEL_REPLY)
        if not line.endswith(b"\n"):
            raise self._failure(job, "its output ended" if not line else "a reply line too long: %r" % line[:80])
        return line[:-1].decode("ascii", "replace").split(" ")

    def scan(self, block, nonce_bytes, difficulty, start, end, on_stride=None):
        """(nonce, hash, checked) like scan_range, or None when the kernel refuses the job.

        A kernel that dies, or answers anything but this very job (its id, a count that fits
        the range, a golden hash that hashlib confirms), raises KernelFailure: the caller
        restarts it and redoes the chunk, and never takes such a line as an answer. The
        kernel's "p <id> <checked>" lines go to on_stride; when it asks to stop, the kernel is
        killed mid-chunk and a fresh one started, so a cancel takes effect at once.
        """
        if end == 1 << 64:
            # The kernel's range ends are 64-bit: the very last nonce is checked here.
            head = self.scan(block, nonce_bytes, difficulty, start, end - 1, on_stride) if end - 1 > start else (None, None, 0)
            if head is None or head[0] is not None or head[2] < end - 1 - start:
                return head
            nonce, digest, checked = scan_range(block, nonce_bytes, difficulty, end - 1, end)
            return nonce, digest, head[2] + checked
        self.job_id += 1
        job = self.job_id
        job_text = str(job)
        size = end - start
        same_block = self.kernel_block is not None and block == self.kernel_block
        request = "%d %s %d %d %d %d\n" % (job, "=" if same_block else block.hex() or "-", nonce_bytes, difficulty, start, end)
        try:
            self.process.stdin.write(request.encode("ascii"))
            self.process.stdin.flush()
        except OSError as error:
            raise self._failure(job, "sending it failed (%s)" % error)
        words = self._reply(job)
        while words[0] == "p":
            if len(words) != 3 or words[1] != job_text or not _DECIMAL(words[2]) or int(words[2]) > size:
                raise self._failure(job, "a progress line that is not its own: %r" % " ".join(words)[:120])
            if on_stride is not None and on_stride(int(words[2])):
                self.restart()
                return None, None, int(words[2])
            words = self._reply(job)
        if words[0] == "error" and len(words) >= 3 and words[1] == job_text:
            return None  # refused: the caller scans this chunk in Python
        answer = None
        if len(words) == 5 and words[0] == job_text and _DECIMAL(words[2]) and _DECIMAL(words[3]):
            nonce, checked = int(words[2]), int(words[3])
            if words[1] == "0" and words[2] == "0" and checked == size and words[4] == "-":
                answer = None, None, checked
            elif words[1] == "1" and start <= nonce < end and checked == nonce - start + 1 and _HASH_TEXT(words[4]):
                digest = bytes.fromhex(words[4])
                if digest == double_sha256(block, nonce_bytes, nonce) and digest < golden_target(difficulty):
                    answer = nonce, digest, checked
        if answer is None:
            raise self._failure(job, "a reply that does not answer it: %r" % " ".join(words)[:160])
        self.kernel_block = block
        return answer


def _die_with_parent():
    """Ask Linux to SIGKILL this process when its parent dies, so no core outlives the worker."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class _Tally(object):
    """One core's entry in the shared hash counts: it never goes down, nor counts a nonce twice.

    A chunk redone on a fresh kernel or core restarts its own count from 0. The entry stays at
    what was already shown until the redo passes it, so PROGRESS never steps back and the
    redone nonces are counted once.
    """

    def __init__(self, counters, slot, answered):
        self.counters = counters
        self.slot = slot
        self.answered = answered  # hashes of this slot's chunks already answered to the worker
        self.shown = counters[slot]

    def show(self, checked):
        """Publish the count with `checked` nonces of the current chunk done."""
        value = self.answered + checked
        if value > self.shown:
            self.counters[self.slot] = self.shown = value

    def answer(self, checked):
        """The current chunk is answered with `checked` nonces."""
        self.show(checked)
        self.answered += checked


def _scan_chunk(native, block, nonce_bytes, difficulty, start, end, on_stride):
    """(nonce, hash, checked) of one chunk: the kernel's, or Python's where it refuses the job."""
    if native is not None:
        try:
            answer = native.scan(block, nonce_bytes, difficulty, start, end, on_stride)
        except KernelFailure:
            # Killed (the OOM killer) or confused: a fresh kernel redoes the whole chunk. A
            # second failure on the same chunk is not bad luck, and goes up as an ERROR.
            native.restart()
            answer = native.scan(block, nonce_bytes, difficulty, start, end, on_stride)
        if answer is not None:
            return answer
    return scan_range(block, nonce_bytes, difficulty, start, end, on_stride)


def _core_main(link, inherited, slot, counters, cancel_above, parent_pid, kernel_argv, answered):
    """One core: scan the chunks its link brings, in order, until told to quit or orphaned.

    The link carries tasks (unit, start, end, block or None for the last block, nonce
    bytes, D) in, and ("chunk", ...) or ("error", traceback) out.
    """
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forked from the worker, this process holds copies of the worker's ends of every link,
    # its own included; only the core's own end is for it.
    for connection in inherited:
        connection.close()
    tally = _Tally(counters, slot, answered)
    native = None
    if kernel_argv:
        try:
            native = NativeScanner(kernel_argv)
        except Exception:
            link.send(("error", traceback.format_exc()))
            return
    block = None
    while True:
        try:
            task = link.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        unit, start, end, sent_block, nonce_bytes, difficulty = task
        if sent_block is not None:
            block = sent_block
        began = time.monotonic()

        def on_stride(checked, unit=unit):
            tally.show(checked)
            if os.getppid() != parent_pid:
                os._exit(1)
            return unit > cancel_above.value

        if unit > cancel_above.value:
            link.send(("chunk", unit, start, end, None, None, 0, 0.0, True))
            continue
        try:
            nonce, digest, checked = _scan_chunk(native, block, nonce_bytes, difficulty, start, end, on_stride)
        except Exception:  # reported, not raised: the main process turns it into ERROR
            link.send(("error", traceback.format_exc()))
            return
        tally.answer(checked)
        cancelled = nonce is None and checked < end - start
        link.send(("chunk", unit, start, end, nonce, digest, checked, time.monotonic() - began, cancelled))


def _how_it_ended(exitcode):
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        return "was killed by signal %d" % -exitcode
    return "exited with status %d" % exitcode


class CoreLink(object):
    """The worker's end of one core process: a pipe each way and the chunks sent down it.

    A writer thread sends tasks and a reader thread posts what comes back to the inbox as
    ("core", (link, message)), so the main loop never blocks on a busy core, whatever the
    block's size. Only the core holds the other end of the pipe, so a core that dies, however
    it dies, is an EOF here at once, posted as ("core", (link, None)).
    """

    def __init__(self, context, slot, inbox, core_args, inherited):
        here, there = context.Pipe(duplex=True)
        self.slot = slot
        self.inbox = inbox
        self.connection = here
        self.chunks = []  # tasks sent and not yet answered, in the order the core takes them
        self.outbox = queue.Queue()
        self.process = context.Process(
            target=_core_main, args=(there, list(inherited) + [here], slot) + core_args, daemon=True
        )
        self.process.start()
        there.close()
        self.threads = []

    def start_threads(self):
        """Start the writer and the reader, once the core is forked."""
        for target, role in ((self._write, "writer"), (self._read, "reader")):
            thread = threading.Thread(target=target, name="core-%d-%s" % (self.slot, role), daemon=True)
            thread.start()
            self.threads.append(thread)

    def send(self, task):
        """Queue a task for the core; it is answered in order."""
        self.chunks.append(task)
        self.outbox.put(task)

    def _write(self):
        last_block = None
        while True:
            task = self.outbox.get()
            if task is None:
                return
            unit, start, end, block, nonce_bytes, difficulty = task
            # The block crosses only when it changes: one unit's chunks share one bytes object.
            wire = (unit, start, end, None if block is last_block else block, nonce_bytes, difficulty)
            try:
                self.connection.send(wire)
            except (OSError, ValueError):  # the core is gone; the reader reports it
                return
            last_block = block

    def _read(self):
        while True:
            try:
                message = self.connection.recv()
            except Exception:  # EOF, or a message cut off by the core's death
                break
            self.inbox.put(("core", (self, message)))
        self.inbox.put(("core", (self, None)))

    def describe(self):
        """How this core ended, for an ERROR message: "core process 1 (pid 123) was killed by signal 9"."""
        return "core process %d (pid %d) %s" % (self.slot, self.process.pid, _how_it_ended(self.process.exitcode))

    def retire(self):
        """Reap the dead core and let go of its pipe; its reader thread has already ended."""
        self.outbox.put(None)
        self.process.join(1.0)
        if self.process.is_alive():  # a garbled pipe, not a death: end it
            self.process.kill()
            self.process.join()
        for thread in self.threads:
            thread.join(1.0)
        # Closed only when no thread can still be using it, or its number could be reused under one.
        if not any(thread.is_alive() for thread in self.threads):
            self.connection.close()

    def stop(self):
        """Ask the core to stop (SIGTERM); shutdown() waits for it."""
        self.outbox.put(None)
        if self.process.is_alive():
            self.process.terminate()


class GrantState(object):
    """What the main process knows of one grant while its chunks are out.

    A grant's units have one size and follow each other, and its chunks may span units, so a
    grant of many small units costs a few long chunks per core, not a round trip per unit.
    Units settle lowest first: every nonce below the lowest unanswered chunk is checked, so
    the units below it are settled; a golden nonce settles its unit once every chunk below it
    has answered, and the grant's units above it are dropped (they cannot hold the answer).
    """

    def __init__(self, first, count, start, unit_size, chunks):
        self.key = first  # the unit it arrived with, which names it in Worker.grants
        self.first = first  # the lowest unit not yet reported settled
        self.last = first + count - 1
        self.start = start  # where unit `first` begins
        self.unit_size = unit_size
        self.began = time.monotonic()
        self.chunks_left = dict(chunks)  # start -> unit it starts in, for every chunk not answered yet
        self.best_nonce = None
        self.best_hash = None

    def unit_of(self, nonce):
        """The unit of the grant that holds `nonce`."""
        return self.first + (nonce - self.start) // self.unit_size

    def end(self):
        """Where the grant's last unit ends."""
        return self.start + (self.last - self.first + 1) * self.unit_size

    def drop_above(self, above):
        """Forget the units numbered above `above`; the (unit, start) of the chunks so dropped."""
        if above >= self.last:
            return []
        self.last = max(above, self.first - 1)
        bound = self.end()
        return self._drop([start for start in self.chunks_left if start >= bound])

    def _drop(self, starts):
        return [(self.chunks_left.pop(start), start) for start in starts]

    def take_golden(self, nonce, digest):
        """A chunk found `nonce`: keep it if lowest; the (unit, start) of the chunks it makes useless."""
        if self.best_nonce is not None and nonce >= self.best_nonce:
            return []
        self.best_nonce, self.best_hash = nonce, digest
        self.last = self.unit_of(nonce)
        return self._drop([start for start in self.chunks_left if start > nonce])

    def settled(self):
        """A Done for the units that settled since the last one, or None; advances past them."""
        if self.first > self.last:
            return None
        lowest_open = min(self.chunks_left) if self.chunks_left else None
        golden = self.best_nonce
        if golden is not None and (lowest_open is None or lowest_open > golden):
            count, hashes = self.last - self.first + 1, golden - self.start + 1
        else:
            reach = self.end() if lowest_open is None else lowest_open
            count = min((reach - self.start) // self.unit_size, self.last - self.first + 1)
            if golden is not None:
                count = min(count, self.unit_of(golden) - self.first)
            golden, hashes = None, count * self.unit_size
        if count <= 0:
            return None
        done = Done(
            unit=self.first,
            hashes=hashes,
            seconds=round(time.monotonic() - self.began, 6),
            nonce=golden,
            hash=None if golden is None else self.best_hash.hex(),
            units=count,
        )
        self.first += count
        self.start += count * self.unit_size
        return done

    def finished(self):
        """True once every unit is reported or dropped."""
        return self.first > self.last


# A core that dies is replaced and its chunks redone. A chunk that has killed this many cores,
# or a slot whose cores die this many times in a row without answering a chunk, is no bad
# luck: the worker gives up with an ERROR, and the controller reissues its units elsewhere.
MAX_CHUNK_DEATHS = 3
MAX_DEATHS_IN_A_ROW = 3
# Chunks queued at each core: the one it scans and the next, so it never waits for us.
CHUNKS_PER_CORE = 2


def read_protocol_lines(inbox):
    """Post each line of stdin to `inbox` as ("stdin", line), then ("stdin", None) at its end."""
    # Raw reads of fd 0, never sys.stdin: a thread blocked inside sys.stdin holds its lock,
    # and a replacement core forked meanwhile would hang for ever when multiprocessing closes
    # its copy of sys.stdin.
    buffer = bytearray()

    def post(raw):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            inbox.put(("stdin", line))

    while True:
        try:
            data = os.read(0, 1 << 16)
        except OSError:
            data = b""
        if not data:
            break
        searched = len(buffer)
        buffer += data
        while True:
            newline = buffer.find(b"\n", searched)
            if newline < 0:
                break
            post(bytes(buffer[:newline]))
            del buffer[: newline + 1]
            searched = 0
        if len(buffer) > 4 * MAX_LINE_CHARS:
            # No newline in sight: decode() refuses it by its length, and the worker ends.
            post(bytes(buffer))
            buffer.clear()
    post(bytes(buffer))
    inbox.put(("stdin", None))


class CoreDeaths(object):
    """Counts core deaths, and gives up (RuntimeError) once they are no longer bad luck."""

    def __init__(self, processes):
        self.in_a_row = [0] * processes
        self.by_chunk = {}  # (unit, chunk start) -> cores that died scanning it

    def answered(self, slot):
        """Slot `slot` answered a chunk: its run of deaths ends."""
        self.in_a_row[slot] = 0

    def died(self, link, what):
        """Count `link`'s death; raise when its chunk or its slot has killed too many."""
        slot = link.slot
        self.in_a_row[slot] += 1
        if link.chunks:
            scanning = link.chunks[0][:2]
            self.by_chunk[scanning] = self.by_chunk.get(scanning, 0) + 1
            if self.by_chunk[scanning] >= MAX_CHUNK_DEATHS:
                raise RuntimeError(
                    "%s; unit %d's chunk at %d has now ended %d core processes, so it is not redone again"
                    % ((what,) + scanning + (self.by_chunk[scanning],))
                )
        if self.in_a_row[slot] >= MAX_DEATHS_IN_A_ROW:
            raise RuntimeError(
                "%s; %d core processes in a row in slot %d died without answering a chunk"
                % (what, self.in_a_row[slot], slot)
            )


def split_prefetch(processes):
    """HELLO's prefetch when every unit is split across the cores (the --within model uses it)."""
    return 2 + processes // 8


class Worker(object):
    """The main process: reads the protocol, feeds the cores, replaces dead ones, writes results."""

    def __init__(
        self, processes, mode, chunk_nonces, kernel_argv=None, kernel_name=KERNEL_NAME, kernel_note=None, out=None, metadata_url=None,
        heartbeat=HEARTBEAT_SECONDS,
    ):
        import multiprocessing

        self.heartbeat = heartbeat
        self.kernel_name = kernel_name
        self.kernel_note = kernel_note
        self.kernel_argv = kernel_argv
        self.metadata_url = metadata_url
        self.out = out or sys.stdout
        self.out_lock = threading.Lock()
        self.processes = processes
        self.mode = mode
        self.chunk_nonces = chunk_nonces
        self.inbox = queue.Queue()
        self.grants = {}  # the unit a grant arrived with -> its GrantState
        self.chunk_grants = {}  # (unit, start) of every chunk not answered yet -> its grant
        self.pending = []  # heap of (unit, start, end, block, nonce_bytes, difficulty)
        self.cancel_floor = NO_CANCEL
        self.block_hex, self.block = None, None
        self.context = multiprocessing.get_context("fork")
        self.counters = self.context.Array("Q", processes, lock=False)
        self.cancel_above = self.context.Value("Q", NO_CANCEL, lock=False)
        self.answered = [0] * processes  # per slot: hashes of the chunks its cores answered
        self.deaths = CoreDeaths(processes)
        # The first cores are forked before any thread starts. A replacement core is forked
        # while threads run, so those threads hold no lock the child needs: stdin is read
        # raw (not through sys.stdin, which the child closes), and the child uses nothing
        # of the parent's but its own link and the shared counters.
        self.links = []
        for slot in range(processes):
            self.links.append(self._fork_core(slot))
        for link in self.links:
            link.start_threads()

    def _fork_core(self, slot):
        core_args = (self.counters, self.cancel_above, os.getpid(), self.kernel_argv, self.answered[slot])
        return CoreLink(self.context, slot, self.inbox, core_args, [link.connection for link in self.links])

    def send(self, message: ToController) -> None:
        """Write one protocol line to the controller."""
        line = encode(message)
        with self.out_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def progress(self, final=False):
        """A PROGRESS with the cores' current counts and the first unit of each grant held."""
        return Progress(hashes=sum(self.counters), units=tuple(sorted(g.first for g in self.grants.values())), final=final)

    def prefetch(self):
        """Units the controller should keep queued here so no core waits between units."""
        if self.mode == WHOLE:
            return self.processes + 1
        return split_prefetch(self.processes)

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
        threading.Thread(target=read_protocol_lines, args=(self.inbox,), name="stdin", daemon=True).start()
        if self.metadata_url:
            threading.Thread(target=watch_spot_notices, args=(self.metadata_url, self.send), name="spot", daemon=True).start()
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
                elif kind == "core":
                    link, message = payload
                    if message is None:
                        self._core_died(link)
                    else:
                        self._handle_result(link, message)
                if time.monotonic() >= next_beat:
                    if os.getppid() != parent:
                        return 1
                    self.send(self.progress())
                    next_beat = time.monotonic() + self.heartbeat
        finally:
            self.shutdown()

    def _handle_command(self, command):
        if isinstance(command, Work):
            self._accept_unit(command)
        else:
            self._cancel_above(command.above)
        self._feed_cores()

    def _accept_unit(self, work):
        index, start, end = work.unit, work.start, work.end
        if work.block != self.block_hex:
            # Units of one search share one block: one bytes object, decoded once, which the
            # core links then send to each core once.
            self.block_hex, self.block = work.block, bytes.fromhex(work.block)
        block = self.block
        nonce_bytes, difficulty = work.nonce_bytes, work.difficulty
        if index > self.cancel_floor:
            return
        size = work.unit_size
        if self.mode == WHOLE:
            step = size
        else:
            # At least one chunk per core, so a single unit keeps every core busy; chunks span
            # units, so a grant of small units still goes out in long chunks.
            step = max(MIN_CHUNK_NONCES, min(self.chunk_nonces, -(-(end - start) // self.processes)))
            step = max(step, -(-(end - start) // MAX_CHUNKS_PER_UNIT))
        chunks = [(chunk_start, index + (chunk_start - start) // size) for chunk_start in range(start, end, step)]
        grant = GrantState(index, work.units, start, size, chunks)
        grant.drop_above(self.cancel_floor)
        self.grants[index] = grant
        for chunk_start, unit in sorted(grant.chunks_left.items()):
            self.chunk_grants[(unit, chunk_start)] = grant
            task = (unit, chunk_start, min(end, chunk_start + step), block, nonce_bytes, difficulty)
            heapq.heappush(self.pending, task)
        if len(self.grants) == 1:
            # Tell the controller at once that this host went from idle to working.
            self.send(self.progress())

    def _cancel_above(self, above):
        self.cancel_floor = min(self.cancel_floor, above)
        self.cancel_above.value = self.cancel_floor
        self.pending = [task for task in self.pending if task[0] <= above]
        heapq.heapify(self.pending)
        for grant in list(self.grants.values()):
            for chunk in grant.drop_above(above):
                self.chunk_grants.pop(chunk, None)
            self._report(grant)

    def _report(self, grant):
        """Send DONE for whatever of `grant` has settled; forget the grant once it is all told."""
        done = grant.settled()
        if done is not None:
            self.send(done)
        if grant.finished():
            self.grants.pop(grant.key, None)
            for start, unit in list(grant.chunks_left.items()):
                self.chunk_grants.pop((unit, start), None)

    def _feed_cores(self):
        # A couple of chunks per core sit in its pipe; the rest wait in our heap, where a
        # reissued lower unit can still jump ahead of them. The least loaded core goes first.
        while self.pending:
            link = min(self.links, key=lambda each: len(each.chunks))
            if len(link.chunks) >= CHUNKS_PER_CORE:
                return
            link.send(heapq.heappop(self.pending))

    def _still_needed(self, task):
        grant = self.chunk_grants.get(task[:2])
        return grant is not None and task[1] in grant.chunks_left

    def _core_died(self, link):
        """Replace a dead core, and put the chunks it held back in the heap to be redone."""
        link.retire()
        slot = link.slot
        self.deaths.died(link, link.describe())
        needed = [task for task in link.chunks if self._still_needed(task)]
        # The replacement counts on from the chunks answered, under what was shown (see _Tally).
        # So the dead core's chunks go to it, not to another core: redone elsewhere, they would
        # be counted there while this slot still shows their partial count.
        self.links[slot] = self._fork_core(slot)
        self.links[slot].start_threads()
        for task in needed:
            self.links[slot].send(task)
        self._feed_cores()

    def _handle_result(self, link, result):
        if result[0] == "error":
            # The traceback's last line names the failure: it leads, the rest follows for detail.
            cause = (result[1].strip().splitlines() or ["no traceback"])[-1]
            raise RuntimeError("core process %d (pid %d) failed: %s\n%s" % (link.slot, link.process.pid, cause, result[1]))
        _, index, start, end, nonce, digest, checked, seconds, cancelled = result
        # A core answers its chunks in the order it was sent them.
        link.chunks.pop(0)
        self.answered[link.slot] += checked
        self.deaths.answered(link.slot)
        grant = self.chunk_grants.pop((index, start), None)
        if grant is not None and grant.chunks_left.pop(start, None) is not None:
            if nonce is not None and (grant.best_nonce is None or nonce < grant.best_nonce):
                self.send(Found(unit=grant.unit_of(nonce), nonce=nonce, hash=digest.hex()))
                # Chunks above a golden nonce cannot change the answer.
                dropped = set(grant.take_golden(nonce, digest))
                for chunk in dropped:
                    self.chunk_grants.pop(chunk, None)
                self.pending = [t for t in self.pending if t[:2] not in dropped]
                heapq.heapify(self.pending)
            self._report(grant)
        self._feed_cores()

    def shutdown(self):
        for link in self.links:
            link.stop()
        deadline = time.monotonic() + 2.0
        for link in self.links:
            link.process.join(max(0.0, deadline - time.monotonic()))
            if link.process.is_alive():
                link.process.kill()
                link.process.join()


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
    parser.add_argument("--heartbeat", type=heartbeat_seconds, default=HEARTBEAT_SECONDS, help="seconds between PROGRESS lines")
    parser.add_argument("--metadata-url", default="", help="watch this instance metadata service for spot interruptions")
    return parser.parse_args(argv)


def _group_members(pgid):
    """pid -> argv of every live (not zombie) process in process group pgid; None without /proc."""
    members = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                stat = handle.read()
            # After "pid (command) ": state, parent, process group. The command may hold ") ".
            state, _, group = stat[stat.rindex(b")") + 2 :].split()[:3]
            if int(group) != pgid or state in (b"Z", b"X"):
                continue
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                argv = handle.read().split(b"\0")
        except (OSError, ValueError):
            continue
        members[int(name)] = [arg.decode("utf-8", "surrogateescape") for arg in argv if arg]
    return members


def _runs_from(argv, run_dirs):
    """True when a command line runs a file of the run directory: its worker, cores or kernels."""
    if "--cleanup" in argv:
        return False
    return any(arg.startswith(run_dir + "/") for arg in argv for run_dir in run_dirs)


def _group_alive(pgid):
    """True while some process is in group pgid (zombies included), by signal 0."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _wait_for_group(pgid, seconds):
    """True when group pgid has no live process left within `seconds`."""
    deadline = time.monotonic() + seconds
    while _group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


# --cleanup's exit status. 0, 10 and 12 all mean nothing of this run is left running. They stay
# clear of 1 and 2, which Python itself uses (2: the worker file is gone, or a usage error).
CLEANUP_KILLED = 0  # this run's worker was running; it was signalled and is gone
CLEANUP_NOTHING = 10  # nothing was running: no pidfile, or its group had ended
CLEANUP_REFUSED = 11  # not a cnd-fab run directory: nothing touched
CLEANUP_NOT_OURS = 12  # the pidfile's group runs something else (a reused id): left alone
CLEANUP_UNCONFIRMED = 13  # the worker outlived SIGKILL, or without /proc it could not be told apart
_CLEANUP_RESULTS = {
    CLEANUP_KILLED: "killed",
    CLEANUP_NOTHING: "nothing running",
    CLEANUP_NOT_OURS: "not ours",
    CLEANUP_UNCONFIRMED: "unconfirmed",
}


def cleanup(run_dir, grace=1.0):
    """Kill RUN_DIR's worker, if its process group still runs it, then remove RUN_DIR.

    Runs on the host, started by the controller over SSH, so it needs no shell and no procps.
    Only a directory named like ours is removed. The pidfile's group is signalled (TERM,
    then KILL) only when one of its live processes runs a file from RUN_DIR (the worker's
    script, its pidfile, a kernel): after the worker has ended, its id may be anyone's. A
    group id cannot be reused while any process of the group lives, so a group that no
    longer runs from RUN_DIR holds nothing of this run.

    Returns, as the exit status (and the "result" of the JSON line on stdout):
      0 (CLEANUP_KILLED)    this run's worker was running; it was signalled and is gone
      10 (CLEANUP_NOTHING)  nothing was running: no pidfile, or its group had ended
      11 (CLEANUP_REFUSED)  RUN_DIR is not a cnd-fab run directory: nothing was touched
      12 (CLEANUP_NOT_OURS) the group runs something else now: it was left alone
      13 (CLEANUP_UNCONFIRMED) the worker outlived SIGKILL, or a live group could not be
                            checked (no /proc) and was left alone: the stop is not confirmed
    Every status but 11 removes RUN_DIR; 0, 10 and 12 mean nothing of this run is left running.
    """
    import shutil

    given = run_dir.rstrip("/") or run_dir
    run_dir = os.path.abspath(run_dir)
    if not os.path.basename(run_dir).startswith(RUN_DIR_PREFIX):
        sys.stderr.write("refusing to clean %r: not a cnd-fab run directory\n" % run_dir)
        return CLEANUP_REFUSED
    try:
        with open(os.path.join(run_dir, PIDFILE_NAME)) as handle:
            pgid = int(handle.read().strip())
    except (OSError, ValueError):
        pgid = None
    status = CLEANUP_NOTHING
    if pgid is not None and pgid > 1 and pgid != os.getpgid(0):
        members = _group_members(pgid)
        ours = [pid for pid, argv in (members or {}).items() if _runs_from(argv, {run_dir, given})]
        if members is None:
            if _group_alive(pgid):
                status = CLEANUP_UNCONFIRMED
                sys.stderr.write("left process group %d alone: without /proc it cannot be told to be this run's\n" % pgid)
        elif members and not ours:
            status = CLEANUP_NOT_OURS
            sys.stderr.write(
                "left process group %d alone: none of its processes runs from %s, so the id is "
                "no longer this run's worker\n" % (pgid, run_dir)
            )
        elif ours:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            if not _wait_for_group(pgid, grace):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            status = CLEANUP_KILLED if _wait_for_group(pgid, grace) else CLEANUP_UNCONFIRMED
    shutil.rmtree(run_dir, ignore_errors=True)
    sys.stdout.write(
        json.dumps({"cleaned": run_dir, "pgid": pgid, "killed": status == CLEANUP_KILLED, "result": _CLEANUP_RESULTS[status]})
        + "\n"
    )
    return status


def heartbeat_seconds(text):
    """--heartbeat's value: seconds within HEARTBEAT_RANGE."""
    seconds = float(text)
    if not HEARTBEAT_RANGE[0] <= seconds <= HEARTBEAT_RANGE[1]:
        raise ValueError("heartbeat of %r seconds is outside %r" % (text, HEARTBEAT_RANGE))
    return seconds


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
        metadata_url = metadata_base(args.metadata_url) if args.metadata_url else None
        worker = Worker(
            processes, args.mode, max(1, chunk), kernel_argv, kernel_name, kernel_note, metadata_url=metadata_url,
            heartbeat=args.heartbeat,
        )
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


def exit_promptly(code):
    """Flush and leave at once. Every core has been joined by now; a normal interpreter exit
    would spend some 40 ms more tearing down threads and modules, on every search's end."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write("%s\n" % code)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_as_program(argv=None):
    """The worker as a program: main(), then a prompt exit with its status."""
    try:
        exit_code = main(argv)
    except SystemExit as leaving:  # SIGTERM, or argparse
        exit_code = leaving.code
    exit_promptly(exit_code)


if __name__ == "__main__":
    run_as_program()
