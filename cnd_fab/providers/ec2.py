"""EC2 instances launched together for one run and always terminated at its end.

Example: ``fab search --provider ec2 --count 4 --instance-type c7a.large --timeout 600``.

Per run it creates, recording each in the journal *before* the call that creates it:
an imported ed25519 key pair, a security group open on 22/tcp to the caller's address only,
and N instances from one RunInstances call (MinCount = MaxCount = N, ClientToken = run id).
Every resource is tagged ``cnd-fab:run``; instances and volumes also carry
``cnd-fab:expires-at``. User-data installs a host key generated here, so the controller pins
it and never trusts on first use, and schedules ``shutdown -P +M``: the instances end
themselves (shutdown behaviour: terminate) if the controller dies. A live controller pushes
that shutdown further out every few minutes.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import yaml

from ..cost import CostEstimate, estimate, hourly_price, instance_cost
from ..errors import InputError, ProviderError
from ..journal import RunJournal
from ..ssh import KeyPair, SshHost, SshTarget, stop_all
from .base import Host, Provider, ProviderOptions

DEFAULT_INSTANCE_TYPE = "c7a.large"
UBUNTU_AMI_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
SSH_USER = "ubuntu"
DEFAULT_SSH_DEADLINE = 300.0
# With no --timeout, instances shut themselves down an hour after the last sign of life.
UNBOUNDED_RUN_MINUTES = 60
DEAD_MAN_MARGIN_MINUTES = 10
KEEPALIVE_SECONDS = 240.0
MAX_INSTANCES = 256
TOOL_TAG = "cnd-fab:tool"
RUN_TAG = "cnd-fab:run"
EXPIRES_TAG = "cnd-fab:expires-at"
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
INSTANCE_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")


@dataclass(frozen=True)
class SshEndpoint:
    """Where the controller reaches an instance's sshd, and as whom."""

    host: str
    port: int
    user: str


def public_address() -> str:
    """This machine's public IPv4 address, as AWS sees it (for the security group)."""
    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as answer:
            text = answer.read().decode().strip()
        return str(ipaddress.IPv4Address(text))
    except (OSError, ValueError) as error:
        raise ProviderError(
            f"cannot find this machine's public address ({error}); give it with --ssh-cidr"
        ) from None


def public_endpoint(instance: Dict[str, Any], user_data: str) -> SshEndpoint:
    address = instance.get("PublicIpAddress")
    if not address:
        raise ProviderError(f"{instance['InstanceId']} has no public IPv4 address (is the subnet public?)")
    return SshEndpoint(str(address), 22, SSH_USER)


# The two seams the end-to-end tests replace: they must never look up a public address
# nor connect to an address moto made up, so they map each instance to a local sshd.
address_lookup: Callable[[], str] = public_address
endpoint_resolver: Callable[[Dict[str, Any], str], SshEndpoint] = public_endpoint


def architecture(instance_type: str) -> str:
    """Graviton families carry a 'g' after the generation digit (c7g, t4g, c8gd, …)."""
    family = instance_type.split(".")[0]
    return "arm64" if re.match(r"^[a-z]+\d+g", family) else "amd64"


def is_burstable(instance_type: str) -> bool:
    return instance_type.split(".")[0].startswith("t")


def dead_man_minutes(timeout: Optional[float]) -> int:
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


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(error).__name__))


def explain(error: Exception, action: str, region: str, instance_type: str = "") -> str:
    """One line for an AWS error, with what to do about the common ones."""
    code = _error_code(error)
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
    return f"ec2 ({region}): {action} failed: {code}: {error}"


