"""Blocks of every length the CLI can send, native kernel against hashlib, lowest nonce checked.

Every length from 0 to 200 bytes (the nonce and padding in one chunk or spilling into a
second, at every offset) and the lengths around the kernel's old 64 KiB buffer, up to the
largest block a WORK message may carry, on every path of both architectures.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import List, Tuple

import pytest

from cnd_fab.spec import Problem
from remote import worker
from tests.unit.test_kernel import CASES, Served, available_paths, kernel_dir, runner  # noqa: F401 (fixture)

# The largest block a WORK message may carry.
LARGEST_BLOCK = worker.MAX_BLOCK_HEX_CHARS // 2
BIG_LENGTHS = [65535, 65536, 65537, 100_000, 131_400, LARGEST_BLOCK]
SMALL_LENGTHS = list(range(201))


def some_block(length: int, seed: int = 0) -> bytes:
    return random.Random(length * 7919 + seed).randbytes(length)


def lowest(block: bytes, width: int, difficulty: int, start: int, end: int) -> Tuple[object, ...]:
    """What Served.search must give, from cnd_fab.spec's plain scan."""
    problem = Problem(block, width, difficulty)
    nonce = problem.scan(start, end)
    if nonce is None:
        return (None, None, end - start)
    return (nonce, problem.hash(nonce).hex(), nonce - start + 1)


def jobs(lengths: List[int]) -> List[Tuple[bytes, int, int, int, int]]:
    """One job per length: D = 6 in a range of 400 from a varied start, either nonce width."""
    made = []
    for length in lengths:
        width = 8 if length % 2 else 4
        start = (length * 104729) % ((1 << (8 * width)) - 1000)
        made.append((some_block(length), width, 6, start, start + 400))
    return made


@pytest.mark.parametrize("architecture, path", CASES, ids=[f"{a}-{p}" for a, p in CASES])
def test_every_block_length_matches_hashlib(kernel_dir: Path, architecture: str, path: str) -> None:  # noqa: F811
    if path not in available_paths(kernel_dir, architecture):
        pytest.skip(f"this CPU lacks {path}")
    served = Served(runner(kernel_dir, architecture), path)
    try:
        found = 0
        for job in jobs(SMALL_LENGTHS + BIG_LENGTHS):
            answer = served.search(*job)
            assert answer == lowest(*job), (len(job[0]), job[1:])
            found += answer[0] is not None
        assert found > len(SMALL_LENGTHS) // 2  # D = 6 in 400 nonces: nearly always one
    finally:
        served.close()


def test_the_scanner_sends_a_big_block_once_and_gets_each_answer_right(kernel_dir: Path) -> None:  # noqa: F811
    """NativeScanner names a block the kernel already holds as "=": chunks after the first are cheap."""
    from cnd_fab.kernels import machine_architecture

    scanner = worker.NativeScanner(runner(kernel_dir, machine_architecture()))
    sent: List[int] = []
    write = scanner.process.stdin.write

    def counting(data: bytes) -> int:
        sent.append(len(data))
        return write(data)

    scanner.process.stdin.write = counting
    try:
        for length in (100_000, 65_537, 0):
            block = some_block(length, seed=1)
            for start in (0, 400, 800):
                nonce, digest, checked = scanner.scan(block, 4, 6, start, start + 400)
                expected = lowest(block, 4, 6, start, start + 400)
                assert (nonce, None if digest is None else digest.hex(), checked) == expected
    finally:
        scanner.close()
    assert sent[0] > 200_000 and max(sent[1:3]) < 100  # the first chunk carries the block, the next two "="
    assert sent[3] > 130_000 and max(sent[4:6]) < 100
