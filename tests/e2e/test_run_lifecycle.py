"""The one run lifecycle (cnd_fab.run.launched): release always runs, and a journal is marked
cleaned only when every release is confirmed."""

from __future__ import annotations

from typing import List

import pytest

from cnd_fab import bench
from cnd_fab.errors import FleetLostError, ProviderError, ReleaseError
from cnd_fab.journal import CLEANED, OPEN, RunJournal
from cnd_fab.providers.base import Host, Released
from cnd_fab.providers.local import LocalHost, LocalProvider
from cnd_fab.run import launched
from cnd_fab.transport import WorkerPayload
from tests.helpers import wait_for_no_workers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leaked_workers")]

PYTHON = WorkerPayload(kernel="python")


class HalfLaunch(LocalProvider):
    """Starts one real worker, then fails the launch, as a provider whose second host fails."""

    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        LocalHost("local-1", 1, journal).start_worker(journal.run_id, PYTHON)
        raise ProviderError("injected: the second host did not start")


class UnconfirmedRelease(LocalProvider):
    """Releases its hosts but cannot confirm one resource, as an EC2 terminate that timed out."""

    def release(self, hosts: List[Host], journal: RunJournal) -> List[Released]:
        return super().release(hosts, journal) + [Released("instance i-0stuck", False, "terminate not confirmed")]


def only_journal() -> RunJournal:
    journals = RunJournal.all()
    assert len(journals) == 1, journals
    return journals[0]


def test_a_bench_whose_launch_fails_leaves_an_open_journal_and_nothing_running() -> None:
    with pytest.raises(ProviderError, match="injected"):
        bench.fleet_figures(HalfLaunch(cores=1), 1, 1.0, PYTHON)
    journal = only_journal()
    assert not wait_for_no_workers(journal.run_id.encode())
    assert journal.status == OPEN
    assert "injected" in journal.details["launch_failed"]


def test_a_finished_run_is_closed_as_cleaned_and_its_workers_are_gone() -> None:
    with launched(LocalProvider(cores=1), 1) as run:
        run.hosts[0].start_worker(run.run_id, PYTHON)
        run.outcome = "found"
    journal = only_journal()
    assert journal.status == CLEANED and journal.details["outcome"] == "found"
    assert [item.done for item in run.released] and all(item.done for item in run.released)
    assert not wait_for_no_workers(run.run_id.encode())


def test_an_unconfirmed_release_keeps_the_journal_open_and_says_what_is_left() -> None:
    with pytest.raises(ReleaseError, match=r"i-0stuck \(terminate not confirmed\).*fab teardown --run"):
        with launched(UnconfirmedRelease(cores=1), 1) as run:
            run.hosts[0].start_worker(run.run_id, PYTHON)
    journal = only_journal()
    assert journal.status == OPEN
    assert journal.details["unreleased"] == ["instance i-0stuck: terminate not confirmed"]
    assert not wait_for_no_workers(run.run_id.encode())


def test_a_failed_run_with_an_unconfirmed_release_reports_both() -> None:
    with pytest.raises(ReleaseError, match="every host was lost.*; and could not release instance i-0stuck"):
        with launched(UnconfirmedRelease(cores=1), 1):
            raise FleetLostError("every host was lost before the search finished")
    assert only_journal().status == OPEN
