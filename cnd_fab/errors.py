"""Every failure cnd-fab reports to a user is a CndError; its message is one line."""

from __future__ import annotations


class CndError(Exception):
    """Base of all cnd-fab errors: the message is shown to the user as one line."""

    exit_code = 1


class InputError(CndError):
    """A flag or its value is wrong; nothing has been launched."""

    exit_code = 2


class InventoryError(InputError):
    """The inventory file is unreadable or holds a bad field."""


class ProviderError(CndError):
    """A provider could not launch or tear down a resource."""


class HostConnectError(CndError):
    """A host could not be reached, authenticated or set up."""


class WorkerError(CndError):
    """A worker broke the protocol or reported an ERROR."""


class FleetLostError(CndError):
    """Every host was lost before the search could finish."""


class ReleaseError(CndError):
    """Some of a run's resources could not be confirmed released; its journal stays open."""
