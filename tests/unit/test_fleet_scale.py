"""What a large fleet changes: heartbeats further apart, deadlines looked at less often."""

from __future__ import annotations

import pytest

from cnd_fab.fleet import FleetSearch, heartbeat_for
from cnd_fab.simulate import SimulatedFleet, SimulatedHost, planted_golden
from cnd_fab.spec import Problem, UnitSpace
from cnd_fab.transport import WorkerPayload
from remote import worker


def test_a_small_fleet_keeps_the_workers_own_heartbeat_and_a_large_one_beats_less_often() -> None:
    assert heartbeat_for(1, 8.0) is None and heartbeat_for(250, 8.0) is None
    assert heartbeat_for(500, 8.0) == 1.0
    assert heartbeat_for(1000, 8.0) == 2.0 and heartbeat_for(10000, 8.0) == 2.0
    # Never so far apart that a host could miss its heartbeat deadline for want of beats.
    assert heartbeat_for(10000, 2.0) == 0.5


def test_the_heartbeat_reaches_the_worker_and_the_worker_checks_it() -> None:
    assert WorkerPayload().worker_args(None) == ["--kernel", "auto"]
    assert WorkerPayload(heartbeat=2.0).worker_args(None)[-2:] == ["--heartbeat", "2"]
    assert worker.parse_args(["--heartbeat", "1.5"]).heartbeat == 1.5
    assert worker.parse_args([]).heartbeat == worker.HEARTBEAT_SECONDS
    for refused in ("0", "-1", "nan", "11", "soon"):
        with pytest.raises(SystemExit):
            worker.parse_args(["--heartbeat", refused])


def test_a_large_fleet_asks_its_workers_for_fewer_heartbeats_and_checks_deadlines_less_often() -> None:
    block = b"COMSM0010cloud"
    names = [f"sim-{index}" for index in range(1000)]
    simulation = SimulatedFleet(names, 1e6, 1 << 22, planted_golden(block, 12, 8, 0))
    try:
        hosts = [SimulatedHost(simulation, name) for name in names]
        search = FleetSearch(Problem(block, 8, 12), UnitSpace(8, 1 << 42), hosts, "run")
        assert search.payload.heartbeat == 2.0 and search.overdue_check_seconds == 0.5
        small = FleetSearch(Problem(block, 8, 12), UnitSpace(8, 1 << 42), hosts[:10], "run")
        assert small.payload.heartbeat is None and small.overdue_check_seconds == 0.1
    finally:
        simulation.finish()
