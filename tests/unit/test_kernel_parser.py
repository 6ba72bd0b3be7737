"""The kernel's --serve parser: every line gets exactly one answer, a bad one an error line.

A Python model of the parser (`expected`) says, for any line, whether the kernel must run it
or refuse it and which job id it must echo; fixed cases and hypothesis-made lines (random
bytes, and valid jobs with one mutation) are checked against it, each followed by a good job
that must still be answered right. test_kernel_sanitizers.py runs the same cases through an
ASan/UBSan build.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnd_fab.kernels import ensure_kernels, machine_architecture
from cnd_fab.spec import Problem

# The kernel's MAX_LINE: a longer line is consumed whole and refused.
MAX_LINE = 4 << 20
LIMIT_64 = 1 << 64
# ("error", the id echoed) or ("job", id, block, width, D, start, end).
Expected = Tuple[Any, ...]


class Kernel:
    """A served kernel spoken to in raw bytes, with a deadline on every answer."""

    def __init__(self, argv: List[str], env: Optional[dict] = None) -> None:
        self.process = subprocess.Popen(
            argv + ["--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.buffer = b""
        ready = self.read_line()
        assert ready.startswith("ready "), ready

    def read_line(self, limit: float = 60.0) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + limit
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"no answer from the kernel within {limit}s"
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                assert chunk, f"the kernel closed its output (exit {self.process.poll()}): {self.stderr()}"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("ascii")

    def ask(self, line: bytes) -> str:
        """Send one line and return its one answer, skipping progress lines."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()
        answer = self.read_line()
        while answer.startswith("p "):
            answer = self.read_line()
        return answer

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")

    def close(self) -> Tuple[int, str]:
        """Close stdin; the exit status and whatever the kernel wrote to stderr."""
        assert self.process.stdin is not None and self.process.stderr is not None
        self.process.stdin.close()
        status = self.process.wait(30)
        return status, self.process.stderr.read().decode(errors="replace")


def _number(token: bytes, limit: int) -> Optional[int]:
    if not re.fullmatch(rb"[0-9]+", token):
        return None
    value = int(token)
    return value if value <= limit else None


def expected(line: bytes, remembered: Optional[bytes]) -> Expected:
    """The kernel's verdict on a line: ("error", id echoed) or ("job", id, block, width, D, start, end)."""
    if len(line) > MAX_LINE or b"\0" in line:
        return ("error", "-")
    fields = line.split(b" ")
    job_id = _number(fields[0], LIMIT_64 - 1)
    echoed = "-" if job_id is None else str(job_id)
    if any(not field for field in fields) or len(fields) != 6 or job_id is None:
        return ("error", echoed)
    block_text, width_text, difficulty_text, start_text, end_text = fields[1:]
    width = _number(width_text, 8)
    difficulty = _number(difficulty_text, 256)
    start, end = _number(start_text, LIMIT_64 - 1), _number(end_text, LIMIT_64 - 1)
    if width not in (4, 8) or difficulty is None or difficulty < 1 or start is None or end is None:
        return ("error", echoed)
    if start >= end or (width == 4 and end > 1 << 32):
        return ("error", echoed)
    if block_text == b"=":
        if remembered is None:
            return ("error", echoed)
        block = remembered
    elif block_text == b"-":
        block = b""
    elif len(block_text) % 2 or not re.fullmatch(rb"[0-9a-fA-F]*", block_text):
        return ("error", echoed)
    else:
        block = bytes.fromhex(block_text.decode())
    return ("job", job_id, block, width, difficulty, start, end)


def answer_of(job_id: int, block: bytes, width: int, difficulty: int, start: int, end: int) -> str:
    """The exact answer line for a job, from hashlib (cnd_fab.spec)."""
    problem = Problem(block, width, difficulty)
    nonce = problem.scan(start, end)
    if nonce is None:
        return f"{job_id} 0 0 {end - start} -"
    return f"{job_id} 1 {nonce} {nonce - start + 1} {problem.hash(nonce).hex()}"


GOOD_BLOCK = b"COMSM0010cloud"
GOOD_LINE = b"424242 " + GOOD_BLOCK.hex().encode() + b" 4 12 0 5000"
GOOD_ANSWER = answer_of(424242, GOOD_BLOCK, 4, 12, 0, 5000)