class Ec2Provider(Provider):
    """Launches, watches and always terminates EC2 instances; tears down leftovers by tag."""

    name = "ec2"
    count_meaning = "EC2 instances launched together in one request"
    instance_type: str

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        super().__init__(options)
        settings = self.options.inventory.ec2
        self.region_setting = self.options.region or settings.region
        self.instance_type = self.options.instance_type or settings.instance_type or DEFAULT_INSTANCE_TYPE
        self.ami = self.options.ami or settings.ami
        self.ami_parameter = settings.ami_parameter or UBUNTU_AMI_PARAMETER.format(arch=architecture(self.instance_type))
        self.ssh_cidr = self.options.ssh_cidr or settings.ssh_cidr
        self.ssh_deadline = settings.ssh_timeout or DEFAULT_SSH_DEADLINE
        self._clients: Dict[str, Any] = {}
        self.instance_ids: List[str] = []
        self.group_id: Optional[str] = None
        self.key_name: Optional[str] = None
        self.launched_at: Optional[float] = None
        self.terminated_at: Optional[float] = None
        self._keepalive_stop = threading.Event()

    def cores_per_host(self) -> int:
        from ..calibration import vcpus

        return vcpus(self.instance_type)

    def max_hosts(self) -> int:
        return MAX_INSTANCES

    # --- AWS clients -------------------------------------------------------------------
    @property
    def region(self) -> str:
        import boto3

        region = self.region_setting or boto3.session.Session().region_name
        if not region:
            raise InputError("no AWS region: give --region, ec2.region in the inventory, or AWS_DEFAULT_REGION")
        return str(region)

    def client(self, service: str, region: Optional[str] = None) -> Any:
        import boto3
        from botocore.config import Config

        region = region or self.region
        key = f"{service}:{region}"
        if key not in self._clients:
            # Standard retries: throttling and transient errors back off and try again.
            config = Config(
                retries={"mode": "standard", "max_attempts": 8},
                connect_timeout=10,
                read_timeout=60,
                user_agent_extra="cnd-fab",
            )
            session: Any = boto3.session.Session(region_name=region)
            self._clients[key] = session.client(service, config=config)
        return self._clients[key]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    # --- before launch -----------------------------------------------------------------
    def check(self, count: int) -> None:
        import boto3

        if count > MAX_INSTANCES:
            raise InputError(f"--count {count} is too many instances (at most {MAX_INSTANCES})")
        if not INSTANCE_TYPE_PATTERN.match(self.instance_type):
            raise InputError(f"--instance-type {self.instance_type!r} is not an instance type such as c7a.large")
        if self.ssh_cidr is not None:
            try:
                ipaddress.ip_network(self.ssh_cidr, strict=False)
            except ValueError:
                raise InputError(f"--ssh-cidr {self.ssh_cidr!r} is not an address range such as 203.0.113.7/32") from None
        self.region
        if boto3.session.Session().get_credentials() is None:
            raise InputError(
                "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID, or run `aws configure`"
            )

    def cost_estimate(self, count: int, timeout: Optional[float]) -> Optional[CostEstimate]:
        return estimate(self.instance_type, count, timeout)

    def latest_ami(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client("ssm").get_parameter(Name=self.ami_parameter)
        except (ClientError, BotoCoreError) as error:
            raise ProviderError(explain(error, f"looking up the AMI in SSM {self.ami_parameter}", self.region)) from None
        return str(answer["Parameter"]["Value"])

    def launch_request(self, count: int, ami: str, user_data: str, run_id: str, expires: str) -> Dict[str, Any]:
        tags = [
            {"Key": TOOL_TAG, "Value": "cnd-fab"},
            {"Key": RUN_TAG, "Value": run_id},
            {"Key": EXPIRES_TAG, "Value": expires},
            {"Key": "Name", "Value": f"cnd-fab {run_id}"},
        ]
        request: Dict[str, Any] = {
            "ImageId": ami,
            "InstanceType": self.instance_type,
            "MinCount": count,
            "MaxCount": count,
            "KeyName": self.key_name,
            "SecurityGroupIds": [self.group_id],
            "UserData": user_data,
            # The same run id gives the same token: a retried call cannot launch twice.
            "ClientToken": run_id[:64],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if is_burstable(self.instance_type):
            request["CreditSpecification"] = {"CpuCredits": "unlimited"}
        return request

    # --- launch ------------------------------------------------------------------------
    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        from botocore.exceptions import BotoCoreError, ClientError

        run_id = journal.run_id
        region = self.region
        journal.details.update(region=region, instance_type=self.instance_type)
        minutes = dead_man_minutes(self.options.timeout)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + minutes * 60))
        action = "preparing the launch"
        try:
            cidr = self.ssh_cidr or f"{address_lookup()}/32"
            ami = self.ami or self.latest_ami()
            login_key = KeyPair.generate(f"cnd-fab-{run_id}")
            host_key = KeyPair.generate(f"cnd-fab-{run_id}-host")
            run_tags = [{"Key": TOOL_TAG, "Value": "cnd-fab"}, {"Key": RUN_TAG, "Value": run_id}]

            self.key_name = f"cnd-fab-{run_id}"
            journal.record("ec2-key-pair", region=region, name=self.key_name)
            action = "importing the key pair"
            self.ec2.import_key_pair(
                KeyName=self.key_name,
                PublicKeyMaterial=login_key.public_line.encode(),
                TagSpecifications=[{"ResourceType": "key-pair", "Tags": run_tags}],
            )

            action = "finding the default VPC"
            vpcs = self.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise ProviderError(f"ec2 ({region}): this region has no default VPC to launch into")
            group_name = f"cnd-fab-{run_id}"
            journal.record("ec2-security-group", region=region, name=group_name)
            action = "creating the security group"
            self.group_id = self.ec2.create_security_group(
                GroupName=group_name,
                Description=f"cnd-fab run {run_id}: SSH from the controller only",
                VpcId=vpcs[0]["VpcId"],
                TagSpecifications=[{"ResourceType": "security-group", "Tags": run_tags}],
            )["GroupId"]
            journal.record("ec2-security-group", region=region, name=group_name, group_id=self.group_id)
            action = "opening 22/tcp to the controller"
            self.ec2.authorize_security_group_ingress(
                GroupId=self.group_id,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 22,
                        "ToPort": 22,
                        "IpRanges": [{"CidrIp": cidr, "Description": "cnd-fab controller"}],
                    }
                ],
            )

            user_data = cloud_config(host_key, login_key, minutes)
            journal.record("ec2-launch", region=region, client_token=run_id[:64], expires_at=expires)
            action = f"launching {count} × {self.instance_type}"
            response = self.ec2.run_instances(**self.launch_request(count, ami, user_data, run_id, expires))
            self.instance_ids = [instance["InstanceId"] for instance in response["Instances"]]
            self.launched_at = time.time()
            journal.record("ec2-instances", region=region, ids=self.instance_ids)

            action = "waiting for the instances to run"
            self.ec2.get_waiter("instance_running").wait(
                InstanceIds=self.instance_ids, WaiterConfig={"Delay": 5, "MaxAttempts": 60}
            )
            described = self.ec2.describe_instances(InstanceIds=self.instance_ids)
        except (ClientError, BotoCoreError) as error:
            raise ProviderError(explain(error, action, region, self.instance_type)) from None
        instances = {i["InstanceId"]: i for r in described["Reservations"] for i in r["Instances"]}
        hosts: List[Host] = []
        for index, instance_id in enumerate(self.instance_ids):
            endpoint = endpoint_resolver(instances[instance_id], user_data)
            target = SshTarget(
                name=instance_id,
                host=endpoint.host,
                port=endpoint.port,
                user=endpoint.user,
                login_key=login_key.key,
                pinned_host_keys=[host_key.key],
                connect_deadline=self.ssh_deadline,
                retry_auth=True,
                warn=self.options.warn,
            )
            hosts.append(SshHost(target, run_id, index + 1, journal))
        threading.Thread(target=self._keep_alive, args=(hosts,), daemon=True).start()
        return hosts

    def _keep_alive(self, hosts: Sequence[Host]) -> None:
        """Push every instance's scheduled shutdown further out while this controller lives."""
        while not self._keepalive_stop.wait(KEEPALIVE_SECONDS):
            minutes = dead_man_minutes(self.options.timeout)
            for host in hosts:
                if isinstance(host, SshHost) and host.connection is not None:
                    try:
                        host.run_command(f"sudo -n shutdown -P +{int(minutes)}", timeout=15)
                    except Exception:  # a lost host is handled by the fleet; this is best effort
                        continue

    # --- the end -----------------------------------------------------------------------
    def release(self, hosts: List[Host], journal: RunJournal) -> None:
        self._keepalive_stop.set()
        stop_all(hosts)
        lines = self.destroy(journal.run_id, self.region, extra_instances=self.instance_ids)
        for line in lines:
            if line.startswith(("could not", "cannot")):
                raise ProviderError(f"{line}; run `fab teardown --run {journal.run_id}` to retry")
        self.terminated_at = time.time()
        cost = self.incurred_cost()
        if cost is not None:
            journal.details["cost_usd"] = round(cost, 6)

    def incurred_cost(self) -> Optional[float]:
        hourly = hourly_price(self.instance_type)
        if hourly is None or self.launched_at is None:
            return None
        seconds = (self.terminated_at or time.time()) - self.launched_at
        return instance_cost(hourly, seconds) * len(self.instance_ids)

    def teardown(self, journal: RunJournal, dry_run: bool = False) -> List[str]:
        regions = {str(r["region"]) for r in journal.resources if r.get("region")}
        if journal.details.get("region"):
            regions.add(str(journal.details["region"]))
        if not regions:
            regions.add(self.region)
        known = [i for r in journal.resources if r.get("kind") == "ec2-instances" for i in r.get("ids", [])]
        lines: List[str] = []
        for region in sorted(regions):
            lines += self.destroy(journal.run_id, region, extra_instances=known, dry_run=dry_run)
        return lines

    def destroy(
        self, run_id: str, region: str, extra_instances: Sequence[str] = (), dry_run: bool = False
    ) -> List[str]:
        """Terminate the run's instances, then delete its security group and key pair."""
        from botocore.exceptions import BotoCoreError, ClientError

        ec2 = self.client("ec2", region)
        lines: List[str] = []
        verb = "would" if dry_run else "did"
        try:
            found = ec2.describe_instances(
                Filters=[
                    {"Name": f"tag:{RUN_TAG}", "Values": [run_id]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )
            live = {i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]}
            if extra_instances:
                live |= self._still_live(ec2, extra_instances)
            if live:
                ids = sorted(live)
                lines.append(f"{'would terminate' if dry_run else 'terminated'} {len(ids)} instance(s) of {run_id} in {region}: {', '.join(ids)}")
                if not dry_run:
                    ec2.terminate_instances(InstanceIds=ids)
                    ec2.get_waiter("instance_terminated").wait(
                        InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 120}
                    )
            groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"cnd-fab-{run_id}"]}])
            for group in groups["SecurityGroups"]:
                lines.append(f"{'would delete' if dry_run else 'deleted'} security group {group['GroupId']} ({run_id})")
                if not dry_run:
                    self._delete_group(ec2, group["GroupId"])
            keys = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [f"cnd-fab-{run_id}"]}])
            for key in keys["KeyPairs"]:
                lines.append(f"{'would delete' if dry_run else 'deleted'} key pair {key['KeyName']} ({run_id})")
                if not dry_run:
                    ec2.delete_key_pair(KeyName=key["KeyName"])
        except (ClientError, BotoCoreError) as error:
            lines.append(f"could not finish the teardown of {run_id} in {region} ({verb} not complete): {explain(error, 'teardown', region)}")
        return lines

    @staticmethod
    def _still_live(ec2: Any, ids: Sequence[str]) -> Set[str]:
        from botocore.exceptions import ClientError

        live = set()
        for instance_id in ids:
            try:
                found = ec2.describe_instances(InstanceIds=[instance_id])
            except ClientError as error:
                if _error_code(error).startswith("InvalidInstanceID"):
                    continue
                raise
            for reservation in found["Reservations"]:
                for instance in reservation["Instances"]:
                    if instance["State"]["Name"] in LIVE_STATES:
                        live.add(instance["InstanceId"])
        return live

    @staticmethod
    def _delete_group(ec2: Any, group_id: str, within: float = 300.0) -> None:
        """A group stays 'in use' for a while after its instances terminate: retry that."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + within
        delay = 2.0
        while True:
            try:
                ec2.delete_security_group(GroupId=group_id)
                return
            except ClientError as error:
                code = _error_code(error)
                if code == "InvalidGroup.NotFound":
                    return
                if code != "DependencyViolation" or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(15.0, delay * 1.5)

    def labelled_runs(self, regions: Sequence[str], expired_only: bool = False) -> Dict[str, str]:
        """Run id -> region of every cnd-fab instance still alive in these regions."""
        runs: Dict[str, str] = {}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for region in regions:
            found = self.client("ec2", region).describe_instances(
                Filters=[
                    {"Name": f"tag:{TOOL_TAG}", "Values": ["cnd-fab"]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )
            for reservation in found["Reservations"]:
                for instance in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    if expired_only and tags.get(EXPIRES_TAG, "9999") > now:
                        continue
                    if RUN_TAG in tags:
                        runs[tags[RUN_TAG]] = region
        return runs
