"""Spot interruption notices: the worker watches the metadata service (a loopback stand-in
here) and sends LEAVING once; it asks no address but the instance's own or loopback."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from remote import worker as protocol
from tests.helpers import wait_for_no_workers
from tests.testbed.imds import NOTICE, MetadataStandIn
from tests.unit.test_worker_protocol import WorkerProcess

MARKER = b"spot-test-run"


@pytest.fixture
def stand_in() -> Iterator[MetadataStandIn]:
    with MetadataStandIn(give_notice_after=0.0) as server:
        yield server


def start(*args: str) -> WorkerProcess:
    process = WorkerProcess("--processes", "1", "--kernel", "python", "--run-id", MARKER.decode(), *args)
    assert isinstance(process.read(), protocol.Hello)
    return process


def test_a_notice_is_sent_once_as_leaving_and_the_worker_searches_on(stand_in: MetadataStandIn) -> None:
    process = start("--metadata-url", stand_in.url)
    try:
        leaving = process.read_until(protocol.Leaving, limit=20)
        assert leaving == protocol.Leaving(action=NOTICE["action"], time=NOTICE["time"])
        assert stand_in.noticed is not None and list(stand_in.polls.values()) == [1]
        # Still a worker: it takes a unit and settles it until the controller stops it.
        process.send(protocol.Work(unit=0, start=0, end=1 << 12, block="00", nonce_bytes=4, difficulty=256))
        assert process.read_until(protocol.Done, limit=20).hashes == 1 << 12
        time.sleep(protocol.SPOT_POLL_SECONDS + 1)
        assert list(stand_in.polls.values()) == [1], "it asked again after the notice"
    finally:
        process.kill()
    assert not wait_for_no_workers(MARKER)


def test_no_notice_means_polling_on_and_no_message() -> None:
    with MetadataStandIn(give_notice_after=3600.0) as server:
        process = start("--metadata-url", server.url)
        try:
            time.sleep(protocol.SPOT_POLL_SECONDS + 1)
            assert len(server.polls) >= 2 and server.noticed is None
            process.send(protocol.Stop())
            messages, _ = process.read_all_until(protocol.Progress, limit=10)
            assert not [m for m in messages if isinstance(m, protocol.Leaving)]
        finally:
            process.kill()


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1", "https://169.254.169.254", "http://169.254.169.254.evil.example", "http://127.0.0.1/x"]
)
def test_any_other_metadata_address_is_refused_before_it_is_asked(url: str) -> None:
    with pytest.raises(ValueError, match="--metadata-url must be"):
        protocol.metadata_base(url)


def test_an_unreachable_metadata_service_is_asked_again_not_fatal() -> None:
    # A closed loopback port: every poll fails, and the worker keeps searching.
    with MetadataStandIn(give_notice_after=0.0) as server:
        url = server.url
    process = start("--metadata-url", url)
    try:
        process.send(protocol.Work(unit=0, start=0, end=1 << 12, block="00", nonce_bytes=4, difficulty=256))
        assert process.read_until(protocol.Done, limit=20).unit == 0
    finally:
        process.kill()
