"""What runs left behind: found through journals and the providers' labels and tags, removed
through the providers' typed results, and listed by `fab status`.

No provider internals are read here and no message text is matched: each provider says, per
resource, whether it is gone (`Released.done`) and why not.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional

from rich.console import Console

from . import inventory as inventory_file
from .controller import GONE, RUNNING, controller_state
from .errors import CndError
from .journal import CLEANED, OPEN, RunJournal
from .outcome import RUNNING_STATUS
from .providers import provider_class
from .providers.base import Leftover, LiveResource, Provider, ProviderOptions, Released

#: The providers whose resources outlive their controller and carry our labels or tags.
LABELLING_PROVIDERS = ("docker", "ec2")


def controller_of(journal: RunJournal) -> str:
    """RUNNING, GONE or ELSEWHERE: the state of the controller that wrote the journal."""
    identity = journal.details.get("controller")
    if isinstance(identity, str) and identity:
        return controller_state(identity)
    # Journals of an older cnd-fab, or from where /proc could not tell, name only the pid.
    pid = journal.details.get("controller_pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return GONE
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return RUNNING if b"fab" in handle.read() else GONE
    except OSError:
        return GONE


def controller_alive(journal: RunJournal) -> bool:
    """True unless the controller that wrote the journal is provably gone."""
    return controller_of(journal) != GONE


def _labelling_providers(journals: List[RunJournal], options: ProviderOptions) -> List[Provider]:
    """Docker always (when its engine answers); EC2 only where a journal or --region names a region."""
    providers = [provider_class("docker")(options)]
    if options.region or any(journal.provider == "ec2" for journal in journals):
        providers.append(provider_class("ec2")(options))
    return providers


def spared_because(leftover: Leftover, found: bool, expired_only: bool) -> str:
    """Why teardown must leave a run alone unless it is named; "" when the run is provably dead.

    Dead means: its journal is on this machine and the controller that wrote it is gone (not
    with --expired), or its resources show that no live controller keeps them (EC2's
    alive-until has passed; a container's controller is gone). A controller that still runs
    here spares its run whatever its resources show: they may just have missed a renewal."""
    journal = leftover.journal
    if journal.path.name:  # a journal of this state directory
        state = controller_of(journal)
        if state == RUNNING:
            return f"its controller still runs here (pid {journal.details.get('controller_pid')})"
        if state == GONE and not expired_only:
            return ""
    if found:
        return "" if leftover.expired else leftover.alive_because
    return "its controller ran on another machine or in another PID namespace, so it may still run"


def find_leftovers(
    run_id: Optional[str], all_runs: bool, expired: bool, options: ProviderOptions, say: Console
) -> List[Leftover]:
    """The runs to tear down: open journals and runs found by label or tag (their journal may be
    lost, closed, or in another state directory). Without --run, only provably dead runs (see
    spared_because); --all takes the others too, each with `alive_because` set."""
    journals = RunJournal.all()
    local = {journal.run_id: journal for journal in journals}
    candidates: Dict[str, Leftover] = {}
    if not expired:  # --expired goes by what the resources show alone
        for journal in journals:
            if journal.status == OPEN or journal.run_id == run_id:
                candidates[journal.run_id] = Leftover(
                    journal.run_id, journal.provider, journal, journal.details.get("region")
                )
    found = set()
    for provider in _labelling_providers(journals, options):
        try:
            leftovers = provider.leftovers(journals, expired_only=expired)
        except CndError as error:
            if provider.name != "docker":  # no Docker engine here: nothing of ours can run on it
                say.print(f"cannot search {provider.name} for leftovers: {error}", highlight=False, soft_wrap=True)
            continue
        for leftover in leftovers:
            if leftover.run_id in found or run_id not in (None, leftover.run_id):
                continue
            found.add(leftover.run_id)
            # This machine's journal, when there is one: it knows the run's instance ids, and it
            # is closed once the run is clean.
            ours = local.get(leftover.run_id)
            if ours is not None:
                leftover.journal = ours
                leftover.region = leftover.region or ours.details.get("region")
            candidates[leftover.run_id] = leftover
    if run_id is not None:
        return [candidates[run_id]] if run_id in candidates else []
    chosen: List[Leftover] = []
    for leftover in candidates.values():
        why = spared_because(leftover, leftover.run_id in found, expired)
        if why and not all_runs:
            say.print(
                f"skipping {leftover.run_id}: {why}; name it with --run {leftover.run_id} to remove it anyway",
                highlight=False,
                soft_wrap=True,
            )
            continue
        leftover.alive_because = why
        chosen.append(leftover)
    return chosen


def _confirmed(leftover: Leftover, console: Console) -> bool:
    """--all: a run that looks alive goes only once confirmed on a terminal (off one, with a line)."""
    if not leftover.alive_because:
        return True
    if not sys.stdin.isatty():
        console.print(
            f"removing {leftover.run_id} although {leftover.alive_because} (--all)", highlight=False, soft_wrap=True
        )
        return True
    answer = console.input(
        f"{leftover.run_id} looks alive: {leftover.alive_because}. Remove it anyway? [y/N] ", markup=False
    )
    return answer.strip().lower() in ("y", "yes")


def teardown(
    run_id: Optional[str],
    all_runs: bool,
    expired: bool,
    dry_run: bool,
    inventory: Optional[str],
    region: Optional[str],
    console: Console,
) -> None:
    """Remove whatever runs left behind, closing each journal whose every resource is gone.

    Without --run it touches only runs that are provably dead (see spared_because); --all asks
    on a terminal before it takes one that looks alive. Raises CndError when something could
    not be removed (after trying everything else)."""
    options = ProviderOptions(
        inventory=inventory_file.load(inventory) if inventory else inventory_file.Inventory(), region=region
    )
    chosen = find_leftovers(run_id, all_runs, expired, options, console)
    if run_id is not None and not chosen:
        raise CndError(f"nothing is known of run {run_id!r}: no journal, no labelled container or tagged instance")
    if not dry_run:
        chosen = [leftover for leftover in chosen if _confirmed(leftover, console)]
    results: List[Released] = []
    for leftover in chosen:
        provider = provider_class(leftover.provider)(options)
        try:
            released = provider.remove(leftover, dry_run=dry_run)
        except CndError as error:
            released = [Released(f"{leftover.provider} run {leftover.run_id}", False, str(error))]
        for item in released:
            console.print(item.line(), highlight=False, soft_wrap=True)
        results += released
        saved = leftover.journal.path.name != ""
        if saved and not dry_run and not any(item.failed for item in released):
            leftover.journal.close(CLEANED)
    failed = [item for item in results if item.failed]
    verb = "would remove" if dry_run else "removed"
    console.print(f"teardown: {verb} {len(results) - len(failed)} resource(s) from {len(chosen)} run(s)", highlight=False)
    if failed:
        raise CndError(f"teardown left {len(failed)} resource(s) it could not remove; see above, then run it again")


def status(region: Optional[str], console: Console) -> None:
    """Print the open journals and every live resource the labelling providers can see."""
    from rich.table import Table

    journals = RunJournal.all()
    table = Table(title="open runs")
    for column in ("run", "provider", "started", "controller", "resources"):
        table.add_column(column)
    for journal in journals:
        if journal.status != OPEN:
            continue
        table.add_row(
            journal.run_id,
            journal.provider,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(journal.created)),
            controller_of(journal),
            ", ".join(sorted({str(r.get("kind")) for r in journal.resources})) or "-",
        )
    console.print(table)
    resumable_runs(journals, console)
    for provider in _labelling_providers(journals, ProviderOptions(region=region)):
        try:
            live: List[LiveResource] = provider.live_resources(journals)
        except CndError as error:
            if provider.name != "docker":
                console.print(f"cannot list {provider.name} resources: {error}", highlight=False, soft_wrap=True)
            continue
        if not live:
            continue
        resources = Table(title=f"cnd-fab {provider.name} resources")
        for column in ("resource", "state", "run", "detail"):
            resources.add_column(column)
        for item in live:
            resources.add_row(item.name, item.state, item.run_id, item.detail)
        console.print(resources)


def resumable_runs(journals: List[RunJournal], console: Console) -> None:
    """The stopped runs that `fab search --resume RUN_ID` can continue, and how far each got."""
    from rich.table import Table

    from .checkpoint import Checkpoint, FINISHED

    table = Table(title="resumable runs (fab search --resume RUN_ID)")
    table.add_column("run", no_wrap=True)
    for column in ("problem", "settled", "ended", "best so far"):
        table.add_column(column)
    for journal in journals:
        if journal.checkpoint is None:
            continue
        try:
            checkpoint = Checkpoint.from_json(journal.checkpoint)
        except (ValueError, TypeError) as error:
            table.add_row(journal.run_id, "-", "-", f"checkpoint unreadable: {error}", "-")
            continue
        if checkpoint.status in FINISHED or checkpoint.resumed_by is not None:
            continue
        ended = checkpoint.status
        if ended == RUNNING_STATUS:
            ended = "still running" if controller_alive(journal) else "controller killed"
        problem = checkpoint.problem
        lowest = checkpoint.lowest()
        table.add_row(
            journal.run_id,
            f"D={problem.difficulty}, {problem.nonce_bytes}-byte nonces",
            f"{checkpoint.share_settled():.4%} ({checkpoint.units_settled():,} of {checkpoint.space.count:,} units)",
            ended,
            "-" if lowest is None else str(lowest.nonce),
        )
    console.print(table)
