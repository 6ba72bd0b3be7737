"""How the controller talks to one worker: a line channel, whatever carries it."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, List, Optional

from remote import worker

__all__ = ["worker", "host_text", "worker_source", "read_ready", "WorkerChannel", "PipeChannel", "Host", "WorkerPayload"]


#: Characters a host's text may not bring to the terminal: C0 and C1 controls but newline.
_CONTROLS = {code: "\ufffd" for code in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if code != 0x0A}


def host_text(text: str, lines: bool = False) -> str:
    """Text a host sent, made safe to print: control characters replaced, one line unless `lines`."""
    safe = text.translate(_CONTROLS)
    return safe if lines else safe.replace("\n", " ")


@dataclass(frozen=True)
class WorkerPayload:
    """What every worker is given besides its own file: native kernels and which to use."""

    #: A local folder of sha256d-<architecture> binaries, or None for pure Python only.
    kernel_dir: Optional[Path] = None
    #: auto (native when it runs and passes its self-test), python or native.
    kernel: str = "auto"
    #: Force one native path (sha-ni, sha-ni-2, avx2, armv8-sha2, portable), for tests and benchmarks.
    kernel_path: Optional[str] = None
    #: The instance metadata service a spot host's worker watches for interruption notices
    #: (http://169.254.169.254 on EC2; a loopback stand-in in tests). None: no watching.
    metadata_url: Optional[str] = None
    #: Seconds between the worker's PROGRESS lines; None: the worker's own default.
    heartbeat: Optional[float] = None

    def worker_args(self, kernel_dir: Optional[str]) -> List[str]:
        """The worker's command-line flags for this payload, with the kernels in `kernel_dir`."""
        args = ["--kernel", self.kernel]
        if kernel_dir:
            args += ["--kernel-dir", kernel_dir]
        if self.kernel_path:
            args += ["--kernel-path", self.kernel_path]
        if self.metadata_url:
            args += ["--metadata-url", self.metadata_url]
        if self.heartbeat is not None:
            args += ["--heartbeat", f"{self.heartbeat:g}"]
        return args


def worker_file() -> Path:
    """The worker's own file: the controller runs or pushes exactly what it imports."""
    return Path(str(resources.files("remote").joinpath("worker.py")))


def worker_source() -> bytes:
    """The worker file's bytes, as pushed to SSH hosts."""
    return worker_file().read_bytes()


def read_ready(descriptor: int, limit: int) -> Optional[bytes]:
    """Up to `limit` bytes a pipe holds now: None when it holds none yet, b'' at its end."""
    try:
        return os.read(descriptor, limit)
    except BlockingIOError:
        return None


#: Writes go out in pieces of this size, so a long line on a slow link still shows progress.
WRITE_PIECE = 64 << 10


class WorkerChannel(ABC):
    """A running worker's stdin and stdout, as lines. Implementations must be thread-safe
    for one reader thread and one writer thread at a time."""

    #: When the worker last took a piece of a line (monotonic clock): a write that is slow
    #: but moving is a slow link, not a host that refuses to read.
    written_at: float = 0.0
    #: True when send_nowait() works: the fleet's loop then writes to the worker itself,
    #: with no writer thread (see session.py).
    sends_without_blocking: bool = False
    #: True when close() returns at once whatever the worker does: the fleet then closes the
    #: channel itself, not on a thread of its own (see HostSession.close).
    closes_without_blocking: bool = False

    @abstractmethod
    def send_line(self, line: str) -> None:
        """Write one protocol line; raises OSError when the worker is gone."""

    def send_nowait(self, data: bytes) -> int:
        """Write as much of `data` as the worker takes now, without blocking; returns how many
        bytes that was. Raises OSError when the worker is gone. Never used with send_line()."""
        raise NotImplementedError

    @abstractmethod
    def read_line(self, limit: int) -> str:
        """Block until one line arrives, or `limit` characters of one; '' means the worker
        closed its stdout."""

    @abstractmethod
    def close(self) -> None:
        """Close the worker's stdin, so it exits by itself, and release the channel."""

    def fileno(self) -> Optional[int]:
        """A descriptor that turns readable when read_available() has something to give, so
        that one thread can wait on every channel (poller.py); None when the channel can only
        be read by blocking in read_line(), on a thread of its own."""
        return None

    def read_available(self, limit: int) -> Optional[bytes]:
        """Up to `limit` bytes the worker has sent, without blocking: None when there is
        nothing yet, b'' once it closed its stdout. Called only after fileno() turned readable,
        and never together with read_line()."""
        raise NotImplementedError

    def stderr_tail(self) -> str:
        """The last lines the worker wrote to stderr, for error messages."""
        return ""


