"""The per-unit log of a run, like GNU parallel's --joblog, and bounded for 8-byte runs.

Each unit a host was given is one row: which host, when it was issued, when the host first
reported it started (its first PROGRESS naming it), when it settled, its hashes and result.
A unit lost with its host is a row of its own ("lost"), linked both ways to the row that
redid it (`redone_on`, `lost_on`). A default 4-byte run (1024 units) keeps every row. Longer
runs keep the first FIRST_ROWS and the last LAST_ROWS settled rows and every reissued one (up
to MAX_REISSUE_ROWS). The rest are counted per host in time buckets, which widen as the run
grows so that there are never more than MAX_BUCKETS.

Times are seconds since the run started (its launch included), like every other run figure.
The log lives in the run record (records.py); `fab stats --joblog RUN_ID` prints it as CSV.
"""

from __future__ import annotations

import csv
import io
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple

FIRST_ROWS = 1024
LAST_ROWS = 256
MAX_REISSUE_ROWS = 4096
MAX_BUCKETS = 4096
FIRST_BUCKET_SECONDS = 1.0

# A row's result.
SETTLED = "settled"  # searched through, no golden nonce
GOLDEN = "golden"  # settled, with its lowest golden nonce in `nonce`
LOST = "lost"  # its host was lost before it settled; see redone_on
CANCELLED = "cancelled"  # a golden nonce below it made it pointless
UNFINISHED = "unfinished"  # in flight when the run stopped


@dataclass
class UnitRow:
    """One unit given to one host; in memory, also a run of `units` consecutive units given
    to one host together (a grant), which the record shows as one row per unit."""

    unit: int
    host: str
    issued_at: float
    started_at: Optional[float] = None
    done_at: Optional[float] = None
    #: Hashes of each unit of the row.
    hashes: Optional[int] = None
    result: str = UNFINISHED
    nonce: Optional[int] = None
    #: For a redo: the host that lost this unit before.
    lost_on: Optional[str] = None
    #: For a lost row: the host the unit was reissued to.
    redone_on: Optional[str] = None
    units: int = field(default=1, compare=False)

    @property
    def end(self) -> int:
        """One past its last unit."""
        return self.unit + self.units

    def _twin(self, unit: int, units: int) -> "UnitRow":
        # copy() and dataclasses.replace() cost three or four times more, at every grant.
        twin = object.__new__(UnitRow)
        twin.__dict__.update(self.__dict__)
        twin.unit, twin.units = unit, units
        return twin

    def split_at(self, unit: int) -> "UnitRow":
        """Cut the row before `unit`: it keeps the units below, and the rest is returned."""
        upper = self._twin(unit, self.end - unit)
        self.units = unit - self.unit
        return upper

    def expanded(self) -> Iterator["UnitRow"]:
        """One row per unit."""
        if self.units == 1:
            yield self
            return
        for unit in range(self.unit, self.end):
            yield self._twin(unit, 1)


ROW_COLUMNS = tuple(item.name for item in fields(UnitRow) if item.name != "units")
#: The CSV's columns: a row's, behind its kind ("unit" or "bucket"), and a bucket's unit count.
CSV_COLUMNS = ("kind",) + ROW_COLUMNS + ("units",)


#: The stages a host passes, for the timeline: each host's record has `<stage>_at` for each
#: (seconds since the run started, or None), its name, and the error it was lost with.
HOST_STAGES = ("reachable", "opened", "joined", "lost", "stopped")


