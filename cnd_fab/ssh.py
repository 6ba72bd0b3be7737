"""SSH hosts on Fabric Connections: connect with retries, pin host keys, push, run, kill.

Every paramiko, socket and SFTP error is turned into a HostConnectError that names the host
here, at the edge, so the rest of cnd-fab never sees a library exception.
"""

from __future__ import annotations

import io
import random
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric import Config, Connection

from .errors import HostConnectError
from .journal import RunJournal
from .kernels import kernel_files
from .transport import WRITE_PIECE, Host, WorkerChannel, WorkerPayload, host_text, worker, worker_source

DEFAULT_CONNECT_DEADLINE = 60.0
COMMAND_TIMEOUT = 10.0
#: Python's exit status when the worker file is missing: the run directory is gone (cleanup
#: removes it only after the kill) or was never filled (the push failed), so nothing runs.
WORKER_FILE_GONE = 2
#: Cleanup exit codes after which nothing of the run is left running on the host.
CLEANUP_CONFIRMED = (worker.CLEANUP_KILLED, worker.CLEANUP_NOTHING, worker.CLEANUP_NOT_OURS, WORKER_FILE_GONE)
#: Pushing the worker and kernel and starting it, after the connection is up.
PUSH_SECONDS = 60.0
STOP_CONNECT_DEADLINE = 5.0
REMOTE_ROOT = "/tmp"


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key: paramiko's object, the OpenSSH private text and the public line."""

    key: paramiko.PKey
    private_openssh: str
    public_line: str

    @classmethod
    def generate(cls, comment: str) -> "KeyPair":
        """A new ed25519 key pair."""
        private = Ed25519PrivateKey.generate()
        text = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        return cls.from_private(text, comment)

    @classmethod
    def from_private(cls, text: str, comment: str) -> "KeyPair":
        """The key pair of an OpenSSH private key text."""
        key = paramiko.Ed25519Key.from_private_key(io.StringIO(text))
        return cls(key, text, f"{key.get_name()} {key.get_base64()} {comment}")


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names host:port (bracketed when not 22)."""
    return host if port == 22 else f"[{host}]:{port}"


class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """--accept-new-host-key: trust an unknown key once, save it, and say so loudly."""

    def __init__(self, known_hosts: Path, warn: Callable[[str], None]) -> None:
        self.known_hosts = known_hosts
        self.warn = warn
        self.lock = threading.Lock()

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        """Trust and save the unknown key, with a loud warning."""
        with self.lock:
            client.get_host_keys().add(hostname, key.get_name(), key)
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with self.known_hosts.open("a") as handle:
                handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.warn(
            f"WARNING: trusting the unverified host key of {hostname} "
            f"({key.get_name()} {key.fingerprint}) on first use, as --accept-new-host-key asks; "
            f"saved to {self.known_hosts}"
        )


@dataclass
class SshTarget:
    """How to reach one SSH host and how to check that it is the right one."""

    name: str
    host: str
    port: int
    user: str
    login_key: paramiko.PKey
    pinned_host_keys: List[paramiko.PKey] = field(default_factory=list)
    known_hosts: Optional[Path] = None
    accept_new_host_key: bool = False
    processes: Optional[int] = None
    connect_deadline: float = DEFAULT_CONNECT_DEADLINE
    #: New cloud hosts may refuse a key until cloud-init has installed it.
    retry_auth: bool = False
    #: New cloud hosts may show sshd's own generated host key until cloud-init has installed
    #: the pinned one: a mismatch is then retried until the deadline (and never trusted).
    retry_host_key: bool = False
    python: str = "python3"
    #: The host's architecture (`uname -m`) when known: only its own kernel is pushed.
    arch: Optional[str] = None
    warn: Callable[[str], None] = print

    @property
    def address(self) -> str:
        """user@host:port, for messages."""
        return f"{self.user}@{self.host}:{self.port}"


class SshChannel(WorkerChannel):
    """A worker on an exec channel: its stdout read as lines, its stdin written."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self._stdout = channel.makefile("rb")
        self._stderr_lines: List[str] = []
        # Unread stderr would fill the channel window and stall stdout too.
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        try:
            for raw in self.channel.makefile_stderr("rb"):
                self._stderr_lines.append(raw.decode("utf-8", "replace").rstrip())
                del self._stderr_lines[:-20]
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def send_line(self, line: str) -> None:
        """Write one line to the worker's stdin."""
        data = memoryview((line + "\n").encode())
        try:
            while data:
                sent = self.channel.send(bytes(data[:WRITE_PIECE]))
                if sent <= 0:
                    raise OSError("the channel is closed")
                data = data[sent:]
                self.written_at = time.monotonic()
        except (socket.error, paramiko.SSHException) as error:
            raise OSError(str(error)) from error

    def read_line(self, limit: int) -> str:
        """One line of the worker's stdout, at most `limit` bytes of it; '' once it is closed."""
        try:
            return bytes(self._stdout.readline(limit)).decode("utf-8", "replace")
        except (OSError, EOFError, paramiko.SSHException):
            return ""

    def fileno(self) -> Optional[int]:
        """paramiko's readiness pipe for the channel's stdout."""
        return self.channel.fileno()

    def read_available(self, limit: int) -> Optional[bytes]:
        """What has arrived on the channel's stdout; b'' once the worker closed it."""
        try:
            if self.channel.recv_ready():
                return bytes(self.channel.recv(limit))
            if self.channel.eof_received or self.channel.closed:
                return b""
            return None
        except (OSError, EOFError, paramiko.SSHException):
            return b""

    def close(self) -> None:
        """Close the worker's stdin and the channel."""
        try:
            self.channel.shutdown_write()
            self.channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def stderr_tail(self) -> str:
        """The worker's last lines of stderr."""
        return "\n".join(self._stderr_lines[-5:])


