"""The per-unit log stays bounded for long runs and still accounts for every unit."""

from __future__ import annotations

import csv
import io
import random

from cnd_fab.joblog import GOLDEN, LOST, SETTLED, JobLog, UnitRow, joblog_csv, rows_of

START = 1000.0


def test_a_long_run_keeps_first_last_and_reissued_rows_and_counts_the_rest() -> None:
    log = JobLog(START, first_rows=50, last_rows=20, max_reissue_rows=30, max_buckets=16)
    rng = random.Random(7)
    now, settled, lost_units = START, 0, 0
    hosts = ["h1", "h2", "h3"]
    pending = list(range(5000))
    while pending:
        unit = pending.pop(0)
        host = rng.choice(hosts)
        log.issued(unit, host, now)
        now += rng.uniform(0.01, 0.2)
        if rng.random() < 0.01:
            log.host_lost(host, [unit], now)
            lost_units += 1
            pending.insert(0, unit)  # reissued first, as the scheduler does
            continue
        log.started_units(host, [unit], now - 0.005)
        log.settled(unit, host, now, 1 << 16, None if unit != 4999 else 4999 << 16, 0.004)
        settled += 1
    log.finish(now)
    record = log.to_record()
    rows = rows_of(record)
    assert len(record["buckets"]) <= 16 and record["bucket_seconds"] > 1.0
    # Every row ever made is kept in full or counted in a bucket, never both.
    counted = sum(bucket["units"] for bucket in record["buckets"])
    assert len(rows) + counted == settled + lost_units
    assert len({row["unit"] for row in rows if row["result"] in (SETTLED, GOLDEN)}) == len(
        [row for row in rows if row["result"] in (SETTLED, GOLDEN)]
    )
    assert len(rows) <= 50 + 20 + 30
    lost_rows = [row for row in rows if row["result"] == LOST]
    assert lost_rows and all(row["redone_on"] for row in lost_rows)
    for row in rows:
        times = [row[name] for name in ("issued_at", "started_at", "done_at") if row[name] is not None]
        assert times == sorted(times)
    exported = list(csv.DictReader(io.StringIO(joblog_csv(record))))
    assert len(exported) == len(rows) + len(record["buckets"])
    assert {line["kind"] for line in exported} == {"unit", "bucket"}


def test_a_unit_settled_by_a_host_that_no_longer_holds_it_is_not_logged() -> None:
    log = JobLog(START)
    log.issued(3, "h1", START + 1)
    log.host_lost("h1", [3], START + 2)
    log.issued(3, "h2", START + 3)
    log.settled(3, "h1", START + 4, 10, None, 0.1)  # the lost host's late DONE
    log.settled(3, "h2", START + 5, 10, None, 0.1)
    rows = rows_of(log.to_record())
    assert [(row["host"], row["result"], row["lost_on"], row["redone_on"]) for row in rows] == [
        ("h1", LOST, None, "h2"),
        ("h2", SETTLED, "h1", None),
    ]


def test_grant_rows_are_cut_where_they_settle_and_shown_one_per_unit() -> None:
    log = JobLog(START, first_rows=3, last_rows=4, max_buckets=64)
    log.issued_run(0, 10, "h1", START + 1)
    log.started_units("h1", [0], START + 1.5)
    log.settled_run(0, 6, "h1", START + 2, 100, None, 0.1)  # the first six of the grant
    log.settled_run(6, 7, "h1", START + 3, 40, 642, 0.1)  # a golden nonce in unit 6
    log.cancelled(7, START + 3)  # 7..9 were above it
    record = log.to_record()
    rows = rows_of(record)
    # Units 0-2 are the first rows kept; of the rest, the last four units closed (6-9) are
    # kept too, and 3-5 are counted in a bucket.
    assert [row["unit"] for row in rows] == [0, 1, 2, 6, 7, 8, 9]
    assert [(row["unit"], row["result"], row["hashes"]) for row in rows if row["unit"] in (0, 6, 9)] == [
        (0, SETTLED, 100),
        (6, GOLDEN, 40),
        (9, "cancelled", None),
    ]
    assert all(row["started_at"] == 1.5 for row in rows if row["unit"] < 6)
    assert [(bucket["host"], bucket["units"], bucket["hashes"]) for bucket in record["buckets"]] == [("h1", 3, 300)]


def test_more_hosts_than_buckets_keep_two_buckets_a_host_and_never_loop() -> None:
    log = JobLog(START, first_rows=0, last_rows=0, max_buckets=8)
    for index in range(100):
        for step in range(3):
            log.issued(index * 3 + step, f"h{index}", START + step * 5)
            log.settled(index * 3 + step, f"h{index}", START + step * 5 + 1, 10, None, 0.1)
    record = log.to_record()
    assert len(record["buckets"]) <= 200 and sum(bucket["units"] for bucket in record["buckets"]) == 300
    assert {bucket["host"] for bucket in record["buckets"]} == {f"h{index}" for index in range(100)}


def test_the_last_rows_trimmed_in_batches_give_the_record_trimming_at_every_row_gives() -> None:
    class TrimsAtEveryRow(JobLog):
        def _keep(self, row: UnitRow) -> None:
            super()._keep(row)
            self._trim_last()

    for seed in range(150):
        rng = random.Random(seed)
        settings = dict(first_rows=rng.randint(0, 8), last_rows=rng.randint(1, 12), max_reissue_rows=rng.randint(0, 6), max_buckets=4)
        logs = [JobLog(START, **settings), TrimsAtEveryRow(START, **settings)]
        now, next_unit, held = START, 0, {"h1": [], "h2": [], "h3": []}
        lost: list = []
        for _ in range(120):
            now += rng.uniform(0.01, 0.7)
            host = rng.choice(list(held))
            action = rng.random()
            if action < 0.4 or not held[host]:
                units = [lost.pop(0)] if lost and rng.random() < 0.5 else list(range(next_unit, next_unit + rng.randint(1, 9)))
                next_unit = max(next_unit, units[-1] + 1)
                for log in logs:
                    log.issued_run(units[0], units[-1] + 1, host, now)
                held[host].extend(units)
            elif action < 0.85:
                first = min(held[host])
                count = 1
                while first + count in held[host] and rng.random() < 0.8:
                    count += 1
                for log in logs:
                    log.settled_run(first, first + count, host, now, 1 << 10, None, 0.01)
                held[host] = [unit for unit in held[host] if not first <= unit < first + count]
            else:
                reissued = sorted(held[host])
                for log in logs:
                    log.host_lost(host, reissued, now)
                lost.extend(reissued)
                held[host] = []
            if rng.random() < 0.05:
                assert logs[0].to_record() == logs[1].to_record(), seed  # a record taken mid-run
        for log in logs:
            log.finish(now)
        assert logs[0].to_record() == logs[1].to_record(), seed
