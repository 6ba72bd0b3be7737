"""Run journals: what each run created, written before and as it is created.

A journal is one JSON file per run in the user's state directory. `teardown` reads them
to find whatever a killed controller left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

OPEN = "open"
CLEANED = "cleaned"


def state_dir() -> Path:
    """$CND_FAB_STATE_DIR, else $XDG_STATE_HOME/cnd-fab, else ~/.local/state/cnd-fab."""
    explicit = os.environ.get("CND_FAB_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cnd-fab"


def new_run_id() -> str:
    """A sortable, unique run id: cnd-<UTC date>-<time>-<6 hex digits>."""
    return time.strftime("cnd-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


@dataclass
class RunJournal:
    """The record of one run's resources, saved on every change."""

    run_id: str
    provider: str
    status: str = OPEN
    created: float = field(default_factory=time.time)
    resources: List[Dict[str, Any]] = field(default_factory=list)
    details: Dict[str, Any] = field(default_factory=dict)
    #: What a search has settled, for --resume (see checkpoint.py); None before it starts.
    checkpoint: Optional[Dict[str, Any]] = None
    path: Path = field(default=Path(), compare=False)
    # Host threads record their resources concurrently.
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def start(cls, provider: str, run_id: str | None = None) -> "RunJournal":
        """A new journal for a run, saved at once in the state directory."""
        journal = cls(run_id=run_id or new_run_id(), provider=provider)
        journal.path = state_dir() / "runs" / f"{journal.run_id}.json"
        journal.save()
        return journal

    def record(self, kind: str, **fields: Any) -> None:
        """Add one resource and save, before the resource is created."""
        with self._lock:
            self.resources.append({"kind": kind, **fields})
            self._save()

    def add_notice(self, text: str) -> None:
        """Keep one line about a problem during the run (details["notices"]) and save."""
        with self._lock:
            self.details.setdefault("notices", []).append(text)
            self._save()

    def close(self, status: str, **details: Any) -> None:
        """Mark the run ended with `status`; teardown skips closed journals."""
        with self._lock:
            self.status = status
            self.details.update(details)
            self._save()

    def save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Replace the run's checkpoint and save."""
        with self._lock:
            self.checkpoint = checkpoint
            self._save()

    def save(self) -> None:
        """Write the journal atomically."""
        with self._lock:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "run_id": self.run_id,
            "provider": self.provider,
            "status": self.status,
            "created": self.created,
            "resources": self.resources,
            "details": self.details,
        }
        if self.checkpoint is not None:
            payload["checkpoint"] = self.checkpoint
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(temporary, self.path)

    @classmethod
    def load(cls, path: Path) -> "RunJournal":
        """Read one journal file."""
        payload = json.loads(path.read_text())
        journal = cls(
            run_id=payload["run_id"],
            provider=payload["provider"],
            status=payload.get("status", OPEN),
            created=payload.get("created", 0.0),
            resources=list(payload.get("resources", [])),
            details=dict(payload.get("details", {})),
            checkpoint=payload.get("checkpoint"),
        )
        journal.path = path
        return journal

    @classmethod
    def all(cls) -> List["RunJournal"]:
        """Every readable journal in the state directory, oldest first."""
        folder = state_dir() / "runs"
        if not folder.is_dir():
            return []
        journals = []
        for path in sorted(folder.glob("*.json")):
            try:
                journals.append(cls.load(path))
            except (OSError, ValueError, KeyError):
                continue
        return journals
