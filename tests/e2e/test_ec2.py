"""The EC2 provider against a moto server on 127.0.0.1, with local sshd stand-ins.

moto's gaps, and how each is covered: it does not deduplicate ClientToken, ignores
CreditSpecification, passes waiters at once and never runs user-data. So the requests we
send are recorded and asserted on, and the stand-ins "boot" from the user-data themselves.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml

from cnd_fab import ssh
from cnd_fab.errors import ProviderError
from cnd_fab.journal import RunJournal
from cnd_fab.providers import ProviderOptions, ec2, ec2_settings
from cnd_fab.providers.base import Host, Leftover, Released
from cnd_fab.providers.ec2 import Ec2Provider
from cnd_fab.providers.ec2_settings import ALIVE_TAG, EXPIRES_TAG, RUN_TAG, TAG_TIME_FORMAT, TOOL_TAG
from cnd_fab.inventory import load
from tests.helpers import REPO, cli, run_cli, wait_for_no_workers
from tests.testbed import ec2_standin
from tests.testbed.moto_server import REGION

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leaked_workers", "no_leaked_standins")]

LOWEST_D20 = 1027827


def ec2_cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "tests.testbed.ec2_cli", *args]


def live_instances(ec2: Any) -> List[Dict[str, Any]]:
    found = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def run_groups(ec2: Any) -> List[str]:
    return [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"].startswith("cnd-fab-")]


def run_keys(ec2: Any) -> List[str]:
    return [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("cnd-fab-")]


def run_templates(ec2: Any) -> List[str]:
    return [t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]]


def assert_nothing_left(ec2: Any) -> None:
    assert live_instances(ec2) == []
    assert run_groups(ec2) == [] and run_keys(ec2) == [] and run_templates(ec2) == []


def assert_all_done(results: List[Released]) -> None:
    assert results and [r.line() for r in results if not r.done or r.planned] == []


def test_search_on_ec2_launches_searches_and_removes_everything(aws: Any, inventory: Path, private_state: Path) -> None:
    result = run_cli(
        ec2_cli("search", "--provider", "ec2", "--inventory", str(inventory), "--count", "3",
                "--difficulty", "20", "--timeout", "300", "--yes", "--json")
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["nonce"] == LOWEST_D20 and record["lowest"] is True
    assert len(record["hosts"]) == 3 and all(h["name"].startswith("i-") for h in record["hosts"])
    assert record["cost_usd"] > 0
    assert "cost estimate: at most $0.0269 for 3 × c7a.large for up to 5.0 min:" in result.stderr
    assert "instances $0.0257: 3 × c7a.large at $0.1027/h for up to 5.0 min" in result.stderr
    assert "public IPv4 $0.0013: one address per instance at $0.005/h" in result.stderr
    assert "cost incurred: about $" in result.stderr
    instances = aws.describe_instances()["Reservations"][0]["Instances"]
    assert len(instances) == 3 and {i["State"]["Name"] for i in instances} == {"terminated"}
    assert_nothing_left(aws)
    journal = json.loads(next((private_state / "runs").glob("*.json")).read_text())
    assert journal["status"] == "cleaned" and journal["details"]["cost_usd"] > 0
    kinds = [r["kind"] for r in journal["resources"]]
    assert kinds.index("ec2-key-pair") < kinds.index("ec2-security-group") < kinds.index("ec2-launch") < kinds.index("ec2-instances")


class Recorder:
    """Keeps the parameters of every call of one operation, as boto3 sends them."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, params: Dict[str, Any], **kwargs: Any) -> None:
        self.calls.append(dict(params))


def provider_for(inventory: Path, timeout: float = 300, **overrides: Any) -> Ec2Provider:
    ec2_standin.install()
    return Ec2Provider(ProviderOptions(inventory=load(str(inventory)), timeout=timeout, **overrides))


