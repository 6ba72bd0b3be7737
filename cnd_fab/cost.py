"""What a run costs: its instances, the CPU surplus credits of burstable types, and public IPv4.

Every price here is a US East (N. Virginia) Linux price in USD, and each names its source:

- Instances: the built-in on-demand table below (aws.amazon.com/ec2/pricing/on-demand). Other
  regions cost up to about 30% more. EC2 bills Linux instances per second with a one-minute
  minimum (aws.amazon.com/ec2/pricing, "Per Second Billing").
- CPU surplus credits: a burstable type (family `t` plus a digit: t2, t3, t3a, t4g; not trn1)
  earns credits only at its baseline, a fraction of each vCPU
  (docs.aws.amazon.com/AWSEC2/latest/UserGuide/burstable-credits-baseline-concepts.html). In
  unlimited mode it runs above the baseline anyway, and what the instance's lifetime does not
  pay back is billed at a flat rate per vCPU-hour: $0.05 for t2, t3 and t3a, $0.04 for t4g, the
  same for every size and region (aws.amazon.com/ec2/pricing/on-demand, "T2/T3/T4g Unlimited
  Mode Pricing"; docs.aws.amazon.com/AWSEC2/latest/UserGuide/
  burstable-performance-instances-unlimited-mode-concepts.html). A search holds
  every vCPU at 100%, so each instance-hour adds vCPUs × (1 − baseline) vCPU-hours: 1.8 on a
  t3.micro. Unlimited is AWS's default for t3, t3a and t4g; t2 defaults to standard, which
  costs nothing extra but throttles to the baseline once the credits run out
  (docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html, CreditSpecification).
  The estimate ignores launch and accrued credits: they only lower it.
- Spot: EC2's current price per type and zone (DescribeSpotPriceHistory, read by the ec2
  provider). A fleet may launch in any of its types and zones, so the estimate prices every
  instance as the dearest of them (fleet_estimate); a pool without a spot price is priced
  on-demand, the most spot is charged. Spot is billed per second like on-demand.
- Public IPv4: every instance has one public address, at $0.005 per address-hour since
  1 February 2024 (aws.amazon.com/vpc/pricing, "Public IPv4 Address"), billed per second
  (docs.aws.amazon.com/vpc/latest/userguide/vpc-billing-usage-reports.html,
  `PublicIPv4:InUseAddress`). The estimate ignores the free tier's 750 address-hours.

EBS volumes and data transfer are left out: a few cents at most.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple

from .calibration import vcpus as vcpus_by_size

#: A burstable instance's credit option, as RunInstances' CreditSpecification names it.
CreditMode = Literal["standard", "unlimited"]
STANDARD: CreditMode = "standard"
UNLIMITED: CreditMode = "unlimited"

HOURLY_USD: Dict[str, float] = {
    "t2.nano": 0.0058,
    "t2.micro": 0.0116,
    "t2.small": 0.023,
    "t2.medium": 0.0464,
    "t2.large": 0.0928,
    "t2.xlarge": 0.1856,
    "t2.2xlarge": 0.3712,
    "t3.nano": 0.0052,
    "t3.micro": 0.0104,
    "t3.small": 0.0208,
    "t3.medium": 0.0416,
    "t3.large": 0.0832,
    "t3.xlarge": 0.1664,
    "t3.2xlarge": 0.3328,
    "t3a.nano": 0.0047,
    "t3a.micro": 0.0094,
    "t3a.small": 0.0188,
    "t3a.medium": 0.0376,
    "t3a.large": 0.0752,
    "t3a.xlarge": 0.1504,
    "t3a.2xlarge": 0.3008,
    "t4g.nano": 0.0042,
    "t4g.micro": 0.0084,
    "t4g.small": 0.0168,
    "t4g.medium": 0.0336,
    "t4g.large": 0.0672,
    "t4g.xlarge": 0.1344,
    "t4g.2xlarge": 0.2688,
    "c5.large": 0.085,
    "c5.xlarge": 0.17,
    "c6i.large": 0.085,
    "c6i.xlarge": 0.17,
    "c6a.large": 0.0765,
    "c6g.large": 0.068,
    "c7a.large": 0.1027,
    "c7a.xlarge": 0.2053,
    "c7a.2xlarge": 0.4106,
    "c7a.4xlarge": 0.8211,
    "c7i.large": 0.0893,
    "c7i.xlarge": 0.1785,
    "c7g.large": 0.0725,
    "c7g.xlarge": 0.145,
    "c7g.2xlarge": 0.29,
    "c8g.large": 0.0798,
    "m7a.large": 0.1159,
    "m7i.large": 0.1008,
    "m7g.large": 0.0816,
}
MINIMUM_BILLED_SECONDS = 60
PRICE_SOURCE = "built-in table, US East on-demand Linux, approximate: aws.amazon.com/ec2/pricing/on-demand"

_BURSTABLE_FAMILY = re.compile(r"t\d")
#: (vCPUs, baseline utilization per vCPU) of every burstable size, from AWS's credit table.
#: T3, T3a and T4g share their baselines; t2's small sizes have one vCPU.
BURSTABLE_SIZES: Dict[str, Tuple[int, float]] = {
    "t2.nano": (1, 0.05),
    "t2.micro": (1, 0.10),
    "t2.small": (1, 0.20),
    "t2.medium": (2, 0.20),
    "t2.large": (2, 0.30),
    "t2.xlarge": (4, 0.225),
    "t2.2xlarge": (8, 0.17),
    **{
        f"{name}.{size}": figures
        for name in ("t3", "t3a", "t4g")
        for size, figures in {
            "nano": (2, 0.05),
            "micro": (2, 0.10),
            "small": (2, 0.20),
            "medium": (2, 0.20),
            "large": (2, 0.30),
            "xlarge": (4, 0.40),
            "2xlarge": (8, 0.40),
        }.items()
    },
}
BASELINE_SOURCE = "docs.aws.amazon.com/AWSEC2/latest/UserGuide/burstable-credits-baseline-concepts.html"
#: USD per surplus vCPU-hour in unlimited mode, Linux.
SURPLUS_USD_PER_VCPU_HOUR: Dict[str, float] = {"t2": 0.05, "t3": 0.05, "t3a": 0.05, "t4g": 0.04}
#: A burstable family not listed above pays the highest listed rate, so the estimate errs high.
UNLISTED_SURPLUS_USD_PER_VCPU_HOUR = max(SURPLUS_USD_PER_VCPU_HOUR.values())
SURPLUS_SOURCE = "aws.amazon.com/ec2/pricing/on-demand, T2/T3/T4g Unlimited Mode Pricing"
#: AWS's default credit option per family where it is not unlimited (RunInstances, CreditSpecification).
DEFAULT_CREDITS: Dict[str, CreditMode] = {"t2": STANDARD}

PUBLIC_IPV4_USD_PER_HOUR = 0.005
PUBLIC_IPV4_SOURCE = "aws.amazon.com/vpc/pricing, Public IPv4 Address, charged since 1 Feb 2024"


def family(instance_type: str) -> str:
    """The family part of an instance type: 't3a' for t3a.micro."""
    return instance_type.split(".")[0]


def is_burstable(instance_type: str) -> bool:
    """True for the T families (t2, t3, t3a, t4g, …), whose CPU runs on credits; trn1 is not one."""
    return _BURSTABLE_FAMILY.match(family(instance_type)) is not None


def default_credits(instance_type: str) -> CreditMode:
    """AWS's credit option for a launch that names none: standard for t2, unlimited for t3, t3a
    and t4g (and, by assumption, for any later t family)."""
    return DEFAULT_CREDITS.get(family(instance_type), UNLIMITED)


def burstable_figures(instance_type: str) -> Tuple[int, float, bool]:
    """A burstable type's vCPUs, baseline per vCPU, and whether AWS's table gave them.

    A size not in the table is priced as if it had no baseline (the most it can cost), with
    vCPUs from its size name."""
    if instance_type in BURSTABLE_SIZES:
        vcpus, baseline = BURSTABLE_SIZES[instance_type]
        return vcpus, baseline, True
    return vcpus_by_size(instance_type), 0.0, False


def surplus_vcpu_hours_per_hour(instance_type: str) -> float:
    """vCPU-hours above the baseline in each hour all vCPUs run at 100%; 0 for other types."""
    if not is_burstable(instance_type):
        return 0.0
    vcpus, baseline, _ = burstable_figures(instance_type)
    return vcpus * (1.0 - baseline)


def surplus_price(instance_type: str) -> float:
    """USD per surplus vCPU-hour of a burstable type in unlimited mode (Linux)."""
    return SURPLUS_USD_PER_VCPU_HOUR.get(family(instance_type), UNLISTED_SURPLUS_USD_PER_VCPU_HOUR)


def hourly_price(instance_type: str) -> Optional[float]:
    """The built-in on-demand USD per hour of an instance type, if known."""
    return HOURLY_USD.get(instance_type)


def instance_cost(hourly: float, seconds: float) -> float:
    """USD for one instance running `seconds`, with per-second billing and its minimum."""
    return hourly * max(MINIMUM_BILLED_SECONDS, seconds) / 3600.0


def surplus_cost(instance_type: str, seconds: float, credits: CreditMode) -> float:
    """USD of surplus credits for one instance at 100% CPU for `seconds`; 0 unless unlimited."""
    if credits != UNLIMITED:
        return 0.0
    return surplus_vcpu_hours_per_hour(instance_type) * surplus_price(instance_type) * seconds / 3600.0


def public_ipv4_cost(seconds: float) -> float:
    """USD for one public IPv4 address held `seconds` (billed per second, no minimum)."""
    return PUBLIC_IPV4_USD_PER_HOUR * seconds / 3600.0


@dataclass(frozen=True)
class Charges:
    """What `count` instances of one type cost when they run flat out for `seconds` each."""

    instance_type: str
    count: int
    seconds: float
    credits: CreditMode
    #: USD per instance-hour when not the built-in on-demand price (a spot price).
    hourly: Optional[float] = None

    @property
    def instances(self) -> Optional[float]:
        """USD for the instances themselves, or None without a price."""
        hourly = hourly_price(self.instance_type) if self.hourly is None else self.hourly
        return None if hourly is None else instance_cost(hourly, self.seconds) * self.count

    @property
    def surplus_credits(self) -> float:
        """USD of CPU surplus credits: burstable types in unlimited mode only."""
        return surplus_cost(self.instance_type, self.seconds, self.credits) * self.count

    @property
    def public_ipv4(self) -> float:
        """USD for one public IPv4 address per instance."""
        return public_ipv4_cost(self.seconds) * self.count

    @property
    def total(self) -> Optional[float]:
        """Every component together, or None without a price for the instances."""
        if self.instances is None:
            return None
        return self.instances + self.surplus_credits + self.public_ipv4

    def breakdown(self) -> str:
        """The components as one sum: 'instances $0.0416 + CPU surplus credits $0.3600 + …'."""
        parts = [] if self.instances is None else [f"instances ${self.instances:.4f}"]
        if self.surplus_credits:
            parts.append(f"CPU surplus credits ${self.surplus_credits:.4f}")
        parts.append(f"public IPv4 ${self.public_ipv4:.4f}")
        return " + ".join(parts)


def credits_line(instance_type: str, credits: CreditMode, surplus: float) -> str:
    """What a burstable type's CPU credits add, and where the figures come from."""
    vcpus, baseline, listed = burstable_figures(instance_type)
    name, default = family(instance_type), default_credits(instance_type)
    if name not in SURPLUS_USD_PER_VCPU_HOUR:
        why = f"assumed, as for t3: {name} is not among {', '.join(SURPLUS_USD_PER_VCPU_HOUR)}"
    elif credits == default:
        why = f"AWS's default for {name}"
    else:
        why = f"as launched; AWS's default for {name} is {default}"
    assumed = "" if listed else f"; {instance_type} is not in AWS's credit table: no baseline assumed, {vcpus} vCPU(s) from its size"
    if credits == STANDARD:
        return (
            f"  CPU credits: {instance_type} runs standard ({why}): no surplus charge, but once its credits "
            f"run out the search is throttled to its {baseline * 100:g}% baseline per vCPU{assumed} ({BASELINE_SOURCE})"
        )
    rate = surplus_price(instance_type)
    listed_rate = "" if name in SURPLUS_USD_PER_VCPU_HOUR else " (the highest listed rate)"
    return (
        f"  CPU surplus credits ${surplus:.4f}: {instance_type} runs unlimited ({why}); at 100% CPU its "
        f"{vcpus} vCPU(s) × (1 − {baseline * 100:g}% baseline) = {surplus_vcpu_hours_per_hour(instance_type):g} "
        f"vCPU-h per instance-hour at ${rate:.2f}/vCPU-h{listed_rate}{assumed} "
        f"(baseline: {BASELINE_SOURCE}; price: {SURPLUS_SOURCE})"
    )


