"""`fab bench --startup`: how long the CLI takes as a whole process, as a user starts it.

Times `cnd-fab --help` and `cnd-fab search --difficulty 8` (local provider) five times each
after one untimed warm-up run, which also builds the native kernels if they are not cached
yet. The searches keep their journals and run records in a temporary state directory, so
the figure adds nothing to `fab stats`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from rich.console import Console
from rich.table import Table

from .errors import CndError

RUNS = 5
#: Each command and the most its median may take (issue 9's targets).
COMMANDS: Tuple[Tuple[Tuple[str, ...], float], ...] = (
    (("--help",), 0.25),
    (("search", "--difficulty", "8"), 0.4),
)


def cli_command() -> List[str]:
    """The installed `cnd-fab` next to this interpreter, else this interpreter running it."""
    beside = Path(sys.executable).parent / "cnd-fab"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cnd-fab")
    if found:
        return [found]
    return [sys.executable, "-c", "from cnd_fab.cli import run_program; run_program()"]


def time_process(argv: Sequence[str], env: Dict[str, str]) -> float:
    """Wall seconds of one whole process; a failed run is an error, not a figure."""
    began = time.perf_counter()
    done = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CndError(f"{' '.join(argv)} failed with exit code {done.returncode}: {last}")
    return elapsed


def startup_figures(console: Console, runs: int = RUNS) -> int:
    """Time each start-up command `runs` times and print median, min and max; exit code 0."""
    base = cli_command()
    table = Table(title=f"start-up as whole processes ({runs} runs each, after one warm-up)")
    for column in ("command", "median", "min", "max", "target"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="cnd-fab-startup-") as state:
        env = dict(os.environ, CND_FAB_STATE_DIR=state)
        for args, target in COMMANDS:
            argv = [*base, *args]
            time_process(argv, env)
            times = [time_process(argv, env) for _ in range(runs)]
            median = statistics.median(times)
            table.add_row(
                "cnd-fab " + " ".join(args),
                f"{median:.3f}s",
                f"{min(times):.3f}s",
                f"{max(times):.3f}s",
                f"{'≤' if median <= target else 'above'} {target:g}s",
            )
    console.print(table)
    return 0
