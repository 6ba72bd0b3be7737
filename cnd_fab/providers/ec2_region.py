"""The AWS calls a run makes in one region: create its key pair, group and instances, find
instances by tag, and remove a run's resources with one Released result for each."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set, cast

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ProviderError
from .base import Released
from .ec2_settings import (
    EXPIRES_TAG,
    LIVE_STATES,
    RUN_TAG,
    TOOL_TAG,
    error_code,
    explain,
    group_resource,
    instance_resource,
    resource_name,
    run_tags,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import FilterTypeDef, TagSpecificationTypeDef

AWS_ERRORS = (ClientError, BotoCoreError)
#: How long a security group may stay "in use" after its instances have terminated.
GROUP_RELEASE_SECONDS = 300.0


@dataclass(frozen=True)
class TaggedInstance:
    """A live instance of ours, as describe_instances and its tags tell it."""

    instance_id: str
    state: str
    instance_type: str
    run_id: str
    #: The expires-at tag (ISO 8601, UTC); "" when the instance has none.
    expires_at: str

    def expired(self, now: str) -> bool:
        """True when the expires-at tag has passed; `now` is in the tag's format."""
        return bool(self.expires_at) and self.expires_at <= now


class Ec2Region:
    """One region's EC2 client, and the calls a run makes there.

    Example: ``Ec2Region(client, "eu-west-2").remove("20260101-abcd", known=["i-0abc"])``.
    The launch calls raise botocore's errors, for the provider to explain with the step it
    was at; the removal calls never raise: each resource comes back done, or not and why."""

    def __init__(self, client: EC2Client, region: str) -> None:
        self.client = client
        self.region = region

    # --- launch ------------------------------------------------------------------------
    def _tags(self, resource_type: ResourceTypeType, run_id: str) -> List[TagSpecificationTypeDef]:
        return [{"ResourceType": resource_type, "Tags": run_tags(run_id)}]

    def import_key_pair(self, run_id: str, public_line: str) -> None:
        """Import the run's login key as the key pair named after the run."""
        self.client.import_key_pair(
            KeyName=resource_name(run_id),
            PublicKeyMaterial=public_line.encode(),
            TagSpecifications=self._tags("key-pair", run_id),
        )

    def default_vpc(self) -> str:
        """The default VPC's id; ProviderError when the region has none."""
        vpcs = self.client.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise ProviderError(f"ec2 ({self.region}): this region has no default VPC to launch into")
        return vpcs[0]["VpcId"]

    def create_group(self, run_id: str, vpc_id: str) -> str:
        """Create the run's security group, closed until open_ssh; its id."""
        return self.client.create_security_group(
            GroupName=resource_name(run_id),
            Description=f"cnd-fab run {run_id}: SSH from the controller only",
            VpcId=vpc_id,
            TagSpecifications=self._tags("security-group", run_id),
        )["GroupId"]

    def open_ssh(self, group_id: str, cidr: str) -> None:
        """Let the controller's address range, and no other, reach 22/tcp."""
        self.client.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": cidr, "Description": "cnd-fab controller"}],
                }
            ],
        )

    def run_instances(self, request: Dict[str, Any]) -> List[str]:
        """One RunInstances call; the new instances' ids."""
        return [instance["InstanceId"] for instance in self.client.run_instances(**request)["Instances"]]

    def wait_running(self, ids: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        """Wait until every instance runs; instance id -> its description, in the order of `ids`."""
        self.client.get_waiter("instance_running").wait(
            InstanceIds=list(ids), WaiterConfig={"Delay": 5, "MaxAttempts": 60}
        )
        described = self.client.describe_instances(InstanceIds=list(ids))
        found = {i["InstanceId"]: cast(Dict[str, Any], i) for r in described["Reservations"] for i in r["Instances"]}
        return {instance_id: found[instance_id] for instance_id in ids}

    # --- finding -----------------------------------------------------------------------
    def _instances(self, filters: List[FilterTypeDef]) -> List[Dict[str, Any]]:
        found: List[Dict[str, Any]] = []
        for page in self.client.get_paginator("describe_instances").paginate(Filters=filters):
            found += [cast(Dict[str, Any], i) for r in page["Reservations"] for i in r["Instances"]]
        return found

    def tagged_instances(self, run_id: Optional[str] = None) -> List[TaggedInstance]:
        """Our live instances here: every run's, or one run's. Raises botocore's errors."""
        tag: FilterTypeDef = (
            {"Name": f"tag:{RUN_TAG}", "Values": [run_id]} if run_id else {"Name": f"tag:{TOOL_TAG}", "Values": ["cnd-fab"]}
        )
        found: List[TaggedInstance] = []
        for instance in self._instances([tag, {"Name": "instance-state-name", "Values": LIVE_STATES}]):
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            if RUN_TAG in tags:
                found.append(
                    TaggedInstance(
                        instance["InstanceId"], instance["State"]["Name"], instance.get("InstanceType", "?"),
                        tags[RUN_TAG], tags.get(EXPIRES_TAG, ""),
                    )
                )
        return found

    def states(self, ids: Sequence[str]) -> Dict[str, str]:
        """Instance id -> state, for those of `ids` AWS still knows (a filter: unknown ids are no error)."""
        if not ids:
            return {}
        found = self._instances([{"Name": "instance-id", "Values": list(ids)}])
        return {i["InstanceId"]: i["State"]["Name"] for i in found}

    # --- removal -----------------------------------------------------------------------
    def remove(self, run_id: str, known: Sequence[str] = (), dry_run: bool = False) -> List[Released]:
        """Terminate the run's instances (tagged, or `known` from its journal), then delete its
        security group and key pair. A dry run only looks."""
        name = resource_name(run_id)
        try:
            live: Set[str] = {i.instance_id for i in self.tagged_instances(run_id)}
            live |= {i for i, state in self.states(known).items() if state in LIVE_STATES}
            groups = self.client.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])
            keys = self.client.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}])
        except AWS_ERRORS as error:
            why = explain(error, "looking for the run's resources", self.region)
            return [Released(f"ec2 resources of {run_id} in {self.region}", False, why)]
        group_ids = [group["GroupId"] for group in groups["SecurityGroups"]]
        key_names = [key.get("KeyName", name) for key in keys["KeyPairs"]]
        if dry_run:
            return (
                [Released(instance_resource(i), True, planned=True) for i in sorted(live)]
                + [Released(group_resource(g, name), True, planned=True) for g in group_ids]
                + [Released(f"key pair {k}", True, planned=True) for k in key_names]
            )
        results = self.terminate(sorted(live))
        # A group cannot go while an instance still uses it: trying would only wait out the retries.
        blocked = any(result.failed for result in results)
        for group_id in group_ids:
            if blocked:
                why = "not tried: the run's instances are not confirmed terminated"
                results.append(Released(group_resource(group_id, name), False, why))
            else:
                results.append(self.delete_group(group_id, name))
        return results + [self.delete_key_pair(key) for key in key_names]

    def terminate(self, ids: Sequence[str]) -> List[Released]:
        """Terminate the instances and wait; done for each one confirmed terminated."""
        if not ids:
            return []
        try:
            self.client.terminate_instances(InstanceIds=list(ids))
        except AWS_ERRORS as error:
            why = explain(error, "terminating the instances", self.region)
            return [Released(instance_resource(i), False, why) for i in ids]
        try:
            self.client.get_waiter("instance_terminated").wait(
                InstanceIds=list(ids), WaiterConfig={"Delay": 5, "MaxAttempts": 120}
            )
            return [Released(instance_resource(i), True, action="terminated") for i in ids]
        except AWS_ERRORS as error:
            why = explain(error, "waiting for the instances to terminate", self.region)
        # The waiter gave up on at least one: ask which are really gone.
        try:
            states = self.states(ids)
        except AWS_ERRORS:
            states = {i: "in an unknown state" for i in ids}
        results = []
        for instance_id in ids:
            # AWS forgets a terminated instance after a while: one it does not know is gone.
            state = states.get(instance_id, "terminated")
            done = state == "terminated"
            results.append(Released(instance_resource(instance_id), done, "" if done else f"still {state}: {why}", action="terminated"))
        return results

    def delete_group(self, group_id: str, name: str, within: float = GROUP_RELEASE_SECONDS) -> Released:
        """Delete a security group, retrying while AWS still counts it in use (it does for a while
        after its instances have terminated)."""
        resource = group_resource(group_id, name)
        deadline = time.monotonic() + within
        delay = 2.0
        while True:
            try:
                self.client.delete_security_group(GroupId=group_id)
                return Released(resource, True, action="deleted")
            except AWS_ERRORS as error:
                code = error_code(error)
                if code == "InvalidGroup.NotFound":
                    return Released(resource, True, action="deleted")
                if code != "DependencyViolation" or time.monotonic() + delay > deadline:
                    return Released(resource, False, explain(error, "deleting the security group", self.region))
            time.sleep(delay)
            delay = min(15.0, delay * 1.5)

    def delete_key_pair(self, key_name: str) -> Released:
        """Delete a key pair (deleting one that is gone is no error at AWS)."""
        try:
            self.client.delete_key_pair(KeyName=key_name)
        except AWS_ERRORS as error:
            return Released(f"key pair {key_name}", False, explain(error, "deleting the key pair", self.region))
        return Released(f"key pair {key_name}", True, action="deleted")
