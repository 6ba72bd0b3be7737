"""How likely a fleet is to settle the answer within T seconds, and the smallest fleet for it.

The model, stated so it can be checked:

- each nonce is golden with probability p = 2^-D, independently, so the first golden nonce
  x is geometric: P(x >= a) = (1 - p)^a;
- every host hashes at the same rate r from its startup s on (measured by `fab calibrate`,
  or a built-in default);
- units go out lowest first in grants of consecutive units, exactly as the fleet hands them
  out (schedule.grant_size): every host holds GRANTS_AHEAD grants. Its first two, given at
  its HELLO, share its `prefetch`; each later one is given when a grant settles, grown up to
  GRANT_GROWTH times the largest settled so far and capped at GRANT_SECONDS of its work and
  at its share of what is left. Identical hosts run in step, so the grants form rounds: in
  round k every host runs a grant of s_k units, host i the i-th lowest; rounds 0 and 1 are
  the first two grants, host i holding units 2i*s_0 .. 2(i+1)*s_0 - 1;
- a grant is hashed in index order (the worker cuts it into chunks across its cores, lowest
  first), so a golden nonce at offset o of a grant that starts at time t0 is seen at
  t0 + (o + 1) / r;
- with the lowest-nonce rule, the answer is settled only when every unit below its unit is
  done too: of a round's grants only the lowest settles while it is hashed (once every
  earlier round is done), the others when the round ends; with --any, the first golden nonce
  any host sees ends the run.

P(settled by T) sums, over the rounds, the chance that the first golden nonce falls in the
part of that round that is settled by T. Once grants stop growing, the whole rounds that end
before T are one contiguous range, so they sum in closed form, however many there are; the
sum stops where the remaining probability is negligible or the space ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .schedule import GRANTS_AHEAD, grant_size

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
    #: Units each host's HELLO asks to hold: its first grants share them.
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
        return self._lowest_first(hosts, host.rate, working)

    def _lowest_first(self, hosts: int, rate: float, working: float) -> float:
        """P(settled within `working` seconds of hashing) with the lowest-nonce rule."""
        size = self.unit_size
        units = self.space // size
        unit_seconds = size / rate

        def settled_while_hashed(first: int, grant: int, began: float) -> float:
            return self.chance_in(first * size, min(grant * size, (working - began) * rate))

        # Rounds 0 and 1: every host's first two grants, given together at its HELLO (when
        # one host is counted ready, so its fair share is half the space).
        grant = grant_size(self.prefetch, 0, rate, size, max(1, units // GRANTS_AHEAD))
        first_two = min(units, GRANTS_AHEAD * hosts * grant)
        round_ends = (grant * unit_seconds, 2 * grant * unit_seconds)
        if round_ends[1] <= working:
            total = self.chance_in(0, first_two * size)
        else:
            total = settled_while_hashed(0, grant, 0.0)
            if round_ends[0] <= working and grant < units:
                total += settled_while_hashed(grant, min(grant, units - grant), round_ends[0])
            return min(1.0, total)
        # Later rounds: a host's next grant is given when its grant before last settles, and
        # runs when its last one ends.
        sizes = [grant, grant]
        first, ended = first_two, round_ends[1]
        while first < units:
            fair_share = max(1, (units - first) // (GRANTS_AHEAD * hosts))
            grant = grant_size(self.prefetch, max(sizes[:-1]), rate, size, fair_share)
            if grant == sizes[-1] == sizes[-2]:
                # Grants stopped growing: whole rounds of this size until T, while the share
                # left stays above it, sum in closed form.
                rounds = min(
                    int((working - ended) // (grant * unit_seconds)),
                    max(0, (units - first - GRANTS_AHEAD * hosts * grant) // (hosts * grant)),
                )
                if rounds > 0:
                    total += self.chance_in(first * size, rounds * hosts * grant * size)
                    first += rounds * hosts * grant
                    ended += rounds * grant * unit_seconds
                    continue
            in_round = min(hosts * grant, units - first)
            if ended + grant * unit_seconds <= working:
                total += self.chance_in(first * size, in_round * size)
            else:
                if ended < working:
                    total += settled_while_hashed(first, min(grant, in_round), ended)
                break
            sizes.append(grant)
            first += in_round
            ended += grant * unit_seconds
            if math.exp(first * size * self.log_q) < NEGLIGIBLE:
                break
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
