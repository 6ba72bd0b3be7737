"""`cnd-fab`: the same tasks as the fabfile, usable from any directory."""

from __future__ import annotations

from invoke import Collection, Program

from . import __version__, tasks

program = Program(
    name="cnd-fab",
    binary="cnd-fab",
    version=__version__,
    namespace=Collection.from_module(tasks),
)


def main() -> None:
    """The cnd-fab command: the same tasks as `fab`, without a fabfile."""
    program.run()
