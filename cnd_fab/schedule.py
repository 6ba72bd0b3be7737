"""Which unit goes to which host, and when the answer is settled.

The scheduler is a plain state machine with no threads and no I/O, so the same code runs
for every provider and is driven step by step by the property tests. It keeps:

- a counter of fresh units (units below it have been issued at least once), so 2^42 units
  cost nothing until they are reached;
- the units to reissue, always preferred to fresh ones, since a low unit left unchecked
  holds back the lowest-nonce answer;
- the units in flight, each held by exactly one host. A result is accepted only from the
  host that holds the unit, so a unit is counted once even if a lost host answers late;
- the settled units, as a settled prefix plus the runs settled above it, so that a resumed
  search (see checkpoint.py) skips them at no cost however far the prefix reaches.

Every set of units is kept as runs of consecutive units (UnitRuns). Hosts are given grants
of tens of units and settle them a run at a time, so a fleet of a thousand hosts costs the
scheduler a few operations per grant, not one per unit.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

from remote import worker

from .spec import Unit, UnitSpace

#: A grant is about this many seconds of its host's work: long enough that messages and
#: chunk hand-offs cost well under 1%, short enough that the answer's lowest-first settling
#: waits little on any one host.
GRANT_SECONDS = 2.0
#: A grant is at most this many times the largest one its host has settled whole.
GRANT_GROWTH = 4
#: Grants each host holds at once: one its cores work on and the next, so they never wait.
GRANTS_AHEAD = 2
#: A host may ask for this many queued units per core, and no more than MAX_PREFETCH in all,
#: so that one host cannot hold every unit of the run.
MAX_PREFETCH_PER_CORE = 4
MAX_PREFETCH = 64
#: Hosts that say HELLO together are answered one after another, and their first DONEs only
#: after that: past this many, a new host's first grants hold more, to last until then.
HOSTS_PER_PREFETCH = 250


def joining_prefetch(asked: int, cores: int, joining: int) -> int:
    """The units a new host's first grants share: the `prefetch` its HELLO `asked` for, times
    the `joining` hosts (this one, and those whose HELLO the loop has still to answer) counted
    in HOSTS_PER_PREFETCH, rounded up; never more than MAX_PREFETCH_PER_CORE a core or
    MAX_PREFETCH in all (a host may ask for anything). Hosts that join seconds apart, as
    launched and booted machines do, are answered at once and start with what they asked."""
    scaled = asked * max(1, -(-joining // HOSTS_PER_PREFETCH))
    return max(1, min(scaled, MAX_PREFETCH_PER_CORE * cores, MAX_PREFETCH))


def grant_size(prefetch: int, largest_settled: int, rate: float, unit_size: int, fair_share: int) -> int:
    """How many units a host's next grant holds: about GRANT_SECONDS of its work at its
    measured `rate` (0: not measured yet), and no more than `fair_share`. It starts at the
    `prefetch` its HELLO asked for, split over the first GRANTS_AHEAD grants, and grows only on
    evidence: to at most GRANT_GROWTH times the `largest_settled` grant it has settled whole,
    so a host that settles nothing never holds more than GRANTS_AHEAD small grants. The fleet
    (traffic.py) and the --within model (model.py) both size grants with this."""
    # The first grants together hold what HELLO asked for, as before grants: no more is
    # under way on a new host, and so no more is thrown away above an early answer.
    first = -(-prefetch // GRANTS_AHEAD)
    grown = first if largest_settled == 0 else max(first, largest_settled * GRANT_GROWTH)
    units = grown
    if rate > 0:
        units = min(grown, max(1, int(rate * GRANT_SECONDS / unit_size)))
    return max(1, min(units, fair_share, worker.MAX_COUNT))


@dataclass(frozen=True)
class GoldenNonce:
    """A golden nonce and its hash, found in a unit."""

    unit: int
    nonce: int
    hash: str


class UnitRuns:
    """A set of unit indices, kept as sorted, disjoint, non-adjacent runs [start, end).

    Every operation costs a binary search plus the runs it touches, so a set of millions of
    units in a few runs is as cheap as a set of one."""

    def __init__(self, runs: Iterable[Tuple[int, int]] = ()) -> None:
        self._starts: List[int] = []
        self._ends: List[int] = []
        self.count = 0
        for start, end in runs:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        """Add units start..end-1."""
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        # Runs that overlap or touch [start, end) are merged into one.
        first = bisect_left(ends, start)
        last = bisect_right(starts, end)
        if first < last:
            start = min(start, starts[first])
            end = max(end, ends[last - 1])
            self.count -= sum(ends[i] - starts[i] for i in range(first, last))
        starts[first:last] = [start]
        ends[first:last] = [end]
        self.count += end - start

    def remove(self, start: int, end: int) -> List[Tuple[int, int]]:
        """Remove units start..end-1; returns the runs that were in the set, lowest first."""
        if start >= end:
            return []
        starts, ends = self._starts, self._ends
        first = bisect_right(ends, start)
        last = bisect_left(starts, end)
        if first >= last:
            return []
        removed = [(max(start, starts[i]), min(end, ends[i])) for i in range(first, last)]
        kept_starts: List[int] = []
        kept_ends: List[int] = []
        if starts[first] < start:
            kept_starts.append(starts[first])
            kept_ends.append(start)
        if ends[last - 1] > end:
            kept_starts.append(end)
            kept_ends.append(ends[last - 1])
        starts[first:last] = kept_starts
        ends[first:last] = kept_ends
        self.count -= sum(high - low for low, high in removed)
        return removed

    def run_at(self, index: int) -> Optional[Tuple[int, int]]:
        """The run that holds `index`, or None."""
        position = bisect_right(self._starts, index) - 1
        if position >= 0 and index < self._ends[position]:
            return self._starts[position], self._ends[position]
        return None

    def first(self) -> Optional[int]:
        """The lowest unit, or None when empty."""
        return self._starts[0] if self._starts else None

    def end(self) -> int:
        """One past the highest unit (0 when empty)."""
        return self._ends[-1] if self._ends else 0

    def next_start(self, index: int) -> Optional[int]:
        """The lowest unit at or above `index`, or None."""
        position = bisect_right(self._starts, index) - 1
        if position >= 0 and index < self._ends[position]:
            return index
        position += 1
        return self._starts[position] if position < len(self._starts) else None

    def runs(self) -> Iterator[Tuple[int, int]]:
        """The runs, lowest first."""
        return zip(list(self._starts), list(self._ends))

    def units(self) -> Iterator[int]:
        """Every unit, lowest first."""
        for start, end in self.runs():
            yield from range(start, end)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.run_at(index) is not None

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return bool(self._starts)


class SettledUnits:
    """Settled unit indices: every unit below `prefix`, and the runs of those above it.

    Units settle in nearly ascending order, so the runs above the prefix stay about as
    many as the grants in flight, whatever the space's size."""

    def __init__(self, prefix: int = 0, above: Iterable[int] = (), runs: Iterable[Tuple[int, int]] = ()) -> None:
        """`above`: settled units above the prefix; `runs`: the same as runs [start, end)."""
        self.prefix = prefix
        self._above = UnitRuns()
        for index in above:
            if index >= prefix:
                self._above.add(index, index + 1)
        for start, end in runs:
            self._above.add(max(start, prefix), end)
        self._advance()

    def _advance(self) -> None:
        if self._above.first() == self.prefix:
            run = self._above.run_at(self.prefix)
            assert run is not None
            self._above.remove(*run)
            self.prefix = run[1]

    def add(self, index: int) -> None:
        """Mark unit `index` settled."""
        self.add_run(index, index + 1)

    def add_run(self, start: int, end: int) -> None:
        """Mark units start..end-1 settled."""
        if end <= self.prefix:
            return
        if start <= self.prefix:
            self.prefix = end
            self._above.remove(0, end)
        else:
            self._above.add(start, end)
        self._advance()

    def drop_from(self, cutoff: int) -> None:
        """Forget the settled units at or above `cutoff`."""
        if cutoff < self.prefix:
            self.prefix = cutoff
            self._above = UnitRuns()
        else:
            self._above.remove(cutoff, max(cutoff + 1, self._above.end()))

    def next_unsettled(self, index: int) -> int:
        """The lowest unsettled unit at or above `index`."""
        if index < self.prefix:
            index = self.prefix
        run = self._above.run_at(index)
        return run[1] if run is not None else index

    def next_settled(self, index: int) -> Optional[int]:
        """The lowest settled unit at or above `index`, or None."""
        return index if index < self.prefix else self._above.next_start(index)

    def above_runs(self) -> Tuple[Tuple[int, int], ...]:
        """The runs of settled units above the prefix, [start, end), ascending."""
        return tuple(self._above.runs())

    def __contains__(self, index: int) -> bool:
        return index < self.prefix or index in self._above

    def __len__(self) -> int:
        return self.prefix + len(self._above)


