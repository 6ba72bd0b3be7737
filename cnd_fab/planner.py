"""Before anything launches: size the fleet for --within, and confirm what a paid run costs.

The sizing uses the model in model.py with the host figures of calibration.py; both
refusals here come before any launch, as one InputError line.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, Tuple


from .errors import InputError
from .request import SearchRequest
from .providers.base import Provider

if TYPE_CHECKING:
    from rich.console import Console

    from .checkpoint import Checkpoint


def plan_fleet(
    request: SearchRequest, provider: Provider, console: "Console", left: Optional["Checkpoint"] = None
) -> Tuple[int, Optional[float]]:
    """The fleet size and timeout for --within T --confidence L, or an InputError.

    A resumed run (`left`: where it starts) is planned for what is left. The first golden
    nonce beyond settled work follows the same odds, so the model is that of a smaller space:
    the unsettled nonces, or, when a golden nonce is known, those up to its unit's end."""
    from .calibration import host_model
    from .checks import check_open_files
    from .model import FleetModel, describe, smallest_fleet
    from remote import worker

    assert request.within is not None and request.confidence is not None
    problem = request.problem
    known = left.lowest() if left is not None else None
    space = problem.space if known is None else (known.unit + 1) * request.space.unit_size
    settled = 0 if left is None else left.nonces_settled_before
    host = host_model(provider.name, provider.instance_type, request.kernel, provider.cores_per_host())
    model = FleetModel(
        difficulty=problem.difficulty,
        space=max(request.space.unit_size, space - settled),
        unit_size=request.space.unit_size,
        prefetch=worker.split_prefetch(provider.cores_per_host()),
        first_found_wins=request.first_found_wins,
    )
    plan = smallest_fleet(model, host, request.within, request.confidence, provider.max_hosts())
    console.print(describe(model, host, plan, request.within, request.confidence), highlight=False, soft_wrap=True)
    if not request.best_effort:
        # A known golden nonce is certain, whatever the odds of the nonces before it.
        if known is None and model.space_holds_one() < request.confidence:
            bits = 8 * problem.nonce_bytes
            where = f"the {model.space:,} nonces left of the 2^{bits} space hold" if settled else f"the 2^{bits} space holds"
            remedy = "try --best-effort" if settled else "try --nonce-bytes 8, or --best-effort"
            raise InputError(
                f"{where} a golden nonce at difficulty {problem.difficulty} only with probability "
                f"{model.space_holds_one():.3f}, below --confidence {request.confidence:g}; nothing was launched ({remedy})"
            )
        if not plan.reached:
            raise InputError(
                f"no fleet of at most {provider.max_hosts()} {provider.name} host(s) settles the answer within "
                f"{request.within:g}s with probability {request.confidence:g}: the best, {plan.hosts} host(s), "
                f"reaches {plan.probability:.3f}; nothing was launched (allow more time, use a faster provider, "
                "or --best-effort)"
            )
    provider.check(plan.hosts)
    check_open_files(plan.hosts)
    return plan.hosts, request.timeout if request.timeout is not None else request.within


def confirm_cost(
    provider: Provider,
    count: int,
    timeout: Optional[float],
    max_cost: Optional[float],
    confirmed: bool,
    console: "Console",
) -> None:
    """Show what a paid run may cost; refuse, or ask on a terminal, before anything launches."""
    estimate = provider.cost_estimate(count, timeout)
    if estimate is None:
        return
    console.print(estimate.describe(), highlight=False, soft_wrap=True)
    if max_cost is not None:
        if estimate.total is None:
            raise InputError(f"--max-cost cannot be checked: no built-in price for {estimate.instance_type}")
        if estimate.total > max_cost:
            raise InputError(
                f"the estimate ${estimate.total:.4f} ({estimate.charges.breakdown()}) is above --max-cost "
                f"${max_cost:.4f}; nothing was launched"
            )
    if confirmed:
        return
    if not sys.stdin.isatty():
        raise InputError("this run launches paid instances: pass --yes to confirm it when not on a terminal")
    answer = console.input(f"launch {count} {provider.name} instance(s)? [y/N] ", markup=False)
    if answer.strip().lower() not in ("y", "yes"):
        raise InputError("not confirmed; nothing was launched")
