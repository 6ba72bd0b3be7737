"""The problem exactly as SPEC.md defines it, against the shipped test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from cnd_fab.spec import Problem, UnitSpace, double_sha256, zero_bits
from remote import worker

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "vectors.json").read_text())


def block_of(vector: Dict[str, Any]) -> bytes:
    if vector["kind"] == "hex":
        return bytes.fromhex(vector["block"])
    return str(vector["block"]).encode("utf-8")


def label(vector: Dict[str, Any]) -> str:
    return f"{vector['kind']}:{vector['block'][:12]}:{vector['nonce_bytes']}:{vector.get('difficulty', vector.get('nonce'))}"


HASHES: List[Dict[str, Any]] = VECTORS["hashes"]
LOWEST: List[Dict[str, Any]] = VECTORS["lowest"]


def test_vector_file_is_complete() -> None:
    assert len(HASHES) == 24 and len(LOWEST) == 48
    assert {block_of(v) for v in HASHES} >= {b"COMSM0010cloud", "héllo, wörld ✓".encode()}
    assert any(len(block_of(v)) == 100 for v in HASHES)
    assert any(len(block_of(v)) == 60 for v in HASHES)


@pytest.mark.parametrize("vector", HASHES, ids=label)
def test_hash_vectors(vector: Dict[str, Any]) -> None:
    problem = Problem(block_of(vector), vector["nonce_bytes"], 1)
    digest = problem.hash(vector["nonce"])
    assert digest.hex() == vector["hash"]
    assert zero_bits(digest) == vector["zero_bits"]
    # The worker's own scan agrees: this nonce is golden exactly up to its zero bits.
    if vector["zero_bits"] >= 1:
        found, worker_digest, _ = worker.scan_range(problem.block, vector["nonce_bytes"], vector["zero_bits"], vector["nonce"], vector["nonce"] + 1)
        assert found == vector["nonce"] and worker_digest is not None and worker_digest.hex() == vector["hash"]
    if vector["zero_bits"] < 256:
        assert worker.scan_range(problem.block, vector["nonce_bytes"], vector["zero_bits"] + 1, vector["nonce"], vector["nonce"] + 1)[0] is None


@pytest.mark.parametrize("vector", LOWEST, ids=label)
def test_lowest_golden_vectors_with_the_worker_scan(vector: Dict[str, Any]) -> None:
    block, width, difficulty = block_of(vector), vector["nonce_bytes"], vector["difficulty"]
    nonce, digest, checked = worker.scan_range(block, width, difficulty, 0, vector["nonce"] + 1000)
    assert nonce == vector["nonce"]
    assert digest is not None and digest.hex() == vector["hash"]
    assert checked == nonce + 1


@pytest.mark.parametrize("vector", [v for v in LOWEST if v["nonce"] < 5000], ids=label)
def test_lowest_golden_vectors_with_the_reference_scan(vector: Dict[str, Any]) -> None:
    problem = Problem(block_of(vector), vector["nonce_bytes"], vector["difficulty"])
    assert problem.scan(0, vector["nonce"] + 1) == vector["nonce"]


def test_nonce_is_big_endian_fixed_width() -> None:
    assert Problem(b"ab", 4, 1).message(0x0102) == b"ab\x00\x00\x01\x02"
    assert Problem(b"ab", 8, 1).message(1) == b"ab" + b"\x00" * 7 + b"\x01"


def test_inner_digest_is_raw_bytes_not_hex() -> None:
    import hashlib

    message = b"COMSM0010cloud\x00\x00\x00\x00"
    assert double_sha256(message) == hashlib.sha256(hashlib.sha256(message).digest()).digest()
    assert double_sha256(message) != hashlib.sha256(hashlib.sha256(message).hexdigest().encode()).digest()


@pytest.mark.parametrize("difficulty", [1, 7, 8, 9, 200, 255, 256])
def test_golden_target_matches_zero_bits(difficulty: int) -> None:
    target = worker.golden_target(difficulty)
    just_golden = (1 << (256 - difficulty)) - 1
    just_not = 1 << (256 - difficulty)
    assert zero_bits(just_golden.to_bytes(32, "big")) >= difficulty
    assert just_golden.to_bytes(32, "big") < target
    assert zero_bits(just_not.to_bytes(32, "big")) == difficulty - 1
    assert not just_not.to_bytes(32, "big") < target
    assert zero_bits(bytes(32)) == 256 and bytes(32) < worker.golden_target(256)


def test_units_are_equal_contiguous_and_lazy() -> None:
    space = UnitSpace(4, 1024)
    assert space.unit_size == 1 << 22
    assert space.unit(0).start == 0 and space.unit(1023).end == 1 << 32
    assert all(space.unit(i).end == space.unit(i + 1).start for i in range(1023))
    wide = UnitSpace(8, 1 << 42)
    last = wide.unit(wide.count - 1)
    assert last.end == 1 << 64 and last.size == 1 << 22
    with pytest.raises(IndexError):
        wide.unit(wide.count)


def test_chance_that_the_space_holds_none_matches_spec() -> None:
    assert Problem(b"x", 4, 32).chance_space_has_none() == pytest.approx(0.3679, abs=1e-3)
    assert Problem(b"x", 4, 38).chance_space_has_none() == pytest.approx(0.9845, abs=1e-3)
