"""The Provider interface: launch N hosts for a run, release them, find and remove leftovers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, List, Optional, Tuple

from ..cost import CostEstimate
from ..inventory import Inventory
from ..journal import RunJournal
from ..request import ProviderRequest
from ..transport import Host

__all__ = ["Host", "Leftover", "LiveResource", "Provider", "ProviderOptions", "Released"]


def _print_warning(text: str) -> None:
    import sys

    print(text, file=sys.stderr)


@dataclass(frozen=True)
class ProviderOptions(ProviderRequest):
    """A provider's request with its inventory file loaded, and where its warnings go."""

    inventory: Inventory = field(default_factory=Inventory)
    warn: Callable[[str], None] = _print_warning


#: A Released action in the words of a dry run.
_PLANNED = {"killed": "kill", "terminated": "terminate", "deleted": "delete", "stopped": "stop", "cleaned": "clean"}


@dataclass(frozen=True)
class Released:
    """What became of one resource at release or teardown: done, or not and why."""

    #: What it is, named for a person: "container cnd-…-1", "instance i-0abc", "worker on h1".
    resource: str
    done: bool
    why: str = ""
    #: A dry run: `done` then says whether it would be removed.
    planned: bool = False
    action: str = "removed"

    @property
    def failed(self) -> bool:
        """True when the resource may still exist: teardown must look again later."""
        return not self.done and not self.planned

    def line(self) -> str:
        """One line for the terminal."""
        if self.planned:
            return f"would {_PLANNED.get(self.action, 'remove')} {self.resource}"
        if self.done:
            return f"{self.action} {self.resource}"
        return f"could not remove {self.resource}: {self.why}"


@dataclass
class Leftover:
    """A run that teardown may have to clean: from an open journal, or found by label or tag."""

    run_id: str
    provider: str
    #: The run's journal; one made up in memory when only labels or tags were found.
    journal: RunJournal
    region: Optional[str] = None
    #: True when the resources show that no live controller keeps them: EC2's alive-until tag
    #: has passed, or the controller a container's label names is provably gone.
    expired: bool = False
    #: Why the run looks alive, for a person ("alive until 2026-…Z"); "" once expired.
    alive_because: str = ""

    @classmethod
    def found(
        cls, run_id: str, provider: str, region: Optional[str] = None, expired: bool = False, alive_because: str = ""
    ) -> "Leftover":
        """A leftover known from labels or tags only, with an unsaved journal of its own."""
        details = {"region": region} if region else {}
        journal = RunJournal(run_id=run_id, provider=provider, details=details)
        return cls(run_id, provider, journal, region, expired, "" if expired else alive_because)


@dataclass(frozen=True)
class LiveResource:
    """One running resource of ours, for `fab status`."""

    provider: str
    name: str
    state: str
    run_id: str
    detail: str = ""


class Provider(ABC):
    """Where hosts come from. One subclass per file in this package."""

    name: ClassVar[str]
    #: What --count means for this provider, for help texts and the README.
    count_meaning: ClassVar[str]

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        self.options = options or ProviderOptions()
        #: What went wrong during the run that its user must see (a failed keep-alive), in order.
        self.notices: List[str] = []

    def notice(self, text: str, journal: Optional[RunJournal] = None) -> None:
        """Show a problem the run must not hide, and keep it for the run's journal and record."""
        self.notices.append(text)
        self.options.warn(text)
        if journal is not None:
            journal.add_notice(text)

    def default_count(self) -> int:
        """The --count used when none is given."""
        return 1

    #: The instance type, for providers that have them (the calibration key).
    instance_type: Optional[str] = None
    #: The metadata service whose spot interruption notices the hosts' workers watch; None: none.
    interruption_notices: Optional[str] = None

    def cores_per_host(self) -> int:
        """Cores one host of this provider brings, for built-in rate defaults."""
        return 1

    def max_hosts(self) -> int:
        """The most hosts a --within plan may ask for."""
        return 1

    def architectures(self) -> Tuple[str, ...]:
        """The CPU architectures (`uname -m` names) of this fleet's hosts: kernels are built for these."""
        from ..kernels import machine_architecture

        return (machine_architecture(),)

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
    def release(self, hosts: List[Host], journal: RunJournal) -> List[Released]:
        """End of a run: stop every worker and remove what launch created; one result each."""

    def leftovers(self, journals: List[RunJournal], expired_only: bool = False) -> List[Leftover]:
        """Runs whose resources this provider finds by label or tag, journal or not.

        `journals` tells where to look (EC2's regions). Providers whose resources die with
        their controller find nothing: their open journals are enough."""
        return []

    @abstractmethod
    def remove(self, leftover: Leftover, dry_run: bool = False) -> List[Released]:
        """Remove whatever of a run is still there; one result per resource."""

    def live_resources(self, journals: List[RunJournal]) -> List[LiveResource]:
        """Every resource of ours this provider can see running, for `fab status`."""
        return []
