"""Hosts the user already has, listed in the inventory file. Never terminated, only cleaned.

Example: ``fab search --provider static --inventory inventory.yaml`` uses every host under
``hosts:`` (``--count N`` takes the first N). Host keys are checked against known_hosts;
``--accept-new-host-key`` trusts unknown ones on first use and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import paramiko

from ..errors import HostConnectError, InputError
from ..journal import RunJournal
from ..ssh import WORKER_FILE_GONE, SshHost, SshTarget, stop_all
from ..transport import worker
from . import COUNT_MEANINGS
from .base import Host, Leftover, Provider, ProviderOptions, Released

TEARDOWN_CONNECT_SECONDS = 10.0


def load_login_key(path: Path, host: str) -> paramiko.PKey:
    """The inventory's private key for `host`; one clear InputError when it cannot be used."""
    try:
        return paramiko.PKey.from_path(str(path))
    except Exception as error:  # paramiko and cryptography raise many kinds; all mean the same here
        reason = "it needs a passphrase (use an agent-free, unencrypted key for cnd-fab)" if isinstance(error, TypeError) else str(error)
        raise InputError(f"{host}: cannot load the key file {path}: {reason}") from None


def cleanup_result(where: str, status: int) -> Released:
    """What the worker's --cleanup exit status says of a run directory and its worker."""
    if status == worker.CLEANUP_KILLED:
        return Released(where, True, action="cleaned")
    if status in (worker.CLEANUP_NOTHING, worker.CLEANUP_NOT_OURS, WORKER_FILE_GONE):
        return Released(where, True, action="found nothing left at")
    if status == worker.CLEANUP_REFUSED:
        return Released(where, False, "refused: not a cnd-fab run directory")
    return Released(where, False, f"its worker could not be confirmed stopped (cleanup exit {status})")


class StaticProvider(Provider):
    """The inventory's hosts: the worker is pushed, run, killed and its directory removed."""

    name = "static"
    count_meaning = COUNT_MEANINGS[name]

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        super().__init__(options)
        inventory = self.options.inventory
        self.hosts = inventory.hosts
        self.known_hosts = inventory.known_hosts or Path.home() / ".ssh" / "known_hosts"

    def default_count(self) -> int:
        """Every host in the inventory."""
        return max(1, len(self.hosts))

    def cores_per_host(self) -> int:
        """The fewest cores any listed host declares (2 where none is given)."""
        return min((host.cores or 2) for host in self.hosts) if self.hosts else 2

    def max_hosts(self) -> int:
        """As many hosts as the inventory lists."""
        return max(1, len(self.hosts))

    def architectures(self) -> Tuple[str, ...]:
        """The listed hosts' `arch:` fields; every known one when a host does not say."""
        from ..kernels import ARCHITECTURES

        declared = {host.arch for host in self.hosts}
        if None in declared or not declared:
            return ARCHITECTURES
        return tuple(sorted(arch for arch in declared if arch is not None))

    def check(self, count: int) -> None:
        """An inventory with enough hosts, and a usable key for each one taken."""
        if not self.hosts:
            raise InputError("--provider static needs --inventory FILE with a 'hosts:' list")
        if count > len(self.hosts):
            raise InputError(f"--count {count} is more than the {len(self.hosts)} hosts in the inventory")
        for host in self.hosts[:count]:
            load_login_key(host.key, host.name)
        if self.options.accept_new_host_key:
            self.options.warn(
                "WARNING: --accept-new-host-key: unknown host keys will be trusted on first use and "
                f"added to {self.known_hosts}; a man in the middle would go unnoticed this once"
            )

    def target(self, index: int, retry_connect: float = 60.0) -> SshTarget:
        """How to reach the inventory's host number `index`."""
        host = self.hosts[index]
        return SshTarget(
            name=host.name,
            host=host.host,
            port=host.port,
            user=host.user,
            login_key=load_login_key(host.key, host.name),
            known_hosts=self.known_hosts,
            accept_new_host_key=self.options.accept_new_host_key,
            processes=host.cores,
            arch=host.arch,
            connect_deadline=retry_connect,
            warn=self.options.warn,
        )

    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        """Take the first `count` hosts; their workers start when the fleet asks."""
        journal.details["inventory"] = str(self.options.inventory.path)
        return [SshHost(self.target(index), journal.run_id, index + 1, journal) for index in range(count)]

    def release(self, hosts: List[Host], journal: RunJournal) -> List[Released]:
        """Kill each worker and remove its directory; one result per host."""
        unconfirmed = stop_all(hosts)
        return [
            Released(f"worker on {host.name}", host.name not in unconfirmed, unconfirmed.get(host.name, ""), action="stopped")
            for host in hosts
        ]

    def remove(self, leftover: Leftover, dry_run: bool = False) -> List[Released]:
        """Reconnect to each host the journal names, kill what is left and remove its directory."""
        released = []
        by_name = {host.name: index for index, host in enumerate(self.hosts)}
        for resource in leftover.journal.resources:
            if resource.get("kind") != "ssh-run-dir":
                continue
            name = str(resource.get("host"))
            where = f"{resource.get('run_dir')} on {name}"
            if name not in by_name:
                released.append(Released(where, False, "that host is not in the inventory given (use --inventory)"))
                continue
            if dry_run:
                released.append(Released(f"the worker and {where}", True, planned=True))
                continue
            host = SshHost(self.target(by_name[name], TEARDOWN_CONNECT_SECONDS), leftover.run_id, 0)
            host.run_dir = str(resource["run_dir"])
            try:
                host.connect(cleaning=True)
                status, _ = host.run_command(host.cleanup_command())
                released.append(cleanup_result(where, status))
            except HostConnectError as error:
                released.append(Released(where, False, str(error)))
            finally:
                host.started_worker = False
                if host.connection is not None:
                    host.connection.close()
        return released
