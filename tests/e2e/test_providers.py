"""Each provider's typed results: what `release`, `leftovers` and `remove` say, resource by
resource, and that they say it without raising (the caller decides what a failure means)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from cnd_fab.errors import ProviderError
from cnd_fab.journal import OPEN, RunJournal
from cnd_fab.providers import ProviderOptions, provider_class
from cnd_fab.providers.base import Leftover, Released
from cnd_fab.providers.docker import DockerProvider
from cnd_fab.providers.local import LocalHost, LocalProvider
from cnd_fab.run import launched
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


@pytest.mark.usefixtures("no_leaked_containers")
def test_docker_launch_makes_containers_at_once_each_journalled_first_and_hosts_in_order(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docker.models.containers import ContainerCollection

    provider = DockerProvider()
    journal = RunJournal.start(provider.name)
    create = ContainerCollection.create
    # Two creates must be under way together to pass: a launch one container at a time would
    # break the barrier (after its timeout, which only guards against a hang).
    together = threading.Barrier(2, timeout=60)
    recorded_before: List[int] = []

    def create_together(self: Any, *args: Any, **kwargs: Any) -> Any:
        recorded_before.append(sum(r["kind"] == "docker-container" for r in journal.resources))
        if kwargs["name"].endswith(("-1", "-2")):
            together.wait()
        return create(self, *args, **kwargs)

    monkeypatch.setattr(ContainerCollection, "create", create_together)
    hosts = provider.launch(4, journal)
    try:
        assert recorded_before == [4, 4, 4, 4]  # every container in the journal before any create
        assert [host.name for host in hosts] == ["docker-1", "docker-2", "docker-3", "docker-4"]
        ports = {r["name"]: r["port"] for r in journal.resources if r["kind"] == "docker-container"}
        assert len(set(ports.values())) == 4
        for index, host in enumerate(hosts, 1):
            assert isinstance(host, SshHost)
            name = f"{journal.run_id}-{index}"
            assert host.target.port == ports[name] and host.run_dir.endswith(f"{journal.run_id}-{index}")
            command = docker_client.containers.get(name).attrs["Config"]["Cmd"]
            assert command[command.index("-p") + 1] == str(ports[name])
        hosts[3].start_worker(journal.run_id, PYTHON)  # its sshd has the key pinned for it
    finally:
        released = provider.release(hosts, journal)
    assert [item.done for item in released] == [True] * 4
    assert run_containers(docker_client, journal.run_id) == []


@pytest.mark.usefixtures("no_leaked_containers")
def test_docker_launch_that_fails_on_the_third_container_leaves_nothing(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker
    from docker.models.containers import Container

    put_archive = Container.put_archive

    def refuse_the_third(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name.endswith("-3"):
            raise docker.errors.APIError("injected: no room for the keys")
        return put_archive(self, *args, **kwargs)

    monkeypatch.setattr(Container, "put_archive", refuse_the_third)
    with pytest.raises(ProviderError) as refused:
        with launched(DockerProvider(), 6):
            pytest.fail("a launch with a failed container must not start")
    [journal] = RunJournal.all()
    assert str(refused.value) == f"docker: starting container {journal.run_id}-3 failed: injected: no room for the keys"
    # Every container was journalled, and release removed each one made, the third included.
    assert [r["name"] for r in journal.resources] == [f"{journal.run_id}-{i}" for i in range(1, 7)]
    assert journal.status == OPEN and "injected" in journal.details["launch_failed"]
    assert run_containers(docker_client, journal.run_id) == []


@pytest.mark.usefixtures("no_leaked_containers")
def test_docker_release_stops_over_ssh_the_worker_of_a_container_it_cannot_remove(
    docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker
    from docker.models.containers import Container

    provider = DockerProvider()
    journal = RunJournal.start(provider.name)
    hosts = provider.launch(2, journal)
    for host in hosts:
        host.start_worker(journal.run_id, PYTHON)
    remove = Container.remove

    def refuse_the_first(self: Any, **kwargs: Any) -> None:
        if self.name == f"{journal.run_id}-1":
            raise docker.errors.APIError("injected: device or resource busy")
        remove(self, **kwargs)

    monkeypatch.setattr(Container, "remove", refuse_the_first)
    released = provider.release(hosts, journal)
    assert sorted((item.resource, item.done) for item in released) == [
        (f"container {journal.run_id}-1 ({journal.run_id})", False), (f"container {journal.run_id}-2 ({journal.run_id})", True)
    ]
    assert run_containers(docker_client, journal.run_id) == [f"{journal.run_id}-1"]
    # The container stays (teardown retries it), but not its worker: it was stopped over SSH.
    assert not wait_for_no_workers(journal.run_id.encode())
    monkeypatch.undo()
    assert [item.done for item in provider.remove(Leftover.found(journal.run_id, "docker"))] == [True]


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
