"""EC2 provider pieces that need no API: AMI choice, user-data, errors, costs, keep-alive."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, List, Tuple

import pytest
import yaml

from cnd_fab import cost
from cnd_fab.errors import HostConnectError, InputError
from cnd_fab.journal import RunJournal
from cnd_fab.providers import ec2, ec2_settings
from cnd_fab.providers.base import ProviderOptions
from cnd_fab.providers.ec2_settings import InstanceChoice
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
        # Families told apart by pattern, not by their first letter.
        ("trn1.2xlarge", "amd64", "x86_64", False),
        ("t2.micro", "amd64", "x86_64", True),
        ("t3a.small", "amd64", "x86_64", True),
        ("a1.large", "arm64", "aarch64", False),
        ("m6gd.large", "arm64", "aarch64", False),
        ("c6gn.large", "arm64", "aarch64", False),
        ("im4gn.large", "arm64", "aarch64", False),
        ("is4gen.large", "arm64", "aarch64", False),
        ("g5g.xlarge", "arm64", "aarch64", False),
        ("g4dn.xlarge", "amd64", "x86_64", False),
        ("c7i-flex.large", "amd64", "x86_64", False),
        ("inf2.xlarge", "amd64", "x86_64", False),
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
    "count, types, cidr, min_count, message",
    [
        (257, ("c7a.large",), None, None, "--count 257 is too many instances (at most 256)"),
        (1, ("huge",), None, None, "--instance-type 'huge' is not an instance type"),
        (2, ("c7a.large", "huge"), None, None, "--instance-types 'huge' is not an instance type"),
        (2, ("c7a.large", "c7a.large"), None, None, "--instance-types names a type twice: c7a.large,c7a.large"),
        (
            2, ("c7a.large", "c7g.large", "m7a.large"), None, None,
            "--instance-types mixes amd64 (c7a.large) and arm64 (c7g.large): one run has one architecture, since its AMI follows it",
        ),
        (3, ("c7a.large",), None, 4, "--min-count 4 is more than the 3 instance(s) asked for"),
        (1, ("c7a.large",), "everyone", None, "--ssh-cidr 'everyone' is not an address range"),
    ],
)
def test_requests_aws_would_refuse_are_refused_first(
    count: int, types: Tuple[str, ...], cidr: Any, min_count: Any, message: str
) -> None:
    with pytest.raises(InputError) as refused:
        ec2_settings.check_request(count, InstanceChoice(types), cidr, min_count)
    assert str(refused.value).startswith(message)
    ec2_settings.check_request(256, InstanceChoice(("c7a.large",)), "203.0.113.7/32")
    ec2_settings.check_request(3, InstanceChoice(("c7g.large", "t4g.large", "m7g.large"), spot=True), None, 1)


@pytest.mark.parametrize(
    "given, sent",
    [
        ("203.0.113.7", "203.0.113.7/32"),
        ("203.0.113.7/32", "203.0.113.7/32"),
        ("203.0.113.7/24", "203.0.113.0/24"),
        (" 10.1.2.3/8 ", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_ssh_cidr_is_sent_in_canonical_form(given: str, sent: str) -> None:
    assert ec2_settings.ssh_range(given) == sent
    ec2_settings.check_request(1, InstanceChoice(("c7a.large",)), given)


@pytest.mark.parametrize("given", ["2001:db8::/64", "2001:db8::1", "::/0"])
def test_ipv6_ssh_cidr_is_refused_in_one_line(given: str) -> None:
    with pytest.raises(InputError) as refused:
        ec2_settings.check_request(1, InstanceChoice(("c7a.large",)), given)
    assert str(refused.value) == (
        f"--ssh-cidr {given!r} is IPv6, but the instances get only IPv4 addresses; give an IPv4 range such as "
        "203.0.113.7/32"
    )


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


class KeepAliveHost(SshHost):
    """An instance's SSH host as the keep-alive sees it: a connection, and a command that works or not."""

    def __init__(self, name: str, broken: bool = False) -> None:
        self.name, self.broken = name, broken
        self.connection = object()  # type: ignore[assignment]
        self.commands: List[str] = []

    def run_command(self, command: str, timeout: float = 10.0) -> Any:
        if self.broken:
            raise HostConnectError(f"{self.name}: 'sudo' failed: timed out")
        self.commands.append(command)
        return 0, ""


