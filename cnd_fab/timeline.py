"""A run's timeline as a picture: one lane per host, drawn from the joblog in its run record.

Each lane shows the host's start-up (launch, then SSH setup up to its worker's HELLO), its units
as bars coloured by result, the rows the joblog only counted as translucent buckets, the moment
the host was lost, arrows from each lost unit to its redo, and a star on the golden nonce.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

from .joblog import CANCELLED, GOLDEN, LOST, SETTLED, UNFINISHED, rows_of

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

RESULT_COLOURS = {
    SETTLED: "#1f77b4",
    GOLDEN: "#ffbf00",
    LOST: "#ff7f0e",
    CANCELLED: "#9a9a9a",
    UNFINISHED: "#9467bd",
}
LAUNCH_COLOUR = "#ececec"
SETUP_COLOUR = "#cfe3c8"
LOST_COLOUR = "#d62728"
LINK_COLOUR = "#444444"

LABELLED_LANES = 40
LANE_INCHES = 0.35
EXTRA_LANE_INCHES = 0.1
#: Room for the legend beside even a one-lane run.
MIN_LANES_INCHES = 2.6
MAX_HEIGHT_INCHES = 20.0
WIDTH_INCHES = 12.0
LEGEND_INCHES = 1.6
TOP_INCHES = 0.45
BOTTOM_INCHES = 0.6
BAR_HEIGHT = 0.6
#: A unit settled in a millisecond of an hour-long run must still show, so bars are at least
#: this fraction of the x span wide.
MIN_BAR_FRACTION = 0.002
ERROR_CHARS = 60


def draw_timeline(record: Dict[str, Any], path: Path) -> None:
    """Draw a run's timeline into the PNG file `path`: one lane per host over time."""
    log = record.get("joblog")
    if log is None:
        raise ValueError(f"run {record.get('run_id', '?')} has no joblog: its record predates timelines")
    rows = rows_of(log)
    buckets: List[Dict[str, Any]] = log.get("buckets", [])
    hosts: List[Dict[str, Any]] = log.get("hosts", [])
    outcome: Dict[str, Any] = record.get("outcome") or {}

    lane: Dict[str, int] = {}
    for name in [host["name"] for host in hosts] + [item["host"] for item in rows + buckets]:
        lane.setdefault(name, len(lane))
    names = list(lane)
    ends = [float(outcome.get("seconds") or 0.0)]
    ends += [row["done_at"] for row in rows if row["done_at"] is not None]
    ends += [bucket["to"] for bucket in buckets]
    ends += [host["lost_at"] for host in hosts if host.get("lost_at") is not None]
    span = max(ends) or 1.0
    min_width = span * MIN_BAR_FRACTION

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    lanes = max(1, len(names))
    lanes_height = LANE_INCHES * min(lanes, LABELLED_LANES) + EXTRA_LANE_INCHES * max(0, lanes - LABELLED_LANES)
    lanes_height = min(MAX_HEIGHT_INCHES - TOP_INCHES - BOTTOM_INCHES, max(MIN_LANES_INCHES, lanes_height))
    # Past LABELLED_LANES the lanes get thinner than a normal label: shrink the font to the lane
    # and, once even that is unreadable, label only every few lanes.
    lane_points = lanes_height * 72 / lanes
    font = max(4.0, min(8.0, lane_points * 0.8))
    label_every = max(1, math.ceil(font / lane_points))
    # Fixed margins rather than tight_layout(), which draws the whole figure once more.
    left = 0.3 + max((len(name) for name in names), default=1) * font * 0.6 / 72
    height = lanes_height + TOP_INCHES + BOTTOM_INCHES
    figure, axis = plt.subplots(figsize=(WIDTH_INCHES, height))
    figure.subplots_adjust(
        left=left / WIDTH_INCHES,
        right=1 - LEGEND_INCHES / WIDTH_INCHES,
        bottom=BOTTOM_INCHES / height,
        top=1 - TOP_INCHES / height,
    )

    launch = [(lane[host["name"]], 0.0, host["reachable_at"]) for host in hosts if host.get("reachable_at") is not None]
    setup = [(lane[host["name"]], host.get("reachable_at") or 0.0, host["joined_at"]) for host in hosts if host.get("joined_at") is not None]
    _bars(axis, launch, 0.9, LAUNCH_COLOUR, zorder=1)
    _bars(axis, setup, 0.9, SETUP_COLOUR, zorder=1)

    if buckets:
        most = max(bucket["units"] for bucket in buckets) or 1
        bucket_spans = [(lane[bucket["host"]], bucket["from"], bucket["to"]) for bucket in buckets]
        alphas = [to_rgba(RESULT_COLOURS[SETTLED], 0.15 + 0.6 * bucket["units"] / most) for bucket in buckets]
        _bars(axis, bucket_spans, BAR_HEIGHT, alphas, zorder=2)

    places = _stacked(rows, lane, min_width)
    for result, colour in RESULT_COLOURS.items():
        drawn = [index for index, row in enumerate(rows) if row["result"] == result and row["done_at"] is not None]
        for height in {places[index][1] for index in drawn}:
            spans: List[Tuple[float, float, float]] = [
                (places[index][0], _start(rows[index]), max(rows[index]["done_at"], _start(rows[index]) + min_width))
                for index in drawn
                if places[index][1] == height
            ]
            _bars(axis, spans, height, colour, zorder=3)

    _draw_reissues(axis, rows, lane, places)
    for host in hosts:
        if host.get("lost_at") is None:
            continue
        y = lane[host["name"]]
        axis.plot(host["lost_at"], y, marker="X", markersize=11, color=LOST_COLOUR, markeredgecolor="white", zorder=6)
        error = " ".join(str(host.get("error") or "lost").split())
        if len(error) > ERROR_CHARS:
            error = error[: ERROR_CHARS - 1] + "…"
        # Late in the run the error reads leftwards, so that it stays off the legend.
        late = host["lost_at"] > span / 2
        axis.annotate(
            error, (host["lost_at"], y), xytext=(-9 if late else 9, 0), textcoords="offset points",
            ha="right" if late else "left", va="center", fontsize=font, color=LOST_COLOUR,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1}, zorder=6,
        )

    nonce = outcome.get("nonce")
    golden = next((row for row in rows if row["result"] == GOLDEN and nonce is not None and row["nonce"] == nonce), None)
    if golden is not None:
        y = lane[golden["host"]]
        axis.plot(golden["done_at"], y, marker="*", markersize=18, color=RESULT_COLOURS[GOLDEN], markeredgecolor="black", zorder=7)
        axis.annotate(
            f"nonce {nonce:,}", (golden["done_at"], y), xytext=(0, 9), textcoords="offset points", ha="center",
            va="bottom", fontsize=font + 1, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1}, zorder=7,
        )

    if outcome.get("seconds"):
        axis.axvline(outcome["seconds"], color="grey", linewidth=0.8, linestyle="--", zorder=0)
    axis.set_yticks(range(0, lanes, label_every), [names[i] for i in range(0, len(names), label_every)], fontsize=font)
    axis.set_ylim(lanes - 0.5, -0.5)
    axis.set_xlim(0, span * 1.02)
    axis.set_xlabel("seconds since the run started")
    axis.grid(True, axis="x", alpha=0.3)
    axis.set_title(_title(record, outcome), fontsize=10)
    handles: List[Artist] = [Patch(color=colour, label=result) for result, colour in RESULT_COLOURS.items()]
    handles += [
        Patch(color=LAUNCH_COLOUR, label="launch"),
        Patch(color=SETUP_COLOUR, label="SSH setup"),
        Patch(color=to_rgba(RESULT_COLOURS[SETTLED], 0.35), label="counted units"),
    ]
    # Only when drawn, so that the lost colour in the picture means a host was lost.
    if any(host.get("lost_at") is not None for host in hosts):
        handles.append(Line2D([], [], marker="X", color=LOST_COLOUR, linestyle="", label="host lost"))
    if any(row["redone_on"] for row in rows):
        handles.append(Line2D([], [], color=LINK_COLOUR, label="reissued"))
    axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _bars(axis: Axes, spans: Sequence[Tuple[float, float, float]], height: float, colour: Any, zorder: int) -> None:
    """Bars (lane, from, to) as one collection: a patch each would take seconds for a full log."""
    from matplotlib.collections import PolyCollection

    half = height / 2
    boxes = [[(left, y - half), (right, y - half), (right, y + half), (left, y + half)] for y, left, right in spans]
    if boxes:
        axis.add_collection(PolyCollection(boxes, facecolors=colour, edgecolors="none", zorder=zorder), autolim=False)


