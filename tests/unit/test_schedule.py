"""The scheduler, driven by simulated hosts of random speed that fail at random."""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Set, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from cnd_fab.schedule import GoldenNonce, Scheduler, SettledUnits
from cnd_fab.spec import UnitSpace


class SimulatedRun:
    """A fleet in which the goldens are known in advance and hosts die on a coin toss."""

    def __init__(
        self,
        space: UnitSpace,
        goldens: List[int],
        speeds: List[int],
        failure_rate: float,
        seed: int,
        first_found_wins: bool = False,
        prefetch: int = 2,
        grant: int = 0,
    ) -> None:
        self.space = space
        self.goldens = sorted(goldens)
        self.random = random.Random(seed)
        self.scheduler = Scheduler(space, first_found_wins)
        self.failure_rate = failure_rate
        self.prefetch = prefetch
        #: Units per grant (take_run), as the fleet gives them; 0: one take() per unit.
        self.grant = grant
        self.speeds: Dict[str, int] = {}
        self.queues: Dict[str, List[int]] = {}
        self.lost: Set[str] = set()
        self.accepted: List[int] = []
        self.joined = 0
        for speed in speeds:
            self.join(speed)

    def join(self, speed: int) -> None:
        name = f"host-{self.joined}"
        self.joined += 1
        self.speeds[name] = speed
        self.queues[name] = []
        self.scheduler.add_host(name)
        self.fill(name)

    def fill(self, name: str) -> None:
        if self.grant:
            while self.scheduler.held_count(name) < self.prefetch * self.grant:
                run = list(self.scheduler.take_run(name, self.random.randint(1, self.grant)))
                if not run:
                    return
                # A grant is one unbroken range, and no lower unit is left free beside it.
                assert run == list(range(run[0], run[0] + len(run)))
                assert self.scheduler.units_left() == 0 or not self._free_below(run[0])
                self.queues[name].extend(run)
            return
        wanted = self.prefetch - len(self.scheduler.held_by(name))
        if wanted > 0:
            self.queues[name].extend(u.index for u in self.scheduler.take(name, wanted))

    def _free_below(self, index: int) -> bool:
        """True if some unit below `index` is neither settled nor held: a grant skipped it."""
        settled = self.scheduler.settled_units()
        return any(
            below not in settled and not any(self.scheduler.holds(h, below) for h in self.speeds)
            for below in range(min(index, self.scheduler.cutoff))
        )

    def lowest_golden_in(self, index: int) -> Optional[int]:
        unit = self.space.unit(index)
        return next((g for g in self.goldens if unit.start <= g < unit.end), None)

    def step(self) -> None:
        alive = [n for n in self.speeds if n not in self.lost and self.queues[n]]
        if not alive:
            # Everyone died or is idle: a fresh host joins, as a reissue target.
            self.join(self.random.randint(1, 5))
            return
        name = self.random.choices(alive, weights=[self.speeds[n] for n in alive])[0]
        if self.random.random() < self.failure_rate:
            self.lost.add(name)
            self.scheduler.host_lost(name)
            # A lost host may still answer late; that answer must be refused.
            if self.queues[name]:
                index = self.queues[name][0]
                late = self.scheduler.complete(name, index, self._golden(index))
                assert not late.accepted
            for other in self.speeds:
                if other not in self.lost:
                    self.fill(other)
            return
        index = self.queues[name].pop(0)
        golden = self._golden(index)
        if self.scheduler.first_found_wins and golden is not None:
            outcome = self.scheduler.found(name, golden)
        else:
            outcome = self.scheduler.complete(name, index, golden)
            if outcome.accepted:
                self.accepted.append(index)
        if outcome.above is not None:
            for host in outcome.cancel_hosts:
                self.queues[host] = [u for u in self.queues[host] if u <= outcome.above]
        for other in self.speeds:
            if other not in self.lost:
                self.fill(other)

    def _golden(self, index: int) -> Optional[GoldenNonce]:
        nonce = self.lowest_golden_in(index)
        return None if nonce is None else GoldenNonce(index, nonce, "")

    def run(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if self.scheduler.finished:
                return
            self.step()
        raise AssertionError("the simulated run did not finish")


unit_counts = st.sampled_from([1, 2, 4, 8, 16, 64, 256])


@settings(max_examples=300, deadline=None)
@given(
    count=unit_counts,
    golden_fractions=st.lists(st.floats(0, 1, exclude_max=True), max_size=6),
    speeds=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    failure_rate=st.sampled_from([0.0, 0.01, 0.1, 0.3]),
    prefetch=st.integers(1, 4),
    grant=st.sampled_from([0, 0, 1, 3, 8]),
    seed=st.integers(0, 2**32),
)
def test_lowest_golden_and_every_nonce_below_it_settled_once(
    count: int,
    golden_fractions: List[float],
    speeds: List[int],
    failure_rate: float,
    prefetch: int,
    grant: int,
    seed: int,
) -> None:
    space = UnitSpace(4, count)
    goldens = [int(f * space.space) for f in golden_fractions]
    run = SimulatedRun(space, goldens, speeds, failure_rate, seed, prefetch=prefetch, grant=grant)
    run.run()
    scheduler = run.scheduler
    answer = min(goldens) if goldens else None
    if answer is None:
        assert scheduler.best is None
        assert sorted(run.accepted) == list(range(count))
        assert scheduler.nonces_settled == space.space
        return
    assert scheduler.best is not None and scheduler.best.nonce == answer
    answer_unit = space.unit_of(answer)
    below = [index for index in run.accepted if index <= answer_unit]
    # Each unit up to the answer's was accepted exactly once, whoever died on the way.
    assert sorted(below) == list(range(answer_unit + 1))
    assert scheduler.nonces_settled == answer + 1


@settings(max_examples=150, deadline=None)
@given(
    count=unit_counts,
    golden_fractions=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=6),
    speeds=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    failure_rate=st.sampled_from([0.0, 0.1]),
    grant=st.sampled_from([0, 4]),
    seed=st.integers(0, 2**32),
)
def test_any_mode_stops_at_a_golden_nonce(
    count: int, golden_fractions: List[float], speeds: List[int], failure_rate: float, grant: int, seed: int
) -> None:
    space = UnitSpace(4, count)
    goldens = [int(f * space.space) for f in golden_fractions]
    run = SimulatedRun(space, goldens, speeds, failure_rate, seed, first_found_wins=True, grant=grant)
    run.run()
    assert run.scheduler.best is not None and run.scheduler.best.nonce in goldens
    assert run.scheduler.in_flight == 0


