"""What a run costs: a built-in on-demand price table and per-second billing.

Prices are approximate US East (N. Virginia) on-demand Linux prices in USD per hour; other
regions cost up to about 30% more. EC2 bills Linux instances per second with a one-minute
minimum, so a short run costs at least one minute per instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

HOURLY_USD: Dict[str, float] = {
    "t3.micro": 0.0104,
    "t3.small": 0.0208,
    "t3.medium": 0.0416,
    "t3.large": 0.0832,
    "t3.xlarge": 0.1664,
    "t3a.medium": 0.0376,
    "t3a.large": 0.0752,
    "t4g.small": 0.0168,
    "t4g.medium": 0.0336,
    "t4g.large": 0.0672,
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
PRICE_SOURCE = "built-in table, US East on-demand Linux, approximate"


@dataclass(frozen=True)
class CostEstimate:
    """The most a run can cost: its instances for the whole --timeout (or per hour without one)."""

    instance_type: str
    count: int
    hourly_each: Optional[float]
    #: The run's --timeout; None means unbounded, and the estimate is per hour.
    timeout: Optional[float]

    @property
    def seconds(self) -> float:
        """The billed seconds per instance the estimate assumes."""
        return 3600.0 if self.timeout is None else self.timeout

    @property
    def total(self) -> Optional[float]:
        """The estimated USD for the whole fleet, or None without a price."""
        if self.hourly_each is None:
            return None
        return instance_cost(self.hourly_each, self.seconds) * self.count

    def describe(self) -> str:
        """The estimate as one line for the user, with its assumptions."""
        span = "per hour (no --timeout)" if self.timeout is None else f"for up to {self.seconds / 60:.1f} min"
        if self.hourly_each is None:
            return (
                f"cost: no built-in price for {self.instance_type}; {self.count} instance(s) {span}; "
                "check the EC2 pricing page"
            )
        return (
            f"cost estimate: {self.count} × {self.instance_type} at ${self.hourly_each:.4f}/h {span} "
            f"= ${self.total:.4f} ({PRICE_SOURCE})"
        )


def hourly_price(instance_type: str) -> Optional[float]:
    """The built-in on-demand USD per hour of an instance type, if known."""
    return HOURLY_USD.get(instance_type)


def instance_cost(hourly: float, seconds: float) -> float:
    """USD for one instance running `seconds`, with per-second billing and its minimum."""
    return hourly * max(MINIMUM_BILLED_SECONDS, seconds) / 3600.0


def estimate(instance_type: str, count: int, timeout: Optional[float]) -> CostEstimate:
    """The most a run of `count` instances may cost, or None without a price."""
    return CostEstimate(instance_type, count, hourly_price(instance_type), timeout)
