"""Providers, one per file, looked up by the name given to --provider."""

from __future__ import annotations

from typing import Dict, Type

from ..errors import InputError
from .base import Host, Provider
from .local import LocalProvider

PROVIDERS: Dict[str, Type[Provider]] = {
    LocalProvider.name: LocalProvider,
}


def provider_class(name: str) -> Type[Provider]:
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise InputError(f"--provider {name!r} is unknown; choose one of: {known}") from None


__all__ = ["Host", "Provider", "PROVIDERS", "provider_class"]
