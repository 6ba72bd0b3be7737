"""Shared test helpers: the process table and running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
GUARD_DIR = REPO / "tests" / "loopback_guard"


def worker_processes(marker: bytes = b"worker.py") -> Dict[int, str]:
    """pid -> command line of every process whose command line mentions `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_for_no_workers(marker: bytes = b"worker.py", within: float = 5.0) -> Dict[int, str]:
    """Poll until no such process is left; return what is still there after `within`."""
    deadline = time.monotonic() + within
    while True:
        left = worker_processes(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def cli(*args: str) -> List[str]:
    return [str(VENV_BIN / "cnd-fab"), *args]


def fab(*args: str) -> List[str]:
    return [str(VENV_BIN / "fab"), *args]


def run_cli(
    argv: Sequence[str], timeout: float = 300, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
