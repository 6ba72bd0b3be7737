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
from ..transport import PipeChannel, WorkerChannel, WorkerPayload, worker, worker_file
from . import COUNT_MEANINGS
from .base import Host, Leftover, Provider, ProviderOptions, Released

MAX_LOCAL_HOSTS = 64
#: `python -c` program that runs the worker file named by its first argument, like a script
#: (its folder first on the path) but from cached bytecode.
WORKER_LOADER = "import os, sys; sys.path[0] = os.path.dirname(sys.argv[1]); import worker; worker.run_as_program(sys.argv[2:])"


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
        self._handed_over = False

    def start_early(self, run_id: str, payload: WorkerPayload) -> None:
        """Start the worker now: it boots (about 0.15 s) while the controller sets up."""
        try:
            self._spawn(run_id, payload)
        except HostConnectError:
            pass  # the fleet's own start_worker() tries again and reports it

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        """Start the worker as a child in its own session, its stdin and stdout the channel.
        A worker that start_early() began is handed over instead of a second one."""
        if self.process is None or self._handed_over:
            self._spawn(run_id, payload)
        self._handed_over = True
        assert self.process is not None
        return PipeChannel(self.process)

    def _spawn(self, run_id: str, payload: WorkerPayload) -> None:
        # -S skips site (an editable install's import hooks), and the worker is imported
        # rather than run as a script, so that its cached bytecode is used: together about
        # 40 ms off every local search. Its path stays on the command line for ps and teardown.
        argv = [
            sys.executable,
            "-S",
            "-c",
            WORKER_LOADER,
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
        self._handed_over = False
        self.reachable_at = time.monotonic()
        self.journal.record("local-worker", host=self.name, pid=self.process.pid)

    def stop_worker(self) -> None:
        """TERM, then KILL, the worker's process group, and reap the worker."""
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
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass  # unkillable (stuck in the kernel): stopped() reports it
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def stopped(self) -> bool:
        """True once the worker has exited (or never started)."""
        return self.process is None or self.process.poll() is not None


class LocalProvider(Provider):
    """Runs `count` workers on this machine, sharing its cores between them.

    Example: ``fab search --difficulty 20 --count 2`` starts two workers with one core each
    on a two-core machine, each a stand-in for a remote host.
    """

    name = "local"
    count_meaning = COUNT_MEANINGS[name]

    def __init__(self, options: Optional[ProviderOptions] = None, cores: Optional[int] = None) -> None:
        super().__init__(options)
        self.cores = cores or worker.effective_cores()

    def check(self, count: int) -> None:
        """At most MAX_LOCAL_HOSTS workers: more only share the same cores."""
        if count > MAX_LOCAL_HOSTS:
            raise InputError(
                f"--count {count} is too many local workers (at most {MAX_LOCAL_HOSTS}); "
                "the local provider shares this machine's cores between them"
            )

    def cores_per_host(self) -> int:
        """This machine's usable cores."""
        return self.cores

    def max_hosts(self) -> int:
        """One: more local workers only share the same cores."""
        return 1

    def processes_per_host(self, count: int) -> int:
        """Cores shared out between `count` workers, at least one each."""
        return max(1, self.cores // count)

    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        """Make `count` local hosts; each worker starts when the fleet asks for it."""
        processes = self.processes_per_host(count)
        return [LocalHost(f"local-{index + 1}", processes, journal) for index in range(count)]

    def release(self, hosts: List[Host], journal: RunJournal) -> List[Released]:
        """Stop every worker, and any the journal names that a failed launch never handed
        over; one result per worker that was started."""
        released = []
        for host in hosts:
            host.stop_worker()
            if isinstance(host, LocalHost) and host.process is not None:
                done = host.stopped()
                why = "" if done else "it did not exit after SIGKILL"
                released.append(Released(f"local worker pid {host.process.pid}", done, why, action="killed"))
        return released + self.remove(Leftover(journal.run_id, self.name, journal))

    def remove(self, leftover: Leftover, dry_run: bool = False) -> List[Released]:
        """Kill the journal's workers that still run with this run's id on their command line."""
        released = []
        for resource in leftover.journal.resources:
            if resource.get("kind") != "local-worker":
                continue
            pid = int(resource["pid"])
            if not _process_mentions(pid, leftover.run_id):
                continue
            name = f"local worker pid {pid} ({leftover.run_id})"
            if dry_run:
                released.append(Released(name, True, planned=True, action="killed"))
                continue
            kill_process_group(pid)
            gone = not _process_mentions(pid, leftover.run_id)
            released.append(Released(name, gone, "" if gone else "it survived SIGKILL", action="killed"))
        return released
