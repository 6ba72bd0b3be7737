"""What an EC2 run is made of, without calling AWS: names, tags, the regions its journal
names, the RunInstances request, the user-data with its dead-man's switch, and one line for
each AWS error."""

from __future__ import annotations

import base64
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..cost import is_burstable
from ..errors import InputError
from ..journal import RunJournal
from ..ssh import KeyPair

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import TagTypeDef

DEFAULT_INSTANCE_TYPE = "c7a.large"
UBUNTU_AMI_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
SSH_USER = "ubuntu"
DEFAULT_SSH_DEADLINE = 300.0
# With no --timeout, instances shut themselves down an hour after the last sign of life.
UNBOUNDED_RUN_MINUTES = 60
DEAD_MAN_MARGIN_MINUTES = 10
MAX_INSTANCES = 256
#: Instances asked for in one RunInstances or CreateFleet call; a larger launch is made in
#: several calls under one run, each with its own ClientToken (see launch_batches). 100 is
#: the size every describe, terminate and tag call of a run already uses (ec2_region).
LAUNCH_BATCH = 100
#: The longest ClientToken EC2 accepts.
MAX_CLIENT_TOKEN = 64
TOOL_TAG = "cnd-fab:tool"
RUN_TAG = "cnd-fab:run"
EXPIRES_TAG = "cnd-fab:expires-at"
#: Renewed by a live controller's keep-alive: until then, teardown leaves the run alone unless
#: it is named (--run) or this machine's journal shows its controller is gone.
ALIVE_TAG = "cnd-fab:alive-until"
#: How far each renewal pushes alive-until: the keep-alive renews every 4 minutes, so three
#: renewals in a row must fail before a live run reads as abandoned.
ALIVE_MINUTES = 15
#: How long after its launch an instance that EC2 does not show is taken for one it does not
#: show *yet* (its API is eventually consistent), not for one long terminated and forgotten.
FRESH_SECONDS = 600.0
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
INSTANCE_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
#: The expires-at tag's format: UTC, so that comparing the strings compares the times.
TAG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: How AWS names an architecture (the AMI parameter) -> how `uname -m` names it (kernels).
UNAME_MACHINE = {"arm64": "aarch64", "amd64": "x86_64"}


@dataclass(frozen=True)
class InstanceChoice:
    """What a run asks EC2 for: one or more instance types of one architecture, on-demand or spot.

    Example: ``InstanceChoice(("c7a.large", "c6a.large"), spot=True)``. One on-demand type
    launches through RunInstances, all or nothing; several types, or spot, through an instant
    EC2 Fleet, which may launch fewer than asked."""

    types: Tuple[str, ...]
    spot: bool = False

    @property
    def through_fleet(self) -> bool:
        """True when the launch goes through CreateFleet."""
        return self.spot or len(self.types) > 1

    @property
    def label(self) -> str:
        """The types for a person and for the run record: 'c7a.large', 'c7a.large|c6a.large spot'."""
        return "|".join(self.types) + (" spot" if self.spot else "")


@dataclass(frozen=True)
class Pool:
    """One place a fleet may launch an instance: a type in a zone's default subnet."""

    instance_type: str
    zone: str
    subnet_id: str


def resource_name(run_id: str) -> str:
    """The name of a run's key pair and security group: found by it at teardown."""
    return f"cnd-fab-{run_id}"


def instance_resource(instance_id: str) -> str:
    """How a Released names an instance."""
    return f"instance {instance_id}"


def group_resource(group_id: str, name: str) -> str:
    """How a Released names a security group: its id, and the name that tells its run."""
    return f"security group {group_id} ({name})"


def template_resource(template_id: str, name: str) -> str:
    """How a Released names a launch template."""
    return f"launch template {template_id} ({name})"


