"""`fab bench --checkpoints`: what checkpoints cost a search, and what resuming saves.

1. Cost: local searches with nothing to find (D=256), `seconds` each, in turns with the
   checkpoints a search keeps and without any, five of each. It prints the median hash rates,
   their difference, and the controller time the flushes took.
2. Saving: the default block at D=30 is searched with `cnd-fab search`, SIGKILLed a few
   seconds after its host joined, and resumed with `--resume` to its answer. The killed leg
   hashed about (the resumed leg's rate) × (its time from joining to the kill); the saving is
   the share of that which the checkpoint kept, so that the resumed leg did not hash it again.

Searches run as whole `cnd-fab` processes in a temporary state directory, so `fab stats` and
`fab status` never see them.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from rich.console import Console
from rich.table import Table

from .bench import native_payload
from .checkpoint import Checkpoint, CheckpointKeeper
from .errors import CndError
from .journal import RunJournal
from .providers.local import LocalProvider
from .run import measuring_search
from .startup_bench import cli_command

TRIALS = 5
KILL_AFTER = (3.0, 6.0, 9.0)
DIFFICULTY = "30"


def overhead_figures(console: Console, seconds: float) -> None:
    """Median rates with and without checkpoints, and the flushes' own cost."""
    payload = native_payload()
    rates: Dict[bool, List[float]] = {True: [], False: []}
    flushes: List[Tuple[int, float]] = []
    for _ in range(TRIALS):
        for keep in (True, False):
            outcome, fleet, _ = measuring_search(LocalProvider(), 1, seconds, payload, keep_checkpoints=keep)
            # Start-up included, as in every end-to-end figure: it is the same with or without.
            rates[keep].append(outcome.checked / outcome.seconds)
            keeper = fleet.checkpoint
            if isinstance(keeper, CheckpointKeeper):
                flushes.append((keeper.writes, keeper.seconds))
    with_checkpoints, without = statistics.median(rates[True]), statistics.median(rates[False])
    writes = sum(count for count, _ in flushes)
    flush_seconds = sum(spent for _, spent in flushes)
    table = Table(title=f"checkpoint cost: local searches of {seconds:g}s, {TRIALS} with and {TRIALS} without")
    for column in ("", "median rate", "all rates"):
        table.add_column(column, justify="right")
    for label, keep in (("with checkpoints", True), ("without", False)):
        table.add_row(label, f"{statistics.median(rates[keep]) / 1e6:.2f} MH/s", ", ".join(f"{r / 1e6:.2f}" for r in rates[keep]))
    console.print(table)
    share = flush_seconds / (TRIALS * seconds)
    console.print(
        f"rate difference {100 * (without - with_checkpoints) / without:+.2f}% (run-to-run noise is about ±2%); "
        f"{writes} flushes took {1000 * flush_seconds / max(1, writes):.3f} ms each, "
        f"{100 * share:.4f}% of the controller's time",
        highlight=False,
    )


def _search(argv: List[str], env: Dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupted_run(env: Dict[str, str], state: Path, kill_after: float) -> Dict[str, float]:
    """Kill a D=30 search `kill_after` seconds after its host joined, resume it; the figures."""
    base = cli_command()
    killed = _search([*base, "search", "--difficulty", DIFFICULTY], env)
    assert killed.stderr is not None
    run_id = ""
    while True:
        line = killed.stderr.readline()
        if not line:
            raise CndError(f"the D={DIFFICULTY} search ended before its host joined")
        if line.startswith("run cnd-"):
            run_id = line.split()[1].rstrip(":")
        if " joined: " in line:
            joined = time.monotonic()
            break
    time.sleep(kill_after)
    killed.send_signal(signal.SIGKILL)
    searched = time.monotonic() - joined
    killed.wait(timeout=30)
    journal = RunJournal.load(state / "runs" / f"{run_id}.json")
    if journal.checkpoint is None:
        raise CndError(f"run {run_id} left no checkpoint")
    settled = Checkpoint.from_json(journal.checkpoint).nonces_settled()
    resumed = _search([*base, "search", "--resume", run_id, "--json"], env)
    stdout, stderr = resumed.communicate(timeout=1800)
    if resumed.returncode != 0:
        raise CndError(f"resuming {run_id} failed: {(stderr.strip().splitlines() or ['no output'])[-1]}")
    record = json.loads(stdout)
    # The resumed leg's search rate: its hashes over its time after its host joined.
    resumed_record = json.loads((state / "records" / f"{record['run_id']}.json").read_text())
    joined_at = min(host["joined_at"] for host in resumed_record["joblog"]["hosts"] if host["joined_at"] is not None)
    rate = record["checked"] / (record["seconds"] - joined_at)
    killed_hashes = rate * searched
    return {
        "kill_after": kill_after,
        "settled": float(settled),
        "killed_hashes": killed_hashes,
        "saved": settled / killed_hashes,
        "resumed_hashes": float(record["checked"]),
        "left": float(record["nonces_settled_this_leg"]),
        "nonce": float(record["nonce"]),
    }


def saving_figures(console: Console) -> None:
    """Interrupted and resumed D=30 searches, killed at each of KILL_AFTER."""
    table = Table(title=f"resuming a D={DIFFICULTY} search killed by SIGKILL (checkpoints every 2 s)")
    for column in ("killed after", "settled before", "killed leg hashed", "saved", "resumed leg hashed", "left to settle", "answer"):
        table.add_column(column, justify="right")
    saved: List[float] = []
    with tempfile.TemporaryDirectory(prefix="cnd-fab-resume-") as folder:
        env = dict(os.environ, CND_FAB_STATE_DIR=folder)
        for kill_after in KILL_AFTER:
            figures = interrupted_run(env, Path(folder), kill_after)
            saved.append(figures["saved"])
            table.add_row(
                f"{kill_after:g}s",
                f"{figures['settled']:,.0f}",
                f"≈{figures['killed_hashes']:,.0f}",
                f"{figures['saved']:.1%}",
                f"{figures['resumed_hashes']:,.0f}",
                f"{figures['left']:,.0f}",
                f"{figures['nonce']:,.0f}",
            )
    console.print(table)
    console.print(f"resuming saved {statistics.mean(saved):.1%} of the killed legs' work on average", highlight=False)


def checkpoint_figures(console: Console, seconds: float) -> int:
    """Both figure sets; exit code 0."""
    overhead_figures(console, seconds)
    saving_figures(console)
    return 0
