"""Fixtures every test gets: loopback-only networking, a private state dir, no ~/.ssh."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import GUARD_DIR, REPO, wait_for_no_workers, worker_processes
from tests.loopback_guard.sitecustomize import ENV_FLAG, guarded

# Native kernels are built once into the clone and shared by every test and subprocess.
os.environ.setdefault("CND_FAB_CACHE_DIR", str(REPO / ".cache" / "cnd-fab"))


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any socket connect to a non-loopback address, here and in every subprocess."""
    monkeypatch.setattr(socket.socket, "connect", guarded(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(socket.socket.connect_ex))
    # Subprocesses (the CLI, moto) load the same guard through sitecustomize.
    monkeypatch.setenv(ENV_FLAG, "1")
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(GUARD_DIR) + (os.pathsep + path if path else ""))
    yield


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own run journals and never reads the developer's ~/.ssh."""
    state = tmp_path / "state"
    monkeypatch.setenv("CND_FAB_STATE_DIR", str(state))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    # No test may find the developer's AWS credentials, profile, region or instance metadata.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return state


@pytest.fixture
def no_leaked_workers() -> Iterator[None]:
    """Fail the test if it leaves a worker process behind."""
    before = set(worker_processes())
    yield
    left = {pid: cmd for pid, cmd in wait_for_no_workers().items() if pid not in before}
    assert not left, f"worker processes left behind: {left}"
