"""The live display and the summary of a large fleet: a few rows, whatever its size."""

from __future__ import annotations

import io
import time

from rich.console import Console

from cnd_fab.outcome import LOST, READY, RECLAIMED, STARTING, HostView
from cnd_fab.progress import HOST_ROWS, LOST_SHOWN, SLOWEST_SHOWN, host_table


def shown(final: bool, hosts: list) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(host_table(hosts, final=final))
    return out.getvalue()


def fleet(count: int) -> list:
    now = time.monotonic()
    hosts = []
    for index in range(count):
        host = HostView(f"host-{index}", state=READY, cores=8, rate=200e6 + index * 1e6, units_done=10, hashes=1000)
        host.last_heard = now - 0.5
        hosts.append(host)
    hosts[0].rate = 1e6  # the straggler
    for index in range(1, 9):
        hosts[index].state, hosts[index].rate, hosts[index].error = LOST, 0.0, f"host-{index}: silent for 8.1s"
    hosts[9].state, hosts[9].error = RECLAIMED, "host-9: spot interruption notice"
    hosts[10].state = STARTING
    return hosts


def test_a_thousand_hosts_are_shown_in_a_few_rows() -> None:
    text = shown(False, fleet(1000))
    lines = [line for line in text.splitlines() if line.strip()]
    # States (ready, starting, reclaimed, lost), the slowest, the last lost and the rest counted.
    assert len(lines) <= 4 + 4 + SLOWEST_SHOWN + LOST_SHOWN + 2
    assert "990" in text and "ready" in text and "starting" in text
    assert "host-0" in text and "slowest" in text and "1.00 MH/s" in text
    assert "host-9" in text and "spot interruption" in text  # the last ones lost are named...
    assert "host-1 " not in text and f"{9 - LOST_SHOWN:,} more lost" in text  # ...and the rest counted


def test_the_summary_of_a_large_fleet_names_its_lost_hosts_errors() -> None:
    text = shown(True, fleet(HOST_ROWS + 1))
    assert f"{HOST_ROWS + 1:,} hosts" in text and "silent for 8.1s" in text


def test_a_small_fleet_keeps_a_row_per_host() -> None:
    text = shown(False, fleet(HOST_ROWS))
    assert all(f"host-{index} " in text for index in range(HOST_ROWS))
