"""Every golden nonce a host claims, checked here before it is believed.

A claim is hashed on the controller (a wrong answer must never be printed), and remembered:
a unit's verified golden nonce also tells when a later DONE from the same host denies it.
"""

from __future__ import annotations

from typing import Dict, Optional

from remote import worker

from .schedule import GoldenNonce
from .spec import Problem, UnitSpace


def truly_golden(problem: Problem, space: UnitSpace, golden: GoldenNonce) -> bool:
    """Re-hash a reported golden nonce here, after checking it lies inside its unit."""
    if not 0 <= golden.unit < space.count:
        return False
    unit = space.unit(golden.unit)
    return (
        unit.start <= golden.nonce < unit.end
        and problem.hash(golden.nonce).hex() == golden.hash
        and problem.is_golden(golden.nonce)
    )


class GoldenLedger:
    """The lowest verified golden nonce of each unit that hosts have reported one in."""

    def __init__(self, problem: Problem, space: UnitSpace) -> None:
        self.problem = problem
        self.space = space
        self.lowest_in_unit: Dict[int, int] = {}

    def repeated(self, found: worker.Found) -> bool:
        """True for a FOUND already believed (a redone chunk finds it again): not hashed twice."""
        return self.lowest_in_unit.get(found.unit) == found.nonce

    def check(self, golden: GoldenNonce) -> Optional[str]:
        """Why a claimed golden nonce is false, or None once it is verified and recorded."""
        if not truly_golden(self.problem, self.space, golden):
            return f"reported nonce {golden.nonce} as golden in unit {golden.unit}, but it is not"
        known = self.lowest_in_unit.get(golden.unit)
        self.lowest_in_unit[golden.unit] = golden.nonce if known is None else min(known, golden.nonce)
        return None

    def denied_by(self, done: worker.Done) -> Optional[str]:
        """Why a DONE contradicts a golden nonce verified in one of its units, or None. Its
        golden nonce speaks for its last unit; the units below that it says hold none."""
        last = done.unit + done.units - 1
        for unit, known in self.lowest_in_unit.items():
            if done.unit <= unit <= last:
                said = done.nonce if unit == last else None
                if said is None or said > known:
                    return f"DONE for unit {unit} says {said}, but golden nonce {known} was verified there"
        return None
