"""EC2 provider pieces that need no API: AMI choice, user-data, errors, costs, keep-alive."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest
import yaml

from cnd_fab import cost
from cnd_fab.providers import ec2
from cnd_fab.providers.base import ProviderOptions
from cnd_fab.ssh import KeyPair, SshHost


@pytest.mark.parametrize(
    "instance_type, arch, burstable",
    [("c7a.large", "amd64", False), ("c7g.xlarge", "arm64", False), ("t4g.small", "arm64", True), ("t3.micro", "amd64", True), ("c8gd.large", "arm64", False), ("m7i.large", "amd64", False)],
)
def test_architecture_and_credits_follow_the_type(instance_type: str, arch: str, burstable: bool) -> None:
    assert ec2.architecture(instance_type) == arch
    assert ec2.is_burstable(instance_type) == burstable
    provider = ec2.Ec2Provider(ProviderOptions(instance_type=instance_type))
    assert provider.ami_parameter == f"/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"


def test_dead_man_minutes_cover_the_timeout_with_a_margin() -> None:
    assert ec2.dead_man_minutes(None) == 60
    assert ec2.dead_man_minutes(60) == 11
    assert ec2.dead_man_minutes(61) == 12
    assert ec2.dead_man_minutes(3600) == 70


def test_cloud_config_pins_our_keys_and_schedules_shutdown() -> None:
    host, login = KeyPair.generate("h"), KeyPair.generate("l")
    text = ec2.cloud_config(host, login, 25)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["ssh_genkeytypes"] == [] and document["ssh_deletekeys"] is True
    assert document["ssh_keys"]["ed25519_private"] == host.private_openssh
    assert document["ssh_authorized_keys"] == [login.public_line]
    assert document["runcmd"] == [["shutdown", "-P", "+25"]]


class FakeClientError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(f"{code} happened")
        self.response = {"Error": {"Code": code}}


@pytest.mark.parametrize(
    "code, expected",
    [
        ("InsufficientInstanceCapacity", "no spare capacity for c7a.large"),
        ("VcpuLimitExceeded", "Service Quotas (code L-1216C47A)"),
        ("UnauthorizedOperation", "lack permission"),
        ("Weird", "run_instances failed: Weird: Weird happened"),
    ],
)
def test_aws_errors_become_one_actionable_line(code: str, expected: str) -> None:
    message = ec2.explain(FakeClientError(code), "run_instances", "eu-west-2", "c7a.large")
    assert message.startswith("ec2 (eu-west-2): ") and expected in message and "\n" not in message


def test_cost_estimate_and_minimum_billing() -> None:
    estimate = cost.estimate("c7a.large", 4, 600)
    assert estimate.total == pytest.approx(4 * 0.1027 * 600 / 3600)
    assert "4 × c7a.large at $0.1027/h for up to 10.0 min" in estimate.describe()
    assert cost.instance_cost(0.36, 5) == pytest.approx(0.36 * 60 / 3600)  # 60 s minimum
    hourly = cost.estimate("c7a.large", 1, None)
    assert hourly.seconds == 3600 and "per hour (no --timeout)" in hourly.describe()
    unknown = cost.estimate("x9z.metal", 2, 60)
    assert unknown.total is None and "no built-in price" in unknown.describe()


def test_keep_alive_pushes_the_shutdown_out(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: List[str] = []
    pushed = threading.Event()

    class Host(SshHost):
        def __init__(self) -> None:
            self.connection = object()  # type: ignore[assignment]

        def run_command(self, command: str, timeout: float = 10.0) -> Any:
            commands.append(command)
            pushed.set()
            return 0, ""

    monkeypatch.setattr(ec2, "KEEPALIVE_SECONDS", 0.01)
    provider = ec2.Ec2Provider(ProviderOptions(timeout=900))
    thread = threading.Thread(target=provider._keep_alive, args=([Host()],), daemon=True)
    thread.start()
    assert pushed.wait(5)
    provider._keepalive_stop.set()
    thread.join(5)
    assert commands[0] == "sudo -n shutdown -P +25"
