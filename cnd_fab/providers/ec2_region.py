"""The AWS calls a run makes in one region: create its key pair, group and instances, find
instances by tag, and remove a run's resources with one Released result for each.

EC2's API is eventually consistent: for a while after a resource is made, other calls may
not see it. So a resource not shown yet is never taken for a missing one here. The calls that
name one made a moment ago retry its NotFound code (`until_visible`; botocore's own retries do
not), and the waits poll by filter, in batches, taking an instance EC2 does not show for one
not shown *yet* while it is fresh (see FRESH_SECONDS).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Collection, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ProviderError
from .base import Released
from .ec2_settings import (
    ALIVE_TAG,
    EXPIRES_TAG,
    LIVE_STATES,
    RUN_TAG,
    Pool,
    TOOL_TAG,
    error_code,
    explain,
    group_resource,
    instance_resource,
    resource_name,
    template_resource,
    run_tags,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import FilterTypeDef, TagSpecificationTypeDef, TagTypeDef

T = TypeVar("T")

AWS_ERRORS = (ClientError, BotoCoreError)
#: How long a security group may stay "in use" after its instances have terminated.
GROUP_RELEASE_SECONDS = 300.0
#: The codes EC2 answers, for a while, about a group, instance or key pair made a moment ago.
GROUP_NOT_FOUND = "InvalidGroup.NotFound"
INSTANCE_NOT_FOUND = "InvalidInstanceID.NotFound"
KEY_PAIR_NOT_FOUND = "InvalidKeyPair.NotFound"
#: What an instant fleet answers while the run's group, key pair or template is not shown yet.
FLEET_NOT_VISIBLE = frozenset(
    {GROUP_NOT_FOUND, KEY_PAIR_NOT_FOUND, "InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException"}
)
#: How long a call that names a new resource retries while EC2 does not show it yet.
VISIBLE_WITHIN = 120.0
#: Instance ids per Describe, Terminate or CreateTags call: well under each call's limit.
BATCH_SIZE = 100
RUNNING_WITHIN = 300.0
TERMINATED_WITHIN = 600.0
#: States from which an instance never comes to run.
NEVER_RUNS = ("shutting-down", "terminated", "stopping", "stopped")


def batches(ids: Sequence[str], size: int = BATCH_SIZE) -> Iterator[List[str]]:
    """`ids` in slices of at most `size`, in order."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def attempts(within: float, first_delay: float, longest_delay: float, growth: float = 1.5, jitter: bool = False) -> Iterator[int]:
    """Attempt numbers (0, 1, …) for a loop that tries again after a growing pause; it ends,
    instead of pausing, when the next attempt would start past `within` seconds from now.

    Example: ``for _ in attempts(300, 1.0, 10.0): …; if done: return``; after the loop, time is up."""
    deadline = time.monotonic() + within
    delay = first_delay
    number = 0
    while True:
        yield number
        if time.monotonic() + delay > deadline:
            return
        # Jitter spreads the retries of many callers that failed together.
        time.sleep(delay * random.uniform(0.5, 1.0) if jitter else delay)
        delay = min(longest_delay, delay * growth)
        number += 1


def until_visible(call: Callable[[], T], codes: Collection[str], within: float = VISIBLE_WITHIN) -> T:
    """call(), retried with jittered backoff while EC2 answers one of `codes` (it does not show a
    resource made a moment ago yet), for at most `within` seconds; then that error is raised."""
    last: Optional[ClientError] = None
    for _ in attempts(within, 0.5, 8.0, growth=2.0, jitter=True):
        try:
            return call()
        except ClientError as error:
            if error_code(error) not in codes:
                raise
            last = error
    assert last is not None
    raise last


@dataclass(frozen=True)
class TaggedInstance:
    """A live instance of ours, as describe_instances and its tags tell it."""

    instance_id: str
    state: str
    instance_type: str
    run_id: str
    #: The expires-at tag (ISO 8601, UTC); "" when the instance has none.
    expires_at: str
    #: The alive-until tag, in the same format; "" on instances of an older cnd-fab.
    alive_until: str = ""

    def expired(self, now: str) -> bool:
        """True when no live controller vouches for it any more: its alive-until has passed, or,
        lacking one, its expires-at; `now` is in the tags' format."""
        deadline = self.alive_until or self.expires_at
        return bool(deadline) and deadline <= now


