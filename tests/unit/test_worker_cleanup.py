"""`worker.py --cleanup RUN_DIR`: it kills this run's worker, and nothing that merely took its id.

The exit status tells the controller what happened (see worker.cleanup): 0 killed, 1 nothing
was running, 2 refused, 3 the group is not ours and was left alone, 4 the kill is not confirmed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest

from cnd_fab.kernels import ensure_kernels, machine_architecture
from cnd_fab.transport import worker_file
from remote import worker
from tests.helpers import wait_for_no_workers, worker_processes

RUN_ID = "cleanup-test-run"


def run_cleanup(run_dir: Path) -> Tuple[int, Dict[str, object], str]:
    """Run --cleanup as the controller does over SSH: the exit status, its JSON line, stderr."""
    done = subprocess.run(
        [sys.executable, str(worker_file()), "--cleanup", str(run_dir)], capture_output=True, text=True, timeout=30
    )
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / f"{worker.RUN_DIR_PREFIX}{RUN_ID}-0"
    folder.mkdir()
    return folder


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process leading its own group, as a reused id would be."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def test_a_pidfile_naming_an_unrelated_group_kills_nothing(run_dir: Path, stranger: subprocess.Popen[bytes]) -> None:
    (run_dir / worker.PIDFILE_NAME).write_text(f"{stranger.pid}\n")
    status, report, errors = run_cleanup(run_dir)
    assert status == worker.CLEANUP_NOT_OURS == 12
    assert report == {"cleaned": str(run_dir), "pgid": stranger.pid, "killed": False, "result": "not ours"}
    assert f"left process group {stranger.pid} alone" in errors
    assert stranger.poll() is None  # it survived
    assert not run_dir.exists()  # only the files went


def test_this_runs_worker_its_cores_and_kernels_are_killed(run_dir: Path) -> None:
    folder, problems = ensure_kernels((machine_architecture(),))
    assert folder is not None and not problems, problems
    # Laid out as the SSH transport pushes it: the worker and its kernel inside the run directory.
    shutil.copy(worker_file(), run_dir / "worker.py")
    kernel = run_dir / f"sha256d-{machine_architecture()}"
    shutil.copy(folder / kernel.name, kernel)
    started = subprocess.Popen(
        [sys.executable, str(run_dir / "worker.py"), "--own-session", "--pidfile", str(run_dir / worker.PIDFILE_NAME),
         "--run-id", RUN_ID, "--processes", "2", "--kernel", "native", "--kernel-dir", str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert started.stdout is not None
        hello = worker.decode_to_controller(started.stdout.readline())
        assert isinstance(hello, worker.Hello) and hello.kernel.startswith("native:")
        # The worker and two cores (and their kernels, whose path holds the run id too).
        assert len([line for line in worker_processes(RUN_ID.encode()).values() if "worker.py" in line]) == 3
        status, report, _ = run_cleanup(run_dir)
        assert status == worker.CLEANUP_KILLED == 0
        assert report == {"cleaned": str(run_dir), "pgid": started.pid, "killed": True, "result": "killed"}
        assert not wait_for_no_workers(RUN_ID.encode())
        assert not wait_for_no_workers(str(kernel).encode())
        assert not run_dir.exists()
    finally:
        started.kill()
        started.wait()


def test_a_group_already_gone_or_no_pidfile_is_nothing_to_kill(run_dir: Path) -> None:
    ended = subprocess.Popen(["true"], start_new_session=True)
    ended.wait()
    (run_dir / worker.PIDFILE_NAME).write_text(f"{ended.pid}\n")
    status, report, _ = run_cleanup(run_dir)
    assert (status, report["result"], report["killed"]) == (worker.CLEANUP_NOTHING, "nothing running", False)
    run_dir.mkdir()
    status, report, _ = run_cleanup(run_dir)
    assert (status, report["pgid"]) == (worker.CLEANUP_NOTHING, None)


def test_a_directory_not_named_like_ours_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "precious"
    other.mkdir()
    status, report, errors = run_cleanup(other)
    assert (status, report) == (worker.CLEANUP_REFUSED, {})
    assert "not a cnd-fab run directory" in errors and other.exists()


def test_a_command_line_runs_from_the_run_directory_only_inside_it() -> None:
    run = "/tmp/cnd-fab-r-0"
    assert worker._runs_from(["python3", f"{run}/worker.py", "--run-id", "r"], {run})
    assert worker._runs_from([f"{run}/sha256d-x86_64", "--path", "sha-ni", "--serve"], {run})
    assert not worker._runs_from(["python3", f"{run}-1/worker.py"], {run})  # another host's directory
    assert not worker._runs_from(["sleep", "60"], {run})
    assert not worker._runs_from(["python3", f"{run}/worker.py", "--cleanup", run], {run})


def test_without_proc_a_live_group_is_left_alone_and_the_stop_unconfirmed(
    run_dir: Path, stranger: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / worker.PIDFILE_NAME).write_text(f"{stranger.pid}\n")
    monkeypatch.setattr(worker, "_group_members", lambda pgid: None)  # as on a host without /proc
    assert worker.cleanup(str(run_dir)) == worker.CLEANUP_UNCONFIRMED == 13
    assert json.loads(capsys.readouterr().out)["result"] == "unconfirmed"
    assert stranger.poll() is None and not run_dir.exists()
