"""The per-unit log of a real run with a lost host: `fab stats --joblog` CSV and its invariants,
and `fab stats --timeline` pictures of that run and of its resumed leg."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from matplotlib.image import imread

from cnd_fab.timeline import LOST_COLOUR
from tests.helpers import REPO, cli, run_cli, worker_processes
from tests.unit.test_timeline import coloured_pixels, pixels_near

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("private_state")]

UNIT_NONCES = 1 << 22


def worker_leaders(run_id: str) -> List[int]:
    """The local workers of a run: the leaders of their own process groups (cores are not)."""
    return sorted(pid for pid in worker_processes(run_id.encode()) if os.getpgid(pid) == pid)


def run_with_a_lost_host() -> Dict[str, Any]:
    """A 2-host local run (D=64: nothing to find) whose second worker is killed after 2 s."""
    process = subprocess.Popen(
        cli("search", "--difficulty", "64", "--count", "2", "--timeout", "6", "--json"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None and process.stdout is not None
    run_id = ""
    joined = 0
    while joined < 2:
        line = process.stderr.readline()
        assert line, "the search ended early"
        if line.startswith("run cnd-"):
            run_id = line.split()[1].rstrip(":")
        joined += " joined: " in line
    time.sleep(2.0)
    leaders = worker_leaders(run_id)
    assert len(leaders) == 2
    os.killpg(leaders[1], signal.SIGKILL)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 3
    result: Dict[str, Any] = json.loads(stdout)
    return result


def joblog_rows(run_id: str) -> List[Dict[str, str]]:
    exported = run_cli(cli("stats", "--joblog", run_id))
    assert exported.returncode == 0, exported.stderr
    return list(csv.DictReader(io.StringIO(exported.stdout)))


def test_joblog_of_a_run_with_a_lost_host_and_its_timelines(private_state: Path, tmp_path: Path) -> None:
    result = run_with_a_lost_host()
    lost = [host for host in result["hosts"] if host["state"] == "lost"]
    assert len(lost) == 1 and result["reissued"] > 0
    lost_host = lost[0]["name"]
    rows = joblog_rows(result["run_id"])
    units = [row for row in rows if row["kind"] == "unit"]
    assert units and not [row for row in rows if row["kind"] == "bucket"]  # 1024 units: every row kept

    settled = [row for row in units if row["result"] in ("settled", "golden")]
    assert len(settled) == len({row["unit"] for row in settled}), "a unit settled twice"
    assert len(settled) * UNIT_NONCES == result["nonces_settled"]
    for row in settled:
        assert int(row["hashes"]) == UNIT_NONCES

    lost_rows = [row for row in units if row["result"] == "lost"]
    assert lost_rows and all(row["host"] == lost_host for row in lost_rows)
    for row in lost_rows:
        redo = [other for other in units if other["unit"] == row["unit"] and other["lost_on"] == lost_host]
        assert len(redo) == 1 and redo[0]["host"] == row["redone_on"] != lost_host
        assert float(redo[0]["issued_at"]) >= float(row["done_at"])

    for row in units:
        times = [float(row[name]) for name in ("issued_at", "started_at", "done_at") if row[name]]
        assert times == sorted(times), row
        assert float(row["done_at"]) <= result["seconds"] + 0.5

    picture = tmp_path / "lost.png"
    drawn = run_cli(cli("stats", "--timeline", result["run_id"], "--plot", str(picture)))
    assert drawn.returncode == 0, drawn.stderr
    image = imread(picture)
    assert coloured_pixels(image) > 2000 and pixels_near(image, LOST_COLOUR) > 20

    resumed = run_cli(cli("search", "--resume", result["run_id"], "--timeout", "3", "--json"))
    assert resumed.returncode == 3, resumed.stderr
    resumed_id = json.loads(resumed.stdout)["run_id"]
    resumed_rows = [row for row in joblog_rows(resumed_id) if row["kind"] == "unit"]
    done_before = {row["unit"] for row in settled}
    assert resumed_rows and not done_before & {row["unit"] for row in resumed_rows}
    picture = tmp_path / "resumed.png"
    drawn = run_cli(cli("stats", "--timeline", resumed_id, "--plot", str(picture)))
    assert drawn.returncode == 0, drawn.stderr
    assert coloured_pixels(imread(picture)) > 2000


def test_joblog_and_timeline_input_errors(private_state: Path) -> None:
    for args, message in [
        (["--joblog", "cnd-20260101-000000-eeeeee"], "there is no record of run cnd-20260101-000000-eeeeee"),
        (["--timeline", "cnd-20260101-000000-eeeeee"], "--timeline RUN_ID draws into a PNG file: add --plot FILE.png"),
        (["--joblog", "a", "--timeline", "b"], "give --joblog or --timeline, not both"),
    ]:
        result = run_cli(cli("stats", *args))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"cnd-fab: {message}"), result.stderr
