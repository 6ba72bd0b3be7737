"""What the user sees: a rich live display on a terminal, plain log lines elsewhere.

Everything here writes to stderr, so stdout holds only the result (text or --json) and can
be piped. Events go through the console above the live area so they never tear it.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .outcome import LOST, READY, RECLAIMED, STARTING, STOPPED, HostView, Reporter, SearchOutcome, Snapshot

PLAIN_EVERY_SECONDS = 3.0
#: Hosts the display shows a row each; a larger fleet is shown in groups: a row per state,
#: then the slowest ready hosts and the last ones lost, so a thousand hosts fit a terminal.
HOST_ROWS = 20
SLOWEST_SHOWN = 3
LOST_SHOWN = 5
#: The order states are shown in, and their colours.
STATE_ORDER = (READY, STARTING, STOPPED, RECLAIMED, LOST)
STATE_STYLES = {LOST: "red", RECLAIMED: "yellow", READY: "green"}


def human_rate(rate: float) -> str:
    """A hash rate with a unit, such as 3.02 MH/s."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.2f} {suffix}H/s"
    return f"{rate:.0f} H/s"


def human_seconds(seconds: Optional[float]) -> str:
    """A duration as a person reads it: 4.2s, 3m05s, 2h10m, 1.5 days."""
    if seconds is None:
        return "?"
    if seconds >= 365 * 86400:
        return f"{seconds / (365 * 86400):.1f} years"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def _ago(moment: Optional[float]) -> str:
    if moment is None:
        return "-"
    return f"{time.monotonic() - moment:.1f}s ago"