@dataclass(frozen=True)
class CostEstimate:
    """The most a run can cost: its instances flat out for the whole --timeout (or per hour without one)."""

    instance_type: str
    count: int
    #: The run's --timeout; None means unbounded, and the estimate is per hour.
    timeout: Optional[float]
    #: The credit option the instances launch with (it matters for burstable types only).
    credits: CreditMode
    #: A fleet of several types or spot instances: every instance is priced as its dearest
    #: choice, `instance_type` at `hourly` (None: no price known), as `price_source` says.
    fleet: Optional["FleetPricing"] = None

    @property
    def seconds(self) -> float:
        """The seconds per instance the estimate assumes."""
        return 3600.0 if self.timeout is None else self.timeout

    @property
    def hourly_each(self) -> Optional[float]:
        """The USD per hour of one instance, if known: the fleet's dearest choice, or the built-in price."""
        return self.fleet.hourly if self.fleet is not None else hourly_price(self.instance_type)

    @property
    def charges(self) -> Charges:
        """The estimate component by component."""
        return Charges(self.instance_type, self.count, self.seconds, self.credits, self.hourly_each)

    @property
    def total(self) -> Optional[float]:
        """The estimated USD for the whole fleet, every component included, or None without a price."""
        return self.charges.total

    def describe(self) -> str:
        """The estimate for the user: the total, then one line per component with its source."""
        span = "per hour (no --timeout)" if self.timeout is None else f"for up to {self.seconds / 60:.1f} min"
        charges = self.charges
        lines: List[str] = []
        fleet = self.fleet
        what = fleet.label if fleet is not None else self.instance_type
        if charges.total is None:
            lines.append(
                f"cost: no built-in price for {self.instance_type}; {self.count} × {what} {span}; "
                "check the EC2 pricing page (aws.amazon.com/ec2/pricing/on-demand); on top of that price:"
            )
        else:
            lines.append(f"cost estimate: at most ${charges.total:.4f} for {self.count} × {what} {span}:")
            each = "for an hour" if self.timeout is None else span
            priced = self.instance_type if fleet is None else f"{fleet.priced_as}, the dearest of the fleet's choices,"
            lines.append(
                f"  instances ${charges.instances:.4f}: {self.count} × {priced} at "
                f"${self.hourly_each:.4f}/h {each}, billed per second with a {MINIMUM_BILLED_SECONDS} s minimum "
                f"({PRICE_SOURCE if fleet is None else fleet.price_source})"
            )
        if is_burstable(self.instance_type):
            lines.append(credits_line(self.instance_type, self.credits, charges.surplus_credits))
        lines.append(
            f"  public IPv4 ${charges.public_ipv4:.4f}: one address per instance at "
            f"${PUBLIC_IPV4_USD_PER_HOUR:.3f}/h, billed per second ({PUBLIC_IPV4_SOURCE})"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class FleetChoice:
    """One instance a fleet may launch: its type, where, and its price per hour (None: unknown)."""

    instance_type: str
    hourly: Optional[float]
    #: Where it runs, for a person: "us-east-1a"; "" for an on-demand type in any zone.
    zone: str = ""


@dataclass(frozen=True)
class FleetPricing:
    """How a fleet's estimate prices each instance: as its dearest choice."""

    #: The fleet for a person: "c7a.large|c6a.large spot".
    label: str
    #: The dearest choice for a person: "c7a.large in us-east-1b".
    priced_as: str
    hourly: Optional[float]
    price_source: str


def fleet_estimate(
    choices: List[FleetChoice], count: int, timeout: Optional[float], label: str, price_source: str
) -> CostEstimate:
    """The most a fleet of `count` instances may cost when each may be any of `choices`: every
    instance priced as the dearest, CPU surplus credits and public IPv4 included (burstable
    types priced unlimited, which errs high for t2). Without a price for some choice, no total."""

    def per_hour(choice: FleetChoice) -> float:
        total = Charges(choice.instance_type, 1, 3600.0, _fleet_credits(choice.instance_type), choice.hourly).total
        return float("inf") if total is None else total

    dearest = max(choices, key=per_hour)
    where = f" in {dearest.zone}" if dearest.zone else ""
    pricing = FleetPricing(label, f"{dearest.instance_type}{where}", dearest.hourly, price_source)
    return CostEstimate(dearest.instance_type, count, timeout, _fleet_credits(dearest.instance_type), pricing)


def _fleet_credits(instance_type: str) -> CreditMode:
    return UNLIMITED if is_burstable(instance_type) else default_credits(instance_type)


def estimate(
    instance_type: str, count: int, timeout: Optional[float], credits: Optional[CreditMode] = None
) -> CostEstimate:
    """The most a run of `count` instances may cost; `credits` defaults to AWS's for the family."""
    return CostEstimate(instance_type, count, timeout, credits or default_credits(instance_type))


def incurred(
    instance_type: str, count: int, seconds: float, credits: Optional[CreditMode] = None, hourly: Optional[float] = None
) -> Optional[float]:
    """USD for `count` instances that ran `seconds` each, every component, or None without a
    price; `hourly` instead of the built-in on-demand price (a spot price)."""
    return Charges(instance_type, count, seconds, credits or default_credits(instance_type), hourly).total
