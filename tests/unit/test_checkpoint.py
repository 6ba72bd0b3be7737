"""Checkpoints: settled units kept compactly, a scheduler that resumes from them, and a stored
form that refuses anything it did not write itself."""

from __future__ import annotations

import json
import random
from typing import Any, Callable, Dict, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnd_fab.checkpoint import Checkpoint, checkpoint_of
from cnd_fab.schedule import GoldenNonce, Scheduler, SettledUnits
from cnd_fab.spec import Problem, UnitSpace

BLOCK = b"COMSM0010cloud"
PROBLEM = Problem(BLOCK, 4, 8)
SPACE = UnitSpace(4, 1 << 12)
# The lowest golden nonce at D=8 (SPEC's vectors): 330, in unit 0.
LOWEST_D8 = GoldenNonce(0, 330, PROBLEM.hash(330).hex())


def above_units(settled: SettledUnits) -> Tuple[int, ...]:
    """The settled units above the prefix, one by one."""
    return tuple(unit for start, end in settled.above_runs() for unit in range(start, end))


@given(st.lists(st.integers(0, 200), max_size=300))
@settings(max_examples=200, deadline=None)
def test_settled_units_behave_like_a_set_and_stay_compact(indices: list) -> None:
    settled = SettledUnits()
    for index in indices:
        settled.add(index)
    expected = set(indices)
    assert len(settled) == len(expected)
    assert all((index in settled) == (index in expected) for index in range(210))
    prefix = 0
    while prefix in expected:
        prefix += 1
    assert settled.prefix == prefix
    assert above_units(settled) == tuple(sorted(index for index in expected if index > prefix))


def test_settled_units_drop_what_a_golden_nonce_made_pointless() -> None:
    settled = SettledUnits(10, (12, 15, 40))
    settled.drop_from(13)
    assert settled.prefix == 10 and above_units(settled) == (12,)
    settled.drop_from(5)
    assert settled.prefix == 5 and above_units(settled) == () and len(settled) == 5


def test_a_resumed_scheduler_never_issues_a_settled_unit() -> None:
    settled = SettledUnits(3, (4, 7))
    scheduler = Scheduler(UnitSpace(4, 16), settled=settled)
    scheduler.add_host("h")
    issued = [unit.index for unit in scheduler.take("h", 100)]
    assert issued == [3, 5, 6] + list(range(8, 16))
    assert scheduler.units_settled == 5
    for index in issued:
        scheduler.complete("h", index, None)
    assert scheduler.finished and scheduler.nonces_settled == 16 * UnitSpace(4, 16).unit_size


def test_a_known_golden_nonce_bounds_a_resumed_search_even_before_its_unit_settles() -> None:
    space = UnitSpace(4, 1024)
    known = GoldenNonce(5, 5 * space.unit_size + 17, "00" * 32)
    scheduler = Scheduler(space, settled=SettledUnits(2, (9,)), known=known)
    assert scheduler.cutoff == 6 and scheduler.best is None  # unit 5 may hold a lower one
    scheduler.add_host("h")
    assert [unit.index for unit in scheduler.take("h", 100)] == [2, 3, 4, 5]


def test_a_settled_known_golden_nonce_is_the_answer_at_once() -> None:
    space = UnitSpace(4, 1024)
    known = GoldenNonce(5, 5 * space.unit_size + 17, "00" * 32)
    scheduler = Scheduler(space, settled=SettledUnits(6), known=known)
    assert scheduler.finished and scheduler.best == known
    assert scheduler.nonces_settled == 5 * space.unit_size + 18


def test_eight_byte_checkpoints_past_unit_2_20_cost_nothing_to_resume() -> None:
    space = UnitSpace(8, 1 << 42)
    checkpoint = Checkpoint(Problem(BLOCK, 8, 40), space, False, settled_prefix=(1 << 20) + 5, settled_runs=(((1 << 20) + 9, (1 << 20) + 10),))
    scheduler = Checkpoint.from_json(json.loads(json.dumps(checkpoint.to_json()))).scheduler()
    scheduler.add_host("h")
    assert [unit.index for unit in scheduler.take("h", 4)] == [(1 << 20) + offset for offset in (5, 6, 7, 8)]
    assert scheduler.take("h", 1)[0].index == (1 << 20) + 10


