"""What a task asks for, as frozen values: cnd_fab.options makes them from flags, api runs them.

Every value here has been checked, but nothing has been opened: a ProviderRequest names a
provider and its settings, and cnd_fab.checks.open_provider turns it into a checked Provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .spec import Problem, UnitSpace


@dataclass(frozen=True)
class ProviderRequest:
    """Which provider, and the flags that configure it; opened by cnd_fab.checks.open_provider."""

    name: str = "local"
    inventory_path: Optional[str] = None
    accept_new_host_key: bool = False
    image: Optional[str] = None
    region: Optional[str] = None
    instance_type: Optional[str] = None
    ami: Optional[str] = None
    ssh_cidr: Optional[str] = None
    #: The run's time limit, for providers whose hosts must not outlive their controller.
    timeout: Optional[float] = None
    #: ec2: several instance types for one fleet (instead of instance_type).
    instance_types: Optional[Tuple[str, ...]] = None
    #: ec2: spot instances, through an EC2 Fleet.
    spot: bool = False
    #: ec2: the fewest instances the run goes on with; None: all it asked for.
    min_count: Optional[int] = None


@dataclass(frozen=True)
class SearchRequest:
    """A search as the user asked for it, every value checked."""

    problem: Problem
    space: UnitSpace
    #: None: the provider's default (cnd_fab.checks.open_provider resolves it).
    count: Optional[int]
    provider: ProviderRequest
    timeout: Optional[float]
    first_found_wins: bool
    json_output: bool
    confirmed: bool = False
    max_cost: Optional[float] = None
    kernel: str = "auto"
    #: --within T --confidence L: the planner picks the count (see cnd_fab.model).
    within: Optional[float] = None
    confidence: Optional[float] = None
    best_effort: bool = False
    #: --resume RUN_ID: the problem comes from that run's checkpoint (see cnd_fab.resume).
    resume: Optional[str] = None
    #: Which of options.PROBLEM_FLAGS were given: with --resume, each must match the checkpoint.
    problem_flags_given: Tuple[str, ...] = ()


@dataclass(frozen=True)
class CalibrateRequest:
    """A calibration run: which provider, how many hosts, for how long, with which kernel."""

    provider: ProviderRequest
    count: int
    seconds: float
    kernel: str
    confirmed: bool


@dataclass(frozen=True)
class BenchRequest:
    """`fab bench`: seconds per measurement, and a fleet provider to compare (None: local only)."""

    seconds: float
    count: int
    provider: Optional[ProviderRequest]
    kernel: str
    startup: bool
    #: Only the checkpoint cost and resume saving figures (cnd_fab.resume_bench).
    checkpoints: bool = False
    #: Only the simulated fleet of this many hosts (cnd_fab.simulate), hashing host_rate each.
    simulate: Optional[int] = None
    host_rate: float = 200e6