@pytest.mark.parametrize("instance_type, burstable", [("c7a.large", False), ("t3.micro", True)])
def test_launch_request_carries_every_setting(aws: Any, inventory: Path, instance_type: str, burstable: bool) -> None:
    provider = provider_for(inventory, timeout=600, instance_type=instance_type)
    operations = ("RunInstances", "AuthorizeSecurityGroupIngress", "ImportKeyPair", "DescribeInstanceTypeOfferings")
    recorded = {op: Recorder() for op in operations}
    for op, recorder in recorded.items():
        provider.ec2.meta.events.register(f"provide-client-params.ec2.{op}", recorder)
    journal = RunJournal.start("ec2")
    hosts = provider.launch(2, journal)
    try:
        [request] = recorded["RunInstances"].calls
        # The public address is asked for, on an interface in a zone that offers the type.
        [group_id] = [r["group_id"] for r in journal.resources if r.get("group_id")]
        [interface] = request["NetworkInterfaces"]
        assert interface == {
            "DeviceIndex": 0, "SubnetId": interface["SubnetId"], "Groups": [group_id],
            "AssociatePublicIpAddress": True, "DeleteOnTermination": True,
        }
        assert "SecurityGroupIds" not in request and "SubnetId" not in request
        [offerings] = recorded["DescribeInstanceTypeOfferings"].calls
        assert offerings["LocationType"] == "availability-zone"
        assert offerings["Filters"] == [{"Name": "instance-type", "Values": [instance_type]}]
        [subnet] = aws.describe_subnets(SubnetIds=[interface["SubnetId"]])["Subnets"]
        offered = aws.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}]
        )["InstanceTypeOfferings"]
        assert subnet["AvailabilityZone"] in {o["Location"] for o in offered}
        assert request["MinCount"] == request["MaxCount"] == 2
        assert request["ClientToken"] == journal.run_id
        assert request["InstanceInitiatedShutdownBehavior"] == "terminate"
        assert request["MetadataOptions"]["HttpTokens"] == "required"
        assert "IamInstanceProfile" not in request
        assert ("CreditSpecification" in request) == burstable
        if burstable:
            assert request["CreditSpecification"] == {"CpuCredits": "unlimited"}
        specs = {spec["ResourceType"]: {t["Key"]: t["Value"] for t in spec["Tags"]} for spec in request["TagSpecifications"]}
        assert set(specs) == {"instance", "volume"}
        in_14_minutes = time.strftime(TAG_TIME_FORMAT, time.gmtime(time.time() + 14 * 60))
        for tags in specs.values():
            assert tags[TOOL_TAG] == "cnd-fab" and tags[RUN_TAG] == journal.run_id and tags[EXPIRES_TAG].endswith("Z")
        # Renewed on the instances alone: a volume's would go stale.
        assert specs["instance"][ALIVE_TAG] > in_14_minutes and specs["instance"][ALIVE_TAG].endswith("Z")
        assert ALIVE_TAG not in specs["volume"]
        user_data = yaml.safe_load(request["UserData"].split("\n", 1)[1])
        assert user_data["runcmd"] == [["shutdown", "-P", "+20"]]  # 600 s timeout + 10 min margin
        assert user_data["ssh_keys"]["ed25519_public"].startswith("ssh-ed25519 ")
        [ingress] = recorded["AuthorizeSecurityGroupIngress"].calls
        assert ingress["IpPermissions"] == [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "127.0.0.1/32", "Description": "cnd-fab controller"}]}
        ]
        assert recorded["ImportKeyPair"].calls[0]["KeyName"] == f"cnd-fab-{journal.run_id}"
        described = aws.describe_instances(InstanceIds=provider.instance_ids)["Reservations"][0]["Instances"]
        assert {i["InstanceType"] for i in described} == {instance_type}
        assert {tag["Value"] for i in described for tag in i["Tags"] if tag["Key"] == RUN_TAG} == {journal.run_id}
        # The pinned host key is the one in the user-data, not one learnt from the host.
        for host in hosts:
            assert host.target.pinned_host_keys[0].get_base64() in user_data["ssh_keys"]["ed25519_public"]  # type: ignore[attr-defined]
    finally:
        assert_all_done(provider.release(hosts, journal))
    assert_nothing_left(aws)


