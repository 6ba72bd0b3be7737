"""Which process controls a run, and whether it still runs, for teardown and `fab status`.

A run's journal and each of its Docker containers name its controller as
``<boot id>/<pid namespace>/<pid>/<start time>``. The boot id and the PID namespace say which
process table the pid belongs to, and the start time tells the controller apart from a later
process that reuses its pid. So only a controller of this boot and namespace can be proved
gone: any other may still run, somewhere teardown cannot look.
"""

from __future__ import annotations

import os
from typing import Optional

#: What controller_state answers.
RUNNING = "running"
GONE = "gone"
ELSEWHERE = "elsewhere"


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks after boot (/proc/<pid>/stat, field 22)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and brackets: count from the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _machine() -> Optional[str]:
    """This boot and PID namespace, as '<boot id>/<pid namespace>'; None where /proc cannot tell."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}" if boot else None


def this_controller() -> str:
    """This process's identity for a journal or a label; "" where /proc cannot tell it."""
    machine, started = _machine(), _start_time(os.getpid())
    return f"{machine}/{os.getpid()}/{started}" if machine and started else ""


def controller_state(identity: str) -> str:
    """RUNNING, GONE (provably), or ELSEWHERE: another boot or PID namespace, or no identity.

    This very process counts as GONE: it is tearing the run down, not running it."""
    machine, _, rest = identity.rpartition("/")  # rest: the start time
    machine, _, pid_text = machine.rpartition("/")
    if not identity or machine != _machine() or not pid_text.isdigit():
        return ELSEWHERE
    pid = int(pid_text)
    if pid == os.getpid():
        return GONE
    return RUNNING if _start_time(pid) == rest else GONE
