"""Fabric entry point: `fab search`, `fab teardown`, `fab bench`. All logic lives in cnd_fab."""

from cnd_fab.tasks import bench, search, teardown

__all__ = ["bench", "search", "teardown"]
