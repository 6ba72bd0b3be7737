"""FleetSearch with real local workers that die, hang or find nothing."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from cnd_fab.errors import FleetLostError
from cnd_fab.fleet import FleetSearch
from cnd_fab.outcome import FOUND_STATUS, LOST, NONE_STATUS
from cnd_fab.session import HostSession
from remote import worker
from cnd_fab.journal import RunJournal
from cnd_fab.providers.base import Host
from cnd_fab.providers.local import LocalHost, LocalProvider
from cnd_fab.spec import Problem, UnitSpace
from cnd_fab.transport import WorkerChannel

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leaked_workers")]

BLOCK = b"COMSM0010cloud"


@dataclass(frozen=True)
class SmallSpace(UnitSpace):
    """Only the first `limit` nonces, so exhausting the space takes a moment."""

    limit: int = 1 << 18

    @property
    def space(self) -> int:
        return self.limit


class Sabotage(FleetSearch):
    """Signals one host's worker right after it is first given units."""

    def __init__(self, *args: object, victim: str, signum: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.victim = victim
        self.signum = signum
        self.done = False
        fill = self.traffic._fill

        def fill_then_signal(session: HostSession) -> None:
            fill(session)
            if session.view.name == self.victim and not self.done and self.scheduler.held_by(self.victim):
                self.done = True
                host = session.host
                assert isinstance(host, LocalHost) and host.process is not None
                os.killpg(host.process.pid, self.signum)

        self.traffic._fill = fill_then_signal  # type: ignore[method-assign]


@pytest.fixture
def local_fleet() -> Iterator[Tuple[LocalProvider, RunJournal, List[Host]]]:
    provider = LocalProvider(cores=2)
    journal = RunJournal.start(provider.name)
    hosts: List[Host] = []
    yield provider, journal, hosts
    provider.release(hosts, journal)


def launch(fleet: Tuple[LocalProvider, RunJournal, List[Host]], count: int) -> List[Host]:
    provider, journal, hosts = fleet
    hosts.extend(provider.launch(count, journal))
    return hosts


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "paused"])
def test_lost_host_units_are_reissued_and_answer_stays_lowest(
    local_fleet: Tuple[LocalProvider, RunJournal, List[Host]], signum: int
) -> None:
    hosts = launch(local_fleet, 2)
    # 65,536-nonce units: the answer (137,342) is in unit 2, and whichever host joins
    # first holds units 0 and 1 when it is hit.
    search = Sabotage(
        Problem(BLOCK, 4, 18),
        UnitSpace(4, 1 << 16),
        hosts,
        local_fleet[1].run_id,
        heartbeat_timeout=2.0,
        on_lost=lambda host: host.stop_worker(),
        victim="local-1",
        signum=signum,
    )
    outcome = search.run()
    assert outcome.status == FOUND_STATUS and outcome.lowest
    assert outcome.golden is not None and outcome.golden.nonce == 137342
    assert outcome.reissued >= 1
    lost = {view.name: view for view in outcome.hosts if view.state == LOST}
    assert list(lost) == ["local-1"]
    if signum == signal.SIGSTOP:
        assert "heartbeat deadline" in lost["local-1"].error


def test_exhausted_space_says_none_and_counts_every_nonce(
    local_fleet: Tuple[LocalProvider, RunJournal, List[Host]],
) -> None:
    problem = Problem(BLOCK, 4, 40)
    space = SmallSpace(4, 4)
    assert problem.scan(0, space.space) is None
    outcome = FleetSearch(problem, space, launch(local_fleet, 2), local_fleet[1].run_id).run()
    assert outcome.status == NONE_STATUS and outcome.golden is None
    assert outcome.nonces_settled == space.space
    assert outcome.checked == space.space


def test_every_host_lost_is_a_clear_error(local_fleet: Tuple[LocalProvider, RunJournal, List[Host]]) -> None:
    class KillEveryone(FleetSearch):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            fill = self.traffic._fill

            def fill_then_kill(session: HostSession) -> None:
                fill(session)
                host = session.host
                assert isinstance(host, LocalHost) and host.process is not None
                os.killpg(host.process.pid, signal.SIGKILL)

            self.traffic._fill = fill_then_kill  # type: ignore[method-assign]

    search = KillEveryone(Problem(BLOCK, 4, 256), UnitSpace(4, 1024), launch(local_fleet, 2), "run")
    with pytest.raises(FleetLostError, match="every host was lost.*local-1.*local-2|every host was lost.*local-2.*local-1"):
        search.run()


def test_a_wrong_golden_claim_loses_the_host(local_fleet: Tuple[LocalProvider, RunJournal, List[Host]]) -> None:
    hosts = launch(local_fleet, 1)
    search = FleetSearch(Problem(BLOCK, 4, 8), UnitSpace(4, 1024), hosts, "run")
    session = search.sessions["local-1"]
    session.view.state = "ready"
    search.scheduler.add_host("local-1")
    search.scheduler.take("local-1", 1)
    search._handle("local-1", worker.Done(unit=0, hashes=5, seconds=0.1, nonce=3, hash="00" * 32))
    assert session.view.state == LOST and "but it is not" in session.view.error
    assert search.scheduler.best is None


class ScriptedChannel(WorkerChannel):
    def __init__(self, lines: List[str]) -> None:
        self.lines = lines

    def send_line(self, line: str) -> None:
        pass

    def read_line(self, limit: int) -> str:
        return self.lines.pop(0) if self.lines else ""

    def close(self) -> None:
        pass

    def stderr_tail(self) -> str:
        return ""


class ScriptedHost(Host):
    def __init__(self, name: str, lines: List[str]) -> None:
        self.name = name
        self.lines = lines

    def start_worker(self, run_id: str, payload: object) -> ScriptedChannel:  # type: ignore[override]
        return ScriptedChannel(list(self.lines))

    def stop_worker(self) -> None:
        pass


def test_a_host_printing_something_else_is_lost_not_fatal() -> None:
    search = FleetSearch(Problem(BLOCK, 4, 8), UnitSpace(4, 1024), [ScriptedHost("noisy", ["1\n"])], "run")
    with pytest.raises(FleetLostError, match="noisy: worker sent a bad line: .*1"):
        search.run()


def test_the_lowest_verified_golden_is_reported_when_stopped_early() -> None:
    from cnd_fab.schedule import GoldenNonce

    search = FleetSearch(Problem(BLOCK, 4, 8), UnitSpace(4, 1024), [], "run")
    search.scheduler.best = GoldenNonce(9, 9 * (1 << 22) + 5, "x")
    search.traffic.candidate = GoldenNonce(3, 3 * (1 << 22) + 1, "y")
    assert search.lowest_known() == search.traffic.candidate
    assert search._outcome("timeout").golden == search.traffic.candidate