class SshHost(Host):
    """A worker on a host reached over SSH: one Fabric Connection for the whole run."""

    def __init__(self, target: SshTarget, run_id: str, index: int, journal: Optional[RunJournal] = None) -> None:
        self.name = target.name
        self.target = target
        self.journal = journal
        # Built only from our own run id and a number: nothing a user typed reaches a shell.
        self.run_dir = f"{REMOTE_ROOT}/{worker.RUN_DIR_PREFIX}{run_id}-{index}"
        self.connection: Optional[Connection] = None
        self.started_worker = False
        #: Set once the run has let this host go: a late connect must not start a worker.
        self.released = False
        #: True when stopping the worker could not be confirmed (the host kept its files).
        self.clean_failed = False
        #: Why, when clean_failed.
        self.clean_problem = ""
        self.setup_seconds = target.connect_deadline + PUSH_SECONDS
        self._lock = threading.Lock()
        #: The connection a reader thread is opening right now, if any (see let_go).
        self._connecting: Optional[Connection] = None

    # --- connecting --------------------------------------------------------------------
    def _new_connection(self, timeout: float) -> Connection:
        target = self.target
        connection = Connection(
            target.host,
            user=target.user,
            port=target.port,
            config=Config(overrides={"load_ssh_configs": False}),
            connect_timeout=max(1, int(timeout)),
            connect_kwargs={
                "pkey": target.login_key,
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": timeout,
                "auth_timeout": timeout,
            },
        )
        client: paramiko.SSHClient = connection.client
        # Never Fabric's AutoAddPolicy: a key is pinned, known, or explicitly trusted.
        if target.known_hosts is not None and target.known_hosts.exists():
            client.load_host_keys(str(target.known_hosts))
        name = known_hosts_name(target.host, target.port)
        for key in target.pinned_host_keys:
            client.get_host_keys().add(name, key.get_name(), key)
        if target.accept_new_host_key and target.known_hosts is not None:
            client.set_missing_host_key_policy(TrustOnFirstUse(target.known_hosts, target.warn))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return connection

    def connect(self, deadline: Optional[float] = None, cleaning: bool = False) -> Connection:
        """Open the connection, retrying with jittered backoff while the host comes up.

        Once the host is released only the cleanup may still connect (`cleaning`)."""
        if self.connection is not None and self.connection.is_connected:
            return self.connection
        target = self.target
        deadline = deadline or time.monotonic() + target.connect_deadline
        delay = 0.1
        last = "no attempt made"
        while True:
            if self.released and not cleaning:
                raise HostConnectError(f"{self.name}: the run ended before the host answered")
            remaining = deadline - time.monotonic()
            connection = self._new_connection(min(10.0, max(1.0, remaining)))
            if not cleaning:
                # Published before it opens, so that let_go() can cut a handshake short; then
                # looked at once more, for a host let go in between.
                self._connecting = connection
                if self.released:
                    self._connecting = None
                    raise HostConnectError(f"{self.name}: the run ended before the host answered")
            try:
                connection.open()
                self.connection = connection
                if self.reachable_at is None:
                    self.reachable_at = time.monotonic()
                return connection
            except paramiko.BadHostKeyException as error:
                # paramiko checks the key before it authenticates: no credential went to this host.
                connection.close()
                last = (
                    f"host key mismatch: expected {error.expected_key.fingerprint}, got {error.key.fingerprint}; "
                    "refusing to connect"
                )
                if not target.retry_host_key:
                    raise HostConnectError(f"{self.name} ({target.address}): {last}") from None
            except paramiko.AuthenticationException as error:
                connection.close()
                last = f"authentication failed: {error}"
                if not target.retry_auth:
                    raise HostConnectError(f"{self.name} ({target.address}): {last}") from None
            except paramiko.SSHException as error:
                connection.close()
                if "not found in known_hosts" in str(error):
                    raise HostConnectError(
                        f"{self.name} ({target.address}): unknown host key (not pinned, not in "
                        f"{target.known_hosts or 'known_hosts'}); add it, or pass --accept-new-host-key "
                        "to trust it on first use"
                    ) from None
                last = f"SSH error: {error}"
            except (socket.error, EOFError, ValueError) as error:
                connection.close()
                last = f"{type(error).__name__}: {error}"
            finally:
                if not cleaning:
                    self._connecting = None
            if time.monotonic() + delay > deadline:
                raise HostConnectError(
                    f"{self.name} ({target.address}): not reachable over SSH within "
                    f"{target.connect_deadline:.0f}s; last error: {last}"
                )
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(2.0, delay * 2)

    # --- the worker --------------------------------------------------------------------
    def push(self, connection: Connection, payload: WorkerPayload) -> None:
        """Copy the worker and the kernel binaries into a private per-run directory over SFTP."""
        try:
            # Fabric's sftp() has no timeout: a stalled SFTP server would hold this thread for
            # ever. Every SFTP call on this channel times out instead.
            channel = connection.client.get_transport().open_session(timeout=COMMAND_TIMEOUT)
            channel.settimeout(PUSH_SECONDS)
            channel.invoke_subsystem("sftp")
            with paramiko.SFTPClient(channel) as sftp:
                try:
                    sftp.mkdir(self.run_dir, mode=0o700)
                except OSError:
                    sftp.stat(self.run_dir)  # already there from an earlier attempt
                sftp.putfo(io.BytesIO(worker_source()), f"{self.run_dir}/worker.py")
                if payload.kernel != "python":
                    for name, data in kernel_files(payload.kernel_dir, self.target.arch).items():
                        sftp.putfo(io.BytesIO(data), f"{self.run_dir}/{name}")
                        sftp.chmod(f"{self.run_dir}/{name}", 0o755)
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise HostConnectError(f"{self.name}: pushing the worker over SFTP failed: {error}") from error

    def worker_command(self, run_id: str, payload: WorkerPayload = WorkerPayload()) -> str:
        """The shell command that starts the worker, every part quoted."""
        argv = [
            "exec",
            self.target.python,
            f"{self.run_dir}/worker.py",
            "--own-session",
            "--pidfile",
            f"{self.run_dir}/{worker.PIDFILE_NAME}",
            "--run-id",
            run_id,
        ]
        if self.target.processes:
            argv += ["--processes", str(int(self.target.processes))]
        argv += payload.worker_args(self.run_dir if payload.kernel_dir else None)
        return " ".join(shlex.quote(part) for part in argv)

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        """Connect, push the worker and its kernel, and start it on an exec channel."""
        connection = self.connect()
        with self._lock:
            if self.released:
                # Let go while connecting: this connection is nobody else's to close.
                connection.close()
                raise HostConnectError(f"{self.name}: the run ended before the worker started")
            self.started_worker = True  # from here on, stop_worker must clean this host
        if self.journal is not None:
            self.journal.record("ssh-run-dir", host=self.name, address=self.target.address, run_dir=self.run_dir)
        self.push(connection, payload)
        try:
            channel = connection.client.get_transport().open_session(timeout=COMMAND_TIMEOUT)
            channel.exec_command(self.worker_command(run_id, payload))
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise HostConnectError(f"{self.name}: starting the worker failed: {error}") from error
        return SshChannel(channel)

    def run_command(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Tuple[int, str]:
        """Run a short command on the open connection; (exit status, output)."""
        assert self.connection is not None
        try:
            channel = self.connection.client.get_transport().open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
            output = channel.makefile("rb").read().decode("utf-8", "replace")
            if not channel.status_event.wait(timeout):
                raise socket.timeout(f"no exit status within {timeout:.0f}s")
            return channel.exit_status, output
        except (OSError, EOFError, paramiko.SSHException, socket.timeout) as error:
            raise HostConnectError(f"{self.name}: {command.split()[0]!r} failed: {error}") from error

    def cleanup_command(self) -> str:
        """The shell command that kills this run's worker and removes its directory."""
        return " ".join(
            shlex.quote(part)
            for part in (self.target.python, f"{self.run_dir}/worker.py", "--cleanup", self.run_dir)
        )

    def let_go(self) -> None:
        """Release this host without stopping its worker remotely, because its provider removes
        the machine with everything on it (a container): close the connection, and keep a
        connect still in progress from starting a worker. stop_worker() may still follow."""
        with self._lock:
            self.released = True
            if self.connection is not None:
                self.connection.close()
            self.connection = None
        # A handshake under way on a reader thread is cut short: its host is about to vanish,
        # and closing it here ends it quietly, where a reset from the host would be logged.
        connecting = self._connecting
        if connecting is not None:
            connecting.close()

    def stop_worker(self) -> None:
        """Kill the worker's process group (TERM, then KILL) and remove the run directory."""
        with self._lock:
            self.released = True
            if not self.started_worker and self.connection is None:
                return
            try:
                # A dropped connection may leave a live worker: reconnect briefly to kill it.
                self.connect(deadline=time.monotonic() + STOP_CONNECT_DEADLINE, cleaning=True)
                status, output = self.run_command(self.cleanup_command(), timeout=STOP_CONNECT_DEADLINE)
                self.clean_failed = status not in CLEANUP_CONFIRMED
                if self.clean_failed:
                    self.clean_problem = f"its worker's stop was not confirmed (cleanup exit {status}: {host_text(output.strip())})"
            except HostConnectError as error:
                # Gone or hung: the provider removes it, or teardown retries.
                self.clean_failed, self.clean_problem = True, str(error)
            finally:
                if self.connection is not None:
                    self.connection.close()
                self.connection = None
                self.started_worker = False


def stop_all(hosts: List[Host], within: float = 15.0) -> Dict[str, str]:
    """Stop every host's worker in parallel; a hung host costs at most `within` seconds.

    Returns, by host name, why a stop could not be confirmed; empty when every one was."""
    threads = {host.name: threading.Thread(target=host.stop_worker, daemon=True) for host in hosts}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + within
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    unconfirmed: Dict[str, str] = {}
    for host in hosts:
        if threads[host.name].is_alive():
            unconfirmed[host.name] = f"its stop did not finish within {within:.0f}s"
        elif isinstance(host, SshHost) and host.clean_failed:
            unconfirmed[host.name] = host.clean_problem or "the host did not answer"
    return unconfirmed
