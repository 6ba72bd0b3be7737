"""The checks after parsing that need the outside world, in one place, before any launch.

cnd_fab.options parses flags without I/O. open_provider then reads the inventory file, makes
the provider and runs its check (Docker reachable, image present, AWS credentials, key files
readable, count within limits). Its errors are the same one-line InputError (exit 2) or
ProviderError a user saw before, and nothing has been launched when they come.
"""

from __future__ import annotations

import resource
from typing import Optional, Tuple

from . import inventory as inventory_file
from .errors import InputError
from .request import ProviderRequest
from .providers import Provider, ProviderOptions, provider_class


#: Open files one host may take on the controller: its connection, paramiko's readiness pipe,
#: a local worker's three pipes.
FILES_PER_HOST = 4
#: Open files the controller needs whatever the fleet's size.
SPARE_FILES = 256


def ensure_open_files(needed: int, what: str) -> None:
    """Raise this process's soft open-file limit to `needed` if it is lower, as far as the hard
    limit allows (no privilege needed); else refuse in one line, before anything is launched."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise InputError(
            f"{what} needs {needed:,} open files, and this process may open {hard:,}; nothing was launched "
            "(raise the hard limit, `ulimit -Hn`)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def check_open_files(hosts: int) -> None:
    """A fleet of `hosts` must not run out of open files halfway through its set-up."""
    ensure_open_files(FILES_PER_HOST * hosts + SPARE_FILES, f"a fleet of {hosts:,} hosts")


def provider_options(choice: ProviderRequest) -> ProviderOptions:
    """The ProviderOptions a request names: its inventory file loaded and its flags over it."""
    inventory = inventory_file.load(choice.inventory_path) if choice.inventory_path else inventory_file.Inventory()
    return ProviderOptions(**vars(choice), inventory=inventory)


def open_provider(choice: ProviderRequest, count: Optional[int]) -> Tuple[Provider, int]:
    """The provider a request names, checked for `count` hosts (None: its default count).

    Raises InventoryError or InputError (exit 2) or ProviderError; launches nothing.
    """
    provider = provider_class(choice.name)(provider_options(choice))
    hosts = provider.default_count() if count is None else count
    provider.check(hosts)
    check_open_files(hosts)
    return provider, hosts
