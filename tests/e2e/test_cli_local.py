"""The real CLI (`fab` and `cnd-fab`) driving real local workers, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.helpers import REPO, cli, fab, run_cli, wait_for_no_workers, worker_processes

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leaked_workers")]


def search_json(*args: str) -> Dict[str, Any]:
    result = run_cli(fab("search", "--json", *args))
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.parametrize(
    "args, nonce, hash_start",
    [
        (["--difficulty", "8"], 330, "00f9a29f36ecb8fe"),
        (["--difficulty", "18", "--count", "2"], 137342, "000029a4a99ae458"),
        (["--difficulty", "16", "--block", "héllo, wörld ✓", "--count", "3"], 63167, "0000099f9ce5e8ff"),
        (["--difficulty", "16", "--block-hex", "00ff" * 50, "--nonce-bytes", "8"], 167263, "00006fb3b68d0baf"),
        (["--difficulty", "18", "--nonce-bytes", "8", "--count", "2"], 951771, "00003afee8f6b734"),
    ],
)
def test_search_finds_the_spec_answer(args: List[str], nonce: int, hash_start: str) -> None:
    record = search_json(*args)
    assert record["status"] == "found" and record["lowest"] is True
    assert record["nonce"] == nonce and record["hash"].startswith(hash_start)
    assert record["zero_bits"] >= int(args[1])
    assert record["nonce_hex"] == f"{nonce:0{2 * record['nonce_bytes']}x}"
    assert record["checked"] >= nonce + 1 and record["rate"] > 0


def test_lowest_answer_with_small_units_over_many_hosts() -> None:
    # 65,536-nonce units: the answer at 137,342 lies in unit 2, so hosts race on units
    # 0..3 and the lower ones must still be waited for.
    record = search_json("--difficulty", "18", "--units", "65536", "--count", "4")
    assert record["nonce"] == 137342 and record["lowest"] is True


def test_any_says_it_may_not_be_the_lowest() -> None:
    result = run_cli(cli("search", "--difficulty", "12", "--any", "--count", "2"))
    assert result.returncode == 0, result.stderr
    assert "--any" in result.stdout and "maybe not the lowest" in result.stdout
    record = json.loads(run_cli(cli("search", "--difficulty", "12", "--any", "--json")).stdout)
    assert record["lowest"] is False and record["zero_bits"] >= 12


def test_text_output_names_every_figure() -> None:
    result = run_cli(fab("search", "--difficulty", "8"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("golden nonce   330  (0x0000014a)", "hash           00f9a29f", "zero bits", "lowest         yes", "checked", "H/s"):
        assert expected in out
    assert "hosts" in result.stderr  # the summary table
    assert "Traceback" not in result.stderr


def test_json_stdout_is_exactly_one_object() -> None:
    result = run_cli(fab("search", "--difficulty", "6", "--json"))
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "found"


def test_timeout_stops_everything_and_reports_progress() -> None:
    started = time.monotonic()
    result = run_cli(cli("search", "--difficulty", "256", "--timeout", "3", "--count", "2", "--json"))
    assert time.monotonic() - started < 20
    assert result.returncode == 3, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "timeout" and record["found"] is False
    assert 0 < record["checked"] and record["seconds"] >= 3
    assert record["nonces_settled"] % (1 << 22) == 0


def test_plain_progress_lines_when_not_a_terminal() -> None:
    result = run_cli(cli("search", "--difficulty", "256", "--timeout", "7"))
    assert result.returncode == 3
    assert "timed out after" in result.stdout
    progress = [line for line in result.stderr.splitlines() if "in flight" in line and "checked at" in line]
    assert len(progress) >= 1, result.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_ctrl_c_stops_cleanly_and_leaves_no_worker(signum: int, code: int, private_state: Path) -> None:
    process = subprocess.Popen(
        cli("search", "--difficulty", "256", "--count", "2"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    joined = 0
    while joined < 2 and time.monotonic() < deadline:
        line = process.stderr.readline()
        joined += " joined: " in line
    assert joined == 2
    run_ids = {cmd.split("--run-id ")[1].split()[0] for cmd in worker_processes().values() if "--run-id" in cmd}
    assert run_ids
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert "interrupted after" in stdout
    assert "Traceback" not in stderr
    for run_id in run_ids:
        assert not wait_for_no_workers(run_id.encode(), within=3.0)
    journals = list((private_state / "runs").glob("*.json"))
    assert journals and all(json.loads(p.read_text())["status"] == "cleaned" for p in journals)


def test_killed_controller_leaves_journal_and_teardown_cleans(private_state: Path) -> None:
    process = subprocess.Popen(
        cli("search", "--difficulty", "256", "--count", "2"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    while " joined: " not in process.stderr.readline():
        pass
    process.kill()
    process.wait()
    journals = list((private_state / "runs").glob("*.json"))
    assert len(journals) == 1
    record = json.loads(journals[0].read_text())
    assert record["status"] == "open" and len(record["resources"]) == 2
    # The workers go by themselves when their stdin closes; teardown is the second line of
    # defence and must leave the journal closed whatever it found.
    first = run_cli(fab("teardown"))
    assert first.returncode == 0, first.stderr
    assert "from 1 run(s)" in first.stderr
    second = run_cli(fab("teardown"))
    assert second.returncode == 0 and "0 resource(s) from 0 run(s)" in second.stderr
    assert json.loads(journals[0].read_text())["status"] == "cleaned"


def test_teardown_kills_a_worker_a_journal_names(private_state: Path) -> None:
    from cnd_fab.journal import RunJournal
    from cnd_fab.transport import worker_file

    journal = RunJournal.start("local", run_id="cnd-test-orphan")
    read_end, write_end = os.pipe()
    orphan = subprocess.Popen(
        [sys.executable, str(worker_file()), "--processes", "1", "--run-id", journal.run_id],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(read_end)
    journal.record("local-worker", host="local-1", pid=orphan.pid)
    try:
        dry = run_cli(cli("teardown", "--dry-run"))
        assert "would kill local worker pid" in dry.stderr and orphan.poll() is None
        result = run_cli(cli("teardown"))
        assert f"killed local worker pid {orphan.pid}" in result.stderr
        assert orphan.wait(timeout=10) != 0
        assert not wait_for_no_workers(journal.run_id.encode())
        assert "0 resource(s)" in run_cli(cli("teardown")).stderr
    finally:
        os.close(write_end)
        if orphan.poll() is None:
            orphan.kill()


BAD_INPUTS = [
    (["--difficulty", "0"], "--difficulty must be from 1 to 256"),
    (["--difficulty", "257"], "--difficulty must be from 1 to 256"),
    (["--difficulty", "abc"], "--difficulty must be a whole number, not 'abc'"),
    (["--difficulty", "6.5"], "--difficulty must be a whole number"),
    (["--block-hex", "abc"], "odd number of hex digits"),
    (["--block-hex", "zz"], "--block-hex is not hex"),
    (["--block-hex", ""], "the block is empty"),
    (["--block", ""], "the block is empty"),
    (["--block", "x", "--block-hex", "00"], "not both"),
    (["--count", "0"], "--count must be at least 1"),
    (["--count", "-3"], "--count must be at least 1"),
    (["--count", "many"], "--count must be a whole number"),
    (["--units", "1000"], "--units 1000 does not split"),
    (["--units", "0"], "--units must be at least 1"),
    (["--units", str(1 << 20)], "smaller than 65536 nonces"),
    (["--provider", "mars"], "--provider must be one of docker, ec2, local, static, not 'mars'"),
    (["--timeout", "0"], "--timeout must be a number of seconds above 0"),
    (["--timeout", "-5"], "--timeout must be a number of seconds above 0"),
    (["--timeout", "soon"], "--timeout must be a number of seconds, not 'soon'"),
    (["--timeout", "nan"], "--timeout must be a number of seconds above 0"),
    (["--nonce-bytes", "5"], "--nonce-bytes must be 4 or 8"),
    (["--provider", "static"], "--provider static needs --inventory FILE"),
    (["--provider", "static", "--inventory", "/nonexistent.yaml"], "cannot read the inventory /nonexistent.yaml"),
    (["--provider", "static", "--inventory", "inventory.example.yaml"], "inventory.example.yaml:12: hosts[0].key names"),
    (["--count", "65"], "--count 65 is too many local workers"),
    (["--provider", "ec2"], "no AWS region: give --region"),
    (["--within", "10"], "give --within SECONDS and --confidence L together"),
    (["--within", "10", "--confidence", "2"], "--confidence must be above 0 and below 1"),
    (["--within", "10", "--confidence", "most"], "--confidence must be a probability such as 0.95 or 95%"),
    (["--within", "0", "--confidence", "0.9"], "--within must be a number of seconds above 0"),
    (["--within", "10", "--confidence", "0.9", "--count", "2"], "give --count, or --within with --confidence"),
    (["--best-effort"], "--best-effort goes with --within and --confidence"),
    (["--kernel", "gpu"], "--kernel must be one of auto, native, python, not 'gpu'"),
    (["--provider", "ec2", "--region", "eu-west-2"], "no AWS credentials found"),
    (["--spot"], "--spot is for --provider ec2, not local"),
    (["--provider", "docker", "--min-count", "1"], "--min-count is for --provider ec2, not docker"),
    (["--provider", "ec2", "--instance-types", "c7a.large,"], "--instance-types 'c7a.large,' has an empty name"),
    (["--provider", "ec2", "--instance-type", "c7a.large", "--instance-types", "c6a.large,c7a.large"],
     "give --instance-type or --instance-types, not both"),
    (["--provider", "ec2", "--min-count", "0"], "--min-count must be at least 1"),
    (["--provider", "ec2", "--within", "10", "--confidence", "0.9", "--min-count", "1"], "--min-count goes with --count"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_gets_one_line_and_launches_nothing(args: List[str], message: str, private_state: Path) -> None:
    result = run_cli(fab("search", *args))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (private_state / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["calibrate", "--count", "65"], "cnd-fab: --count must be from 1 to 64, not 65"),
        (["calibrate", "--provider", "mars"], "cnd-fab: --provider must be one of docker, ec2, local, static, not 'mars'"),
        (["bench", "--kernel", "native"], "cnd-fab: --kernel must be one of auto, python, not 'native'"),
        (["bench", "--startup", "--seconds", "3"], "cnd-fab: --startup only times the CLI's start-up; give it without --seconds"),
    ],
)
def test_bad_calibrate_and_bench_input_gets_one_line(args: List[str], message: str, private_state: Path) -> None:
    result = run_cli(cli(*args))
    assert result.returncode == 2
    assert result.stderr.strip() == message and result.stdout == ""
    assert not (private_state / "runs").exists()


def test_console_script_reports_bad_input_the_same_way() -> None:
    result = run_cli(cli("search", "--difficulty", "abc"))
    assert result.returncode == 2
    assert result.stderr.strip() == "cnd-fab: --difficulty must be a whole number, not 'abc'"


def test_loopback_guard_refuses_other_addresses_here() -> None:
    import socket

    from tests.loopback_guard.sitecustomize import NonLoopbackConnect

    for address in (("192.0.2.1", 9), ("172.17.0.2", 22), ("10.0.0.1", 22)):
        with socket.socket() as sock, pytest.raises(NonLoopbackConnect):
            sock.connect(address)
        with socket.socket() as sock, pytest.raises(NonLoopbackConnect):
            sock.connect_ex(address)


def test_loopback_guard_reaches_subprocesses() -> None:
    code = "import socket; socket.create_connection(('192.0.2.1', 9), timeout=1)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "loopback guard: refused a connection" in result.stderr


def test_within_refuses_a_space_unlikely_to_hold_one(private_state: Path) -> None:
    result = run_cli(cli("search", "--difficulty", "32", "--within", "600", "--confidence", "0.9"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("model: about 2^32 = 4,294,967,296 nonces to the first golden one")
    assert lines[-1].startswith("cnd-fab: the 2^32 space holds a golden nonce at difficulty 32 only with probability 0.632")
    assert not (private_state / "runs").exists()


def test_within_refuses_an_impossible_deadline_unless_best_effort(private_state: Path) -> None:
    refused = run_cli(cli("search", "--difficulty", "34", "--nonce-bytes", "8", "--within", "2", "--confidence", "0.99"))
    assert refused.returncode == 2
    assert "no fleet of at most 1 local host(s) settles the answer within 2s with probability 0.99" in refused.stderr
    assert not (private_state / "runs").exists()
    tried = run_cli(cli("search", "--difficulty", "34", "--nonce-bytes", "8", "--within", "2", "--confidence", "0.99", "--best-effort", "--json"))
    assert tried.returncode == 3, tried.stderr  # it ran, and --within became its timeout
    assert json.loads(tried.stdout)["status"] == "timeout"


def test_within_sizes_and_runs_the_search(private_state: Path) -> None:
    started = time.monotonic()
    result = run_cli(cli("search", "--difficulty", "16", "--within", "30", "--confidence", "0.9", "--json"))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert json.loads(result.stdout)["nonce"] == 133050
    assert "built-in default for" in result.stderr and "not measured" in result.stderr


def test_calibrate_measures_and_within_uses_it(private_state: Path) -> None:
    result = run_cli(fab("calibrate", "--seconds", "3"))
    assert result.returncode == 0, result.stderr
    stored = json.loads((private_state / "calibration.json").read_text())
    entry = stored["local/-/native"]
    assert entry["samples"] == 1 and entry["rate"] > 1e6 and 0 < entry["startup"] < 10
    planned = run_cli(cli("search", "--difficulty", "12", "--within", "20", "--confidence", "0.9"))
    assert planned.returncode == 0, planned.stderr
    assert "measured by fab calibrate, 1 run(s)" in planned.stderr


def test_a_passphrase_protected_key_is_one_clear_line(tmp_path: Path, private_state: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = tmp_path / "id_locked"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(b"secret")
        )
    )
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"hosts:\n  - {{host: 127.0.0.1, port: 2222, user: root, key: {key}}}\n")
    result = run_cli(cli("search", "--provider", "static", "--inventory", str(inventory)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cnd-fab: 127.0.0.1:2222: cannot load the key file {key}: it needs a passphrase (use an agent-free, unencrypted key for cnd-fab)"
    ]
    assert not (private_state / "runs").exists()
