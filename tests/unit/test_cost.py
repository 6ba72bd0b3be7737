"""What a run costs: instances, CPU surplus credits of burstable types, public IPv4, --max-cost."""

from __future__ import annotations

import inspect
import io
from types import SimpleNamespace
from typing import Any, cast

import pytest
from rich.console import Console

from cnd_fab import cost
from cnd_fab.cost import STANDARD, UNLIMITED, Charges
from cnd_fab.errors import InputError
from cnd_fab.planner import confirm_cost
from cnd_fab.providers import ec2_settings
from cnd_fab.providers.base import ProviderOptions
from cnd_fab.providers.ec2 import Ec2Provider
from cnd_fab.providers.ec2_launch import LaunchedInstance

HOUR = 3600.0


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_a_t3_micro_flat_out_adds_1_8_surplus_vcpu_hours_an_hour() -> None:
    estimate = cost.estimate("t3.micro", 1, None)
    assert estimate.credits == UNLIMITED  # AWS's default for t3
    assert cost.surplus_vcpu_hours_per_hour("t3.micro") == pytest.approx(2 * (1 - 0.10))
    assert estimate.charges.surplus_credits == pytest.approx(1.8 * 0.05)
    assert estimate.total == pytest.approx(0.0104 + 0.09 + 0.005)
    text = estimate.describe()
    assert "CPU surplus credits $0.0900: t3.micro runs unlimited (AWS's default for t3)" in text
    assert "2 vCPU(s) × (1 − 10% baseline) = 1.8 vCPU-h per instance-hour at $0.05/vCPU-h" in text
    assert cost.BASELINE_SOURCE in text and cost.SURPLUS_SOURCE in text


def test_four_t3_micros_for_an_hour_cost_ten_times_the_instance_price() -> None:
    estimate = cost.estimate("t3.micro", 4, None)
    assert estimate.charges.instances == pytest.approx(0.0416)  # all the estimate used to say
    assert estimate.total == pytest.approx(0.4216)
    assert estimate.charges.breakdown() == "instances $0.0416 + CPU surplus credits $0.3600 + public IPv4 $0.0200"
    assert estimate.describe().splitlines()[0] == "cost estimate: at most $0.4216 for 4 × t3.micro per hour (no --timeout):"


@pytest.mark.parametrize(
    "instance_type, vcpus, baseline, rate",
    [
        ("t4g.nano", 2, 0.05, 0.04),
        ("t4g.small", 2, 0.20, 0.04),
        ("t4g.xlarge", 4, 0.40, 0.04),
        ("t4g.2xlarge", 8, 0.40, 0.04),
        ("t3a.micro", 2, 0.10, 0.05),
        ("t3a.large", 2, 0.30, 0.05),
        ("t3a.2xlarge", 8, 0.40, 0.05),
        ("t2.xlarge", 4, 0.225, 0.05),
    ],
)
def test_surplus_follows_each_size_baseline_and_family_rate(instance_type: str, vcpus: int, baseline: float, rate: float) -> None:
    charges = Charges(instance_type, 3, HOUR, UNLIMITED)
    assert cost.burstable_figures(instance_type) == (vcpus, baseline, True)
    assert charges.surplus_credits == pytest.approx(3 * vcpus * (1 - baseline) * rate)
    assert charges.total == pytest.approx(3 * (cost.HOURLY_USD[instance_type] + vcpus * (1 - baseline) * rate + 0.005))


def test_every_priced_burstable_type_has_credit_figures() -> None:
    priced = {t for t in cost.HOURLY_USD if cost.is_burstable(t)}
    assert priced == set(cost.BURSTABLE_SIZES)
    assert {cost.family(t) for t in priced} == set(cost.SURPLUS_USD_PER_VCPU_HOUR) == {"t2", "t3", "t3a", "t4g"}


@pytest.mark.parametrize(
    "instance_type, burstable",
    [("t2.micro", True), ("t3.micro", True), ("t3a.large", True), ("t4g.nano", True),
     ("trn1.2xlarge", False), ("trn1n.32xlarge", False), ("c7a.large", False), ("m7i.large", False)],
)
def test_burstable_means_t_and_a_digit(instance_type: str, burstable: bool) -> None:
    assert cost.is_burstable(instance_type) == burstable


def test_trn1_pays_no_surplus_whatever_the_credit_mode() -> None:
    estimate = cost.estimate("trn1.2xlarge", 1, None, UNLIMITED)
    assert estimate.charges.surplus_credits == 0
    assert "CPU" not in estimate.describe()


