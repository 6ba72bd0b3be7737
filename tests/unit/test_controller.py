"""A run's controller as journals and container labels name it: running, provably gone, or elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys

from cnd_fab import controller
from cnd_fab.controller import ELSEWHERE, GONE, RUNNING, controller_state, this_controller


def identity_of(pid: int) -> str:
    """What this_controller() would say in process `pid`."""
    me = this_controller()
    machine = me.rsplit("/", 2)[0]
    return f"{machine}/{pid}/{controller._start_time(pid)}"


def test_a_live_process_runs_and_an_ended_one_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = identity_of(child.pid)
        assert controller_state(identity) == RUNNING
    finally:
        child.kill()
        child.wait()
    assert controller_state(identity) == GONE


def test_a_reused_pid_is_not_the_controller() -> None:
    machine, pid, started = this_controller().rsplit("/", 2)
    parent = os.getppid()
    # The parent's pid with another start time: a later process that took a gone controller's pid.
    assert controller_state(f"{machine}/{parent}/{int(started) + 1}") == GONE
    assert controller_state(identity_of(parent)) == RUNNING


def test_only_this_boot_and_namespace_can_be_judged() -> None:
    _, _, namespace, pid, started = ("x/" + this_controller()).split("/")
    assert controller_state(f"another-boot/{namespace}/{pid}/{started}") == ELSEWHERE
    assert controller_state("") == ELSEWHERE
    assert controller_state("no identity at all") == ELSEWHERE


def test_this_process_is_not_a_live_controller_of_its_own_teardown() -> None:
    assert controller_state(this_controller()) == GONE
