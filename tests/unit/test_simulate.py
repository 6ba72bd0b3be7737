"""The simulated fleet of `fab bench --simulate`: the real controller finds the planted answer."""

from __future__ import annotations

import math

from cnd_fab.simulate import PLANTED_DIFFICULTY, planted_golden, simulate
from remote import worker

BLOCK = b"COMSM0010cloud"


def test_the_planted_nonce_is_the_lowest_golden_one_from_its_start() -> None:
    start = 10**12
    nonce, digest = planted_golden(BLOCK, PLANTED_DIFFICULTY, 8, start)
    target = worker.golden_target(PLANTED_DIFFICULTY)
    assert bytes.fromhex(digest) == worker.double_sha256(BLOCK, 8, nonce) < target
    assert all(worker.double_sha256(BLOCK, 8, n) >= target for n in range(start, nonce))


def test_a_small_simulated_fleet_settles_the_planted_answer() -> None:
    figures = simulate(hosts=3, host_rate=5e7, seconds=0.5)
    assert figures.status == "found" and figures.hosts == 3
    assert figures.grants >= 3  # every host got work
    assert 0.0 <= figures.idle_until_found <= 1.0 and 0.0 <= figures.idle_until_settled <= 1.0
    assert figures.controller_cpu >= 0 and math.isfinite(figures.stop_spread)