def test_c7a_large_pays_its_price_and_its_address_only() -> None:
    estimate = cost.estimate("c7a.large", 4, None)
    assert estimate.total == pytest.approx(4 * 0.1027 + 4 * 0.005)
    assert estimate.charges.breakdown() == "instances $0.4108 + public IPv4 $0.0200"
    assert "CPU" not in estimate.describe()


def test_t2_defaults_to_standard_mode_which_throttles_instead_of_charging() -> None:
    estimate = cost.estimate("t2.micro", 1, None)
    assert estimate.credits == STANDARD and estimate.charges.surplus_credits == 0
    assert estimate.total == pytest.approx(0.0116 + 0.005)
    assert (
        "CPU credits: t2.micro runs standard (AWS's default for t2): no surplus charge, but once its credits "
        "run out the search is throttled to its 10% baseline per vCPU"
    ) in estimate.describe()


def test_t2_launched_unlimited_is_priced_with_its_surplus() -> None:
    estimate = cost.estimate("t2.micro", 1, None, UNLIMITED)
    assert estimate.charges.surplus_credits == pytest.approx(1 * 0.9 * 0.05)
    assert "t2.micro runs unlimited (as launched; AWS's default for t2 is standard)" in estimate.describe()


@pytest.mark.parametrize("instance_type", ["t2.micro", "t3.micro", "t4g.small", "c7a.large"])
def test_the_provider_prices_the_credit_mode_its_launch_asks_for(instance_type: str) -> None:
    # Every other parameter is a placeholder: only the type decides the credit option.
    placeholders = {name: "x" for name in inspect.signature(ec2_settings.launch_request).parameters}
    request = ec2_settings.launch_request(**{**placeholders, "instance_type": instance_type, "count": 1})
    asked = request.get("CreditSpecification", {}).get("CpuCredits")
    estimate = Ec2Provider(ProviderOptions(instance_type=instance_type)).cost_estimate(1, None)
    assert estimate is not None
    if asked is not None:
        assert estimate.credits == asked
    expected = cost.surplus_vcpu_hours_per_hour(instance_type) * cost.surplus_price(instance_type) if asked == UNLIMITED else 0
    assert estimate.charges.surplus_credits == pytest.approx(expected)


def test_an_unlisted_burstable_size_assumes_no_baseline_and_says_so() -> None:
    estimate = cost.estimate("t3.4xlarge", 1, None)
    assert cost.burstable_figures("t3.4xlarge") == (16, 0.0, False)
    assert estimate.charges.surplus_credits == pytest.approx(16 * 0.05)
    assert estimate.total is None  # no on-demand price either
    text = estimate.describe()
    assert "no built-in price for t3.4xlarge" in text
    assert "t3.4xlarge is not in AWS's credit table: no baseline assumed, 16 vCPU(s) from its size" in text


def test_public_ipv4_is_half_a_cent_per_address_hour_billed_per_second() -> None:
    assert cost.public_ipv4_cost(HOUR) == pytest.approx(0.005)
    assert cost.public_ipv4_cost(10) == pytest.approx(0.005 * 10 / HOUR)  # no minimum
    assert Charges("c7a.large", 3, 1800, UNLIMITED).public_ipv4 == pytest.approx(3 * 0.0025)
    text = cost.estimate("c7a.large", 3, 1800).describe()
    assert "public IPv4 $0.0075: one address per instance at $0.005/h, billed per second" in text
    assert cost.PUBLIC_IPV4_SOURCE in text and "since 1 Feb 2024" in text


def test_the_minute_minimum_applies_to_the_instances_alone() -> None:
    charges = Charges("t3.micro", 2, 5, UNLIMITED)
    assert charges.instances == pytest.approx(2 * 0.0104 * 60 / HOUR)
    assert charges.surplus_credits == pytest.approx(2 * 0.09 * 5 / HOUR)
    assert charges.public_ipv4 == pytest.approx(2 * 0.005 * 5 / HOUR)
    assert cost.instance_cost(0.36, 5) == pytest.approx(0.36 * 60 / HOUR)
    assert cost.instance_cost(0.36, 90) == pytest.approx(0.36 * 90 / HOUR)


def test_max_cost_compares_the_full_total_and_refuses_in_one_line() -> None:
    provider = Ec2Provider(ProviderOptions(instance_type="t3.micro"))
    estimate = provider.cost_estimate(4, HOUR)
    assert estimate is not None and estimate.charges.instances is not None
    assert estimate.charges.instances < 0.10  # the old estimate passed --max-cost 0.10
    with pytest.raises(InputError) as refused:
        confirm_cost(provider, 4, HOUR, 0.10, True, quiet_console())
    assert str(refused.value) == (
        "the estimate $0.4216 (instances $0.0416 + CPU surplus credits $0.3600 + public IPv4 $0.0200) "
        "is above --max-cost $0.1000; nothing was launched"
    )