class TagRenewals:
    """The region's renew_tags, recorded; refused with AccessDenied when asked."""

    region = "eu-west-2"

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: List[Any] = []
        self.renewed = threading.Event()

    def renew_tags(self, ids: List[str], tags: List[Any]) -> None:
        self.calls.append((list(ids), tags))
        if len(self.calls) >= 2:
            self.renewed.set()
        if self.refuse:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "CreateTags")


def keep_alive_once(hosts: List[SshHost], aws: TagRenewals, warned: List[str]) -> ec2.Ec2Provider:
    """Run the keep-alive of a provider that launched i-a and i-b until it has renewed once."""
    provider = ec2.Ec2Provider(ProviderOptions(timeout=900, warn=warned.append))
    journal = RunJournal.start("ec2")
    provider._launch = SimpleNamespace(instance_ids=["i-a", "i-b"], aws=aws, journal=journal)  # type: ignore[assignment]
    thread = threading.Thread(target=provider._keep_alive, args=(hosts,), daemon=True)
    thread.start()
    assert aws.renewed.wait(5)
    provider._keepalive_stop.set()
    thread.join(5)
    return provider


def test_keep_alive_pushes_the_shutdown_out_and_renews_the_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ec2, "KEEPALIVE_SECONDS", 0.01)
    hosts, aws, warned = [KeepAliveHost("i-a"), KeepAliveHost("i-b")], TagRenewals(), []
    before = time.strftime(ec2_settings.TAG_TIME_FORMAT, time.gmtime(time.time() + 14 * 60))
    provider = keep_alive_once(hosts, aws, warned)
    assert hosts[0].commands[0] == hosts[1].commands[0] == "sudo -n shutdown -P +25"
    (alive_ids, [alive]), (expires_ids, [expires]) = aws.calls[:2]
    assert alive_ids == ["i-a", "i-b"] and alive["Key"] == "cnd-fab:alive-until" and alive["Value"] > before
    assert expires_ids == ["i-a", "i-b"] and expires["Key"] == "cnd-fab:expires-at"
    assert warned == [] and provider.notices == []


def test_keep_alive_failures_are_shown_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ec2, "KEEPALIVE_SECONDS", 0.01)
    hosts, aws, warned = [KeepAliveHost("i-a"), KeepAliveHost("i-b", broken=True)], TagRenewals(refuse=True), []
    provider = keep_alive_once(hosts, aws, warned)
    # Only the instance whose shutdown moved has its expires-at renewed.
    assert [ids for ids, _ in aws.calls[:2]] == [["i-a", "i-b"], ["i-a"]]
    assert warned[:3] == [
        "keep-alive: could not push i-b's shutdown out (i-b: 'sudo' failed: timed out); it ends itself by its "
        "cnd-fab:expires-at tag",
        "keep-alive: ec2 (eu-west-2): renewing the cnd-fab:alive-until tag was refused: the AWS credentials lack "
        "permission (UnauthorizedOperation); a teardown elsewhere may take this run once cnd-fab:alive-until passes",
        "keep-alive: ec2 (eu-west-2): renewing the cnd-fab:expires-at tag was refused: the AWS credentials lack "
        "permission (UnauthorizedOperation)",
    ]
    assert provider.notices[:3] == warned[:3]
    journal = provider._launch.journal  # type: ignore[union-attr]
    assert RunJournal.load(journal.path).details["notices"][:3] == warned[:3]
