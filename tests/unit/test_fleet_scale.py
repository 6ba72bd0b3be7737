"""What a large fleet changes: heartbeats further apart, deadlines looked at less often, joins
told in tenths, and more queued at each new host."""

from __future__ import annotations

from typing import List

import pytest

from cnd_fab.fleet import FleetSearch, heartbeat_for
from cnd_fab.outcome import Reporter
from cnd_fab.schedule import HOSTS_PER_PREFETCH, MAX_PREFETCH, MAX_PREFETCH_PER_CORE, fleet_prefetch
from cnd_fab.simulate import SimulatedFleet, SimulatedHost, planted_golden
from cnd_fab.spec import Problem, UnitSpace
from cnd_fab.transport import Host, WorkerChannel, WorkerPayload
from remote import worker

BLOCK = b"COMSM0010cloud"


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


class Told(Reporter):
    """A reporter that keeps the events."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def event(self, text: str) -> None:
        self.lines.append(text)


class Takes(WorkerChannel):
    """A channel that takes every line at once."""

    sends_without_blocking = True

    def send_nowait(self, data: bytes) -> int:
        return len(data)

    def send_line(self, line: str) -> None:
        raise AssertionError

    def read_line(self, limit: int) -> str:
        return ""

    def close(self) -> None:
        pass


def joined_fleet(count: int, reporter: Reporter, simulation: SimulatedFleet) -> FleetSearch:
    """A fleet of `count` hosts that have all said HELLO (8 cores, prefetch 3) and been answered."""
    hosts: List[Host] = [SimulatedHost(simulation, f"sim-{index}") for index in range(count)]
    search = FleetSearch(Problem(BLOCK, 8, 12), UnitSpace(8, 1 << 42), hosts, "run", reporter=reporter)
    for session in search.sessions.values():
        session.channel = Takes()
        hello = worker.Hello(
            version=worker.PROTOCOL_VERSION, cores=8, kernel="native:sha-ni", kernel_note=None, mode=worker.SPLIT,
            prefetch=3, pid=1, pgid=1, python="3.11", host=session.name,
        )
        search.traffic.on_message(session, hello)
    return search


def test_a_large_fleet_is_told_joining_in_tenths_and_a_small_one_host_by_host() -> None:
    for count, expected in ((20, 20), (100, 11)):
        simulation = SimulatedFleet([f"sim-{index}" for index in range(count)], 1e6, 1 << 22, planted_golden(BLOCK, 12, 8, 0))
        try:
            told = Told()
            joined_fleet(count, told, simulation)
            joins = [line for line in told.lines if " joined: " in line]
            assert len(joins) == expected, joins
            if count > 20:
                assert joins[0].endswith("(1 of 100 hosts)") and joins[-1].endswith("(100 of 100 hosts)")
        finally:
            simulation.finish()


def test_a_large_fleet_starts_each_host_with_more_queued_within_the_caps() -> None:
    assert fleet_prefetch(3, 8, 1) == 3 and fleet_prefetch(3, 8, HOSTS_PER_PREFETCH) == 3
    assert fleet_prefetch(3, 8, HOSTS_PER_PREFETCH + 1) == 6 and fleet_prefetch(3, 8, 1000) == 12
    assert fleet_prefetch(3, 8, 10_000) == MAX_PREFETCH_PER_CORE * 8
    assert fleet_prefetch(3, 64, 10_000) == MAX_PREFETCH
    assert fleet_prefetch(10**9, 1, 1) == MAX_PREFETCH_PER_CORE  # a host may ask for anything
    assert fleet_prefetch(0, 8, 1) == 1
    # The fleet answers each HELLO with two grants that share the scaled prefetch.
    for count, first_grant in ((100, 2), (1000, 6)):
        simulation = SimulatedFleet([f"sim-{index}" for index in range(count)], 1e6, 1 << 22, planted_golden(BLOCK, 12, 8, 0))
        try:
            search = joined_fleet(count, Told(), simulation)
            for session in search.sessions.values():
                assert sorted(last - first + 1 for first, last in session.grants.values()) == [first_grant, first_grant]
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


def test_before_its_first_progress_a_host_is_sized_by_what_it_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    # A large fleet's heartbeats come seconds apart: grants must not grow blind until then.
    from types import SimpleNamespace

    from cnd_fab import session as session_module

    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(session_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    simulation = SimulatedFleet(["sim-1"], 1e6, 1 << 22, planted_golden(BLOCK, 12, 8, 0))
    try:
        session = session_module.HostSession(SimulatedHost(simulation, "sim-1"))
        unit = 1 << 22
        assert session.working_rate() == 0.0
        session.note_issued(4 * unit, idle=True)
        clock.now += 2.0
        session.count_unit(2 * unit, 2)  # two units in two seconds, clocked here
        session.largest_settled_grant = 16
        assert session.working_rate() == unit
        # Growth alone would allow 64 units; two seconds of its measured work are 2.
        assert session.grant_units(unit, fair_share=1000) == 2
        session.view.rate = 8.0 * unit  # a PROGRESS measured it since
        assert session.working_rate() == 8.0 * unit and session.grant_units(unit, fair_share=1000) == 16
    finally:
        simulation.finish()


def test_a_whole_fleet_lost_is_one_line_that_names_a_few_and_counts_the_rest() -> None:
    from cnd_fab.errors import FleetLostError
    from cnd_fab.fleet import LOST_REASONS_SHOWN
    from cnd_fab.outcome import LOST

    count = LOST_REASONS_SHOWN + 995
    simulation = SimulatedFleet([f"sim-{index}" for index in range(count)], 1e6, 1 << 22, planted_golden(BLOCK, 12, 8, 0))
    try:
        search = joined_fleet(count, Told(), simulation)
        for session in search.sessions.values():
            session.view.state, session.view.error = LOST, f"{session.name}: silent for 8.1s (heartbeat deadline)"
        with pytest.raises(FleetLostError) as lost:
            search._ending()
        message = str(lost.value)
        assert "\n" not in message and message.count("heartbeat deadline") == LOST_REASONS_SHOWN
        assert message.startswith("every host was lost before the search finished: sim-0: silent")
        assert message.endswith("; and 995 more")
    finally:
        simulation.finish()
