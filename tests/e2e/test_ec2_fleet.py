"""Spot and multi-type launches through an instant EC2 Fleet, against a moto server on 127.0.0.1.

moto launches every instance an instant fleet asks for, in the first pool it is given. So a
shortage is made here: a handler lowers the capacity moto is asked for, and adds the error
AWS would answer for the rest, as CreateFleet reports a partial launch.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

from cnd_fab.errors import ProviderError
from cnd_fab.inventory import load
from cnd_fab.journal import RunJournal
from cnd_fab.providers import ProviderOptions, ec2_settings
from cnd_fab.providers.base import Leftover
from cnd_fab.providers.ec2 import Ec2Provider
from cnd_fab.providers.ec2_settings import ALIVE_TAG, RUN_TAG, TOOL_TAG
from cnd_fab.run import launched
from tests.e2e.test_ec2 import (
    EC2_XMLNS,
    CannedSend,
    Recorder,
    assert_all_done,
    assert_nothing_left,
    ec2_cli,
    live_instances,
    run_templates,
)
from tests.helpers import run_cli
from tests.testbed import ec2_standin
from tests.testbed.imds import MetadataStandIn
from tests.testbed.moto_server import REGION

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leaked_workers", "no_leaked_standins")]

TYPES = ("c7a.large", "c6a.large")
SHORT_OF_CAPACITY = "There is no Spot capacity available that matches your request."
LOWEST_D24 = 30074393


class CapacityLimit:
    """Lets an instant fleet launch at most `most` instances, as when AWS runs short."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.asked = 0

    def register(self, events: Any) -> None:
        events.register("provide-client-params.ec2.CreateFleet", self.limit)
        events.register("after-call.ec2.CreateFleet", self.explain)

    def limit(self, params: Dict[str, Any], **kwargs: Any) -> None:
        target = params["TargetCapacitySpecification"]
        self.asked = target["TotalTargetCapacity"]
        # A new dict, so that a recorder registered before this one keeps what was asked.
        params["TargetCapacitySpecification"] = {**target, "TotalTargetCapacity": min(self.most, self.asked)}

    def explain(self, parsed: Dict[str, Any], **kwargs: Any) -> None:
        if self.asked > self.most:
            parsed.setdefault("Errors", []).append(
                {
                    "LaunchTemplateAndOverrides": {"Overrides": {"InstanceType": TYPES[0]}},
                    "Lifecycle": "spot",
                    "ErrorCode": "InsufficientInstanceCapacity",
                    "ErrorMessage": SHORT_OF_CAPACITY,
                }
            )


def fleet_provider(inventory: Path, spot: bool = True, min_count: Optional[int] = None) -> Ec2Provider:
    return Ec2Provider(
        ProviderOptions(inventory=load(str(inventory)), timeout=300, instance_types=TYPES, spot=spot, min_count=min_count)
    )


def recorded(provider: Ec2Provider, *operations: str) -> Dict[str, Recorder]:
    recorders = {op: Recorder() for op in operations}
    for op, recorder in recorders.items():
        provider.ec2.meta.events.register(f"provide-client-params.ec2.{op}", recorder)
    return recorders


def offered_pools(aws: Any) -> List[Dict[str, str]]:
    """Every (type, default subnet) moto's region offers for TYPES, as the fleet's overrides."""
    offered = aws.describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": list(TYPES)}]
    )["InstanceTypeOfferings"]
    subnets = {s["AvailabilityZone"]: s["SubnetId"] for s in aws.describe_subnets()["Subnets"] if s["DefaultForAz"]}
    return [
        {"InstanceType": t, "SubnetId": subnets[zone]}
        for t in TYPES
        for zone in sorted(o["Location"] for o in offered if o["InstanceType"] == t)
        if zone in subnets
    ]