def test_checkpoint_round_trip_and_what_it_keeps() -> None:
    scheduler = Scheduler(SPACE)
    scheduler.add_host("h")
    units = scheduler.take("h", 6)
    order = [unit.index for unit in units]
    random.Random(3).shuffle(order)
    top = max(order[:4])
    unit = SPACE.unit(top)
    nonce = PROBLEM.scan(unit.start, unit.end)
    assert nonce is not None
    golden = GoldenNonce(top, nonce, PROBLEM.hash(nonce).hex())
    for index in order[:4]:
        scheduler.complete("h", index, golden if index == top else None)
    base = Checkpoint(PROBLEM, SPACE, False, legs=("cnd-a",), nonces_settled_before=7)
    checkpoint = checkpoint_of(scheduler, LOWEST_D8, base)
    stored = Checkpoint.from_json(json.loads(json.dumps(checkpoint.to_json())))
    assert stored == checkpoint
    assert len(stored.settled()) == 4 and stored.golden == (LOWEST_D8, golden)
    assert stored.legs == ("cnd-a",) and stored.nonces_settled_before == 7


def _stored(**changes: Any) -> Dict[str, Any]:
    data = Checkpoint(PROBLEM, SPACE, False, 2, ((5, 6), (9, 10)), (LOWEST_D8,)).to_json()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: _stored(version=2),
        lambda data: _stored(settled_prefix=-1),
        lambda data: _stored(settled_prefix=1 << 40),
        lambda data: _stored(settled_above=[9, 5]),
        lambda data: _stored(settled_above=[5, 5]),
        lambda data: _stored(settled_above=[1]),  # inside the prefix
        lambda data: _stored(settled_above=[SPACE.count]),
        lambda data: _stored(settled_above="5,9"),
        lambda data: _stored(settled_above=[[5, 9], 7]),  # overlapping runs
        lambda data: _stored(settled_above=[[9, 9]]),  # an empty run
        lambda data: _stored(settled_above=[[5, 9, 10]]),
        lambda data: _stored(settled_above=[[5, SPACE.count + 1]]),
        lambda data: _stored(units=1000),
        lambda data: _stored(difficulty=0),
        lambda data: _stored(nonce_bytes=5),
        lambda data: _stored(block_hex="zz"),
        lambda data: _stored(golden=[{"unit": 0, "nonce": 331, "hash": LOWEST_D8.hash}]),  # not its hash
        lambda data: _stored(golden=[{"unit": 0, "nonce": 1, "hash": PROBLEM.hash(1).hex()}]),  # not golden
        lambda data: _stored(golden=[{"unit": 3, "nonce": 330, "hash": LOWEST_D8.hash}]),  # not in its unit
        lambda data: _stored(golden=[{"unit": 0, "nonce": True, "hash": LOWEST_D8.hash}]),
        lambda data: _stored(any="no"),
        lambda data: _stored(legs=[1]),
        lambda data: _stored(saved_at="now"),
        lambda data: _stored(nonces_settled_before=-5),
        lambda data: [],
    ],
)
def test_a_corrupted_checkpoint_is_refused(corrupt: Callable[[Dict[str, Any]], Any]) -> None:
    with pytest.raises(ValueError):
        Checkpoint.from_json(corrupt({}))


def test_an_intact_checkpoint_is_accepted() -> None:
    assert Checkpoint.from_json(_stored()).settled_runs == ((5, 6), (9, 10))
    # Runs of units are stored as [start, end), single units as their number (as before runs).
    stored = _stored(settled_above=[5, [7, 12], 20])
    assert Checkpoint.from_json(stored).settled_runs == ((5, 6), (7, 12), (20, 21))
    assert Checkpoint.from_json(stored).units_settled() == 2 + 1 + 5 + 1