def canned_answer(request: Any, status: int, body: str) -> Any:
    """An HTTP answer made here, so that the call never reaches moto."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
            yield body.encode()

    return AWSResponse(request.url, status, {}, Raw())


class FailingSend:
    """A before-send handler that answers an EC2 call with an error `times` times, after letting
    the first `passes` calls through."""

    def __init__(self, code: str, status: int, times: int, passes: int = 0) -> None:
        self.code, self.status, self.left, self.calls, self.passes = code, status, times, 0, passes

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.left == 0 or self.calls <= self.passes:
            return None
        self.left -= 1
        body = f"<Response><Errors><Error><Code>{self.code}</Code><Message>injected</Message></Error></Errors><RequestID>t</RequestID></Response>"
        return canned_answer(request, self.status, body)


EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


def described(states: Dict[str, str]) -> str:
    """A DescribeInstances answer showing these instances in these states, and no others."""
    items = "".join(
        f"<item><instanceId>{i}</instanceId><instanceState><code>0</code><name>{state}</name></instanceState></item>"
        for i, state in states.items()
    )
    reservations = f"<item><reservationId>r-canned</reservationId><instancesSet>{items}</instancesSet></item>" if items else ""
    return f'<DescribeInstancesResponse xmlns="{EC2_XMLNS}"><requestId>t</requestId><reservationSet>{reservations}</reservationSet></DescribeInstancesResponse>'


def offered_in(instance_type: str, zones: List[str]) -> str:
    """A DescribeInstanceTypeOfferings answer: the type is offered in these zones alone."""
    items = "".join(
        f"<item><instanceType>{instance_type}</instanceType><locationType>availability-zone</locationType><location>{zone}</location></item>"
        for zone in zones
    )
    return f'<DescribeInstanceTypeOfferingsResponse xmlns="{EC2_XMLNS}"><requestId>t</requestId><instanceTypeOfferingSet>{items}</instanceTypeOfferingSet></DescribeInstanceTypeOfferingsResponse>'


class CannedSend:
    """A before-send handler that answers an EC2 call with `body` `times` times, once armed."""

    def __init__(self, body: str, times: int, armed: bool = True) -> None:
        self.body, self.left, self.armed, self.answered = body, times, armed, 0

    def arm(self, *args: Any, **kwargs: Any) -> None:
        """A handler for another call's event: from then on, answer."""
        self.armed = True

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        if not self.armed or self.left == 0:
            return None
        self.left -= 1
        self.answered += 1
        return canned_answer(request, 200, self.body)


def test_throttling_is_retried_by_botocore(aws: Any, inventory: Path) -> None:
    provider = provider_for(inventory)
    throttle = FailingSend("RequestLimitExceeded", 503, times=2)
    provider.ec2.meta.events.register("before-send.ec2.RunInstances", throttle)
    journal = RunJournal.start("ec2")
    hosts = provider.launch(1, journal)
    assert_all_done(provider.release(hosts, journal))
    assert throttle.calls == 3
    assert_nothing_left(aws)