def run_regions(journal: RunJournal, region: Optional[str] = None) -> Dict[str, List[str]]:
    """Every region a run's journal (or `region`) names -> the instance ids recorded there.

    An instance id means nothing in another region, so each region gets only its own."""
    regions = {str(r["region"]) for r in journal.resources if r.get("region")}
    for named in (journal.details.get("region"), region):
        if named:
            regions.add(str(named))
    return {
        name: [
            str(i)
            for r in journal.resources
            if r.get("kind") == "ec2-instances" and r.get("region", name) == name
            for i in r.get("ids", [])
        ]
        for name in sorted(regions)
    }


def fresh_instances(journal: RunJournal, now: float) -> List[str]:
    """The instance ids the journal records as launched less than FRESH_SECONDS before `now`."""
    return [
        str(i)
        for r in journal.resources
        if r.get("kind") == "ec2-instances" and now - float(r.get("launched_at") or 0) < FRESH_SECONDS
        for i in r.get("ids", [])
    ]


def ssh_range(ssh_cidr: str) -> str:
    """--ssh-cidr as AWS wants it: an IPv4 network in canonical form (203.0.113.7 -> 203.0.113.7/32,
    10.1.2.3/8 -> 10.0.0.0/8). Raises InputError for anything else, IPv6 included: the instances
    get no IPv6 address, so an IPv6 range would let nobody in."""
    try:
        network = ipaddress.ip_network(ssh_cidr.strip(), strict=False)
    except ValueError:
        raise InputError(f"--ssh-cidr {ssh_cidr!r} is not an address range such as 203.0.113.7/32") from None
    if network.version != 4:
        raise InputError(
            f"--ssh-cidr {ssh_cidr!r} is IPv6, but the instances get only IPv4 addresses; give an IPv4 range "
            "such as 203.0.113.7/32"
        )
    return str(network)


def check_request(count: int, choice: "InstanceChoice", ssh_cidr: Optional[str], min_count: Optional[int] = None) -> None:
    """Refuse a count, instance types, --min-count or --ssh-cidr that AWS would refuse or
    that cannot make one run. Raises InputError."""
    if count > MAX_INSTANCES:
        raise InputError(f"--count {count} is too many instances (at most {MAX_INSTANCES})")
    flag = "--instance-types" if len(choice.types) > 1 else "--instance-type"
    for instance_type in choice.types:
        if not INSTANCE_TYPE_PATTERN.match(instance_type):
            raise InputError(f"{flag} {instance_type!r} is not an instance type such as c7a.large")
    if len(set(choice.types)) < len(choice.types):
        raise InputError(f"--instance-types names a type twice: {','.join(choice.types)}")
    by_architecture: Dict[str, str] = {}
    for instance_type in choice.types:
        by_architecture.setdefault(architecture(instance_type), instance_type)
    if len(by_architecture) > 1:
        named = " and ".join(f"{arch} ({example})" for arch, example in sorted(by_architecture.items()))
        raise InputError(f"--instance-types mixes {named}: one run has one architecture, since its AMI follows it")
    if min_count is not None and min_count > count:
        raise InputError(f"--min-count {min_count} is more than the {count} instance(s) asked for")
    if ssh_cidr is not None:
        ssh_range(ssh_cidr)


def searched_regions(journals: List[RunJournal], region: Optional[str]) -> List[str]:
    """Where runs of ours may be: the regions EC2 journals name, plus `region` (--region or the inventory's)."""
    regions = {str(j.details["region"]) for j in journals if j.provider == "ec2" and j.details.get("region")}
    if region:
        regions.add(region)
    return sorted(regions)


#: Graviton families: a1, and families whose name ends in g, gd or gn after the generation
#: digit (c7g, t4g, m6gd, c6gn, im4gn, x2gd), or in gen (is4gen, Graviton2 as well).
ARM64_FAMILY = re.compile(r"a1|[a-z]+\d+(g|gd|gn|gen)")


