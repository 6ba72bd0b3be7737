"""The embedded default: workers as subprocesses of the controller, on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..errors import HostConnectError, InputError
from ..journal import RunJournal
from ..transport import PipeChannel, WorkerChannel, WorkerPayload, protocol, worker_file
from .base import Host, Provider, ProviderOptions

MAX_LOCAL_HOSTS = 64


def _process_mentions(pid: int, text: str) -> bool:
    """True if process `pid` still runs with `text` in its command line (pids get reused)."""
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def kill_process_group(pgid: int, grace: float = 1.0) -> None:
    """TERM the group, then KILL whatever is still there after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalHost(Host):
    """A worker subprocess in its own session, so its process group is ours to kill."""

    def __init__(self, name: str, processes: int, journal: RunJournal) -> None:
        self.name = name
        self.processes = processes
        self.journal = journal
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        argv = [
            sys.executable,
            str(worker_file()),
            "--processes",
            str(self.processes),
            "--run-id",
            run_id,
            *payload.worker_args(str(payload.kernel_dir) if payload.kernel_dir else None),
        ]
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            raise HostConnectError(f"{self.name}: cannot start the worker: {error}") from error
        self.reachable_at = time.monotonic()
        self.journal.record("local-worker", host=self.name, pid=self.process.pid)
        return PipeChannel(self.process)

    def stop_worker(self) -> None:
        if self.process is None:
            return
        # Our own child: wait() reaps it, where polling the group would see a zombie.
        group = self.process.pid
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(group, signal.SIGKILL)  # any core that outlived its worker
        except ProcessLookupError:
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class LocalProvider(Provider):
    """Runs `count` workers on this machine, sharing its cores between them.

    Example: ``fab search --difficulty 20 --count 2`` starts two workers with one core each
    on a two-core machine, each a stand-in for a remote host.
    """

    name = "local"
    count_meaning = (
        "number of worker processes on this machine; its cores are shared out between "
        "them (each gets at least one)"
    )

    def __init__(self, options: Optional[ProviderOptions] = None, cores: Optional[int] = None) -> None:
        super().__init__(options)
        self.cores = cores or protocol.effective_cores()

    def check(self, count: int) -> None:
        if count > MAX_LOCAL_HOSTS:
            raise InputError(
                f"--count {count} is too many local workers (at most {MAX_LOCAL_HOSTS}); "
                "the local provider shares this machine's cores between them"
            )

    def cores_per_host(self) -> int:
        return self.cores

    def max_hosts(self) -> int:
        return 1  # more local workers only share the same cores

    def processes_per_host(self, count: int) -> int:
        return max(1, self.cores // count)

    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        processes = self.processes_per_host(count)
        return [LocalHost(f"local-{index + 1}", processes, journal) for index in range(count)]

    def release(self, hosts: List[Host], journal: RunJournal) -> None:
        for host in hosts:
            host.stop_worker()

    def teardown(self, journal: RunJournal, dry_run: bool = False) -> List[str]:
        lines = []
        for resource in journal.resources:
            if resource.get("kind") != "local-worker":
                continue
            pid = int(resource["pid"])
            if not _process_mentions(pid, journal.run_id):
                continue
            lines.append(f"{'would kill' if dry_run else 'killed'} local worker pid {pid} ({journal.run_id})")
            if not dry_run:
                kill_process_group(pid)
        return lines