@pytest.mark.parametrize(
    "code, status, message",
    [
        ("InsufficientInstanceCapacity", 500, "AWS has no spare capacity for c7a.large right now"),
        ("VcpuLimitExceeded", 400, "vCPU quota is too low for this many c7a.large instances; request more On-Demand vCPUs in Service Quotas (code L-1216C47A)"),
    ],
)
def test_failed_launch_is_a_clear_error_and_leaves_nothing(aws: Any, inventory: Path, code: str, status: int, message: str) -> None:
    provider = provider_for(inventory)
    failure = FailingSend(code, status, times=100)
    provider.ec2.meta.events.register("before-send.ec2.RunInstances", failure)
    journal = RunJournal.start("ec2")
    with pytest.raises(ProviderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        provider.launch(2, journal)
    assert run_groups(aws) and run_keys(aws)  # made before the launch failed
    released = provider.release([], journal)
    assert_all_done(released)
    assert sorted(r.resource.split()[0] for r in released) == ["key", "security"]  # no instance was made
    assert_nothing_left(aws)


def test_a_launch_above_the_batch_size_takes_several_calls_with_tokens_of_their_own(
    aws: Any, inventory: Path, no_ssh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ec2_settings, "LAUNCH_BATCH", 2)
    provider = provider_for(inventory)
    calls = Recorder()
    provider.ec2.meta.events.register("provide-client-params.ec2.RunInstances", calls)
    journal = RunJournal.start("ec2")
    hosts = provider.launch(5, journal)
    try:
        run_id = journal.run_id
        tokens = [call["ClientToken"] for call in calls.calls]
        assert tokens == [run_id, f"{run_id}-b1", f"{run_id}-b2"]
        assert [(call["MinCount"], call["MaxCount"]) for call in calls.calls] == [(2, 2), (2, 2), (1, 1)]
        assert len(set(provider.instance_ids)) == 5 and [host.name for host in hosts] == provider.instance_ids
        assert len(live_instances(aws)) == 5
        # Each call is in the journal before it is made, and its instances as soon as it answers.
        steps = [r for r in journal.resources if r["kind"] in ("ec2-launch", "ec2-instances")]
        assert [r["kind"] for r in steps] == ["ec2-launch", "ec2-instances"] * 3
        assert [r["client_token"] for r in steps[::2]] == tokens and [r["count"] for r in steps[::2]] == [2, 2, 1]
        assert [i for r in steps[1::2] for i in r["ids"]] == provider.instance_ids
    finally:
        released = provider.release(hosts, journal)
    assert_all_done(released)
    assert sorted(r.resource for r in released) == run_resources(journal, provider.instance_ids)
    assert_nothing_left(aws)


def test_a_batched_launch_whose_second_call_fails_leaves_nothing(
    aws: Any, inventory: Path, no_ssh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ec2_settings, "LAUNCH_BATCH", 2)
    provider = provider_for(inventory)
    refused = FailingSend("VcpuLimitExceeded", 400, times=100, passes=1)
    provider.ec2.meta.events.register("before-send.ec2.RunInstances", refused)
    journal = RunJournal.start("ec2")
    with pytest.raises(ProviderError, match=r"vCPU quota is too low for this many c7a\.large instances"):
        provider.launch(5, journal)
    assert refused.calls == 2  # the third call is never made
    assert len(provider.instance_ids) == 2 and len(live_instances(aws)) == 2  # the first call's
    released = provider.release([], journal)
    assert_all_done(released)
    assert sorted(r.resource for r in released) == run_resources(journal, provider.instance_ids)
    assert_nothing_left(aws)


def test_subnet_is_in_a_zone_that_offers_the_type(aws: Any, inventory: Path, no_ssh: None) -> None:
    provider = Ec2Provider(ProviderOptions(inventory=load(str(inventory)), timeout=300))
    provider.ec2.meta.events.register(
        "before-send.ec2.DescribeInstanceTypeOfferings", CannedSend(offered_in("c7a.large", ["eu-west-2c"]), times=1)
    )
    journal = RunJournal.start("ec2")
    hosts = provider.launch(1, journal)
    try:
        [instance] = aws.describe_instances(InstanceIds=provider.instance_ids)["Reservations"][0]["Instances"]
        assert instance["Placement"]["AvailabilityZone"] == "eu-west-2c"
    finally:
        assert_all_done(provider.release(hosts, journal))
    assert_nothing_left(aws)


def test_a_type_no_zone_offers_is_one_line_and_nothing_is_made(aws: Any, inventory: Path, no_ssh: None) -> None:
    provider = Ec2Provider(ProviderOptions(inventory=load(str(inventory)), timeout=300))
    provider.ec2.meta.events.register("before-send.ec2.DescribeInstanceTypeOfferings", CannedSend(offered_in("c7a.large", []), times=1))
    journal = RunJournal.start("ec2")
    with pytest.raises(ProviderError) as refused:
        provider.launch(1, journal)
    assert str(refused.value) == f"ec2 ({REGION}): c7a.large is not offered in any zone of this region; try another instance type or region"
    assert journal.resources == [] and run_groups(aws) == [] and run_keys(aws) == []
    assert provider.release([], journal) == []


def test_launch_waits_out_resources_ec2_does_not_show_yet(aws: Any, inventory: Path, no_ssh: None) -> None:
    provider = Ec2Provider(ProviderOptions(inventory=load(str(inventory)), timeout=300))
    # Right after CreateSecurityGroup, EC2 may not know the group; right after RunInstances, the
    # instances. botocore retries neither code.
    ingress = FailingSend("InvalidGroup.NotFound", 400, times=1)
    launch = FailingSend("InvalidGroup.NotFound", 400, times=2)
    describe = FailingSend("InvalidInstanceID.NotFound", 400, times=2)
    unseen = CannedSend(described({}), times=1, armed=False)
    events = provider.ec2.meta.events
    events.register("before-send.ec2.AuthorizeSecurityGroupIngress", ingress)
    events.register("before-send.ec2.RunInstances", launch)
    events.register("after-call.ec2.RunInstances", unseen.arm)
    events.register("before-send.ec2.DescribeInstances", describe)
    events.register("before-send.ec2.DescribeInstances", unseen)
    journal = RunJournal.start("ec2")
    hosts = provider.launch(2, journal)
    assert (ingress.calls, launch.calls) == (2, 3)
    assert describe.left == 0 and unseen.answered == 1  # two errors and an empty answer, then the instances
    assert len(provider.instance_ids) == 2 and len(live_instances(aws)) == 2
    released = provider.release(hosts, journal)
    assert_all_done(released)
    assert sorted(r.resource for r in released) == run_resources(journal, provider.instance_ids)
    assert_nothing_left(aws)


def test_release_terminates_instances_ec2_does_not_show_yet(aws: Any, inventory: Path, no_ssh: None) -> None:
    provider, journal, hosts = launched(inventory)
    ids = provider.instance_ids
    # Just after the launch, neither the tag search nor the journal's ids find the instances,
    # and TerminateInstances does not know them yet: they are still terminated, not taken for gone.
    unseen = CannedSend(described({}), times=3)
    terminate = FailingSend("InvalidInstanceID.NotFound", 400, times=1)
    provider.ec2.meta.events.register("before-send.ec2.DescribeInstances", unseen)
    provider.ec2.meta.events.register("before-send.ec2.TerminateInstances", terminate)
    released = provider.release(hosts, journal)
    assert unseen.answered == 3 and terminate.calls == 2
    assert_all_done(released)
    assert sorted(r.resource for r in released) == run_resources(journal, ids)
    assert {i["State"]["Name"] for i in aws.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]} == {"terminated"}
    assert_nothing_left(aws)


