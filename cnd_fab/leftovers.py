"""What runs left behind: found through journals and the providers' labels and tags, removed
through the providers' typed results, and listed by `fab status`.

No provider internals are read here and no message text is matched: each provider says, per
resource, whether it is gone (`Released.done`) and why not.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

from rich.console import Console

from . import inventory as inventory_file
from .errors import CndError
from .journal import CLEANED, OPEN, RunJournal
from .outcome import RUNNING_STATUS
from .providers import provider_class
from .providers.base import Leftover, LiveResource, Provider, ProviderOptions, Released

#: The providers whose resources outlive their controller and carry our labels or tags.
LABELLING_PROVIDERS = ("docker", "ec2")


def controller_alive(journal: RunJournal) -> bool:
    """True while the controller that wrote an open journal still runs on this machine."""
    pid = journal.details.get("controller_pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"fab" in handle.read()
    except OSError:
        return False


def _labelling_providers(journals: List[RunJournal], options: ProviderOptions) -> List[Provider]:
    """Docker always (when its engine answers); EC2 only where a journal or --region names a region."""
    providers = [provider_class("docker")(options)]
    if options.region or any(journal.provider == "ec2" for journal in journals):
        providers.append(provider_class("ec2")(options))
    return providers


def find_leftovers(
    run_id: Optional[str], all_runs: bool, expired: bool, options: ProviderOptions, say: Console
) -> List[Leftover]:
    """The runs to tear down: open journals whose controller is gone, plus runs found by their
    label or tag (their journal may be lost or closed)."""
    journals = RunJournal.all()
    chosen: Dict[str, Leftover] = {}
    busy = set()
    for journal in journals:
        if run_id is not None:
            if journal.run_id == run_id:
                chosen[run_id] = Leftover(run_id, journal.provider, journal, journal.details.get("region"))
            continue
        if journal.status != OPEN or expired:
            continue
        if controller_alive(journal) and not all_runs:
            busy.add(journal.run_id)
            say.print(f"skipping {journal.run_id}: its controller is still running (use --run or --all)", highlight=False)
            continue
        chosen[journal.run_id] = Leftover(journal.run_id, journal.provider, journal, journal.details.get("region"))
    for provider in _labelling_providers(journals, options):
        try:
            found = provider.leftovers(journals, expired_only=expired)
        except CndError as error:
            if provider.name != "docker":  # no Docker engine here: nothing of ours can run on it
                say.print(f"cannot search {provider.name} for leftovers: {error}", highlight=False, soft_wrap=True)
            continue
        for leftover in found:
            if leftover.run_id in chosen or leftover.run_id in busy or run_id not in (None, leftover.run_id):
                continue
            chosen[leftover.run_id] = leftover
    return list(chosen.values())


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

    Raises CndError when something could not be removed (after trying everything else)."""
    options = ProviderOptions(
        inventory=inventory_file.load(inventory) if inventory else inventory_file.Inventory(), region=region
    )
    chosen = find_leftovers(run_id, all_runs, expired, options, console)
    if run_id is not None and not chosen:
        raise CndError(f"nothing is known of run {run_id!r}: no journal, no labelled container or tagged instance")
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
            "running" if controller_alive(journal) else "gone",
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
