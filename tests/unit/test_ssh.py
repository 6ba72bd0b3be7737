"""The SSH edge: retries, host key rules and error wrapping, patched at paramiko/Fabric."""

from __future__ import annotations

import socket
from typing import Any, List

import paramiko
import pytest
from fabric import Connection

from cnd_fab.errors import HostConnectError
from cnd_fab.ssh import KeyPair, SshHost, SshTarget


def target(**overrides: Any) -> SshTarget:
    fields = dict(name="web-1", host="127.0.0.1", port=2201, user="root", login_key=KeyPair.generate("t").key)
    fields.update(overrides)
    return SshTarget(**fields)


class ScriptedOpen:
    """Connection.open replaced by a list of outcomes: an exception to raise, or None."""

    def __init__(self, outcomes: List[Any]) -> None:
        self.outcomes = outcomes
        self.calls = 0
        self.policies: List[Any] = []
        self.pinned: List[Any] = []

    def __call__(self, connection: Connection) -> None:
        self.calls += 1
        self.policies.append(type(connection.client._policy).__name__)
        self.pinned.append(connection.client.get_host_keys().lookup("[127.0.0.1]:2201"))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


def patch_open(monkeypatch: pytest.MonkeyPatch, scripted: ScriptedOpen) -> None:
    def open_(connection: Connection) -> None:
        scripted(connection)

    monkeypatch.setattr(Connection, "open", open_)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    slept: List[float] = []
    monkeypatch.setattr("cnd_fab.ssh.time.sleep", slept.append)
    return slept


def test_retries_with_backoff_until_the_host_answers(monkeypatch: pytest.MonkeyPatch, no_sleep: List[float]) -> None:
    refused = paramiko.ssh_exception.NoValidConnectionsError({("127.0.0.1", 2201): ConnectionRefusedError()})
    scripted = ScriptedOpen([refused, socket.timeout("timed out"), EOFError(), paramiko.SSHException("banner"), None])
    patch_open(monkeypatch, scripted)
    pinned = KeyPair.generate("host").key
    SshHost(target(pinned_host_keys=[pinned]), "run", 1).connect()
    assert scripted.calls == 5 and len(no_sleep) == 4
    assert 0 < min(no_sleep) and max(no_sleep) <= 3.0  # jittered and bounded
    assert set(scripted.policies) == {"RejectPolicy"}
    assert all(keys is not None and keys["ssh-ed25519"] == pinned for keys in scripted.pinned)


def test_wrong_host_key_fails_at_once(monkeypatch: pytest.MonkeyPatch, no_sleep: List[float]) -> None:
    got, expected = KeyPair.generate("a").key, KeyPair.generate("b").key
    scripted = ScriptedOpen([paramiko.BadHostKeyException("[127.0.0.1]:2201", got, expected)])
    patch_open(monkeypatch, scripted)
    with pytest.raises(HostConnectError) as caught:
        SshHost(target(), "run", 1).connect()
    message = str(caught.value)
    assert message.startswith("web-1 (root@127.0.0.1:2201): host key mismatch")
    assert expected.fingerprint in message and got.fingerprint in message
    assert scripted.calls == 1 and not no_sleep


def test_cloud_host_key_mismatch_is_retried_and_never_trusted(monkeypatch: pytest.MonkeyPatch, no_sleep: List[float]) -> None:
    # sshd answers with its own key until cloud-init has installed the pinned one.
    generated, pinned = KeyPair.generate("sshd's own").key, KeyPair.generate("pinned").key
    mismatch = paramiko.BadHostKeyException("[127.0.0.1]:2201", generated, pinned)
    scripted = ScriptedOpen([mismatch, mismatch, None])
    patch_open(monkeypatch, scripted)
    SshHost(target(pinned_host_keys=[pinned], retry_host_key=True), "run", 1).connect()
    assert scripted.calls == 3 and len(no_sleep) == 2
    # Every attempt knew the pinned key alone, and no policy that would add another.
    assert set(scripted.policies) == {"RejectPolicy"}
    assert all(keys is not None and list(keys.keys()) == ["ssh-ed25519"] and keys["ssh-ed25519"] == pinned for keys in scripted.pinned)


def test_cloud_host_key_mismatch_until_the_deadline_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    generated, pinned = KeyPair.generate("sshd's own").key, KeyPair.generate("pinned").key
    scripted = ScriptedOpen([paramiko.BadHostKeyException("[127.0.0.1]:2201", generated, pinned)] * 1000)
    patch_open(monkeypatch, scripted)
    with pytest.raises(HostConnectError) as caught:
        SshHost(target(pinned_host_keys=[pinned], retry_host_key=True, connect_deadline=0.5), "run", 1).connect()
    message = str(caught.value)
    assert message.startswith("web-1 (root@127.0.0.1:2201): not reachable over SSH within")
    assert message.endswith(
        f"last error: host key mismatch: expected {pinned.fingerprint}, got {generated.fingerprint}; refusing to connect"
    )
    assert scripted.calls > 1


def test_unknown_host_key_names_the_opt_in(monkeypatch: pytest.MonkeyPatch, no_sleep: List[float]) -> None:
    patch_open(monkeypatch, ScriptedOpen([paramiko.SSHException("Server '[127.0.0.1]:2201' not found in known_hosts")]))
    with pytest.raises(HostConnectError, match="unknown host key .*--accept-new-host-key"):
        SshHost(target(), "run", 1).connect()


def test_deadline_reports_the_last_error(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_open(monkeypatch, ScriptedOpen([ConnectionRefusedError(111, "Connection refused")] * 1000))
    with pytest.raises(HostConnectError) as caught:
        SshHost(target(connect_deadline=0.5), "run", 1).connect()
    assert "not reachable over SSH within 0s" in str(caught.value) or "within 1s" in str(caught.value)
    assert "last error: ConnectionRefusedError" in str(caught.value)


@pytest.mark.parametrize("retry_auth, calls", [(False, 1), (True, 3)])
def test_authentication_retried_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, no_sleep: List[float], retry_auth: bool, calls: int
) -> None:
    denied = paramiko.AuthenticationException("denied")
    scripted = ScriptedOpen([denied, denied, None])
    patch_open(monkeypatch, scripted)
    host = SshHost(target(retry_auth=retry_auth), "run", 1)
    if retry_auth:
        host.connect()
    else:
        with pytest.raises(HostConnectError, match="web-1 .*authentication failed: denied"):
            host.connect()
    assert scripted.calls == calls


def test_trust_on_first_use_is_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    scripted = ScriptedOpen([None])
    patch_open(monkeypatch, scripted)
    SshHost(target(known_hosts=tmp_path / "kh", accept_new_host_key=True), "run", 1).connect()
    assert scripted.policies == ["TrustOnFirstUse"]


def test_commands_hold_no_user_text() -> None:
    host = SshHost(target(name="x; rm -rf /", processes=3), "cnd-20261125-000000-abcdef", 2)
    command = host.worker_command("cnd-20261125-000000-abcdef")
    assert command == (
        "exec python3 /tmp/cnd-fab-cnd-20261125-000000-abcdef-2/worker.py --own-session --pidfile "
        "/tmp/cnd-fab-cnd-20261125-000000-abcdef-2/worker.pid --run-id cnd-20261125-000000-abcdef --processes 3 "
        "--kernel auto"
    )
    assert "rm" not in command and "rm" not in host.cleanup_command()
