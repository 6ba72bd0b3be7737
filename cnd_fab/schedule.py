"""Which unit goes to which host, and when the answer is settled.

The scheduler is a plain state machine with no threads and no I/O, so the same code runs
for every provider and is driven step by step by the property tests. It keeps:

- a counter of fresh units (units below it have been issued at least once), so 2^42 units
  cost nothing until they are reached;
- a heap of units to reissue, always preferred to fresh ones, since a low unit left
  unchecked holds back the lowest-nonce answer;
- the units in flight, each held by exactly one host. A result is accepted only from the
  host that holds the unit, so a unit is counted once even if a lost host answers late;
- the settled units, as a settled prefix plus the few settled above it, so that a resumed
  search (see checkpoint.py) skips them at no cost however far the prefix reaches.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from .spec import Unit, UnitSpace


@dataclass(frozen=True)
class GoldenNonce:
    """A golden nonce and its hash, found in a unit."""

    unit: int
    nonce: int
    hash: str


class SettledUnits:
    """Settled unit indices: every unit below `prefix`, and the set of those above it.

    Units settle in nearly ascending order, so the set above the prefix stays about as
    small as the number of units in flight, whatever the space's size."""

    def __init__(self, prefix: int = 0, above: Iterable[int] = ()) -> None:
        self.prefix = prefix
        self._above: Set[int] = {index for index in above if index >= prefix}
        self._advance()

    def _advance(self) -> None:
        while self.prefix in self._above:
            self._above.remove(self.prefix)
            self.prefix += 1

    def add(self, index: int) -> None:
        """Mark unit `index` settled."""
        if index == self.prefix:
            self.prefix += 1
            self._advance()
        elif index > self.prefix:
            self._above.add(index)

    def drop_from(self, cutoff: int) -> None:
        """Forget the settled units at or above `cutoff`."""
        if cutoff < self.prefix:
            self.prefix = cutoff
            self._above.clear()
        else:
            self._above = {index for index in self._above if index < cutoff}

    def above_sorted(self) -> Tuple[int, ...]:
        """The settled units above the prefix, ascending."""
        return tuple(sorted(self._above))

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
        self._retry: List[int] = []
        self._retry_set: Set[int] = set()
        self._holder: Dict[int, str] = {}
        self._held: Dict[str, Set[int]] = {}
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
        self._next_fresh = self._done.prefix
        self._skip_settled()

    # --- hosts -------------------------------------------------------------------------
    def add_host(self, host: str) -> None:
        """Make a host known, holding nothing."""
        self._held.setdefault(host, set())

    def held_by(self, host: str) -> Set[int]:
        """The units a host holds now (a copy)."""
        return set(self._held.get(host, ()))

    def held_count(self, host: str) -> int:
        """How many units a host holds now, without copying them."""
        return len(self._held.get(host, ()))

    def holds(self, host: str, index: int) -> bool:
        """True while `host` holds unit `index`."""
        return self._holder.get(index) == host

    def host_lost(self, host: str) -> List[int]:
        """Forget a host; its units go back to be reissued, lowest first. Returns them."""
        units = sorted(self._held.pop(host, set()))
        for index in units:
            del self._holder[index]
            self._requeue(index)
        return [index for index in units if index < self._cutoff]

    def _requeue(self, index: int) -> None:
        if index < self._cutoff and index not in self._retry_set:
            heapq.heappush(self._retry, index)
            self._retry_set.add(index)
            self.reissued += 1

    # --- issuing -----------------------------------------------------------------------
    def take(self, host: str, wanted: int) -> List[Unit]:
        """Give `host` up to `wanted` more units, lowest unsettled first."""
        if host not in self._held:
            raise KeyError(f"unknown host {host!r}")
        given: List[Unit] = []
        while len(given) < wanted and not self.finished:
            index = self._next_index()
            if index is None:
                break
            self._holder[index] = host
            self._held[host].add(index)
            given.append(self.space.unit(index))
        return given

    def take_run(self, host: str, most: int) -> range:
        """Give `host` a grant: up to `most` consecutive units, starting at the lowest unsettled
        one. It ends early where the next unit is not free (held, settled or cut off), so a
        grant is always one unbroken nonce range. Lowest-first order is kept: a grant never
        skips a lower free unit."""
        if host not in self._held:
            raise KeyError(f"unknown host {host!r}")
        if most < 1 or self.finished:
            return range(0)
        first = self._next_index()
        if first is None:
            return range(0)
        indices = [first]
        while len(indices) < most:
            following = indices[-1] + 1
            if following >= self._cutoff:
                break
            if self._retry and self._retry[0] == following:
                heapq.heappop(self._retry)
                self._retry_set.discard(following)
            elif self._next_fresh == following:
                self._next_fresh += 1
                self._skip_settled()
            else:
                break
            indices.append(following)
        held = self._held[host]
        for index in indices:
            self._holder[index] = host
        held.update(indices)
        return range(first, first + len(indices))

    def units_left(self) -> int:
        """Units below the cutoff not yet issued or waiting to be reissued (settled ones ahead
        of the fresh counter included, so it errs high): what grants may still share out."""
        return max(0, self._cutoff - self._next_fresh) + len(self._retry)

    def _next_index(self) -> Optional[int]:
        while self._retry:
            index = heapq.heappop(self._retry)
            self._retry_set.discard(index)
            if index < self._cutoff:
                return index
        if self._next_fresh < self._cutoff:
            self._next_fresh += 1
            index = self._next_fresh - 1
            self._skip_settled()
            return index
        return None

    def _skip_settled(self) -> None:
        while self._next_fresh < self._cutoff and self._next_fresh in self._done:
            self._next_fresh += 1

    # --- results -----------------------------------------------------------------------
    def complete(self, host: str, index: int, golden: Optional[GoldenNonce]) -> Completion:
        """A host settled a unit: whole if golden is None, else up to its lowest golden nonce."""
        if self._holder.get(index) != host:
            return Completion(accepted=False)
        del self._holder[index]
        self._held[host].discard(index)
        if index < self._cutoff:
            self._done.add(index)
        if golden is None:
            return Completion(accepted=True)
        return self._record_golden(golden)

    def found(self, host: str, golden: GoldenNonce) -> Completion:
        """A golden nonce seen before its unit settled; it ends the run only in --any mode."""
        if not self.first_found_wins or self._holder.get(golden.unit) != host:
            return Completion(accepted=False)
        return self._record_golden(golden)

    def _record_golden(self, golden: GoldenNonce) -> Completion:
        if self.best is not None and self.best.nonce <= golden.nonce:
            return Completion(accepted=True)
        self.best = golden
        self._cutoff = golden.unit + 1
        self._done.drop_from(self._cutoff)
        cancelled: Dict[str, None] = {}
        for index, holder in list(self._holder.items()):
            if index >= self._cutoff or self.first_found_wins:
                del self._holder[index]
                self._held[holder].discard(index)
                cancelled[holder] = None
        return Completion(accepted=True, cancel_hosts=list(cancelled), above=golden.unit)

    # --- state -------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Units held by some host now."""
        return len(self._holder)

    @property
    def cutoff(self) -> int:
        """Units below this still matter; the rest were cancelled by a golden nonce."""
        return self._cutoff

    @property
    def finished(self) -> bool:
        """True once the answer is settled (or, with --any, found)."""
        if self.first_found_wins and self.best is not None:
            return True
        return (
            self._next_fresh >= self._cutoff
            and not self._holder
            and not any(index < self._cutoff for index in self._retry)
        )

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