@pytest.mark.parametrize("spot", [True, False], ids=["spot", "on-demand"])
def test_a_fleet_short_of_capacity_goes_on_above_min_count(aws: Any, inventory: Path, no_ssh: None, spot: bool) -> None:
    provider = fleet_provider(inventory, spot=spot, min_count=2)
    calls = recorded(provider, "CreateFleet", "CreateLaunchTemplate")
    CapacityLimit(2).register(provider.ec2.meta.events)
    journal = RunJournal.start("ec2")
    hosts = provider.launch(3, journal)
    try:
        assert len(hosts) == 2 and len(provider.instance_ids) == 2
        market = "c7a.large|c6a.large" + (" spot" if spot else "")
        shortfall = (
            f"ec2 ({REGION}): 2 of 3 × {market} launched, at least the 2 the run needs, so it goes on with them "
            f"(InsufficientInstanceCapacity (c7a.large): {SHORT_OF_CAPACITY})"
        )
        assert provider.notices == [shortfall] and journal.details["notices"] == [shortfall]

        [fleet] = calls["CreateFleet"].calls
        assert fleet["Type"] == "instant" and fleet["ClientToken"] == journal.run_id
        assert fleet["TargetCapacitySpecification"] == {
            "TotalTargetCapacity": 3, "DefaultTargetCapacityType": "spot" if spot else "on-demand",
        }
        assert fleet["OnDemandOptions"] == {"AllocationStrategy": "lowest-price"}
        if spot:
            assert fleet["SpotOptions"] == {"AllocationStrategy": "capacity-optimized", "InstanceInterruptionBehavior": "terminate"}
        else:
            assert "SpotOptions" not in fleet
        [config] = fleet["LaunchTemplateConfigs"]
        # Every zone of the default VPC that offers each type, so capacity is sought everywhere.
        assert config["Overrides"] == offered_pools(aws) and len(config["Overrides"]) > len(TYPES)
        [fleet_tags] = fleet["TagSpecifications"]
        assert fleet_tags["ResourceType"] == "fleet"

        [template] = calls["CreateLaunchTemplate"].calls
        name = f"cnd-fab-{journal.run_id}"
        assert template["LaunchTemplateName"] == name
        assert config["LaunchTemplateSpecification"]["LaunchTemplateId"] == [r for r in journal.resources if r["kind"] == "ec2-launch-template"][-1]["template_id"]
        data = template["LaunchTemplateData"]
        assert "InstanceType" not in data and "InstanceMarketOptions" not in data
        assert data["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is True and "SubnetId" not in data["NetworkInterfaces"][0]
        assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert "CreditSpecification" not in data  # no t type among them
        user_data = base64.b64decode(data["UserData"]).decode()
        assert user_data.startswith("#cloud-config\n") and yaml.safe_load(user_data)["runcmd"] == [["shutdown", "-P", "+15"]]
        assert {t["Key"] for t in data["TagSpecifications"][0]["Tags"]} >= {TOOL_TAG, RUN_TAG, ALIVE_TAG}
        assert run_templates(aws) == [name]

        described = [i for i in live_instances(aws) if i["InstanceId"] in provider.instance_ids]
        assert {i.get("InstanceLifecycle", "on-demand") for i in described} == {"spot" if spot else "on-demand"}
        assert {t["Value"] for i in described for t in i["Tags"] if t["Key"] == RUN_TAG} == {journal.run_id}
        kinds = [r["kind"] for r in journal.resources]
        assert kinds.index("ec2-security-group") < kinds.index("ec2-launch-template") < kinds.index("ec2-launch") < kinds.index("ec2-instances")

        # A teardown that finds this run (its controller dead) would remove the template too.
        planned = provider.remove(Leftover(journal.run_id, "ec2", journal, REGION), dry_run=True)
        assert any(r.line().startswith("would remove launch template lt-") and name in r.line() for r in planned)
    finally:
        released = provider.release(hosts, journal)
    assert_all_done(released)
    assert sum(r.resource.startswith("launch template ") for r in released) == 1
    assert_nothing_left(aws)


def test_a_fleet_below_min_count_releases_everything_with_one_line(aws: Any, inventory: Path, no_ssh: None) -> None:
    provider = fleet_provider(inventory)  # --min-count: all of --count
    CapacityLimit(1).register(provider.ec2.meta.events)
    with pytest.raises(ProviderError) as refused:
        with launched(provider, 3):
            pytest.fail("a run short of its minimum must not start")
    assert str(refused.value) == (
        f"ec2 ({REGION}): only 1 of 3 × c7a.large|c6a.large spot launched, fewer than the 3 the run needs "
        f"(InsufficientInstanceCapacity (c7a.large): {SHORT_OF_CAPACITY}); everything is being released"
    )
    assert len(provider.instance_ids) == 1
    assert_nothing_left(aws)


def batched_fleet(inventory: Path, monkeypatch: pytest.MonkeyPatch, min_count: int) -> Tuple[Ec2Provider, Dict[str, Recorder]]:
    """A spot fleet launched in calls of 2 instances, each call given only one, its CreateFleet
    calls recorded."""
    monkeypatch.setattr(ec2_settings, "LAUNCH_BATCH", 2)
    provider = fleet_provider(inventory, min_count=min_count)
    calls = recorded(provider, "CreateFleet")
    CapacityLimit(1).register(provider.ec2.meta.events)  # each call launches one instance
    return provider, calls


def test_a_fleet_above_the_batch_size_counts_min_count_over_every_call(
    aws: Any, inventory: Path, no_ssh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, calls = batched_fleet(inventory, monkeypatch, min_count=3)
    journal = RunJournal.start("ec2")
    hosts = provider.launch(5, journal)
    try:
        run_id = journal.run_id
        tokens = [call["ClientToken"] for call in calls["CreateFleet"].calls]
        assert tokens == [run_id, f"{run_id}-b1", f"{run_id}-b2"]
        assert [call["TargetCapacitySpecification"]["TotalTargetCapacity"] for call in calls["CreateFleet"].calls] == [2, 2, 1]
        assert len(hosts) == len(set(provider.instance_ids)) == 3 and len(live_instances(aws)) == 3
        assert provider.notices == [
            f"ec2 ({REGION}): 3 of 5 × c7a.large|c6a.large spot launched, at least the 3 the run needs, so it goes on "
            f"with them (InsufficientInstanceCapacity (c7a.large): {SHORT_OF_CAPACITY})"
        ]
        launches = [r for r in journal.resources if r["kind"] == "ec2-launch"]
        assert [(r["client_token"], r["count"], r["fleet"]) for r in launches] == [(t, n, True) for t, n in zip(tokens, [2, 2, 1])]
    finally:
        released = provider.release(hosts, journal)
    assert_all_done(released)
    assert_nothing_left(aws)


def test_a_batched_fleet_stops_calling_once_min_count_is_out_of_reach(
    aws: Any, inventory: Path, no_ssh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, calls = batched_fleet(inventory, monkeypatch, min_count=4)
    with pytest.raises(ProviderError) as refused:
        with launched(provider, 5):
            pytest.fail("a run short of its minimum must not start")
    # After two calls, 2 launched and 1 left to ask for: 4 is out of reach, so no third call.
    assert len(calls["CreateFleet"].calls) == 2 and len(provider.instance_ids) == 2
    assert str(refused.value).startswith(
        f"ec2 ({REGION}): only 2 of 5 × c7a.large|c6a.large spot launched, fewer than the 4 the run needs"
    )
    assert_nothing_left(aws)


def create_fleet_unseen(code: str) -> str:
    """A CreateFleet answer that launched nothing, as EC2 gives while it does not show the group yet."""
    error = (
        f"<item><lifecycle>spot</lifecycle><errorCode>{code}</errorCode>"
        "<errorMessage>The security group does not exist</errorMessage></item>"
    )
    return (
        f'<CreateFleetResponse xmlns="{EC2_XMLNS}"><requestId>t</requestId><fleetId>fleet-unseen</fleetId>'
        f"<errorSet>{error}</errorSet><fleetInstanceSet/></CreateFleetResponse>"
    )


def test_a_fleet_that_cannot_see_the_new_group_yet_is_asked_again(aws: Any, inventory: Path, no_ssh: None) -> None:
    provider = fleet_provider(inventory)
    calls = recorded(provider, "CreateFleet")
    unseen = CannedSend(create_fleet_unseen("InvalidGroup.NotFound"), times=2)
    provider.ec2.meta.events.register("before-send.ec2.CreateFleet", unseen)
    journal = RunJournal.start("ec2")
    hosts = provider.launch(2, journal)
    try:
        assert unseen.answered == 2 and len(provider.instance_ids) == 2 and provider.notices == []
        # Nothing was launched under the first tokens, so each new try has a token of its own.
        tokens = [call["ClientToken"] for call in calls["CreateFleet"].calls]
        assert tokens == [journal.run_id, f"{journal.run_id[:56]}-retry1", f"{journal.run_id[:56]}-retry2"]
    finally:
        assert_all_done(provider.release(hosts, journal))
    assert_nothing_left(aws)


def test_spot_prices_come_from_the_price_history(aws: Any, inventory: Path) -> None:
    provider = fleet_provider(inventory)
    history = aws.describe_spot_price_history(InstanceTypes=list(TYPES))["SpotPriceHistory"]
    prices = {(h["InstanceType"], h["AvailabilityZone"]): float(h["SpotPrice"]) for h in history}
    estimate = provider.cost_estimate(4, 1800)
    assert estimate is not None and estimate.fleet is not None
    text = estimate.describe()
    assert text.splitlines()[0].startswith("cost estimate: at most $") and "4 × c7a.large|c6a.large spot for up to 30.0 min" in text
    assert f"DescribeSpotPriceHistory in {REGION}" in text
    pools = offered_pools(aws)
    zones = {s["SubnetId"]: s["AvailabilityZone"] for s in aws.describe_subnets()["Subnets"]}
    unpriced = [(p["InstanceType"], zones[p["SubnetId"]]) for p in pools if (p["InstanceType"], zones[p["SubnetId"]]) not in prices]
    if unpriced:
        # A pool with no spot price is priced on-demand, the most a spot instance is charged.
        assert estimate.fleet.hourly == pytest.approx(0.1027) and "so its on-demand price" in text
    else:
        assert estimate.fleet.hourly == pytest.approx(max(prices.values()))
    assert estimate.total == pytest.approx(4 * (estimate.fleet.hourly + 0.005) / 2)


def test_a_spot_fleet_searches_and_a_reclaimed_host_costs_no_answer(
    aws: Any, inventory: Path, private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first worker to ask the metadata stand-in is told its instance is being reclaimed.
    with MetadataStandIn(give_notice_after=0.0) as stand_in:
        monkeypatch.setenv(ec2_standin.METADATA_ENV, stand_in.url)
        result = run_cli(
            ec2_cli("search", "--provider", "ec2", "--inventory", str(inventory), "--spot",
                    "--instance-types", ",".join(TYPES), "--count", "2", "--difficulty", "24",
                    "--timeout", "300", "--yes", "--json")
        )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["nonce"] == LOWEST_D24 and record["lowest"] is True
    states = sorted(host["state"] for host in record["hosts"])
    assert states[0] == "reclaimed" and len(states) == 2, record["hosts"]
    [reclaimed] = [h for h in record["hosts"] if h["state"] == "reclaimed"]
    assert "spot interruption notice: terminate at 2026-11-30T12:00:00Z" in reclaimed["error"]
    assert stand_in.noticed is not None
    assert "× c7a.large|c6a.large spot" in result.stderr and "DescribeSpotPriceHistory" in result.stderr
    assert record["cost_usd"] > 0
    instances = [i for r in aws.describe_instances()["Reservations"] for i in r["Instances"]]
    assert len(instances) == 2 and {i.get("InstanceLifecycle") for i in instances} == {"spot"}
    assert {i["State"]["Name"] for i in instances} == {"terminated"}
    assert_nothing_left(aws)
    journal = json.loads(next((private_state / "runs").glob("*.json")).read_text())
    assert journal["status"] == "cleaned"