@dataclass
class Completion:
    """What the caller must do after a result: tell these hosts to drop units above `above`."""

    accepted: bool
    cancel_hosts: List[str] = field(default_factory=list)
    above: Optional[int] = None


class Scheduler:
    """Hands out units lowest first, reissues lost ones and settles the answer."""

    def __init__(
        self,
        space: UnitSpace,
        first_found_wins: bool = False,
        *,
        settled: Optional[SettledUnits] = None,
        known: Optional[GoldenNonce] = None,
    ) -> None:
        """A scheduler for `space`; a resumed search passes what was `settled` before and the
        lowest golden nonce `known` (verified), which bounds the search even if its unit has
        not settled yet."""
        self.space = space
        self.first_found_wins = first_found_wins
        self._retry = UnitRuns()
        self._held: Dict[str, UnitRuns] = {}
        self._in_flight = 0
        # Units with an index at or above the cutoff are never issued: they cannot hold
        # the answer. It falls to u + 1 once unit u is settled with a golden nonce.
        self._cutoff = space.count
        self._done = settled or SettledUnits()
        self.best: Optional[GoldenNonce] = None
        self.reissued = 0
        #: The golden nonce a resumed search started with, settled or not.
        self.known = known
        if known is not None:
            self._cutoff = known.unit + 1
            self._done.drop_from(self._cutoff)
            if known.unit in self._done or first_found_wins:
                self.best = known
        self._next_fresh = self._done.next_unsettled(0)

    # --- hosts -------------------------------------------------------------------------
    def add_host(self, host: str) -> None:
        """Make a host known, holding nothing."""
        self._held.setdefault(host, UnitRuns())

    def held_by(self, host: str) -> Set[int]:
        """The units a host holds now (a copy)."""
        held = self._held.get(host)
        return set(held.units()) if held is not None else set()

    def held_count(self, host: str) -> int:
        """How many units a host holds now, without copying them."""
        held = self._held.get(host)
        return held.count if held is not None else 0

    def held_runs(self, host: str) -> UnitRuns:
        """The units a host holds now (the scheduler's own: do not change them)."""
        return self._held.get(host) or UnitRuns()

    def holds(self, host: str, index: int) -> bool:
        """True while `host` holds unit `index`."""
        held = self._held.get(host)
        return held is not None and index in held

    def host_lost(self, host: str) -> List[int]:
        """Forget a host; its units go back to be reissued, lowest first. Returns them."""
        held = self._held.pop(host, None)
        if held is None:
            return []
        self._in_flight -= held.count
        reissued: List[int] = []
        for start, end in held.runs():
            end = min(end, self._cutoff)
            if start < end:
                self._retry.add(start, end)
                self.reissued += end - start
                reissued.extend(range(start, end))
        return reissued

    # --- issuing -----------------------------------------------------------------------
    def take(self, host: str, wanted: int) -> List[Unit]:
        """Give `host` up to `wanted` more units, lowest unsettled first, one at a time."""
        given: List[Unit] = []
        while len(given) < wanted:
            run = self.take_run(host, 1)
            if not run:
                break
            given.append(self.space.unit(run[0]))
        return given

    def take_run(self, host: str, most: int) -> range:
        """Give `host` a grant: up to `most` consecutive units, starting at the lowest unsettled
        one. It ends early where the next unit is not free (held, settled or cut off), so a
        grant is always one unbroken nonce range. Lowest-first order is kept: a grant never
        skips a lower free unit."""
        held = self._held.get(host)
        if held is None:
            raise KeyError(f"unknown host {host!r}")
        if most < 1 or self.finished:
            return range(0)
        start = self._retry.first()
        if start is not None:
            run = self._retry.run_at(start)
            assert run is not None
            end = min(run[1], start + most)
            self._retry.remove(start, end)
            # Units to reissue always lie below the fresh counter; a grant that takes the
            # last of them may go on into fresh units when they follow without a gap.
            if end == self._next_fresh and end - start < most:
                end = self._take_fresh(start + most)
        elif self._next_fresh < self._cutoff:
            start = self._next_fresh
            end = self._take_fresh(start + most)
        else:
            return range(0)
        held.add(start, end)
        self._in_flight += end - start
        return range(start, end)

    def _take_fresh(self, most_end: int) -> int:
        """Move the fresh counter up to `most_end` at most, stopping before the cutoff and
        before a settled unit; returns where the taken run ends."""
        start = self._next_fresh
        end = min(most_end, self._cutoff)
        settled = self._done.next_settled(start)
        if settled is not None:
            end = min(end, settled)
        self._next_fresh = self._done.next_unsettled(end)
        return max(start, end)

    def units_left(self) -> int:
        """Units below the cutoff not yet issued or waiting to be reissued (settled ones ahead
        of the fresh counter included, so it errs high): what grants may still share out."""
        return max(0, self._cutoff - self._next_fresh) + len(self._retry)

    # --- results -----------------------------------------------------------------------
    def complete(self, host: str, index: int, golden: Optional[GoldenNonce]) -> Completion:
        """A host settled a unit: whole if golden is None, else up to its lowest golden nonce."""
        return self.complete_run(host, index, 1, golden)[1]

    def complete_run(
        self, host: str, first: int, count: int, golden: Optional[GoldenNonce]
    ) -> Tuple[List[Tuple[int, int]], Completion]:
        """A host settled units first..first+count-1: every one whole, except the last up to
        `golden` when it is given. Only the units it holds are accepted; returns them as runs
        [start, end), and what the golden nonce (if its unit was accepted) asks of the fleet."""
        held = self._held.get(host)
        if held is None:
            return [], Completion(accepted=False)
        accepted = held.remove(first, first + count)
        if not accepted:
            return [], Completion(accepted=False)
        for start, end in accepted:
            self._in_flight -= end - start
            self._done.add_run(start, min(end, self._cutoff))
        last = first + count - 1
        if golden is None or accepted[-1][1] <= last:
            return accepted, Completion(accepted=True)
        return accepted, self._record_golden(golden)

    def found(self, host: str, golden: GoldenNonce) -> Completion:
        """A golden nonce seen before its unit settled; it ends the run only in --any mode."""
        if not self.first_found_wins or not self.holds(host, golden.unit):
            return Completion(accepted=False)
        return self._record_golden(golden)

    def _record_golden(self, golden: GoldenNonce) -> Completion:
        if self.best is not None and self.best.nonce <= golden.nonce:
            return Completion(accepted=True)
        self.best = golden
        self._cutoff = golden.unit + 1
        self._done.drop_from(self._cutoff)
        self._retry.remove(self._cutoff, max(self._cutoff + 1, self._retry.end()))
        dropped_from = 0 if self.first_found_wins else self._cutoff
        cancelled: List[str] = []
        for holder, held in self._held.items():
            dropped = held.remove(dropped_from, max(dropped_from + 1, held.end()))
            if dropped:
                self._in_flight -= sum(end - start for start, end in dropped)
                cancelled.append(holder)
        return Completion(accepted=True, cancel_hosts=cancelled, above=golden.unit)

    # --- state -------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Units held by some host now."""
        return self._in_flight

    @property
    def cutoff(self) -> int:
        """Units below this still matter; the rest were cancelled by a golden nonce."""
        return self._cutoff

    @property
    def finished(self) -> bool:
        """True once the answer is settled (or, with --any, found)."""
        if self.first_found_wins and self.best is not None:
            return True
        return self._next_fresh >= self._cutoff and not self._in_flight and not self._retry

    def settled_units(self) -> SettledUnits:
        """The settled units below the cutoff (the scheduler's own: do not change them)."""
        return self._done

    @property
    def units_settled(self) -> int:
        """Units below the cutoff whose result was accepted."""
        return len(self._done)

    @property
    def nonces_settled(self) -> int:
        """Nonces proven checked, counting the answer's unit only up to the answer."""
        size = self.space.unit_size
        total = len(self._done) * size
        if self.best is not None and self.best.unit in self._done:
            total -= self.space.unit(self.best.unit).end - self.best.nonce - 1
        return total
