"""Providers, one per file, looked up by the name given to --provider."""

from __future__ import annotations

from typing import Dict, Type

from ..errors import InputError
from .base import Host, Provider, ProviderOptions
from .docker import DockerProvider
from .ec2 import Ec2Provider
from .local import LocalProvider
from .static import StaticProvider

PROVIDERS: Dict[str, Type[Provider]] = {
    provider.name: provider for provider in (LocalProvider, DockerProvider, StaticProvider, Ec2Provider)
}


def provider_class(name: str) -> Type[Provider]:
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise InputError(f"--provider {name!r} is unknown; choose one of: {known}") from None


__all__ = ["Host", "Provider", "ProviderOptions", "PROVIDERS", "provider_class"]