@dataclass
class JobLog:
    """Collects the rows as the fleet loop reports what happens; to_record() makes it JSON.

    A grant is one row in memory until part of it is settled, lost or cancelled, when the row
    is cut there: a fleet of a thousand hosts costs the log a few steps per grant, and only the
    rows kept in full are ever made one per unit."""

    #: The run's start on the monotonic clock.
    started: float
    first_rows: int = FIRST_ROWS
    last_rows: int = LAST_ROWS
    max_reissue_rows: int = MAX_REISSUE_ROWS
    max_buckets: int = MAX_BUCKETS
    hosts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: Each host's open rows (units it holds), lowest unit first.
    _open: Dict[str, List[UnitRow]] = field(default_factory=dict)
    _first: List[UnitRow] = field(default_factory=list)
    _first_units: int = 0
    _last: Deque[UnitRow] = field(default_factory=deque)
    _last_units: int = 0
    _reissue: List[UnitRow] = field(default_factory=list)
    _awaiting_redo: Dict[int, UnitRow] = field(default_factory=dict)
    #: (host, bucket index) -> [units, hashes] of the rows not kept in full.
    _buckets: Dict[Tuple[str, int], List[int]] = field(default_factory=dict)
    _bucket_hosts: Set[str] = field(default_factory=set)
    bucket_seconds: float = FIRST_BUCKET_SECONDS
    dropped_rows: int = 0

    def _at(self, now: float) -> float:
        return round(max(0.0, now - self.started), 4)

    # --- hosts -------------------------------------------------------------------------
    def host(self, name: str) -> Dict[str, Any]:
        """The stage times of host `name` (made on first use)."""
        if name not in self.hosts:
            self.hosts[name] = {"name": name, **{f"{stage}_at": None for stage in HOST_STAGES}, "error": ""}
        return self.hosts[name]

    def host_stage(self, name: str, stage: str, now: Optional[float]) -> None:
        """Host `name` reached `stage` (one of HOST_STAGES) at `now`; only the first time counts."""
        times = self.host(name)
        if now is not None and times[f"{stage}_at"] is None:
            times[f"{stage}_at"] = self._at(now)

    # --- units -------------------------------------------------------------------------
    def issued(self, unit: int, host: str, now: float) -> None:
        """Unit `unit` was sent to `host`."""
        self.issued_run(unit, unit + 1, host, now)

    def issued_run(self, start: int, end: int, host: str, now: float) -> None:
        """Units start..end-1 were sent to `host` as one grant; a reissued unit is linked to
        the host that lost it."""
        at = self._at(now)
        rows = self._open.setdefault(host, [])
        # Grants mostly come in order; a reissued unit may lie below what the host holds.
        in_order = not rows or rows[-1].unit < start
        if self._awaiting_redo and any(unit in self._awaiting_redo for unit in range(start, end)):
            for unit in range(start, end):
                row = UnitRow(unit, host, at)
                lost = self._awaiting_redo.pop(unit, None)
                if lost is not None:
                    row.lost_on = lost.host
                    lost.redone_on = host
                rows.append(row)
        else:
            rows.append(UnitRow(start, host, at, units=end - start))
        if not in_order:
            rows.sort(key=lambda row: row.unit)

    def started_units(self, host: str, units: Iterable[int], now: float) -> None:
        """`host` reported the grants that begin with these units in progress."""
        rows = self._open.get(host, ())
        for unit in units:
            for row in rows:
                if row.unit <= unit < row.end and row.started_at is None:
                    row.started_at = self._at(now)

    def settled(self, unit: int, host: str, now: float, hashes: int, nonce: Optional[int], seconds: float) -> None:
        """`host` settled `unit` (the scheduler accepted its DONE, which took `seconds` there)."""
        self.settled_run(unit, unit + 1, host, now, hashes, nonce, seconds)

    def settled_run(
        self, start: int, end: int, host: str, now: float, hashes: int, nonce: Optional[int], seconds: float
    ) -> None:
        """`host` settled units start..end-1, each with `hashes` (the scheduler accepted its DONE;
        each unit took `seconds` there). `nonce`: the golden nonce in the one unit settled."""
        done_at = self._at(now)
        for row in self._take(host, start, end):
            row.done_at, row.hashes, row.nonce = done_at, hashes, nonce
            if row.started_at is None:  # settled between two PROGRESS lines: the worker's own timing
                row.started_at = max(row.issued_at, round(done_at - seconds * row.units, 4))
            row.result = SETTLED if nonce is None else GOLDEN
            self._keep(row)

    def _take(self, host: str, start: int, end: int) -> List[UnitRow]:
        """Cut units start..end-1 out of `host`'s open rows, and return them as rows."""
        rows = self._open.get(host)
        if not rows:
            return []
        taken: List[UnitRow] = []
        kept: List[UnitRow] = []
        for row in rows:
            if row.end <= start or row.unit >= end:
                kept.append(row)
                continue
            if row.unit < start:
                kept.append(row)
                row = row.split_at(start)
            if row.end > end:
                kept.append(row.split_at(end))
            taken.append(row)
        self._open[host] = kept  # still lowest first: a row's pieces replace it in place
        return taken

    def host_lost(self, host: str, reissued: Iterable[int], now: float) -> None:
        """`host` was lost: its units in `reissued` await a redo, the rest were not needed."""
        waiting = set(reissued)
        done_at = self._at(now)
        for row in self._open.pop(host, []):
            for piece in row.expanded() if waiting else (row,):
                piece.done_at = done_at
                if piece.unit in waiting:
                    piece.result = LOST
                    self._awaiting_redo[piece.unit] = piece
                else:
                    piece.result = CANCELLED
                self._keep(piece)

    def cancelled(self, from_unit: int, now: float) -> None:
        """A golden nonce cancelled every unit held at or above `from_unit`: close their rows."""
        done_at = self._at(now)
        for host in list(self._open):
            for row in self._take(host, from_unit, max((row.end for row in self._open[host]), default=0)):
                row.done_at, row.result = done_at, CANCELLED
                self._keep(row)

    def finish(self, now: float) -> None:
        """The run stopped: rows still in flight stay UNFINISHED, with their stop time."""
        for rows in self._open.values():
            for row in rows:
                row.done_at = self._at(now)
                self._keep(row)
        self._open.clear()

    # --- bounding ----------------------------------------------------------------------
    def _keep(self, row: UnitRow) -> None:
        if row.result == LOST or row.lost_on is not None:
            if len(self._reissue) < self.max_reissue_rows:
                self._reissue.append(row)
            else:
                self.dropped_rows += 1
                self._trim_last()  # counted in the order a trim at every row would count them
                self._count(row)
            return
        room = self.first_rows - self._first_units
        if room > 0:
            rest = row.split_at(row.unit + room) if row.units > room else None
            self._first.append(row)
            self._first_units += row.units
            if rest is None:
                return
            row = rest
        if self.last_rows <= 0:
            self._count(row)
            return
        self._last.append(row)
        self._last_units += row.units
        # Trimmed in batches, not at every row: each trim may cut a row in two.
        if self._last_units > 2 * self.last_rows:
            self._trim_last()

    def _trim_last(self) -> None:
        """Keep only the last `last_rows` units in `_last`; count the rest into buckets."""
        while self._last_units > self.last_rows:
            excess = self._last_units - self.last_rows
            if self._last[0].units <= excess:
                oldest = self._last.popleft()
            else:
                oldest = self._last[0]
                self._last[0] = oldest.split_at(oldest.unit + excess)
            self._last_units -= oldest.units
            self._count(oldest)

    def _count(self, row: UnitRow) -> None:
        at = row.done_at if row.done_at is not None else row.issued_at
        key = (row.host, int(at // self.bucket_seconds))
        tally = self._buckets.get(key)
        if tally is None:
            self._buckets[key] = tally = [0, 0]
            self._bucket_hosts.add(row.host)
            # Widening merges time, never hosts: a fleet of more hosts than max_buckets keeps
            # two buckets a host, as its record keeps a line a host anyway.
            while len(self._buckets) > max(self.max_buckets, 2 * len(self._bucket_hosts)):
                self._widen()
                tally = self._buckets[(row.host, int(at // self.bucket_seconds))]
        tally[0] += row.units
        tally[1] += (row.hashes or 0) * row.units

    def _widen(self) -> None:
        merged: Dict[Tuple[str, int], List[int]] = {}
        for (host, index), (units, hashes) in self._buckets.items():
            tally = merged.setdefault((host, index // 2), [0, 0])
            tally[0] += units
            tally[1] += hashes
        self._buckets = merged
        self.bucket_seconds *= 2

    # --- output ------------------------------------------------------------------------
    def rows(self) -> List[UnitRow]:
        """Every row kept in full, one per unit, in the order the units were issued."""
        self._trim_last()
        open_rows = [row for rows in self._open.values() for row in rows]
        kept = [unit for row in self._first + list(self._last) + self._reissue + open_rows for unit in row.expanded()]
        return sorted(kept, key=lambda row: (row.issued_at, row.unit))

    def to_record(self) -> Dict[str, Any]:
        """The log as JSON for the run record: rows as lists under `columns`, then buckets."""
        self._trim_last()  # before the buckets are read: trimming counts rows into them
        width = self.bucket_seconds
        return {
            "columns": list(ROW_COLUMNS),
            "rows": [[getattr(row, name) for name in ROW_COLUMNS] for row in self.rows()],
            "bucket_seconds": width,
            "buckets": [
                {"host": host, "from": index * width, "to": (index + 1) * width, "units": units, "hashes": hashes}
                for (host, index), (units, hashes) in sorted(self._buckets.items(), key=lambda item: (item[0][1], item[0][0]))
            ],
            "dropped_rows": self.dropped_rows,
            "hosts": [dict(times) for times in self.hosts.values()],
        }


def rows_of(log: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A record's joblog rows as dicts, checked against their columns."""
    columns = log.get("columns")
    if columns != list(ROW_COLUMNS):
        raise ValueError(f"unknown joblog columns {columns!r}")
    return [dict(zip(columns, values)) for values in log.get("rows", [])]


def joblog_csv(log: Dict[str, Any]) -> str:
    """A record's joblog as CSV: one line per unit row, then one per bucket of the rest (its
    issued_at and done_at are the bucket's bounds, `units` the rows it counts)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows_of(log):
        writer.writerow(["unit", *("" if row[name] is None else row[name] for name in ROW_COLUMNS), 1])
    for bucket in log.get("buckets", []):
        line = {name: "" for name in ROW_COLUMNS}
        line.update(host=bucket["host"], issued_at=bucket["from"], done_at=bucket["to"], hashes=bucket["hashes"])
        writer.writerow(["bucket", *(line[name] for name in ROW_COLUMNS), bucket["units"]])
    return out.getvalue()
