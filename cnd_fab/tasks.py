"""The Fabric/Invoke tasks that `fab` runs (fabfile.py): flags in, cnd_fab.commands out.

Every task takes the flags of cnd_fab.options.OPTIONS: `from_table` gives each task the
signature and help Invoke reads, and the task body passes the raw values to
cnd_fab.commands, which the `cnd-fab` program (cli.py) runs too. Every heavy import (api,
providers, rich, ...) is made when a task runs, so `fab --help` loads only Invoke and the
option table.
"""

from __future__ import annotations

import inspect
from functools import wraps
from typing import Any, Callable, TypeVar, cast

from invoke import task
from invoke.context import Context
from invoke.exceptions import Exit

from . import flags, options
from .commands import TASKS, run_task
from .errors import CndError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(body: F) -> F:
    """Show a CndError as its one-line message and exit code, never as a traceback."""

    @wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            code = body(*args, **kwargs)
        except CndError as error:
            raise Exit(f"cnd-fab: {error}", code=error.exit_code) from None
        if code:
            raise Exit(code=code)
        return code

    return cast(F, wrapper)


def table_signature(task_name: str) -> inspect.Signature:
    """(c, one keyword per option of `task_name`): value options default to None, so their
    text reaches the parser untouched; bare flags default to their table default."""
    parameters = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for option in options.options_for(task_name):
        default = option.default if option.kind == flags.FLAG else None
        parameters.append(inspect.Parameter(option.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(parameters, return_annotation=int)


def from_table(task_name: str) -> Callable[[Callable[..., int]], Any]:
    """Make `body(c, **raw)` the Invoke task `task_name`, with the table's flags and help."""

    def make(body: Callable[..., int]) -> Any:
        wrapped = one_line_errors(body)
        # inspect.signature, which Invoke uses to find the flags, stops at __signature__.
        setattr(wrapped, "__signature__", table_signature(task_name))
        return task(name=task_name, help={option.name: option.help for option in options.options_for(task_name)})(
            wrapped
        )

    return make


def _task(name: str) -> Any:
    """The Invoke task `name`: its flags from the table, its body in cnd_fab.commands."""

    def body(c: Context, **raw: object) -> int:
        return run_task(name, raw)

    body.__name__ = name
    body.__doc__ = TASKS[name][0]
    return from_table(name)(body)


search = _task(options.SEARCH)
calibrate = _task(options.CALIBRATE)
bench = _task(options.BENCH)
teardown = _task(options.TEARDOWN)
stats = _task(options.STATS)
status = _task(options.STATUS)
