"""Fixtures for the end-to-end tests: the Docker engine and four SSH hosts; a moto server for EC2."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import yaml

from cnd_fab.providers import ec2
from cnd_fab.ssh import KeyPair
from tests.testbed import ec2_standin
from tests.testbed.moto_server import AMI_PARAMETER, REGION, MotoServer
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


# --- EC2 against moto ---------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A clean moto for each test, and the environment every process needs to reach it."""
    import boto3

    moto_server.reset()
    for name, value in moto_server.environment().items():
        monkeypatch.setenv(name, value)
    return boto3.client("ec2", region_name=REGION)


@pytest.fixture
def no_leaked_standins(docker_client: Any) -> Iterator[None]:
    yield
    for container in docker_client.containers.list(all=True, filters={"label": f"{ec2_standin.STANDIN_LABEL}"}):
        container.remove(force=True)


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        yaml.safe_dump(
            {"ec2": {"region": REGION, "instance_type": "c7a.large", "ami_parameter": AMI_PARAMETER, "ssh_timeout": 20}}
        )
    )
    return path


@pytest.fixture
def no_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests of the AWS side alone: no worker starts, so nothing ever connects to this."""
    monkeypatch.setattr(ec2, "address_lookup", lambda: "127.0.0.1")
    monkeypatch.setattr(ec2, "endpoint_resolver", lambda instance, user_data: ec2.SshEndpoint("127.0.0.1", 9, "root"))
    monkeypatch.setattr(ec2, "metadata_service", "http://127.0.0.1:9")
