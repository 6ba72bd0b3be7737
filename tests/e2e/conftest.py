"""Session fixtures for the end-to-end tests: the Docker engine and four SSH hosts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import yaml

from cnd_fab.ssh import KeyPair
from tests.testbed.hosts import (
    TESTBED_LABEL,
    TestbedHost,
    cnd_containers,
    ensure_engine_and_image,
    remove_labelled,
    start_hosts,
)

TESTBED_HOSTS = 4


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    ensure_engine_and_image()
    client = docker.from_env(timeout=120)
    yield client
    client.close()


class Testbed:
    __test__ = False  # a fixture value, not a test class

    """Four sshd containers, a login key and the files a static inventory needs."""

    def __init__(self, hosts: List[TestbedHost], folder: Path, login_key: KeyPair) -> None:
        self.hosts = hosts
        self.folder = folder
        self.key_file = folder / "id_ed25519"
        self.key_file.write_text(login_key.private_openssh)
        self.key_file.chmod(0o600)
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text("".join(host.known_hosts_line() + "\n" for host in hosts))

    def inventory(self, path: Path, known_hosts: Path | None = None, count: int | None = None) -> Path:
        hosts = self.hosts[: count or len(self.hosts)]
        document = {
            "hosts": [
                {"name": f"static-{i + 1}", "host": "127.0.0.1", "port": h.port, "user": "root", "key": str(self.key_file)}
                for i, h in enumerate(hosts)
            ],
            "known_hosts": str(known_hosts or self.known_hosts),
        }
        path.write_text(yaml.safe_dump(document))
        return path


@pytest.fixture(scope="session")
def testbed(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    prefix = f"cnd-testbed-{os.getpid()}"
    login_key = KeyPair.generate("cnd-fab-tests")
    try:
        hosts = start_hosts(docker_client, TESTBED_HOSTS, login_key, prefix)
        yield Testbed(hosts, tmp_path_factory.mktemp("testbed"), login_key)
    finally:
        remove_labelled(docker_client, f"{TESTBED_LABEL}={prefix}")


@pytest.fixture
def no_leaked_containers(docker_client: Any) -> Iterator[None]:
    """Fail the test if a cnd-fab run leaves a container behind."""
    yield
    left = [c.name for c in cnd_containers(docker_client)]
    for container in cnd_containers(docker_client):
        container.remove(force=True)
    assert not left, f"containers left behind: {left}"
