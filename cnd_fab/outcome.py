"""What a search produces and what its display is shown: host views, snapshots, the outcome.

These types belong to no engine: the fleet fills them, the live display and the result
text read them, and nothing here imports either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from .schedule import GoldenNonce, Scheduler

# Host states, as the display shows them.
STARTING = "starting"
READY = "ready"
LOST = "lost"
#: A spot host that gave notice: lost to the search like LOST, but by the cloud's choice.
RECLAIMED = "reclaimed"
STOPPED = "stopped"
#: The states of a host that is gone from the search.
GONE = (LOST, RECLAIMED, STOPPED)

# How a search ended (and RUNNING while it has not).
RUNNING_STATUS = "running"
FOUND_STATUS = "found"
NONE_STATUS = "none"
TIMEOUT_STATUS = "timeout"
INTERRUPTED_STATUS = "interrupted"


@dataclass
class HostView:
    """What the display and the summary know of one host."""

    name: str
    state: str = STARTING
    cores: int = 0
    kernel: str = ""
    rate: float = 0.0
    units_done: int = 0
    hashes: int = 0
    last_heard: Optional[float] = None
    first_unit_at: Optional[float] = None
    running_at: Optional[float] = None
    error: str = ""


@dataclass
class Snapshot:
    """The state of the run at one moment, for the live display."""

    elapsed: float
    units_total: int
    units_done: int
    units_in_flight: int
    checked: int
    rate: float
    eta: Optional[float]
    hosts: List[HostView]
    candidate: Optional[GoldenNonce]
    reissued: int


@dataclass
class SearchOutcome:
    """How a search ended and what it established."""

    status: str
    golden: Optional[GoldenNonce]
    lowest: bool
    checked: int
    nonces_settled: int
    units_settled: int
    units_total: int
    seconds: float
    hosts: List[HostView]
    reissued: int
    first_found_wins: bool

    @property
    def rate(self) -> float:
        """Nonces checked per second of the whole run."""
        return self.checked / self.seconds if self.seconds > 0 else 0.0


class Reporter:
    """Receives the run's events and snapshots; the base class shows nothing.

    Used as a context manager around the run: start() and stop() bracket it.
    """

    def start(self) -> None:
        """Begin showing the run."""

    def stop(self) -> None:
        """Stop showing the run."""

    def __enter__(self) -> "Reporter":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def event(self, text: str) -> None:
        """One thing that happened, such as a host joining or being lost."""

    def update(self, snapshot: Snapshot) -> None:
        """The run's state now."""


def lowest_of(*known: Optional[GoldenNonce]) -> Optional[GoldenNonce]:
    """The golden nonce with the lowest nonce among those given, if any."""
    present = [golden for golden in known if golden is not None]
    return min(present, key=lambda golden: golden.nonce) if present else None


def snapshot_of(
    scheduler: Scheduler, hosts: List[HostView], elapsed: float, candidate: Optional[GoldenNonce]
) -> Snapshot:
    """The display's view of a run: progress from the scheduler, rate from the ready hosts."""
    rate = sum(view.rate for view in hosts if view.state == READY)
    left_nonces = (scheduler.cutoff - scheduler.units_settled) * scheduler.space.unit_size
    return Snapshot(
        elapsed=elapsed,
        units_total=scheduler.cutoff,
        units_done=scheduler.units_settled,
        units_in_flight=scheduler.in_flight,
        checked=sum(view.hashes for view in hosts),
        rate=rate,
        eta=left_nonces / rate if rate > 0 else None,
        hosts=hosts,
        candidate=candidate,
        reissued=scheduler.reissued,
    )


def outcome_of(
    status: str, scheduler: Scheduler, hosts: List[HostView], seconds: float, candidate: Optional[GoldenNonce]
) -> SearchOutcome:
    """What a run that ended with `status` established.

    A run stopped early reports the lowest verified golden nonce it saw, settled or not;
    only a finished run's answer is proven lowest (and not with --any)."""
    stopped_early = status in (TIMEOUT_STATUS, INTERRUPTED_STATUS)
    return SearchOutcome(
        status=status,
        golden=lowest_of(scheduler.best, candidate) if stopped_early else scheduler.best,
        lowest=status == FOUND_STATUS and not scheduler.first_found_wins,
        checked=sum(view.hashes for view in hosts),
        nonces_settled=scheduler.nonces_settled,
        units_settled=scheduler.units_settled,
        units_total=scheduler.space.count,
        seconds=seconds,
        hosts=hosts,
        reissued=scheduler.reissued,
        first_found_wins=scheduler.first_found_wins,
    )
