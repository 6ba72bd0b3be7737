"""Providers, one per file, looked up by the name given to --provider.

This package's own import is light (no Docker, boto3 or paramiko): the flag parser reads the
names and count meanings from here, and only the provider a run names is ever imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Dict, Tuple, Type

from ..errors import InputError

if TYPE_CHECKING:
    from .base import Provider

#: --provider's choices, each the name of its module and of its class's `name`.
PROVIDER_NAMES: Tuple[str, ...] = ("docker", "ec2", "local", "static")

#: What --count means for each provider: the help text, and each class's `count_meaning`.
COUNT_MEANINGS: Dict[str, str] = {
    "docker": "number of SSH host containers started on this machine's Docker engine",
    "ec2": "EC2 instances launched together in one request",
    "local": "number of worker processes on this machine; its cores are shared out between them "
    "(each gets at least one)",
    "static": "hosts taken from the inventory's list, in order (default: all of them)",
}

_CLASS_NAMES = {"docker": "DockerProvider", "ec2": "Ec2Provider", "local": "LocalProvider", "static": "StaticProvider"}


def provider_class(name: str) -> Type["Provider"]:
    """The Provider class for a --provider name, importing only its own module."""
    if name not in _CLASS_NAMES:
        raise InputError(f"--provider {name!r} is unknown; choose one of: {', '.join(PROVIDER_NAMES)}")
    provider: Type["Provider"] = getattr(import_module(f".{name}", __name__), _CLASS_NAMES[name])
    return provider


def __getattr__(name: str) -> Any:
    # The interface types, on first use, so that reading PROVIDER_NAMES costs no imports.
    if name in ("Host", "Leftover", "LiveResource", "Provider", "ProviderOptions", "Released"):
        return getattr(import_module(".base", __name__), name)
    raise AttributeError(name)


__all__ = ["COUNT_MEANINGS", "PROVIDER_NAMES", "provider_class"]