def test_terminate_waits_for_an_instance_that_reads_pending(aws: Any, inventory: Path, no_ssh: None) -> None:
    provider, journal, hosts = launched(inventory)
    ids = provider.instance_ids
    # botocore's instance_terminated waiter fails as soon as one instance reads pending.
    pending = CannedSend(described({ids[0]: "pending", ids[1]: "shutting-down"}), times=2, armed=False)
    provider.ec2.meta.events.register("after-call.ec2.TerminateInstances", pending.arm)
    provider.ec2.meta.events.register("before-send.ec2.DescribeInstances", pending)
    released = provider.release(hosts, journal)
    assert pending.answered == 2
    assert_all_done(released)
    assert sorted(r.resource for r in released) == run_resources(journal, ids)
    assert_nothing_left(aws)


def launched(inventory: Path, count: int = 2) -> Tuple[Ec2Provider, RunJournal, List[Host]]:
    provider = Ec2Provider(ProviderOptions(inventory=load(str(inventory)), timeout=300))
    journal = RunJournal.start("ec2")
    return provider, journal, provider.launch(count, journal)


def run_resources(journal: RunJournal, instance_ids: List[str]) -> List[str]:
    """The resources of a launched run, as Released names them."""
    [group_id] = [r["group_id"] for r in journal.resources if r.get("group_id")]
    name = f"cnd-fab-{journal.run_id}"
    return sorted([f"instance {i}" for i in instance_ids] + [f"security group {group_id} ({name})", f"key pair {name}"])


def test_keep_alive_renews_alive_until_on_the_instances(
    aws: Any, inventory: Path, no_ssh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ec2, "KEEPALIVE_SECONDS", 0.2)
    monkeypatch.setattr(ec2, "ALIVE_MINUTES", 30)  # a renewal then reads later than the launch's 15 minutes
    provider, journal, hosts = launched(inventory)
    renewals, answered = Recorder(), threading.Event()
    provider.ec2.meta.events.register("provide-client-params.ec2.CreateTags", renewals)
    provider.ec2.meta.events.register("after-call.ec2.CreateTags", lambda **kwargs: answered.set())
    in_29_minutes = time.strftime(TAG_TIME_FORMAT, time.gmtime(time.time() + 29 * 60))
    try:
        assert answered.wait(30)
        assert renewals.calls[0]["Resources"] == provider.instance_ids
        for instance in aws.describe_instances(InstanceIds=provider.instance_ids)["Reservations"][0]["Instances"]:
            assert {t["Key"]: t["Value"] for t in instance["Tags"]}[ALIVE_TAG] > in_29_minutes
        assert provider.notices == []
    finally:
        assert_all_done(provider.release(hosts, journal))
    assert_nothing_left(aws)


def test_release_reports_every_instance_group_and_key_pair_done(
    aws: Any, inventory: Path, no_ssh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, journal, hosts = launched(inventory)
    ids = provider.instance_ids
    # Once its instance is confirmed terminated, a worker whose stop went unconfirmed is gone too.
    monkeypatch.setattr(ssh, "stop_all", lambda hosts: {ids[0]: "its stop did not finish within 15s"})
    released = provider.release(hosts, journal)
    assert sorted(r.resource for r in released) == run_resources(journal, ids)
    assert all(r.done and not r.planned and not r.failed for r in released)
    assert {r.line().split()[0] for r in released} == {"terminated", "deleted"}
    assert journal.details["cost_usd"] > 0
    assert {i["State"]["Name"] for i in aws.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]} == {"terminated"}
    assert_nothing_left(aws)


