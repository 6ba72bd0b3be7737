"""The real CLI over real sshd containers: docker and static providers, failures, teardown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from tests.e2e.conftest import Testbed
from tests.helpers import REPO, cli, fab, run_cli, wait_for_no_workers
from tests.testbed.hosts import cnd_containers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leaked_workers", "no_leaked_containers")]

# Lowest golden nonces of the default block (checked against hashlib in test_spec's scan).
LOWEST_D20 = 1027827
LOWEST_D24 = 30074393
LOWEST_D30 = 346_714_796


class LiveRun:
    """A CLI search in the background whose stderr is watched line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            cli("search", "--json", *args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: List[str] = []
        self.run_id: Optional[str] = None
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._new_line:
                self.lines.append(line)
                match = re.match(r"run (cnd-[0-9a-f-]+):", line)
                if match:
                    self.run_id = match.group(1)
                self._new_line.notify_all()

    def wait_for(self, predicate: Callable[[List[str]], bool], within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        with self._new_line:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                assert left > 0 and self.process.poll() is None, "".join(self.lines[-20:])
                self._new_line.wait(left)

    def joined(self, count: int) -> None:
        self.wait_for(lambda lines: sum(" joined: " in line for line in lines) >= count)

    def result(self, within: float = 180.0) -> Dict[str, Any]:
        # stdout only: stderr belongs to the reader thread, which must see every line.
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        self.process.wait(timeout=within)
        self._reader.join(timeout=10)
        assert stdout.strip(), "".join(self.lines)
        return dict(json.loads(stdout))

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        """Stop a run a failed test left behind, the way a user would: Ctrl-C, then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def live_run() -> Iterator[Callable[..., LiveRun]]:
    runs: List[LiveRun] = []

    def start(*args: str) -> LiveRun:
        runs.append(LiveRun(*args))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def pause(container: Any) -> None:
    """docker pause, retried: the cgroup v1 freezer refuses now and then while a process forks."""
    import docker

    for attempt in range(20):
        try:
            container.pause()
            return
        except docker.errors.APIError as error:
            if "unable to freeze" not in str(error) or attempt == 19:
                raise
            time.sleep(0.25)


def test_docker_search_through_the_cli(docker_client: Any) -> None:
    # D=30: seconds of work, so every container has joined (and reported its kernel) before the
    # answer settles; a D=20 answer could settle before the slowest one's HELLO.
    result = run_cli(fab("search", "--provider", "docker", "--count", "4", "--difficulty", "30", "--json"))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["nonce"] == LOWEST_D30 and record["lowest"] is True
    assert [h["name"] for h in record["hosts"]] == ["docker-1", "docker-2", "docker-3", "docker-4"]
    assert all(h["kernel"].startswith("native:") and h["cores"] >= 1 for h in record["hosts"])
    assert not cnd_containers(docker_client)


def test_uneven_hosts_get_units_in_proportion(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("docker:\n  cpus: [1, 1, 0.25, 0.25]\n")
    result = run_cli(
        cli(
            "search", "--provider", "docker", "--inventory", str(inventory), "--count", "4",
            "--difficulty", "256", "--units", "16384", "--timeout", "20", "--json", "--kernel", "python",
        )
    )
    assert result.returncode == 3, result.stderr
    hosts = {h["name"]: h for h in json.loads(result.stdout)["hosts"]}
    fast = [hosts["docker-1"]["units"], hosts["docker-2"]["units"]]
    slow = [hosts["docker-3"]["units"], hosts["docker-4"]["units"]]
    assert all(h["cores"] == 1 for h in hosts.values())
    # A quarter CPU against (at most) a whole one: the fast hosts must get well over twice
    # the units, and each host's share of units must follow its share of hashes.
    assert min(fast) >= 2 * max(slow), hosts
    total_units = sum(h["units"] for h in hosts.values())
    total_hashes = sum(h["hashes"] for h in hosts.values())
    for host in hosts.values():
        assert abs(host["units"] / total_units - host["hashes"] / total_hashes) < 0.05, hosts


# Kills every sshd session process (not the listener): the host's connection drops.
DROP_CONNECTIONS = (
    "import os, signal\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try: cmd = open('/proc/%s/cmdline' % pid, 'rb').read()\n"
    "    except OSError: continue\n"
    "    if cmd.startswith(b'sshd: root'): os.kill(int(pid), signal.SIGKILL)\n"
)


@pytest.mark.parametrize("action", ["kill", "pause", "drop"])
def test_lost_container_mid_run_still_gives_the_lowest(docker_client: Any, action: str, live_run: Callable[..., LiveRun]) -> None:
    # Pure Python keeps the run long enough (about 10 s) to lose a host in the middle of it.
    run = live_run("--provider", "docker", "--count", "4", "--difficulty", "24", "--kernel", "python")
    run.joined(4)
    assert run.run_id is not None
    # docker-1 joined first or not, it holds low units: units 0..7 are all in flight.
    victim = docker_client.containers.get(f"{run.run_id}-1")
    if action == "drop":
        assert victim.exec_run(["python3", "-c", DROP_CONNECTIONS]).exit_code == 0
    elif action == "pause":
        pause(victim)
    else:
        victim.kill()
    record = run.result()
    assert run.process.returncode == 0, run.stderr
    assert record["nonce"] == LOWEST_D24 and record["lowest"] is True
    lost = [h for h in record["hosts"] if h["state"] == "lost"]
    assert [h["name"] for h in lost] == ["docker-1"]
    assert record["reissued"] >= 1
    assert "reissued" in run.stderr and "host lost: docker-1" in run.stderr
    if action == "pause":
        # A paused host goes silent and stops advancing at once: either 8 s deadline may fire first.
        assert "heartbeat deadline" in lost[0]["error"] or "made no progress on its units for" in lost[0]["error"]
    assert not cnd_containers(docker_client)


def test_ctrl_c_stops_every_remote_worker(docker_client: Any, live_run: Callable[..., LiveRun]) -> None:
    run = live_run("--provider", "docker", "--count", "4", "--difficulty", "256")
    run.joined(4)
    # Interrupt once the fleet has counted some work (the plain progress line shows it).
    run.wait_for(lambda lines: any(re.search(r"; [1-9][\d,]* checked at", line) for line in lines))
    run.process.send_signal(signal.SIGINT)
    record = run.result(within=60)
    assert run.process.returncode == 130
    assert record["status"] == "interrupted" and record["checked"] > 0
    assert not cnd_containers(docker_client)
    assert not wait_for_no_workers(within=5)


def test_static_inventory_run_cleans_up_and_keeps_the_hosts(testbed: Testbed, tmp_path: Path) -> None:
    inventory = testbed.inventory(tmp_path / "inventory.yaml")
    result = run_cli(fab("search", "--provider", "static", "--inventory", str(inventory), "--difficulty", "20", "--json"))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["nonce"] == LOWEST_D20 and record["lowest"] is True
    assert len(record["hosts"]) == 4
    for host in testbed.hosts:
        host.container.reload()
        assert host.container.status == "running"
        listing = host.container.exec_run(["python3", "-c", "import os; print(os.listdir('/tmp'))"]).output.decode()
        assert "cnd-fab-" not in listing, listing


def test_static_wrong_host_key_stops_that_host_only(testbed: Testbed, tmp_path: Path) -> None:
    lines = testbed.known_hosts.read_text().splitlines()
    wrong = tmp_path / "known_hosts"
    # Host 1 is listed with host 2's key.
    wrong.write_text("\n".join([lines[0].split()[0] + " " + " ".join(lines[1].split()[1:])] + lines[1:2]) + "\n")
    inventory = testbed.inventory(tmp_path / "inventory.yaml", known_hosts=wrong, count=2)
    result = run_cli(cli("search", "--provider", "static", "--inventory", str(inventory), "--difficulty", "16", "--json"))
    assert result.returncode == 0, result.stderr
    assert "static-1" in result.stderr and "host key mismatch" in result.stderr
    record = json.loads(result.stdout)
    assert record["nonce"] == 133050
    assert {h["name"]: h["state"] for h in record["hosts"]} == {"static-1": "lost", "static-2": "stopped"}


def test_unknown_host_key_is_refused_unless_trusted_on_first_use(testbed: Testbed, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    inventory = testbed.inventory(tmp_path / "inventory.yaml", known_hosts=empty, count=1)
    refused = run_cli(cli("search", "--provider", "static", "--inventory", str(inventory), "--difficulty", "8"))
    assert refused.returncode == 1
    assert "unknown host key" in refused.stderr and "--accept-new-host-key" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("cnd-fab: every host was lost")
    trusted = run_cli(
        cli("search", "--provider", "static", "--inventory", str(inventory), "--difficulty", "8", "--accept-new-host-key")
    )
    assert trusted.returncode == 0, trusted.stderr
    assert "WARNING: --accept-new-host-key" in trusted.stderr
    assert "trusting the unverified host key" in trusted.stderr
    assert testbed.hosts[0].host_key.key.get_base64() in empty.read_text()


def test_teardown_after_a_killed_controller_twice(docker_client: Any, private_state: Path, live_run: Callable[..., LiveRun]) -> None:
    run = live_run("--provider", "docker", "--count", "2", "--difficulty", "256")
    run.joined(2)
    run.process.kill()
    run.process.wait()
    assert run.run_id is not None
    assert len(cnd_containers(docker_client)) == 2
    dry = run_cli(fab("teardown", "--dry-run"))
    assert dry.stderr.count("would remove container") == 2 and len(cnd_containers(docker_client)) == 2
    first = run_cli(fab("teardown"))
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("removed container") == 2
    assert not cnd_containers(docker_client)
    second = run_cli(fab("teardown"))
    assert second.returncode == 0 and "removed 0 resource(s) from 0 run(s)" in second.stderr
    journal = json.loads((private_state / "runs" / f"{run.run_id}.json").read_text())
    assert journal["status"] == "cleaned"
    assert {r["kind"] for r in journal["resources"]} >= {"docker-container", "ssh-run-dir"}


def test_teardown_finds_containers_by_label_without_a_journal(docker_client: Any, private_state: Path, live_run: Callable[..., LiveRun]) -> None:
    run = live_run("--provider", "docker", "--count", "1", "--difficulty", "256")
    run.joined(1)
    run.process.kill()
    run.process.wait()
    for journal in (private_state / "runs").glob("*.json"):
        journal.unlink()
    result = run_cli(cli("teardown"))
    assert f"removed container {run.run_id}-1" in result.stderr
    assert not cnd_containers(docker_client)


def test_teardown_spares_a_live_docker_run_of_another_state_directory(
    docker_client: Any, tmp_path: Path, live_run: Callable[..., LiveRun]
) -> None:
    run = live_run("--provider", "docker", "--count", "1", "--difficulty", "256")
    run.joined(1)
    # Another user's teardown: no journal names the run, but its containers name its controller.
    elsewhere = {**os.environ, "CND_FAB_STATE_DIR": str(tmp_path / "another-state-dir")}
    plain = run_cli(cli("teardown"), env=elsewhere)
    assert plain.returncode == 0, plain.stderr
    assert f"skipping {run.run_id}: its controller still runs on this machine; name it with --run {run.run_id}" in plain.stderr
    expired = run_cli(cli("teardown", "--expired"), env=elsewhere)
    assert expired.returncode == 0 and "removed 0 resource(s) from 0 run(s)" in expired.stderr, expired.stderr
    assert len(cnd_containers(docker_client)) == 1
    run.process.send_signal(signal.SIGINT)
    assert run.result(within=60)["status"] == "interrupted"
    assert not cnd_containers(docker_client)


def test_missing_image_is_a_clear_error_before_launch(docker_client: Any) -> None:
    result = run_cli(cli("search", "--provider", "docker", "--image", "cnd-fab-no-such-image:1"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "cnd-fab: the Docker image 'cnd-fab-no-such-image:1' is missing; build it with image/build.sh "
        "(no registry needed) or `docker build -t cnd-fab-sshd:latest image/`"
    ]


def test_within_on_the_docker_hosts_finishes_in_time(testbed: Testbed, tmp_path: Path) -> None:
    inventory = testbed.inventory(tmp_path / "inventory.yaml")
    started = time.monotonic()
    result = run_cli(
        cli("search", "--provider", "static", "--inventory", str(inventory), "--difficulty", "24",
            "--within", "30", "--confidence", "0.9", "--json")
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["nonce"] == LOWEST_D24 and record["lowest"] is True
    assert elapsed < 30 and record["seconds"] < 30
    assert "settle the answer within 30s with probability" in result.stderr
