"""What each task does with its raw flag values, for both front ends: the Invoke tasks that
`fab` runs (tasks.py) and the `cnd-fab` program (cli.py).

Light on purpose: only the option table is imported here, and each task's modules are
imported when it runs.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple

from . import options


def _search(raw: Mapping[str, object]) -> int:
    request = options.parse_search(raw)
    from . import api

    return api.search(request)


def _calibrate(raw: Mapping[str, object]) -> int:
    request = options.parse_calibrate(raw)
    from . import api

    return api.calibrate(request)


def _bench(raw: Mapping[str, object]) -> int:
    request = options.parse_bench(raw)
    from . import bench

    return bench.run(request)


def _teardown(raw: Mapping[str, object]) -> int:
    from . import api

    return api.teardown(
        run_id=_text(raw, "run"),
        all_runs=bool(raw.get("all")),
        expired=bool(raw.get("expired")),
        dry_run=bool(raw.get("dry_run")),
        inventory=_text(raw, "inventory"),
        region=_text(raw, "region"),
    )


def _stats(raw: Mapping[str, object]) -> int:
    from . import api

    return api.stats(
        level=_text(raw, "level"),
        plot_file=_text(raw, "plot"),
        joblog_run=_text(raw, "joblog"),
        timeline_run=_text(raw, "timeline"),
    )


def _status(raw: Mapping[str, object]) -> int:
    from . import api

    return api.status(region=_text(raw, "region"))


def _text(raw: Mapping[str, object], name: str) -> Optional[str]:
    value = raw.get(name)
    return None if value is None else str(value)


#: Each task's name, its one-line summary (the help text of both front ends) and its body.
TASKS: Dict[str, Tuple[str, Callable[[Mapping[str, object]], int]]] = {
    options.SEARCH: ("Find the lowest golden nonce over a fleet of hosts, with live progress.", _search),
    options.TEARDOWN: ("Kill and remove everything that runs left behind (safe to repeat).", _teardown),
    options.STATUS: ("List live runs and their resources (journals, containers, instances).", _status),
    options.BENCH: ("Measure hash rates per core, end-to-end search rates and fleet start/stop times.", _bench),
    options.CALIBRATE: ("Measure a provider's per-host hash rate and start-up time for --within plans.", _calibrate),
    options.STATS: ("Timing statistics over past runs: mean, spread, interval, speedup, efficiency.", _stats),
}


def run_task(name: str, raw: Mapping[str, object]) -> int:
    """Run task `name` with its raw flag values; returns the exit code. Raises CndError."""
    return TASKS[name][1](raw)
