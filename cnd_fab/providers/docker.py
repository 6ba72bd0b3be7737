"""SSH host containers on this machine's Docker engine, each sshd on its own 127.0.0.1 port.

Example: ``fab search --provider docker --count 4`` starts four containers of the
``cnd-fab-sshd`` image (see image/), logs in to each with a per-run key and pins the host
key it generated for it. Containers carry the labels ``cnd-fab.run=<run id>``, so teardown
finds them even without a journal.
"""

from __future__ import annotations

import io
import socket
import tarfile
import time
from typing import TYPE_CHECKING, Any, List, Optional

from ..errors import InputError, ProviderError
from ..journal import RunJournal
from ..ssh import KeyPair, SshHost, SshTarget, stop_all
from .base import Host, Provider, ProviderOptions

if TYPE_CHECKING:
    import docker as docker_sdk

TOOL_LABEL = "cnd-fab.tool"
RUN_LABEL = "cnd-fab.run"
KEY_DIR = "/etc/ssh/cnd-fab"
MAX_CONTAINERS = 64
LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A port nothing listens on right now; sshd binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


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


class DockerProvider(Provider):
    """Starts SSH host containers with host networking; removes them at the end."""

    name = "docker"
    count_meaning = "number of SSH host containers started on this machine's Docker engine"

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        super().__init__(options)
        settings = self.options.inventory.docker
        self.image = self.options.image or settings.image
        self.cpus = settings.cpus
        self._client: Optional["docker_sdk.DockerClient"] = None

    @property
    def client(self) -> "docker_sdk.DockerClient":
        if self._client is None:
            import docker as docker_sdk

            try:
                self._client = docker_sdk.from_env(timeout=60)
                self._client.ping()
            except docker_sdk.errors.DockerException as error:
                raise ProviderError(
                    f"cannot reach the Docker engine (DOCKER_HOST or /var/run/docker.sock): {error}"
                ) from None
        return self._client

    def check(self, count: int) -> None:
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
        from ..transport import protocol

        cores = protocol.effective_cores()
        limit = self._cpus_for(0)
        return max(1, min(cores, int(-(-limit // 1)))) if limit else cores

    def max_hosts(self) -> int:
        return 1  # containers on this machine only share its cores

    def _cpus_for(self, index: int) -> Optional[float]:
        if not self.cpus:
            return None
        return self.cpus[index] if len(self.cpus) > 1 else self.cpus[0]

    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        import docker as docker_sdk

        login_key = KeyPair.generate(f"cnd-fab-{journal.run_id}")
        hosts: List[Host] = []
        for index in range(count):
            name = f"{journal.run_id}-{index + 1}"
            port = free_loopback_port()
            host_key = KeyPair.generate(name)
            cpus = self._cpus_for(index)
            # Recorded before it exists, so a crash between the two still leaves a trace.
            journal.record("docker-container", name=name, port=port)
            try:
                container = self.client.containers.create(
                    self.image,
                    command=sshd_command(port),
                    name=name,
                    network_mode="host",
                    labels={TOOL_LABEL: "cnd-fab", RUN_LABEL: journal.run_id},
                    nano_cpus=int(cpus * 1e9) if cpus else None,
                    detach=True,
                )
                container.put_archive("/etc/ssh", key_archive(host_key, login_key.public_line))
                container.start()
            except docker_sdk.errors.DockerException as error:
                raise ProviderError(f"docker: starting container {name} failed: {error}") from None
            target = SshTarget(
                name=f"docker-{index + 1}",
                host=LOOPBACK,
                port=port,
                user="root",
                login_key=login_key.key,
                pinned_host_keys=[host_key.key],
                warn=self.options.warn,
            )
            hosts.append(SshHost(target, journal.run_id, index + 1, journal))
        return hosts

    def release(self, hosts: List[Host], journal: RunJournal) -> None:
        stop_all(hosts)
        self._remove_run(journal.run_id)

    def _containers(self, run_id: Optional[str] = None) -> List[Any]:
        label = f"{RUN_LABEL}={run_id}" if run_id else f"{TOOL_LABEL}=cnd-fab"
        return list(self.client.containers.list(all=True, filters={"label": label}))

    def _remove_run(self, run_id: str, dry_run: bool = False) -> List[str]:
        import docker as docker_sdk

        lines = []
        for container in self._containers(run_id):
            lines.append(f"{'would remove' if dry_run else 'removed'} container {container.name} ({run_id})")
            if dry_run:
                continue
            try:
                container.remove(force=True)
            except docker_sdk.errors.NotFound:
                pass
            except docker_sdk.errors.DockerException as error:
                raise ProviderError(f"docker: removing container {container.name} failed: {error}") from None
        return lines

    def teardown(self, journal: RunJournal, dry_run: bool = False) -> List[str]:
        return self._remove_run(journal.run_id, dry_run)

    def labelled_runs(self) -> List[str]:
        """Run ids of every cnd-fab container on this engine, journal or not."""
        return sorted({c.labels.get(RUN_LABEL, "") for c in self._containers()} - {""})
