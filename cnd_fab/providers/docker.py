"""SSH host containers on this machine's Docker engine, each sshd on its own 127.0.0.1 port.

Example: ``fab search --provider docker --count 4`` starts four containers of the
``cnd-fab-sshd`` image (see image/), logs in to each with a per-run key and pins the host
key it generated for it. Containers carry the labels ``cnd-fab.run=<run id>``, so teardown
finds them even without a journal, and ``cnd-fab.controller``, which names the process that
controls the run.

Launch: every container is recorded in the run journal first, all of them, before any is
created. Then a bounded pool of threads creates, fills and starts them at once, since each
start mostly waits on the engine (see `launch`). A failure stops the launch only after every
container being made has been made or refused, so that release, which finds the run's
containers by label, finds each one. Release removes them on the same pool, and that removal
is the workers' stop (see `release`).

Why a controller label and not an alive-until time like EC2's tag: a container's labels
cannot change after it is created, so a time there could never be renewed. It would either
expire under a live run, for `teardown --expired` to take, or never expire. But these
containers and their controller share this machine (sshd listens on its 127.0.0.1), so
teardown can ask the process table directly whether that controller still runs
(controller.py). That answer is exact, and it needs no keep-alive.
"""

from __future__ import annotations

import io
import socket
import tarfile
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

from ..controller import ELSEWHERE, GONE, RUNNING, controller_state, this_controller
from ..errors import InputError, ProviderError
from ..journal import RunJournal
from ..kernels import machine_architecture
from ..ssh import KeyPair, SshHost, SshTarget, stop_all
from . import COUNT_MEANINGS
from .base import Host, Leftover, LiveResource, Provider, ProviderOptions, Released

if TYPE_CHECKING:
    import docker as docker_sdk

TOOL_LABEL = "cnd-fab.tool"
RUN_LABEL = "cnd-fab.run"
CONTROLLER_LABEL = "cnd-fab.controller"
KEY_DIR = "/etc/ssh/cnd-fab"
MAX_CONTAINERS = 64
LOOPBACK = "127.0.0.1"
#: Containers created, started or removed at once. Each is mostly the engine's work (the
#: overlay mount, namespaces, cgroups, runc), which dockerd does for several at a time. On the
#: 2-core development machine 4, 8 and 16 threads all start 48 containers in about 7 s (13 to
#: 15 CPU-seconds of the engine's), against 13 s one at a time; more cores take more threads.
#: Each thread holds one of the client's pooled connections.
LAUNCH_THREADS = 8
#: Seconds each call to the engine may take (the client's socket timeout).
ENGINE_TIMEOUT = 60


def free_loopback_port() -> int:
    """A port nothing listens on right now; sshd binds it a moment later."""
    return free_loopback_ports(1)[0]


def free_loopback_ports(count: int) -> List[int]:
    """`count` distinct ports nothing listens on right now: all are held at once while they
    are picked, so no two of them can be the same."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((LOOPBACK, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def key_archive(host_key: KeyPair, authorized_key: str) -> bytes:
    """A tar of the container's key directory: its host key and the login key it accepts."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        folder = tarfile.TarInfo("cnd-fab")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(folder)
        for name, text, mode in (
            ("host_key", host_key.private_openssh, 0o600),
            ("host_key.pub", host_key.public_line + "\n", 0o644),
            ("authorized_keys", authorized_key + "\n", 0o644),
        ):
            data = text.encode()
            info = tarfile.TarInfo(f"cnd-fab/{name}")
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sshd_command(port: int) -> List[str]:
    """sshd in the foreground on 127.0.0.1:port, keys only, with our host key."""
    return [
        "/usr/sbin/sshd",
        "-D",
        "-e",
        "-p",
        str(port),
        "-o",
        f"ListenAddress={LOOPBACK}",
        "-h",
        f"{KEY_DIR}/host_key",
        "-o",
        f"AuthorizedKeysFile={KEY_DIR}/authorized_keys",
        "-o",
        "PermitRootLogin=prohibit-password",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
        "-o",
        "UsePAM=no",
        "-o",
        "MaxStartups=64",
    ]


@dataclass(frozen=True)
class ContainerPlan:
    """One container as launch will create it: its name, sshd port, host key and CPU limit."""

    index: int
    name: str
    port: int
    host_key: KeyPair
    cpus: Optional[float]


