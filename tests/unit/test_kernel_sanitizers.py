"""The kernel built with AddressSanitizer and UBSan, run over its test cases and the parser fuzz.

The release build is static musl from zig; this one is the local `cc` with
-fsanitize=address,undefined and no recovery, so any out-of-bounds access, leak or undefined
behaviour ends the process with a report. Skipped only where `cc` cannot build sanitized code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from cnd_fab.kernels import kernel_source, machine_architecture
from remote import worker
from tests.unit.test_kernel import PATHS_BY_ARCH, random_jobs, reference, tail_jobs
from tests.unit.test_kernel_blocks import BIG_LENGTHS, SMALL_LENGTHS, jobs, lowest
from tests.unit.test_kernel_parser import Kernel, Session, check_parser_cases, fuzz
from tests.unit.test_spec import LOWEST, block_of

SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
# Any report fails the run; leaks are checked at exit.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
}
REPORT_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no cc to build a sanitized kernel")
    folder = tmp_path_factory.mktemp("asan")
    source = folder / "sha256d.c"
    source.write_bytes(kernel_source())
    binary = folder / "sha256d-asan"
    built = subprocess.run([compiler, *SANITIZE, "-o", str(binary), str(source)], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cc cannot build with -fsanitize=address,undefined: {built.stderr.strip()[-300:]}")
    probe = subprocess.run([str(binary), "--paths"], capture_output=True, text=True, env=environment())
    if probe.returncode != 0 and "LeakSanitizer" in probe.stderr:
        pytest.skip(f"LeakSanitizer cannot run here: {probe.stderr.strip()[-300:]}")
    return binary


def environment() -> Dict[str, str]:
    return dict(os.environ, **SANITIZER_ENV)


def paths_of(binary: Path) -> List[str]:
    listed = subprocess.run([str(binary), "--paths"], capture_output=True, text=True, env=environment(), check=True)
    assert not any(mark in listed.stderr for mark in REPORT_MARKS), listed.stderr
    return listed.stdout.split()


def assert_clean(status: int, errors: str) -> None:
    assert status == 0 and not any(mark in errors for mark in REPORT_MARKS), errors[-3000:]


@pytest.fixture(params=PATHS_BY_ARCH[machine_architecture()])
def served(request: pytest.FixtureRequest, sanitized: Path) -> Iterator[Kernel]:
    if request.param not in paths_of(sanitized):
        pytest.skip(f"this CPU lacks {request.param}")
    kernel = Kernel([str(sanitized), "--path", request.param], env=environment())
    yield kernel
    assert_clean(*kernel.close())


def test_self_test_and_paths_run_clean(sanitized: Path) -> None:
    assert "portable" in paths_of(sanitized)
    once = subprocess.run(
        [str(sanitized), "--once", *worker.SELF_TEST], capture_output=True, text=True, env=environment(), timeout=60
    )
    assert once.stdout.strip() == worker.SELF_TEST_ANSWER
    assert_clean(once.returncode, once.stderr)
    refused = subprocess.run(
        [str(sanitized), "--once", "zz", "4", "8", "0", "10"], capture_output=True, text=True, env=environment(), timeout=60
    )
    assert refused.returncode == 1 and refused.stdout.startswith("error ")
    assert not any(mark in refused.stderr for mark in REPORT_MARKS), refused.stderr


def test_vectors_random_jobs_and_every_block_length_run_clean(served: Kernel) -> None:
    job_id = 0

    def search(block: bytes, width: int, difficulty: int, start: int, end: int) -> str:
        nonlocal job_id
        job_id += 1
        return served.ask(b"%d %s %d %d %d %d" % (job_id, block.hex().encode() or b"-", width, difficulty, start, end))

    def line_of(answer: tuple) -> str:
        nonce, digest, checked = answer
        return f"{job_id} 0 0 {checked} -" if nonce is None else f"{job_id} 1 {nonce} {checked} {digest}"

    for vector in LOWEST:
        end = vector["nonce"] + 10
        answer = search(block_of(vector), vector["nonce_bytes"], vector["difficulty"], 0, end)
        assert answer == f"{job_id} 1 {vector['nonce']} {vector['nonce'] + 1} {vector['hash']}"
    for job in random_jobs(seed=86, count=80):
        assert search(*job) == line_of(reference(*job)), job
    for job in tail_jobs():
        assert search(*job) == line_of(reference(*job)), job
    for job in jobs(SMALL_LENGTHS[::7] + BIG_LENGTHS):
        assert search(*job) == line_of(lowest(*job)), (len(job[0]), job[1:])
    last = (1 << 64) - 1
    assert search(b"x", 8, 1, last - 3, last).startswith(f"{job_id} 1 ")


def test_parser_cases_run_clean(served: Kernel) -> None:
    check_parser_cases(served)


def test_parser_fuzz_runs_clean(served: Kernel) -> None:
    fuzz(Session(served))
