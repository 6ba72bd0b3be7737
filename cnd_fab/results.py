"""What a finished search tells its user: the result as text or JSON, and its run record."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .checkpoint import Checkpoint, CheckpointKeeper
from .joblog import JobLog
from .request import SearchRequest
from .outcome import FOUND_STATUS, INTERRUPTED_STATUS, NONE_STATUS, TIMEOUT_STATUS, SearchOutcome
from .progress import human_rate, human_seconds
from .spec import Problem, zero_bits


def describe_odds(problem: Problem) -> str:
    """The chances the user should know before a search starts."""
    return (
        f"difficulty {problem.difficulty}: each nonce is golden with probability 2^-{problem.difficulty}, "
        f"about 2^{problem.difficulty} nonces to the first; the 2^{8 * problem.nonce_bytes} space holds "
        f"none with probability {problem.chance_space_has_none():.3g}"
    )


def describe_resumption(run_id: str, base: Checkpoint) -> str:
    """What a resumed run starts from."""
    settled = base.nonces_settled_before
    known = base.lowest()
    text = (
        f"resuming {run_id}: {settled:,} nonces ({settled / base.problem.space:.4%} of the space) "
        f"settled before, {base.units_settled()} units skipped"
    )
    return text + (f"; golden nonce {known.nonce} already known" if known else "")


def answered_outcome(checkpoint: Checkpoint) -> SearchOutcome:
    """The outcome a checkpoint settles on its own: its answer, with nothing searched now."""
    scheduler = checkpoint.scheduler()
    found = scheduler.best is not None
    return SearchOutcome(
        status=FOUND_STATUS if found else NONE_STATUS,
        golden=scheduler.best,
        lowest=found and not checkpoint.first_found_wins,
        checked=0,
        nonces_settled=scheduler.nonces_settled,
        units_settled=scheduler.units_settled,
        units_total=checkpoint.space.count,
        seconds=0.0,
        hosts=[],
        reissued=0,
        first_found_wins=checkpoint.first_found_wins,
    )


def result_record(
    request: SearchRequest,
    outcome: SearchOutcome,
    run_id: str,
    provider: str,
    cost: Optional[float],
    base: Optional[Checkpoint] = None,
) -> Dict[str, Any]:
    """The result as one JSON-ready object (what --json prints). `base` is where the run
    started: a resumed run's checkpoint says what was settled before it."""
    before = base.nonces_settled_before if base else 0
    problem = request.problem
    golden = outcome.golden
    nonce = golden.nonce if golden else None
    return {
        "status": outcome.status,
        "found": golden is not None,
        "nonce": nonce,
        "nonce_hex": None if nonce is None else f"{nonce:0{2 * problem.nonce_bytes}x}",
        "hash": golden.hash if golden else None,
        "zero_bits": None if nonce is None else zero_bits(problem.hash(nonce)),
        "lowest": outcome.lowest,
        "difficulty": problem.difficulty,
        "block_hex": problem.block.hex(),
        "nonce_bytes": problem.nonce_bytes,
        "units": request.space.count,
        "checked": outcome.checked,
        "nonces_settled": outcome.nonces_settled,
        "resumed_from": base.legs[-1] if base and base.legs else None,
        "nonces_settled_before": before,
        "nonces_settled_this_leg": outcome.nonces_settled - before,
        "space": problem.space,
        "seconds": round(outcome.seconds, 6),
        "rate": round(outcome.rate, 1),
        "provider": provider,
        "run_id": run_id,
        "reissued": outcome.reissued,
        "hosts": [
            {
                "name": host.name,
                "state": host.state,
                "cores": host.cores,
                "kernel": host.kernel,
                "units": host.units_done,
                "hashes": host.hashes,
                "error": host.error or None,
            }
            for host in outcome.hosts
        ],
        "cost_usd": None if cost is None else round(cost, 6),
    }


def result_text(request: SearchRequest, outcome: SearchOutcome, record: Dict[str, Any]) -> str:
    """The result as the lines a person reads on stdout."""
    problem = request.problem
    space_bits = 8 * problem.nonce_bytes
    lines: List[str] = []
    if outcome.status == NONE_STATUS:
        lines.append(f"no golden nonce: the whole 2^{space_bits} space holds none at difficulty {problem.difficulty}")
    elif outcome.status in (TIMEOUT_STATUS, INTERRUPTED_STATUS):
        share = outcome.nonces_settled / problem.space
        why = "timed out" if outcome.status == TIMEOUT_STATUS else "interrupted"
        lines.append(
            f"{why} after {human_seconds(outcome.seconds)}: {outcome.nonces_settled:,} nonces "
            f"({share:.4%} of the space) settled; {outcome.units_settled} units done"
        )
    if record["found"]:
        label = "golden nonce" if outcome.status == FOUND_STATUS else "best so far"
        lines.append(f"{label:<14} {record['nonce']}  (0x{record['nonce_hex']})")
        lines.append(f"hash           {record['hash']}")
        lines.append(f"zero bits      {record['zero_bits']} (difficulty {problem.difficulty})")
        if outcome.lowest:
            lines.append("lowest         yes: every nonce below it was checked")
        elif outcome.first_found_wins and outcome.status == FOUND_STATUS:
            lines.append("lowest         not checked (--any): the first golden nonce found, maybe not the lowest")
        else:
            lines.append("lowest         not proven: some nonces below it were not checked")
    checked = f"{outcome.checked:,} nonces in {human_seconds(outcome.seconds)} ({human_rate(outcome.rate)})"
    lines.append(f"checked        {checked}")
    if record["resumed_from"]:
        lines.append(
            f"resumed        from {record['resumed_from']}: {record['nonces_settled_before']:,} nonces settled "
            f"before, {record['nonces_settled_this_leg']:,} in this run"
        )
    lines.append(f"run            {record['run_id']} on {record['provider']}, {len(outcome.hosts)} host(s)")
    return "\n".join(lines)


def save_run_record(
    request: SearchRequest,
    result: Dict[str, Any],
    started: float,
    outcome: SearchOutcome,
    instance_type: Optional[str],
    joblog: Optional[JobLog] = None,
    keeper: Optional[CheckpointKeeper] = None,
) -> None:
    """Keep the run's figures for `fab stats`, with its per-unit log and checkpoint costs."""
    from .records import build_record, write_record

    parameters = {
        "difficulty": request.problem.difficulty,
        "nonce_bytes": request.problem.nonce_bytes,
        "block_hex": request.problem.block.hex(),
        "units": request.space.count,
        "any": request.first_found_wins,
        "timeout": request.timeout,
        "within": request.within,
        "confidence": request.confidence,
        "kernel": request.kernel,
    }
    record = build_record(
        result["run_id"],
        result["provider"],
        instance_type,
        parameters,
        result,
        started,
        outcome.hosts,
        result["cost_usd"],
    )
    for key in ("resumed_from", "nonces_settled_before", "nonces_settled_this_leg"):
        record[key] = result[key]
    if result.get("notices"):
        record["notices"] = result["notices"]
    if result["resumed_from"]:
        record["time_to_result"] = None  # one leg's time is not the time to the answer
    if joblog is not None:
        record["joblog"] = joblog.to_record()
    if keeper is not None:
        record["checkpoints"] = {"writes": keeper.writes, "seconds": round(keeper.seconds, 6)}
    write_record(record)
