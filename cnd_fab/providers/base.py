"""The Provider interface: launch N hosts for a run, release them, tear down leftovers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, List, Optional

from ..cost import CostEstimate
from ..inventory import Inventory
from ..journal import RunJournal
from ..transport import Host

__all__ = ["Host", "Provider", "ProviderOptions"]


def _print_warning(text: str) -> None:
    import sys

    print(text, file=sys.stderr)


@dataclass(frozen=True)
class ProviderOptions:
    """What every provider may be configured with: the inventory and the flags over it."""

    inventory: Inventory = field(default_factory=Inventory)
    accept_new_host_key: bool = False
    image: Optional[str] = None
    region: Optional[str] = None
    instance_type: Optional[str] = None
    ami: Optional[str] = None
    ssh_cidr: Optional[str] = None
    #: The run's --timeout, for providers whose hosts must outlive no controller.
    timeout: Optional[float] = None
    warn: Callable[[str], None] = _print_warning


class Provider(ABC):
    """Where hosts come from. One subclass per file in this package."""

    name: ClassVar[str]
    #: What --count means for this provider, for help texts and the README.
    count_meaning: ClassVar[str]

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        self.options = options or ProviderOptions()

    def default_count(self) -> int:
        return 1

    #: The instance type, for providers that have them (the calibration key).
    instance_type: Optional[str] = None

    def cores_per_host(self) -> int:
        """Cores one host of this provider brings, for built-in rate defaults."""
        return 1

    def max_hosts(self) -> int:
        """The most hosts a --within plan may ask for."""
        return 1

    def cost_estimate(self, count: int, timeout: Optional[float]) -> Optional[CostEstimate]:
        """What the run may cost at most; None where it costs nothing."""
        return None

    def incurred_cost(self) -> Optional[float]:
        """What the run cost in USD, after release; None where it costs nothing."""
        return None

    def check(self, count: int) -> None:
        """Reject a request before anything is launched. Raises InputError or ProviderError."""

    @abstractmethod
    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        """Bring up `count` hosts, recording each resource in the journal before use."""

    @abstractmethod
    def release(self, hosts: List[Host], journal: RunJournal) -> None:
        """End of a run: stop every worker and remove what launch created."""

    @abstractmethod
    def teardown(self, journal: RunJournal, dry_run: bool = False) -> List[str]:
        """Remove what a journal says is left; return one line per resource handled."""
