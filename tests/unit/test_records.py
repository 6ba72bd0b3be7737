"""Run records and the statistics over them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest

from cnd_fab.records import load_records, summarise, t_interval, write_record
from tests.helpers import cli, run_cli


def record(run: str, provider: str, hosts: int, seconds: float, difficulty: int = 24, status: str = "found") -> Dict[str, Any]:
    return {
        "run_id": run,
        "provider": provider,
        "instance_type": None,
        "hosts": hosts,
        "parameters": {"difficulty": difficulty},
        "time_to_result": seconds if status in ("found", "none") else None,
    }


def test_groups_means_intervals_speedup_and_efficiency(private_state: Path) -> None:
    rows: List[Dict[str, Any]] = [
        record("a", "ec2", 1, 10.0), record("b", "ec2", 1, 12.0), record("c", "ec2", 1, 11.0),
        record("d", "ec2", 4, 3.0), record("e", "ec2", 4, 3.2),
        record("f", "ec2", 4, 99.0, status="timeout"),
        record("g", "ec2", 4, 1.0, difficulty=20),
    ]
    for row in rows:
        write_record(row)
    assert len(load_records()) == 7
    stats = {(s.difficulty, s.hosts): s for s in summarise(load_records(), 0.95)}
    one, four = stats[(24, 1)], stats[(24, 4)]
    assert one.runs == 3 and one.mean == pytest.approx(11.0) and one.stdev == pytest.approx(1.0)
    # Student t with 2 degrees of freedom: 4.303 * 1 / sqrt(3)
    assert one.interval == pytest.approx((11.0 - 4.303 / math.sqrt(3), 11.0 + 4.303 / math.sqrt(3)), abs=1e-3)
    assert four.runs == 2 and four.speedup == pytest.approx(11.0 / 3.1)
    assert four.efficiency == pytest.approx(11.0 / 3.1 / 4)
    assert stats[(20, 4)].speedup is None  # no single-host runs at D = 20
    assert t_interval([5.0], 0.95) is None


def test_every_search_writes_a_record_and_stats_reads_them(private_state: Path, tmp_path: Path) -> None:
    for count in ("1", "2"):
        result = run_cli(cli("search", "--difficulty", "12", "--count", count))
        assert result.returncode == 0, result.stderr
    records = sorted((private_state / "records").glob("*.json"))
    assert len(records) == 2
    saved = json.loads(records[0].read_text())
    assert saved["outcome"]["status"] == "found" and saved["outcome"]["nonce"] == 2670
    assert saved["parameters"]["difficulty"] == 12 and saved["time_to_result"] > 0
    assert saved["per_host"][0]["kernel"] and saved["startup"]["mean"] is not None
    assert saved["per_host"][0]["rate"] > 0 and saved["per_host"][0]["units"] >= 1
    plot = tmp_path / "stats.png"
    shown = run_cli(cli("stats", "--level", "90%", "--plot", str(plot)))
    assert shown.returncode == 0, shown.stderr
    assert "90% interval" in shown.stdout and "local" in shown.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(cli("stats", "--plot", str(tmp_path / "x.png")))
    assert result.returncode == 2 and result.stderr.strip() == "cnd-fab: --plot: there are no settled runs to draw yet"
