"""Builds the native kernel as static binaries for every host architecture, once, and caches them.

Hosts need no compiler: the controller cross-compiles remote/kernel/sha256d.c with the
`ziglang` package (static musl binaries for x86-64 and aarch64) and pushes the binaries with
the worker. Without ziglang, the local C compiler builds the binary for this machine only.
Binaries are cached under a hash of the source, so they are rebuilt only when it changes.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ARCHITECTURES = ("x86_64", "aarch64")
BINARY_PREFIX = "sha256d-"
COMPILE_FLAGS = ["-O3", "-static", "-s", "-Wall"]


def kernel_source() -> bytes:
    return resources.files("remote").joinpath("kernel/sha256d.c").read_bytes()


def cache_dir() -> Path:
    """$CND_FAB_CACHE_DIR, else $XDG_CACHE_HOME/cnd-fab, else ~/.cache/cnd-fab."""
    explicit = os.environ.get("CND_FAB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cnd-fab"


def machine_architecture() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _zig_available() -> bool:
    from importlib.util import find_spec

    return find_spec("ziglang") is not None


def _compile(architecture: str, source: Path, output: Path, cache: Path) -> Tuple[bool, str]:
    if _zig_available():
        command = [sys.executable, "-m", "ziglang", "cc", "-target", f"{architecture}-linux-musl", *COMPILE_FLAGS]
        environment = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=str(cache / "zig"), ZIG_LOCAL_CACHE_DIR=str(cache / "zig-local"))
    elif architecture == machine_architecture() and shutil.which("cc"):
        command = ["cc", *COMPILE_FLAGS]
        environment = dict(os.environ)
    else:
        return False, "no cross compiler (install the ziglang package)"
    temporary = output.with_suffix(".tmp")
    result = subprocess.run(
        [*command, "-o", str(temporary), str(source)], capture_output=True, text=True, env=environment
    )
    if result.returncode != 0:
        return False, (result.stderr.strip().splitlines() or ["compiler failed"])[-1]
    os.replace(temporary, output)
    return True, ""


def ensure_kernels(
    architectures: Tuple[str, ...] = ARCHITECTURES, on_build: Optional[Callable[[str], None]] = None
) -> Tuple[Optional[Path], List[str]]:
    """The folder holding sha256d-<arch> for each architecture that could be built, and
    one line per architecture that could not (the worker then falls back to Python there)."""
    source_bytes = kernel_source()
    digest = hashlib.sha256(source_bytes + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    root = cache_dir()
    folder = root / "kernels" / digest
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "sha256d.c"
    if not source.exists():
        source.write_bytes(source_bytes)
    problems = []
    for architecture in architectures:
        binary = folder / f"{BINARY_PREFIX}{architecture}"
        if binary.exists():
            continue
        if on_build is not None:
            on_build(architecture)
        built, why = _compile(architecture, source, binary, root)
        if not built:
            problems.append(f"no native kernel for {architecture}: {why}")
    present = any((folder / f"{BINARY_PREFIX}{a}").exists() for a in architectures)
    return (folder if present else None), problems


def kernel_files(folder: Optional[Path]) -> Dict[str, bytes]:
    """The binaries to push to a host, by file name."""
    if folder is None:
        return {}
    return {path.name: path.read_bytes() for path in sorted(folder.glob(f"{BINARY_PREFIX}*")) if path.suffix == ""}
