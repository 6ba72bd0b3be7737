"""The native kernel, every path forced in turn, against the SPEC vectors and hashlib.

The aarch64 binary runs under qemu-aarch64 (user-mode emulation, which reports the SHA2
extensions), so the ARMv8 path is tested on this x86-64 machine too.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from cnd_fab.kernels import ensure_kernels, machine_architecture
from remote import worker
from tests.unit.test_spec import LOWEST, block_of

Job = Tuple[bytes, int, int, int, int]


@pytest.fixture(scope="session")
def kernel_dir() -> Path:
    folder, problems = ensure_kernels()
    assert folder is not None and not problems, problems
    return folder


def runner(kernel_dir: Path, architecture: str) -> List[str]:
    binary = str(kernel_dir / f"sha256d-{architecture}")
    if architecture == machine_architecture():
        return [binary]
    emulator = shutil.which(f"qemu-{architecture}")
    assert emulator, f"qemu-{architecture} is needed to test the {architecture} kernel (apt-get install qemu-user)"
    return [emulator, binary]


def available_paths(kernel_dir: Path, architecture: str) -> List[str]:
    result = subprocess.run(runner(kernel_dir, architecture) + ["--paths"], capture_output=True, text=True, check=True)
    return result.stdout.split()


class Served:
    """One kernel in --serve mode with a forced path, spoken to as the worker does."""

    def __init__(self, argv: List[str], path: str) -> None:
        self.process = subprocess.Popen(argv + ["--path", path, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.job = 0
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == f"ready {path}"

    def search(self, block: bytes, width: int, difficulty: int, start: int, end: int) -> Tuple[Optional[int], Optional[str], int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.job += 1
        self.process.stdin.write(f"{self.job} {block.hex() or '-'} {width} {difficulty} {start} {end}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        while line.startswith("p "):  # progress on long ranges
            assert line.split()[1] == str(self.job), line
            line = self.process.stdout.readline()
        job, found, nonce, checked, digest = line.split()
        assert job == str(self.job), line
        return (int(nonce), digest, int(checked)) if found == "1" else (None, None, int(checked))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(10) == 0


def reference(block: bytes, width: int, difficulty: int, start: int, end: int) -> Tuple[Optional[int], Optional[str], int]:
    nonce, digest, checked = worker.scan_range(block, width, difficulty, start, end)
    return nonce, None if digest is None else digest.hex(), checked


def random_jobs(seed: int, count: int) -> Iterator[Job]:
    rng = random.Random(seed)
    interesting = [0, 1, 55, 56, 59, 60, 63, 64, 65, 100, 119, 120, 127, 128, 129, 183, 200]
    for index in range(count):
        length = interesting[index] if index < len(interesting) else rng.randint(0, 200)
        block = bytes(rng.getrandbits(8) for _ in range(length))
        width = rng.choice((4, 8))
        difficulty = rng.randint(1, 10)
        if width == 8 and index % 3 == 0:
            start = (1 << 32) - rng.randint(1, 3000)  # crosses 2^32
        else:
            start = rng.randint(0, (1 << (8 * width)) - 5000)
        yield block, width, difficulty, start, start + rng.randint(1, 3000)


# Every path the kernel has, best first as --paths lists them: sha-ni interleaves six nonces,
# sha-ni-2 two, and avx2 takes eight to a vector. Each leaves the last few nonces of a range
# (fewer than it takes at a time) to the portable code.
def tail_jobs() -> Iterator[Job]:
    """Every count from 1 to 17 nonces, so every remainder after 2, 6 or 8 at a time, at D = 2
    so that the answer often sits in the tail or in a lane past the first. The ranges straddle
    2^20 (4-byte), 2^32 (8-byte), and 2^40 for a block whose nonce straddles two chunks; the
    52-byte block's padding fills a second chunk that holds no nonce byte."""
    for block, width, middle in ((b"tails", 4, 1 << 20), (b"tails", 8, 1 << 32), (bytes(range(61)), 8, 1 << 40), (bytes(52), 4, 3000)):
        for count in range(1, 18):
            for shift in (0, 3 * count + 40):
                start = middle - count // 2 + shift
                yield block, width, 2, start, start + count
        # No golden nonce at all: every nonce of the tail counted.
        yield block, width, 256, middle - 8, middle + 9