class Session:
    """A kernel and what it remembers for "=": each line is checked, then a good job after it."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.remembered: Optional[bytes] = None
        self.check(GOOD_LINE)

    def check(self, line: bytes) -> str:
        verdict = expected(line, self.remembered)
        answer = self.kernel.ask(line)
        if verdict[0] == "error":
            assert answer.startswith(f"error {verdict[1]} "), (line[:200], answer)
        else:
            _, job_id, block, width, difficulty, start, end = verdict
            assert answer == answer_of(job_id, block, width, difficulty, start, end), (line[:200], answer)
            if line.split(b" ")[1] != b"=":
                self.remembered = block
        return answer

    def check_then_serve(self, line: bytes) -> str:
        """Check a line, then check that a good job is still answered right."""
        answer = self.check(line)
        assert self.kernel.ask(GOOD_LINE) == GOOD_ANSWER
        self.remembered = GOOD_BLOCK
        return answer


def affordable(line: bytes, remembered: Optional[bytes]) -> bool:
    """False for a valid job whose reference scan in Python could take long."""
    verdict = expected(line, remembered)
    if verdict[0] == "error":
        return True
    _, _, block, _, difficulty, start, end = verdict
    return end - start <= 20_000 or difficulty <= 8


# Lines a parser gets wrong: junk numbers, signs, exponents, overflow, field counts, spacing.
PARSER_CASES: List[Tuple[bytes, str]] = [
    (b"1 00 4 1e3 0 10", "error 1 difficulty"),
    (b"2 00 4abc 8 0 10", "error 2 nonce bytes"),
    (b"3 00 4 8 0 10 extra", "error 3 expected 6 fields, not 7"),
    (b"4 00 4 8 0", "error 4 expected 6 fields, not 5"),
    (b"5 00 4 8 10 5", "error 5 start must be below end"),
    (b"6 00 4 8 5 5", "error 6 start must be below end"),
    (b"7 00 4 8 0 4294967297", "error 7 end is past the 4-byte nonce space"),
    (b"8 00 8 8 0 18446744073709551616", "error 8 end must be"),
    (b"9 00 8 8 0 99999999999999999999999", "error 9 end must be"),
    (b"10 00 4 8 -1 10", "error 10 start must be"),
    (b"11 00 4 8 +1 10", "error 11 start must be"),
    (b"12 00 4 8 0x1 10", "error 12 start must be"),
    (b"13 00 4 0 0 10", "error 13 difficulty"),
    (b"14 00 4 257 0 10", "error 14 difficulty"),
    (b"15 00 5 8 0 10", "error 15 nonce bytes"),
    (b"16 0 4 8 0 10", "error 16 block has an odd number of hex digits"),
    (b"17 zz 4 8 0 10", "error 17 block is not hex"),
    (b"18 = 8 8 0 10", ""),  # "=" after a good job: that job's block, not an error
    (b"19 00  4 8 0 10", "error 19 fields must be split by single spaces"),
    (b" 20 00 4 8 0 10", "error - fields must be split by single spaces"),
    (b"21 00 4 8 0 10 ", "error 21 fields must be split by single spaces"),
    (b"22 00 4 8 0 10\r", "error 22 end must be"),
    (b"23\t00 4 8 0 10", "error - expected 6 fields, not 5"),
    (b"x 00 4 8 0 10", "error - job id must be"),
    (b"18446744073709551616 00 4 8 0 10", "error - job id must be"),
    (b"24 00 4 8 0 1\x000", "error - line holds a NUL byte"),
    (b"25 00 4 \xff 0 10", "error 25 difficulty"),
    (b"", "error - fields must be split by single spaces"),
    (b"p 1 2", "error - expected 6 fields, not 3"),
    (b"26 " + b"ab" * (1 << 20) + b" 4 8 0 100", ""),  # a 1 MiB block is a good job
    (b"27 " + b"ab" * (MAX_LINE // 2) + b" 4 8 0 100", "error - line longer than"),  # past MAX_LINE
]


def check_parser_cases(kernel: Kernel) -> None:
    """Every case answered as the model and the listed prefix say, each followed by a good job."""
    session = Session(kernel)
    for line, prefix in PARSER_CASES:
        answer = session.check_then_serve(line)
        assert answer.startswith(prefix), (line[:80], answer)


@pytest.fixture(scope="module")
def kernel_binary() -> Path:
    folder, problems = ensure_kernels((machine_architecture(),))
    assert folder is not None and not problems, problems
    return folder / f"sha256d-{machine_architecture()}"


@pytest.fixture(scope="module")
def session(kernel_binary: Path) -> Iterator[Session]:
    kernel = Kernel([str(kernel_binary)])
    yield Session(kernel)
    status, errors = kernel.close()
    assert status == 0 and not errors


def test_each_bad_line_gets_an_error_line_and_the_kernel_serves_on(kernel_binary: Path) -> None:
    kernel = Kernel([str(kernel_binary)])
    check_parser_cases(kernel)
    assert kernel.close() == (0, "")


def test_a_last_line_without_its_newline_is_answered(kernel_binary: Path) -> None:
    done = subprocess.run([str(kernel_binary), "--serve"], input=b"5 - 4 1 0 10\n6 zz", capture_output=True, timeout=30)
    assert done.stdout.decode().splitlines()[1:] == [answer_of(5, b"", 4, 1, 0, 10), "error 6 expected 6 fields, not 2"]


def test_many_lines_in_one_write_get_one_answer_each(kernel_binary: Path) -> None:
    lines = [b"%d %s 4 4 0 100" % (index, b"ab" * index or b"-") for index in range(300)] + [b"junk"] * 50
    done = subprocess.run([str(kernel_binary), "--serve"], input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60)
    answers = done.stdout.decode().splitlines()[1:]
    assert len(answers) == len(lines)
    assert answers[:300] == [answer_of(index, b"\xab" * index, 4, 4, 0, 100) for index in range(300)]
    assert set(answers[300:]) == {"error - expected 6 fields, not 1"}


def test_once_checks_its_fields_as_strictly(kernel_binary: Path) -> None:
    def once(*fields: str) -> str:
        return subprocess.run([str(kernel_binary), "--once", *fields], capture_output=True, text=True, timeout=30).stdout

    assert once("00", "4", "1e3", "0", "10") == "error difficulty must be a whole number from 1 to 256\n"
    assert once("=", "4", "8", "0", "10") == "error = names no earlier block\n"
    assert once("434f4d534d30303130636c6f7564", "4", "16", "0", "140000").startswith("1 133050 133051 0000a77c")


def mutations() -> st.SearchStrategy[bytes]:
    """A valid job line with one mutation: a field swapped for junk, dropped or doubled, or bytes changed."""
    junk = st.sampled_from(
        [b"", b"1e3", b"4abc", b"-1", b"+1", b" 1", b"0x10", b"18446744073709551616", b"18446744073709551615",
         b"99999999999999999999999", b"\xef\xbc\x91", b"=", b"-", b"zz", b"\t", b"\r", b"0", b"4294967296", b"00", b"007"]
    )
    number = st.integers(0, LIMIT_64 - 1).map(lambda value: str(value).encode())
    job = st.tuples(
        number,
        st.one_of(st.binary(max_size=150).map(lambda block: block.hex().encode() or b"-"), st.just(b"=")),
        st.sampled_from([b"4", b"8"]),
        st.integers(1, 14).map(lambda value: str(value).encode()),
        st.integers(0, 1 << 32).map(lambda value: str(value).encode()),
        st.integers(1, 5000),
    ).map(lambda t: [t[0], t[1], t[2], t[3], t[4], str(int(t[4]) + t[5]).encode()])

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        fields = draw(job)
        kind = draw(st.sampled_from(["junk", "drop", "double", "insert", "delete", "spaces", "none"]))
        at = draw(st.integers(0, len(fields) - 1))
        if kind == "junk":
            fields[at] = draw(junk)
        elif kind == "drop":
            del fields[at]
        elif kind == "double":
            fields.insert(at, fields[at])
        line = b" ".join(fields)
        if kind in ("insert", "delete", "spaces") and line:
            position = draw(st.integers(0, len(line) - 1))
            if kind == "insert":
                line = line[:position] + bytes([draw(st.integers(0, 255).filter(lambda b: b != 10))]) + line[position:]
            elif kind == "delete":
                line = line[:position] + line[position + 1 :]
            else:
                line = line[:position] + b"  " + line[position:]
        return line

    random_line = st.binary(max_size=300).map(lambda line: line.replace(b"\n", b""))
    return st.one_of(mutated(), random_line)


def fuzz(session: Session) -> None:
    """Random and mutated lines, each checked against the model, then a good job."""

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(line=mutations())
    def property(line: bytes) -> None:
        assume(affordable(line, session.remembered))
        session.check_then_serve(line)

    property()


def test_random_and_mutated_lines_never_break_the_kernel(session: Session) -> None:
    fuzz(session)
    assert session.kernel.process.poll() is None
