"""One run's launch in one region, in the order teardown relies on: each resource is recorded
in the journal before the call that creates it, so a controller that dies half-way leaves a
journal naming everything that may exist."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ProviderError
from ..journal import RunJournal
from ..ssh import KeyPair, SshHost, SshTarget
from .base import Host
from .ec2_region import Ec2Region, FleetAnswer
from .ec2_settings import (
    ALIVE_MINUTES,
    InstanceChoice,
    LaunchBatch,
    Pool,
    cloud_config,
    explain,
    fleet_request,
    launch_batches,
    launch_request,
    launch_template_data,
    resource_name,
    tag_time,
)

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


@dataclass(frozen=True)
class LaunchedInstance:
    """Where one instance runs, and so what it costs."""

    instance_type: str
    zone: str
    spot: bool


class RunLaunch:
    """Creates a run's key pair, security group and instances, and waits until they run.

    Example: ``RunLaunch(Ec2Region(client, "eu-west-2"), journal).create(4, InstanceChoice(("c7a.large",)), ami, cidr, 20)``.
    A launch of more than LAUNCH_BATCH instances takes several RunInstances or CreateFleet
    calls, each recorded in the journal before it is made, with a ClientToken of its own (see
    launch_batches). `instance_ids` and `launched_at` are set as soon as the first call
    answers and grow with each later one, even if a call or the wait then fails: release
    needs them either way."""

    def __init__(self, aws: Ec2Region, journal: RunJournal) -> None:
        self.aws = aws
        self.journal = journal
        self.instance_ids: List[str] = []
        self.launched_at: Optional[float] = None
        #: Instance id -> its type, zone and market, once it runs: what incurred_cost prices.
        self.placed: Dict[str, LaunchedInstance] = {}
        #: Why a fleet launched fewer than asked (but at least the minimum), for the run to show.
        self.shortfall: Optional[str] = None

    def create(
        self, count: int, choice: InstanceChoice, ami: str, cidr: str, minutes: int, min_count: Optional[int] = None,
        pools: Optional[Sequence[Pool]] = None,
    ) -> Launched:
        """Launch `count` instances (at least `min_count`, by default all) that shut themselves
        down `minutes` from now. `pools`: where a fleet may launch, if already looked up.
        Raises ProviderError, one line naming the step that failed."""
        run_id, region, journal, aws = self.journal.run_id, self.aws.region, self.journal, self.aws
        name = resource_name(run_id)
        expires = tag_time(minutes * 60)
        alive_until = tag_time(ALIVE_MINUTES * 60)
        login_key = KeyPair.generate(name)
        host_key = KeyPair.generate(f"{name}-host")
        user_data = cloud_config(host_key, login_key, minutes)
        least = count if min_count is None else min_count
        what = f"{count} × {choice.label}"
        action = "finding the default VPC"
        try:
            # Where to launch comes first: nothing is made in a region that cannot take the types.
            vpc_id = aws.default_vpc()
            action = f"finding the zones that offer {', '.join(choice.types)}"
            if choice.through_fleet:
                pools = list(pools) if pools else aws.offered_pools(vpc_id, choice.types)
            else:
                subnet_id = aws.launch_subnet(vpc_id, choice.types[0])

            action = "importing the key pair"
            journal.record("ec2-key-pair", region=region, name=name)
            aws.import_key_pair(run_id, login_key.public_line)

            journal.record("ec2-security-group", region=region, name=name)
            action = "creating the security group"
            group_id = aws.create_group(run_id, vpc_id)
            journal.record("ec2-security-group", region=region, name=name, group_id=group_id)
            action = "opening 22/tcp to the controller"
            aws.open_ssh(group_id, cidr)

            batches = launch_batches(run_id, count)
            if choice.through_fleet:
                assert pools is not None
                journal.record("ec2-launch-template", region=region, name=name)
                action = "creating the launch template"
                data = launch_template_data(choice.types, ami, name, group_id, user_data, run_id, expires, alive_until)
                template_id = aws.create_launch_template(run_id, data)
                journal.record("ec2-launch-template", region=region, name=name, template_id=template_id)
                answers: List[FleetAnswer] = []
                for batch in batches:
                    journal.record(
                        "ec2-launch", region=region, client_token=batch.client_token, expires_at=expires, fleet=True,
                        count=batch.count, batch=batch.number,
                    )
                    action = f"launching {what} through an EC2 Fleet{_call_of(batch, batches)}"
                    request = fleet_request(template_id, pools, batch.count, choice.spot, run_id, batch.client_token)
                    answers.append(aws.create_fleet(request))
                    self._launched(answers[-1].instance_ids)
                    # --min-count is over the whole launch: once the calls still to come cannot
                    # make it up, none is made, since everything would be released anyway.
                    if len(self.instance_ids) + sum(b.count for b in batches[batch.number + 1 :]) < least:
                        break
                answer = FleetAnswer.joined(answers)
                if len(answer.instance_ids) < least:
                    raise ProviderError(
                        f"ec2 ({region}): only {len(answer.instance_ids)} of {what} launched, fewer than the "
                        f"{least} the run needs ({answer.why_short()}); everything is being released"
                    )
                if len(answer.instance_ids) < count:
                    self.shortfall = (
                        f"ec2 ({region}): {len(answer.instance_ids)} of {what} launched, at least the {least} the run "
                        f"needs, so it goes on with them ({answer.why_short()})"
                    )
            else:
                for batch in batches:
                    journal.record(
                        "ec2-launch", region=region, client_token=batch.client_token, expires_at=expires,
                        count=batch.count, batch=batch.number,
                    )
                    action = f"launching {what}{_call_of(batch, batches)}"
                    request = launch_request(
                        choice.types[0], batch.count, ami, name, group_id, subnet_id, user_data, run_id, expires,
                        alive_until, batch.client_token,
                    )
                    self._launched(aws.run_instances(request))

            action = "waiting for the instances to run"
            instances = aws.wait_running(self.instance_ids)
        except (ClientError, BotoCoreError) as error:
            raise ProviderError(explain(error, action, region, ", ".join(choice.types))) from None
        self.placed = {
            instance_id: LaunchedInstance(
                str(i.get("InstanceType", choice.types[0])),
                str(i.get("Placement", {}).get("AvailabilityZone", "")),
                i.get("InstanceLifecycle") == "spot",
            )
            for instance_id, i in instances.items()
        }
        return Launched(instances, user_data, login_key, host_key)

    def _launched(self, instance_ids: List[str]) -> None:
        """One launch call answered: its instances join the run's, and the journal has them."""
        self.instance_ids = self.instance_ids + instance_ids
        now = time.time()
        if self.launched_at is None:
            self.launched_at = now  # the run's cost counts from its first instances
        # When they were launched tells teardown how long EC2 may not show them yet.
        self.journal.record("ec2-instances", region=self.aws.region, ids=instance_ids, launched_at=now)


def _call_of(batch: LaunchBatch, batches: Sequence[LaunchBatch]) -> str:
    """' (call 2 of 3: 100 instances)' in an error line, when the launch takes several calls."""
    if len(batches) == 1:
        return ""
    return f" (call {batch.number + 1} of {len(batches)}: {batch.count} instances)"
