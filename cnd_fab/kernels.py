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
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from .errors import CndError
from .transport import WorkerPayload

if TYPE_CHECKING:
    from rich.console import Console

ARCHITECTURES = ("x86_64", "aarch64")
BINARY_PREFIX = "sha256d-"
COMPILE_FLAGS = ["-O3", "-static", "-s", "-Wall"]


def kernel_source() -> bytes:
    """The kernel's C source, as packaged with the worker."""
    return resources.files("remote").joinpath("kernel/sha256d.c").read_bytes()


def cache_dir() -> Path:
    """$CND_FAB_CACHE_DIR, else $XDG_CACHE_HOME/cnd-fab, else ~/.cache/cnd-fab."""
    explicit = os.environ.get("CND_FAB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cnd-fab"


def normal_architecture(name: str) -> str:
    """`uname -m`'s name for an architecture: amd64 is x86_64, arm64 is aarch64."""
    lowered = name.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(lowered, lowered)


def machine_architecture() -> str:
    """This machine's architecture, as `uname -m` names it."""
    return normal_architecture(platform.machine())


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
    one line per architecture that could not (the worker then falls back to Python there).

    Only the architectures asked for are built: a fleet of x86-64 hosts never waits for an
    aarch64 cross-build."""
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


def prepare_payload(kernel: str, architectures: Tuple[str, ...], console: "Console") -> WorkerPayload:
    """Build (or find cached) the native kernels for the fleet's architectures before launching."""
    if kernel == "python":
        return WorkerPayload(kernel="python")
    folder, problems = ensure_kernels(
        architectures,
        on_build=lambda arch: console.print(
            f"building the native kernel for {arch} (once; cached after that)…", highlight=False
        ),
    )
    for problem in problems:
        console.print(f"warning: {problem}; those hosts will use pure Python", highlight=False)
    if folder is None and kernel == "native":
        raise CndError("--kernel native: no native kernel could be built; see the warnings above")
    return WorkerPayload(kernel_dir=folder, kernel=kernel)


def kernel_files(folder: Optional[Path], architecture: Optional[str] = None) -> Dict[str, bytes]:
    """The binaries to push to a host, by file name: its own only, when its architecture is known."""
    if folder is None:
        return {}
    pattern = f"{BINARY_PREFIX}{architecture}" if architecture else f"{BINARY_PREFIX}*"
    return {path.name: path.read_bytes() for path in sorted(folder.glob(pattern)) if path.suffix == ""}
