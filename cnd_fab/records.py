"""Run records and the timing statistics made from them (`fab stats`).

Every search writes one JSON record to <state dir>/records/<run id>.json. `fab stats` groups
the settled runs by provider, instance type, difficulty and number of hosts. Difficulty is
part of the group because the time to the answer depends on it far more than on anything
else. For each group it gives the mean time, the standard deviation, a Student-t confidence
interval, and the speedup and parallel efficiency against one host of the same kind.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .journal import state_dir

if TYPE_CHECKING:
    from rich.table import Table

SETTLED = ("found", "none")


def records_dir() -> Path:
    """Where run records are kept."""
    return state_dir() / "records"


def write_record(record: Dict[str, Any]) -> Path:
    """Write one run record atomically."""
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['run_id']}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def build_record(
    run_id: str,
    provider: str,
    instance_type: Optional[str],
    parameters: Dict[str, Any],
    result: Dict[str, Any],
    started: float,
    hosts: List[Any],
    cost: Optional[float],
) -> Dict[str, Any]:
    """One run as JSON: what was asked, who did what, how long it took and what it cost.

    `hosts` are fleet.HostView objects; `started` is the run's monotonic start.
    """
    startups = [view.running_at - started for view in hosts if view.running_at is not None]
    ended = started + float(result["seconds"])
    kernels = Counter(view.kernel for view in hosts if view.kernel)
    return {
        "run_id": run_id,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provider": provider,
        "instance_type": instance_type,
        "hosts": len(hosts),
        "kernel": kernels.most_common(1)[0][0] if kernels else None,
        "parameters": parameters,
        "outcome": {key: result[key] for key in ("status", "nonce", "lowest", "checked", "seconds", "rate")},
        "time_to_result": result["seconds"] if result["status"] in SETTLED else None,
        "startup": {
            "mean": statistics.fmean(startups) if startups else None,
            "max": max(startups) if startups else None,
        },
        "per_host": [
            {
                "name": view.name,
                "state": view.state,
                "kernel": view.kernel,
                "cores": view.cores,
                "units": view.units_done,
                "hashes": view.hashes,
                "rate": None if view.running_at is None else view.hashes / max(1e-9, ended - view.running_at),
                "startup": None if view.running_at is None else view.running_at - started,
            }
            for view in hosts
        ],
        "cost_usd": cost,
    }


def load_record(run_id: str) -> Dict[str, Any]:
    """The record of run `run_id`; InputError (one line) if there is none or it is unreadable."""
    from .errors import InputError

    path = records_dir() / f"{run_id}.json"
    if "/" in run_id or not path.is_file():
        raise InputError(f"there is no record of run {run_id} in {records_dir()} (runs that were killed leave none)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"the record of run {run_id} is unreadable: {error}") from None
    if not isinstance(record, dict) or record.get("run_id") != run_id:
        raise InputError(f"the record of run {run_id} is not a run record")
    return record


def load_records() -> List[Dict[str, Any]]:
    """Every readable run record, oldest first."""
    folder = records_dir()
    if not folder.is_dir():
        return []
    loaded = []
    for path in sorted(folder.glob("*.json")):
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return loaded


Group = Tuple[str, str, int, int]


@dataclass(frozen=True)
class GroupStats:
    """The statistics of one group of settled runs."""

    provider: str
    instance_type: str
    difficulty: int
    hosts: int
    runs: int
    mean: float
    stdev: Optional[float]
    interval: Optional[Tuple[float, float]]
    speedup: Optional[float]
    efficiency: Optional[float]


def t_interval(times: List[float], level: float) -> Optional[Tuple[float, float]]:
    """The Student-t confidence interval of the mean, or None for fewer than 2 runs."""
    if len(times) < 2:
        return None
    from scipy import stats

    mean = statistics.fmean(times)
    half = float(stats.t.ppf((1 + level) / 2, len(times) - 1)) * statistics.stdev(times) / math.sqrt(len(times))
    return mean - half, mean + half


def summarise(records: List[Dict[str, Any]], level: float) -> List[GroupStats]:
    """Group settled runs by provider, type, difficulty and hosts, with their statistics."""
    groups: Dict[Group, List[float]] = {}
    for record in records:
        seconds = record.get("time_to_result")
        if seconds is None:
            continue
        group = (
            str(record["provider"]),
            str(record.get("instance_type") or "-"),
            int(record["parameters"]["difficulty"]),
            int(record["hosts"]),
        )
        groups.setdefault(group, []).append(float(seconds))
    result = []
    for (provider, kind, difficulty, hosts), times in sorted(groups.items()):
        mean = statistics.fmean(times)
        single = groups.get((provider, kind, difficulty, 1))
        speedup = statistics.fmean(single) / mean if single and mean > 0 else None
        result.append(
            GroupStats(
                provider=provider,
                instance_type=kind,
                difficulty=difficulty,
                hosts=hosts,
                runs=len(times),
                mean=mean,
                stdev=statistics.stdev(times) if len(times) > 1 else None,
                interval=t_interval(times, level),
                speedup=speedup,
                efficiency=None if speedup is None else speedup / hosts,
            )
        )
    return result


def plot(rows: List[GroupStats], path: Path, level: float) -> None:
    """Mean time (with its interval) and parallel efficiency against the number of hosts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (times_axis, efficiency_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    series: Dict[Tuple[str, str, int], List[GroupStats]] = {}
    for row in rows:
        series.setdefault((row.provider, row.instance_type, row.difficulty), []).append(row)
    for (provider, kind, difficulty), points in series.items():
        points.sort(key=lambda row: row.hosts)
        label = f"{provider} {kind if kind != '-' else ''} D={difficulty}".replace("  ", " ")
        hosts = [row.hosts for row in points]
        means = [row.mean for row in points]
        errors = [
            (row.mean - row.interval[0]) if row.interval else 0.0
            for row in points
        ]
        times_axis.errorbar(hosts, means, yerr=errors, marker="o", capsize=3, label=label)
        measured = [row for row in points if row.efficiency is not None]
        if measured:
            efficiency_axis.plot([r.hosts for r in measured], [r.efficiency for r in measured], marker="o", label=label)
    times_axis.set(xlabel="hosts", ylabel="seconds to the answer", title=f"mean time, {level:.0%} interval")
    efficiency_axis.set(xlabel="hosts", ylabel="parallel efficiency", title="speedup / hosts against 1 host")
    efficiency_axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    from matplotlib.ticker import MaxNLocator

    for axis in (times_axis, efficiency_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def stats_table(rows: List[GroupStats], record_count: int, level: float) -> "Table":
    """The `fab stats` table: one row per provider, type, difficulty and fleet size."""
    from rich.table import Table

    table = Table(title=f"settled runs by provider, instance type, difficulty and hosts ({record_count} records in {records_dir()})")
    for column in ("provider", "type", "D", "hosts", "runs", "mean s", "std dev s", f"{level:.0%} interval s", "speedup", "efficiency"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.provider,
            row.instance_type,
            str(row.difficulty),
            str(row.hosts),
            str(row.runs),
            f"{row.mean:.2f}",
            "-" if row.stdev is None else f"{row.stdev:.2f}",
            "-" if row.interval is None else f"{row.interval[0]:.2f} – {row.interval[1]:.2f}",
            "-" if row.speedup is None else f"{row.speedup:.2f}×",
            "-" if row.efficiency is None else f"{row.efficiency:.0%}",
        )
    return table
