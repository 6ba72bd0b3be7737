"""The Docker test bed: a private Docker engine, the SSH host image, and sshd containers.

Containers use host networking, each sshd on its own 127.0.0.1 port, so no test ever
talks to a Docker bridge address. Readiness is the OpenSSH banner answering, never a sleep.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from cnd_fab.providers.docker import LOOPBACK, TOOL_LABEL, free_loopback_port, key_archive, sshd_command
from cnd_fab.ssh import KeyPair

REPO = Path(__file__).resolve().parents[2]
IMAGE = "cnd-fab-sshd:latest"
TESTBED_LABEL = "cnd-fab.testbed"


def ensure_engine_and_image() -> str:
    """Start the private dockerd if needed and build the image if missing; return DOCKER_HOST."""
    if not os.environ.get("DOCKER_HOST"):
        started = subprocess.run(
            ["bash", str(REPO / "tests" / "testbed" / "start-dockerd.sh")],
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            raise RuntimeError(f"cannot start dockerd for the e2e tests:\n{started.stderr}")
        os.environ["DOCKER_HOST"] = started.stdout.strip().splitlines()[-1]
    built = subprocess.run(["bash", str(REPO / "image" / "build.sh"), IMAGE], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"cannot build {IMAGE}:\n{built.stdout}\n{built.stderr}")
    return os.environ["DOCKER_HOST"]


def wait_for_banner(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    last: Optional[Exception] = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-OpenSSH"):
                    return
        except OSError as error:
            last = error
        time.sleep(0.05)
    raise RuntimeError(f"sshd on {LOOPBACK}:{port} did not answer within {within}s: {last}")


@dataclass
class TestbedHost:
    name: str
    port: int
    host_key: KeyPair
    container: Any

    def known_hosts_line(self) -> str:
        key = self.host_key.key
        return f"[{LOOPBACK}]:{self.port} {key.get_name()} {key.get_base64()}"


def start_host(client: Any, name: str, host_key: KeyPair, authorized_key: str, labels: Dict[str, str]) -> TestbedHost:
    """One sshd container on its own loopback port, not yet known to answer."""
    port = free_loopback_port()
    container = client.containers.create(
        IMAGE, command=sshd_command(port), name=name, network_mode="host", labels=labels, detach=True
    )
    container.put_archive("/etc/ssh", key_archive(host_key, authorized_key))
    container.start()
    return TestbedHost(name, port, host_key, container)


def start_hosts(client: Any, count: int, login_key: KeyPair, prefix: str) -> List[TestbedHost]:
    hosts = [
        start_host(client, f"{prefix}-{i + 1}", KeyPair.generate(prefix), login_key.public_line, {TESTBED_LABEL: prefix})
        for i in range(count)
    ]
    for host in hosts:
        wait_for_banner(host.port)
    return hosts


def remove_labelled(client: Any, label: str) -> None:
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)


def cnd_containers(client: Any) -> List[Any]:
    """Every container any cnd-fab run created (not the test bed's own)."""
    return list(client.containers.list(all=True, filters={"label": f"{TOOL_LABEL}=cnd-fab"}))
