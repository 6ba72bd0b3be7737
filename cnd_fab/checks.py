"""The checks after parsing that need the outside world, in one place, before any launch.

cnd_fab.options parses flags without I/O. open_provider then reads the inventory file, makes
the provider and runs its check (Docker reachable, image present, AWS credentials, key files
readable, count within limits). Its errors are the same one-line InputError (exit 2) or
ProviderError a user saw before, and nothing has been launched when they come.
"""

from __future__ import annotations

from typing import Optional, Tuple

from . import inventory as inventory_file
from .request import ProviderRequest
from .providers import Provider, ProviderOptions, provider_class


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
    return provider, hosts