class PipeChannel(WorkerChannel):
    """A worker running as a local subprocess, over its pipes."""

    sends_without_blocking = True

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin: IO[bytes] = process.stdin
        self._stdout: IO[bytes] = process.stdout
        self._write_lock = threading.Lock()
        self._stderr_lines: List[str] = []
        self._stderr_thread: Optional[threading.Thread] = None
        if process.stderr is not None:
            self._stderr_thread = threading.Thread(
                target=self._drain_stderr, args=(process.stderr,), daemon=True
            )
            self._stderr_thread.start()

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._stderr_lines.append(raw.decode("utf-8", "replace").rstrip())
            del self._stderr_lines[:-20]

    def send_line(self, line: str) -> None:
        """Write one line to the worker's stdin."""
        data = line.encode() + b"\n"
        with self._write_lock:
            for offset in range(0, len(data), WRITE_PIECE):
                self._stdin.write(data[offset : offset + WRITE_PIECE])
                self._stdin.flush()
                self.written_at = time.monotonic()

    def send_nowait(self, data: bytes) -> int:
        """Write to the worker's stdin past Python's buffer, as much as the pipe takes now."""
        with self._write_lock:
            descriptor = self._stdin.fileno()
            if os.get_blocking(descriptor):
                os.set_blocking(descriptor, False)
            try:
                sent = os.write(descriptor, data)
            except BlockingIOError:
                return 0
            self.written_at = time.monotonic()
            return sent

    def read_line(self, limit: int) -> str:
        """One line of the worker's stdout, at most `limit` bytes of it; '' once it is closed."""
        return self._stdout.readline(limit).decode("utf-8", "replace")

    def fileno(self) -> Optional[int]:
        """The worker's stdout."""
        return self._stdout.fileno()

    def read_available(self, limit: int) -> Optional[bytes]:
        """What the worker's stdout holds, read past Python's buffer (read_line() is not used)."""
        return read_ready(self._stdout.fileno(), limit)

    def close(self) -> None:
        """Close the worker's stdin, so it exits by itself."""
        with self._write_lock:
            try:
                self._stdin.close()
            except OSError:
                pass

    def stderr_tail(self) -> str:
        """The worker's last lines of stderr."""
        return "\n".join(self._stderr_lines[-5:])


class Host(ABC):
    """One machine (or stand-in) that runs one worker for the whole run."""

    name: str
    #: When the host first became reachable (monotonic clock), for start-up figures.
    reachable_at: Optional[float] = None
    #: How long connecting, pushing and starting the worker may take together.
    setup_seconds: float = 60.0

    @abstractmethod
    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        """Start the worker and return its line channel. Raises HostConnectError."""

    def start_early(self, run_id: str, payload: WorkerPayload) -> None:
        """Begin starting the worker before the fleet asks for it, where that costs nothing
        and cannot block (a local process). start_worker() then picks it up. The default
        does nothing: remote hosts start in the fleet's setup threads, under their deadline."""

    @abstractmethod
    def stop_worker(self) -> None:
        """Kill the worker's whole process group and remove its files. Idempotent."""
