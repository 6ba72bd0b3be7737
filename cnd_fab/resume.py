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
from .outcome import RUNNING_STATUS
from .request import SearchRequest
from .spec import Problem, UnitSpace


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

    def close_answered(self, status: str) -> None:
        """The checkpoint already settles the answer: record the run as ended with `status`."""
        checkpoints.save(self.journal, replace(self.checkpoint, status=status))


def open_resumption(request: SearchRequest) -> Resumption:
    """Check that `request.resume` can be resumed and give the request its problem."""
    assert request.resume is not None
    journal, checkpoint = checkpoints.load(request.resume)
    checkpoints.resumable(journal, checkpoint, controller_alive(journal))
    asked = _stated_by(request.problem, request.space, request.first_found_wins)
    kept = _stated_by(checkpoint.problem, checkpoint.space, checkpoint.first_found_wins)
    for flag in request.problem_flags_given:
        given, stored = asked[flag], kept[flag]
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


def _stated_by(problem: Problem, space: UnitSpace, first_found_wins: bool) -> Dict[str, Any]:
    """What each of options.PROBLEM_FLAGS states, for this problem."""
    return {
        "difficulty": problem.difficulty,
        "block": problem.block,
        "block-hex": problem.block,
        "nonce-bytes": problem.nonce_bytes,
        "units": space.count,
        "any": first_found_wins,
    }


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        text = value.hex()
        return f"block {text[:32]}…" if len(text) > 32 else f"block {text}"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
