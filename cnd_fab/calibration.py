"""Measured host rates and start-up times, kept in the state directory as readable JSON.

`fab calibrate` writes them; the --within planner reads them. Where nothing was measured,
built-in defaults stand in, and every printout says which it used.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .journal import state_dir
from .model import HostModel

NATIVE_RATE_PER_CORE = 2.0e7
PYTHON_RATE_PER_CORE = 1.5e6
DEFAULT_STARTUP = {"local": 0.3, "docker": 1.5, "static": 2.0, "ec2": 60.0}
SIZE_VCPUS = {"nano": 2, "micro": 2, "small": 2, "medium": 2, "large": 2, "xlarge": 4}


def vcpus(instance_type: str) -> int:
    """vCPUs of an EC2 type from its size: large = 2, xlarge = 4, 8xlarge = 32, …"""
    size = instance_type.split(".")[-1]
    if size in SIZE_VCPUS:
        return SIZE_VCPUS[size]
    match = re.fullmatch(r"(\d+)xlarge", size)
    return 4 * int(match.group(1)) if match else 2


def calibration_file() -> Path:
    """Where measured host figures are kept."""
    return state_dir() / "calibration.json"


def key(provider: str, instance_type: Optional[str], kernel: str) -> str:
    """The calibration key: provider, instance type and kernel kind."""
    return f"{provider}/{instance_type or '-'}/{'python' if kernel == 'python' else 'native'}"


def load() -> Dict[str, Dict[str, Any]]:
    """Every stored measurement by key; empty when none or unreadable."""
    try:
        data = json.loads(calibration_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(provider: str, instance_type: Optional[str], kernel: str, rate: float, startup: float) -> Dict[str, Any]:
    """Fold one measurement into the running mean for this provider, type and kernel."""
    data = load()
    entry = data.get(key(provider, instance_type, kernel), {"samples": 0, "rate": 0.0, "startup": 0.0})
    samples = int(entry["samples"]) + 1
    entry = {
        "samples": samples,
        "rate": entry["rate"] + (rate - entry["rate"]) / samples,
        "startup": entry["startup"] + (startup - entry["startup"]) / samples,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    data[key(provider, instance_type, kernel)] = entry
    path = calibration_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    return entry


def host_model(provider: str, instance_type: Optional[str], kernel: str, cores: int) -> HostModel:
    """The host figures the planner uses: measured if calibrated, else a labelled default."""
    measured = load().get(key(provider, instance_type, kernel))
    if measured:
        return HostModel(
            float(measured["rate"]),
            float(measured["startup"]),
            f"measured by fab calibrate, {measured['samples']} run(s), last {measured['measured_at']}",
        )
    per_core = PYTHON_RATE_PER_CORE if kernel == "python" else NATIVE_RATE_PER_CORE
    return HostModel(
        per_core * cores,
        DEFAULT_STARTUP.get(provider, 10.0),
        f"built-in default for {cores} core(s), not measured: run fab calibrate --provider {provider}",
    )
