"""What a large fleet changes: heartbeats further apart, deadlines looked at less often, joins
told in tenths, and more queued at each new host."""

from __future__ import annotations

from typing import List

import pytest

from cnd_fab.fleet import FleetSearch, heartbeat_for
from cnd_fab.outcome import Reporter
from cnd_fab.schedule import HOSTS_PER_PREFETCH, MAX_PREFETCH, MAX_PREFETCH_PER_CORE, joining_prefetch
from cnd_fab.simulate import SimulatedFleet, SimulatedHost, planted_golden
from cnd_fab.spec import Problem, UnitSpace
from cnd_fab.session import WorkerOpened
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


def joined_fleet(count: int, reporter: Reporter, simulation: SimulatedFleet, together: bool = False) -> FleetSearch:
    """A fleet of `count` hosts that have all said HELLO (8 cores, prefetch 3) and been
    answered: one after another, or (`together`) after every worker had started."""
    hosts: List[Host] = [SimulatedHost(simulation, f"sim-{index}") for index in range(count)]
    search = FleetSearch(Problem(BLOCK, 8, 12), UnitSpace(8, 1 << 42), hosts, "run", reporter=reporter)
    for session in search.sessions.values():
        session.channel = Takes()
        if together:
            search._handle(session.name, WorkerOpened())
    for session in search.sessions.values():
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


def test_hosts_that_join_together_start_with_more_queued_within_the_caps() -> None:
    assert joining_prefetch(3, 8, 1) == 3 and joining_prefetch(3, 8, HOSTS_PER_PREFETCH) == 3
    assert joining_prefetch(3, 8, HOSTS_PER_PREFETCH + 1) == 6 and joining_prefetch(3, 8, 1000) == 12
    assert joining_prefetch(3, 8, 10_000) == MAX_PREFETCH_PER_CORE * 8
    assert joining_prefetch(3, 64, 10_000) == MAX_PREFETCH
    assert joining_prefetch(10**9, 1, 1) == MAX_PREFETCH_PER_CORE  # a host may ask for anything
    assert joining_prefetch(0, 8, 1) == 1
    # Each HELLO is answered with two grants that share the prefetch. When a thousand workers
    # have started before the first HELLO is answered, the first hosts answered wait longest
    # for their first DONE to be: they start with the most, and the last with what it asked.
    count = 1000
    simulation = SimulatedFleet([f"sim-{index}" for index in range(count)], 1e6, 1 << 22, planted_golden(BLOCK, 12, 8, 0))
    try:
        for together in (False, True):
            search = joined_fleet(count, Told(), simulation, together)
            grants = [sorted(high - low + 1 for low, high in s.grants.values()) for s in search.sessions.values()]
            # Answered one by one, each asks its 3 units (two grants of 2). Together, the first
            # 250 are answered with 1,000 to 751 hosts joining (4 x 3 = 12 units), ..., the last
            # 250 with 250 to 1 (3 units).
            expected = [[2, 2]] * count if not together else [[6, 6]] * 250 + [[5, 5]] * 250 + [[3, 3]] * 250 + [[2, 2]] * 250
            assert grants == expected
            assert not search.traffic._awaiting_hello
    finally:
        simulation.finish()


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