def test_a_run_within_max_cost_is_shown_every_component_and_goes_ahead() -> None:
    console = quiet_console()
    confirm_cost(Ec2Provider(ProviderOptions(instance_type="t3.micro")), 4, HOUR, 0.50, True, console)
    shown = cast(io.StringIO, console.file).getvalue()
    assert shown.startswith("cost estimate: at most $0.4216 for 4 × t3.micro for up to 60.0 min:\n")
    assert "  instances $0.0416: 4 × t3.micro at $0.0104/h for up to 60.0 min" in shown
    assert "  CPU surplus credits $0.3600" in shown and "  public IPv4 $0.0200" in shown


def test_the_cost_at_the_end_counts_every_component_over_the_real_seconds() -> None:
    provider = Ec2Provider(ProviderOptions(instance_type="t3.micro"))
    assert provider.incurred_cost() is None  # nothing launched
    cast(Any, provider)._launch = SimpleNamespace(launched_at=1000.0, instance_ids=["i-a", "i-b"], placed={})
    provider.terminated_at = 1000.0 + 1800
    assert provider.incurred_cost() == pytest.approx(2 * (0.0104 + 0.09 + 0.005) / 2)
    provider.terminated_at = 1000.0 + 20  # under the minute: instances billed 60 s, the rest 20 s
    assert provider.incurred_cost() == pytest.approx(2 * (0.0104 * 60 + 0.09 * 20 + 0.005 * 20) / HOUR)


def test_the_cost_at_the_end_of_a_c7a_run_adds_the_addresses() -> None:
    provider = Ec2Provider(ProviderOptions(instance_type="c7a.large"))
    cast(Any, provider)._launch = SimpleNamespace(launched_at=0.0, instance_ids=["i-a", "i-b", "i-c"], placed={})
    provider.terminated_at = HOUR
    assert provider.incurred_cost() == pytest.approx(3 * (0.1027 + 0.005))


def test_the_cost_at_the_end_of_a_spot_fleet_prices_each_instance_where_it_ran() -> None:
    provider = Ec2Provider(ProviderOptions(instance_types=("c7a.large", "t3.micro"), spot=True))
    placed = {
        "i-a": LaunchedInstance("c7a.large", "us-east-1a", spot=True),
        "i-b": LaunchedInstance("t3.micro", "us-east-1b", spot=True),
        "i-c": LaunchedInstance("c7a.large", "us-east-1c", spot=True),  # no spot price known: on-demand
    }
    cast(Any, provider)._launch = SimpleNamespace(launched_at=0.0, instance_ids=list(placed), placed=placed)
    cast(Any, provider)._spot_prices = {("c7a.large", "us-east-1a"): 0.03, ("t3.micro", "us-east-1b"): 0.004}
    provider.terminated_at = HOUR
    expected = (0.03 + 0.005) + (0.004 + 0.09 + 0.005) + (0.1027 + 0.005)
    assert provider.incurred_cost() == pytest.approx(expected)


def test_a_fleet_estimate_prices_every_instance_as_its_dearest_choice() -> None:
    choices = [
        cost.FleetChoice("c7a.large", 0.04, "us-east-1a"),
        cost.FleetChoice("c6a.large", 0.05, "us-east-1b"),
        # cheaper per hour, but its surplus credits make it the dearest choice
        cost.FleetChoice("t3.micro", 0.004, "us-east-1c"),
    ]
    estimate = cost.fleet_estimate(choices, 4, 1800, "c7a.large|c6a.large|t3.micro spot", "spot prices")
    assert estimate.instance_type == "t3.micro" and estimate.credits == UNLIMITED
    assert estimate.total == pytest.approx(4 * (0.004 + 0.09 + 0.005) / 2)
    lines = estimate.describe().splitlines()
    assert lines[0] == "cost estimate: at most $0.1980 for 4 × c7a.large|c6a.large|t3.micro spot for up to 30.0 min:"
    assert lines[1].startswith(
        "  instances $0.0080: 4 × t3.micro in us-east-1c, the dearest of the fleet's choices, at $0.0040/h for up to 30.0 min"
    )
    assert lines[1].endswith("(spot prices)")
    unknown = cost.fleet_estimate(choices + [cost.FleetChoice("x9z.metal", None)], 4, 1800, "l", "s")
    assert unknown.total is None and unknown.instance_type == "x9z.metal"


def test_no_price_means_no_incurred_figure() -> None:
    assert cost.incurred("x9z.metal", 2, HOUR) is None
