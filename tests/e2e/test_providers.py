"""Each provider's typed results: what `release`, `leftovers` and `remove` say, resource by
resource, and that they say it without raising (the caller decides what a failure means)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest

from cnd_fab.journal import RunJournal
from cnd_fab.providers import ProviderOptions, provider_class
from cnd_fab.providers.base import Leftover, Released
from cnd_fab.providers.docker import DockerProvider
from cnd_fab.providers.local import LocalHost, LocalProvider
from cnd_fab.ssh import SshHost
from cnd_fab.transport import WorkerPayload, worker, worker_file
from tests.e2e.conftest import Testbed
from tests.helpers import wait_for_no_workers
from tests.testbed.hosts import cnd_containers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("private_state", "no_leaked_workers")]

PYTHON = WorkerPayload(kernel="python")


def run_containers(client: Any, run_id: str) -> List[str]:
    return sorted(c.name for c in cnd_containers(client) if c.labels.get("cnd-fab.run") == run_id)


@pytest.mark.usefixtures("no_leaked_containers")
def test_docker_release_confirms_every_container(docker_client: Any) -> None:
    provider = DockerProvider()
    journal = RunJournal.start(provider.name)
    hosts = provider.launch(2, journal)
    hosts[0].start_worker(journal.run_id, PYTHON)
    released = provider.release(hosts, journal)
    assert sorted(item.resource for item in released) == [f"container {journal.run_id}-{i} ({journal.run_id})" for i in (1, 2)]
    assert all(item.done and not item.failed for item in released)
    assert run_containers(docker_client, journal.run_id) == []


@pytest.mark.usefixtures("no_leaked_containers")
def test_docker_leftovers_are_found_by_label_and_removed(docker_client: Any) -> None:
    provider = DockerProvider()
    journal = RunJournal.start(provider.name)
    provider.launch(2, journal)  # and the controller "dies": no release
    found = [left for left in DockerProvider().leftovers([]) if left.run_id == journal.run_id]
    assert len(found) == 1 and found[0].provider == "docker"
    assert found[0].journal.path == Path()  # made up from labels: nothing to close
    planned = DockerProvider().remove(found[0], dry_run=True)
    assert [item.planned for item in planned] == [True, True] and not any(item.failed for item in planned)
    assert [item.line().startswith("would remove container") for item in planned] == [True, True]
    assert Released("worker pid 7", True, planned=True, action="killed").line() == "would kill worker pid 7"
    assert len(run_containers(docker_client, journal.run_id)) == 2
    live = [item for item in DockerProvider().live_resources([]) if item.run_id == journal.run_id]
    assert sorted(item.name for item in live) == [f"container {journal.run_id}-{i}" for i in (1, 2)]
    removed = DockerProvider().remove(found[0])
    assert [item.done for item in removed] == [True, True]
    assert run_containers(docker_client, journal.run_id) == []
    assert DockerProvider().remove(found[0]) == []  # twice is fine: nothing left


def test_docker_remove_that_fails_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    class Stuck:
        name = "cnd-x-1"

        def remove(self, force: bool) -> None:
            raise docker.errors.APIError("device or resource busy")

    monkeypatch.setattr(DockerProvider, "_containers", lambda self, run_id=None: [Stuck()])
    [item] = DockerProvider().remove(Leftover.found("cnd-x", "docker"))
    assert item.failed and "device or resource busy" in item.why
    assert item.line().startswith("could not remove container cnd-x-1 (cnd-x): docker:")


def test_local_leftover_workers_are_killed_only_while_they_are_the_runs() -> None:
    journal = RunJournal.start("local")
    process = subprocess.Popen(
        [sys.executable, str(worker_file()), "--processes", "1", "--run-id", journal.run_id, "--kernel", "python"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    journal.record("local-worker", host="local-1", pid=process.pid)
    journal.record("local-worker", host="local-2", pid=999_999_999)  # long gone: not ours to touch
    leftover = Leftover(journal.run_id, "local", journal)
    assert [item.planned for item in LocalProvider().remove(leftover, dry_run=True)] == [True]
    assert process.poll() is None
    [item] = LocalProvider().remove(leftover)
    assert item.done and item.resource == f"local worker pid {process.pid} ({journal.run_id})"
    assert process.wait(timeout=5) is not None
    assert LocalProvider().remove(leftover) == []
    assert not wait_for_no_workers(journal.run_id.encode())


def test_an_early_local_worker_is_handed_over_once_and_released() -> None:
    provider = LocalProvider(cores=1)
    journal = RunJournal.start(provider.name)
    [host] = provider.launch(1, journal)
    host.start_early(journal.run_id, PYTHON)
    assert isinstance(host, LocalHost) and host.process is not None
    early = host.process
    channel = host.start_worker(journal.run_id, PYTHON)
    assert host.process is early  # the booting worker, not a second one
    hello = worker.decode_to_controller(channel.read_line(worker.MAX_LINE_CHARS))
    assert isinstance(hello, worker.Hello) and hello.pid == early.pid
    assert f"{worker_file()} --processes 1 --run-id {journal.run_id}" in " ".join(early.args)
    [released] = provider.release([host], journal)
    assert released.done and early.poll() is not None
    assert len(journal.resources) == 1
    assert not wait_for_no_workers(journal.run_id.encode())


def test_static_release_and_remove_name_each_host(testbed: Testbed, tmp_path: Path) -> None:
    from cnd_fab.inventory import load

    options = ProviderOptions(inventory=load(str(testbed.inventory(tmp_path / "inventory.yaml", count=2))))
    provider = provider_class("static")(options)
    journal = RunJournal.start(provider.name)
    hosts = provider.launch(2, journal)
    hosts[0].start_worker(journal.run_id, PYTHON)
    assert isinstance(hosts[0], SshHost)
    time.sleep(0.5)
    released = provider.release(hosts, journal)
    assert [(item.resource, item.done) for item in released] == [("worker on static-1", True), ("worker on static-2", True)]
    assert not wait_for_no_workers(journal.run_id.encode())
    # The journal names a host this inventory does not have: reported, never guessed at.
    journal.record("ssh-run-dir", host="elsewhere", address="root@127.0.0.1:1", run_dir="/tmp/cnd-fab-x")
    removed = provider.remove(Leftover(journal.run_id, "static", journal))
    assert [item.done for item in removed] == [True, False]
    assert removed[0].action in ("cleaned", "found nothing left at")
    assert removed[1].failed and "not in the inventory given" in removed[1].why


def test_released_lines_say_what_happened() -> None:
    assert Released("instance i-1", True, action="terminated").line() == "terminated instance i-1"
    assert Released("instance i-1", True, planned=True).line() == "would remove instance i-1"
    failed = Released("instance i-1", False, "RequestLimitExceeded")
    assert failed.failed and failed.line() == "could not remove instance i-1: RequestLimitExceeded"
