"""Hosts whose worker misbehaves: the hostile worker run locally, or one that never starts."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from cnd_fab.errors import HostConnectError
from cnd_fab.providers.local import kill_process_group
from cnd_fab.transport import Host, PipeChannel, WorkerChannel, WorkerPayload

HOSTILE_FILE = Path(__file__).with_name("hostile_worker.py")


def hostile_source(mode: str) -> bytes:
    """The hostile worker's text, set to misbehave as `mode` says."""
    text = HOSTILE_FILE.read_text()
    marker = 'MODE = "honest-hello-then-idle"'
    assert marker in text
    return text.replace(marker, f"MODE = {mode!r}").encode()


class HostileHost(Host):
    """A local process speaking the protocol until it misbehaves as `mode` says."""

    def __init__(self, name: str, mode: str, folder: Path) -> None:
        self.name = name
        self.script = folder / f"hostile-{name}.py"
        self.script.write_bytes(hostile_source(mode))
        self.process: "subprocess.Popen[bytes] | None" = None

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        # The run id on the command line: the tests' leak check finds it like a real worker.
        self.process = subprocess.Popen(
            [sys.executable, str(self.script), "worker.py", run_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return PipeChannel(self.process)

    def stop_worker(self) -> None:
        if self.process is not None:
            kill_process_group(self.process.pid)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


class StalledSetupHost(Host):
    """A host whose connect or push never finishes, as a stalled SFTP server."""

    def __init__(self, name: str, setup_seconds: float) -> None:
        self.name = name
        self.setup_seconds = setup_seconds
        self.released = threading.Event()

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        self.released.wait()
        raise HostConnectError(f"{self.name}: the run ended before the push finished")

    def stop_worker(self) -> None:
        self.released.set()
