"""What an EC2 run is made of, without calling AWS: names, tags, the regions its journal
names, the RunInstances request, the user-data with its dead-man's switch, and one line for
each AWS error."""

from __future__ import annotations

import ipaddress
import re
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

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


def resource_name(run_id: str) -> str:
    """The name of a run's key pair and security group: found by it at teardown."""
    return f"cnd-fab-{run_id}"


def instance_resource(instance_id: str) -> str:
    """How a Released names an instance."""
    return f"instance {instance_id}"


def group_resource(group_id: str, name: str) -> str:
    """How a Released names a security group: its id, and the name that tells its run."""
    return f"security group {group_id} ({name})"


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


def check_request(count: int, instance_type: str, ssh_cidr: Optional[str]) -> None:
    """Refuse a count, instance type or --ssh-cidr that AWS would refuse later. Raises InputError."""
    if count > MAX_INSTANCES:
        raise InputError(f"--count {count} is too many instances (at most {MAX_INSTANCES})")
    if not INSTANCE_TYPE_PATTERN.match(instance_type):
        raise InputError(f"--instance-type {instance_type!r} is not an instance type such as c7a.large")
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


def launch_request(
    instance_type: str, count: int, ami: str, key_name: str, group_id: str, subnet_id: str, user_data: str,
    run_id: str, expires: str, alive_until: str,
) -> Dict[str, Any]:
    """The RunInstances parameters: all N at once, tagged, terminating on shutdown."""
    tags: List[TagTypeDef] = run_tags(run_id) + [
        {"Key": EXPIRES_TAG, "Value": expires},
        {"Key": "Name", "Value": f"cnd-fab {run_id}"},
    ]
    # Only the instances carry alive-until: the keep-alive renews it there, and teardown reads
    # it there; on the volumes it would only go stale.
    instance_tags: List[TagTypeDef] = tags + [{"Key": ALIVE_TAG, "Value": alive_until}]
    request: Dict[str, Any] = {
        "ImageId": ami,
        "InstanceType": instance_type,
        "MinCount": count,
        "MaxCount": count,
        "KeyName": key_name,
        # A public address asked for, not left to the subnet's setting: the controller reaches
        # sshd through it. The group and subnet then belong to the interface (EC2 refuses
        # instance-level ones next to a network interface).
        "NetworkInterfaces": [
            {
                "DeviceIndex": 0,
                "SubnetId": subnet_id,
                "Groups": [group_id],
                "AssociatePublicIpAddress": True,
                "DeleteOnTermination": True,
            }
        ],
        "UserData": user_data,
        # The same run id gives the same token: a retried call cannot launch twice.
        "ClientToken": run_id[:64],
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": instance_tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if is_burstable(instance_type):
        request["CreditSpecification"] = {"CpuCredits": "unlimited"}
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
