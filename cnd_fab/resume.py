"""`fab search --resume RUN_ID`: everything decided before a resumed run launches.

The stopped run's checkpoint gives the problem; problem flags given anyway must match it.
A run that cannot be resumed (unknown, corrupted, finished, already resumed, its controller
still alive) is one line and exit 2, with nothing launched and its journal untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict

from . import checkpoint as checkpoints
from .checkpoint import Checkpoint
from .errors import InputError
from .journal import RunJournal
from .leftovers import controller_alive
from .outcome import FOUND_STATUS, NONE_STATUS, RUNNING_STATUS
from .request import SearchRequest


@dataclass(frozen=True)
class Resumption:
    """A checked --resume: the stopped run, its checkpoint, and the request it continues."""

    journal: RunJournal
    checkpoint: Checkpoint
    request: SearchRequest

    @property
    def run_id(self) -> str:
        """The run being resumed."""
        return self.journal.run_id

    def base(self) -> Checkpoint:
        """The new leg's first checkpoint: what the stopped run settled, with it as a leg."""
        before = self.checkpoint
        return replace(
            before,
            status=RUNNING_STATUS,
            nonces_settled_before=before.nonces_settled(),
            legs=before.legs + (self.run_id,),
            resumed_by=None,
        )

    def hand_over(self, new_run_id: str) -> None:
        """Mark the stopped run resumed by `new_run_id`, so that it is not resumed twice."""
        checkpoints.save(self.journal, replace(self.checkpoint, resumed_by=new_run_id))

    def close_answered(self) -> None:
        """The checkpoint already settles the answer: record that the run is finished."""
        status = FOUND_STATUS if self.checkpoint.lowest() else NONE_STATUS
        checkpoints.save(self.journal, replace(self.checkpoint, status=status))


def open_resumption(request: SearchRequest) -> Resumption:
    """Check that `request.resume` can be resumed and give the request its problem."""
    assert request.resume is not None
    journal, checkpoint = checkpoints.load(request.resume)
    checkpoints.resumable(journal, checkpoint, controller_alive(journal))
    for flag in request.problem_flags_given:
        given, stored = _problem_value(flag, request), _checkpoint_value(flag, checkpoint)
        if given != stored:
            raise InputError(
                f"--resume: --{flag} {_shown(given)} does not match run {journal.run_id} ({_shown(stored)}); "
                f"a resumed run keeps its problem, so leave --{flag} out"
            )
    resumed = replace(
        request,
        problem=checkpoint.problem,
        space=checkpoint.space,
        first_found_wins=checkpoint.first_found_wins,
    )
    return Resumption(journal, checkpoint, resumed)


def _problem_value(flag: str, request: SearchRequest) -> Any:
    return _values(request.problem.difficulty, request.problem.block, request.problem.nonce_bytes,
                   request.space.count, request.first_found_wins)[flag]


def _checkpoint_value(flag: str, checkpoint: Checkpoint) -> Any:
    return _values(checkpoint.problem.difficulty, checkpoint.problem.block, checkpoint.problem.nonce_bytes,
                   checkpoint.space.count, checkpoint.first_found_wins)[flag]


def _values(difficulty: int, block: bytes, nonce_bytes: int, units: int, first_found_wins: bool) -> Dict[str, Any]:
    return {
        "difficulty": difficulty,
        "block": block,
        "block-hex": block,
        "nonce-bytes": nonce_bytes,
        "units": units,
        "any": first_found_wins,
    }


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        text = value.hex()
        return f"block {text[:32]}…" if len(text) > 32 else f"block {text}"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