# Every path the kernel has, best first as --paths lists them: sha-ni interleaves six nonces,
# sha-ni-2 two, and avx2 takes eight to a vector. Each leaves the last few nonces of a range
# (fewer than it takes at a time) to the portable code.
def tail_jobs() -> Iterator[Job]:
    """Every count from 1 to 17 nonces (so every remainder after 2, 6 or 8 at a time), at D = 2
    so that the answer is often in the tail or in a lane past the first; in the 4-byte space,
    across 2^32 in the 8-byte one, and for a block whose nonce straddles two chunks."""
    for block, width, base in ((b"tails", 4, 1000), (b"tails", 8, (1 << 32) - 9), (bytes(range(61)), 8, 77)):
        for count in range(1, 18):
            for offset in (0, 5):
                yield block, width, 2, base + 31 * count + offset, base + 31 * count + offset + count
        # No golden nonce at all: every nonce of the tail counted.
        yield block, width, 256, base, base + 17


PATHS_BY_ARCH = {"x86_64": ["sha-ni", "sha-ni-2", "avx2", "portable"], "aarch64": ["armv8-sha2", "portable"]}
CASES = [(arch, path) for arch, paths in PATHS_BY_ARCH.items() for path in paths]


@pytest.mark.parametrize("architecture, path", CASES, ids=[f"{a}-{p}" for a, p in CASES])
def test_every_path_matches_hashlib(kernel_dir: Path, architecture: str, path: str) -> None:
    paths = available_paths(kernel_dir, architecture)
    assert "portable" in paths
    if path not in paths:
        pytest.skip(f"this CPU lacks {path} (it has {paths})")
    served = Served(runner(kernel_dir, architecture), path)
    try:
        for vector in LOWEST:
            answer = served.search(block_of(vector), vector["nonce_bytes"], vector["difficulty"], 0, vector["nonce"] + 10)
            assert answer == (vector["nonce"], vector["hash"], vector["nonce"] + 1), vector
        emulated = architecture != machine_architecture()
        for job in random_jobs(seed=zlib.crc32(f"{architecture}-{path}".encode()), count=60 if emulated else 250):
            assert served.search(*job) == reference(*job), job
        # A range with no golden nonce reports every nonce checked.
        assert served.search(b"x", 4, 64, 0, 5001) == (None, None, 5001)
        if not emulated:  # long enough to report progress on the way
            assert served.search(b"x", 4, 64, 0, 3 << 20) == (None, None, 3 << 20)
        # Difficulties above 32 need the early reject's word 0 == 0 and the rest compared.
        assert served.search(b"COMSM0010cloud", 4, 33, 0, 1000) == (None, None, 1000)
        for job in tail_jobs():
            assert served.search(*job) == reference(*job), job
        # A many-lane loop must not step past 2^64 - 1 into nonce 0 (nor into the excluded end).
        block = edge_block()
        for start in range(LAST_NONCE - 17, LAST_NONCE):
            assert served.search(block, 8, 4, start, LAST_NONCE) == reference(block, 8, 4, start, LAST_NONCE)
    finally:
        served.close()


def test_this_machine_offers_the_sha_extensions_path(kernel_dir: Path) -> None:
    flags = Path("/proc/cpuinfo").read_text()
    paths = available_paths(kernel_dir, machine_architecture())
    if machine_architecture() == "x86_64":
        if " sha_ni" in flags:
            assert paths[:2] == ["sha-ni", "sha-ni-2"]
        # avx2 needs the OS to save the YMM registers too, which /proc/cpuinfo shows as avx2.
        assert ("avx2" in paths) == (" avx2" in flags)
    assert paths[-1] == "portable"
    assert paths == [path for path in PATHS_BY_ARCH[machine_architecture()] if path in paths]


def test_unavailable_path_is_refused(kernel_dir: Path) -> None:
    result = subprocess.run(runner(kernel_dir, machine_architecture()) + ["--path", "armv8-sha2" if machine_architecture() == "x86_64" else "sha-ni", "--serve"], capture_output=True, text=True)
    assert result.returncode == 3 and "not available" in result.stderr


