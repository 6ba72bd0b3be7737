"""One run's lifecycle: open its journal, launch its hosts, and always release them.

`launched()` is the only way hosts are brought up: search, calibrate and every bench path
use it. Teardown depends on one promise kept here: a journal is marked cleaned only when the
provider confirmed every release. Anything less leaves it open, so `fab teardown` finds the
run once this controller is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from .controller import this_controller
from .errors import CndError, ReleaseError
from .journal import CLEANED, RunJournal
from .providers.base import Provider, Released
from .spec import DEFAULT_BLOCK_TEXT, Problem, UnitSpace
from .transport import Host, WorkerPayload

if TYPE_CHECKING:
    from .fleet import FleetSearch
    from .outcome import SearchOutcome

#: A difficulty no nonce reaches in practice: measuring searches never finish early.
NEVER_GOLDEN = 256
MEASURING_BLOCK = DEFAULT_BLOCK_TEXT.encode()


@dataclass
class Run:
    """A launched run: its provider, journal and hosts, and how it ended."""

    provider: Provider
    journal: RunJournal
    hosts: List[Host] = field(default_factory=list)
    #: Monotonic time before the launch: wall times and deadlines count from here.
    started: float = field(default_factory=time.monotonic)
    #: What the journal records when the run is closed (a search's status).
    outcome: str = "failed"
    released: List[Released] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        """The run's id, which every resource of it is labelled or tagged with."""
        return self.journal.run_id


@contextmanager
def signals_held(stop: Optional[threading.Event], say: Callable[[str], None]) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop`, so the run ends cleanly. Further ones are refused while
    the hosts are released: giving up then would leave instances and containers running."""
    if stop is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_to_stop(signum: int, frame: Optional[FrameType]) -> None:
        if stop.is_set():
            say("still stopping: every worker is being killed and every host released…")
            return
        stop.set()
        say("stopping: killing remote workers and releasing hosts…")

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def launched(
    provider: Provider,
    count: int,
    *,
    details: Optional[Dict[str, Any]] = None,
    stop: Optional[threading.Event] = None,
    say: Callable[[str], None] = lambda text: None,
    payload: Optional[WorkerPayload] = None,
) -> Iterator[Run]:
    """Open a journal, launch `count` hosts and yield the run; release them whatever happens.

    With `payload`, hosts that can start their worker at no cost start it at once (see
    Host.start_early), so it boots while the caller still imports and sets up.

    A failed launch is released too: providers find what a half-finished launch made through
    the journal and their labels. Release problems raise ReleaseError after the release (and
    after the body's own result, which the caller may still print)."""
    journal = RunJournal.start(provider.name)
    # Who controls the run, so that teardown can prove it gone (see controller.py).
    journal.details.update(controller_pid=os.getpid(), controller=this_controller(), count=count, **(details or {}))
    journal.save()
    run = Run(provider, journal)
    with signals_held(stop, say):
        failure: Optional[BaseException] = None
        launching = True
        try:
            run.hosts = provider.launch(count, journal)
            launching = False
            if payload is not None:
                for host in run.hosts:
                    host.start_early(run.run_id, payload)
            yield run
        except BaseException as error:
            failure = error
            if launching:
                # A launch that failed half way may have made what nobody knows of yet (an
                # EC2 call that timed out but went through): the journal stays open, so a
                # later teardown looks again once this controller is gone.
                journal.details["launch_failed"] = f"{type(error).__name__}: {error}"
            raise
        finally:
            unreleased = release(run)
            if unreleased is not None:
                if isinstance(failure, CndError):
                    raise ReleaseError(f"{failure}; and {unreleased}") from failure
                if failure is None:
                    raise ReleaseError(unreleased)
                say(f"cnd-fab: {unreleased}")


def release(run: Run) -> Optional[str]:
    """Release the run's hosts; close its journal as cleaned only if every release is confirmed
    (and the launch finished: see launched()).

    Returns None when all is released, else one line saying what is left and what to do."""
    try:
        run.released = run.provider.release(run.hosts, run.journal)
    except CndError as error:
        run.released = [Released(resource=f"{run.provider.name} run {run.run_id}", done=False, why=str(error))]
    left = [item for item in run.released if not item.done]
    if not left:
        if "launch_failed" in run.journal.details:
            run.journal.save()
        else:
            run.journal.close(CLEANED, outcome=run.outcome)
        return None
    run.journal.details["unreleased"] = [f"{item.resource}: {item.why}" for item in left]
    run.journal.save()
    named = "; ".join(f"{item.resource} ({item.why})" for item in left)
    return f"could not release {named}; run `fab teardown --run {run.run_id}` to retry"


def measuring_search(
    provider: Provider,
    count: int,
    seconds: float,
    payload: WorkerPayload,
    grace: float = 0.0,
    stop: Optional[threading.Event] = None,
    keep_checkpoints: bool = False,
    space: Optional[UnitSpace] = None,
) -> Tuple[SearchOutcome, FleetSearch, Run]:
    """A real search with nothing to find, for `seconds` after `grace` seconds of start-up
    allowance, on hosts launched and released like any run's; checkpointed like a search's
    with `keep_checkpoints` (the fleet's `checkpoint` is then the CheckpointKeeper). `space`:
    the units to search (default 1024 units of 4-byte nonces)."""
    from .checkpoint import Checkpoint, CheckpointKeeper
    from .fleet import FleetSearch

    space = space or UnitSpace(4, 1024)
    problem = Problem(MEASURING_BLOCK, space.nonce_bytes, NEVER_GOLDEN)
    with launched(provider, count, details={"purpose": "measurement"}, stop=stop, payload=payload) as run:
        keeper = CheckpointKeeper(run.journal, Checkpoint(problem, space, False)) if keep_checkpoints else None
        fleet = FleetSearch(
            problem,
            space,
            run.hosts,
            run.run_id,
            deadline=run.started + grace + seconds,
            started=run.started,
            payload=payload,
            stop=stop,
            checkpoint=keeper,
        )
        outcome = fleet.run()
        run.outcome = outcome.status
    return outcome, fleet, run
