"""One run's launch in one region, in the order teardown relies on: each resource is recorded
in the journal before the call that creates it, so a controller that dies half-way leaves a
journal naming everything that may exist."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ProviderError
from ..journal import RunJournal
from ..ssh import KeyPair, SshHost, SshTarget
from .base import Host
from .ec2_region import Ec2Region
from .ec2_settings import ALIVE_MINUTES, cloud_config, explain, launch_request, resource_name, tag_time

if TYPE_CHECKING:
    from .ec2 import SshEndpoint


@dataclass(frozen=True)
class Launched:
    """What the controller needs to reach the running instances."""

    #: Instance id -> its description from describe_instances.
    instances: Dict[str, Dict[str, Any]]
    user_data: str
    login_key: KeyPair
    host_key: KeyPair

    def ssh_hosts(
        self, journal: RunJournal, endpoint: Callable[[Dict[str, Any], str], SshEndpoint], deadline: float,
        warn: Callable[[str], None],
    ) -> List[Host]:
        """One SSH host per instance, in launch order, pinning the host key from the user-data."""
        hosts: List[Host] = []
        for index, (instance_id, instance) in enumerate(self.instances.items()):
            where = endpoint(instance, self.user_data)
            target = SshTarget(
                name=instance_id,
                host=where.host,
                port=where.port,
                user=where.user,
                login_key=self.login_key.key,
                pinned_host_keys=[self.host_key.key],
                connect_deadline=deadline,
                retry_auth=True,
                # sshd may answer with its own generated key before cloud-init installs ours.
                retry_host_key=True,
                warn=warn,
            )
            hosts.append(SshHost(target, journal.run_id, index + 1, journal))
        return hosts


class RunLaunch:
    """Creates a run's key pair, security group and instances, and waits until they run.

    Example: ``RunLaunch(Ec2Region(client, "eu-west-2"), journal).create(4, "c7a.large", ami, cidr, 20)``.
    `instance_ids` and `launched_at` are set as soon as RunInstances answers, even if the wait
    then fails: release needs them either way."""

    def __init__(self, aws: Ec2Region, journal: RunJournal) -> None:
        self.aws = aws
        self.journal = journal
        self.instance_ids: List[str] = []
        self.launched_at: Optional[float] = None

    def create(self, count: int, instance_type: str, ami: str, cidr: str, minutes: int) -> Launched:
        """Launch `count` instances that shut themselves down `minutes` from now. Raises
        ProviderError, one line naming the step that failed."""
        run_id, region, journal, aws = self.journal.run_id, self.aws.region, self.journal, self.aws
        name = resource_name(run_id)
        expires = tag_time(minutes * 60)
        alive_until = tag_time(ALIVE_MINUTES * 60)
        login_key = KeyPair.generate(name)
        host_key = KeyPair.generate(f"{name}-host")
        user_data = cloud_config(host_key, login_key, minutes)
        action = "finding the default VPC"
        try:
            # Where to launch comes first: nothing is made in a region that cannot take the type.
            vpc_id = aws.default_vpc()
            action = f"finding a zone that offers {instance_type}"
            subnet_id = aws.launch_subnet(vpc_id, instance_type)

            action = "importing the key pair"
            journal.record("ec2-key-pair", region=region, name=name)
            aws.import_key_pair(run_id, login_key.public_line)

            journal.record("ec2-security-group", region=region, name=name)
            action = "creating the security group"
            group_id = aws.create_group(run_id, vpc_id)
            journal.record("ec2-security-group", region=region, name=name, group_id=group_id)
            action = "opening 22/tcp to the controller"
            aws.open_ssh(group_id, cidr)

            journal.record("ec2-launch", region=region, client_token=run_id[:64], expires_at=expires)
            action = f"launching {count} × {instance_type}"
            request = launch_request(
                instance_type, count, ami, name, group_id, subnet_id, user_data, run_id, expires, alive_until
            )
            self.instance_ids = aws.run_instances(request)
            self.launched_at = time.time()
            # When they were launched tells teardown how long EC2 may not show them yet.
            journal.record("ec2-instances", region=region, ids=self.instance_ids, launched_at=self.launched_at)

            action = "waiting for the instances to run"
            instances = aws.wait_running(self.instance_ids)
        except (ClientError, BotoCoreError) as error:
            raise ProviderError(explain(error, action, region, instance_type)) from None
        return Launched(instances, user_data, login_key, host_key)