def test_a_grant_is_consecutive_and_stops_at_a_held_or_settled_unit() -> None:
    scheduler = Scheduler(UnitSpace(4, 64))
    for host in "abc":
        scheduler.add_host(host)
    assert list(scheduler.take_run("a", 4)) == [0, 1, 2, 3]
    assert list(scheduler.take_run("b", 4)) == [4, 5, 6, 7]
    assert scheduler.complete("a", 1, None).accepted
    scheduler.host_lost("b")  # 4..7 wait to be reissued, ahead of fresh units
    assert list(scheduler.take_run("c", 6)) == [4, 5, 6, 7, 8, 9]
    assert list(scheduler.take_run("c", 2)) == [10, 11]
    scheduler.host_lost("a")  # 0, 2, 3 back; 1 is settled, so 0 alone is a grant
    assert list(scheduler.take_run("c", 8)) == [0]
    assert list(scheduler.take_run("c", 8)) == [2, 3]
    assert scheduler.units_left() == 64 - 12


def test_wide_space_is_never_listed() -> None:
    space = UnitSpace(8, 1 << 42)
    scheduler = Scheduler(space)
    scheduler.add_host("a")
    units = scheduler.take("a", 3)
    assert [u.index for u in units] == [0, 1, 2]
    assert scheduler.cutoff == 1 << 42 and not scheduler.finished
    scheduler.complete("a", 1, GoldenNonce(1, units[1].start + 5, ""))
    assert scheduler.cutoff == 2
    assert scheduler.held_by("a") == {0}


