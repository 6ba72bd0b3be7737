"""Hostile hosts next to an honest one: the answer stays right and lowest, the run ends in
time, only the bad host is dropped, and nothing is left running (issue 10's matrix)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from rich.console import Console

from cnd_fab.fleet import FleetSearch
from cnd_fab.journal import RunJournal
from cnd_fab.outcome import FOUND_STATUS, LOST, STARTING, SearchOutcome
from cnd_fab.progress import print_summary
from cnd_fab.providers.local import LocalHost
from cnd_fab.spec import Problem, UnitSpace
from cnd_fab.transport import Host, WorkerChannel, WorkerPayload
from tests.e2e.conftest import Testbed
from tests.testbed.hostile import HostileHost, StalledSetupHost

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leaked_workers")]

BLOCK = b"COMSM0010cloud"
PYTHON = WorkerPayload(kernel="python")
HEARTBEAT = 2.0
#: Everything here must end well inside this: a hang fails the test instead of the suite.
DEADLINE = 40.0


@pytest.fixture
def journal() -> RunJournal:
    return RunJournal.start("local")


class HonestAfterHostile(LocalHost):
    """An honest host whose worker starts only once the host named "hostile" has joined or
    been lost (10 s at most), so that the hostile one holds the lowest units: an honest host
    that joined first could settle the answer alone, and the hostile one would never be
    tested."""

    fleet: Optional[FleetSearch] = None

    def start_worker(self, run_id: str, payload: WorkerPayload) -> WorkerChannel:
        give_up = time.monotonic() + 10.0
        while time.monotonic() < give_up and (self.fleet is None or self.fleet.sessions["hostile"].view.state == STARTING):
            time.sleep(0.01)
        return super().start_worker(run_id, payload)


def search_with(hosts: List[Host], problem: Problem, space: UnitSpace, run_id: str) -> Tuple[SearchOutcome, float]:
    began = time.monotonic()
    fleet = FleetSearch(
        problem,
        space,
        hosts,
        run_id,
        deadline=began + DEADLINE,
        heartbeat_timeout=HEARTBEAT,
        on_lost=lambda host: host.stop_worker(),
        payload=PYTHON,
    )
    for host in hosts:
        if isinstance(host, HonestAfterHostile):
            host.fleet = fleet
    try:
        outcome = fleet.run()
    finally:
        for host in hosts:
            host.stop_worker()
    return outcome, time.monotonic() - began


def stopped_after_two_seconds(
    hosts: List[Host], problem: Problem, space: UnitSpace, run_id: str, by_timeout: bool
) -> Tuple[SearchOutcome, float]:
    """Run until a --timeout of 2 s, or a stop (Ctrl-C) after 2 s; the outcome and how long
    the loop took to end."""
    import threading

    stop = threading.Event()
    began = time.monotonic()
    fleet = FleetSearch(
        problem, space, hosts, run_id, heartbeat_timeout=60.0, payload=PYTHON, stop=stop,
        deadline=began + 2.0 if by_timeout else None,
    )
    if not by_timeout:
        threading.Timer(2.0, stop.set).start()
    try:
        outcome = fleet.run()
    finally:
        for host in hosts:
            host.stop_worker()
    assert fleet.finished_at is not None
    return outcome, fleet.finished_at - began


def assert_honest_answer(outcome: SearchOutcome, problem: Problem, space: UnitSpace, lost_reason: str) -> None:
    expected = problem.scan(0, space.space)
    assert outcome.status == FOUND_STATUS and outcome.lowest
    assert outcome.golden is not None and outcome.golden.nonce == expected
    views = {view.name: view for view in outcome.hosts}
    assert views["honest"].state != LOST, views["honest"].error
    assert views["hostile"].state == LOST
    assert lost_reason in views["hostile"].error, views["hostile"].error


ROWS = [
    ("progress-infinity", "bad line"),
    ("progress-lies", "more than the"),
    ("found-negative", "bad line"),
    ("found-outside-space", "but it is not"),
    ("found-outside-unit", "but it is not"),
    ("done-minus-infinity", "bad line"),
    ("done-too-many-hashes", "more than the unit holds"),
    ("hello-cores-infinity", "bad line"),
    ("huge-line", "longer than"),
    ("heartbeats-no-work", "made no progress on its units"),
    ("huge-prefetch-no-work", "made no progress on its units"),
    ("found-then-done-none", "was verified there"),
    ("second-hello", "sent a second HELLO"),
]


@pytest.mark.parametrize("mode, lost_reason", ROWS, ids=[row[0] for row in ROWS])
def test_a_hostile_host_is_dropped_alone(mode: str, lost_reason: str, journal: RunJournal, tmp_path: Path) -> None:
    problem, space = Problem(BLOCK, 4, 14), UnitSpace(4, 1 << 14)
    hosts: List[Host] = [HostileHost("hostile", mode, tmp_path), HonestAfterHostile("honest", 1, journal)]
    outcome, seconds = search_with(hosts, problem, space, journal.run_id)
    assert_honest_answer(outcome, problem, space, lost_reason)
    assert seconds < DEADLINE


def test_huge_prefetch_is_capped(journal: RunJournal, tmp_path: Path) -> None:
    from cnd_fab.schedule import MAX_PREFETCH_PER_CORE
    from cnd_fab.traffic import GRANTS_AHEAD

    hosts: List[Host] = [HostileHost("hostile", "huge-prefetch-no-work", tmp_path), LocalHost("honest", 1, journal)]
    fleet = FleetSearch(Problem(BLOCK, 4, 14), UnitSpace(4, 1 << 14), hosts, journal.run_id, heartbeat_timeout=HEARTBEAT, payload=PYTHON)
    try:
        fleet.run()
    finally:
        for host in hosts:
            host.stop_worker()
    assert fleet.sessions["hostile"].prefetch == MAX_PREFETCH_PER_CORE  # it said 1 core
    # A host that settles nothing never gets grants larger than its prefetch.
    assert fleet.sessions["hostile"].issued_nonces <= GRANTS_AHEAD * MAX_PREFETCH_PER_CORE * (1 << 18)


def test_a_host_that_never_reads_its_input_cannot_block_the_run(journal: RunJournal, tmp_path: Path) -> None:
    # 8-byte nonces and a 60 kB block: four WORK lines outgrow any pipe buffer.
    problem, space = Problem(bytes(range(256)) * 234, 8, 6), UnitSpace(8, 1 << 16)
    hosts: List[Host] = [HostileHost("hostile", "never-reads", tmp_path), LocalHost("honest", 1, journal)]
    outcome, seconds = search_with(hosts, problem, UnitSpace(8, 1 << 16), journal.run_id)
    golden = outcome.golden
    assert golden is not None and golden.nonce == problem.scan(0, 1 << 16)
    views = {view.name: view for view in outcome.hosts}
    assert views["hostile"].state == LOST and "input" in views["hostile"].error
    assert seconds < DEADLINE


def test_a_host_stuck_in_setup_is_lost_and_released(journal: RunJournal) -> None:
    # The answer, 1,027,827, takes the honest host about a second: the stuck one is given up first.
    problem, space = Problem(BLOCK, 4, 20), UnitSpace(4, 1 << 14)
    stuck = StalledSetupHost("hostile", setup_seconds=0.3)
    outcome, seconds = search_with([stuck, LocalHost("honest", 1, journal)], problem, space, journal.run_id)
    assert_honest_answer(outcome, problem, space, "not set up (connect, push, start) within 0.3s")
    assert stuck.released.is_set()


def test_host_text_is_shown_as_text(journal: RunJournal, tmp_path: Path) -> None:
    problem, space = Problem(BLOCK, 4, 14), UnitSpace(4, 1 << 14)
    hosts: List[Host] = [HostileHost("hostile", "markup-and-escapes", tmp_path), LocalHost("honest", 1, journal)]
    outcome, _ = search_with(hosts, problem, space, journal.run_id)
    assert_honest_answer(outcome, problem, space, "worker error")
    shown = io.StringIO()
    print_summary(Console(file=shown, width=300, force_terminal=True), outcome)
    text = shown.getvalue()
    assert "[/oops]" in text and "pwned" in text  # shown, as text
    assert "\x1b]0;" not in text and "\x07" not in text and "\x1b[2J" not in text


def test_stop_and_timeout_take_effect_within_a_second_whatever_a_host_does(journal: RunJournal, tmp_path: Path) -> None:
    from cnd_fab.outcome import INTERRUPTED_STATUS, TIMEOUT_STATUS

    # 8-byte nonces and a 60 kB block: the hostile host's input is full before the stop comes.
    problem, space = Problem(bytes(range(256)) * 234, 8, 64), UnitSpace(8, 1 << 16)
    for ending in (INTERRUPTED_STATUS, TIMEOUT_STATUS):
        hosts: List[Host] = [HostileHost("hostile", "never-reads", tmp_path), LocalHost("honest", 1, journal)]
        outcome, seconds = stopped_after_two_seconds(hosts, problem, space, journal.run_id, by_timeout=ending == TIMEOUT_STATUS)
        assert outcome.status == ending and seconds < 3.0


@pytest.mark.usefixtures("private_state")
def test_a_hostile_worker_over_real_sshd_is_dropped_alone(testbed: Testbed, journal: RunJournal, tmp_path: Path) -> None:
    import io as _io

    from cnd_fab.providers.static import load_login_key
    from cnd_fab.ssh import SshHost, SshTarget
    from tests.testbed.hostile import hostile_source

    class HostileSshHost(SshHost):
        """A real SSH host whose pushed worker is replaced by the hostile one."""

        def push(self, connection: object, payload: WorkerPayload) -> None:
            super().push(connection, payload)  # type: ignore[arg-type]
            with self.connection.sftp() as sftp:  # type: ignore[union-attr]
                sftp.putfo(_io.BytesIO(hostile_source("progress-lies")), f"{self.run_dir}/hostile.py")

        def worker_command(self, run_id: str, payload: WorkerPayload = WorkerPayload()) -> str:
            return super().worker_command(run_id, payload).replace("/worker.py", "/hostile.py", 1)

    box = testbed.hosts[0]
    target = SshTarget(
        name="hostile", host="127.0.0.1", port=box.port, user="root",
        login_key=load_login_key(testbed.key_file, "hostile"), known_hosts=testbed.known_hosts,
    )
    # The answer, 1,027,827, takes the honest host about a second: the SSH host joins first.
    problem, space = Problem(BLOCK, 4, 20), UnitSpace(4, 1 << 16)
    hostile = HostileSshHost(target, journal.run_id, 1, journal)
    outcome, seconds = search_with([hostile, LocalHost("honest", 1, journal)], problem, space, journal.run_id)
    assert_honest_answer(outcome, problem, space, "more than the")
    assert not hostile.clean_failed, hostile.clean_problem
    assert seconds < DEADLINE


def test_a_host_that_trickles_hashes_but_settles_nothing_is_dropped(journal: RunJournal, tmp_path: Path) -> None:
    # Units of 2^14 nonces: the answer, 1,027,827, is in unit 62, and the trickling host,
    # which starts first, holds the lowest units until the settle deadline drops it.
    problem, space = Problem(BLOCK, 4, 22), UnitSpace(4, 1 << 18)
    hosts: List[Host] = [
        HostileHost("hostile", "trickle", tmp_path),
        LocalHost("honest", 1, journal),
        LocalHost("honest-2", 1, journal),
    ]
    outcome, seconds = search_with(hosts, problem, space, journal.run_id)
    assert_honest_answer(outcome, problem, space, "settled none of its units")
    assert seconds < DEADLINE


def test_a_flood_of_repeated_lines_cannot_keep_stop_from_taking_effect(journal: RunJournal, tmp_path: Path) -> None:
    from cnd_fab.outcome import INTERRUPTED_STATUS

    # The only host floods a true FOUND and never settles its unit: only the stop ends the run.
    problem, space = Problem(BLOCK, 4, 14), UnitSpace(4, 1 << 14)
    hosts: List[Host] = [HostileHost("hostile", "flood-found", tmp_path)]
    outcome, seconds = stopped_after_two_seconds(hosts, problem, space, journal.run_id, by_timeout=False)
    assert outcome.status == INTERRUPTED_STATUS and seconds < 3.0


def test_a_slow_but_moving_write_is_not_taken_for_a_host_that_reads_nothing() -> None:
    from cnd_fab.session import HostSession
    from cnd_fab.outcome import READY

    class SlowLink(HostileHost):
        def __init__(self) -> None:
            self.name = "slow"

    session = HostSession(SlowLink())
    session.view.state = READY

    class Channel:
        written_at = 0.0

    session.channel = Channel()  # type: ignore[assignment]
    now = time.monotonic()
    session.writing_since = now - 30.0  # one long line, 30 s in the making...
    session.channel.written_at = now - 1.0  # ...whose last piece went out a second ago
    assert session.overdue(now, HEARTBEAT, 30.0, holding=False) is None
    session.channel.written_at = now - 3.0
    assert "has not read its input for 3.0s" in (session.overdue(now, HEARTBEAT, 30.0, holding=False) or "")


def test_a_spot_notice_reissues_that_hosts_units_at_once(testbed: Testbed, journal: RunJournal) -> None:
    from cnd_fab.outcome import RECLAIMED
    from cnd_fab.providers.static import load_login_key
    from cnd_fab.ssh import SshHost, SshTarget
    from tests.testbed.imds import MetadataStandIn

    hosts: List[Host] = []
    for index, box in enumerate(testbed.hosts[:2]):
        target = SshTarget(
            name=f"spot-{index + 1}", host="127.0.0.1", port=box.port, user="root",
            login_key=load_login_key(testbed.key_file, f"spot-{index + 1}"), known_hosts=testbed.known_hosts,
        )
        hosts.append(SshHost(target, journal.run_id, 1, journal))
    # 2^16-nonce units: the D=23 answer, 11,554,918, is in unit 176, seconds of Python work
    # away, so the notice (at the first poll after 0.5 s) comes while both hosts hold units.
    problem, space = Problem(BLOCK, 4, 23), UnitSpace(4, 1 << 16)
    with MetadataStandIn(give_notice_after=0.5) as stand_in:
        fleet = FleetSearch(
            problem, space, hosts, journal.run_id, deadline=time.monotonic() + 120, heartbeat_timeout=HEARTBEAT,
            on_lost=lambda host: host.stop_worker(), payload=WorkerPayload(kernel="python", metadata_url=stand_in.url),
        )
        try:
            outcome = fleet.run()
        finally:
            for host in hosts:
                host.stop_worker()
    assert outcome.status == FOUND_STATUS and outcome.lowest
    assert outcome.golden is not None and outcome.golden.nonce == 11554918
    reclaimed = [view for view in outcome.hosts if view.state == RECLAIMED]
    assert len(reclaimed) == 1 and "spot interruption notice: terminate at 2026-11-30T12:00:00Z" in reclaimed[0].error
    assert stand_in.noticed_at is not None
    rows = fleet.joblog.to_record()
    lost = [row for row in rows["rows"] if row[rows["columns"].index("result")] == "lost"]
    assert lost, "the reclaimed host held no unit to reissue"
    host_times = {times["name"]: times for times in rows["hosts"]}
    # Reissued before the two minutes a spot notice gives run out (in practice within a poll).
    reclaimed_at = fleet.started + host_times[reclaimed[0].name]["lost_at"]
    assert reclaimed_at - stand_in.noticed_at < 100.0
