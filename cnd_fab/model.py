"""How likely a fleet is to settle the answer within T seconds, and the smallest fleet for it.

The model, stated so it can be checked:

- each nonce is golden with probability p = 2^-D, independently, so the first golden nonce
  x is geometric: P(x >= a) = (1 - p)^a;
- every host hashes at the same rate r from its startup s on (measured by `fab calibrate`,
  or a built-in default);
- units go out lowest first, `prefetch` per host, exactly as the scheduler hands them out:
  host i starts with units k*i .. k*i + k - 1 and works through its queue in index order, so
  unit k*i + j runs in wave j, and unit k*N + m (m >= 0) runs in wave k + floor(m / N);
- a unit is hashed in index order inside (the worker splits it across the host's cores
  lowest chunk first), so a golden nonce at offset o of a unit that starts at time t0 is seen
  at t0 + (o + 1) / r;
- with the lowest-nonce rule, the answer is settled only when every unit below its unit is
  done too, so of the N units in one wave only the lowest settles while it is hashed, the
  others when the wave ends; with --any, the first golden nonce any host sees ends the run.

P(settled by T) sums, over the units, the chance that the first golden nonce falls in the
part of that unit that is settled by T. Blocks of N units run in the same wave, so each
block is one closed-form geometric sum, and the sum stops where the remaining probability
is negligible or the space ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NEGLIGIBLE = 1e-15


@dataclass(frozen=True)
class HostModel:
    """One host's expected behaviour: hashes per second and seconds from launch to work."""

    rate: float
    startup: float
    source: str


@dataclass(frozen=True)
class FleetModel:
    """The search's side of the model: difficulty, space, unit size and rules."""

    difficulty: int
    space: int
    unit_size: int
    prefetch: int
    first_found_wins: bool

    @property
    def log_q(self) -> float:
        """log(1 - p): the log-chance that one nonce is not golden."""
        return math.log1p(-(2.0 ** -self.difficulty))

    def chance_in(self, start: float, length: float) -> float:
        """P(the first golden nonce lies in [start, start + length))."""
        if length <= 0:
            return 0.0
        return math.exp(start * self.log_q) * -math.expm1(length * self.log_q)

    def space_holds_one(self) -> float:
        """The chance that the whole space holds a golden nonce at all."""
        return -math.expm1(self.space * self.log_q)

    def probability(self, hosts: int, host: HostModel, within: float) -> float:
        """P(the answer is settled within `within` seconds of launch) with `hosts` hosts."""
        working = within - host.startup
        if working <= 0 or host.rate <= 0:
            return 0.0
        if self.first_found_wins:
            return self.chance_in(0, min(self.space, hosts * host.rate * working))
        unit_seconds = self.unit_size / host.rate
        units = self.space // self.unit_size
        k = self.prefetch
        total = 0.0
        lower_done = 0.0  # waves until every unit below the current one is done
        for unit in range(min(k * hosts, units)):
            wave = unit % k
            began = wave * unit_seconds
            if lower_done * unit_seconds <= working:
                total += self.chance_in(unit * self.unit_size, min(self.unit_size, (working - began) * host.rate))
            lower_done = max(lower_done, wave + 1)
        # Whole waves that end before the deadline settle all their units: together they
        # are one contiguous range, so they sum in closed form, however many there are.
        block = 0
        if units > k * hosts:
            block = int(min(max(0.0, math.floor(working / unit_seconds) - k), (units - k * hosts) // hosts))
            total += self.chance_in(k * hosts * self.unit_size, block * hosts * self.unit_size)
        while True:
            first = k * hosts + block * hosts
            began = (k + block) * unit_seconds
            if first >= units or began >= working:
                break
            count = min(hosts, units - first)
            # The wave's lowest unit settles as it is hashed; the others only when the whole
            # wave is done, since a unit is settled only with every unit below it.
            remaining = math.exp(first * self.unit_size * self.log_q)
            total += remaining * -math.expm1(min(self.unit_size, (working - began) * host.rate) * self.log_q)
            if count > 1 and (k + block + 1) * unit_seconds <= working:
                total += self.chance_in((first + 1) * self.unit_size, (count - 1) * self.unit_size)
            if remaining < NEGLIGIBLE:
                break
            block += 1
        return min(1.0, total)


@dataclass(frozen=True)
class Plan:
    """A fleet size and the chance it settles the answer in time."""

    hosts: int
    probability: float
    reached: bool


def smallest_fleet(model: FleetModel, host: HostModel, within: float, confidence: float, most: int) -> Plan:
    """The fewest hosts (up to `most`) whose probability reaches `confidence`, else the best."""
    best = Plan(1, model.probability(1, host, within), False)
    low, high = 1, most
    # P grows with the number of hosts, so a binary search finds the smallest that reaches.
    if model.probability(most, host, within) < confidence:
        for hosts in sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, most}):
            if hosts <= most:
                chance = model.probability(hosts, host, within)
                if chance > best.probability:
                    best = Plan(hosts, chance, False)
        return best
    while low < high:
        middle = (low + high) // 2
        if model.probability(middle, host, within) >= confidence:
            high = middle
        else:
            low = middle + 1
    return Plan(low, model.probability(low, host, within), True)


def expected_nonces(difficulty: int) -> float:
    """Nonces expected before the first golden one, 2^D."""
    return 2.0 ** difficulty


def describe(model: FleetModel, host: HostModel, plan: Plan, within: float, confidence: float) -> str:
    """The plan explained in one paragraph, with the source of every figure."""
    return (
        f"model: about 2^{model.difficulty} = {expected_nonces(model.difficulty):,.0f} nonces to the first golden one; "
        f"each host {host.rate / 1e6:.2f} MH/s after {host.startup:.1f}s of start-up ({host.source}); "
        f"{plan.hosts} host(s) settle the answer within {within:g}s with probability {plan.probability:.3f} "
        f"(asked: {confidence:.3f}); the space holds a golden nonce with probability {model.space_holds_one():.3f}"
    )