def _stacked(rows: List[Dict[str, Any]], lane: Dict[str, int], min_width: float) -> Dict[int, Tuple[float, float]]:
    """Row index -> (y, bar height). A host works on several units at once (its prefetch), so
    a lane is split into as many sub-lanes as it ever had units in flight together."""
    slots: Dict[int, int] = {}
    count: Dict[str, int] = {}
    by_host: Dict[str, List[int]] = {}
    for index, row in enumerate(rows):
        if row["done_at"] is not None:
            by_host.setdefault(row["host"], []).append(index)
    for host, indices in by_host.items():
        free_at: List[float] = []
        for index in sorted(indices, key=lambda i: _start(rows[i])):
            start = _start(rows[index])
            slot = next((number for number, end in enumerate(free_at) if end <= start), len(free_at))
            if slot == len(free_at):
                free_at.append(0.0)
            free_at[slot] = max(rows[index]["done_at"], start + min_width)
            slots[index] = slot
        count[host] = max(1, len(free_at))
    places = {}
    for index, slot in slots.items():
        host = rows[index]["host"]
        height = BAR_HEIGHT / count[host]
        places[index] = (lane[host] - BAR_HEIGHT / 2 + height * (slot + 0.5), height * 0.9)
    return places


def _start(row: Dict[str, Any]) -> float:
    return float(row["started_at"] if row["started_at"] is not None else row["issued_at"])


def _draw_reissues(
    axis: Axes, rows: List[Dict[str, Any]], lane: Dict[str, int], places: Dict[int, Tuple[float, float]]
) -> None:
    redos = {(row["unit"], row["lost_on"]): index for index, row in enumerate(rows) if row["lost_on"] is not None}
    for index, row in enumerate(rows):
        redo = redos.get((row["unit"], row["host"])) if row["redone_on"] else None
        if redo is None or row["done_at"] is None:
            continue
        axis.annotate(
            "",
            xy=(_start(rows[redo]), places.get(redo, (lane[rows[redo]["host"]], 0.0))[0]),
            xytext=(row["done_at"], places.get(index, (lane[row["host"]], 0.0))[0]),
            arrowprops={"arrowstyle": "->", "color": LINK_COLOUR, "linewidth": 0.9, "shrinkA": 0, "shrinkB": 0},
            zorder=5,
        )


def _title(record: Dict[str, Any], outcome: Dict[str, Any]) -> str:
    title = f"run {record['run_id']}: {outcome.get('status', '?')}"
    if record.get("resumed_from"):
        title += f", resumed from {record['resumed_from']}"
        settled = record.get("nonces_settled_before")
        if settled is not None:
            title += f", {settled:,} nonces settled before"
    return title