class LiveReporter(Reporter):
    """A rich Live area: the overall bar and one row per host."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.live = Live(console=console, refresh_per_second=8, transient=True)

    def start(self) -> None:
        """Start drawing the live display."""
        self.live.start()

    def stop(self) -> None:
        """Stop the live display, leaving its last frame."""
        self.live.stop()

    def event(self, text: str) -> None:
        """Print one event line above the display."""
        self.live.console.print(Text.assemble((time.strftime("%H:%M:%S "), "dim"), text))

    def update(self, snapshot: Snapshot) -> None:
        """Redraw the display from a new snapshot."""
        self.live.update(self.render(snapshot))

    def render(self, snapshot: Snapshot) -> RenderableType:
        """The live area for one snapshot."""
        header = Table.grid(padding=(0, 2))
        header.add_column()
        header.add_column()
        header.add_row(
            ProgressBar(
                total=max(1, snapshot.units_total),
                completed=snapshot.units_done,
                width=40,
            ),
            Text(
                f"{snapshot.units_done} done · {snapshot.units_in_flight} in flight · "
                f"{snapshot.units_total} units"
            ),
        )
        header.add_row(
            Text(f"{human_rate(snapshot.rate)}  ·  {snapshot.checked:,} checked", style="bold"),
            Text(
                f"elapsed {human_seconds(snapshot.elapsed)}  ·  "
                f"ETA to exhaust {human_seconds(snapshot.eta)}"
                + (f"  ·  {snapshot.reissued} reissued" if snapshot.reissued else "")
            ),
        )
        if snapshot.candidate is not None:
            header.add_row(
                Text(f"best so far: nonce {snapshot.candidate.nonce}", style="green"),
                Text("waiting for the units below it" if snapshot.units_done < snapshot.units_total else ""),
            )
        return Group(Text(self.title, style="bold cyan"), header, host_table(snapshot.hosts))


def host_table(hosts: List[HostView], final: bool = False) -> Table:
    """One row per host: live figures, or the summary with errors when `final`; a fleet of
    more than HOST_ROWS hosts is shown in groups (fleet_table)."""
    if len(hosts) > HOST_ROWS:
        return fleet_table(hosts, final)
    table = Table(title="hosts" if final else None, expand=False)
    table.add_column("host")
    table.add_column("state")
    table.add_column("cores", justify="right")
    table.add_column("kernel")
    table.add_column("rate", justify="right")
    table.add_column("units", justify="right")
    table.add_column("hashes", justify="right")
    table.add_column("error" if final else "last heartbeat", max_width=70, overflow="ellipsis")
    for host in hosts:
        style = STATE_STYLES.get(host.state, "")
        # Text, never markup: a host's kernel name and error are whatever it sent.
        table.add_row(
            Text(host.name),
            Text(host.state, style=style),
            str(host.cores or "-"),
            Text(host.kernel or "-"),
            human_rate(host.rate) if not final else human_rate(average_rate(host)),
            str(host.units_done),
            f"{host.hashes:,}",
            Text(host.error) if final else _ago(host.last_heard),
        )
    return table


def fleet_table(hosts: List[HostView], final: bool = False) -> Table:
    """A large fleet in a few rows: one per state with its totals, then the SLOWEST_SHOWN
    slowest ready hosts, then the last LOST_SHOWN hosts lost with their errors."""
    table = Table(title=f"{len(hosts):,} hosts" if final else None, expand=False)
    table.add_column("hosts")
    table.add_column("state")
    table.add_column("cores", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("units", justify="right")
    table.add_column("hashes", justify="right")
    table.add_column("error" if final else "note", max_width=70, overflow="ellipsis")

    def rate_of(host: HostView) -> float:
        return average_rate(host) if final else host.rate

    by_state: Dict[str, List[HostView]] = {}
    for host in hosts:
        by_state.setdefault(host.state, []).append(host)
    for state in sorted(by_state, key=lambda name: STATE_ORDER.index(name) if name in STATE_ORDER else len(STATE_ORDER)):
        group = by_state[state]
        heard = [host.last_heard for host in group if host.last_heard is not None]
        note = f"quietest heard {_ago(min(heard))}" if heard and state == READY and not final else ""
        table.add_row(
            f"{len(group):,}",
            Text(state, style=STATE_STYLES.get(state, "")),
            f"{sum(host.cores for host in group):,}",
            human_rate(sum(rate_of(host) for host in group)),
            f"{sum(host.units_done for host in group):,}",
            f"{sum(host.hashes for host in group):,}",
            note,
        )
    working = sorted((host for host in by_state.get(READY, []) if rate_of(host) > 0), key=rate_of)
    for host in working[:SLOWEST_SHOWN]:
        table.add_row(
            Text(host.name), Text("slowest", style="dim"), str(host.cores or "-"), human_rate(rate_of(host)),
            str(host.units_done), f"{host.hashes:,}", _ago(host.last_heard) if not final else "",
        )
    lost = [host for host in hosts if host.state in (LOST, RECLAIMED)]
    for host in lost[-LOST_SHOWN:]:
        # Text, never markup: a host's error is whatever it sent.
        table.add_row(
            Text(host.name), Text(host.state, style=STATE_STYLES[host.state]), str(host.cores or "-"),
            human_rate(rate_of(host)), str(host.units_done), f"{host.hashes:,}", Text(host.error),
        )
    if len(lost) > LOST_SHOWN:
        table.add_row("", Text(f"{len(lost) - LOST_SHOWN:,} more lost", style="red"), "", "", "", "",
                      "every host is in the run record (fab stats RUN_ID)")
    return table


def average_rate(host: HostView) -> float:
    """A host's hashes over its working time, for the summary."""
    if host.first_unit_at is None or host.last_heard is None:
        return 0.0
    span = host.last_heard - host.first_unit_at
    return host.hashes / span if span > 0 else 0.0


class PlainReporter(Reporter):
    """Log lines for pipes and files: events at once, progress every few seconds."""

    def __init__(self, console: Console, every: float = PLAIN_EVERY_SECONDS) -> None:
        self.console = console
        self.every = every
        self.next_line = time.monotonic() + every

    def event(self, text: str) -> None:
        """Print one event line."""
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)

    def update(self, snapshot: Snapshot) -> None:
        """Print a progress line, at most every few seconds."""
        if time.monotonic() < self.next_line:
            return
        self.next_line = time.monotonic() + self.every
        ready = sum(1 for host in snapshot.hosts if host.state == "ready")
        self.event(
            f"units {snapshot.units_done}/{snapshot.units_total} done, "
            f"{snapshot.units_in_flight} in flight; {snapshot.checked:,} checked at "
            f"{human_rate(snapshot.rate)}; {ready}/{len(snapshot.hosts)} hosts ready; "
            f"elapsed {human_seconds(snapshot.elapsed)}"
        )


def print_summary(console: Console, outcome: SearchOutcome) -> None:
    """The final per-host table."""
    console.print(host_table(outcome.hosts, final=True))
