"""EC2 provider pieces that need no API: AMI choice, user-data, errors, costs, keep-alive."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest
import yaml

from cnd_fab import cost
from cnd_fab.errors import InputError
from cnd_fab.journal import RunJournal
from cnd_fab.providers import ec2, ec2_settings
from cnd_fab.providers.base import ProviderOptions
from cnd_fab.ssh import KeyPair, SshHost


@pytest.mark.parametrize(
    "instance_type, arch, machine, burstable",
    [
        ("c7a.large", "amd64", "x86_64", False),
        ("c7g.xlarge", "arm64", "aarch64", False),
        ("t4g.small", "arm64", "aarch64", True),
        ("t3.micro", "amd64", "x86_64", True),
        ("c8gd.large", "arm64", "aarch64", False),
        ("m7i.large", "amd64", "x86_64", False),
    ],
)
def test_architecture_and_credits_follow_the_type(instance_type: str, arch: str, machine: str, burstable: bool) -> None:
    assert ec2_settings.architecture(instance_type) == arch
    assert ec2_settings.is_burstable(instance_type) == burstable
    provider = ec2.Ec2Provider(ProviderOptions(instance_type=instance_type))
    assert provider.ami_parameter == f"/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
    assert provider.architectures() == (machine,)


def test_dead_man_minutes_cover_the_timeout_with_a_margin() -> None:
    assert ec2_settings.dead_man_minutes(None) == 60
    assert ec2_settings.dead_man_minutes(60) == 11
    assert ec2_settings.dead_man_minutes(61) == 12
    assert ec2_settings.dead_man_minutes(3600) == 70


def test_cloud_config_pins_our_keys_and_schedules_shutdown() -> None:
    host, login = KeyPair.generate("h"), KeyPair.generate("l")
    text = ec2_settings.cloud_config(host, login, 25)
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
    message = ec2_settings.explain(FakeClientError(code), "run_instances", "eu-west-2", "c7a.large")
    assert message.startswith("ec2 (eu-west-2): ") and expected in message and "\n" not in message


def test_explain_keeps_a_many_line_error_on_one_line() -> None:
    message = ec2_settings.explain(ValueError("Waiter failed:\n  Max attempts exceeded"), "waiting", "eu-west-2")
    assert message == "ec2 (eu-west-2): waiting failed: ValueError: Waiter failed: Max attempts exceeded"


@pytest.mark.parametrize(
    "count, instance_type, cidr, message",
    [
        (257, "c7a.large", None, "--count 257 is too many instances (at most 256)"),
        (1, "huge", None, "--instance-type 'huge' is not an instance type"),
        (1, "c7a.large", "everyone", "--ssh-cidr 'everyone' is not an address range"),
    ],
)
def test_requests_aws_would_refuse_are_refused_first(count: int, instance_type: str, cidr: Any, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ec2_settings.check_request(count, instance_type, cidr)
    ec2_settings.check_request(256, "c7a.large", "203.0.113.7/32")


def test_run_regions_give_each_region_only_its_own_instances() -> None:
    journal = RunJournal(run_id="r1", provider="ec2", details={"region": "eu-west-2"})
    journal.resources += [
        {"kind": "ec2-key-pair", "region": "eu-west-2", "name": "cnd-fab-r1"},
        {"kind": "ec2-instances", "region": "eu-west-2", "ids": ["i-a", "i-b"]},
        {"kind": "ec2-instances", "region": "us-east-1", "ids": ["i-c"]},
    ]
    assert ec2_settings.run_regions(journal, "eu-west-1") == {
        "eu-west-1": [], "eu-west-2": ["i-a", "i-b"], "us-east-1": ["i-c"]
    }
    assert ec2_settings.run_regions(RunJournal(run_id="r2", provider="ec2")) == {}


def test_searched_regions_come_from_ec2_journals_and_the_flag() -> None:
    journals = [
        RunJournal(run_id="a", provider="ec2", details={"region": "us-east-1"}),
        RunJournal(run_id="b", provider="docker", details={"region": "ignored"}),
        RunJournal(run_id="c", provider="ec2"),
    ]
    assert ec2_settings.searched_regions(journals, "eu-west-2") == ["eu-west-2", "us-east-1"]
    assert ec2_settings.searched_regions([], None) == []


def test_cost_estimate_and_minimum_billing() -> None:
    estimate = cost.estimate("c7a.large", 4, 600)
    assert estimate.charges.instances == pytest.approx(4 * 0.1027 * 600 / 3600)
    assert estimate.total == pytest.approx(4 * (0.1027 + 0.005) * 600 / 3600)  # with public IPv4
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
