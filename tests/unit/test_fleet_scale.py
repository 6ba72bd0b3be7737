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


def test_a_large_fleet_is_told_joining_in_tenths_and_a_small_one_host_by_host() -> None:
    from typing import List

    from cnd_fab.outcome import Reporter
    from cnd_fab.transport import WorkerChannel

    class Told(Reporter):
        def __init__(self) -> None:
            self.lines: List[str] = []

        def event(self, text: str) -> None:
            self.lines.append(text)

    class Takes(WorkerChannel):
        sends_without_blocking = True

        def send_nowait(self, data: bytes) -> int:
            return len(data)

        def send_line(self, line: str) -> None:
            raise AssertionError

        def read_line(self, limit: int) -> str:
            return ""

        def close(self) -> None:
            pass

    block = b"COMSM0010cloud"
    for count, expected in ((20, 20), (100, 11)):
        names = [f"sim-{index}" for index in range(count)]
        simulation = SimulatedFleet(names, 1e6, 1 << 22, planted_golden(block, 12, 8, 0))
        try:
            told = Told()
            hosts = [SimulatedHost(simulation, name) for name in names]
            search = FleetSearch(Problem(block, 8, 12), UnitSpace(8, 1 << 42), hosts, "run", reporter=told)
            for session in search.sessions.values():
                session.channel = Takes()
                hello = worker.Hello(
                    version=worker.PROTOCOL_VERSION, cores=8, kernel="native:sha-ni", kernel_note=None, mode=worker.SPLIT,
                    prefetch=3, pid=1, pgid=1, python="3.11", host=session.name,
                )
                search.traffic.on_message(session, hello)
            joins = [line for line in told.lines if " joined: " in line]
            assert len(joins) == expected, joins
            if count > 20:
                assert joins[0].endswith("(1 of 100 hosts)") and joins[-1].endswith("(100 of 100 hosts)")
        finally:
            simulation.finish()


def test_a_fleet_gets_the_open_files_it_needs_or_a_clear_refusal_before_launch() -> None:
    import resource

    from cnd_fab.checks import FILES_PER_HOST, SPARE_FILES, check_open_files
    from cnd_fab.errors import InputError

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        check_open_files(200)  # the soft limit is raised as far as needed, no privilege needed
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= FILES_PER_HOST * 200 + SPARE_FILES
        if hard != resource.RLIM_INFINITY:
            too_many = hard // FILES_PER_HOST + 1
            with pytest.raises(InputError, match=f"a fleet of {too_many:,} hosts needs .* open files.*nothing was launched"):
                check_open_files(too_many)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