@dataclass(frozen=True)
class FleetError:
    """One of an instant fleet's reasons for launching fewer than asked."""

    code: str
    message: str
    instance_type: str = ""


@dataclass(frozen=True)
class FleetAnswer:
    """What an instant CreateFleet launched, and why not more."""

    instance_ids: List[str]
    errors: List[FleetError]

    @classmethod
    def read(cls, answer: Any) -> "FleetAnswer":
        """From CreateFleet's answer: the ids of every group of instances, every error."""
        ids = [str(i) for group in answer.get("Instances", []) for i in group.get("InstanceIds", [])]
        errors = [
            FleetError(
                str(e.get("ErrorCode", "?")),
                " ".join(str(e.get("ErrorMessage", "")).split()),
                str(e.get("LaunchTemplateAndOverrides", {}).get("Overrides", {}).get("InstanceType", "")),
            )
            for e in answer.get("Errors", [])
        ]
        return cls(ids, errors)

    @classmethod
    def joined(cls, answers: Sequence["FleetAnswer"]) -> "FleetAnswer":
        """The answers of a launch's several calls, as one: every id, every error, in order."""
        return cls([i for a in answers for i in a.instance_ids], [e for a in answers for e in a.errors])

    def why_short(self) -> str:
        """AWS's reasons, one of each code, for a person: 'InsufficientInstanceCapacity (c7a.large): …'."""
        seen: Dict[str, FleetError] = {}
        for error in self.errors:
            seen.setdefault(error.code, error)
        if not seen:
            return "AWS gave no reason"
        return "; ".join(
            f"{e.code}{f' ({e.instance_type})' if e.instance_type else ''}: {e.message or 'no message'}"
            for e in seen.values()
        )


