"""Checkpoints: what a search has settled, kept in its journal so that `--resume` goes on.

A checkpoint holds only what the controller verified: the problem, the units whose holder
reported them DONE (a settled prefix plus the settled units above it, so that 2^42 lazy
units cost nothing), and the lowest golden nonces seen, each hashed again here on load. The
fleet loop writes it every fleet.CHECKPOINT_SECONDS and at every ending, through the journal's
atomic save. A resumed run is a new run (its own id, journal and hosts) that starts from
the checkpoint and carries the chain of earlier legs forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from .errors import InputError
from .journal import RunJournal, state_dir
from .outcome import FOUND_STATUS, NONE_STATUS, RUNNING_STATUS
from .schedule import GoldenNonce, Scheduler, SettledUnits
from .spec import Problem, UnitSpace

FORMAT_VERSION = 1
#: Verified golden nonces kept, lowest first: the lowest decides, the others are for the record.
MAX_GOLDEN = 8
#: Endings after which nothing is left to resume.
FINISHED = (FOUND_STATUS, NONE_STATUS)


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed: missing, unreadable, finished or still running."""


@dataclass(frozen=True)
class Checkpoint:
    """One run's settled work and the problem it belongs to."""

    problem: Problem
    space: UnitSpace
    first_found_wins: bool
    settled_prefix: int = 0
    #: The runs of settled units above the prefix, [start, end), ascending.
    settled_runs: Tuple[Tuple[int, int], ...] = ()
    golden: Tuple[GoldenNonce, ...] = ()
    #: RUNNING_STATUS while the run goes on; then its outcome (found, none, timeout, interrupted, failed).
    status: str = RUNNING_STATUS
    #: Nonces settled by the earlier legs this run resumed (0 for a first leg).
    nonces_settled_before: int = 0
    #: Run ids of the earlier legs, oldest first.
    legs: Tuple[str, ...] = ()
    #: The run that resumed this one, once one has.
    resumed_by: Optional[str] = None
    saved_at: float = field(default_factory=time.time)

    # --- what it says ------------------------------------------------------------------
    def settled(self) -> SettledUnits:
        """The settled units, as the scheduler keeps them."""
        return SettledUnits(self.settled_prefix, runs=self.settled_runs)

    def lowest(self) -> Optional[GoldenNonce]:
        """The lowest verified golden nonce seen, settled or not."""
        return self.golden[0] if self.golden else None

    def units_settled(self) -> int:
        """How many units are settled."""
        return self.settled_prefix + sum(end - start for start, end in self.settled_runs)

    def nonces_settled(self) -> int:
        """Nonces proven checked: the settled units, the answer's own only up to the answer."""
        return self.scheduler().nonces_settled

    def share_settled(self) -> float:
        """The settled share of the whole space."""
        return self.units_settled() / self.space.count

    def scheduler(self) -> Scheduler:
        """A scheduler that starts where this checkpoint stands."""
        return Scheduler(self.space, self.first_found_wins, settled=self.settled(), known=self.lowest())

    def answered(self) -> bool:
        """True when nothing is left to search: the answer (or its absence) is settled."""
        return self.scheduler().finished

    # --- as JSON -----------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        """The checkpoint as it is stored in the journal."""
        return {
            "version": FORMAT_VERSION,
            "block_hex": self.problem.block.hex(),
            "nonce_bytes": self.problem.nonce_bytes,
            "difficulty": self.problem.difficulty,
            "units": self.space.count,
            "any": self.first_found_wins,
            "settled_prefix": self.settled_prefix,
            # A run of one unit is its number, a longer one [start, end): a thousand hosts leave
            # a thousand runs above the prefix, not a hundred thousand numbers.
            "settled_above": [start if end == start + 1 else [start, end] for start, end in self.settled_runs],
            "golden": [{"unit": g.unit, "nonce": g.nonce, "hash": g.hash} for g in self.golden],
            "status": self.status,
            "nonces_settled_before": self.nonces_settled_before,
            "legs": list(self.legs),
            "resumed_by": self.resumed_by,
            "saved_at": self.saved_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> "Checkpoint":
        """A stored checkpoint, every field checked; golden nonces are hashed again.

        Raises ValueError naming the first thing wrong."""
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError("not a version-1 checkpoint")
        problem = Problem(bytes.fromhex(_text(data, "block_hex")), _whole(data, "nonce_bytes"), _whole(data, "difficulty"))
        if problem.nonce_bytes not in (4, 8) or not 1 <= problem.difficulty <= 256:
            raise ValueError("nonce_bytes or difficulty out of range")
        space = UnitSpace(problem.nonce_bytes, _whole(data, "units"))
        if not 0 < space.count <= space.space or space.count & (space.count - 1):
            raise ValueError("units is not a power of two that fits the space")
        prefix = _whole(data, "settled_prefix")
        if not 0 <= prefix <= space.count:
            raise ValueError("a settled unit is outside the space")
        runs = _settled_runs(data.get("settled_above"), prefix, space)
        golden = tuple(_golden(item, problem, space) for item in _list(data, "golden"))
        if list(golden) != sorted(golden, key=lambda g: g.nonce) or len({g.nonce for g in golden}) != len(golden):
            raise ValueError("golden nonces are not distinct and lowest first")
        if type(data.get("any")) is not bool or not isinstance(data.get("status"), str):
            raise ValueError("any or status has the wrong type")
        resumed_by = data.get("resumed_by")
        if resumed_by is not None and not isinstance(resumed_by, str):
            raise ValueError("resumed_by is not a run id")
        legs = _list(data, "legs")
        if not all(isinstance(leg, str) for leg in legs):
            raise ValueError("legs are not run ids")
        saved_at = data.get("saved_at")
        if not isinstance(saved_at, (int, float)):
            raise ValueError("saved_at is not a time")
        return cls(
            problem,
            space,
            data["any"],
            prefix,
            runs,
            golden,
            data["status"],
            _whole(data, "nonces_settled_before"),
            tuple(legs),
            resumed_by,
            float(saved_at),
        )


def _whole(data: Dict[str, Any], key: str) -> int:
    value = data.get(key)
    if type(value) is not int or value < 0:
        raise ValueError(f"{key} is not a whole number")
    return value


def _text(data: Dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} is not text")
    return value


def _list(data: Dict[str, Any], key: str) -> List[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return value


def _golden(item: Any, problem: Problem, space: UnitSpace) -> GoldenNonce:
    if not isinstance(item, dict):
        raise ValueError("a golden nonce is not an object")
    unit, nonce, digest = _whole(item, "unit"), _whole(item, "nonce"), _text(item, "hash")
    if unit >= space.count or not space.unit(unit).start <= nonce < space.unit(unit).end:
        raise ValueError(f"golden nonce {nonce} is not in its unit {unit}")
    if problem.hash(nonce).hex() != digest or not problem.is_golden(nonce):
        raise ValueError(f"golden nonce {nonce} does not hash to a golden hash")
    return GoldenNonce(unit, nonce, digest)


def _settled_runs(above: Any, prefix: int, space: UnitSpace) -> Tuple[Tuple[int, int], ...]:
    """The stored runs above the prefix: unit numbers, or [start, end) pairs, ascending and
    disjoint, each above the prefix and inside the space. Raises ValueError."""
    if not isinstance(above, list):
        raise ValueError("settled_above is not a list of unit numbers")
    runs: List[Tuple[int, int]] = []
    for item in above:
        if type(item) is int:
            start, end = item, item + 1
        elif isinstance(item, list) and len(item) == 2 and all(type(bound) is int for bound in item):
            start, end = item
        else:
            raise ValueError("settled_above is not a list of unit numbers")
        if not prefix < start < end <= space.count:
            raise ValueError("a settled unit is outside the space")
        if runs and start < runs[-1][1]:
            raise ValueError("settled_above is not strictly increasing")
        runs.append((start, end))
    return tuple(runs)


def checkpoint_of(
    scheduler: Scheduler,
    candidate: Optional[GoldenNonce],
    base: Checkpoint,
    status: str = RUNNING_STATUS,
) -> Checkpoint:
    """The checkpoint of a running search: `base` (its problem and earlier legs) with what
    `scheduler` has settled and the lowest verified golden nonces known now."""
    settled = scheduler.settled_units()
    known = {g.nonce: g for g in base.golden}
    for golden in (scheduler.best, candidate):
        if golden is not None:
            known[golden.nonce] = golden
    lowest = tuple(known[nonce] for nonce in sorted(known)[:MAX_GOLDEN])
    return replace(
        base,
        settled_prefix=settled.prefix,
        settled_runs=settled.above_runs(),
        golden=lowest,
        status=status,
        saved_at=time.time(),
    )


class CheckpointKeeper:
    """The fleet's checkpoint callback for one run: each call stores the run's settled work
    in its journal. It stores `base` at once, so a run killed before its first flush still
    resumes from where it began (and a resumed run keeps its earlier legs' work)."""

    def __init__(self, journal: RunJournal, base: Checkpoint) -> None:
        self.journal = journal
        self.base = base
        #: Flushes made and the controller time they took, for the overhead figure.
        self.writes = 0
        self.seconds = 0.0
        save(journal, base)

    def __call__(self, scheduler: Scheduler, candidate: Optional[GoldenNonce], status: str) -> None:
        began = time.perf_counter()
        save(self.journal, checkpoint_of(scheduler, candidate, self.base, status))
        self.writes += 1
        self.seconds += time.perf_counter() - began


# --- journals ----------------------------------------------------------------------------
def save(journal: RunJournal, checkpoint: Checkpoint) -> None:
    """Store the checkpoint in the run's journal (an atomic rewrite of the file)."""
    journal.save_checkpoint(checkpoint.to_json())


def load(run_id: str) -> Tuple[RunJournal, Checkpoint]:
    """The journal of run `run_id` and its checkpoint; CheckpointError (one line) otherwise.

    Nothing is written here: a corrupted journal or checkpoint is left exactly as it is."""
    path = state_dir() / "runs" / f"{run_id}.json"
    if "/" in run_id or not path.is_file():
        raise CheckpointError(f"--resume: there is no run {run_id} in {path.parent}")
    try:
        journal = RunJournal.load(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"--resume: the journal of run {run_id} is unreadable ({error}); it is left as it is")
    if journal.checkpoint is None:
        raise CheckpointError(f"--resume: run {run_id} has no checkpoint (it never started searching)")
    try:
        checkpoint = Checkpoint.from_json(journal.checkpoint)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"--resume: the checkpoint of run {run_id} is corrupted ({error}); its journal is left as it is")
    return journal, checkpoint


def resumable(journal: RunJournal, checkpoint: Checkpoint, controller_alive: bool) -> None:
    """Raise CheckpointError saying why run `journal` cannot be resumed now, if it cannot."""
    run_id = journal.run_id
    if checkpoint.resumed_by is not None:
        raise CheckpointError(f"--resume: run {run_id} was already resumed as {checkpoint.resumed_by}; resume that run instead")
    if checkpoint.status in FINISHED:
        lowest = checkpoint.lowest()
        answer = f"golden nonce {lowest.nonce}" if checkpoint.status == "found" and lowest else "no golden nonce"
        raise CheckpointError(f"--resume: run {run_id} finished ({answer}); there is nothing to resume")
    if controller_alive:
        pid = journal.details.get("controller_pid")
        raise CheckpointError(f"--resume: run {run_id} is still running (controller pid {pid}); stop it first")