def architecture(instance_type: str) -> str:
    """arm64 for the Graviton families (ARM64_FAMILY), amd64 for the rest."""
    family = instance_type.split(".")[0]
    return "arm64" if ARM64_FAMILY.fullmatch(family) else "amd64"


def dead_man_minutes(timeout: Optional[float]) -> int:
    """Minutes until an instance shuts itself down unless a live controller pushes it out."""
    if timeout is None:
        return UNBOUNDED_RUN_MINUTES
    return int(-(-timeout // 60)) + DEAD_MAN_MARGIN_MINUTES


def cloud_config(host_key: KeyPair, login_key: KeyPair, minutes: int) -> str:
    """User-data: our host key instead of generated ones, our login key, the dead-man's switch."""
    document = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public_line,
        },
        "ssh_authorized_keys": [login_key.public_line],
        "runcmd": [["shutdown", "-P", f"+{minutes}"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False)


def run_tags(run_id: str) -> List[TagTypeDef]:
    """The tags on every resource of a run: teardown finds them by these alone."""
    return [{"Key": TOOL_TAG, "Value": "cnd-fab"}, {"Key": RUN_TAG, "Value": run_id}]


def tag_time(seconds_from_now: float) -> str:
    """A time `seconds_from_now` in the format of the expires-at and alive-until tags."""
    return time.strftime(TAG_TIME_FORMAT, time.gmtime(time.time() + seconds_from_now))


def instance_settings(
    ami: str, key_name: str, group_id: str, user_data: str, run_id: str, expires: str, alive_until: str,
    unlimited_credits: bool,
) -> Dict[str, Any]:
    """What every instance of a run is launched with, in the shape RunInstances and a launch
    template share: tagged, terminating on shutdown, IMDSv2 only, a public IPv4 address."""
    tags: List[TagTypeDef] = run_tags(run_id) + [
        {"Key": EXPIRES_TAG, "Value": expires},
        {"Key": "Name", "Value": f"cnd-fab {run_id}"},
    ]
    # Only the instances carry alive-until: the keep-alive renews it there, and teardown reads
    # it there; on the volumes it would only go stale.
    instance_tags: List[TagTypeDef] = tags + [{"Key": ALIVE_TAG, "Value": alive_until}]
    settings: Dict[str, Any] = {
        "ImageId": ami,
        "KeyName": key_name,
        # A public address asked for, not left to the subnet's setting: the controller reaches
        # sshd through it. The group and subnet then belong to the interface (EC2 refuses
        # instance-level ones next to a network interface).
        "NetworkInterfaces": [
            {"DeviceIndex": 0, "Groups": [group_id], "AssociatePublicIpAddress": True, "DeleteOnTermination": True}
        ],
        "UserData": user_data,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": instance_tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if unlimited_credits:
        settings["CreditSpecification"] = {"CpuCredits": "unlimited"}
    return settings


@dataclass(frozen=True)
class LaunchBatch:
    """One launch call of a run: its place among the run's calls, its size and its ClientToken."""

    number: int
    count: int
    client_token: str


def batch_token(run_id: str, number: int) -> str:
    """The ClientToken of a run's launch call `number` (0, 1, …): the run id for the first, so a
    launch of one call is sent as it always was, then `<run id>-b<number>`. The same run asks
    with the same tokens, so a retried call cannot launch twice; no two calls share one."""
    if number == 0:
        return run_id[:MAX_CLIENT_TOKEN]
    suffix = f"-b{number}"
    return run_id[: MAX_CLIENT_TOKEN - len(suffix)] + suffix


def launch_batches(run_id: str, count: int) -> List[LaunchBatch]:
    """The calls a launch of `count` instances is made in: LAUNCH_BATCH instances each, the
    last one the rest."""
    return [
        LaunchBatch(number, min(LAUNCH_BATCH, count - start), batch_token(run_id, number))
        for number, start in enumerate(range(0, count, LAUNCH_BATCH))
    ]


def launch_request(
    instance_type: str, count: int, ami: str, key_name: str, group_id: str, subnet_id: str, user_data: str,
    run_id: str, expires: str, alive_until: str, client_token: Optional[str] = None,
) -> Dict[str, Any]:
    """The RunInstances parameters of one call: `count` instances at once (all or none), of one
    type, in one subnet; `client_token` by default the run id (see batch_token)."""
    request = instance_settings(ami, key_name, group_id, user_data, run_id, expires, alive_until, is_burstable(instance_type))
    request["NetworkInterfaces"][0]["SubnetId"] = subnet_id
    request.update(
        InstanceType=instance_type,
        MinCount=count,
        MaxCount=count,
        # The same run id gives the same token: a retried call cannot launch twice.
        ClientToken=client_token or batch_token(run_id, 0),
    )
    return request


def launch_template_data(
    types: Sequence[str], ami: str, key_name: str, group_id: str, user_data: str, run_id: str, expires: str,
    alive_until: str,
) -> Dict[str, Any]:
    """The run's launch template, for CreateFleet: every setting but the type and subnet, which
    the fleet's overrides give. Unlimited credits are asked for only when every type is
    burstable (a launch template's CreditSpecification is for T types); T3, T3a and T4g run
    unlimited by default anyway."""
    data = instance_settings(
        ami, key_name, group_id, user_data, run_id, expires, alive_until, all(is_burstable(t) for t in types)
    )
    # RunInstances takes user-data as text (boto3 encodes it); a launch template wants base64.
    data["UserData"] = base64.b64encode(user_data.encode()).decode()
    return data


def fleet_request(
    template_id: str, pools: Sequence[Pool], count: int, spot: bool, run_id: str, client_token: Optional[str] = None
) -> Dict[str, Any]:
    """The CreateFleet parameters of one call: an instant fleet of `count` instances from the
    run's launch template, in any of `pools` (type and subnet); `client_token` by default the
    run id (see batch_token). Spot goes where capacity is deepest, which AWS advises to make
    interruptions rarest; on-demand goes to the cheapest type."""
    request: Dict[str, Any] = {
        "Type": "instant",
        "ClientToken": client_token or batch_token(run_id, 0),
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template_id, "Version": "$Latest"},
                "Overrides": [{"InstanceType": pool.instance_type, "SubnetId": pool.subnet_id} for pool in pools],
            }
        ],
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": count,
            "DefaultTargetCapacityType": "spot" if spot else "on-demand",
        },
        "OnDemandOptions": {"AllocationStrategy": "lowest-price"},
        "TagSpecifications": [{"ResourceType": "fleet", "Tags": run_tags(run_id)}],
    }
    if spot:
        request["SpotOptions"] = {"AllocationStrategy": "capacity-optimized", "InstanceInterruptionBehavior": "terminate"}
    return request


def error_code(error: Exception) -> str:
    """AWS's error code (``DependencyViolation``, …), or the exception's class name."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(error).__name__))


def explain(error: Exception, action: str, region: str, instance_type: str = "") -> str:
    """One line for an AWS error, with what to do about the common ones."""
    code = error_code(error)
    if code == "InsufficientInstanceCapacity":
        return (
            f"ec2 ({region}): AWS has no spare capacity for {instance_type} right now; try another "
            "instance type or region, or fewer instances"
        )
    if code in ("VcpuLimitExceeded", "InstanceLimitExceeded"):
        return (
            f"ec2 ({region}): the account's vCPU quota is too low for this many {instance_type} "
            "instances; request more On-Demand vCPUs in Service Quotas (code L-1216C47A) or use fewer"
        )
    if code in ("UnauthorizedOperation", "AuthFailure"):
        return f"ec2 ({region}): {action} was refused: the AWS credentials lack permission ({code})"
    # botocore's messages may span lines (a waiter's reason): the caller wants exactly one.
    message = " ".join(str(error).split())
    return f"ec2 ({region}): {action} failed: {code}: {message}"