def test_leftovers_of_a_dead_controller_are_found_planned_then_removed(aws: Any, inventory: Path, no_ssh: None) -> None:
    died, journal, _ = launched(inventory)
    died._keepalive_stop.set()  # the controller "died": nothing is released
    ids = died.instance_ids
    later = Ec2Provider(ProviderOptions())  # knows no region but the journal's
    [leftover] = later.leftovers([journal])
    assert (leftover.run_id, leftover.provider, leftover.region, leftover.expired) == (journal.run_id, "ec2", REGION, False)
    assert later.leftovers([journal], expired_only=True) == []
    live = later.live_resources([journal])
    assert sorted(r.name for r in live) == sorted(ids) and {(r.provider, r.run_id, r.state) for r in live} == {("ec2", journal.run_id, "running")}
    assert all(re.fullmatch(r"c7a\.large, alive until 20\S+Z, expires 20\S+Z", r.detail) for r in live)

    planned = later.remove(leftover, dry_run=True)
    assert sorted(r.resource for r in planned) == run_resources(journal, ids)
    assert all(r.planned and r.done and not r.failed and r.line().startswith("would remove ") for r in planned)
    assert len(live_instances(aws)) == 2 and run_groups(aws) and run_keys(aws)

    removed = later.remove(leftover)
    assert sorted(r.resource for r in removed) == run_resources(journal, ids)
    assert all(r.done and not r.planned for r in removed)
    assert {i["State"]["Name"] for i in aws.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]} == {"terminated"}
    assert_nothing_left(aws)
    # Safe to run again, from the journal as from the tags: nothing is left to remove.
    assert later.remove(Leftover(journal.run_id, "ec2", journal)) == [] and later.leftovers([journal]) == []


def test_release_that_aws_refuses_returns_failed_items_and_raises_nothing(
    aws: Any, inventory: Path, no_ssh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    provider, journal, hosts = launched(inventory)
    ids = provider.instance_ids

    def refuse(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "not allowed"}}, "TerminateInstances")

    provider.ec2.terminate_instances = refuse
    monkeypatch.setattr(ssh, "stop_all", lambda hosts: {ids[0]: "its stop did not finish within 15s"})
    released = provider.release(hosts, journal)
    reason = f"ec2 ({REGION}): terminating the instances was refused: the AWS credentials lack permission (UnauthorizedOperation)"
    [group] = [r.resource for r in released if r.resource.startswith("security group")]
    assert {r.resource: r.why for r in released if r.failed} == {
        **{f"instance {i}": reason for i in ids},
        group: "not tried: the run's instances are not confirmed terminated",
        f"worker on {ids[0]}": "its stop did not finish within 15s",
    }
    assert [r.line() for r in released if r.done] == [f"deleted key pair cnd-fab-{journal.run_id}"]
    assert f"could not remove instance {ids[0]}: {reason}" in [r.line() for r in released]
    assert len(live_instances(aws)) == 2 and run_groups(aws)

    del provider.ec2.terminate_instances  # AWS allows it again: teardown finishes the job
    finished = provider.remove(Leftover(journal.run_id, "ec2", journal))
    assert sorted(r.resource for r in finished) == sorted([f"instance {i}" for i in ids] + [group])
    assert all(r.done for r in finished)
    assert_nothing_left(aws)


def tagged_instance(aws: Any, run: str, expires: str, alive_until: str = "") -> str:
    """An instance of ours as only its tags tell it: no journal, group or key pair (and, by
    default, no alive-until tag, as an older cnd-fab launched them)."""
    image = aws.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": TOOL_TAG, "Value": "cnd-fab"}, {"Key": RUN_TAG, "Value": run}, {"Key": EXPIRES_TAG, "Value": expires}]
    if alive_until:
        tags.append({"Key": ALIVE_TAG, "Value": alive_until})
    answer = aws.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    return str(answer["Instances"][0]["InstanceId"])


def test_leftovers_tell_expired_runs_apart_and_aws_errors_are_one_line(aws: Any) -> None:
    old = tagged_instance(aws, "cnd-old", "2020-01-01T00:00:00Z")
    tagged_instance(aws, "cnd-fresh", "2999-01-01T00:00:00Z")
    provider = Ec2Provider(ProviderOptions(region=REGION))
    assert {(f.run_id, f.region, f.expired) for f in provider.leftovers([])} == {("cnd-old", REGION, True), ("cnd-fresh", REGION, False)}
    [expired] = provider.leftovers([], expired_only=True)
    assert Ec2Provider().leftovers([]) == []  # no journal and no --region: nowhere to look
    assert [r.line() for r in provider.remove(expired)] == [f"terminated instance {old}"]
    denied = FailingSend("UnauthorizedOperation", 403, times=100)
    provider.client("ec2", REGION).meta.events.register("before-send.ec2.DescribeInstances", denied)
    with pytest.raises(ProviderError, match=rf"^ec2 \({REGION}\): searching for cnd-fab instances by tag was refused"):
        provider.leftovers([])
    with pytest.raises(ProviderError):
        provider.live_resources([])