def test_reissued_units_go_out_before_fresh_ones() -> None:
    scheduler = Scheduler(UnitSpace(4, 16))
    for host in ("a", "b"):
        scheduler.add_host(host)
    assert [u.index for u in scheduler.take("a", 2)] == [0, 1]
    assert [u.index for u in scheduler.take("b", 2)] == [2, 3]
    assert scheduler.host_lost("a") == [0, 1]
    assert [u.index for u in scheduler.take("b", 3)] == [0, 1, 4]
    assert scheduler.reissued == 2


def test_golden_cancels_units_above_and_waits_for_those_below() -> None:
    scheduler = Scheduler(UnitSpace(4, 16))
    for host in ("a", "b"):
        scheduler.add_host(host)
    scheduler.take("a", 2)  # 0, 1
    scheduler.take("b", 2)  # 2, 3
    unit2 = scheduler.space.unit(2)
    completion = scheduler.complete("b", 2, GoldenNonce(2, unit2.start + 7, ""))
    assert completion.cancel_hosts == ["b"] and completion.above == 2
    assert scheduler.held_by("b") == set()
    assert not scheduler.finished
    assert scheduler.take("b", 5) == []  # nothing above unit 2 is issued any more
    scheduler.complete("a", 0, None)
    scheduler.complete("a", 1, None)
    assert scheduler.finished and scheduler.best is not None
    assert scheduler.nonces_settled == unit2.start + 8


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 12)), max_size=40))
def test_unit_runs_behave_as_a_set_of_units(steps: List[Tuple[bool, int, int]]) -> None:
    from cnd_fab.schedule import UnitRuns

    runs, model = UnitRuns(), set()
    for adding, start, length in steps:
        span = set(range(start, start + length))
        if adding:
            runs.add(start, start + length)
            model |= span
        else:
            removed = runs.remove(start, start + length)
            assert [unit for low, high in removed for unit in range(low, high)] == sorted(model & span)
            model -= span
        pieces = list(runs.runs())
        # Disjoint, sorted and never touching: one run per stretch of consecutive units.
        assert all(high < low for (_, high), (low, _) in zip(pieces, pieces[1:]))
        assert list(runs.units()) == sorted(model) and len(runs) == len(model)
        for probe in range(0, 75):
            assert (probe in runs) == (probe in model)
            following = [unit for unit in sorted(model) if unit >= probe]
            assert runs.next_start(probe) == (following[0] if following else None)


def test_settled_units_jump_over_runs_and_keep_the_prefix() -> None:
    from cnd_fab.schedule import SettledUnits

    settled = SettledUnits(2, [5, 6, 9])
    assert settled.prefix == 2 and settled.next_unsettled(0) == 2 and settled.next_unsettled(5) == 7
    assert settled.next_settled(3) == 5 and settled.next_settled(10) is None
    settled.add_run(2, 5)
    assert settled.prefix == 7 and settled.above_runs() == ((9, 10),)
    settled.add_run(7, 12)
    assert settled.prefix == 12 and len(settled) == 12 and settled.above_runs() == ()
    settled.drop_from(4)
    assert settled.prefix == 4 and 5 not in settled


def test_a_grant_runs_from_reissued_units_into_fresh_ones_and_stops_at_a_settled_unit() -> None:
    scheduler = Scheduler(UnitSpace(4, 64))
    for host in "abc":
        scheduler.add_host(host)
    assert scheduler.take_run("a", 4) == range(0, 4)
    assert scheduler.take_run("b", 4) == range(4, 8)
    scheduler.complete_run("a", 0, 2, None)
    scheduler.host_lost("b")
    # 4..7 wait to be reissued and are followed by fresh 8.., so one grant takes both.
    assert scheduler.take_run("c", 6) == range(4, 10)
    scheduler.host_lost("a")
    assert scheduler.take_run("c", 6) == range(2, 4)  # 4.. is held: the grant stops there
    resumed = Scheduler(UnitSpace(4, 64), settled=SettledUnits(0, [3, 4]))
    resumed.add_host("a")
    assert resumed.take_run("a", 8) == range(0, 3) and resumed.take_run("a", 8) == range(5, 13)
