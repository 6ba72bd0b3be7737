"""The --within model against many simulated runs driven by the real scheduler."""

from __future__ import annotations

import heapq
import math
import random
from typing import Dict, List, Optional, Tuple

import pytest

from cnd_fab.model import FleetModel, HostModel, smallest_fleet
from cnd_fab.schedule import GRANTS_AHEAD, GoldenNonce, Scheduler, grant_size
from cnd_fab.spec import UnitSpace


def simulate(model: FleetModel, hosts: int, host: HostModel, rng: random.Random, jitter: float = 0.0) -> float:
    """One run under the model's assumptions: independent golden nonces (each unit's first
    one drawn as a geometric offset when the unit is reached), hosts of the given rate and
    startup (optionally jittered), grants from the real Scheduler sized by the fleet's own
    rule (grant_size), each host holding GRANTS_AHEAD of them and hashing its units lowest
    first, a new grant given as one settles. Returns the time the answer is settled."""
    space = UnitSpace(4, model.space // model.unit_size)
    log_q = math.log1p(-(2.0 ** -model.difficulty))
    first_golden: Dict[int, Optional[int]] = {}

    def golden_in(index: int) -> Optional[int]:
        if index not in first_golden:
            offset = int(math.log(1 - rng.random()) / log_q)
            first_golden[index] = space.unit(index).start + offset if offset < space.unit_size else None
        return first_golden[index]

    scheduler = Scheduler(space, model.first_found_wins)
    names = [f"h{i}" for i in range(hosts)]
    rates = {n: host.rate * (1 + jitter * rng.uniform(-1, 1)) for n in names}
    grants: Dict[str, List[range]] = {n: [] for n in names}
    largest: Dict[str, int] = {n: 0 for n in names}
    running: Dict[str, Optional[int]] = {n: None for n in names}
    events: List[Tuple[float, str, int]] = []

    def give(name: str, ready: int) -> None:
        while len(grants[name]) < GRANTS_AHEAD:
            fair_share = max(1, scheduler.units_left() // (GRANTS_AHEAD * ready))
            most = grant_size(model.prefetch, largest[name], rates[name], space.unit_size, fair_share)
            grant = scheduler.take_run(name, most)
            if not grant:
                return
            grants[name].append(grant)

    def start_next(name: str, now: float) -> None:
        if running[name] is not None:
            return
        for grant in grants[name]:
            waiting = [index for index in grant if scheduler.holds(name, index)]
            if waiting:
                unit = space.unit(waiting[0])
                golden = golden_in(unit.index)
                length = unit.size if golden is None else golden - unit.start + 1
                running[name] = unit.index
                heapq.heappush(events, (now + length / rates[name], name, unit.index))
                return

    for name in names:
        scheduler.add_host(name)
        give(name, 1)  # at its HELLO the fleet has counted one host ready
    for name in names:
        start_next(name, host.startup * (1 + jitter * rng.uniform(-1, 1)))
    while events:
        now, name, index = heapq.heappop(events)
        if running[name] != index:
            continue
        running[name] = None
        golden = golden_in(index)
        found = None if golden is None else GoldenNonce(index, golden, "")
        if found is not None and model.first_found_wins:
            scheduler.found(name, found)
        else:
            scheduler.complete(name, index, found)
        if scheduler.finished:
            return now
        for other in names:
            kept = []
            for grant in grants[other]:
                if any(scheduler.holds(other, unit) for unit in grant):
                    kept.append(grant)
                elif other == name and index in grant and grant[-1] == index:
                    largest[other] = max(largest[other], len(grant))  # settled whole
            grants[other] = kept
            if running[other] is not None and not scheduler.holds(other, running[other]):
                running[other] = None  # cancelled above a golden unit
        give(name, hosts)
        for other in names:
            start_next(other, now)
    return math.inf


CASES = [
    # difficulty, units, hosts, within, any
    (20, 1024, 1, 3.0, False),
    (20, 16384, 4, 3.0, False),
    (20, 1024, 4, 3.5, False),
    (22, 4096, 3, 4.0, False),
    (22, 16384, 8, 3.0, False),
    (18, 65536, 2, 2.3, False),
    # Grants grow to about 1.5 s of work (22 units) and run for rounds: the closed-form part.
    (24, 65536, 4, 9.0, False),
    (22, 4096, 4, 3.0, True),
]


@pytest.mark.parametrize("difficulty, units, hosts, within, any_mode", CASES)
def test_model_matches_simulated_runs(difficulty: int, units: int, hosts: int, within: float, any_mode: bool) -> None:
    model = FleetModel(difficulty, 1 << 32, (1 << 32) // units, 2, any_mode)
    host = HostModel(1e6, 2.0, "test")
    rng = random.Random(difficulty * 1000 + units + hosts)
    runs = 1500
    settled = sum(simulate(model, hosts, host, rng) <= within for _ in range(runs))
    predicted = model.probability(hosts, host, within)
    sigma = math.sqrt(predicted * (1 - predicted) / runs)
    assert abs(settled / runs - predicted) <= 3.5 * sigma + 1e-9, (settled / runs, predicted)


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.99])
def test_chosen_fleet_reaches_the_confidence_in_simulation(confidence: float) -> None:
    model = FleetModel(22, 1 << 32, 1 << 18, 2, False)
    host = HostModel(1e6, 1.0, "test")
    plan = smallest_fleet(model, host, within=4.0, confidence=confidence, most=64)
    assert plan.reached and plan.probability >= confidence
    if plan.hosts > 1:
        assert model.probability(plan.hosts - 1, host, 4.0) < confidence  # the smallest such fleet
    rng = random.Random(int(confidence * 1000))
    runs = 2000
    settled = sum(simulate(model, plan.hosts, host, rng, jitter=0.02) <= 4.0 for _ in range(runs)) / runs
    sigma = math.sqrt(plan.probability * (1 - plan.probability) / runs)
    assert settled >= confidence - 3.5 * sigma - 0.01, (settled, plan)
    assert abs(settled - plan.probability) <= 3.5 * sigma + 0.02, (settled, plan)


def test_more_hosts_never_hurt_and_the_space_caps_everything() -> None:
    model = FleetModel(32, 1 << 32, 1 << 22, 2, False)
    host = HostModel(2e7, 5.0, "test")
    chances = [model.probability(n, host, 600.0) for n in (1, 2, 4, 8, 16, 64, 256)]
    assert all(later >= earlier - 1e-12 for earlier, later in zip(chances, chances[1:]))
    # 2^32 nonces at D = 32: about 37% of spaces hold none, so no fleet passes 63.3%.
    assert model.space_holds_one() == pytest.approx(0.632, abs=1e-3)
    assert model.probability(100_000, host, 10_000.0) <= model.space_holds_one() + 1e-12
    plan = smallest_fleet(model, host, 600.0, 0.9, 256)
    assert not plan.reached and plan.probability <= model.space_holds_one() + 1e-12


def test_no_time_to_work_is_no_chance() -> None:
    model = FleetModel(8, 1 << 32, 1 << 22, 2, False)
    assert model.probability(10, HostModel(1e7, 30.0, "t"), 29.0) == 0.0