def test_unreachable_instance_is_lost_and_the_run_goes_on(aws: Any, inventory: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    document = yaml.safe_load(inventory.read_text())
    document["ec2"]["ssh_timeout"] = 4
    short.write_text(yaml.safe_dump(document))
    monkeypatch.setenv(ec2_standin.UNREACHABLE_ENV, "2")
    # D = 24 keeps the one good host busy (about 10 s) past the other's 4 s SSH deadline.
    result = run_cli(ec2_cli("search", "--provider", "ec2", "--inventory", str(short), "--count", "2", "--difficulty", "24", "--yes", "--json", "--kernel", "python"))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["nonce"] == 30074393 and record["lowest"] is True
    states = sorted(h["state"] for h in record["hosts"])
    assert states == ["lost", "stopped"]
    assert "not reachable over SSH within 4s" in result.stderr
    assert_nothing_left(aws)


def test_killed_controller_then_teardown_twice(aws: Any, inventory: Path, private_state: Path) -> None:
    process = subprocess.Popen(
        ec2_cli("search", "--provider", "ec2", "--inventory", str(inventory), "--count", "2", "--difficulty", "256", "--yes"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    joined = 0
    deadline = time.monotonic() + 120
    while joined < 2 and time.monotonic() < deadline:
        joined += " joined: " in process.stderr.readline()
    assert joined == 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(live_instances(aws)) == 2 and run_groups(aws) and run_keys(aws)
    first = run_cli(cli("teardown"))
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("terminated instance i-") == 2
    assert "deleted security group sg-" in first.stderr and "deleted key pair cnd-fab-" in first.stderr
    assert_nothing_left(aws)
    second = run_cli(cli("teardown"))
    assert second.returncode == 0 and "removed 0 resource(s) from 0 run(s)" in second.stderr
    assert not wait_for_no_workers(within=5)


def test_teardown_expired_finds_instances_by_tag_alone(aws: Any) -> None:
    old = tagged_instance(aws, "cnd-old", "2020-01-01T00:00:00Z")
    fresh = tagged_instance(aws, "cnd-fresh", "2999-01-01T00:00:00Z")
    status = run_cli(cli("status", "--region", REGION))
    assert old in status.stdout and fresh in status.stdout
    result = run_cli(cli("teardown", "--expired", "--region", REGION))
    assert result.returncode == 0, result.stderr
    assert f"terminated instance {old}" in result.stderr and fresh not in result.stderr
    assert [i["InstanceId"] for i in live_instances(aws)] == [fresh]
    everything = run_cli(cli("teardown", "--all", "--region", REGION))
    assert f"terminated instance {fresh}" in everything.stderr
    assert live_instances(aws) == []


def test_a_foreign_live_run_survives_teardown_and_goes_only_when_named(
    aws: Any, inventory: Path, no_ssh: None, tmp_path: Path, private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user's run, live: its journal is in another state directory, and its controller
    # keeps alive-until ahead.
    monkeypatch.setenv("CND_FAB_STATE_DIR", str(tmp_path / "another-state-dir"))
    theirs, journal, _ = launched(inventory)
    theirs._keepalive_stop.set()
    monkeypatch.setenv("CND_FAB_STATE_DIR", str(private_state))
    run = journal.run_id
    plain = run_cli(cli("teardown", "--region", REGION))
    assert plain.returncode == 0, plain.stderr
    assert re.search(rf"skipping {run}: its cnd-fab:alive-until tag is 20\S+Z, still ahead; name it with --run {run}", plain.stderr)
    assert "removed 0 resource(s) from 0 run(s)" in plain.stderr
    expired = run_cli(cli("teardown", "--expired", "--region", REGION))
    assert expired.returncode == 0 and "removed 0 resource(s) from 0 run(s)" in expired.stderr, expired.stderr
    assert len(live_instances(aws)) == 2 and run_groups(aws) and run_keys(aws)
    named = run_cli(cli("teardown", "--run", run, "--region", REGION))
    assert named.returncode == 0, named.stderr
    assert named.stderr.count("terminated instance i-") == 2 and "deleted security group" in named.stderr
    assert_nothing_left(aws)


def test_teardown_goes_by_alive_until_not_expires_at(aws: Any) -> None:
    # A controller stopped renewing alive-until long ago, though its dead-man's time is far off.
    abandoned = tagged_instance(aws, "cnd-abandoned", "2999-01-01T00:00:00Z", alive_until="2020-01-01T00:00:00Z")
    # A controller renews alive-until; expires-at alone would call it expired.
    kept = tagged_instance(aws, "cnd-kept", "2020-01-01T00:00:00Z", alive_until="2999-01-01T00:00:00Z")
    expired = run_cli(cli("teardown", "--expired", "--region", REGION))
    assert expired.returncode == 0, expired.stderr
    assert f"terminated instance {abandoned}" in expired.stderr and kept not in expired.stderr
    assert [i["InstanceId"] for i in live_instances(aws)] == [kept]
    plain = run_cli(cli("teardown", "--region", REGION))
    assert "skipping cnd-kept: its cnd-fab:alive-until tag is 2999-01-01T00:00:00Z, still ahead" in plain.stderr
    assert [i["InstanceId"] for i in live_instances(aws)] == [kept]


def test_teardown_all_asks_on_a_terminal_before_taking_a_live_run(aws: Any) -> None:
    import os
    import pty

    kept = tagged_instance(aws, "cnd-kept", "2999-01-01T00:00:00Z", alive_until="2999-01-01T00:00:00Z")
    for answer, left in ((b"n\n", [kept]), (b"y\n", [])):
        master, slave = pty.openpty()
        process = subprocess.Popen(
            cli("teardown", "--all", "--region", REGION), cwd=REPO, stdin=slave, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        os.close(slave)
        os.write(master, answer)
        _, stderr = process.communicate(timeout=120)
        os.close(master)
        assert process.returncode == 0, stderr
        assert "cnd-kept looks alive: its cnd-fab:alive-until tag is 2999-01-01T00:00:00Z, still ahead. Remove it anyway? [y/N]" in stderr
        assert [i["InstanceId"] for i in live_instances(aws)] == left


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-cost", "0.001", "--yes"], "the estimate $0.0269 (instances $0.0257 + public IPv4 $0.0013) is above --max-cost $0.0010; nothing was launched"),
        ([], "this run launches paid instances: pass --yes to confirm it when not on a terminal"),
        (["--max-cost", "lots"], "--max-cost must be an amount in USD, not 'lots'"),
        (["--instance-type", "huge"], "--instance-type 'huge' is not an instance type such as c7a.large"),
        (["--ssh-cidr", "everyone"], "--ssh-cidr 'everyone' is not an address range"),
        (["--ssh-cidr", "2001:db8::/64"], "--ssh-cidr '2001:db8::/64' is IPv6, but the instances get only IPv4 addresses"),
        (["--instance-types", "c7a.large,c7g.large", "--spot"], "--instance-types mixes amd64 (c7a.large) and arm64 (c7g.large)"),
        (["--min-count", "4"], "--min-count 4 is more than the 3 instance(s) asked for"),
    ],
)
def test_refusals_come_before_any_launch(aws: Any, inventory: Path, extra: List[str], message: str) -> None:
    result = run_cli(ec2_cli("search", "--provider", "ec2", "--inventory", str(inventory), "--count", "3", "--timeout", "300", *extra))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"cnd-fab: {message}" or message in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert_nothing_left(aws)
    assert aws.describe_instances()["Reservations"] == []


def test_terminal_asks_before_launching(aws: Any, inventory: Path) -> None:
    import os
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen(
        ec2_cli("search", "--provider", "ec2", "--inventory", str(inventory), "--count", "2", "--timeout", "60"),
        cwd=REPO, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(slave)
    os.write(master, b"n\n")
    _, stderr = process.communicate(timeout=60)
    os.close(master)
    assert process.returncode == 2, stderr
    assert "launch 2 ec2 instance(s)? [y/N]" in stderr
    assert stderr.strip().endswith("\ncnd-fab: not confirmed; nothing was launched") or stderr.strip().endswith("] cnd-fab: not confirmed; nothing was launched")
    assert_nothing_left(aws)


def test_within_plans_an_ec2_fleet_prices_it_and_runs_it(aws: Any, inventory: Path) -> None:
    result = run_cli(
        ec2_cli("search", "--provider", "ec2", "--inventory", str(inventory), "--difficulty", "24",
                "--within", "300", "--confidence", "0.95", "--yes", "--json")
    )
    assert result.returncode == 0, result.stderr
    assert "each host 40.00 MH/s after 60.0s of start-up (built-in default for 2 core(s), not measured" in result.stderr
    assert "1 host(s) settle the answer within 300s with probability" in result.stderr
    assert "cost estimate: at most $0.0090 for 1 × c7a.large for up to 5.0 min:" in result.stderr
    assert "instances $0.0086: 1 × c7a.large at $0.1027/h for up to 5.0 min" in result.stderr
    assert json.loads(result.stdout)["nonce"] == 30074393
    assert_nothing_left(aws)