def test_bad_jobs_get_an_error_line(kernel_dir: Path) -> None:
    served = subprocess.run(
        runner(kernel_dir, machine_architecture()) + ["--serve"],
        input="1 zz 4 8 0 10\n2 00 5 8 0 10\n3 00 4 8 10 5\n4 00 4 8 0 99999999999\nshort line\n5 00 4 8 0 10\n",
        capture_output=True, text=True,
    )
    lines = served.stdout.splitlines()
    assert lines[0].startswith("ready ")
    assert lines[1:] == [
        "error 1 block is not hex",
        "error 2 nonce bytes must be 4 or 8",
        "error 3 start must be below end",
        "error 4 end is past the 4-byte nonce space",
        "error - expected 6 fields, not 2",
        "5 0 0 10 -",
    ]


def hello(*args: str) -> Dict[str, object]:
    import sys

    from cnd_fab.transport import worker_file

    process = subprocess.Popen([sys.executable, str(worker_file()), "--processes", "1", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdin is not None
    line = process.stdout.readline()
    process.stdin.close()
    process.wait(10)
    return dict(json.loads(line))


def test_worker_reports_the_native_kernel_and_its_forced_path(kernel_dir: Path) -> None:
    assert str(hello("--kernel-dir", str(kernel_dir))["kernel"]).startswith("native:")
    forced = hello("--kernel-dir", str(kernel_dir), "--kernel-path", "portable")
    assert forced["kernel"] == "native:portable" and forced["kernel_note"] is None


def test_worker_falls_back_to_python_and_says_why(kernel_dir: Path, tmp_path: Path) -> None:
    assert hello()["kernel_note"] == f"no native kernel for {machine_architecture()}"
    broken = tmp_path / f"sha256d-{machine_architecture()}"
    broken.write_bytes(b"\x7fELF not really")
    answer = hello("--kernel-dir", str(tmp_path))
    assert answer["kernel"] == "python-hashlib"
    assert "does not run here" in str(answer["kernel_note"])
    wrong = tmp_path / "liar"
    wrong.mkdir()
    liar = wrong / f"sha256d-{machine_architecture()}"
    liar.write_text("#!/bin/sh\nif [ \"$1\" = --paths ]; then echo portable; else echo 1 0 1 ff; fi\n")
    liar.chmod(0o755)
    assert hello("--kernel-dir", str(wrong))["kernel_note"] == "the native kernel failed its self-test"
    assert hello("--kernel-dir", str(kernel_dir), "--kernel", "python")["kernel"] == "python-hashlib"
    error = hello("--kernel", "native")
    assert error["type"] == "ERROR" and "a native kernel was required" in str(error["message"])


def test_serve_reports_progress_lines(kernel_dir: Path) -> None:
    served = subprocess.run(
        runner(kernel_dir, machine_architecture()) + ["--serve"],
        input=f"7 {b'x'.hex()} 4 64 0 {3 << 20}\n", capture_output=True, text=True,
    )
    lines = served.stdout.splitlines()
    assert lines[1:] == [f"p 7 {1 << 20}", f"p 7 {2 << 20}", f"7 0 0 {3 << 20} -"]


LAST_NONCE = (1 << 64) - 1


def edge_block() -> bytes:
    """A block whose only golden nonce (D = 4) among the last four is the very last one."""
    return next(
        b for b in (f"edge-{i}".encode() for i in range(10_000))
        if worker.scan_range(b, 8, 4, LAST_NONCE - 3, LAST_NONCE + 1)[0] == LAST_NONCE
    )


def test_the_very_last_eight_byte_nonce_is_checked(kernel_dir: Path) -> None:
    last = LAST_NONCE
    block = edge_block()
    binary = str(kernel_dir / f"sha256d-{machine_architecture()}")
    scanner = worker.NativeScanner([binary])
    try:
        nonce, digest, checked = scanner.scan(block, 8, 4, last - 2, last + 1)
    finally:
        scanner.close()
    assert nonce == last and checked == 3
    assert digest == worker.scan_range(block, 8, 4, last, last + 1)[1]
