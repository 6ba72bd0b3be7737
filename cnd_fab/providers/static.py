"""Hosts the user already has, listed in the inventory file. Never terminated, only cleaned.

Example: ``fab search --provider static --inventory inventory.yaml`` uses every host under
``hosts:`` (``--count N`` takes the first N). Host keys are checked against known_hosts;
``--accept-new-host-key`` trusts unknown ones on first use and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import paramiko

from ..errors import HostConnectError, InputError, ProviderError
from ..journal import RunJournal
from ..ssh import SshHost, SshTarget, stop_all
from .base import Host, Provider, ProviderOptions

TEARDOWN_CONNECT_SECONDS = 10.0


def load_login_key(path: Path, host: str) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(str(path))
    except Exception as error:  # paramiko and cryptography raise many kinds; all mean the same here
        reason = "it needs a passphrase (use an agent-free, unencrypted key for cnd-fab)" if isinstance(error, TypeError) else str(error)
        raise InputError(f"{host}: cannot load the key file {path}: {reason}") from None


class StaticProvider(Provider):
    """The inventory's hosts: the worker is pushed, run, killed and its directory removed."""

    name = "static"
    count_meaning = "hosts taken from the inventory's list, in order (default: all of them)"

    def __init__(self, options: Optional[ProviderOptions] = None) -> None:
        super().__init__(options)
        inventory = self.options.inventory
        self.hosts = inventory.hosts
        self.known_hosts = inventory.known_hosts or Path.home() / ".ssh" / "known_hosts"

    def default_count(self) -> int:
        return max(1, len(self.hosts))

    def cores_per_host(self) -> int:
        return min((host.cores or 2) for host in self.hosts) if self.hosts else 2

    def max_hosts(self) -> int:
        return max(1, len(self.hosts))

    def check(self, count: int) -> None:
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
            connect_deadline=retry_connect,
            warn=self.options.warn,
        )

    def launch(self, count: int, journal: RunJournal) -> List[Host]:
        journal.details["inventory"] = str(self.options.inventory.path)
        return [SshHost(self.target(index), journal.run_id, index + 1, journal) for index in range(count)]

    def release(self, hosts: List[Host], journal: RunJournal) -> None:
        stop_all(hosts)
        unclean = [h.name for h in hosts if isinstance(h, SshHost) and h.clean_failed]
        if unclean:
            raise ProviderError(
                f"could not confirm the worker was killed on {', '.join(unclean)}; run "
                f"`fab teardown --run {journal.run_id} --inventory FILE` when they answer again"
            )

    def teardown(self, journal: RunJournal, dry_run: bool = False) -> List[str]:
        """Reconnect to each host the journal names and kill and remove what is left."""
        lines = []
        by_name = {host.name: index for index, host in enumerate(self.hosts)}
        for resource in journal.resources:
            if resource.get("kind") != "ssh-run-dir":
                continue
            name = str(resource.get("host"))
            where = f"{resource.get('run_dir')} on {name}"
            if name not in by_name:
                lines.append(f"cannot clean {where}: not in the inventory given (use --inventory)")
                continue
            if dry_run:
                lines.append(f"would kill the worker and remove {where}")
                continue
            index = by_name[name]
            host = SshHost(self.target(index, TEARDOWN_CONNECT_SECONDS), journal.run_id, 0)
            host.run_dir = str(resource["run_dir"])
            try:
                host.connect(cleaning=True)
                status, output = host.run_command(host.cleanup_command())
                lines.append(f"cleaned {where}" if status == 0 else f"nothing to clean at {where}")
            except HostConnectError as error:
                lines.append(f"could not clean {where}: {error}")
            finally:
                host.started_worker = False
                if host.connection is not None:
                    host.connection.close()
        return lines
