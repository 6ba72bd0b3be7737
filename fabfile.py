"""Fabric entry point: `fab search`, `fab teardown`, `fab status`, `fab bench`. All logic lives in cnd_fab."""

from cnd_fab.tasks import bench, calibrate, search, stats, status, teardown

__all__ = ["bench", "calibrate", "search", "stats", "status", "teardown"]
