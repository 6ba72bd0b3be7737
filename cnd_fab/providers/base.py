"""The Provider interface: launch N hosts for a run, release them, tear down leftovers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, List, Optional

from ..inventory import Inventory
from ..journal import RunJournal
from ..transport import WorkerChannel


def _print_warning(text: str) -> None:
    import sys

    print(text, file=sys.stderr)


@dataclass(frozen=True)
class ProviderOptions:
    """What every provider may be configured with: the inventory and the flags over it."""

    inventory: Inventory = field(default_factory=Inventory)
    accept_new_host_key: bool = False
    image: Optional[str] = None
    warn: Callable[[str], None] = _print_warning


class Host(ABC):
    """One machine (or stand-in) that runs one worker for the whole run."""

    name: str

    @abstractmethod
    def start_worker(self, run_id: str) -> WorkerChannel:
        """Start the worker and return its line channel. Raises HostConnectError."""

    @abstractmethod
    def stop_worker(self) -> None:
        """Kill the worker's whole process group and remove its files. Idempotent."""


class Provider(ABC):
    """Where hosts come from. One subclass per file in this package."""

    name: ClassVar[str]
    #: What --count means for this provider, for help texts and the README.
    count_meaning: ClassVar[str]

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        self.options = options or ProviderOptions()

    def default_count(self) -> int:
        return 1

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
