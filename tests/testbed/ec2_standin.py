"""The test-only EC2 endpoint resolver: each instance moto launches is stood in for by a
local sshd container, "booted" from the instance's own cloud-init user-data (its host key
and authorized login key), listening on 127.0.0.1. No test ever connects to an address moto
made up, and the controller's whole SSH path runs for real against the keys it generated.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict

import yaml

from cnd_fab.providers import ec2
from cnd_fab.ssh import KeyPair
from tests.testbed.hosts import TESTBED_LABEL, start_host, wait_for_banner

STANDIN_LABEL = "cnd-fab.ec2-standin"
STANDIN_GROUP = "ec2-standins"
# CND_FAB_STANDIN_UNREACHABLE=N: the Nth instance resolved never answers SSH.
UNREACHABLE_ENV = "CND_FAB_STANDIN_UNREACHABLE"
_lock = threading.Lock()
_resolved = [0]


def docker_standin(instance: Dict[str, Any], user_data: str) -> ec2.SshEndpoint:
    import docker

    config = yaml.safe_load(user_data.split("\n", 1)[1])
    assert user_data.startswith("#cloud-config\n")
    host_key = KeyPair.from_private(config["ssh_keys"]["ed25519_private"], "standin")
    assert host_key.public_line.split()[:2] == config["ssh_keys"]["ed25519_public"].split()[:2]
    with _lock:
        _resolved[0] += 1
        position = _resolved[0]
        client = docker.from_env()
        host = start_host(
            client,
            f"standin-{instance['InstanceId']}",
            host_key,
            config["ssh_authorized_keys"][0],
            {TESTBED_LABEL: STANDIN_GROUP, STANDIN_LABEL: instance["InstanceId"]},
        )
    if os.environ.get(UNREACHABLE_ENV) == str(position):
        # An instance that never answers SSH: its stand-in is stopped before it is used.
        host.container.stop(timeout=0)
        return ec2.SshEndpoint("127.0.0.1", host.port, "root")
    wait_for_banner(host.port)
    return ec2.SshEndpoint("127.0.0.1", host.port, "root")


#: CND_FAB_STANDIN_METADATA=URL: the metadata stand-in (tests/testbed/imds.py) spot workers watch.
METADATA_ENV = "CND_FAB_STANDIN_METADATA"
#: Without one, a loopback port nothing listens on: a spot worker's polls are refused, never sent away.
NO_METADATA_SERVICE = "http://127.0.0.1:9"


def install() -> None:
    ec2.endpoint_resolver = docker_standin
    ec2.address_lookup = lambda: "127.0.0.1"
    ec2.metadata_service = os.environ.get(METADATA_ENV, NO_METADATA_SERVICE)
