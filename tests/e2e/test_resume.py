"""`fab search --resume`: a killed, timed-out or interrupted run goes on from its checkpoint,
never searches a settled unit again, and keeps the lowest-nonce rule across legs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from cnd_fab.checkpoint import Checkpoint
from cnd_fab.journal import RunJournal
from cnd_fab.schedule import GoldenNonce
from cnd_fab.spec import Problem, UnitSpace
from tests.helpers import REPO, cli, run_cli, wait_for_no_workers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("private_state")]

BLOCK = b"COMSM0010cloud"
# The default block's lowest golden nonces, checked with the kernel's own one-shot scan.
LOWEST_D30 = 346_714_796


def journal_path(state: Path, run_id: str) -> Path:
    return state / "runs" / f"{run_id}.json"


def stored_checkpoint(state: Path, run_id: str) -> Checkpoint:
    journal = RunJournal.load(journal_path(state, run_id))
    assert journal.checkpoint is not None
    return Checkpoint.from_json(journal.checkpoint)


def search_json(*args: str, code: int = 0) -> Dict[str, Any]:
    result = run_cli(cli("search", "--json", *args), timeout=600)
    assert result.returncode == code, result.stderr
    record: Dict[str, Any] = json.loads(result.stdout)
    return record


def kill_after_a_checkpoint(state: Path, *args: str) -> str:
    """Start a search, SIGKILL its controller once a checkpoint shows settled units; its run id."""
    process = subprocess.Popen(cli("search", *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    run_id: Optional[str] = None
    while run_id is None:
        line = process.stderr.readline()
        assert line, "the search ended before it started"
        if line.startswith("run cnd-"):
            run_id = line.split()[1].rstrip(":")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if stored_checkpoint(state, run_id).units_settled() > 0:
                break
        except (OSError, ValueError, AssertionError):
            pass
        time.sleep(0.2)
    process.kill()
    process.wait(timeout=10)
    assert not wait_for_no_workers(run_id.encode(), within=10.0)
    return run_id


def assert_resume_finishes_what_the_killed_leg_left(state: Path, *provider: str) -> None:
    killed = kill_after_a_checkpoint(state, "--difficulty", "30")
    before = stored_checkpoint(state, killed)
    assert before.status == "running" and before.units_settled() > 0
    settled_before = before.nonces_settled()
    status = run_cli(cli("status"))
    assert status.returncode == 0, status.stderr
    [line] = [line for line in status.stdout.splitlines() if killed in line and "D=30" in line]
    assert "controller killed" in line and f"({before.units_settled()} of 1,024 units)" in line
    resumed = search_json("--resume", killed, *provider)
    assert (resumed["nonce"], resumed["lowest"], resumed["status"]) == (LOWEST_D30, True, "found")
    assert resumed["resumed_from"] == killed and resumed["nonces_settled_before"] == settled_before
    left = LOWEST_D30 + 1 - settled_before
    assert resumed["nonces_settled_this_leg"] == left
    assert resumed["checked"] < 1.25 * left, (resumed["checked"], left)
    assert stored_checkpoint(state, killed).resumed_by == resumed["run_id"]
    assert stored_checkpoint(state, resumed["run_id"]).status == "found"


def test_a_killed_local_search_resumes_to_the_lowest_answer(private_state: Path) -> None:
    assert_resume_finishes_what_the_killed_leg_left(private_state)


@pytest.mark.usefixtures("no_leaked_containers")
def test_a_killed_local_search_resumes_on_four_docker_hosts(private_state: Path, docker_client: Any) -> None:
    assert_resume_finishes_what_the_killed_leg_left(private_state, "--provider", "docker", "--count", "4")


def test_timeouts_then_resumes_until_the_answer_and_never_twice(private_state: Path) -> None:
    legs = [search_json("--difficulty", "30", "--timeout", "3", code=3)]
    legs.append(search_json("--resume", legs[0]["run_id"], "--timeout", "3", code=3))
    legs.append(search_json("--resume", legs[1]["run_id"]))
    final = legs[-1]
    assert (final["nonce"], final["lowest"]) == (LOWEST_D30, True)
    for earlier, later in zip(legs, legs[1:]):
        assert later["resumed_from"] == earlier["run_id"]
        assert later["nonces_settled_before"] == earlier["nonces_settled"]
        assert earlier["nonces_settled"] > earlier["nonces_settled_before"], "a leg settled nothing"
    again = run_cli(cli("search", "--resume", legs[0]["run_id"]))
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"cnd-fab: --resume: run {legs[0]['run_id']} was already resumed as {legs[1]['run_id']}; resume that run instead"
    )
    finished = run_cli(cli("search", "--resume", final["run_id"]))
    assert finished.returncode == 2
    assert f"finished (golden nonce {LOWEST_D30}); there is nothing to resume" in finished.stderr


def write_journal(state: Path, run_id: str, checkpoint: Dict[str, Any]) -> Path:
    journal = RunJournal(run_id=run_id, provider="local", status="cleaned", checkpoint=checkpoint)
    journal.path = journal_path(state, run_id)
    journal.save()
    return journal.path


def test_a_settled_answer_is_printed_at_once_with_no_launch(private_state: Path) -> None:
    problem = Problem(BLOCK, 4, 8)
    golden = GoldenNonce(0, 330, problem.hash(330).hex())
    stopped = Checkpoint(problem, UnitSpace(4, 1024), False, settled_prefix=1, golden=(golden,), status="interrupted")
    write_journal(private_state, "cnd-20260101-000000-aaaaaa", stopped.to_json())
    result = run_cli(cli("search", "--resume", "cnd-20260101-000000-aaaaaa", "--json"))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["nonce"], record["lowest"], record["checked"], record["hosts"]) == (330, True, 0, [])
    assert record["resumed_from"] == "cnd-20260101-000000-aaaaaa" and record["nonces_settled_this_leg"] == 0
    assert "joined" not in result.stderr
    assert [path.name for path in (private_state / "runs").glob("*.json")] == ["cnd-20260101-000000-aaaaaa.json"]
    assert stored_checkpoint(private_state, "cnd-20260101-000000-aaaaaa").status == "found"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--difficulty", "12"], "--difficulty 12 does not match run cnd-20260101-000000-bbbbbb (8)"),
        (["--block", "other"], "--block block 6f74686572 does not match run cnd-20260101-000000-bbbbbb"),
        (["--units", "2048"], "--units 2048 does not match run cnd-20260101-000000-bbbbbb (1024)"),
        (["--any"], "--any on does not match run cnd-20260101-000000-bbbbbb (off)"),
    ],
)
def test_a_different_problem_is_one_line_and_launches_nothing(private_state: Path, flags: List[str], message: str) -> None:
    stopped = Checkpoint(Problem(BLOCK, 4, 8), UnitSpace(4, 1024), False, settled_prefix=3, status="timeout")
    write_journal(private_state, "cnd-20260101-000000-bbbbbb", stopped.to_json())
    result = run_cli(cli("search", "--resume", "cnd-20260101-000000-bbbbbb", *flags))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert len(list((private_state / "runs").glob("*.json"))) == 1
    # The same values as the checkpoint's are no mismatch; units 0-2 are settled, so not searched.
    same = run_cli(cli("search", "--resume", "cnd-20260101-000000-bbbbbb", "--difficulty", "8", "--json"))
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["nonce"] >= 3 * UnitSpace(4, 1024).unit_size


def test_a_corrupted_checkpoint_is_one_line_and_left_alone(private_state: Path) -> None:
    problem = Problem(BLOCK, 4, 8)
    data = Checkpoint(problem, UnitSpace(4, 1024), False, settled_prefix=1, status="timeout").to_json()
    data["golden"] = [{"unit": 0, "nonce": 331, "hash": problem.hash(330).hex()}]  # a forged answer
    path = write_journal(private_state, "cnd-20260101-000000-cccccc", data)
    before = path.read_bytes()
    result = run_cli(cli("search", "--resume", "cnd-20260101-000000-cccccc"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cnd-fab: --resume: the checkpoint of run cnd-20260101-000000-cccccc is corrupted "
        "(golden nonce 331 does not hash to a golden hash); its journal is left as it is"
    )
    assert path.read_bytes() == before
    path.write_text("{ not json")
    result = run_cli(cli("search", "--resume", "cnd-20260101-000000-cccccc"))
    assert result.returncode == 2 and "the journal of run cnd-20260101-000000-cccccc is unreadable" in result.stderr
    assert path.read_text() == "{ not json"


def test_an_eight_byte_run_resumes_past_unit_2_20(private_state: Path) -> None:
    problem = Problem(BLOCK, 8, 8)
    space = UnitSpace(8, 1 << 42)
    first = (1 << 20) + 3
    stopped = Checkpoint(problem, space, False, settled_prefix=first, settled_runs=((first + 2, first + 3),), status="interrupted")
    write_journal(private_state, "cnd-20260101-000000-dddddd", stopped.to_json())
    record = search_json("--resume", "cnd-20260101-000000-dddddd")
    unit = space.unit(first)
    assert record["status"] == "found" and record["lowest"] and record["nonce_bytes"] == 8
    assert unit.start <= record["nonce"] < unit.end
    assert problem.scan(unit.start, record["nonce"] + 1) == record["nonce"]  # the lowest in its unit
    assert record["nonces_settled_before"] == (first + 1) * space.unit_size  # the prefix and one above it


def test_within_plans_a_resumed_run_for_what_is_left(private_state: Path) -> None:
    # 921 of 1,024 units settled at D=32: the 432 M nonces left hold a golden nonce with
    # probability 1 - e^(-432e6 / 2^32), about 0.096, where the whole space would give 0.632.
    stopped = Checkpoint(Problem(BLOCK, 4, 32), UnitSpace(4, 1024), False, settled_prefix=921, status="timeout")
    write_journal(private_state, "cnd-20260101-000000-ffffff", stopped.to_json())
    refused = run_cli(cli("search", "--resume", "cnd-20260101-000000-ffffff", "--within", "60", "--confidence", "0.5"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "cnd-fab: the 432,013,312 nonces left of the 2^32 space hold a golden nonce at difficulty 32 only with "
        "probability 0.096, below --confidence 0.5; nothing was launched (try --best-effort)"
    )
    assert len(list((private_state / "runs").glob("*.json"))) == 1
    # With a golden nonce known two units ahead, the answer is certain: the plan is for 2 units.
    problem = Problem(BLOCK, 4, 8)
    unit = UnitSpace(4, 1024).unit(921)
    nonce = problem.scan(unit.start, unit.end)
    assert nonce is not None
    known = Checkpoint(
        problem, UnitSpace(4, 1024), False, settled_prefix=920, golden=(GoldenNonce(921, nonce, problem.hash(nonce).hex()),),
        status="timeout",
    )
    write_journal(private_state, "cnd-20260101-000000-abcdef", known.to_json())
    planned = run_cli(cli("search", "--resume", "cnd-20260101-000000-abcdef", "--within", "60", "--confidence", "0.99", "--json"))
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["nonce"] <= nonce