class DockerProvider(Provider):
    """Starts SSH host containers with host networking; removes them at the end."""

    name = "docker"
    count_meaning = COUNT_MEANINGS[name]

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        super().__init__(options)
        settings = self.options.inventory.docker
        self.image = self.options.image or settings.image
        self.cpus = settings.cpus
        self._client: Optional["docker_sdk.DockerClient"] = None
        #: Host name (docker-N) -> the name of the container it runs in, once launched.
        self._container_names: Dict[str, str] = {}

    @property
    def client(self) -> "docker_sdk.DockerClient":
        """The Docker engine's client, connected and pinged on first use."""
        if self._client is None:
            import docker as docker_sdk

            try:
                # Every call has a deadline (the socket timeout), and the connection pool holds
                # one connection for each launch thread, so none is opened and thrown away.
                self._client = docker_sdk.from_env(timeout=ENGINE_TIMEOUT, max_pool_size=max(10, LAUNCH_THREADS))
                self._client.ping()
            except docker_sdk.errors.DockerException as error:
                raise ProviderError(
                    f"cannot reach the Docker engine (DOCKER_HOST or /var/run/docker.sock): {error}"
                ) from None
        return self._client

    def check(self, count: int) -> None:
        """The engine answers, the image is there, and the CPU limits fit the count."""
        import docker as docker_sdk

        if count > MAX_CONTAINERS:
            raise InputError(f"--count {count} is too many containers (at most {MAX_CONTAINERS})")
        if len(self.cpus) > 1 and len(self.cpus) < count:
            raise InputError(
                f"docker.cpus lists {len(self.cpus)} limits for {count} containers; give one, or one per container"
            )
        try:
            self.client.images.get(self.image)
        except docker_sdk.errors.ImageNotFound:
            raise ProviderError(
                f"the Docker image {self.image!r} is missing; build it with image/build.sh "
                "(no registry needed) or `docker build -t cnd-fab-sshd:latest image/`"
            ) from None
        except docker_sdk.errors.DockerException as error:
            raise ProviderError(f"Docker failed while looking up {self.image!r}: {error}") from None

    def cores_per_host(self) -> int:
        """This machine's cores, or fewer under the inventory's CPU limit."""
        from ..transport import worker

        cores = worker.effective_cores()
        limit = self._cpus_for(0)
        return max(1, min(cores, int(-(-limit // 1)))) if limit else cores

    def max_hosts(self) -> int:
        """One: containers on this machine only share its cores."""
        return 1  # containers on this machine only share its cores

    def _cpus_for(self, index: int) -> Optional[float]:
        if not self.cpus:
            return None
        return self.cpus[index] if len(self.cpus) > 1 else self.cpus[0]

    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        """Create and start `count` labelled containers, each with its own keys and port, up to
        LAUNCH_THREADS at a time; the hosts come back in order (docker-1, docker-2, …).

        Raises ProviderError naming the first container (in that order) that failed, once no
        container is still being made."""
        login_key = KeyPair.generate(f"cnd-fab-{journal.run_id}")
        labels = {TOOL_LABEL: "cnd-fab", RUN_LABEL: journal.run_id, CONTROLLER_LABEL: this_controller()}
        ports = free_loopback_ports(count)
        names = [f"{journal.run_id}-{index + 1}" for index in range(count)]
        plans = [
            ContainerPlan(index + 1, name, port, KeyPair.generate(name), self._cpus_for(index))
            for index, (name, port) in enumerate(zip(names, ports))
        ]
        # Every container is recorded before any exists, so a crash at any point of the
        # launch leaves a journal naming all that may have been made.
        for plan in plans:
            journal.record("docker-container", name=plan.name, port=plan.port)
        self._container_names = {f"docker-{plan.index}": plan.name for plan in plans}
        self._start_all(plans, labels, login_key.public_line)
        return [
            SshHost(
                SshTarget(
                    name=host_name,
                    host=LOOPBACK,
                    port=plan.port,
                    user="root",
                    login_key=login_key.key,
                    pinned_host_keys=[plan.host_key.key],
                    arch=machine_architecture(),
                    warn=self.options.warn,
                ),
                journal.run_id,
                plan.index,
                journal,
            )
            for host_name, plan in zip(self._container_names, plans)
        ]

    def _start_all(self, plans: List[ContainerPlan], labels: Dict[str, str], authorized_key: str) -> None:
        """Start every planned container on a bounded pool of threads; raise the first failure
        (in plan order) only once every container begun is made or refused."""
        client = self.client  # connected here, once, before the threads share it
        threads = max(1, min(LAUNCH_THREADS, len(plans)))
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="docker-start")
        try:
            futures = [pool.submit(self._start_container, client, plan, labels, authorized_key) for plan in plans]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            # After a failure (or an exception in this thread) no further container is begun,
            # and the ones being made are waited for: each call has the client's deadline.
            # Release then finds every container that exists by its label, none still coming.
            pool.shutdown(wait=True, cancel_futures=True)
        failures = [error for error in (f.exception() for f in futures if not f.cancelled()) if error is not None]
        if failures:
            more = f" (and {len(failures) - 1} more container(s) failed)" if len(failures) > 1 else ""
            raise ProviderError(f"{failures[0]}{more}")

    def _start_container(
        self, client: "docker_sdk.DockerClient", plan: ContainerPlan, labels: Dict[str, str], authorized_key: str
    ) -> None:
        """Create one container, copy its keys in, and start it (on a launch thread). Raises
        ProviderError naming the container."""
        import docker as docker_sdk
        import requests

        try:
            container = client.containers.create(
                self.image,
                command=sshd_command(plan.port),
                name=plan.name,
                network_mode="host",
                labels=labels,
                nano_cpus=int(plan.cpus * 1e9) if plan.cpus else None,
                detach=True,
            )
            container.put_archive("/etc/ssh", key_archive(plan.host_key, authorized_key))
            container.start()
        except docker_sdk.errors.DockerException as error:
            raise ProviderError(f"docker: starting container {plan.name} failed: {error}") from None
        except (requests.RequestException, OSError) as error:  # a deadline passed, or the engine went away
            why = f"{type(error).__name__}: {error}"
            raise ProviderError(f"docker: starting container {plan.name} failed: {why}") from None

    def release(self, hosts: List[Host], journal: RunJournal) -> List[Released]:
        """Remove every container labelled with the run; stop over SSH only the workers whose
        container could not be removed.

        Removing a container kills every process in it (SIGKILL) and takes its files, so it
        is the stop itself: a cleanup command over SSH first would only start one more Python
        on every host. The hosts are let go first, so that no late connect starts a worker."""
        for host in hosts:
            if isinstance(host, SshHost):
                host.let_go()
        released = self.remove(Leftover.found(journal.run_id, self.name))
        if any(item.failed for item in released):
            # A container that stays keeps its worker hashing until teardown removes it: stop
            # the worker of every host whose container is not confirmed removed.
            removed = {item.resource for item in released if item.done}
            names = self._container_names
            stop_all([h for h in hosts if _container_resource(names.get(h.name, "?"), journal.run_id) not in removed])
        return released

    def _containers(self, run_id: Optional[str] = None) -> List[Any]:
        label = f"{RUN_LABEL}={run_id}" if run_id else f"{TOOL_LABEL}=cnd-fab"
        # A container removed while it is listed (by another teardown) is simply not there.
        return list(self.client.containers.list(all=True, filters={"label": label}, ignore_removed=True))

    def remove(self, leftover: Leftover, dry_run: bool = False) -> List[Released]:
        """Remove the run's containers, found by label (its journal may be lost), LAUNCH_THREADS
        at a time; one result per container, in the engine's order."""
        import docker as docker_sdk

        try:
            containers = self._containers(leftover.run_id)
        except docker_sdk.errors.DockerException as error:
            return [Released(f"the containers of {leftover.run_id}", False, f"docker: listing them failed: {error}")]
        if dry_run:
            return [Released(_container_resource(c.name, leftover.run_id), True, planned=True) for c in containers]
        if not containers:
            return []
        # Leaving the pool waits for every removal begun, even when this thread is interrupted.
        threads = min(LAUNCH_THREADS, len(containers))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="docker-remove") as pool:
            return list(pool.map(lambda container: _remove_container(container, leftover.run_id), containers))

    def leftovers(self, journals: List[RunJournal], expired_only: bool = False) -> List[Leftover]:
        """Every run with a cnd-fab container on this engine, journal or not; expired when the
        controller its label names is provably gone (only those if asked)."""
        controllers: Dict[str, Set[str]] = {}
        for container in self._containers():
            run_id = container.labels.get(RUN_LABEL, "")
            if run_id:
                controllers.setdefault(run_id, set()).add(container.labels.get(CONTROLLER_LABEL, ""))
        found = []
        for run_id, named in sorted(controllers.items()):
            states = {controller_state(identity) for identity in named}
            expired = states == {GONE}
            if expired or not expired_only:
                found.append(Leftover.found(run_id, self.name, expired=expired, alive_because=_liveness(states)))
        return found

    def live_resources(self, journals: List[RunJournal]) -> List[LiveResource]:
        """Every cnd-fab container on this engine, running or not, and whether its controller runs."""
        return [
            LiveResource(
                self.name, f"container {c.name}", c.status, c.labels.get(RUN_LABEL, "?"),
                f"controller {controller_state(c.labels.get(CONTROLLER_LABEL, ''))}",
            )
            for c in self._containers()
        ]


def _container_resource(name: str, run_id: str) -> str:
    """How a Released names a container."""
    return f"container {name} ({run_id})"


def _remove_container(container: Any, run_id: str) -> Released:
    """Remove one container, killing what runs in it; never raises (on a removal thread)."""
    import docker as docker_sdk
    import requests

    resource = _container_resource(container.name, run_id)
    try:
        container.remove(force=True)
    except docker_sdk.errors.NotFound:
        pass  # gone already: what was asked
    except docker_sdk.errors.DockerException as error:
        return Released(resource, False, f"docker: {error}")
    except (requests.RequestException, OSError) as error:  # a deadline passed, or the engine went away
        return Released(resource, False, f"docker: {type(error).__name__}: {error}")
    return Released(resource, True)


def _liveness(states: Set[str]) -> str:
    """Why containers whose controllers are in `states` look alive; "" when all are gone."""
    if RUNNING in states:
        return "its controller still runs on this machine"
    if ELSEWHERE in states:
        return "its controller is not on this machine (or its containers name none), so it may still run"
    return ""