class Ec2Region:
    """One region's EC2 client, and the calls a run makes there.

    Example: ``Ec2Region(client, "eu-west-2").remove("20260101-abcd", known=["i-0abc"])``.
    The launch calls raise botocore's errors (or a ProviderError line of their own), for the
    provider to explain with the step it was at; the removal calls never raise: each resource
    comes back done, or not and why."""

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
        pages = self.client.get_paginator("describe_vpcs").paginate(Filters=[{"Name": "isDefault", "Values": ["true"]}])
        vpcs = [vpc for page in pages for vpc in page["Vpcs"]]
        if not vpcs:
            raise ProviderError(f"ec2 ({self.region}): this region has no default VPC to launch into")
        return vpcs[0]["VpcId"]

    def offered_pools(self, vpc_id: str, types: Sequence[str]) -> List[Pool]:
        """Every (type, zone) the region offers for `types` where the default VPC has a default
        subnet, zones by name; a ProviderError, one line, when a type has none."""
        offerings = self.client.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": list(types)}]
        )
        offered = {(o["InstanceType"], o["Location"]) for page in offerings for o in page["InstanceTypeOfferings"]}
        subnets = self.client.get_paginator("describe_subnets").paginate(
            Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "default-for-az", "Values": ["true"]}]
        )
        by_zone = {s["AvailabilityZone"]: s["SubnetId"] for page in subnets for s in page["Subnets"]}
        pools: List[Pool] = []
        for instance_type in types:
            zones = sorted(zone for offered_type, zone in offered if offered_type == instance_type)
            if not zones:
                raise ProviderError(
                    f"ec2 ({self.region}): {instance_type} is not offered in any zone of this region; try another "
                    "instance type or region"
                )
            usable = [zone for zone in zones if zone in by_zone]
            if not usable:
                raise ProviderError(
                    f"ec2 ({self.region}): the default VPC has no subnet in a zone that offers {instance_type} "
                    f"({', '.join(zones)})"
                )
            pools += [Pool(instance_type, zone, by_zone[zone]) for zone in usable]
        return pools

    def launch_subnet(self, vpc_id: str, instance_type: str) -> str:
        """The default subnet of the first zone (by name) that offers `instance_type` (see offered_pools)."""
        return self.offered_pools(vpc_id, [instance_type])[0].subnet_id

    def spot_prices(self, pools: Sequence[Pool]) -> Dict[Tuple[str, str], float]:
        """(type, zone) -> the current Linux spot price in USD per hour, for the pools EC2 has a
        price for (DescribeSpotPriceHistory from now: the price in effect, every page)."""
        types = sorted({pool.instance_type for pool in pools})
        zones = {pool.zone for pool in pools}
        pages = self.client.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=cast(Any, types),
            ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
            StartTime=datetime.now(timezone.utc),
        )
        latest: Dict[Tuple[str, str], Tuple[Any, float]] = {}
        for page in pages:
            for entry in page["SpotPriceHistory"]:
                where = (str(entry.get("InstanceType")), str(entry.get("AvailabilityZone")))
                if where[1] not in zones:
                    continue
                try:
                    price = float(entry["SpotPrice"])
                except (KeyError, ValueError):
                    continue
                stamp = entry.get("Timestamp")
                if where not in latest or (stamp is not None and stamp >= latest[where][0]):
                    latest[where] = (stamp, price)
        return {where: price for where, (_, price) in latest.items()}

    def create_group(self, run_id: str, vpc_id: str) -> str:
        """Create the run's security group, closed until open_ssh; its id."""
        return self.client.create_security_group(
            GroupName=resource_name(run_id),
            Description=f"cnd-fab run {run_id}: SSH from the controller only",
            VpcId=vpc_id,
            TagSpecifications=self._tags("security-group", run_id),
        )["GroupId"]

    def open_ssh(self, group_id: str, cidr: str) -> None:
        """Let the controller's address range, and no other, reach 22/tcp (retried while EC2
        does not show the new group yet)."""
        until_visible(
            lambda: self.client.authorize_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 22,
                        "ToPort": 22,
                        "IpRanges": [{"CidrIp": cidr, "Description": "cnd-fab controller"}],
                    }
                ],
            ),
            {GROUP_NOT_FOUND},
        )

    def run_instances(self, request: Dict[str, Any]) -> List[str]:
        """One RunInstances call, retried while EC2 does not show the new group or key pair yet
        (the ClientToken keeps a retry from launching twice); the new instances' ids."""
        answer = until_visible(lambda: self.client.run_instances(**request), {GROUP_NOT_FOUND, KEY_PAIR_NOT_FOUND})
        return [instance["InstanceId"] for instance in answer["Instances"]]

    def create_launch_template(self, run_id: str, data: Dict[str, Any]) -> str:
        """Create the run's launch template, named after the run and tagged; its id."""
        answer = self.client.create_launch_template(
            LaunchTemplateName=resource_name(run_id),
            VersionDescription=f"cnd-fab run {run_id}",
            LaunchTemplateData=cast(Any, data),
            TagSpecifications=self._tags("launch-template", run_id),
        )
        return str(answer["LaunchTemplate"]["LaunchTemplateId"])

    def create_fleet(self, request: Dict[str, Any]) -> FleetAnswer:
        """One instant CreateFleet call. While EC2 does not show the new group, key pair or
        template yet, a fleet may launch nothing and answer only NotFound errors: it is asked
        again, with a token of its own each time, since nothing was launched under the last."""
        attempt = [0]

        def create() -> FleetAnswer:
            token = request["ClientToken"] if attempt[0] == 0 else f"{request['ClientToken'][:56]}-retry{attempt[0]}"
            attempt[0] += 1
            answer = FleetAnswer.read(self.client.create_fleet(**{**request, "ClientToken": token}))
            codes = {error.code for error in answer.errors}
            if not answer.instance_ids and codes and codes <= FLEET_NOT_VISIBLE:
                first = answer.errors[0]
                raise ClientError({"Error": {"Code": first.code, "Message": first.message}}, "CreateFleet")
            return answer

        return until_visible(create, FLEET_NOT_VISIBLE)

    def wait_running(self, ids: Sequence[str], within: float = RUNNING_WITHIN) -> Dict[str, Dict[str, Any]]:
        """Wait until every instance runs; instance id -> its description, in the order of `ids`.

        An instance EC2 does not show yet is waited for. ProviderError, one line, when one will
        never run or `within` seconds pass."""
        waiting: List[str] = list(ids)
        found: Dict[str, Dict[str, Any]] = {}
        for _ in attempts(within, 1.0, 10.0):
            found = self.describe(ids)
            for instance_id, instance in found.items():
                state = instance["State"]["Name"]
                if state in NEVER_RUNS:
                    reason = instance.get("StateReason", {}).get("Message", "no reason given")
                    raise ProviderError(
                        f"ec2 ({self.region}): instance {instance_id} is {state} instead of running: {reason}"
                    )
            waiting = [i for i in ids if i not in found or found[i]["State"]["Name"] != "running"]
            if not waiting:
                return {instance_id: found[instance_id] for instance_id in ids}
        unseen = sum(1 for i in waiting if i not in found)
        raise ProviderError(
            f"ec2 ({self.region}): {len(waiting)} instance(s) not running within {within:.0f}s "
            f"({unseen} of them not shown by EC2 yet): {', '.join(waiting[:5])}"
        )

    def renew_tags(self, ids: Sequence[str], tags: List[TagTypeDef]) -> None:
        """Set `tags` on the instances, as the keep-alive renews them. Raises botocore's errors."""
        for batch in batches(ids):
            until_visible(lambda: self.client.create_tags(Resources=list(batch), Tags=tags), {INSTANCE_NOT_FOUND})

    # --- finding -----------------------------------------------------------------------
    def _instances(self, filters: List[FilterTypeDef]) -> List[Dict[str, Any]]:
        found: List[Dict[str, Any]] = []
        for page in self.client.get_paginator("describe_instances").paginate(Filters=filters):
            found += [cast(Dict[str, Any], i) for r in page["Reservations"] for i in r["Instances"]]
        return found

    def describe(self, ids: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        """Instance id -> description, for those of `ids` EC2 shows now: by filter, in batches,
        every page. An id it does not show is absent (not shown yet, or long forgotten)."""
        found: Dict[str, Dict[str, Any]] = {}
        for batch in batches(ids):
            try:
                described = self._instances([{"Name": "instance-id", "Values": batch}])
            except ClientError as error:
                # A filter asserts nothing about the ids, so EC2 should not answer NotFound; if it
                # does, that means what an absent id means.
                if error_code(error) != INSTANCE_NOT_FOUND:
                    raise
                continue
            found.update({i["InstanceId"]: i for i in described})
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
                        tags[RUN_TAG], tags.get(EXPIRES_TAG, ""), tags.get(ALIVE_TAG, ""),
                    )
                )
        return found

    def states(self, ids: Sequence[str]) -> Dict[str, str]:
        """Instance id -> state, for those of `ids` EC2 shows now (see describe)."""
        return {instance_id: i["State"]["Name"] for instance_id, i in self.describe(ids).items()}

    # --- removal -----------------------------------------------------------------------
    def remove(
        self, run_id: str, known: Sequence[str] = (), dry_run: bool = False, fresh: Collection[str] = ()
    ) -> List[Released]:
        """Terminate the run's instances (tagged, or `known` from its journal), then delete its
        security group and key pair. `fresh` ids were launched so recently that EC2 may not show
        them yet: they are terminated all the same. A dry run only looks."""
        name = resource_name(run_id)
        try:
            live: Set[str] = {i.instance_id for i in self.tagged_instances(run_id)}
            seen = self.states(known)
            live |= {i for i, state in seen.items() if state in LIVE_STATES}
            live |= {i for i in known if i not in seen and i in fresh}
            pages = self.client.get_paginator("describe_security_groups").paginate(
                Filters=[{"Name": "group-name", "Values": [name]}]
            )
            group_ids = [group["GroupId"] for page in pages for group in page["SecurityGroups"]]
            # DescribeKeyPairs has no pages: it answers every match at once.
            keys = self.client.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}])
            templates = self.client.get_paginator("describe_launch_templates").paginate(
                Filters=[{"Name": "launch-template-name", "Values": [name]}]
            )
            template_ids = [t["LaunchTemplateId"] for page in templates for t in page["LaunchTemplates"]]
        except AWS_ERRORS as error:
            why = explain(error, "looking for the run's resources", self.region)
            return [Released(f"ec2 resources of {run_id} in {self.region}", False, why)]
        key_names = [key.get("KeyName", name) for key in keys["KeyPairs"]]
        if dry_run:
            return (
                [Released(instance_resource(i), True, planned=True) for i in sorted(live)]
                + [Released(group_resource(g, name), True, planned=True) for g in group_ids]
                + [Released(f"key pair {k}", True, planned=True) for k in key_names]
                + [Released(template_resource(t, name), True, planned=True) for t in template_ids]
            )
        results = self.terminate(sorted(live), fresh)
        # A group cannot go while an instance still uses it: trying would only wait out the retries.
        blocked = any(result.failed for result in results)
        for group_id in group_ids:
            if blocked:
                why = "not tried: the run's instances are not confirmed terminated"
                results.append(Released(group_resource(group_id, name), False, why))
            else:
                results.append(self.delete_group(group_id, name))
        # A launch template may go while its instances run: nothing waits on it.
        results += [self.delete_launch_template(t, name) for t in template_ids]
        return results + [self.delete_key_pair(key) for key in key_names]

    def terminate(self, ids: Sequence[str], fresh: Collection[str] = ()) -> List[Released]:
        """Terminate the instances in batches and wait; done for each one confirmed terminated."""
        refused: Dict[str, str] = {}
        for batch in batches(ids):
            try:
                until_visible(lambda: self.client.terminate_instances(InstanceIds=list(batch)), {INSTANCE_NOT_FOUND})
            except AWS_ERRORS as error:
                refused.update(dict.fromkeys(batch, explain(error, "terminating the instances", self.region)))
        waited = {r.resource: r for r in self.wait_terminated([i for i in ids if i not in refused], fresh)}
        return [
            waited.get(instance_resource(i)) or Released(instance_resource(i), False, refused[i], action="terminated")
            for i in ids
        ]

    def wait_terminated(
        self, ids: Sequence[str], fresh: Collection[str] = (), within: float = TERMINATED_WITHIN
    ) -> List[Released]:
        """Wait until every instance reads terminated; done for each one that does.

        botocore's instance_terminated waiter gives up as soon as one instance reads pending.
        Here a pending one is waited for: EC2 ends it once it has started. An instance EC2 no
        longer shows was terminated and forgotten, unless it is `fresh`: then it is only not
        shown yet, and waited for too."""
        if not ids:
            return []
        left = dict.fromkeys(ids, "in an unknown state")
        problem = ""
        for _ in attempts(within, 1.0, 15.0):
            try:
                states = self.states(list(left))
                left = {
                    i: states.get(i, "not shown by EC2 yet")
                    for i in left
                    if states.get(i) != "terminated" and (i in states or i in fresh)
                }
                problem = ""
            except AWS_ERRORS as error:
                problem = "; " + explain(error, "waiting for the instances to terminate", self.region)
            if not left:
                break
        return [
            Released(
                instance_resource(i),
                i not in left,
                f"still {left[i]} after {within:.0f}s{problem}" if i in left else "",
                action="terminated",
            )
            for i in ids
        ]

    def delete_group(self, group_id: str, name: str, within: float = GROUP_RELEASE_SECONDS) -> Released:
        """Delete a security group, retrying while AWS still counts it in use (it does for a while
        after its instances have terminated)."""
        resource = group_resource(group_id, name)
        outcome = Released(resource, False, "not tried")
        for _ in attempts(within, 2.0, 15.0):
            try:
                self.client.delete_security_group(GroupId=group_id)
                return Released(resource, True, action="deleted")
            except AWS_ERRORS as error:
                code = error_code(error)
                if code == "InvalidGroup.NotFound":
                    return Released(resource, True, action="deleted")
                outcome = Released(resource, False, explain(error, "deleting the security group", self.region))
                if code != "DependencyViolation":
                    return outcome
        return outcome

    def delete_launch_template(self, template_id: str, name: str) -> Released:
        """Delete a launch template; one already gone counts as deleted."""
        resource = template_resource(template_id, name)
        try:
            self.client.delete_launch_template(LaunchTemplateId=template_id)
        except AWS_ERRORS as error:
            if error_code(error) not in ("InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException"):
                return Released(resource, False, explain(error, "deleting the launch template", self.region))
        return Released(resource, True, action="deleted")

    def delete_key_pair(self, key_name: str) -> Released:
        """Delete a key pair (deleting one that is gone is no error at AWS)."""
        try:
            self.client.delete_key_pair(KeyName=key_name)
        except AWS_ERRORS as error:
            return Released(f"key pair {key_name}", False, explain(error, "deleting the key pair", self.region))
        return Released(f"key pair {key_name}", True, action="deleted")
