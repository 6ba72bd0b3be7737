"""The run timeline picture, drawn from records made by a real JobLog."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from cnd_fab.joblog import JobLog, rows_of
from cnd_fab.timeline import LOST_COLOUR, MAX_HEIGHT_INCHES, draw_timeline

START = 100.0
GOLDEN_NONCE = 3_123_456


def at(seconds: float) -> float:
    return START + seconds


def run_record(log: JobLog, status: str = "found", nonce: Optional[int] = None, seconds: float = 5.0, **extra: Any) -> Dict[str, Any]:
    return {"run_id": "run-1", "outcome": {"status": status, "nonce": nonce, "seconds": seconds}, "joblog": log.to_record(), **extra}


def lost_host_run() -> Dict[str, Any]:
    """host-2 is lost at t=3 holding units 2 and 3, redone by host-1 and host-3; host-3 finds the nonce."""
    log = JobLog(started=START)
    hosts = ("host-1", "host-2", "host-3")
    for index, host in enumerate(hosts):
        log.host_stage(host, "reachable", at(0.5 + 0.1 * index))
        log.host_stage(host, "joined", at(1.2 + 0.1 * index))
    for unit in range(6):
        log.issued(unit, hosts[unit // 2], at(1.5))
    for index, host in enumerate(hosts):
        log.started_units(host, [2 * index, 2 * index + 1], at(1.6))
    log.settled(0, "host-1", at(2.5), 1 << 20, None, 0.1)
    log.settled(4, "host-3", at(2.6), 1 << 20, None, 0.1)
    log.settled(1, "host-1", at(2.9), 1 << 20, None, 0.1)
    log.settled(5, "host-3", at(2.95), 1 << 20, None, 0.1)
    log.host_stage("host-2", "lost", at(3.0))
    log.hosts["host-2"]["error"] = "ssh: connection reset by peer while reading PROGRESS " * 3
    log.host_lost("host-2", [2, 3], at(3.0))
    log.issued(2, "host-1", at(3.1))
    log.issued(3, "host-3", at(3.1))
    log.started_units("host-1", [2], at(3.2))
    log.started_units("host-3", [3], at(3.2))
    log.settled(3, "host-3", at(4.0), 1 << 19, GOLDEN_NONCE, 0.1)
    log.settled(2, "host-1", at(4.1), 1 << 20, None, 0.1)
    log.finish(at(4.2))
    return run_record(log, nonce=GOLDEN_NONCE, seconds=4.2)


def coloured_pixels(image: np.ndarray) -> int:
    """Pixels that are neither white nor grey: their channels differ."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    return int(((np.abs(red - green) > 0.1) | (np.abs(green - blue) > 0.1) | (np.abs(red - blue) > 0.1)).sum())


def pixels_near(image: np.ndarray, colour: str, tolerance: float = 0.06) -> int:
    near = np.ones(image.shape[:2], dtype=bool)
    for channel, value in enumerate(to_rgb(colour)):
        near &= np.abs(image[..., channel] - value) < tolerance
    return int(near.sum())


def test_draws_a_run_with_a_lost_host(tmp_path: Path) -> None:
    record = lost_host_run()
    lost = [row for row in rows_of(record["joblog"]) if row["result"] == "lost"]
    assert {(row["unit"], row["redone_on"]) for row in lost} == {(2, "host-1"), (3, "host-3")}
    path = tmp_path / "timeline.png"
    draw_timeline(record, path)
    image = imread(path)
    assert coloured_pixels(image) > 5000
    assert pixels_near(image, LOST_COLOUR) > 20


def test_draws_a_resumed_run_whose_log_spilled_into_buckets(tmp_path: Path) -> None:
    log = JobLog(started=START, first_rows=4, last_rows=2, max_buckets=8)
    for host in ("host-1", "host-2"):
        log.host_stage(host, "reachable", at(0.4))
        log.host_stage(host, "joined", at(0.9))
    for unit in range(40):
        host = f"host-{unit % 2 + 1}"
        log.issued(unit, host, at(1 + unit / 2))
        log.started_units(host, [unit], at(1.1 + unit / 2))
        log.settled(unit, host, at(1.4 + unit / 2), 1 << 20, None, 0.1)
    log.finish(at(21.0))
    record = run_record(log, status="none", seconds=21.0, resumed_from="run-0", nonces_settled_before=1_234_567_890)
    assert record["joblog"]["buckets"] and record["joblog"]["bucket_seconds"] > 1
    path = tmp_path / "timeline.png"
    draw_timeline(record, path)
    image = imread(path)
    assert coloured_pixels(image) > 2000
    assert pixels_near(image, LOST_COLOUR) == 0  # no host was lost, so no lost marker


def test_a_record_without_a_joblog_is_a_value_error(tmp_path: Path) -> None:
    record = {"run_id": "old", "outcome": {"status": "found", "nonce": 7, "seconds": 1.0}}
    with pytest.raises(ValueError, match="no joblog"):
        draw_timeline(record, tmp_path / "timeline.png")
    assert not (tmp_path / "timeline.png").exists()


def test_draws_sixty_hosts_in_a_bounded_figure(tmp_path: Path) -> None:
    log = JobLog(started=START)
    for index in range(60):
        host = f"host-{index:02d}"
        log.host_stage(host, "reachable", at(0.2 + index / 200))
        log.host_stage(host, "joined", at(0.6 + index / 200))
        log.issued(index, host, at(1.0))
        log.started_units(host, [index], at(1.1))
        log.settled(index, host, at(2.0 + index / 50), 1 << 20, None, 0.1)
    log.finish(at(3.5))
    path = tmp_path / "timeline.png"
    draw_timeline(run_record(log, status="none", seconds=3.5), path)
    image = imread(path)
    assert image.shape[0] <= MAX_HEIGHT_INCHES * 100
    assert coloured_pixels(image) > 5000
